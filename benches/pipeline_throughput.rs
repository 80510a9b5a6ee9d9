//! Throughput of the pipeline against the database's own fastest bulk path, in the same run:
//! finalize → COMPLETED for REGISTER uploads of new devices (the public path: prepare, POST,
//! finalize), then the same rows (N devices + N results) loaded into scratch copies of
//! `devices` and `batch_results` (same columns, keys and indexes) by `COPY … FROM STDIN` on
//! PostgreSQL and by one transaction of a prepared multi-row INSERT on SQLite. Prints, per
//! backend and size: seconds, rows/s, the baseline, their ratio, peak RSS, the live progress
//! events seen by a subscriber and where a chunk's time goes. Asserts nothing about time.
//!
//! `cargo bench --bench pipeline_throughput`. Sizes from `FLEETLOAD_BENCH_ROWS` (default
//! `10000,100000`); backends from `FLEETLOAD_BENCH_BACKENDS` (default `sqlite,pg,sqs`; `sqs` is
//! PostgreSQL with chunks on SQS, run at sizes up to 100,000); PostgreSQL from
//! `FLEETLOAD_BENCH_PG_URL` (else `FLEETLOAD_TEST_PG_URL`), moto from `FLEETLOAD_TEST_MOTO_URL` or a `moto_server` child;
//! a backend whose service is missing is skipped. `FLEETLOAD_BENCH_QUICK=1` (CI): 10,000 rows
//! on SQLite and PostgreSQL only. `FLEETLOAD_BENCH_WORKERS` and `FLEETLOAD_BENCH_CHUNK_SIZE` override
//! the defaults. `FLEETLOAD_BENCH_WORKER_PROCESSES=1,2,4` also runs PostgreSQL with that many
//! `fleetload worker` processes (default worker tasks each) and no workers in the API process.

mod common;
#[path = "../tests/api/moto.rs"]
mod moto;

use common::{
    Started, drop_pg_database, fresh_pg_database, peak_rss_mib, start_with_aws, subscribe_progress, upload,
};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use entity::prelude::Upload;
use entity::upload::{self, UploadStatus};
use fleetload::config::Settings;
use futures::StreamExt;
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Sums of the workers' per-chunk phase timings (the `chunk timings` debug events), so the
/// bench can say where a chunk's time goes.
struct PhaseTotals {
    fields: Mutex<BTreeMap<&'static str, u64>>,
}

static PHASES: PhaseTotals = PhaseTotals {
    fields: Mutex::new(BTreeMap::new()),
};

struct PhaseLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PhaseLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Visit<'a>(&'a mut BTreeMap<&'static str, u64>);
        impl tracing::field::Visit for Visit<'_> {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name().ends_with("_us") {
                    *self.0.entry(field.name()).or_default() += value;
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let timings = event.metadata().fields().field("total_us").is_some();
        if timings && event.metadata().target().ends_with("pipeline::worker") {
            let mut fields = PHASES.fields.lock().unwrap();
            *fields.entry("chunks").or_default() += 1;
            event.record(&mut Visit(&mut fields));
        }
    }
}

fn phase_summary() -> String {
    let mut fields = PHASES.fields.lock().unwrap();
    if fields.get("chunks").copied().unwrap_or(0) == 0 {
        return "per chunk: no timings here (the chunks ran in other processes)".to_owned();
    }
    let chunks = fields.get("chunks").copied().unwrap_or(0).max(1) as f64;
    let avg = |name: &str| fields.get(name).copied().unwrap_or(0) as f64 / chunks / 1000.0;
    let line = format!(
        "per chunk (avg of {chunks}): read its rows {:.1} ms, lookup {:.1} ms, effects {:.1} ms, results {:.1} ms, commit {:.1} ms, whole chunk {:.1} ms",
        avg("read_us"),
        avg("lookup_us"),
        avg("effects_us"),
        avg("results_us"),
        avg("commit_us"),
        avg("total_us"),
    );
    fields.clear();
    line
}

/// One measured run, a line of the closing table.
struct Line {
    backend: String,
    rows: usize,
    pipeline: Duration,
    baseline: Duration,
    peak_rss_mib: f64,
    events: usize,
    max_gap: Duration,
}

#[tokio::main]
async fn main() {
    use tracing_subscriber::layer::SubscriberExt;
    let only_worker = tracing_subscriber::filter::Targets::new()
        .with_target("fleetload::pipeline::worker", tracing::Level::DEBUG);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(PhaseLayer, only_worker)),
    )
    .unwrap();

    let quick = std::env::var_os("FLEETLOAD_BENCH_QUICK").is_some_and(|v| v != "0");
    let sizes: Vec<usize> = if quick {
        vec![10_000]
    } else {
        std::env::var("FLEETLOAD_BENCH_ROWS")
            .unwrap_or_else(|_| "10000,100000".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    };
    let backends = if quick {
        "sqlite,pg".to_owned()
    } else {
        std::env::var("FLEETLOAD_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,pg,sqs".into())
    };
    let wants = |name: &str| backends.split(',').any(|b| b.trim() == name);
    let workers: Option<usize> = std::env::var("FLEETLOAD_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok());
    let chunk_size: Option<usize> = std::env::var("FLEETLOAD_BENCH_CHUNK_SIZE")
        .ok()
        .and_then(|s| s.parse().ok());
    println!(
        "pipeline throughput: REGISTER of new devices, {} in-process workers, chunks of {} rows, against the same rows loaded by the database's bulk path",
        workers.map_or("the default number of".to_owned(), |w| w.to_string()),
        chunk_size.unwrap_or(Settings::embedded("/tmp").chunk_size),
    );

    let mut lines = Vec::new();
    if wants("sqlite") {
        for &rows in &sizes {
            let dir = tempfile::tempdir().unwrap();
            let mut settings = Settings::embedded(dir.path());
            settings.workers = workers.or(settings.workers);
            settings.chunk_size = chunk_size.unwrap_or(settings.chunk_size);
            lines.push(run("SQLite".into(), settings, None, rows).await);
        }
    }
    // The test suite's server (scripts/test starts one) when no other is named.
    let admin = std::env::var("FLEETLOAD_BENCH_PG_URL")
        .or_else(|_| std::env::var("FLEETLOAD_TEST_PG_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if wants("pg") {
        for &rows in &sizes {
            let Some(url) = fresh_pg_database(&admin).await else {
                println!("PostgreSQL unreachable at {admin}: skipped");
                break;
            };
            let dir = tempfile::tempdir().unwrap();
            let settings = on_postgres(dir.path(), &url, workers, chunk_size);
            lines.push(run("PostgreSQL".into(), settings, None, rows).await);
            drop_pg_database(&admin, &url).await;
        }
    }
    // `fleetload worker` processes on PostgreSQL, as deployed: the API process runs none.
    let processes: Vec<usize> = if quick {
        Vec::new()
    } else {
        std::env::var("FLEETLOAD_BENCH_WORKER_PROCESSES")
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    };
    for &n in &processes {
        for &rows in &sizes {
            let Some(url) = fresh_pg_database(&admin).await else {
                println!("PostgreSQL unreachable at {admin}: worker processes skipped");
                break;
            };
            let dir = tempfile::tempdir().unwrap();
            let mut settings = on_postgres(dir.path(), &url, workers, chunk_size);
            settings.workers = Some(0);
            let children: Vec<WorkerProcess> = (0..n)
                .map(|_| WorkerProcess::spawn(&url, dir.path(), chunk_size))
                .collect();
            let label = format!("PostgreSQL, {n} × `fleetload worker`");
            let line = run(label, settings, None, rows).await;
            let child_peak = children
                .iter()
                .map(WorkerProcess::peak_rss_mib)
                .fold(0.0, f64::max);
            println!(
                "{:>27}largest peak RSS of a worker process: {child_peak:.1} MiB",
                ""
            );
            lines.push(line);
            drop(children);
            drop_pg_database(&admin, &url).await;
        }
    }
    let sqs_sizes: Vec<usize> = sizes.iter().copied().filter(|&r| r <= 100_000).collect();
    if wants("sqs") && !sqs_sizes.is_empty() {
        if moto_available() {
            let moto = moto::s3_endpoint().await;
            let sdk = moto::sdk_config(&moto.url);
            let sqs = aws_sdk_sqs::Client::new(&sdk);
            for rows in sqs_sizes {
                let Some(url) = fresh_pg_database(&admin).await else {
                    println!("PostgreSQL unreachable at {admin}: SQS skipped");
                    break;
                };
                let queue_url = moto::create_queue(&sqs, "flbench").await;
                let dir = tempfile::tempdir().unwrap();
                let mut settings = on_postgres(dir.path(), &url, workers, chunk_size);
                settings.sqs_queue_url = Some(queue_url.clone());
                settings.sqs_endpoint_url = Some(url::Url::parse(&moto.url).unwrap());
                lines.push(run("PostgreSQL + SQS".into(), settings, Some(sdk.clone()), rows).await);
                drop_pg_database(&admin, &url).await;
                let _ = sqs.delete_queue().queue_url(queue_url).send().await;
            }
        } else {
            println!("moto unavailable: PostgreSQL + SQS skipped");
        }
    }

    println!();
    println!(
        "| backend | rows | fleetload | rows/s | same rows, bulk | ratio | peak RSS | progress events (max gap) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for l in &lines {
        println!(
            "| {} | {} | {:.2} s | {:.0} | {:.2} s | {:.2}× | {:.0} MiB | {} ({:.2} s) |",
            l.backend,
            thousands(l.rows),
            l.pipeline.as_secs_f64(),
            l.rows as f64 / l.pipeline.as_secs_f64(),
            l.baseline.as_secs_f64(),
            l.pipeline.as_secs_f64() / l.baseline.as_secs_f64(),
            l.peak_rss_mib,
            l.events,
            l.max_gap.as_secs_f64(),
        );
    }
}

fn on_postgres(
    dir: &std::path::Path,
    url: &str,
    workers: Option<usize>,
    chunk_size: Option<usize>,
) -> Settings {
    let mut settings = Settings::embedded(dir);
    settings.chunk_size = chunk_size.unwrap_or(settings.chunk_size);
    settings.database_url = Some(url.to_owned().into());
    settings.demo_data = true;
    // `serve` on PostgreSQL runs no workers by default (they are `fleetload worker`
    // processes); the bench runs them in this process, as many as `worker` would.
    settings.workers = Some(workers.unwrap_or(2));
    settings
}

/// A `fleetload worker` child on the bench's database and data dir, killed when dropped.
struct WorkerProcess(std::process::Child);

impl WorkerProcess {
    fn spawn(database_url: &str, data_dir: &std::path::Path, chunk_size: Option<usize>) -> Self {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fleetload"));
        cmd.arg("worker");
        // Only what the bench names: nothing of the developer's own environment.
        for (key, _) in std::env::vars() {
            if key.starts_with("FLEETLOAD_") || key.starts_with("AWS_") || key == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
        cmd.env("DATABASE_URL", database_url)
            .env("FLEETLOAD_DATA_DIR", data_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(size) = chunk_size {
            cmd.env("FLEETLOAD_CHUNK_SIZE", size.to_string());
        }
        Self(cmd.spawn().expect("the fleetload binary starts"))
    }

    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto_available() -> bool {
    std::env::var_os("FLEETLOAD_TEST_MOTO_URL").is_some()
        || std::process::Command::new("moto_server")
            .arg("--help")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
}

async fn run(label: String, settings: Settings, aws: Option<aws_config::SdkConfig>, rows: usize) -> Line {
    let pg_url = settings
        .database_url
        .as_ref()
        .map(|u| secrecy::ExposeSecret::expose_secret(u).to_owned());
    let Started {
        base,
        token,
        state,
        stop,
    } = start_with_aws(settings, aws).await;
    let url = format!("{base}/graphql");
    let db = state.db.clone();
    let http = reqwest::Client::new();
    let gql = |query: &str, vars: Value| {
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
        "mutation($n: Int!) { prepareBatchUpload(tenantId: \"demo\", assignActionId: \"register-prepaid\", rowCount: $n, deviceType: 1, workflowId: \"68a5ae7a4cb9e87b88b7d344\") { uploadId fileUpload { url fields } } }",
        json!({"n": rows}),
    )
    .await;
    let id = body["data"]["prepareBatchUpload"]["uploadId"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = csv(rows);
    let bytes = file.len();
    upload(&http, &body["data"]["prepareBatchUpload"]["fileUpload"], file).await;
    let progress = tokio::spawn(watch(subscribe_progress(&base, &token, &id).await));
    reset_peak_rss();

    let started = Instant::now();
    gql(
        "mutation($id: String!) { finalizeBatchUpload(tenantId: \"demo\", uploadId: $id) }",
        json!({"id": id}),
    )
    .await;
    let finalized = started.elapsed();
    let done = loop {
        let u = Upload::find()
            .filter(upload::Column::PublicId.eq(&id))
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        if u.status.is_terminal() {
            break u;
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "not finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let total = started.elapsed();
    let rss = peak_rss_mib();
    assert_eq!(done.status, UploadStatus::Completed, "{done:?}");
    assert_eq!(done.processed_rows as usize, rows);
    let (events, max_gap) = tokio::time::timeout(Duration::from_secs(30), progress)
        .await
        .expect("the final progress event")
        .unwrap();
    let (queued, began, finished) = (
        done.queued_at.unwrap(),
        done.started_at.unwrap(),
        done.finished_at.unwrap(),
    );
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    println!(
        "{label:<16} {rows:>8} rows ({:>5.1} MiB): finalize→COMPLETED {:>8.1} ms = {:>9.0} rows/s | finalize answered in {:.1} ms | to PROCESSING (snapshot + validate) {:>7.1} ms, chunks {:>8.1} ms | peak RSS {:>6.1} MiB | {events} progress events, longest gap {:.2} s",
        bytes as f64 / 1048576.0,
        total.as_secs_f64() * 1000.0,
        rows as f64 / total.as_secs_f64(),
        finalized.as_secs_f64() * 1000.0,
        ms(began - queued),
        ms(finished - began),
        rss,
        max_gap.as_secs_f64(),
    );
    println!("{:>27}{}", "", phase_summary());

    let baseline = baseline(&db, pg_url.as_deref(), rows, done.id).await;
    drop(db);
    drop(state);
    stop.now().await;
    println!(
        "{:>27}same rows by the database's bulk path: {:.1} ms = {:.0} rows/s; ratio {:.2}",
        "",
        baseline.as_secs_f64() * 1000.0,
        rows as f64 / baseline.as_secs_f64(),
        total.as_secs_f64() / baseline.as_secs_f64(),
    );
    Line {
        backend: label,
        rows,
        pipeline: total,
        baseline,
        peak_rss_mib: rss,
        events,
        max_gap,
    }
}

/// Counts the progress events until the final one; the longest wait between two of them.
async fn watch(mut ws: common::Ws) -> (usize, Duration) {
    let (mut events, mut max_gap, mut last) = (0, Duration::ZERO, None::<Instant>);
    while let Some(message) = ws.next().await {
        let Ok(Message::Text(text)) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        let status = value["payload"]["data"]["uploadProgress"]["status"]
            .as_str()
            .unwrap_or("");
        if status == "PREPARED" || status == "QUEUED" || status.is_empty() {
            continue;
        }
        let now = Instant::now();
        if let Some(last) = last {
            max_gap = max_gap.max(now - last);
        }
        last = Some(now);
        events += 1;
        if status != "PROCESSING" {
            break;
        }
    }
    (events, max_gap)
}

/// Peak RSS is read per run: Linux resets the high-water mark when told to.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The time the database takes the rows the pipeline wrote, by its fastest bulk path, into
/// scratch copies of `devices` and `batch_results` with the same columns, primary and unique
/// keys and indexes; foreign keys are not checked (the strictest baseline).
async fn baseline(db: &DatabaseConnection, pg_url: Option<&str>, rows: usize, upload_id: i64) -> Duration {
    let uids: Vec<String> = (0..rows as u64)
        .map(|i| {
            let body = format!("{:014}", 35_000_000_000_000 + i);
            let check = fleetload::domain::device_uid::luhn_check_digit(&body);
            format!("{body}{check}")
        })
        .collect();
    match db.get_database_backend() {
        DbBackend::Postgres => {
            copy_into_postgres(pg_url.expect("the database's URL"), &uids, upload_id).await
        }
        _ => insert_into_sqlite(db, &uids, upload_id).await,
    }
}

const DEVICE_COLUMNS: &str =
    "tenant_id, device_type, uid, uid2, state, service_type, brand_id, workflow_id, created_at, updated_at";
const RESULT_COLUMNS: &str = "upload_id, row_number, device_uid, outcome, error_code, message";

async fn copy_into_postgres(url: &str, uids: &[String], upload_id: i64) -> Duration {
    use sqlx::Connection;
    // A connection of its own: nothing of the server's connection settings carries over.
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    for (scratch, table) in [("bench_devices", "devices"), ("bench_results", "batch_results")] {
        sqlx::query(&format!("CREATE TABLE {scratch} (LIKE {table} INCLUDING ALL)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();

    let started = Instant::now();
    let mut tx = conn.begin().await.unwrap();
    let mut copy = tx
        .copy_in_raw(&format!("COPY bench_devices ({DEVICE_COLUMNS}) FROM STDIN"))
        .await
        .unwrap();
    let mut buf = String::with_capacity(1 << 20);
    for uid in uids {
        let _ = writeln!(
            buf,
            "demo\t1\t{uid}\t\\N\t2\t2\t\\N\t68a5ae7a4cb9e87b88b7d344\t{now}\t{now}"
        );
        if buf.len() > 1 << 20 {
            copy.send(std::mem::take(&mut buf).into_bytes()).await.unwrap();
        }
    }
    copy.send(std::mem::take(&mut buf).into_bytes()).await.unwrap();
    copy.finish().await.unwrap();
    let mut copy = tx
        .copy_in_raw(&format!("COPY bench_results ({RESULT_COLUMNS}) FROM STDIN"))
        .await
        .unwrap();
    for (i, uid) in uids.iter().enumerate() {
        let _ = writeln!(buf, "{upload_id}\t{}\t{uid}\tSUCCESS\t\\N\t\\N", i + 1);
        if buf.len() > 1 << 20 {
            copy.send(std::mem::take(&mut buf).into_bytes()).await.unwrap();
        }
    }
    copy.send(buf.into_bytes()).await.unwrap();
    copy.finish().await.unwrap();
    tx.commit().await.unwrap();
    let took = started.elapsed();

    sqlx::query("DROP TABLE bench_devices, bench_results")
        .execute(&mut conn)
        .await
        .unwrap();
    took
}

async fn insert_into_sqlite(db: &DatabaseConnection, uids: &[String], upload_id: i64) -> Duration {
    /// Rows per prepared statement: ten columns each stay far under SQLite's bind limit.
    const PER_STATEMENT: usize = 100;
    let pool = db.get_sqlite_connection_pool();
    let mut conn = pool.acquire().await.unwrap();
    // The scratch tables are the real ones' own DDL (keys, foreign keys, partial indexes)
    // under other names.
    for (scratch, table) in [("bench_devices", "devices"), ("bench_results", "batch_results")] {
        let ddl: Vec<(String,)> = sqlx::query_as(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL ORDER BY type DESC",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        for (sql,) in ddl {
            let sql = sql
                .replace(&format!("\"{table}\""), scratch)
                .replace(&format!(" {table} "), &format!(" {scratch} "))
                .replace(&format!(" {table}("), &format!(" {scratch}("))
                .replace(" ix_", " bench_ix_")
                .replace(" ux_", " bench_ux_")
                .replace("\"ix_", "\"bench_ix_")
                .replace("\"ux_", "\"bench_ux_");
            sqlx::query(&sql).execute(&mut *conn).await.unwrap();
        }
    }
    let now = chrono::Utc::now();
    let placeholders = |row: &str, n: usize| vec![row; n].join(", ");
    // Not a transaction's setting: off before it begins, back on after.
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut *conn)
        .await
        .unwrap();

    let started = Instant::now();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    for (start, batch) in uids.chunks(PER_STATEMENT).enumerate() {
        let sql = format!(
            "INSERT INTO bench_devices ({DEVICE_COLUMNS}) VALUES {}",
            placeholders(
                "('demo', 1, ?, NULL, 2, 2, NULL, '68a5ae7a4cb9e87b88b7d344', ?, ?)",
                batch.len()
            )
        );
        let mut query = sqlx::query(&sql);
        for uid in batch {
            query = query.bind(uid).bind(now).bind(now);
        }
        query.execute(&mut *tx).await.unwrap();
        let sql = format!(
            "INSERT INTO bench_results ({RESULT_COLUMNS}) VALUES {}",
            placeholders("(?, ?, ?, 'SUCCESS', NULL, NULL)", batch.len())
        );
        let mut query = sqlx::query(&sql);
        for (i, uid) in batch.iter().enumerate() {
            query = query
                .bind(upload_id)
                .bind((start * PER_STATEMENT + i + 1) as i32)
                .bind(uid);
        }
        query.execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let took = started.elapsed();
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut *conn)
        .await
        .unwrap();

    for table in ["bench_results", "bench_devices"] {
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    took
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn csv(rows: usize) -> Vec<u8> {
    let mut out = String::with_capacity(rows * 16 + 8);
    out.push_str("imei\n");
    let salt = std::process::id() as u64 % 1000;
    for i in 0..rows as u64 {
        let body = format!("{:014}", 86_000_000_000_000 + salt * 10_000_000 + i);
        out.push_str(&body);
        out.push(fleetload::domain::device_uid::luhn_check_digit(&body));
        out.push('\n');
    }
    out.into_bytes()
}
