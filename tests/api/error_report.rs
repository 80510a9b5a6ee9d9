//! `Upload.errorReport`: the failed rows of a mixed-error CRLF file echoed as written (quoted
//! cells, commas, quotes, a line break inside a cell) plus their errors, behind a signed link
//! that expires and refuses tampering; generated once; null until there is something to show.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;
use crate::storage_s3::{S3App, spawn_on_s3};

const REPORT: &str = "query($t: String!, $id: String!) { upload(tenantId: $t, uploadId: $id) { status errorReport { url expiresAt } } }";

/// A CRLF file with a quoted header cell, three successes and four failures, and the
/// original bytes of the failing rows (row number, line as written).
pub fn mixed_file() -> (Vec<u8>, Vec<(i32, String)>) {
    let ok = imeis(500, 3);
    let rows = [
        format!("{},first,a", ok[0]),
        "12345,\"has, comma\",b".to_owned(),
        format!("{},\"say \"\"hi\"\"\",c", ok[1]),
        format!("{},dup,\"multi\r\nline\"", ok[0]),
        "abc".to_owned(),
        format!("{},last,e", ok[2]),
        "490154203237519,\"\"\"quoted\"\" start\",f".to_owned(),
    ];
    let mut file = "imei,note,\"label, quoted\"\r\n".to_owned();
    for row in &rows {
        file.push_str(row);
        file.push_str("\r\n");
    }
    let failing = [2, 4, 5, 7].map(|n| (n, rows[n as usize - 1].clone())).to_vec();
    (file.into_bytes(), failing)
}

fn quoted(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) || value.starts_with(' ') || value.ends_with(' ') {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// The report the mixed file must give: header and failing lines as written, short rows padded
/// to the header's three columns, then each row's number, code and message (read back through
/// `results`, so the test does not restate the messages).
pub async fn expected_report(app: &TestApp, id: &str, failing: &[(i32, String)]) -> String {
    let body = app
        .gql(
            Some(&app.alice()),
            "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { results(outcome: FAIL) { edges { node { rowNumber errorCode message } } } } }",
            json!({"id": id}),
        )
        .await;
    let nodes: Vec<Value> = body["data"]["upload"]["results"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect();
    assert_eq!(nodes.len(), failing.len(), "{body}");
    let mut report = "imei,note,\"label, quoted\",rowNumber,errorCode,message\r\n".to_owned();
    for ((row, line), node) in failing.iter().zip(&nodes) {
        assert_eq!(node["rowNumber"], *row);
        let padding = if line == "abc" { ",," } else { "" };
        report.push_str(&format!(
            "{line}{padding},{row},{},{}\r\n",
            node["errorCode"].as_str().unwrap(),
            quoted(node["message"].as_str().unwrap())
        ));
    }
    report
}

async fn report_of(app: &TestApp, id: &str) -> Value {
    let body = app
        .gql(Some(&app.alice()), REPORT, json!({"t": "demo", "id": id}))
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["upload"].clone()
}

async fn processed_mixed_upload(app: &TestApp) -> (String, Vec<(i32, String)>) {
    let (file, failing) = mixed_file();
    let id = app.upload_csv(&app.alice(), json!({"rowCount": 7}), file).await;
    app.drain().await;
    (id, failing)
}

async fn download(app: &TestApp, url: &str) -> (u16, String) {
    let resp = app.http.get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

on_both_backends! {
    async fn the_report_echoes_the_failed_rows_as_written_with_their_errors_behind_a_signed_link(app: TestApp) {
        let (id, failing) = processed_mixed_upload(&app).await;
        let upload = report_of(&app, &id).await;
        assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS");
        let url = upload["errorReport"]["url"].as_str().unwrap().to_owned();
        assert!(url.starts_with(&format!("{}/objects/reports/", app.url)), "{url}");

        let (status, body) = download(&app, &url).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, expected_report(&app, &id, &failing).await);

        // Generated once: with the file it was made from gone, the stored report still serves.
        let snapshots = app.data_dir.path().join("objects").join("snapshots");
        std::fs::remove_dir_all(&snapshots).unwrap();
        let again = report_of(&app, &id).await;
        let (status, body_again) = download(&app, again["errorReport"]["url"].as_str().unwrap()).await;
        assert_eq!((status, body_again), (200, body));

        // Another tenant cannot reach it.
        let bob = app.gql(Some(&app.bob()), REPORT, json!({"t": "acme", "id": id})).await;
        assert_eq!(bob["data"]["upload"], Value::Null, "{bob}");
    }

    async fn a_tampered_link_is_refused(app: TestApp) {
        let (id, _) = processed_mixed_upload(&app).await;
        let url = report_of(&app, &id).await["errorReport"]["url"].as_str().unwrap().to_owned();
        let (path, query) = url.split_once('?').unwrap();
        let signature = query.rsplit_once("signature=").unwrap().1;
        let flipped: String = signature.chars().rev().collect();
        let other_key = path.replace("-errors.csv", ".csv").replace("/reports/", "/snapshots/");
        for (tampered, code) in [
            (format!("{path}?{}", query.replace(signature, &flipped)), "SignatureDoesNotMatch"),
            (format!("{other_key}?{query}"), "SignatureDoesNotMatch"),
            (path.to_owned(), "AccessDenied"),
        ] {
            let (status, body) = download(&app, &tampered).await;
            assert_eq!(status, 403, "{tampered}: {body}");
            assert!(body.contains(code), "{tampered}: {body}");
        }
        let later = query.replace("expires=", "expires=9");
        let (status, _) = download(&app, &format!("{path}?{later}")).await;
        assert_eq!(status, 403, "a longer expiry than signed");
    }

    async fn there_is_no_report_before_the_upload_finishes_nor_without_failures(app: TestApp) {
        let (file, _) = mixed_file();
        let queued = app.upload_csv(&app.alice(), json!({"rowCount": 7}), file).await;
        let upload = report_of(&app, &queued).await;
        assert_eq!((upload["status"].clone(), upload["errorReport"].clone()), (json!("QUEUED"), Value::Null));

        let clean = app.upload_csv(&app.alice(), json!({"rowCount": 3}), csv("imei", &imeis(600, 3))).await;
        app.drain().await;
        let upload = report_of(&app, &clean).await;
        assert_eq!((upload["status"].clone(), upload["errorReport"].clone()), (json!("COMPLETED"), Value::Null));
        assert_eq!(report_of(&app, &queued).await["status"], "COMPLETED_WITH_ERRORS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_is_refused() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.download_url_ttl_secs = 1).await;
    let (id, _) = processed_mixed_upload(&app).await;
    let upload = report_of(&app, &id).await;
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(upload["errorReport"]["expiresAt"].as_str().unwrap()).unwrap();
    assert!(
        expires_at <= chrono::Utc::now() + chrono::Duration::seconds(2),
        "{upload}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = download(&app, upload["errorReport"]["url"].as_str().unwrap()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("expired"), "{body}");
}

macro_rules! on_both_backends_with_s3 {
    ($(async fn $name:ident($s3:ident: S3App) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body($s3: S3App) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                body(spawn_on_s3(Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                body(spawn_on_s3(Backend::Postgres).await).await
            }
        }
    )*};
}

on_both_backends_with_s3! {
    async fn on_s3_the_report_is_stored_in_the_bucket_and_downloads_through_a_presigned_url(s3: S3App) {
        let app = &s3.app;
        let (id, failing) = processed_mixed_upload(app).await;
        let url = report_of(app, &id).await["errorReport"]["url"].as_str().unwrap().to_owned();
        assert!(url.starts_with(&format!("{}/{}/reports/", s3.moto.url, s3.bucket)), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
        let (status, body) = download(app, &url).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, expected_report(app, &id, &failing).await);
    }
}

const LISTING: &str = "{ uploads(tenantId: \"demo\", first: 50) { edges { node { id status errorReportStatus errorReport { url } } } } }";

/// Files under the local store's `reports/` directory.
fn stored_reports(app: &TestApp) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 })
                .sum()
        })
    }
    count(&app.data_dir.path().join("objects").join("reports"))
}

async fn report_status_in_db(app: &TestApp, id: &str) -> Option<entity::upload::ReportStatus> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    entity::prelude::Upload::find()
        .filter(entity::upload::Column::PublicId.eq(id))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
        .report_status
}

/// Waits (bounded) for the background builder; no request asks for the report meanwhile.
async fn wait_for_report(app: &TestApp, id: &str) {
    let started = std::time::Instant::now();
    while report_status_in_db(app, id).await != Some(entity::upload::ReportStatus::Ready) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "report of {id} never built"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn background_report(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.workers = Some(2)).await;
    let (file, failing) = mixed_file();
    let id = app.upload_csv(&app.alice(), json!({"rowCount": 7}), file).await;
    wait_for_report(&app, &id).await;
    // Built without anyone asking: the stored object is there before the first request.
    assert_eq!(stored_reports(&app), 1);
    let upload = report_of(&app, &id).await;
    let (status, body) = download(&app, upload["errorReport"]["url"].as_str().unwrap()).await;
    assert_eq!((status, body), (200, expected_report(&app, &id, &failing).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_report_is_built_in_the_background_before_anyone_asks_sqlite() {
    background_report(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_report_is_built_in_the_background_before_anyone_asks_postgres() {
    background_report(Backend::Postgres).await
}

on_both_backends! {
    async fn a_listing_asking_for_every_report_runs_no_merge(app: TestApp) {
        let mut ids = Vec::new();
        for _ in 0..6 {
            let (file, _) = mixed_file();
            ids.push(app.upload_csv(&app.alice(), json!({"rowCount": 7}), file).await);
            // The pipeline only: the reports stay queued.
            drain(&app.pipeline).await;
        }
        let clean = app.upload_csv(&app.alice(), json!({"rowCount": 2}), csv("imei", &imeis(620, 2))).await;
        drain(&app.pipeline).await;

        let before = app.state.statements.get();
        let body = app.gql(Some(&app.alice()), LISTING, json!({})).await;
        let statements = app.state.statements.get() - before;
        assert!(body.get("errors").is_none(), "{body}");
        let nodes: Vec<Value> = body["data"]["uploads"]["edges"].as_array().unwrap().iter().map(|e| e["node"].clone()).collect();
        assert_eq!(nodes.len(), 7);
        for node in &nodes {
            assert_eq!(node["errorReport"], Value::Null, "{node}");
            let want = if node["id"] == clean.as_str() { Value::Null } else { json!("PENDING") };
            assert_eq!(node["errorReportStatus"], want, "{node}");
        }
        // Nothing was merged or written, and the page cost what a page costs, not a merge
        // per upload (each merge alone streams the file and runs a query).
        assert_eq!(stored_reports(&app), 0);
        assert!(statements < 10, "{statements} statements for one page");

        assert_eq!(app.build_reports().await, 6);
        // Served from what was stored: the files the reports came from can go.
        std::fs::remove_dir_all(app.data_dir.path().join("objects").join("snapshots")).unwrap();
        let body = app.gql(Some(&app.alice()), LISTING, json!({})).await;
        for edge in body["data"]["uploads"]["edges"].as_array().unwrap() {
            let node = &edge["node"];
            if node["id"] == clean.as_str() {
                assert_eq!((node["errorReportStatus"].clone(), node["errorReport"].clone()), (Value::Null, Value::Null));
            } else {
                assert_eq!(node["errorReportStatus"], "READY", "{node}");
                let (status, _) = download(&app, node["errorReport"]["url"].as_str().unwrap()).await;
                assert_eq!(status, 200);
            }
        }
        assert_eq!(stored_reports(&app), 6);
        assert!(ids.iter().all(|id| body.to_string().contains(id.as_str())));
    }

    async fn a_queued_report_survives_a_restart_and_a_builder_that_died(app: TestApp) {
        let (file, failing) = mixed_file();
        let first = app.upload_csv(&app.alice(), json!({"rowCount": 7}), file.clone()).await;
        let second = app.upload_csv(&app.alice(), json!({"rowCount": 7}), file).await;
        drain(&app.pipeline).await;

        // A builder takes the first report and dies with it (its lease: one second).
        let builder = fleetload::uploads::ReportBuilder::new(app.state.db.clone(), app.state.storage.clone())
            .with_lease(std::time::Duration::from_secs(1));
        let (claimed, attempt) = builder.claim().await.unwrap().expect("a report is due");
        assert_eq!((claimed, attempt), (crate::results::internal_id(&app, &first).await, 1));

        // The process stops before building anything; the next one, with workers, builds both:
        // the second at once, the first once the dead builder's lease has run out.
        let mut parts = app.into_parts();
        parts.settings.workers = Some(1);
        let app = respawn(parts).await;
        wait_for_report(&app, &second).await;
        wait_for_report(&app, &first).await;
        let url = report_of(&app, &first).await["errorReport"]["url"].as_str().unwrap().to_owned();
        let (status, body) = download(&app, &url).await;
        assert_eq!((status, body), (200, expected_report(&app, &first, &failing).await));
        // The same devices again: every row of the second upload failed.
        let url = report_of(&app, &second).await["errorReport"]["url"].as_str().unwrap().to_owned();
        let (status, body) = download(&app, &url).await;
        assert_eq!((status, body.matches("\r\n").count()), (200, 1 + 7 + 1), "{body}");
    }
}
