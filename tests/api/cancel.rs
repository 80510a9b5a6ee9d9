//! `cancelBatchUpload`: an unfinished upload stops where it is, keeps the results it has,
//! and no chunk is applied after the cancel commits.

use fleetload::auth::Permission;
use fleetload::pipeline::Step;
use fleetload::pipeline::worker::{ChunkOutcome, apply_chunk};
use fleetload::queue::{CHUNK_QUEUE, DbQueue, JobPayload, Queue};
use fleetload::webhook::Outbox;
use serde_json::{Value, json};
use std::time::Duration;

use crate::helpers::*;
use crate::on_both_backends;

const CANCEL: &str = "mutation($t: String!, $id: String!) { cancelBatchUpload(tenantId: $t, uploadId: $id) { id status totalRows processedRows succeeded failed finishedAt } }";

async fn cancel(app: &TestApp, token: &str, tenant: &str, upload_id: &str) -> Value {
    app.gql(Some(token), CANCEL, json!({"t": tenant, "id": upload_id}))
        .await
}

on_both_backends! {
    async fn cancelling_mid_processing_keeps_the_results_so_far_and_applies_nothing_after(app: TestApp) {
        let token = app.alice();
        // 5,000 rows = chunks of 2,000, 2,000 and 1,000.
        let id = app.upload_csv(&token, json!({"rowCount": 5000}), csv("imei", &imeis(41, 5000))).await;
        assert_eq!(app.pipeline.try_execute_next().await.unwrap(), Step::Done, "dispatch");
        assert_eq!(app.pipeline.try_execute_next().await.unwrap(), Step::Done, "first chunk");

        // A worker has taken the next chunk but not applied it yet when the cancel commits.
        let chunks = DbQueue::new(app.state.db.clone(), CHUNK_QUEUE, 5);
        let taken = chunks.receive(1, Duration::from_secs(60), Duration::ZERO).await.unwrap().pop().expect("a chunk job");

        let body = cancel(&app, &token, "demo", &id).await;
        assert!(body.get("errors").is_none(), "{body}");
        let cancelled = &body["data"]["cancelBatchUpload"];
        assert_eq!(cancelled["status"], "CANCELLED");
        assert_eq!(cancelled["processedRows"], 2000);
        assert_eq!(cancelled["totalRows"], 5000);
        assert!(cancelled["finishedAt"].is_string());

        let JobPayload::ProcessChunk(job) = &taken.payload else { panic!("not a chunk: {:?}", taken.payload) };
        let late = apply_chunk(&app.state.db, app.state.storage.as_ref(), job, &Outbox::default()).await.unwrap();
        assert_eq!(late, ChunkOutcome::Skipped(entity::upload::UploadStatus::Cancelled));
        chunks.ack(&taken).await.unwrap();
        app.drain().await;

        let state = app.upload_state(&token, "demo", &id).await;
        assert_eq!(state["status"], "CANCELLED");
        assert_eq!(state["processedRows"], 2000);
        assert_eq!(state["succeeded"].as_i64().unwrap() + state["failed"].as_i64().unwrap(), 2000);
        assert_eq!(app.results(&id).await.len(), 2000, "one result per processed row, none after the cancel");
        assert_eq!(app.count_jobs().await, 0, "the skipped chunks are gone from the queue");

        // Repeating the cancel answers with the cancelled upload.
        let again = cancel(&app, &token, "demo", &id).await;
        assert_eq!(again["data"]["cancelBatchUpload"]["status"], "CANCELLED", "{again}");
        assert_eq!(again["data"]["cancelBatchUpload"]["processedRows"], 2000);
    }

    async fn a_prepared_or_queued_upload_cancels_before_any_row_and_never_dispatches(app: TestApp) {
        let token = app.alice();
        let (prepared, _) = app.prepare_demo().await;
        let body = cancel(&app, &token, "demo", &prepared).await;
        assert_eq!(body["data"]["cancelBatchUpload"]["status"], "CANCELLED", "{body}");
        // finalize after a cancel answers with the status and queues nothing.
        let body = app.finalize(&token, "demo", &prepared).await;
        assert_eq!(body["data"]["finalizeBatchUpload"], "CANCELLED", "{body}");

        let queued = app.upload_csv(&token, json!({"rowCount": 3}), csv("imei", &imeis(42, 3))).await;
        let body = cancel(&app, &token, "demo", &queued).await;
        assert_eq!(body["data"]["cancelBatchUpload"]["status"], "CANCELLED", "{body}");
        app.drain().await;
        let state = app.upload_state(&token, "demo", &queued).await;
        assert_eq!(state["status"], "CANCELLED");
        assert_eq!(state["totalRows"], Value::Null, "the file was never read");
        assert!(app.results(&queued).await.is_empty());
    }

    async fn concurrent_cancels_all_answer_cancelled(app: TestApp) {
        let token = app.alice();
        let id = app.upload_csv(&token, json!({"rowCount": 3}), csv("imei", &imeis(43, 3))).await;
        let calls = (0..20).map(|_| cancel(&app, &token, "demo", &id));
        for body in futures::future::join_all(calls).await {
            assert_eq!(body["data"]["cancelBatchUpload"]["status"], "CANCELLED", "{body}");
        }
    }

    async fn a_finished_upload_cannot_be_cancelled(app: TestApp) {
        let token = app.alice();
        let id = app.upload_csv(&token, json!({"rowCount": 3}), csv("imei", &imeis(44, 3))).await;
        app.drain().await;
        let body = cancel(&app, &token, "demo", &id).await;
        assert_eq!(error_code(&body), "UPLOAD_ALREADY_FINISHED", "{body}");
        assert_eq!(body["data"], Value::Null);
        assert_eq!(app.upload_state(&token, "demo", &id).await["status"], "COMPLETED");
    }

    async fn only_a_writer_of_the_uploads_tenant_can_cancel_it(app: TestApp) {
        let token = app.alice();
        let id = app.upload_csv(&token, json!({"rowCount": 3}), csv("imei", &imeis(45, 3))).await;

        // Another tenant: the upload does not exist for them, whichever tenant they name.
        for tenant in ["acme", "demo"] {
            let body = cancel(&app, &app.bob(), tenant, &id).await;
            let code = error_code(&body);
            assert!(code == "UPLOAD_NOT_FOUND" || code == "FORBIDDEN", "{tenant}: {body}");
        }
        let body = cancel(&app, &app.bob(), "acme", &id).await;
        assert_eq!(error_code(&body), "UPLOAD_NOT_FOUND", "{body}");
        let reader = app.token_with("carol", "demo", &[Permission::Read]);
        assert_eq!(error_code(&cancel(&app, &reader, "demo", &id).await), "FORBIDDEN");
        assert_eq!(error_code(&cancel(&app, &token, "demo", "0199a0f0-0000-7000-8000-000000000000").await), "UPLOAD_NOT_FOUND");
        assert_eq!(error_code(&cancel(&app, &token, "demo", "not-an-id").await), "UPLOAD_NOT_FOUND");
        let anonymous = app.gql(None, CANCEL, json!({"t": "demo", "id": id})).await;
        assert_eq!(error_code(&anonymous), "UNAUTHENTICATED");

        assert_eq!(app.upload_state(&token, "demo", &id).await["status"], "QUEUED", "nothing changed");
    }
}
