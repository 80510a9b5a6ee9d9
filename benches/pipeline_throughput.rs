//! Throughput of the pipeline: finalize → COMPLETED for REGISTER uploads of new devices, on
//! the embedded default and on PostgreSQL, with the in-process workers a deployment runs.
//! Prints times, rows/s, where the time went and peak memory; asserts nothing.
//!
//! `cargo bench --bench pipeline_throughput` (sizes from `FLEETLOAD_BENCH_ROWS`, default
//! `10000,100000`; PostgreSQL from `FLEETLOAD_BENCH_PG_URL`, skipped when unreachable).

mod common;
use common::{Started, drop_pg_database, fresh_pg_database, peak_rss_mib, start, upload};

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use entity::prelude::Upload;
use entity::upload::{self, UploadStatus};
use fleetload::config::Settings;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

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
        if event.metadata().target().ends_with("pipeline::worker") {
            let mut fields = PHASES.fields.lock().unwrap();
            *fields.entry("chunks").or_default() += 1;
            event.record(&mut Visit(&mut fields));
        }
    }
}

fn phase_summary() -> String {
    let mut fields = PHASES.fields.lock().unwrap();
    let chunks = fields.get("chunks").copied().unwrap_or(0).max(1) as f64;
    let avg = |name: &str| fields.get(name).copied().unwrap_or(0) as f64 / chunks / 1000.0;
    let line = format!(
        "per chunk (avg of {chunks}): lookup {:.1} ms, effects {:.1} ms, results {:.1} ms, commit {:.1} ms, whole transaction {:.1} ms",
        avg("lookup_us"),
        avg("effects_us"),
        avg("results_us"),
        avg("commit_us"),
        avg("total_us"),
    );
    fields.clear();
    line
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

    let sizes: Vec<usize> = std::env::var("FLEETLOAD_BENCH_ROWS")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let workers: usize = std::env::var("FLEETLOAD_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    println!(
        "pipeline throughput: REGISTER of new devices, {workers} in-process workers, chunks of 2000 rows"
    );
    println!("peak RSS before any upload: {:.1} MiB", peak_rss_mib());

    for &rows in &sizes {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::embedded(dir.path());
        settings.workers = Some(workers);
        run("embedded (SQLite)", settings, rows).await;
    }
    let admin = std::env::var("FLEETLOAD_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    for &rows in &sizes {
        let Some(url) = fresh_pg_database(&admin).await else {
            println!("PostgreSQL unreachable at {admin}: skipped");
            break;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::embedded(dir.path());
        settings.database_url = Some(url.clone().into());
        settings.demo_data = true;
        settings.workers = Some(workers);
        run("PostgreSQL", settings, rows).await;
        drop_pg_database(&admin, &url).await;
    }
}

async fn run(label: &str, settings: Settings, rows: usize) {
    let Started { base, token, state } = start(settings).await;
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

    let started = Instant::now();
    gql(
        "mutation($id: String!) { finalizeBatchUpload(tenantId: \"demo\", uploadId: $id) }",
        json!({"id": id}),
    )
    .await;
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
        assert!(started.elapsed() < Duration::from_secs(1800), "not finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let total = started.elapsed();
    assert_eq!(done.status, UploadStatus::Completed, "{done:?}");
    assert_eq!(done.processed_rows as usize, rows);
    let (queued, began, finished) = (
        done.queued_at.unwrap(),
        done.started_at.unwrap(),
        done.finished_at.unwrap(),
    );
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    println!(
        "{label:<18} {rows:>8} rows ({:>5.1} MiB): finalize→COMPLETED {:>8.1} ms = {:>9.0} rows/s | to PROCESSING (snapshot + validate) {:>7.1} ms, chunks {:>8.1} ms | peak RSS {:>6.1} MiB",
        bytes as f64 / 1048576.0,
        total.as_secs_f64() * 1000.0,
        rows as f64 / total.as_secs_f64(),
        ms(began - queued),
        ms(finished - began),
        peak_rss_mib(),
    );
    println!("{:>27}{}", "", phase_summary());
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
