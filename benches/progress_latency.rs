//! Latency of live progress: from the commit of an upload's last chunk to the final
//! `uploadProgress` event at a graphql-transport-ws subscriber, on the embedded default
//! (in-process bus) and on PostgreSQL (NOTIFY/LISTEN). The commit is seen by polling the
//! upload's row every 2 ms (`finishedAt` cannot serve: it is taken when the chunk starts), so
//! the figure is exact to a few milliseconds. Target: ≤ 500 ms. Prints p50 and max over
//! several uploads; asserts nothing.
//!
//! `cargo bench --bench progress_latency` (`FLEETLOAD_BENCH_UPLOADS`, default 10, of
//! `FLEETLOAD_BENCH_ROWS` rows, default 20000; PostgreSQL from `FLEETLOAD_BENCH_PG_URL`).

mod common;
use common::{Started, drop_pg_database, fresh_pg_database, start, subscribe_progress};

use std::time::{Duration, Instant};

use entity::prelude::Upload;
use entity::upload;
use fleetload::config::Settings;
use futures::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let env = |key: &str, default: usize| {
        std::env::var(key)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let uploads = env("FLEETLOAD_BENCH_UPLOADS", 10);
    let rows = env("FLEETLOAD_BENCH_ROWS", 20_000);
    println!(
        "progress latency: last chunk's commit → final event at a subscriber, {uploads} uploads of {rows} rows, 2 in-process workers"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded(dir.path());
    settings.workers = Some(2);
    run("embedded (SQLite)", settings, uploads, rows).await;

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
    settings.workers = Some(2);
    run("PostgreSQL", settings, uploads, rows).await;
    drop_pg_database(&admin, &url).await;
}

async fn run(label: &str, settings: Settings, uploads: usize, rows: usize) {
    let Started {
        base, token, state, ..
    } = start(settings).await;
    let db = state.db;
    let http = reqwest::Client::new();

    let mut latencies = Vec::with_capacity(uploads);
    for n in 0..uploads {
        let id = prepare_and_post(&http, &base, &token, rows, n).await;
        let mut ws = subscribe_progress(&base, &token, &id).await;
        gql(
            &http,
            &base,
            &token,
            "mutation($id: String!) { finalizeBatchUpload(tenantId: \"demo\", uploadId: $id) }",
            json!({"id": id}),
        )
        .await;
        let committed = tokio::spawn(seen_finished(db.clone(), id.clone()));
        let arrived = loop {
            let message = tokio::time::timeout(Duration::from_secs(600), ws.next())
                .await
                .expect("an event within ten minutes")
                .expect("the connection stays open")
                .unwrap();
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            let status = &value["payload"]["data"]["uploadProgress"]["status"];
            if status == "COMPLETED" || status == "COMPLETED_WITH_ERRORS" {
                break Instant::now();
            }
            assert_ne!(value["type"], "complete", "completed without a final state");
        };
        let committed = committed.await.unwrap();
        // Signed: the event may beat the poller by a poll interval.
        let ms = if arrived >= committed {
            (arrived - committed).as_secs_f64() * 1000.0
        } else {
            -((committed - arrived).as_secs_f64() * 1000.0)
        };
        latencies.push(ms);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{label:<18} final event after the last commit: p50 {:>6.1} ms, max {:>6.1} ms (min {:.1} ms)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies[0],
    );
}

/// When the upload's final state first became visible in the database.
async fn seen_finished(db: sea_orm::DatabaseConnection, id: String) -> Instant {
    loop {
        let upload = Upload::find()
            .filter(upload::Column::PublicId.eq(&id))
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        if upload.status.is_terminal() {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn gql(http: &reqwest::Client, base: &str, token: &str, query: &str, vars: Value) -> Value {
    let body: Value = http
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": vars}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body
}

/// A PREPARED upload with its file posted; returns its id.
async fn prepare_and_post(http: &reqwest::Client, base: &str, token: &str, rows: usize, n: usize) -> String {
    let body = gql(
        http,
        base,
        token,
        "mutation($n: Int!) { prepareBatchUpload(tenantId: \"demo\", assignActionId: \"register-prepaid\", rowCount: $n, deviceType: 1) { uploadId fileUpload { url fields } } }",
        json!({"n": rows}),
    )
    .await;
    let payload = &body["data"]["prepareBatchUpload"];
    let fields: Value = serde_json::from_str(payload["fileUpload"]["fields"].as_str().unwrap()).unwrap();
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields.as_object().unwrap() {
        form = form.text(k.clone(), v.as_str().unwrap().to_owned());
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(csv(rows, n)).file_name("d.csv"),
    );
    let resp = http
        .post(payload["fileUpload"]["url"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    payload["uploadId"].as_str().unwrap().to_owned()
}

fn csv(rows: usize, n: usize) -> Vec<u8> {
    let mut out = String::with_capacity(rows * 16 + 8);
    out.push_str("imei\n");
    let salt = (std::process::id() as u64 % 100) * 100 + n as u64;
    for i in 0..rows as u64 {
        let body = format!("{:014}", 87_000_000_000_000 + salt * 1_000_000 + i);
        out.push_str(&body);
        out.push(fleetload::domain::device_uid::luhn_check_digit(&body));
        out.push('\n');
    }
    out.into_bytes()
}
