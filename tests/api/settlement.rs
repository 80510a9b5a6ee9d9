//! Job settlement on the real server: stranded uploads swept (resumed or failed), a job given
//! up together with its upload, a job in hand given back on shutdown, and fair claiming (a
//! small upload queued behind a large one finishes first).

use std::time::{Duration, Instant};

use entity::job::{self, JobState};
use entity::prelude::{BatchResult, Job, Upload, UploadChunk};
use entity::upload;
use fleetload::pipeline::sweeper::GIVEN_UP_REASON;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, TransactionTrait};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

async fn internal_id(app: &TestApp, public_id: &str) -> i64 {
    Upload::find()
        .filter(upload::Column::PublicId.eq(public_id))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn jobs_of_upload(app: &TestApp, upload_id: i64) -> Vec<job::Model> {
    Job::find()
        .filter(job::Column::UploadId.eq(upload_id))
        .all(&app.state.db)
        .await
        .unwrap()
}

/// Every data row has exactly one result and the counters say so.
async fn assert_exact(app: &TestApp, id: &str, rows: usize, failed: usize) {
    let upload = app.upload_state(&app.alice(), "demo", id).await;
    let want = if failed == 0 {
        "COMPLETED"
    } else {
        "COMPLETED_WITH_ERRORS"
    };
    assert_eq!(upload["status"], want, "{upload}");
    assert_eq!(
        (
            upload["totalRows"].clone(),
            upload["processedRows"].clone(),
            upload["succeeded"].clone(),
            upload["failed"].clone()
        ),
        (json!(rows), json!(rows), json!(rows - failed), json!(failed)),
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sweeping_at_once(s: &mut fleetload::config::Settings) {
    s.chunk_size = 100;
    s.sweep_stale_secs = 0;
}

/// Dispatches the upload and applies its first chunk, then loses every job left: the upload
/// is PROCESSING, half done, with nothing queued for it.
async fn strand(app: &TestApp, id: &str) -> i64 {
    let upload_id = internal_id(app, id).await;
    assert_eq!(
        app.pipeline.try_execute_next().await.unwrap(),
        fleetload::pipeline::Step::Done
    );
    assert_eq!(
        app.pipeline.try_execute_next().await.unwrap(),
        fleetload::pipeline::Step::Done
    );
    let lost = Job::delete_many()
        .filter(job::Column::UploadId.eq(upload_id))
        .exec(&app.state.db)
        .await
        .unwrap()
        .rows_affected;
    assert!(lost > 0);
    let upload = app.upload_state(&app.alice(), "demo", id).await;
    assert_eq!(upload["status"], "PROCESSING");
    assert_eq!(upload["processedRows"], 100);
    upload_id
}

async fn resumed_body(backend: Backend) {
    let app = spawn_app_with(backend, sweeping_at_once).await;
    let mut keys = imeis(31, 450);
    keys.push("not-an-imei".into());
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": 451}), csv("imei", &keys))
        .await;
    let upload_id = strand(&app, &id).await;
    assert_eq!(app.drain().await, 0, "nothing left to run");

    assert_eq!(app.pipeline.sweep().await.unwrap(), 1);
    // A second sweeper (another replica) right after finds nothing to do: the dispatch job
    // it queued is live.
    assert_eq!(app.pipeline.sweep().await.unwrap(), 0);
    assert_eq!(jobs_of_upload(&app, upload_id).await.len(), 1);
    app.drain().await;

    assert_exact(&app, &id, 451, 1).await;
    assert_eq!(
        app.pipeline.sweep().await.unwrap(),
        0,
        "finished uploads are left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranded_upload_is_resumed_to_exact_completion_sqlite() {
    resumed_body(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranded_upload_is_resumed_to_exact_completion_postgres() {
    resumed_body(Backend::Postgres).await
}

async fn given_up_body(backend: Backend) {
    let app = spawn_app_with(backend, sweeping_at_once).await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 300}),
            csv("imei", &imeis(32, 300)),
        )
        .await;
    let upload_id = internal_id(&app, &id).await;
    // Dispatched; then a chunk job is given up while failing its upload did not happen
    // (the database went away in between, as it could before settlement was one step).
    app.pipeline.try_execute_next().await.unwrap();
    Job::update_many()
        .col_expr(job::Column::State, Expr::value(JobState::Dead))
        .filter(job::Column::UploadId.eq(upload_id))
        .filter(job::Column::Seq.eq(101))
        .exec(&app.state.db)
        .await
        .unwrap();
    app.drain().await;
    let upload = app.upload_state(&app.alice(), "demo", &id).await;
    assert_eq!(upload["status"], "PROCESSING");
    assert_eq!(upload["processedRows"], 200);

    assert_eq!(app.pipeline.sweep().await.unwrap(), 1);

    let upload = app.upload_state(&app.alice(), "demo", &id).await;
    assert_eq!(upload["status"], "FAILED");
    assert_eq!(upload["failureReason"], GIVEN_UP_REASON);
    // The results already written stay.
    assert_eq!(upload["processedRows"], 200);
    assert_eq!(app.results(&id).await.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranded_upload_with_a_given_up_job_is_failed_with_a_reason_sqlite() {
    given_up_body(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranded_upload_with_a_given_up_job_is_failed_with_a_reason_postgres() {
    given_up_body(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recently_changed_upload_is_not_swept() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.chunk_size = 100).await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 300}),
            csv("imei", &imeis(33, 300)),
        )
        .await;
    strand(&app, &id).await;

    // Default staleness: two minutes without a change.
    assert_eq!(app.pipeline.sweep().await.unwrap(), 0);
    assert_eq!(
        app.upload_state(&app.alice(), "demo", &id).await["status"],
        "PROCESSING"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_background_sweeper_of_a_worker_process_resumes_a_stranded_upload() {
    let app = spawn_app_with(Backend::Postgres, |s| {
        sweeping_at_once(s);
        s.sweep_interval_secs = 1;
    })
    .await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 500}),
            csv("imei", &imeis(34, 500)),
        )
        .await;
    strand(&app, &id).await;

    let stop = CancellationToken::new();
    let handles = app.pipeline.spawn(1, stop.clone());
    let upload = wait_until_finished(&app, &id, Duration::from_secs(60)).await;
    stop.cancel();
    futures::future::join_all(handles).await;

    assert_eq!(upload["status"], "COMPLETED", "{upload}");
    assert_exact(&app, &id, 500, 0).await;
}

/// A real fault: the upload names a device type no worker knows, so its chunks can never
/// be applied.
async fn dead_letter_body(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.chunk_size = 100).await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 250}),
            csv("imei", &imeis(35, 250)),
        )
        .await;
    let upload_id = internal_id(&app, &id).await;
    app.pipeline.try_execute_next().await.unwrap();
    Upload::update_many()
        .col_expr(upload::Column::DeviceType, Expr::value(99i16))
        .filter(upload::Column::Id.eq(upload_id))
        .exec(&app.state.db)
        .await
        .unwrap();

    assert_eq!(
        app.pipeline.try_execute_next().await.unwrap(),
        fleetload::pipeline::Step::Done
    );

    let upload = app.upload_state(&app.alice(), "demo", &id).await;
    assert_eq!(upload["status"], "FAILED", "{upload}");
    assert!(
        upload["failureReason"]
            .as_str()
            .unwrap()
            .contains("(rows 1–100) failed after 1 attempt(s) with an internal error"),
        "{upload}"
    );
    let dead: Vec<_> = jobs_of_upload(&app, upload_id)
        .await
        .into_iter()
        .filter(|j| j.state == JobState::Dead)
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].seq, 1);
    // The other chunks find the upload failed and change nothing.
    app.drain().await;
    assert_eq!(app.results(&id).await.len(), 0);
    assert_eq!(app.pipeline.sweep().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_given_up_is_dead_lettered_with_its_upload_failed_sqlite() {
    dead_letter_body(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_given_up_is_dead_lettered_with_its_upload_failed_postgres() {
    dead_letter_body(Backend::Postgres).await
}

/// Shutdown while a chunk cannot finish (its counters' row is locked by another
/// transaction): after the grace period the job is given back at once, its attempt not
/// counted, nothing of it committed; the upload then completes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_gives_back_a_job_that_cannot_finish_within_the_grace_period() {
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.chunk_size = 200;
        s.shutdown_grace_secs = 1;
    })
    .await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 400}),
            csv("imei", &imeis(36, 400)),
        )
        .await;
    let upload_id = internal_id(&app, &id).await;
    app.pipeline.try_execute_next().await.unwrap();
    let blocker = app.state.db.begin().await.unwrap();
    blocker
        .execute_unprepared(&format!(
            "SELECT id FROM uploads WHERE id = {upload_id} FOR UPDATE"
        ))
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let handles = app.pipeline.spawn(1, stop.clone());
    let started = Instant::now();
    while !jobs_of_upload(&app, upload_id)
        .await
        .iter()
        .any(|j| j.state == JobState::Running)
    {
        assert!(started.elapsed() < Duration::from_secs(30), "no chunk was taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    futures::future::join_all(handles).await;

    let jobs = jobs_of_upload(&app, upload_id).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(job.state, JobState::Available, "{job:?}");
        assert_eq!(job.attempts, 0, "the given-back attempt is not counted: {job:?}");
        assert_eq!(job.locked_by, None);
    }
    blocker.rollback().await.unwrap();
    assert_eq!(
        UploadChunk::find()
            .filter(entity::upload_chunk::Column::UploadId.eq(upload_id))
            .count(&app.state.db)
            .await
            .unwrap(),
        0
    );
    app.drain().await;
    assert_exact(&app, &id, 400, 0).await;
}

/// A small upload finalized while a large one is being processed starts at once and
/// finishes first: chunks are claimed by their first row across uploads.
async fn fairness_body(backend: Backend) {
    const BIG: usize = 100_000;
    let app = spawn_app_with(backend, |s| {
        s.chunk_size = 500;
        s.workers = Some(2);
    })
    .await;
    let big = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": BIG}),
            csv("imei", &imeis(37, BIG)),
        )
        .await;
    let big_id = internal_id(&app, &big).await;
    // Every chunk of the large upload is queued (its dispatch job is done) and processing
    // has begun: first come, first served would now run all of them before the small one.
    let started = Instant::now();
    loop {
        let upload = app.upload_state(&app.alice(), "demo", &big).await;
        let dispatching = Job::find()
            .filter(job::Column::UploadId.eq(big_id))
            .filter(job::Column::Queue.eq(fleetload::queue::DISPATCH_QUEUE))
            .count(&app.state.db)
            .await
            .unwrap();
        if dispatching == 0 && upload["processedRows"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{upload}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let queued = Instant::now();
    let small = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 100}),
            csv("imei", &imeis(38, 100)),
        )
        .await;
    let small_state = wait_until_finished(&app, &small, Duration::from_secs(300)).await;
    let small_took = queued.elapsed();
    let big_then = app.upload_state(&app.alice(), "demo", &big).await;
    println!(
        "{backend:?}: 100-row upload finished {small_took:?} after it was finalized; the {BIG}-row upload had done {} rows then",
        big_then["processedRows"]
    );

    assert_eq!(small_state["status"], "COMPLETED", "{small_state}");
    assert_eq!(
        big_then["status"], "PROCESSING",
        "the large upload finished first: {big_then}"
    );
    wait_until_finished(&app, &big, Duration::from_secs(600)).await;
    assert_exact(&app, &big, BIG, 0).await;
    assert_exact(&app, &small, 100, 0).await;
    assert_eq!(
        BatchResult::find().count(&app.state.db).await.unwrap(),
        (BIG + 100) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_upload_behind_a_large_one_finishes_first_sqlite() {
    fairness_body(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_upload_behind_a_large_one_finishes_first_postgres() {
    fairness_body(Backend::Postgres).await
}

/// Chunks on SQS, whose messages the sweeper cannot see: once the chunk queue is empty and
/// the upload has gone unchanged, a PROCESSING upload is dispatched again and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_chunks_on_sqs_a_stranded_upload_is_resumed_once_the_queue_is_empty() {
    let moto = crate::moto::s3_endpoint().await;
    let sdk = crate::moto::sdk_config(&moto.url);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = crate::moto::create_queue(&sqs, "fltest").await;
    let endpoint = url::Url::parse(&moto.url).unwrap();
    let q = queue_url.clone();
    let app = spawn_app_full(
        Backend::Sqlite,
        move |s| {
            sweeping_at_once(s);
            s.sqs_queue_url = Some(q);
            s.sqs_endpoint_url = Some(endpoint);
        },
        Some(sdk),
    )
    .await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 300}),
            csv("imei", &imeis(39, 300)),
        )
        .await;
    // Dispatched: three chunk messages on SQS. While they wait, the upload is left alone.
    assert_eq!(
        app.pipeline.try_execute_next().await.unwrap(),
        fleetload::pipeline::Step::Done
    );
    assert_eq!(
        app.pipeline.sweep().await.unwrap(),
        0,
        "its chunks are waiting on SQS"
    );
    // The messages are lost (purged, or deleted by a buggy consumer).
    sqs.purge_queue().queue_url(&queue_url).send().await.unwrap();
    assert_eq!(
        app.upload_state(&app.alice(), "demo", &id).await["status"],
        "PROCESSING"
    );

    assert_eq!(app.pipeline.sweep().await.unwrap(), 1);

    let started = Instant::now();
    loop {
        app.drain().await;
        let upload = app.upload_state(&app.alice(), "demo", &id).await;
        if upload["status"] != "PROCESSING" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{upload}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_exact(&app, &id, 300, 0).await;
}
