//! Fair scheduling with chunks on SQS (moto), which has no order: the dispatcher keeps at
//! most a window of an upload's chunks on the queue and goes on as they are applied, so a
//! small upload finalized behind a large one finishes first; continuations run twice,
//! cancelled or killed mid-fan-out still give exactly one result per row.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use entity::job;
use entity::prelude::{BatchResult, Job, Upload, UploadChunk};
use fleetload::pipeline::Step;
use fleetload::queue::{DISPATCH_QUEUE, JobPayload};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::moto;
use crate::processes::{WorkerProcess, database_url};

struct Sqs {
    app: TestApp,
    sdk: aws_config::SdkConfig,
    client: aws_sdk_sqs::Client,
    queue_url: String,
    moto: moto::MotoServer,
}

/// An app whose chunk jobs go to a fresh SQS queue on moto; files and everything else stay
/// in its data dir and database.
async fn app_on_sqs(backend: Backend, configure: impl FnOnce(&mut fleetload::config::Settings)) -> Sqs {
    let moto = moto::s3_endpoint().await;
    let sdk = moto::sdk_config(&moto.url);
    let client = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = moto::create_queue(&client, "fltest").await;
    let endpoint = url::Url::parse(&moto.url).unwrap();
    let q = queue_url.clone();
    let app = spawn_app_full(
        backend,
        move |s| {
            s.sqs_queue_url = Some(q);
            s.sqs_endpoint_url = Some(endpoint);
            configure(s);
        },
        Some(sdk.clone()),
    )
    .await;
    Sqs {
        app,
        sdk,
        client,
        queue_url,
        moto,
    }
}

impl Sqs {
    /// Messages waiting or in flight (moto's counts are exact).
    async fn messages(&self) -> u64 {
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = attrs.attributes().unwrap();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|k| attrs.get(k).map_or(0, |v| v.parse::<u64>().unwrap()))
        .sum()
    }
}

async fn internal_id(app: &TestApp, public_id: &str) -> i64 {
    Upload::find()
        .filter(entity::upload::Column::PublicId.eq(public_id))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn applied_chunks(app: &TestApp, upload_id: i64) -> u64 {
    UploadChunk::find()
        .filter(entity::upload_chunk::Column::UploadId.eq(upload_id))
        .count(&app.state.db)
        .await
        .unwrap()
}

async fn dispatch_job(app: &TestApp, upload_id: i64) -> Option<job::Model> {
    Job::find()
        .filter(job::Column::UploadId.eq(upload_id))
        .filter(job::Column::Queue.eq(DISPATCH_QUEUE))
        .one(&app.state.db)
        .await
        .unwrap()
}

async fn assert_exact(app: &TestApp, id: &str, rows: usize) {
    let upload = app.upload_state(&app.alice(), "demo", id).await;
    assert_eq!(upload["status"], "COMPLETED", "{upload}");
    assert_eq!(
        (
            upload["totalRows"].clone(),
            upload["processedRows"].clone(),
            upload["succeeded"].clone(),
            upload["failed"].clone()
        ),
        (json!(rows), json!(rows), json!(rows), json!(0)),
        "{upload}"
    );
    let results = app.results(id).await;
    assert_eq!(results.len(), rows);
    assert!(results.iter().enumerate().all(|(i, r)| r.0 == i as i32 + 1));
}

async fn wait_until_finished(app: &TestApp, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let upload = app.upload_state(&app.alice(), "demo", id).await;
        if ["COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED"]
            .contains(&upload["status"].as_str().unwrap_or(""))
        {
            return upload;
        }
        assert!(
            started.elapsed() < limit,
            "upload not finished after {limit:?}: {upload}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Steps the pipeline until the upload is terminal: a continuation not yet due is waited
/// for (the steps themselves wake it once its window has room).
async fn drain_until_finished(app: &TestApp, id: &str) -> Value {
    let started = Instant::now();
    loop {
        app.drain().await;
        let upload = app.upload_state(&app.alice(), "demo", id).await;
        if upload["status"] != "PROCESSING" && upload["status"] != "QUEUED" {
            return upload;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{upload}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test: a 100-row upload finalized while a 100,000-row one is being processed
/// (200 chunks, all of which the old dispatcher put on SQS at once) finishes first.
async fn small_behind_large(backend: Backend) {
    const BIG: usize = 100_000;
    let sqs = app_on_sqs(backend, |s| {
        s.chunk_size = 500;
        s.workers = Some(2);
    })
    .await;
    let app = &sqs.app;
    let big = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": BIG}),
            csv("imei", &imeis(61, BIG)),
        )
        .await;
    let big_id = internal_id(app, &big).await;
    // Processing has begun and the fan-out is paused behind its window.
    let started = Instant::now();
    loop {
        let upload = app.upload_state(&app.alice(), "demo", &big).await;
        let paused = dispatch_job(app, big_id).await.is_some_and(|j| j.seq > 0);
        if paused && upload["processedRows"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{upload}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = app.settings.fanout_window as u64;
    assert!(
        sqs.messages().await <= window,
        "at most the window of chunks is on the queue"
    );

    let queued = Instant::now();
    let small = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 100}),
            csv("imei", &imeis(62, 100)),
        )
        .await;
    let small_state = wait_until_finished(app, &small, Duration::from_secs(300)).await;
    let small_took = queued.elapsed();
    let big_then = app.upload_state(&app.alice(), "demo", &big).await;
    println!(
        "SQS, {backend:?}: 100-row upload finished {small_took:?} after it was finalized; the {BIG}-row upload had done {} rows then",
        big_then["processedRows"]
    );
    assert_eq!(small_state["status"], "COMPLETED", "{small_state}");
    assert_eq!(
        big_then["status"], "PROCESSING",
        "the large upload finished first: {big_then}"
    );

    wait_until_finished(app, &big, Duration::from_secs(600)).await;
    assert_exact(app, &big, BIG).await;
    assert_exact(app, &small, 100).await;
    assert_eq!(
        BatchResult::find().count(&app.state.db).await.unwrap(),
        (BIG + 100) as u64
    );
    assert_eq!(app.count_jobs().await, 0, "no continuation left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqs_a_small_upload_behind_a_large_one_finishes_first_postgres() {
    small_behind_large(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqs_a_small_upload_behind_a_large_one_finishes_first_sqlite() {
    small_behind_large(Backend::Sqlite).await
}

/// The dispatch sends one window and becomes a continuation; a copy of that continuation
/// (a duplicate delivery) runs alongside it; a duplicated key in the file is marked in a
/// later window. Every row gets exactly one result.
async fn duplicated_continuation(backend: Backend) {
    let sqs = app_on_sqs(backend, |s| {
        s.chunk_size = 50;
        s.fanout_window = 4;
    })
    .await;
    let app = &sqs.app;
    let mut keys = imeis(63, 1000);
    keys[900] = keys[10].clone();
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": 1000}), csv("imei", &keys))
        .await;
    let upload_id = internal_id(app, &id).await;

    assert_eq!(app.pipeline.try_execute_next().await.unwrap(), Step::Done);
    assert_eq!(sqs.messages().await, 4, "one window of chunks");
    let continuation = dispatch_job(app, upload_id)
        .await
        .expect("the dispatch job went on as a continuation");
    assert_eq!(
        serde_json::from_str::<JobPayload>(&continuation.payload).unwrap(),
        JobPayload::ContinueDispatch {
            upload_id,
            from_chunk: 4,
            resume_at_applied: 2,
        }
    );
    assert_eq!(continuation.attempts, 0);
    // The same continuation once more, as a second job (a duplicate delivery).
    let now = chrono::Utc::now();
    job::ActiveModel {
        queue: Set(DISPATCH_QUEUE.to_owned()),
        payload: Set(continuation.payload.clone()),
        dedupe_key: Set(None),
        upload_id: Set(Some(upload_id)),
        seq: Set(continuation.seq),
        state: Set(job::JobState::Available),
        attempts: Set(0),
        max_attempts: Set(5),
        run_at: Set(now),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&app.state.db)
    .await
    .unwrap();

    let upload = drain_until_finished(app, &id).await;
    assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS", "{upload}");
    assert_eq!(
        (
            upload["processedRows"].clone(),
            upload["succeeded"].clone(),
            upload["failed"].clone()
        ),
        (json!(1000), json!(999), json!(1))
    );
    let results = app.results(&id).await;
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );
    assert_eq!(results[900].3.as_deref(), Some("DUPLICATE_IN_FILE"));
    assert_eq!(applied_chunks(app, upload_id).await, 20);
    assert_eq!(app.count_jobs().await, 0, "both continuations ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqs_a_duplicated_continuation_changes_nothing_sqlite() {
    duplicated_continuation(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqs_a_duplicated_continuation_changes_nothing_postgres() {
    duplicated_continuation(Backend::Postgres).await
}

const CANCEL: &str = "mutation($t: String!, $id: String!) { cancelBatchUpload(tenantId: $t, uploadId: $id) { status processedRows } }";

/// Cancelled mid-fan-out: the continuation sends nothing more and ends; the chunks already
/// on the queue are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqs_a_cancel_mid_fan_out_ends_the_continuation() {
    let sqs = app_on_sqs(Backend::Sqlite, |s| {
        s.chunk_size = 50;
        s.fanout_window = 4;
    })
    .await;
    let app = &sqs.app;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 1000}),
            csv("imei", &imeis(64, 1000)),
        )
        .await;
    let upload_id = internal_id(app, &id).await;
    assert_eq!(app.pipeline.try_execute_next().await.unwrap(), Step::Done);
    // Two chunks applied. A step may take the continuation instead, if it came due: with
    // fewer than two chunks applied it has no room and only waits again.
    while applied_chunks(app, upload_id).await < 2 {
        assert_eq!(app.pipeline.try_execute_next().await.unwrap(), Step::Done);
    }
    assert_eq!(applied_chunks(app, upload_id).await, 2);
    assert_eq!(sqs.messages().await, 2);

    let body = app
        .gql(Some(&app.alice()), CANCEL, json!({"t": "demo", "id": id}))
        .await;
    assert_eq!(
        body["data"]["cancelBatchUpload"],
        json!({"status": "CANCELLED", "processedRows": 100}),
        "{body}"
    );

    // The continuation comes due and is taken first (dispatch jobs go before chunks): it
    // sends nothing and is gone.
    let due = dispatch_job(app, upload_id).await.expect("a continuation").run_at;
    while chrono::Utc::now() <= due {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.pipeline.try_execute_next().await.unwrap(), Step::Done);
    assert!(dispatch_job(app, upload_id).await.is_none());
    assert_eq!(sqs.messages().await, 2, "nothing sent after the cancel");
    app.drain().await;
    assert_eq!(sqs.messages().await, 0);
    assert_eq!(
        applied_chunks(app, upload_id).await,
        2,
        "nothing applied after the cancel"
    );
    assert_eq!(app.results(&id).await.len(), 100);
    let upload = app.upload_state(&app.alice(), "demo", &id).await;
    assert_eq!(upload["status"], "CANCELLED", "{upload}");
    assert_eq!(upload["processedRows"], 100, "{upload}");
    assert_eq!(app.count_jobs().await, 0);
}

/// kill -9 of a worker process while the fan-out is paused behind its window (it may hold
/// the continuation or a chunk): another worker process finishes the upload exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqs_a_worker_killed_mid_fan_out_is_replaced_and_the_upload_completes() {
    let sqs = app_on_sqs(Backend::Postgres, |_| {}).await;
    let app = &sqs.app;
    let env = [
        ("DATABASE_URL", database_url(app)),
        ("FLEETLOAD_DATA_DIR", app.data_dir.path().display().to_string()),
        ("FLEETLOAD_WORKERS", "1".to_owned()),
        ("FLEETLOAD_CHUNK_SIZE", "200".to_owned()),
        ("FLEETLOAD_FANOUT_WINDOW", "4".to_owned()),
        ("FLEETLOAD_JOB_LEASE_SECS", "2".to_owned()),
        ("FLEETLOAD_SQS_QUEUE_URL", sqs.queue_url.clone()),
        ("FLEETLOAD_SQS_ENDPOINT_URL", sqs.moto.url.clone()),
        ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY.to_owned()),
        ("AWS_REGION", moto::REGION.to_owned()),
    ];
    let mut doomed = WorkerProcess::spawn(&env);
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 20_000}),
            csv("imei", &imeis(65, 20_000)),
        )
        .await;
    let upload_id = internal_id(app, &id).await;
    let started = Instant::now();
    loop {
        let paused = dispatch_job(app, upload_id).await.is_some_and(|j| j.seq > 0);
        if paused && applied_chunks(app, upload_id).await >= 6 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill();
    let before = app.upload_state(&app.alice(), "demo", &id).await;
    assert_eq!(before["status"], "PROCESSING", "{before}");

    let _replacement = WorkerProcess::spawn(&env);
    let upload = wait_until_finished(app, &id, Duration::from_secs(300)).await;
    assert_eq!(upload["status"], "COMPLETED", "{upload}");
    assert_exact(app, &id, 20_000).await;
    assert_eq!(applied_chunks(app, upload_id).await, 100);
    assert_eq!(app.count_jobs().await, 0);
}

/// The window's chunks are lost from the queue (purged): the paused fan-out would wait for
/// them forever, and the sweeper leaves an upload with a live continuation alone. Once the
/// upload has been quiet for the sweeper's staleness period and the queue is empty, the
/// continuation sends the unapplied chunks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqs_a_fan_out_whose_chunks_were_lost_sends_them_again() {
    let sqs = app_on_sqs(Backend::Sqlite, |s| {
        s.chunk_size = 50;
        s.fanout_window = 4;
        s.sweep_stale_secs = 0;
    })
    .await;
    let app = &sqs.app;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 1000}),
            csv("imei", &imeis(66, 1000)),
        )
        .await;
    let upload_id = internal_id(app, &id).await;
    assert_eq!(app.pipeline.try_execute_next().await.unwrap(), Step::Done);
    assert_eq!(sqs.messages().await, 4);
    sqs.client
        .purge_queue()
        .queue_url(&sqs.queue_url)
        .send()
        .await
        .unwrap();
    assert_eq!(sqs.messages().await, 0);
    assert_eq!(app.pipeline.sweep().await.unwrap(), 0, "the continuation is live");

    drain_until_finished(app, &id).await;
    assert_exact(app, &id, 1000).await;
    assert_eq!(applied_chunks(app, upload_id).await, 20);
    assert_eq!(app.count_jobs().await, 0);
}

/// Another process takes the continuation: it has not read the file, so it reads it from
/// the start, and a key repeated from the first window is still marked DUPLICATE_IN_FILE
/// in a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqs_a_continuation_taken_by_another_process_reads_the_file_from_the_start() {
    use std::sync::Arc;
    let sqs = app_on_sqs(Backend::Postgres, |s| {
        s.chunk_size = 50;
        s.fanout_window = 4;
    })
    .await;
    let app = &sqs.app;
    let mut keys = imeis(67, 1000);
    keys[900] = keys[10].clone();
    keys[300] = "not-an-imei".into();
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": 1000}), csv("imei", &keys))
        .await;
    assert_eq!(app.pipeline.try_execute_next().await.unwrap(), Step::Done);
    assert_eq!(sqs.messages().await, 4);

    // A second process on the same database, storage and queues; the first does nothing
    // more.
    let endpoint = url::Url::parse(&sqs.moto.url).unwrap();
    let chunks = fleetload::queue::SqsQueue::new(&sqs.sdk, sqs.queue_url.clone(), Some(&endpoint))
        .await
        .unwrap();
    let other = fleetload::pipeline::Pipeline::new(
        app.state.db.clone(),
        app.state.storage.clone(),
        Arc::new(fleetload::queue::DbQueue::new(
            app.state.db.clone(),
            DISPATCH_QUEUE,
            5,
        )),
        Arc::new(chunks),
        Arc::new(fleetload::progress::ProgressBus::for_database(&app.state.db)),
        fleetload::pipeline::PipelineSettings {
            chunk_size: 50,
            max_rows: 1_000_000,
            lease: Duration::from_secs(30),
            poll_wait: Duration::ZERO,
        },
    )
    .with_fanout_window(4);
    let started = Instant::now();
    let upload = loop {
        drain(&other).await;
        let upload = app.upload_state(&app.alice(), "demo", &id).await;
        if upload["status"] != "PROCESSING" {
            break upload;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{upload}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS", "{upload}");
    assert_eq!(
        (upload["processedRows"].clone(), upload["failed"].clone()),
        (json!(1000), json!(2))
    );
    let results = app.results(&id).await;
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );
    assert_eq!(results[300].3.as_deref(), Some("INVALID_DEVICE_UID"));
    assert_eq!(results[900].3.as_deref(), Some("DUPLICATE_IN_FILE"));
    assert_eq!(app.count_jobs().await, 0);
}
