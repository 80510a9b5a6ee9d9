//! `retryFailedRows`: a new PREPARED upload whose stored file is the original header and the
//! failed rows' lines; finalized as is, its results cover exactly those rows. Refused while
//! processing, without failures, and across tenants.

use fleetload::auth::Permission;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::error_report::mixed_file;
use crate::helpers::*;
use crate::on_both_backends;

const RETRY: &str = "mutation($t: String!, $id: String!) { retryFailedRows(tenantId: $t, uploadId: $id) { uploadId fileUpload { url fields expiresAt } } }";

async fn retry(app: &TestApp, token: &str, tenant: &str, id: &str) -> Value {
    app.gql(Some(token), RETRY, json!({"t": tenant, "id": id})).await
}

on_both_backends! {
    async fn a_retry_is_a_prepared_upload_of_the_failed_lines_that_finalizes_as_is(app: TestApp) {
        let (file, failing) = mixed_file();
        let original = app.upload_csv(&app.alice(), json!({"rowCount": 7, "brandId": 7, "provisionType": "eSIM"}), file).await;
        app.drain().await;

        let body = retry(&app, &app.alice(), "demo", &original).await;
        assert!(body.get("errors").is_none(), "{body}");
        let payload = &body["data"]["retryFailedRows"];
        let retry_id = payload["uploadId"].as_str().unwrap().to_owned();
        assert_ne!(retry_id, original);
        assert!(payload["fileUpload"]["fields"].is_string());

        let state = app.gql(Some(&app.alice()),
            "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { status declaredRowCount assignActionId brandId provisionType targetWorkspaceId } }",
            json!({"id": retry_id})).await;
        assert_eq!(state["data"]["upload"], json!({"status": "PREPARED", "declaredRowCount": 4,
            "assignActionId": "register-prepaid", "brandId": 7, "provisionType": "eSIM", "targetWorkspaceId": "demo"}));

        let key = serde_json::from_str::<Value>(payload["fileUpload"]["fields"].as_str().unwrap()).unwrap()["key"]
            .as_str().unwrap().to_owned();
        let mut stored = String::new();
        app.state.storage.get(&key).await.unwrap().read_to_string(&mut stored).await.unwrap();
        let mut want = "imei,note,\"label, quoted\"\r\n".to_owned();
        for (_, line) in &failing {
            want.push_str(line);
            want.push_str("\r\n");
        }
        assert_eq!(stored, want);

        // No new POST: the file is already there.
        assert_eq!(app.finalize(&app.alice(), "demo", &retry_id).await["data"]["finalizeBatchUpload"], "QUEUED");
        app.drain().await;
        let originals = app.results(&original).await;
        let failed_uids: Vec<String> = originals.iter().filter(|r| r.2 == "FAIL").map(|r| r.1.clone()).collect();
        let retried = app.results(&retry_id).await;
        let retried_uids: Vec<String> = retried.iter().map(|r| r.1.clone()).collect();
        assert_eq!(retried_uids, failed_uids);
        assert_eq!(retried.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(app.upload_state(&app.alice(), "demo", &retry_id).await["totalRows"], 4);
    }

    async fn a_retry_is_refused_while_processing_without_failures_and_across_tenants(app: TestApp) {
        let (file, _) = mixed_file();
        let queued = app.upload_csv(&app.alice(), json!({"rowCount": 7}), file).await;
        assert_eq!(error_code(&retry(&app, &app.alice(), "demo", &queued).await), "UPLOAD_NOT_FINISHED");

        let clean = app.upload_csv(&app.alice(), json!({"rowCount": 2}), csv("imei", &imeis(700, 2))).await;
        app.drain().await;
        assert_eq!(error_code(&retry(&app, &app.alice(), "demo", &clean).await), "NOTHING_TO_RETRY");

        // `queued` has finished with failures by now: only the tenancy and permission refuse it.
        assert_eq!(error_code(&retry(&app, &app.bob(), "acme", &queued).await), "UPLOAD_NOT_FOUND");
        assert_eq!(error_code(&retry(&app, &app.bob(), "demo", &queued).await), "FORBIDDEN");
        let reader = app.token_with("carol", "demo", &[Permission::Read]);
        assert_eq!(error_code(&retry(&app, &reader, "demo", &queued).await), "FORBIDDEN");
        assert!(retry(&app, &app.alice(), "demo", &queued).await.get("errors").is_none());
    }
}

/// A cancelled upload's retry holds its failed rows and every row it never processed, in
/// file order; the original's successes and the retry's results then cover every row of the
/// file exactly once.
async fn cancelled_mid_processing(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.chunk_size = 5).await;
    let mut keys = imeis(720, 40);
    for bad in [2, 16, 32] {
        keys[bad] = format!("bad-{bad}");
    }
    let original = app
        .upload_csv(&app.alice(), json!({"rowCount": 40}), csv("imei", &keys))
        .await;
    // The dispatch and two chunks (rows 1–10), then the operator cancels.
    for _ in 0..3 {
        app.pipeline.try_execute_next().await.unwrap();
    }
    let cancel = "mutation($id: String!) { cancelBatchUpload(tenantId: \"demo\", uploadId: $id) { status processedRows failed } }";
    let body = app.gql(Some(&app.alice()), cancel, json!({"id": original})).await;
    assert_eq!(
        body["data"]["cancelBatchUpload"],
        json!({"status": "CANCELLED", "processedRows": 10, "failed": 1}),
        "{body}"
    );
    app.drain().await;
    assert_eq!(
        app.results(&original).await.len(),
        10,
        "nothing ran after the cancel"
    );

    let body = retry(&app, &app.alice(), "demo", &original).await;
    assert!(body.get("errors").is_none(), "{body}");
    let retry_id = body["data"]["retryFailedRows"]["uploadId"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = serde_json::from_str::<Value>(
        body["data"]["retryFailedRows"]["fileUpload"]["fields"]
            .as_str()
            .unwrap(),
    )
    .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut stored = String::new();
    app.state
        .storage
        .get(&key)
        .await
        .unwrap()
        .read_to_string(&mut stored)
        .await
        .unwrap();
    // Row 3 failed; rows 11–40 never ran.
    let want: Vec<&str> = std::iter::once("imei")
        .chain(std::iter::once(keys[2].as_str()))
        .chain(keys[10..].iter().map(String::as_str))
        .collect();
    assert_eq!(stored.lines().collect::<Vec<_>>(), want);

    assert_eq!(
        app.finalize(&app.alice(), "demo", &retry_id).await["data"]["finalizeBatchUpload"],
        "QUEUED"
    );
    app.drain().await;
    let state = app.upload_state(&app.alice(), "demo", &retry_id).await;
    assert_eq!(
        (state["status"].as_str(), state["totalRows"].as_i64()),
        (Some("COMPLETED_WITH_ERRORS"), Some(31)),
        "{state}"
    );

    let mut covered: Vec<String> = app
        .results(&original)
        .await
        .into_iter()
        .filter(|r| r.2 == "SUCCESS")
        .map(|r| r.1)
        .chain(app.results(&retry_id).await.into_iter().map(|r| r.1))
        .collect();
    covered.sort();
    let mut all = keys.clone();
    all.sort();
    assert_eq!(covered, all, "every row of the file exactly once");

    // A retry of the retry: its failures only (it completed), the three bad keys.
    let again = retry(&app, &app.alice(), "demo", &retry_id).await;
    assert!(again.get("errors").is_none(), "{again}");
    let again_id = again["data"]["retryFailedRows"]["uploadId"].as_str().unwrap();
    assert_eq!(
        app.upload_state(&app.alice(), "demo", again_id).await["status"],
        "PREPARED"
    );
    let declared = app
        .gql(
            Some(&app.alice()),
            "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { declaredRowCount } }",
            json!({"id": again_id}),
        )
        .await;
    assert_eq!(
        declared["data"]["upload"]["declaredRowCount"], 3,
        "rows 3, 17 and 33 of the original"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_uploads_retry_covers_its_failed_and_unprocessed_rows_sqlite() {
    cancelled_mid_processing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_uploads_retry_covers_its_failed_and_unprocessed_rows_postgres() {
    cancelled_mid_processing(Backend::Postgres).await
}
