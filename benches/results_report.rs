//! Reading results at scale: `Upload.results` page latency at page 1 and page 1,000 of a
//! 1,000,000-row upload, the background build of its error report (100,000 failures merged
//! with its 1,000,000-line file) and the `errorReport` requests after it, with peak memory.
//! Prints numbers; asserts only that the answers are the right rows.
//!
//! `cargo bench --bench results_report` (PostgreSQL from `FLEETLOAD_BENCH_PG_URL`, skipped when
//! unreachable). The result rows and the file are written directly, as the pipeline would have.

mod common;
use common::{Started, drop_pg_database, fresh_pg_database, peak_rss_mib, start};

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entity::prelude::Upload;
use entity::upload::{self, UploadStatus};
use fleetload::config::Settings;
use fleetload::db::stmt;
use fleetload::storage::snapshot_key;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter};
use serde_json::{Value, json};

const ROWS: i64 = 1_000_000;
/// Every tenth row failed: 100,000 failures.
const FAIL_EVERY: i64 = 10;
const PAGE: i64 = 500;
const SAMPLES: usize = 30;

const RESULTS: &str = "query($id: String!, $after: String, $outcome: Outcome) { upload(tenantId: \"demo\", uploadId: $id) { results(first: 500, after: $after, outcome: $outcome) { edges { node { rowNumber outcome errorCode } } pageInfo { hasNextPage } } } }";

#[tokio::main]
async fn main() {
    println!(
        "results and error report: {ROWS} result rows, every {FAIL_EVERY}th FAIL, pages of {PAGE}; median of {SAMPLES}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded(dir.path());
    settings.workers = Some(0);
    run("embedded (SQLite)", settings).await;

    let admin = std::env::var("FLEETLOAD_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let Some(url) = fresh_pg_database(&admin).await else {
        println!("PostgreSQL unreachable at {admin}: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded(dir.path());
    settings.database_url = Some(url.clone().into());
    settings.demo_data = true;
    settings.workers = Some(0);
    run("PostgreSQL", settings).await;
    drop_pg_database(&admin, &url).await;
}

async fn run(label: &str, settings: Settings) {
    let Started {
        base, token, state, ..
    } = start(settings).await;
    let url = format!("{base}/graphql");
    let http = reqwest::Client::new();
    let gql = |query: &'static str, vars: Value| {
        let req = http
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"query": query, "variables": vars}));
        async move {
            let body: Value = req.send().await.unwrap().json().await.unwrap();
            assert!(body.get("errors").is_none(), "{body}");
            body
        }
    };

    let body = gql(
        "mutation { prepareBatchUpload(tenantId: \"demo\", assignActionId: \"register-prepaid\", rowCount: 1000000, deviceType: 1) { uploadId } }",
        json!({}),
    )
    .await;
    let id = body["data"]["prepareBatchUpload"]["uploadId"]
        .as_str()
        .unwrap()
        .to_owned();
    let setup = Instant::now();
    let upload = seed(&state, &id).await;
    println!(
        "{label}: setup (1M results + 1M-line file) {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    for (name, after, outcome, first_row) in [
        ("page 1", None, Value::Null, 1),
        (
            "page 1,000",
            Some((999 * PAGE) as i32),
            Value::Null,
            999 * PAGE + 1,
        ),
        ("FAIL page 1", None, json!("FAIL"), FAIL_EVERY),
        (
            "FAIL page 150",
            Some((149 * PAGE * FAIL_EVERY) as i32),
            json!("FAIL"),
            (149 * PAGE + 1) * FAIL_EVERY,
        ),
    ] {
        // A cursor is the row it stands after; building it saves walking 999 pages first.
        let cursor = after.map(|row| URL_SAFE_NO_PAD.encode(format!("r:{row}")));
        let vars = json!({"id": id, "after": cursor, "outcome": outcome});
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let started = Instant::now();
            let body = gql(RESULTS, vars.clone()).await;
            times.push(started.elapsed());
            let edges = body["data"]["upload"]["results"]["edges"].as_array().unwrap();
            assert_eq!(edges.len() as i64, PAGE);
            assert_eq!(edges[0]["node"]["rowNumber"], first_row);
        }
        times.sort();
        println!(
            "{label:<18} results {name:<14}: median {:>6.2} ms, max {:>6.2} ms (HTTP round trip, 500 rows)",
            ms(times[SAMPLES / 2]),
            ms(times[SAMPLES - 1])
        );
    }

    // Asked before it is built: null, and no merge in the request.
    let started = Instant::now();
    let body = gql(
        "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { errorReport { url } errorReportStatus } }",
        json!({"id": id}),
    )
    .await;
    let pending = started.elapsed();
    assert_eq!(body["data"]["upload"]["errorReportStatus"], "PENDING", "{body}");
    assert!(body["data"]["upload"]["errorReport"].is_null(), "{body}");

    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let builder = fleetload::uploads::ReportBuilder::new(state.db.clone(), state.storage.clone());
    assert_eq!(
        builder.try_build_next().await.unwrap(),
        fleetload::uploads::Built::Done
    );
    let generated = started.elapsed();
    let body = gql(
        "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { errorReport { url } } }",
        json!({"id": id}),
    )
    .await;
    let report_url = body["data"]["upload"]["errorReport"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    gql(
        "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { errorReport { url } } }",
        json!({"id": id}),
    )
    .await;
    let signed_again = started.elapsed();
    let report = http.get(&report_url).send().await.unwrap().bytes().await.unwrap();
    let lines = report.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        lines as i64,
        ROWS / FAIL_EVERY + 1,
        "header + one line per failure"
    );
    println!(
        "{label:<18} error report: request while pending {:>5.2} ms; background build ({} failures from a {}-line file, store) {:>7.1} ms; requests once built {:>5.2} ms; {:.1} MiB; peak RSS {:.1} MiB before, {:.1} MiB after",
        ms(pending),
        ROWS / FAIL_EVERY,
        ROWS,
        ms(generated),
        ms(signed_again),
        report.len() as f64 / 1048576.0,
        rss_before,
        peak_rss_mib(),
    );
    let reloaded = Upload::find_by_id(upload).one(&state.db).await.unwrap().unwrap();
    assert!(reloaded.error_report_key.is_some());
}

/// Writes ROWS results and the matching file straight to the database and storage, and marks
/// the upload finished; returns its internal id.
async fn seed(state: &fleetload::state::AppState, public_id: &str) -> i64 {
    let db = &state.db;
    let upload = Upload::find()
        .filter(upload::Column::PublicId.eq(public_id))
        .one(db)
        .await
        .unwrap()
        .unwrap();
    let backend = db.get_database_backend();
    let numbers = match backend {
        DbBackend::Postgres => "SELECT x FROM generate_series(1, $2::int) AS n(x)",
        _ => "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $2) SELECT x FROM n",
    };
    let sql = format!(
        "INSERT INTO batch_results (upload_id, row_number, device_uid, outcome, error_code, message) \
         SELECT $1, x, 'uid' || x, CASE WHEN x % {FAIL_EVERY} = 0 THEN 'FAIL' ELSE 'SUCCESS' END, \
         CASE WHEN x % {FAIL_EVERY} = 0 THEN 'INVALID_DEVICE_UID' END, \
         CASE WHEN x % {FAIL_EVERY} = 0 THEN 'not a valid IMEI: ' || x END FROM ({numbers}) AS rows"
    );
    db.execute(stmt(backend, &sql, [upload.id.into(), (ROWS as i32).into()]))
        .await
        .unwrap();

    let file = tempfile::NamedTempFile::new().unwrap();
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(file.path()).unwrap());
        out.write_all(b"imei,note\r\n").unwrap();
        for x in 1..=ROWS {
            write!(out, "uid{x},\"row {x}, as written\"\r\n").unwrap();
        }
    }
    state
        .storage
        .put_file(&snapshot_key(&upload.object_key), file.path())
        .await
        .unwrap();
    let failed = (ROWS / FAIL_EVERY) as i32;
    Upload::update_many()
        .col_expr(
            upload::Column::Status,
            Expr::value(UploadStatus::CompletedWithErrors),
        )
        .col_expr(upload::Column::TotalRows, Expr::value(ROWS as i32))
        .col_expr(upload::Column::ProcessedRows, Expr::value(ROWS as i32))
        .col_expr(upload::Column::Succeeded, Expr::value(ROWS as i32 - failed))
        .col_expr(upload::Column::Failed, Expr::value(failed))
        .col_expr(upload::Column::FinishedAt, Expr::value(chrono::Utc::now()))
        // As the chunk that finishes an upload with failures does: its report is queued.
        .col_expr(
            upload::Column::ReportStatus,
            Expr::value(upload::ReportStatus::Pending),
        )
        .col_expr(upload::Column::ReportDueAt, Expr::value(chrono::Utc::now()))
        .filter(upload::Column::Id.eq(upload.id))
        .exec(db)
        .await
        .unwrap();
    upload.id
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
