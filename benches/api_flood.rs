//! Processing under API load: a 100,000-row upload run quietly, then again while flood
//! clients with a READ token send the most expensive queries the limits let through (and
//! alias bombs they do not) in a loop. Prints both processing times and their ratio, and what
//! the flood got; asserts nothing.
//!
//! `cargo bench --bench api_flood` (rows from `FLEETLOAD_BENCH_ROWS`, default 100000; flood
//! clients from `FLEETLOAD_BENCH_FLOODERS`, default 3; PostgreSQL from
//! `FLEETLOAD_BENCH_PG_URL`, skipped when unreachable).

mod common;
use common::{Started, drop_pg_database, fresh_pg_database, start, upload};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use entity::prelude::Upload;
use entity::upload;
use fleetload::auth::{Permission, mint_token};
use fleetload::config::Settings;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let rows: usize = env_or("FLEETLOAD_BENCH_ROWS", 100_000);
    let flooders: usize = env_or("FLEETLOAD_BENCH_FLOODERS", 3);
    println!("processing of {rows} rows, quiet and under a flood of {flooders} READ clients (2 workers)");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded(dir.path());
    settings.workers = Some(2);
    run("embedded (SQLite)", settings, rows, flooders).await;

    let admin = std::env::var("FLEETLOAD_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match fresh_pg_database(&admin).await {
        Some(url) => {
            let dir = tempfile::tempdir().unwrap();
            let mut settings = Settings::embedded(dir.path());
            settings.database_url = Some(url.clone().into());
            settings.demo_data = true;
            settings.workers = Some(2);
            run("PostgreSQL", settings, rows, flooders).await;
            drop_pg_database(&admin, &url).await;
        }
        None => println!("PostgreSQL unreachable at {admin}: skipped"),
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(label: &str, settings: Settings, rows: usize, flooders: usize) {
    let secret = fleetload::startup::jwt_secret(&settings).unwrap();
    let reader = mint_token(
        &secret,
        "reader",
        "demo",
        &[Permission::Read],
        "fleetload",
        None,
        3600,
    )
    .unwrap();
    let Started {
        base, token, state, ..
    } = start(settings).await;
    let url = format!("{base}/graphql");
    let http = reqwest::Client::new();

    let (quiet, first_id) = process(&http, &url, &token, &state.db, rows, 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..flooders {
        let (http, url, reader, id, stop) = (
            http.clone(),
            url.clone(),
            reader.clone(),
            first_id.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            flood(&http, &url, &reader, &id, &stop, n).await
        }));
    }
    let user = {
        let (http, url, token, id, stop) = (
            http.clone(),
            url.clone(),
            token.clone(),
            first_id.clone(),
            stop.clone(),
        );
        tokio::spawn(async move { light_user(&http, &url, &token, &id, &stop).await })
    };
    // Let the flood reach its pace before the upload starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (flooded, _) = process(&http, &url, &token, &state.db, rows, 2).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, failures) = user.await.unwrap();
    let mut outcomes: BTreeMap<String, (usize, Duration)> = BTreeMap::new();
    for client in clients {
        for (code, (count, took)) in client.await.unwrap() {
            let entry = outcomes.entry(code).or_default();
            entry.0 += count;
            entry.1 += took;
        }
    }
    println!(
        "{label:<18} quiet {:>8.1} ms | under flood {:>8.1} ms | ratio {:.2}",
        quiet.as_secs_f64() * 1000.0,
        flooded.as_secs_f64() * 1000.0,
        flooded.as_secs_f64() / quiet.as_secs_f64()
    );
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    if !latencies.is_empty() {
        println!(
            "{:>20} a light user meanwhile: {} queries, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms, {failures} errors",
            "",
            latencies.len(),
            pct(0.5),
            pct(0.95),
            pct(1.0)
        );
    }
    for (code, (count, took)) in outcomes {
        println!(
            "{:>20} flood answers {code:<18} {count:>6} (mean {:>8.1} ms)",
            "",
            took.as_secs_f64() * 1000.0 / count.max(1) as f64
        );
    }
}

/// prepare → upload → finalize, then waits for COMPLETED; the time from finalize.
async fn process(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    db: &sea_orm::DatabaseConnection,
    rows: usize,
    salt: u64,
) -> (Duration, String) {
    let gql = |query: &str, vars: Value| {
        let req = http
            .post(url)
            .bearer_auth(token)
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
    let payload = &body["data"]["prepareBatchUpload"];
    let id = payload["uploadId"].as_str().unwrap().to_owned();
    upload(http, &payload["fileUpload"], csv(rows, salt)).await;
    let started = Instant::now();
    gql(
        "mutation($id: String!) { finalizeBatchUpload(tenantId: \"demo\", uploadId: $id) }",
        json!({"id": id}),
    )
    .await;
    loop {
        let u = Upload::find()
            .filter(upload::Column::PublicId.eq(&id))
            .one(db)
            .await
            .unwrap()
            .unwrap();
        if u.status.is_terminal() {
            assert_eq!(u.processed_rows as usize, rows, "{u:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "not finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (started.elapsed(), id)
}

/// Sends, in turn, the costliest query under the limits (100 aliased pages of 100 results
/// with totals) and a 10,000-alias bomb, until stopped; counts answers by error code.
async fn flood(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    upload_id: &str,
    stop: &AtomicBool,
    n: usize,
) -> BTreeMap<String, (usize, Duration)> {
    let page = |i: usize| {
        format!("a{i}: results(first: 100, after: null) {{ edges {{ node {{ rowNumber deviceUid }} }} }} ")
    };
    let heavy = format!(
        "{{ upload(tenantId: \"demo\", uploadId: \"{upload_id}\") {{ {} }} }}",
        (0..90).map(page).collect::<String>()
    );
    let bomb = format!(
        "{{ upload(tenantId: \"demo\", uploadId: \"{upload_id}\") {{ {} }} }}",
        (0..10_000)
            .map(|i| format!("a{i}: results(first: 500) {{ totalCount }} "))
            .collect::<String>()
    );
    let mut outcomes: BTreeMap<String, (usize, Duration)> = BTreeMap::new();
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        let query = if i % 4 == 3 { &bomb } else { &heavy };
        i += 1;
        let started = Instant::now();
        let code = match http
            .post(url)
            .bearer_auth(token)
            .json(&json!({"query": query}))
            .send()
            .await
        {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(body) => body["errors"][0]["extensions"]["code"]
                    .as_str()
                    .unwrap_or("OK")
                    .to_owned(),
                Err(_) => "UNREADABLE".to_owned(),
            },
            Err(_) => "NETWORK".to_owned(),
        };
        let entry = outcomes.entry(code).or_default();
        entry.0 += 1;
        entry.1 += started.elapsed();
    }
    outcomes
}

/// A UI polling an upload's status every 100 ms: its latencies, and its answers with errors.
async fn light_user(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    upload_id: &str,
    stop: &AtomicBool,
) -> (Vec<Duration>, usize) {
    let query =
        format!("{{ upload(tenantId: \"demo\", uploadId: \"{upload_id}\") {{ status processedRows }} }}");
    let (mut latencies, mut failures) = (Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ok = match http
            .post(url)
            .bearer_auth(token)
            .json(&json!({"query": query}))
            .send()
            .await
        {
            Ok(resp) => resp
                .json::<Value>()
                .await
                .is_ok_and(|b| b.get("errors").is_none()),
            Err(_) => false,
        };
        latencies.push(started.elapsed());
        failures += usize::from(!ok);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (latencies, failures)
}

fn csv(rows: usize, salt: u64) -> Vec<u8> {
    let mut out = String::with_capacity(rows * 16 + 8);
    out.push_str("imei\n");
    let salt = (std::process::id() as u64 % 100) * 10 + salt;
    for i in 0..rows as u64 {
        let body = format!("{:014}", 87_000_000_000_000 + salt * 10_000_000 + i);
        out.push_str(&body);
        out.push(fleetload::domain::device_uid::luhn_check_digit(&body));
        out.push('\n');
    }
    out.into_bytes()
}
