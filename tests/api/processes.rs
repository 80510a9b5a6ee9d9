//! Real processes: `fleetload worker` binaries working on the same PostgreSQL, killed with
//! SIGKILL mid-chunk, and the production shape (PostgreSQL + S3 + SQS, one API process and
//! two worker processes).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use entity::job::JobState;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::moto;

/// A `fleetload worker` child process, killed when dropped.
pub(crate) struct WorkerProcess(Child);

impl WorkerProcess {
    pub(crate) fn spawn(env: &[(&str, String)]) -> Self {
        Self::spawn_command("worker", env)
    }

    /// `fleetload <command>` (`worker` or `serve`) with only the environment given.
    fn spawn_command(command: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetload"));
        cmd.arg(command);
        // Only what the test names: nothing of the developer's own environment.
        for (key, _) in std::env::vars() {
            if key.starts_with("FLEETLOAD_") || key.starts_with("AWS_") || key == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.env("FLEETLOAD_LISTEN", "127.0.0.1:0");
        let logs = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logs);
        Self(cmd.spawn().expect("the fleetload binary starts"))
    }

    /// SIGKILL: no shutdown, no cleanup, an open transaction left to the database.
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal` (`TERM`: as an orchestrator stops a process; `INT`: ctrl-c).
    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }

    /// The exit status, waiting at most `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the process did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls the upload until it is terminal (bounded: a stuck pipeline fails the test).
pub(crate) async fn wait_until_finished(app: &TestApp, id: &str, limit: Duration) -> Value {
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn database_url(app: &TestApp) -> String {
    use secrecy::ExposeSecret;
    app.settings
        .database_url
        .as_ref()
        .expect("a PostgreSQL app")
        .expose_secret()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_chunk_loses_and_doubles_nothing() {
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.chunk_size = 25_000;
        s.job_lease_secs = 2;
    })
    .await;
    let keys = imeis(8, 50_000);
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": 50_000}), csv("imei", &keys))
        .await;
    // The API process dispatches: two chunk jobs of 25,000 rows on the job table.
    assert_eq!(
        app.pipeline.try_execute_next().await.unwrap(),
        fleetload::pipeline::Step::Done
    );
    let env = [
        ("DATABASE_URL", database_url(&app)),
        ("FLEETLOAD_DATA_DIR", app.data_dir.path().display().to_string()),
        ("FLEETLOAD_WORKERS", "1".to_owned()),
        ("FLEETLOAD_JOB_LEASE_SECS", "2".to_owned()),
    ];

    let mut doomed = WorkerProcess::spawn(&env);
    let started = Instant::now();
    loop {
        let running = entity::prelude::Job::find()
            .filter(entity::job::Column::State.eq(JobState::Running))
            .count(&app.state.db)
            .await
            .unwrap();
        if running > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the worker never took a chunk"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill();
    // Killed inside the chunk's transaction: nothing of it committed.
    let applied = entity::prelude::UploadChunk::find()
        .count(&app.state.db)
        .await
        .unwrap();
    assert_eq!(applied, 0, "the worker was killed mid-chunk");
    let after_kill = app.upload_state(&app.alice(), "demo", &id).await;
    assert_eq!(after_kill["processedRows"], 0);

    let _survivor = WorkerProcess::spawn(&env);
    let upload = wait_until_finished(&app, &id, Duration::from_secs(120)).await;

    assert_eq!(upload["status"], "COMPLETED", "{upload}");
    assert_eq!(
        (
            upload["processedRows"].clone(),
            upload["succeeded"].clone(),
            upload["failed"].clone()
        ),
        (json!(50_000), json!(50_000), json!(0))
    );
    let results = app.results(&id).await;
    assert_eq!(results.len(), 50_000);
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| r.0 == i as i32 + 1 && r.2 == "SUCCESS")
    );
    assert_eq!(
        entity::prelude::Device::find()
            .count(&app.state.db)
            .await
            .unwrap(),
        50_000
    );
}

/// A main queue with a redrive policy to its own dead-letter queue, on moto.
async fn sqs_queue(sdk: &aws_config::SdkConfig, max_receives: u32) -> String {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    moto::create_queue_with_dead_letter(&sqs, Some(max_receives), &[])
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_shape_postgres_s3_sqs_an_api_and_two_workers_process_50_000_rows() {
    let moto = moto::s3_endpoint().await;
    let sdk = moto::sdk_config(&moto.url);
    let bucket = moto::create_bucket(&sdk).await;
    let queue_url = sqs_queue(&sdk, 5).await;
    let endpoint = url::Url::parse(&moto.url).unwrap();
    let (b, q, e) = (bucket.clone(), queue_url.clone(), endpoint.clone());
    let app = spawn_app_full(
        Backend::Postgres,
        move |s| {
            s.s3_bucket = Some(b);
            s.s3_endpoint_url = Some(e.clone());
            s.s3_force_path_style = true;
            s.sqs_queue_url = Some(q);
            s.sqs_endpoint_url = Some(e);
        },
        Some(sdk),
    )
    .await;
    let env = [
        ("DATABASE_URL", database_url(&app)),
        ("FLEETLOAD_DATA_DIR", app.data_dir.path().display().to_string()),
        ("FLEETLOAD_WORKERS", "2".to_owned()),
        ("FLEETLOAD_S3_BUCKET", bucket),
        ("FLEETLOAD_S3_ENDPOINT_URL", moto.url.clone()),
        ("FLEETLOAD_S3_FORCE_PATH_STYLE", "true".to_owned()),
        ("FLEETLOAD_SQS_QUEUE_URL", queue_url),
        ("FLEETLOAD_SQS_ENDPOINT_URL", moto.url.clone()),
        ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY.to_owned()),
        ("AWS_REGION", moto::REGION.to_owned()),
    ];
    let _workers = [WorkerProcess::spawn(&env), WorkerProcess::spawn(&env)];

    let keys = imeis(9, 50_000);
    let mut rows = keys.clone();
    rows.extend(["not-an-imei".to_owned(), keys[0].clone()]);
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": 50_002}), csv("imei", &rows))
        .await;
    let upload = wait_until_finished(&app, &id, Duration::from_secs(300)).await;

    assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS", "{upload}");
    assert_eq!(
        (
            upload["totalRows"].clone(),
            upload["processedRows"].clone(),
            upload["succeeded"].clone(),
            upload["failed"].clone()
        ),
        (json!(50_002), json!(50_002), json!(50_000), json!(2))
    );
    let results = app.results(&id).await;
    assert_eq!(results.len(), 50_002);
    assert!(results.iter().enumerate().all(|(i, r)| r.0 == i as i32 + 1));
    assert_eq!(
        entity::prelude::Device::find()
            .count(&app.state.db)
            .await
            .unwrap(),
        50_000
    );
}

/// SQS, except that the first delete of each message is lost: the worker died after its
/// chunk committed and before it could delete the message.
struct LosesFirstAck {
    inner: fleetload::queue::SqsQueue,
    lost: std::sync::Mutex<std::collections::HashSet<String>>,
    redelivered: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl fleetload::queue::Queue for LosesFirstAck {
    async fn send(&self, jobs: &[fleetload::queue::JobPayload]) -> Result<(), fleetload::queue::QueueError> {
        self.inner.send(jobs).await
    }
    async fn receive(
        &self,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<fleetload::queue::Delivery>, fleetload::queue::QueueError> {
        let got = self.inner.receive(max, lease, wait).await?;
        let again = got.iter().filter(|d| d.attempt > 1).count();
        self.redelivered
            .fetch_add(again, std::sync::atomic::Ordering::SeqCst);
        Ok(got)
    }
    async fn extend(
        &self,
        d: &fleetload::queue::Delivery,
        lease: Duration,
    ) -> Result<(), fleetload::queue::QueueError> {
        self.inner.extend(d, lease).await
    }
    async fn ack(&self, d: &fleetload::queue::Delivery) -> Result<(), fleetload::queue::QueueError> {
        let key = d.payload.dedupe_key();
        if self.lost.lock().unwrap().insert(key) {
            return Ok(());
        }
        self.inner.ack(d).await
    }
    async fn retry(
        &self,
        d: &fleetload::queue::Delivery,
        delay: Duration,
        error: &str,
    ) -> Result<(), fleetload::queue::QueueError> {
        self.inner.retry(d, delay, error).await
    }
    async fn dead_letter(
        &self,
        d: &fleetload::queue::Delivery,
        error: &str,
    ) -> Result<(), fleetload::queue::QueueError> {
        self.inner.dead_letter(d, error).await
    }
    async fn rescue(&self) -> Result<Vec<fleetload::queue::JobPayload>, fleetload::queue::QueueError> {
        self.inner.rescue().await
    }
    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_redelivered_by_sqs_after_their_visibility_timeout_change_nothing() {
    use fleetload::pipeline::{Pipeline, PipelineSettings};
    use std::sync::Arc;
    let moto = moto::s3_endpoint().await;
    let sdk = moto::sdk_config(&moto.url);
    let queue_url = sqs_queue(&sdk, 5).await;
    let endpoint = url::Url::parse(&moto.url).unwrap();
    let app = spawn_app(Backend::Postgres).await;
    let sqs = fleetload::queue::SqsQueue::new(&sdk, queue_url, Some(&endpoint))
        .await
        .unwrap();
    let flaky = Arc::new(LosesFirstAck {
        inner: sqs,
        lost: Default::default(),
        redelivered: Default::default(),
    });
    let pipeline = Pipeline::new(
        app.state.db.clone(),
        app.state.storage.clone(),
        Arc::new(fleetload::queue::DbQueue::new(
            app.state.db.clone(),
            fleetload::queue::DISPATCH_QUEUE,
            5,
        )),
        flaky.clone(),
        app.state.progress.clone(),
        PipelineSettings {
            chunk_size: 400,
            max_rows: 1_000_000,
            lease: Duration::from_secs(1),
            poll_wait: Duration::ZERO,
        },
    );
    let mut rows = imeis(10, 2_000);
    rows.push("nope".into());
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": 2_001}), csv("imei", &rows))
        .await;

    drain(&pipeline).await;
    let first = app.upload_state(&app.alice(), "demo", &id).await;
    // SQS offers every unacknowledged message again once its visibility timeout has run out.
    let started = Instant::now();
    while flaky.redelivered.load(std::sync::atomic::Ordering::SeqCst) < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "SQS never redelivered all six chunks"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        drain(&pipeline).await;
    }

    let after = app.upload_state(&app.alice(), "demo", &id).await;
    assert_eq!(first, after, "redelivered chunks changed nothing");
    assert_eq!(after["status"], "COMPLETED_WITH_ERRORS");
    assert_eq!(
        (
            after["processedRows"].clone(),
            after["succeeded"].clone(),
            after["failed"].clone()
        ),
        (json!(2_001), json!(2_000), json!(1))
    );
    assert_eq!(app.results(&id).await.len(), 2_001);
}

/// The job `job_id` as it is now, if it still exists.
async fn job(app: &TestApp, job_id: i64) -> Option<entity::job::Model> {
    entity::prelude::Job::find_by_id(job_id)
        .one(&app.state.db)
        .await
        .unwrap()
}

/// Waits until a job of `queue` is running under a consumer of process `pid`; its id.
async fn job_held_by(app: &TestApp, queue: &str, pid: u32) -> i64 {
    let started = Instant::now();
    loop {
        let held = entity::prelude::Job::find()
            .filter(entity::job::Column::Queue.eq(queue))
            .filter(entity::job::Column::State.eq(JobState::Running))
            .all(&app.state.db)
            .await
            .unwrap()
            .into_iter()
            .find(|j| j.locked_by.as_deref().is_some_and(|c| held_by(c, pid)));
        if let Some(job) = held {
            return job.id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "process {pid} never took a {queue} job"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `locked_by` (`[<worker id>/]<pid>-<random>`) names a consumer of process `pid`.
fn held_by(locked_by: &str, pid: u32) -> bool {
    let consumer = locked_by.rsplit('/').next().unwrap_or(locked_by);
    consumer.split('-').next() == Some(pid.to_string().as_str())
}

/// Waits until job `job_id` is done or claimed by process `pid`; how long that took.
async fn taken_over(app: &TestApp, job_id: i64, pid: u32, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match job(app, job_id).await {
            None => return started.elapsed(),
            Some(j) if j.locked_by.as_deref().is_some_and(|c| held_by(c, pid)) => {
                return started.elapsed();
            }
            Some(j) => assert!(
                started.elapsed() < limit,
                "job not taken over within {limit:?}: {j:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Locks the upload's row until rolled back: a worker dispatching or applying a chunk of
/// it waits, holding its job, until then.
async fn hold_upload(app: &TestApp, upload_id: i64) -> sea_orm::DatabaseTransaction {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let txn = app.state.db.begin().await.unwrap();
    let sql = match app.backend {
        Backend::Postgres => format!("SELECT id FROM uploads WHERE id = {upload_id} FOR UPDATE"),
        // SQLite: a write takes the database's one write lock.
        Backend::Sqlite => format!("UPDATE uploads SET updated_at = updated_at WHERE id = {upload_id}"),
    };
    txn.execute_unprepared(&sql).await.unwrap();
    txn
}

async fn internal_id(app: &TestApp, public_id: &str) -> i64 {
    entity::prelude::Upload::find()
        .filter(entity::upload::Column::PublicId.eq(public_id))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn assert_exact(app: &TestApp, id: &str, rows: usize) {
    let upload = app.upload_state(&app.alice(), "demo", id).await;
    assert_eq!(upload["status"], "COMPLETED", "{upload}");
    assert_eq!(
        (
            upload["processedRows"].clone(),
            upload["succeeded"].clone(),
            upload["failed"].clone()
        ),
        (json!(rows), json!(rows), json!(0))
    );
    let results = app.results(id).await;
    assert_eq!(results.len(), rows);
    assert!(results.iter().enumerate().all(|(i, r)| r.0 == i as i32 + 1));
}

fn pg_worker_env(app: &TestApp, lease_secs: u64) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url(app)),
        ("FLEETLOAD_DATA_DIR", app.data_dir.path().display().to_string()),
        ("FLEETLOAD_WORKERS", "1".to_owned()),
        ("FLEETLOAD_CHUNK_SIZE", "1000".to_owned()),
        ("FLEETLOAD_JOB_LEASE_SECS", lease_secs.to_string()),
    ]
}

/// kill -9 of the worker holding the dispatch job (mid-dispatch, waiting on the upload's
/// row): the other worker takes the job over as soon as the lease runs out, which short,
/// renewed leases make seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_while_dispatching_is_replaced_within_a_few_lease_renewals() {
    const LEASE: u64 = 3;
    let app = spawn_app_with(Backend::Postgres, |s| s.chunk_size = 1000).await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 5000}),
            csv("imei", &imeis(41, 5000)),
        )
        .await;
    let upload_id = internal_id(&app, &id).await;
    let env = pg_worker_env(&app, LEASE);
    let blocker = hold_upload(&app, upload_id).await;
    let mut doomed = WorkerProcess::spawn(&env);
    let dispatch = job_held_by(&app, fleetload::queue::DISPATCH_QUEUE, doomed.pid()).await;
    let survivor = WorkerProcess::spawn(&env);

    doomed.kill();
    blocker.rollback().await.unwrap();
    let stall = taken_over(&app, dispatch, survivor.pid(), Duration::from_secs(60)).await;

    println!(
        "dispatch stalled {:.1} s after kill -9 (lease {LEASE} s)",
        stall.as_secs_f64()
    );
    assert!(
        stall < Duration::from_secs(3 * LEASE),
        "stalled {stall:?}, more than three leases"
    );
    wait_until_finished(&app, &id, Duration::from_secs(120)).await;
    assert_exact(&app, &id, 5000).await;
}

/// kill -9 of the worker holding a chunk: the other worker takes it over within a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_while_holding_a_chunk_is_replaced_within_a_few_lease_renewals() {
    const LEASE: u64 = 3;
    let app = spawn_app_with(Backend::Postgres, |s| s.chunk_size = 1000).await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 5000}),
            csv("imei", &imeis(42, 5000)),
        )
        .await;
    let upload_id = internal_id(&app, &id).await;
    assert_eq!(
        app.pipeline.try_execute_next().await.unwrap(),
        fleetload::pipeline::Step::Done
    );
    let env = pg_worker_env(&app, LEASE);
    let blocker = hold_upload(&app, upload_id).await;
    let mut doomed = WorkerProcess::spawn(&env);
    let chunk = job_held_by(&app, fleetload::queue::CHUNK_QUEUE, doomed.pid()).await;
    let survivor = WorkerProcess::spawn(&env);

    doomed.kill();
    blocker.rollback().await.unwrap();
    let stall = taken_over(&app, chunk, survivor.pid(), Duration::from_secs(60)).await;

    println!(
        "chunk stalled {:.1} s after kill -9 (lease {LEASE} s)",
        stall.as_secs_f64()
    );
    assert!(
        stall < Duration::from_secs(3 * LEASE),
        "stalled {stall:?}, more than three leases"
    );
    wait_until_finished(&app, &id, Duration::from_secs(120)).await;
    assert_exact(&app, &id, 5000).await;
}

/// A worker restarted under its worker id takes back its dead incarnation's job at once,
/// long before the (here one-minute) lease would run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_restarted_under_its_id_takes_back_its_jobs_at_once() {
    const LEASE: u64 = 60;
    let app = spawn_app_with(Backend::Postgres, |s| s.chunk_size = 1000).await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 3000}),
            csv("imei", &imeis(43, 3000)),
        )
        .await;
    let upload_id = internal_id(&app, &id).await;
    app.pipeline.try_execute_next().await.unwrap();
    let mut env = pg_worker_env(&app, LEASE);
    env.push(("FLEETLOAD_WORKER_ID", "worker-a".to_owned()));
    let blocker = hold_upload(&app, upload_id).await;
    let mut doomed = WorkerProcess::spawn(&env);
    let chunk = job_held_by(&app, fleetload::queue::CHUNK_QUEUE, doomed.pid()).await;
    assert!(
        job(&app, chunk)
            .await
            .unwrap()
            .locked_by
            .unwrap()
            .starts_with("worker-a/")
    );

    doomed.kill();
    blocker.rollback().await.unwrap();
    let restarted = WorkerProcess::spawn(&env);
    let stall = taken_over(&app, chunk, restarted.pid(), Duration::from_secs(LEASE / 2)).await;

    println!(
        "restarted worker took its chunk back {:.1} s after it started (lease {LEASE} s)",
        stall.as_secs_f64()
    );
    wait_until_finished(&app, &id, Duration::from_secs(LEASE / 2)).await;
    assert_exact(&app, &id, 3000).await;
}

/// The embedded default (SQLite, one process): a server killed with a chunk in hand and
/// started again takes the chunk back at once instead of waiting out its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_embedded_server_takes_back_its_dead_jobs_at_once() {
    restart_embedded(fleetload::queue::CHUNK_QUEUE, 44).await
}

/// The same, killed mid-dispatch (the dispatcher waits to mark the upload PROCESSING).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_embedded_server_takes_back_its_dead_dispatch_at_once() {
    restart_embedded(fleetload::queue::DISPATCH_QUEUE, 47).await
}

async fn restart_embedded(queue: &str, seed: u64) {
    const LEASE: u64 = 60;
    let app = spawn_app_with(Backend::Sqlite, |s| s.chunk_size = 1000).await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 20_000}),
            csv("imei", &imeis(seed, 20_000)),
        )
        .await;
    let upload_id = internal_id(&app, &id).await;
    if queue == fleetload::queue::CHUNK_QUEUE {
        app.pipeline.try_execute_next().await.unwrap();
    }
    let env = [
        ("FLEETLOAD_DATA_DIR", app.data_dir.path().display().to_string()),
        ("FLEETLOAD_WORKERS", "1".to_owned()),
        ("FLEETLOAD_JOB_LEASE_SECS", LEASE.to_string()),
    ];
    let mut doomed = WorkerProcess::spawn_command("serve", &env);
    // SQLite has no row locks: the test takes the database's write lock while the server
    // holds a job (it then waits for its next write), trying again if it caught the server
    // between two jobs.
    let (blocker, held) = loop {
        job_held_by(&app, queue, doomed.pid()).await;
        let blocker = hold_upload(&app, upload_id).await;
        let held: Vec<i64> = entity::prelude::Job::find()
            .filter(entity::job::Column::State.eq(JobState::Running))
            .all(&app.state.db)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        if !held.is_empty() {
            break (blocker, held);
        }
        blocker.rollback().await.unwrap();
    };

    doomed.kill();
    blocker.rollback().await.unwrap();
    let killed = Instant::now();
    let restarted = WorkerProcess::spawn_command("serve", &env);
    for job_id in held {
        taken_over(&app, job_id, restarted.pid(), Duration::from_secs(LEASE / 2)).await;
    }
    wait_until_finished(&app, &id, Duration::from_secs(LEASE / 2)).await;

    println!(
        "restarted embedded server killed holding a {queue} job finished the upload {:.1} s after the kill (lease {LEASE} s)",
        killed.elapsed().as_secs_f64()
    );
    assert_exact(&app, &id, 20_000).await;
}

/// SIGTERM while a chunk is in hand: the worker takes no new job, lets the chunk commit
/// (it can once the upload's row is free again, well within the grace period), and exits 0;
/// nothing is left leased, and the upload completes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_chunk_lets_the_chunk_commit_and_exits_0() {
    stop_mid_chunk("TERM", 45).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_mid_chunk_lets_the_chunk_commit_and_exits_0() {
    stop_mid_chunk("INT", 46).await
}

async fn stop_mid_chunk(signal: &str, seed: u64) {
    let app = spawn_app_with(Backend::Postgres, |s| s.chunk_size = 1000).await;
    let id = app
        .upload_csv(
            &app.alice(),
            json!({"rowCount": 4000}),
            csv("imei", &imeis(seed, 4000)),
        )
        .await;
    let upload_id = internal_id(&app, &id).await;
    app.pipeline.try_execute_next().await.unwrap();
    let env = pg_worker_env(&app, 10);
    let blocker = hold_upload(&app, upload_id).await;
    let mut worker = WorkerProcess::spawn(&env);
    let chunk = job_held_by(&app, fleetload::queue::CHUNK_QUEUE, worker.pid()).await;

    worker.signal(signal);
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.rollback().await.unwrap();
    let status = worker.wait_exit(Duration::from_secs(30)).await;

    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        job(&app, chunk).await.is_none(),
        "the chunk in hand committed and was acked"
    );
    let jobs = entity::prelude::Job::find()
        .filter(entity::job::Column::Queue.eq(fleetload::queue::CHUNK_QUEUE))
        .all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3, "no new job was taken: {jobs:?}");
    assert!(
        jobs.iter()
            .all(|j| j.state == JobState::Available && j.attempts == 0),
        "nothing abandoned: {jobs:?}"
    );
    assert_eq!(
        app.upload_state(&app.alice(), "demo", &id).await["processedRows"],
        1000
    );
    drain(&app.pipeline).await;
    assert_exact(&app, &id, 4000).await;
}
