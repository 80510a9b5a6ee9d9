//! Job settlement, measured:
//! - the stall after `kill -9` of a `fleetload worker` process holding chunks (PostgreSQL,
//!   two worker processes, the default lease): how long until another worker has taken over
//!   every job the dead one held; and the same when the process is restarted at once under
//!   its `FLEETLOAD_WORKER_ID`;
//! - fairness: how soon a 100-row upload finalized behind a large one (whose first dispatch
//!   is done) finishes, with chunks on the job table (SQLite, PostgreSQL) and on SQS (moto,
//!   which, like SQS, gives no order), there without and with the fan-out window; the large
//!   upload's own time shows what the window costs it.
//!
//! Prints numbers; asserts only that every upload completes exactly.
//! `cargo bench --bench settlement` (large upload size from `FLEETLOAD_BENCH_ROWS`, default
//! 100000; PostgreSQL from `FLEETLOAD_BENCH_PG_URL`; moto from `FLEETLOAD_TEST_MOTO_URL` or a
//! `moto_server` child; each part is skipped when its service is unavailable;
//! `FLEETLOAD_BENCH_SQS_ONLY=1` runs the SQS fairness part alone).

mod common;
#[path = "../tests/api/moto.rs"]
mod moto;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{drop_pg_database, fresh_pg_database, upload};
use entity::job::{self, JobState};
use entity::prelude::{Job, Upload};
use entity::upload::{self as upload_entity, UploadStatus};
use fleetload::config::Settings;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

struct Server {
    base: String,
    token: String,
    db: DatabaseConnection,
    http: reqwest::Client,
}

async fn start(mut settings: Settings, aws: Option<aws_config::SdkConfig>) -> Server {
    use fleetload::auth::{Permission, mint_token};
    settings.listen = "127.0.0.1:0".parse().unwrap();
    let secret = fleetload::startup::jwt_secret(&settings).unwrap();
    let permissions = [Permission::Read, Permission::Update];
    let token = mint_token(&secret, "alice", "demo", &permissions, "fleetload", None, 3600).unwrap();
    let app = fleetload::startup::Application::build_with_aws(settings, aws)
        .await
        .unwrap();
    let base = app.public_url().as_str().trim_end_matches('/').to_owned();
    let db = app.state().db.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    Server {
        base,
        token,
        db,
        http: reqwest::Client::new(),
    }
}

impl Server {
    async fn gql(&self, query: &str, vars: Value) -> Value {
        let body: Value = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
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

    /// prepare → POST → finalize; returns the internal upload id.
    async fn submit(&self, rows: usize, seed: u64) -> i64 {
        let body = self
            .gql(
                "mutation($n: Int!) { prepareBatchUpload(tenantId: \"demo\", assignActionId: \"register-prepaid\", rowCount: $n, deviceType: 1) { uploadId fileUpload { url fields } } }",
                json!({"n": rows}),
            )
            .await;
        let id = body["data"]["prepareBatchUpload"]["uploadId"]
            .as_str()
            .unwrap()
            .to_owned();
        upload(
            &self.http,
            &body["data"]["prepareBatchUpload"]["fileUpload"],
            csv(rows, seed),
        )
        .await;
        self.gql(
            "mutation($id: String!) { finalizeBatchUpload(tenantId: \"demo\", uploadId: $id) }",
            json!({"id": id}),
        )
        .await;
        Upload::find()
            .filter(upload_entity::Column::PublicId.eq(&id))
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
            .id
    }

    async fn upload(&self, id: i64) -> upload_entity::Model {
        Upload::find_by_id(id).one(&self.db).await.unwrap().unwrap()
    }

    /// Waits until the upload is terminal and checks it completed exactly.
    async fn finished(&self, id: i64, rows: usize) -> upload_entity::Model {
        let started = Instant::now();
        loop {
            let u = self.upload(id).await;
            if u.status.is_terminal() {
                assert_eq!(u.status, UploadStatus::Completed, "{u:?}");
                assert_eq!(
                    (u.processed_rows as usize, u.succeeded as usize),
                    (rows, rows),
                    "{u:?}"
                );
                return u;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1800),
                "not finished: {u:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn csv(rows: usize, seed: u64) -> Vec<u8> {
    let mut out = String::with_capacity(rows * 16 + 8);
    out.push_str("imei\n");
    let salt = (std::process::id() as u64 % 100) * 100 + seed;
    for i in 0..rows as u64 {
        let body = format!("{:014}", 87_000_000_000_000 + salt * 1_000_000 + i);
        out.push_str(&body);
        out.push(fleetload::domain::device_uid::luhn_check_digit(&body));
        out.push('\n');
    }
    out.into_bytes()
}

/// A `fleetload worker` child, killed when dropped.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn spawn(env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetload"));
        cmd.arg("worker");
        for (key, _) in std::env::vars() {
            if key.starts_with("FLEETLOAD_") || key.starts_with("AWS_") || key == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.env("FLEETLOAD_LISTEN", "127.0.0.1:0");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self(cmd.spawn().expect("the fleetload binary starts"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `locked_by` (`[<worker id>/]<pid>-<random>`) names a consumer of process `pid`.
fn held_by(locked_by: Option<&str>, pid: u32) -> bool {
    locked_by.is_some_and(|c| {
        let consumer = c.rsplit('/').next().unwrap_or(c);
        consumer.split('-').next() == Some(pid.to_string().as_str())
    })
}

async fn running_jobs(db: &DatabaseConnection) -> Vec<job::Model> {
    Job::find()
        .filter(job::Column::State.eq(JobState::Running))
        .all(db)
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("FLEETLOAD_BENCH_ROWS")
        .ok()
        .and_then(|s| s.split(',').next().and_then(|n| n.trim().parse().ok()))
        .unwrap_or(100_000);
    let admin = std::env::var("FLEETLOAD_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());

    println!("job settlement: {rows}-row REGISTER uploads, chunks of 2000 rows");
    // Only the SQS fairness figures (e.g. with a million rows).
    if std::env::var_os("FLEETLOAD_BENCH_SQS_ONLY").is_some() {
        sqs_fairness(rows).await;
        return;
    }
    for restart in [false, true] {
        let Some(url) = fresh_pg_database(&admin).await else {
            println!("PostgreSQL unreachable at {admin}: kill -9 stall skipped");
            break;
        };
        kill9_stall(&url, rows, restart).await;
        drop_pg_database(&admin, &url).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded(dir.path());
    settings.workers = Some(2);
    fairness("job table, SQLite", settings, None, rows).await;
    if let Some(url) = fresh_pg_database(&admin).await {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::embedded(dir.path());
        settings.database_url = Some(url.clone().into());
        settings.demo_data = true;
        settings.workers = Some(2);
        fairness("job table, PostgreSQL", settings, None, rows).await;
        drop_pg_database(&admin, &url).await;
    }
    sqs_fairness(rows).await;
}

/// Two worker processes (two workers each, default lease); the first is killed while it
/// holds chunks. With `restart`, it comes back at once under the same worker id.
async fn kill9_stall(url: &str, rows: usize, restart: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded(dir.path());
    settings.database_url = Some(url.to_owned().into());
    settings.demo_data = true;
    settings.workers = Some(0);
    let lease = settings.job_lease_secs;
    let server = start(settings, None).await;
    let env = |id: &str| {
        vec![
            ("DATABASE_URL", url.to_owned()),
            ("FLEETLOAD_DATA_DIR", dir.path().display().to_string()),
            ("FLEETLOAD_WORKERS", "2".to_owned()),
            ("FLEETLOAD_WORKER_ID", id.to_owned()),
        ]
    };
    let mut doomed = WorkerProcess::spawn(&env("bench-a"));
    let _other = WorkerProcess::spawn(&env("bench-b"));
    let id = server.submit(rows, 1).await;
    let started = Instant::now();
    // Until the doomed process holds a chunk.
    let held = loop {
        let held: Vec<i64> = running_jobs(&server.db)
            .await
            .into_iter()
            .filter(|j| {
                j.queue == fleetload::queue::CHUNK_QUEUE && held_by(j.locked_by.as_deref(), doomed.pid())
            })
            .map(|j| j.id)
            .collect();
        if !held.is_empty() {
            break held;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no chunk taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let doomed_pid = doomed.pid();
    doomed.kill();
    let killed = Instant::now();
    let _replacement = restart.then(|| WorkerProcess::spawn(&env("bench-a")));
    // Every job it held is done, or held by someone else.
    loop {
        let mut open = 0;
        for &job_id in &held {
            if let Some(j) = Job::find_by_id(job_id).one(&server.db).await.unwrap()
                && (j.state != JobState::Running || held_by(j.locked_by.as_deref(), doomed_pid))
            {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(600), "never taken over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stall = killed.elapsed();
    server.finished(id, rows).await;
    let dead = Job::find()
        .filter(job::Column::State.eq(JobState::Dead))
        .count(&server.db)
        .await
        .unwrap();
    println!(
        "kill -9 of a worker holding {} chunk(s), lease {lease} s{}: its chunks taken over after {:.2} s; upload complete and exact {:.1} s after the kill ({dead} dead jobs)",
        held.len(),
        if restart {
            ", restarted at once under its worker id"
        } else {
            ", another worker process running"
        },
        stall.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
    );
}

/// A 100-row upload finalized once every chunk of a large one is queued.
async fn fairness(label: &str, settings: Settings, aws: Option<aws_config::SdkConfig>, rows: usize) {
    let on_job_table = settings.sqs_queue_url.is_none();
    let window = settings.fanout_window;
    let server = start(settings, aws).await;
    let big = server.submit(rows, 2).await;
    let started = Instant::now();
    loop {
        let u = server.upload(big).await;
        // The first dispatch is done (rank 0; a paused fan-out's continuation ranks higher).
        let dispatching = Job::find()
            .filter(job::Column::UploadId.eq(big))
            .filter(job::Column::Queue.eq(fleetload::queue::DISPATCH_QUEUE))
            .filter(job::Column::Seq.eq(0))
            .count(&server.db)
            .await
            .unwrap();
        if dispatching == 0 && u.processed_rows > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "{u:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = Instant::now();
    let small = server.submit(100, 3).await;
    server.finished(small, 100).await;
    let small_took = queued.elapsed();
    let big_then = server.upload(big).await;
    let big_done = server.finished(big, rows).await;
    let big_took = big_done.finished_at.unwrap() - big_done.started_at.unwrap();
    println!(
        "fairness, {label:<22}: 100-row upload finished {:>7.2} s after its finalize; the {rows}-row one had {} of {rows} rows done then ({}; it took {:.1} s in all){}",
        small_took.as_secs_f64(),
        big_then.processed_rows,
        if big_then.status.is_terminal() {
            "finished first"
        } else {
            "still processing"
        },
        big_took.num_milliseconds() as f64 / 1000.0,
        match (on_job_table, window) {
            (true, _) => String::new(),
            (false, 0) => " [SQS, no fan-out window: no order at all]".to_owned(),
            (false, w) => format!(" [SQS, fan-out window {w} chunks]"),
        },
    );
}

async fn sqs_fairness(rows: usize) {
    if std::env::var_os("FLEETLOAD_TEST_MOTO_URL").is_none()
        && Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
    {
        println!("moto unavailable: SQS fairness skipped");
        return;
    }
    let moto = moto::s3_endpoint().await;
    let sdk = moto::sdk_config(&moto.url);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    // Without the window (every chunk sent at once, as before it) and with the default; a
    // queue each (the first server's workers still run).
    for window in [0, Settings::embedded("/tmp").fanout_window] {
        let queue_url = moto::create_queue(&sqs, "flbench").await;
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::embedded(dir.path());
        settings.workers = Some(2);
        settings.sqs_queue_url = Some(queue_url);
        settings.sqs_endpoint_url = Some(url::Url::parse(&moto.url).unwrap());
        settings.fanout_window = window;
        fairness("SQS (moto), SQLite", settings, Some(sdk.clone()), rows).await;
    }
}
