//! Deadlock-free lock order on PostgreSQL: two uploads over the same 1,000 devices, one file
//! in the reverse order of the other, their overlapping chunks applied at the same instant.
//! Every chunk transaction commits on its first attempt (no deadlock error to retry) and the
//! results are exact: each device registered by exactly one of the two uploads.
//!
//! Whole-file chunks make the two transactions overlap for certain (with the rows inserted in
//! file order they deadlocked on every run); small chunks make many pairs run at once.

use std::collections::HashMap;
use std::sync::Arc;

use entity::job;
use entity::prelude::Job;
use fleetload::pipeline::chunk_rows;
use fleetload::pipeline::worker::{ChunkOutcome, apply_chunk};
use fleetload::queue::{CHUNK_QUEUE, ChunkJob, JobPayload};
use fleetload::webhook::Outbox;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use tokio::sync::Barrier;

use crate::helpers::*;
use crate::results::internal_id;

const DEVICES: usize = 1000;

/// The queued chunk jobs of `upload_id`, by chunk number.
async fn chunks_of(app: &TestApp, upload_id: i64) -> Vec<ChunkJob> {
    let mut chunks: Vec<ChunkJob> = Job::find()
        .filter(job::Column::Queue.eq(CHUNK_QUEUE))
        .all(&app.state.db)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|j| match serde_json::from_str(&j.payload).unwrap() {
            JobPayload::ProcessChunk(c) if c.upload_id == upload_id => Some(c),
            _ => None,
        })
        .collect();
    chunks.sort_by_key(|c| c.chunk);
    chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_over_the_same_devices_in_opposite_order_never_deadlock_in_whole_file_chunks() {
    opposite_orders(1000, 920).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_over_the_same_devices_in_opposite_order_never_deadlock_in_small_chunks() {
    opposite_orders(50, 921).await
}

async fn opposite_orders(chunk: usize, seed: u64) {
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.chunk_size = chunk;
        s.db_max_connections = 16;
    })
    .await;
    let keys = imeis(seed, DEVICES);
    let reversed: Vec<String> = keys.iter().rev().cloned().collect();
    let forward = app
        .upload_csv(&app.alice(), json!({"rowCount": DEVICES}), csv("imei", &keys))
        .await;
    let backward = app
        .upload_csv(&app.alice(), json!({"rowCount": DEVICES}), csv("imei", &reversed))
        .await;
    // Both dispatches (dispatch jobs go first), no chunk yet.
    for _ in 0..2 {
        app.pipeline.try_execute_next().await.unwrap();
    }
    let a = chunks_of(&app, internal_id(&app, &forward).await).await;
    let b = chunks_of(&app, internal_id(&app, &backward).await).await;
    assert_eq!((a.len(), b.len()), (DEVICES / chunk, DEVICES / chunk));

    // Chunk i of one file holds the same devices as chunk n-1-i of the other, in reverse:
    // each such pair starts together, on connections of its own.
    let n = a.len();
    let db = app.state.db.clone();
    let storage = app.state.storage.clone();
    let mut pairs = Vec::new();
    for i in 0..n {
        let (x, y) = (a[i].clone(), b[n - 1 - i].clone());
        let uids = async |job: &ChunkJob| {
            let rows = chunk_rows::load(storage.as_ref(), job).await.unwrap();
            let mut uids: Vec<String> = rows.iter().map(|r| r.uid.clone()).collect();
            uids.sort_unstable();
            uids
        };
        assert_eq!(uids(&x).await, uids(&y).await, "pair {i} covers the same devices");
        let barrier = Arc::new(Barrier::new(2));
        for job in [x, y] {
            let (db, storage, barrier) = (db.clone(), storage.clone(), barrier.clone());
            pairs.push(tokio::spawn(async move {
                barrier.wait().await;
                apply_chunk(&db, storage.as_ref(), &job, &Outbox::default()).await
            }));
        }
    }
    for outcome in futures::future::join_all(pairs).await {
        let outcome = outcome.unwrap();
        assert!(
            matches!(outcome, Ok(ChunkOutcome::Applied { .. })),
            "a chunk did not commit at its first attempt: {outcome:?}"
        );
    }

    // The queued jobs find their chunks applied; nothing else happens.
    app.drain().await;
    let mut registered: HashMap<String, usize> = HashMap::new();
    for id in [&forward, &backward] {
        let state = app.upload_state(&app.alice(), "demo", id).await;
        assert_eq!(state["processedRows"], DEVICES, "{state}");
        let results = app.results(id).await;
        assert_eq!(results.len(), DEVICES);
        for (_, uid, outcome, code) in results {
            if outcome == "SUCCESS" {
                *registered.entry(uid).or_default() += 1;
            } else {
                assert_eq!(code.as_deref(), Some("WRONG_STATE_DEVICE"), "{uid}");
            }
        }
    }
    assert_eq!(registered.len(), DEVICES, "every device registered");
    assert!(registered.values().all(|&n| n == 1), "by exactly one upload");
    assert_eq!(deadlocks_detected(&app).await, 0);
}

/// Deadlocks PostgreSQL detected in `app`'s database. Its backends count them and publish
/// the counts when they exit, so the app's pool is closed first (the app is done with it).
async fn deadlocks_detected(app: &TestApp) -> i64 {
    use secrecy::ExposeSecret;
    use sqlx::Connection;
    app.state.db.clone().close().await.unwrap();
    let url = app
        .settings
        .database_url
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    // Exited backends publish before the next statistics read; wait for them to be gone.
    for _ in 0..100 {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if others == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The same two files through the real workers (four of them, small chunks): both uploads
/// complete with exact results and PostgreSQL counted no deadlock (a deadlock would have been
/// retried by the queue and left no other trace).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_processing_opposite_orders_together_hit_no_deadlock() {
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.chunk_size = 100;
        s.workers = Some(4);
        s.db_max_connections = 16;
    })
    .await;
    let keys = imeis(922, DEVICES);
    let reversed: Vec<String> = keys.iter().rev().cloned().collect();
    // Both files in place first, then both finalized at once, so the workers take them together.
    let mut ids = Vec::new();
    for file in [&keys, &reversed] {
        let vars = json!({"tenantId": "demo", "assignActionId": "register-prepaid", "rowCount": DEVICES, "deviceType": 1});
        let payload = app.prepare(&app.alice(), vars).await;
        let resp = app.post_file(&payload["fileUpload"], csv("imei", file)).await;
        assert!(resp.status().is_success());
        ids.push(payload["uploadId"].as_str().unwrap().to_owned());
    }
    let alice = app.alice();
    let finalized = futures::future::join_all(ids.iter().map(|id| app.finalize(&alice, "demo", id))).await;
    assert!(
        finalized
            .iter()
            .all(|b| b["data"]["finalizeBatchUpload"] == "QUEUED"),
        "{finalized:?}"
    );
    let started = std::time::Instant::now();
    for id in &ids {
        loop {
            let state = app.upload_state(&app.alice(), "demo", id).await;
            if ["COMPLETED", "COMPLETED_WITH_ERRORS"].contains(&state["status"].as_str().unwrap()) {
                assert_eq!(state["processedRows"], DEVICES, "{state}");
                break;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(120), "{state}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let mut registered: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        for (_, uid, outcome, _) in app.results(id).await {
            if outcome == "SUCCESS" {
                *registered.entry(uid).or_default() += 1;
            }
        }
    }
    assert_eq!(registered.len(), DEVICES);
    assert!(registered.values().all(|&n| n == 1));
    assert_eq!(deadlocks_detected(&app).await, 0);
}
