//! The completion webhook: one signed POST per finished upload (completed, failed or
//! cancelled), retried when the receiver fails, from a real HTTP receiver in the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use fleetload::webhook::{SIGNATURE_HEADER, Summary, TIMESTAMP_HEADER, verify};
use serde_json::json;

use crate::helpers::*;

const SECRET: &str = "whsec-test";

#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

/// Answers 500 to the very first call and 200 to the rest.
async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut calls = receiver.calls.lock().unwrap();
    calls.push((headers, body));
    if calls.len() == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

async fn start_receiver() -> (String, Receiver) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/fleetload", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hooks/fleetload", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, receiver)
}

impl Receiver {
    /// Waits (as a hang guard, not a timing check) until `n` calls arrived.
    async fn wait_for(&self, n: usize) -> Vec<(HeaderMap, Bytes)> {
        for _ in 0..600 {
            {
                let calls = self.calls.lock().unwrap();
                if calls.len() >= n {
                    return calls.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{n} webhook calls did not arrive; got {}",
            self.calls.lock().unwrap().len()
        );
    }
}

/// Checks the signature as a receiver would and returns the summary.
fn verified(headers: &HeaderMap, body: &[u8]) -> Summary {
    let timestamp: i64 = headers[TIMESTAMP_HEADER].to_str().unwrap().parse().unwrap();
    let signature = headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(
        verify(SECRET.as_bytes(), timestamp, body, signature),
        "signature does not verify"
    );
    assert!(!verify(b"another secret", timestamp, body, signature));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-fleetload-event"], "upload.finished");
    serde_json::from_slice(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_terminal_state_posts_one_signed_summary_retried_after_a_500_sqlite() {
    every_terminal_state_posts_one_signed_summary_retried_after_a_500(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_terminal_state_posts_one_signed_summary_retried_after_a_500_postgres() {
    every_terminal_state_posts_one_signed_summary_retried_after_a_500(Backend::Postgres).await
}

async fn every_terminal_state_posts_one_signed_summary_retried_after_a_500(backend: Backend) {
    let (url, receiver) = start_receiver().await;
    let app = spawn_app_with(backend, |s| {
        s.webhook_url = Some(url.parse().unwrap());
        s.webhook_secret = Some(SECRET.to_owned().into());
    })
    .await;
    let token = app.alice();

    let mut rows = imeis(51, 3);
    rows.push("not-an-imei".into());
    let completed = app
        .upload_csv(&token, json!({"rowCount": 4}), csv("imei", &rows))
        .await;
    app.drain().await;
    // The receiver refuses the first call; the same summary comes again.
    let calls = receiver.wait_for(2).await;
    let (first, second) = (
        verified(&calls[0].0, &calls[0].1),
        verified(&calls[1].0, &calls[1].1),
    );
    assert_eq!(first, second);
    assert_eq!(first.upload_id, completed);
    assert_eq!(calls[1].0["x-fleetload-delivery"], completed.as_str());
    assert_eq!(first.status, entity::upload::UploadStatus::CompletedWithErrors);
    assert_eq!(
        (
            first.total_rows,
            first.processed_rows,
            first.succeeded,
            first.failed
        ),
        (Some(4), 4, 3, 1)
    );
    assert_eq!(first.tenant_id, "demo");
    assert_eq!(first.created_by, "alice");

    let failed = app
        .upload_csv(&token, json!({"rowCount": 1}), "phone,name\n490154203237518,x\n")
        .await;
    app.drain().await;
    let calls = receiver.wait_for(3).await;
    let summary = verified(&calls[2].0, &calls[2].1);
    assert_eq!(
        (summary.upload_id.as_str(), summary.status),
        (failed.as_str(), entity::upload::UploadStatus::Failed)
    );
    assert!(summary.failure_reason.is_some());

    let cancelled = app
        .upload_csv(&token, json!({"rowCount": 1}), csv("imei", &imeis(52, 1)))
        .await;
    let body = app
        .gql(
            Some(&token),
            "mutation($id: String!) { cancelBatchUpload(tenantId: \"demo\", uploadId: $id) { status } }",
            json!({"id": cancelled}),
        )
        .await;
    assert_eq!(body["data"]["cancelBatchUpload"]["status"], "CANCELLED", "{body}");
    let calls = receiver.wait_for(4).await;
    let summary = verified(&calls[3].0, &calls[3].1);
    assert_eq!(
        (summary.upload_id.as_str(), summary.status),
        (cancelled.as_str(), entity::upload::UploadStatus::Cancelled)
    );

    // Delivered calls leave the queue; nothing else is sent (a repeated cancel sends no second call).
    app.gql(
        Some(&token),
        "mutation($id: String!) { cancelBatchUpload(tenantId: \"demo\", uploadId: $id) { status } }",
        json!({"id": cancelled}),
    )
    .await;
    // The cancelled upload's dispatch job is skipped; webhook calls leave once delivered.
    app.drain().await;
    for _ in 0..600 {
        if app.count_jobs().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.count_jobs().await, 0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.calls.lock().unwrap().len(), 4);
}
