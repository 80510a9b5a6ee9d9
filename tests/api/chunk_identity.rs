//! Chunk identity is pinned to the upload: a dispatch that died part way and is redelivered
//! to a process with another `FLEETLOAD_CHUNK_SIZE` cuts exactly the chunks the first one
//! started (chunk numbers are the workers' idempotency key), so every row gets exactly one
//! result and the upload completes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetload::pipeline::dispatcher::Dispatcher;
use fleetload::queue::{CHUNK_QUEUE, DbQueue, Delivery, JobPayload, Queue, QueueError};
use fleetload::webhook::Outbox;
use serde_json::json;

use crate::helpers::*;
use crate::results::internal_id;

/// The real chunk queue, with the connection lost after `sends` sends: the dispatcher's
/// process dies between two batches of chunks.
struct DiesAfter {
    inner: DbQueue,
    sends: AtomicUsize,
}

#[async_trait::async_trait]
impl Queue for DiesAfter {
    async fn send(&self, jobs: &[JobPayload]) -> Result<(), QueueError> {
        if self.sends.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(QueueError::Sqs("connection lost".into()));
        }
        self.inner.send(jobs).await
    }
    async fn receive(
        &self,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(max, lease, wait).await
    }
    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<(), QueueError> {
        self.inner.extend(delivery, lease).await
    }
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.inner.ack(delivery).await
    }
    async fn retry(&self, delivery: &Delivery, delay: Duration, error: &str) -> Result<(), QueueError> {
        self.inner.retry(delivery, delay, error).await
    }
    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(delivery, error).await
    }
    async fn rescue(&self) -> Result<Vec<JobPayload>, QueueError> {
        self.inner.rescue().await
    }
    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts()
    }
}

async fn redelivered_dispatch_with_another_chunk_size(backend: Backend) {
    // The process that takes the redelivered dispatch cuts chunks of 7 rows.
    let app = spawn_app_with(backend, |s| s.chunk_size = 7).await;
    let mut keys = imeis(910, 60);
    keys[12] = "not-an-imei".into();
    keys[47] = keys[3].clone();
    let public = app
        .upload_csv(&app.alice(), json!({"rowCount": 60}), csv("imei", &keys))
        .await;
    let upload_id = internal_id(&app, &public).await;

    // The first dispatcher (chunks of 2) sends one batch of ten chunks (rows 1–20), then dies.
    let dying = DiesAfter {
        inner: DbQueue::new(app.state.db.clone(), CHUNK_QUEUE, 5),
        sends: AtomicUsize::new(1),
    };
    let first = Dispatcher {
        db: &app.state.db,
        storage: app.state.storage.as_ref(),
        chunks: &dying,
        outbox: &Outbox::default(),
        chunk_size: 2,
        max_rows: 1_000_000,
        window: fleetload::pipeline::fanout_window::Window::new(
            fleetload::pipeline::dispatcher::DEFAULT_FANOUT_WINDOW,
        ),
        stalled_after: Duration::from_secs(120),
        paused: None,
    };
    assert!(first.dispatch(upload_id).await.is_err(), "the second send fails");
    // Some of its chunks are applied before the redelivery, some after.
    for _ in 0..3 {
        let delivery = dying
            .receive(1, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap()
            .pop()
            .expect("a chunk of the first dispatch");
        let JobPayload::ProcessChunk(chunk) = &delivery.payload else {
            panic!("{:?}", delivery.payload)
        };
        assert_eq!(chunk.row_span().1 - chunk.row_span().0 + 1, 2);
        fleetload::pipeline::worker::apply_chunk(
            &app.state.db,
            app.state.storage.as_ref(),
            chunk,
            &Outbox::default(),
        )
        .await
        .unwrap();
        dying.ack(&delivery).await.unwrap();
    }

    // The dispatch job is still queued (the direct call above stood in for its first
    // delivery): this process, with its chunk size of 7, takes it.
    app.drain().await;
    let state = app.upload_state(&app.alice(), "demo", &public).await;
    assert_eq!(state["status"], "COMPLETED_WITH_ERRORS", "{state}");
    assert_eq!(
        (
            state["totalRows"].as_i64(),
            state["processedRows"].as_i64(),
            state["failed"].as_i64()
        ),
        (Some(60), Some(60), Some(2)),
        "{state}"
    );
    let results = app.results(&public).await;
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>(),
        "every row exactly one result"
    );
    assert_eq!(results[12].3.as_deref(), Some("INVALID_DEVICE_UID"));
    assert_eq!(results[47].3.as_deref(), Some("DUPLICATE_IN_FILE"));
    assert_eq!(app.count_jobs().await, 0, "nothing left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite() {
    redelivered_dispatch_with_another_chunk_size(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres() {
    redelivered_dispatch_with_another_chunk_size(Backend::Postgres).await
}
