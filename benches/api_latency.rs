//! Latency of the request path: `prepareBatchUpload` and `finalizeBatchUpload` over HTTP,
//! on the embedded default and on PostgreSQL. Prints percentiles; asserts nothing.
//!
//! `cargo bench --bench api_latency` (PostgreSQL from `FLEETLOAD_BENCH_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; skipped when unreachable).

mod common;
use common::{Started, drop_pg_database, fresh_pg_database, start, upload};

use std::time::{Duration, Instant};

use fleetload::config::Settings;
use serde_json::{Value, json};

const PREPARES: usize = 300;
const FINALIZES: usize = 100;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::embedded(dir.path());
    run("embedded (SQLite + local storage)", settings).await;

    let admin = std::env::var("FLEETLOAD_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match fresh_pg_database(&admin).await {
        Some(url) => {
            let dir = tempfile::tempdir().unwrap();
            let mut settings = Settings::embedded(dir.path());
            settings.database_url = Some(url.clone().into());
            settings.demo_data = true;
            run("PostgreSQL + local storage", settings).await;
            drop_pg_database(&admin, &url).await;
        }
        None => println!("PostgreSQL unreachable at {admin}: skipped"),
    }
}

async fn run(label: &str, settings: Settings) {
    let Started { base, token, .. } = start(settings).await;
    let url = format!("{base}/graphql");
    let http = reqwest::Client::new();
    let gql = |query: &'static str, vars: Value| {
        let req = http
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"query": query, "variables": vars}));
        async move {
            let started = Instant::now();
            let body: Value = req.send().await.unwrap().json().await.unwrap();
            assert!(body.get("errors").is_none(), "{body}");
            (started.elapsed(), body)
        }
    };
    const PREPARE: &str = "mutation($n: Int!) { prepareBatchUpload(tenantId: \"demo\", assignActionId: \"register-prepaid\", rowCount: $n, deviceType: 1, workflowId: \"68a5ae7a4cb9e87b88b7d344\") { uploadId fileUpload { url fields expiresAt } } }";
    const FINALIZE: &str =
        "mutation($id: String!) { finalizeBatchUpload(tenantId: \"demo\", uploadId: $id) }";

    // Warm the connection pools.
    for _ in 0..10 {
        gql(PREPARE, json!({"n": 10})).await;
    }
    let mut prepare = Vec::new();
    let mut prepared = Vec::new();
    for i in 0..PREPARES {
        let (took, body) = gql(PREPARE, json!({"n": 10_000})).await;
        prepare.push(took);
        if i < FINALIZES {
            prepared.push(body["data"]["prepareBatchUpload"].clone());
        }
    }

    // Declared sizes do not matter to finalize; a 1,000,000-row file shows it.
    let big = big_csv(1_000_000);
    let (_, body) = gql(PREPARE, json!({"n": 1_000_000})).await;
    let big_prep = body["data"]["prepareBatchUpload"].clone();
    upload(&http, &big_prep["fileUpload"], big.clone()).await;
    for p in &prepared {
        upload(&http, &p["fileUpload"], b"imei\n490154203237518\n".to_vec()).await;
    }
    let mut finalize = Vec::new();
    for p in &prepared {
        let (took, _) = gql(FINALIZE, json!({"id": p["uploadId"]})).await;
        finalize.push(took);
    }
    let (big_took, _) = gql(FINALIZE, json!({"id": big_prep["uploadId"]})).await;
    let mut repeat = Vec::new();
    for p in &prepared {
        let (took, _) = gql(FINALIZE, json!({"id": p["uploadId"]})).await;
        repeat.push(took);
    }

    println!("\n{label}");
    report("prepareBatchUpload", &mut prepare);
    report("finalizeBatchUpload (first call)", &mut finalize);
    report("finalizeBatchUpload (repeat)", &mut repeat);
    println!(
        "  finalizeBatchUpload of a 1,000,000-row file ({:.1} MiB): {:.2} ms",
        big.len() as f64 / 1048576.0,
        ms(big_took)
    );
}

fn big_csv(rows: usize) -> Vec<u8> {
    let mut out = String::from("imei\n");
    for i in 0..rows {
        let body = format!("35{:012}", i);
        out.push_str(&body);
        out.push(fleetload::domain::device_uid::luhn_check_digit(&body));
        out.push('\n');
    }
    out.into_bytes()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let pct = |p: f64| ms(samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]);
    println!(
        "  {name:<36} n={:<4} p50 {:>6.2} ms  p95 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        samples.len(),
        pct(0.50),
        pct(0.95),
        pct(0.99),
        ms(*samples.last().unwrap())
    );
}
