//! Runs pipeline jobs: one step at a time (tests drain the queues deterministically with
//! [`Pipeline::try_execute_next`]) or as worker loops in `serve` and `worker` processes.
//!
//! Each job runs with its lease kept alive by a heartbeat; success acks it, a retryable
//! failure goes back with backoff, and a job that cannot succeed (or ran out of attempts)
//! is dead-lettered and fails its upload with a reason, keeping the results already
//! written: in one transaction on the job table, the upload first on SQS.
//!
//! Settlement: on shutdown a worker takes no new job and lets the one in hand finish within
//! a grace period, else gives its lease back at once; a process starting up takes back the
//! leases of its own dead predecessor at once; a sweeper resumes or fails uploads nothing
//! works on any more.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entity::upload::UploadStatus;
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dispatcher::{
    CONTINUE_AFTER, DEFAULT_FANOUT_WINDOW, DispatchOutcome, Dispatcher, PausedFanOuts, fail_upload,
    wake_continuations,
};
use super::fanout_window::Window;
use super::sweeper::Sweeper;
use super::worker::{ChunkOutcome, apply_chunk};
use crate::config::Settings;
use crate::progress::ProgressBus;
use crate::queue::{Delivery, JobPayload, Queue, QueueError};
use crate::storage::ObjectStore;
use crate::webhook::Outbox;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A job was taken and handled (acked, retried or dead-lettered).
    Done,
    /// Both queues were empty.
    Empty,
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub chunk_size: usize,
    pub max_rows: u32,
    /// How long a taken job stays hidden from other workers; renewed while it runs.
    pub lease: Duration,
    /// How long an idle worker waits on the chunk queue per poll: zero for the job table
    /// (polling it is cheap, and dispatch jobs are noticed at once), a long poll on SQS.
    pub poll_wait: Duration,
}

/// How jobs are settled when a process stops, starts again, or leaves an upload stranded.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// How long the job in hand may still run once shutdown begins; after that its lease is
    /// given back unfinished (its attempt not counted) and the worker ends.
    pub shutdown_grace: Duration,
    /// Whose leases this process ends when its workers start.
    pub reclaim: Reclaim,
    /// How often the sweeper looks for stranded uploads; zero: never.
    pub sweep_interval: Duration,
    /// How long an unfinished upload must have gone unchanged to be swept.
    pub sweep_stale: Duration,
}

impl Default for Settlement {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(20),
            reclaim: Reclaim::Nothing,
            sweep_interval: Duration::ZERO,
            sweep_stale: Duration::from_secs(120),
        }
    }
}

/// Leases a starting process ends at once instead of waiting for them to run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reclaim {
    /// None: other processes may hold them.
    Nothing,
    /// Every lease, if this process gets the lock file (the embedded database: whoever
    /// holds its data dir's lock is the only process working on it, so every lease left
    /// is a dead process's).
    SoleProcess { lock: PathBuf },
    /// Those of earlier incarnations of this worker id (see [`crate::queue::DbQueue::with_owner`]).
    Owner(String),
}

/// Longest worker id: it is part of every `locked_by`.
const MAX_WORKER_ID: usize = 64;

impl Settlement {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let reclaim = if settings.uses_embedded_database() {
            Reclaim::SoleProcess {
                lock: settings.data_dir.join("workers.lock"),
            }
        } else if let Some(id) = &settings.worker_id {
            Reclaim::Owner(valid_worker_id(id)?.to_owned())
        } else {
            Reclaim::Nothing
        };
        Ok(Self {
            shutdown_grace: Duration::from_secs(settings.shutdown_grace_secs),
            reclaim,
            sweep_interval: Duration::from_secs(settings.sweep_interval_secs),
            sweep_stale: Duration::from_secs(settings.sweep_stale_secs),
        })
    }
}

/// A worker id: 1 to 64 characters of `[A-Za-z0-9.-]` (a host or pod name). No `_` or `%`:
/// the id is matched as a `LIKE` prefix.
pub fn valid_worker_id(id: &str) -> anyhow::Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= MAX_WORKER_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    anyhow::ensure!(
        ok,
        "--worker-id must be 1 to {MAX_WORKER_ID} characters of A-Z, a-z, 0-9, '.' or '-'"
    );
    Ok(id)
}

pub struct Pipeline {
    db: DatabaseConnection,
    storage: Arc<dyn ObjectStore>,
    dispatch: Arc<dyn Queue>,
    chunks: Arc<dyn Queue>,
    progress: Arc<ProgressBus>,
    outbox: Outbox,
    settings: PipelineSettings,
    settlement: Settlement,
    /// Bound on an upload's chunks sent and not yet applied, with chunks on a queue that
    /// has no order.
    window: Window,
    /// Fan-outs this process paused behind their windows.
    paused: PausedFanOuts,
    /// Leases of a dead predecessor are ended once, before the first claim.
    recovered: OnceCell<()>,
    /// The embedded data dir's lock, held while this process runs workers.
    sole: Mutex<Option<std::fs::File>>,
    /// Calls carriers for the rows of carrier actions, alongside the job workers.
    carrier: Option<Arc<super::carrier_calls::CarrierExecutor>>,
}

/// What follows a job that succeeded.
enum Next {
    Done,
    /// The job goes on as this job, shortly (a paused fan-out).
    Continue(JobPayload),
}

/// A failed job attempt, with the decision whether another attempt can help.
struct JobFailure {
    retryable: bool,
    message: String,
}

impl Pipeline {
    pub fn new(
        db: DatabaseConnection,
        storage: Arc<dyn ObjectStore>,
        dispatch: Arc<dyn Queue>,
        chunks: Arc<dyn Queue>,
        progress: Arc<ProgressBus>,
        settings: PipelineSettings,
    ) -> Self {
        Self {
            db,
            storage,
            dispatch,
            chunks,
            progress,
            outbox: Outbox::default(),
            settings,
            settlement: Settlement::default(),
            window: Window::new(DEFAULT_FANOUT_WINDOW),
            paused: PausedFanOuts::default(),
            recovered: OnceCell::new(),
            sole: Mutex::new(None),
            carrier: None,
        }
    }

    /// Rows of carrier actions are taken on by `executor` in every process that runs workers.
    pub fn with_carrier(mut self, executor: super::carrier_calls::CarrierExecutor) -> Self {
        self.carrier = Some(Arc::new(executor));
        self
    }

    /// Shutdown, restart and sweeping as `settlement` says (default: a 20 s grace period,
    /// no reclaim, no sweeper).
    pub fn with_settlement(mut self, settlement: Settlement) -> Self {
        self.settlement = settlement;
        self
    }

    /// At most `window` chunks of an upload sent and not yet applied (0: no bound), when
    /// chunks go to a queue without order (SQS).
    pub fn with_fanout_window(mut self, window: usize) -> Self {
        self.window = Window::new(window);
        self
    }

    /// Finished uploads queue a webhook call through `outbox`.
    pub fn with_outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// The carrier executor of this process, if it has one (tests step it directly).
    pub fn carrier(&self) -> Option<Arc<super::carrier_calls::CarrierExecutor>> {
        self.carrier.clone()
    }

    /// Takes one job (dispatch jobs first) and handles it, without waiting for work.
    pub async fn try_execute_next(&self) -> Result<Step, QueueError> {
        self.step(Duration::ZERO, &CancellationToken::new()).await
    }

    /// Takes one job and handles it. Once `shutdown` is cancelled it takes none, and the
    /// job in hand gets the grace period. A receive is never cut short: a claim lost in
    /// flight would hold its job until the lease ran out.
    async fn step(&self, chunk_wait: Duration, shutdown: &CancellationToken) -> Result<Step, QueueError> {
        for (queue, wait) in [(&self.dispatch, Duration::ZERO), (&self.chunks, chunk_wait)] {
            if shutdown.is_cancelled() {
                return Ok(Step::Empty);
            }
            if let Some(delivery) = queue.receive(1, self.settings.lease, wait).await?.pop() {
                if shutdown.is_cancelled() {
                    // Not started: visible to the other workers at once.
                    queue.release(&delivery).await?;
                    return Ok(Step::Empty);
                }
                self.execute(queue.as_ref(), delivery, shutdown).await?;
                return Ok(Step::Done);
            }
        }
        // Nothing to do: a fan-out paused behind a full window (chunks on SQS) may have room
        // by now.
        if let Some(table) = self.windowed_dispatch()
            && !shutdown.is_cancelled()
            && wake_continuations(&self.db, table.queue_name()).await? > 0
            && let Some(delivery) = self
                .dispatch
                .receive(1, self.settings.lease, Duration::ZERO)
                .await?
                .pop()
        {
            self.execute(self.dispatch.as_ref(), delivery, shutdown).await?;
            return Ok(Step::Done);
        }
        Ok(Step::Empty)
    }

    /// The dispatch job table, when chunks go elsewhere (SQS) and fan-outs pause behind
    /// their window.
    fn windowed_dispatch(&self) -> Option<&crate::queue::DbQueue> {
        self.dispatch
            .job_table()
            .filter(|_| self.chunks.job_table().is_none())
    }

    /// Handles one job inside a span naming its upload (public id and tenant), so every
    /// line a job writes can be found by the id clients and operators know; the span
    /// continues the trace of whatever queued the job.
    async fn execute(
        &self,
        queue: &dyn Queue,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), QueueError> {
        let span = crate::telemetry::upload_span(
            &self.db,
            kind_of(&delivery.payload),
            delivery.payload.upload_id(),
            delivery.traceparent.as_deref(),
        )
        .await;
        self.execute_in_span(queue, delivery, shutdown)
            .instrument(span)
            .await
    }

    async fn execute_in_span(
        &self,
        queue: &dyn Queue,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), QueueError> {
        let lease = self.settings.lease;
        // Renewed three times a lease: two renewals may be late before another worker may
        // take the job, and a dead worker's job is free again within one lease.
        let keep_alive = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Err(e) = queue.extend(&delivery, lease).await {
                    tracing::warn!(error = %e, "could not extend a job's lease");
                }
            }
        };
        let grace_over = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.settlement.shutdown_grace).await;
        };
        let upload_id = delivery.payload.upload_id();
        let result = tokio::select! {
            result = self.run(&delivery.payload) => result,
            () = keep_alive => unreachable!("the keep-alive loop never ends"),
            () = grace_over => {
                // Dropping the run rolled its transaction back (or it had committed: a
                // redelivery is then a no-op). The next worker needs no lease to run out.
                tracing::warn!(job = %delivery.payload.dedupe_key(), "shutdown grace period over: job given back unfinished");
                return queue.release(&delivery).await;
            }
        };
        let handled = self.settle(queue, &delivery, result).await;
        // After the commit (and after a failed upload was marked): every way a job ends may
        // have moved its upload.
        self.progress.changed(upload_id).await;
        handled
    }

    async fn settle(
        &self,
        queue: &dyn Queue,
        delivery: &Delivery,
        result: Result<Next, JobFailure>,
    ) -> Result<(), QueueError> {
        match result {
            Ok(Next::Done) => queue.ack(delivery).await,
            Ok(Next::Continue(next)) => match queue.job_table() {
                // The job's row becomes its continuation: the upload keeps a live job
                // throughout (the sweeper leaves it alone) and there is never more than one.
                Some(table) => table.postpone(delivery, &next, CONTINUE_AFTER).await.map(drop),
                None => {
                    queue.send(&[next]).await?;
                    queue.ack(delivery).await
                }
            },
            Err(failure) if failure.retryable && delivery.attempt < queue.max_attempts() => {
                tracing::warn!(attempt = delivery.attempt, error = %failure.message, "job failed, will retry");
                crate::metrics::job_retried(kind_of(&delivery.payload));
                queue
                    .retry(delivery, backoff(delivery.attempt), &failure.message)
                    .await
            }
            Err(failure) => {
                // The cause (database, storage, queue text) goes to the log only; the
                // upload's reason is read by tenants.
                let reason = format!(
                    "{} failed after {} attempt(s) with an internal error",
                    describe(&delivery.payload),
                    delivery.attempt,
                );
                tracing::error!(%reason, error = %failure.message, "job given up");
                self.give_up(queue, delivery, &reason, &failure.message).await
            }
        }
    }

    /// Dead-letters the job and fails its upload as one step. On the job table both happen
    /// in one transaction; elsewhere the upload is failed first, and the job dead-lettered
    /// only once it is (on an error the job comes back and is given up again).
    async fn give_up(
        &self,
        queue: &dyn Queue,
        delivery: &Delivery,
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        let upload_id = delivery.payload.upload_id();
        let Some(table) = queue.job_table() else {
            fail_upload(&self.db, &self.outbox, upload_id, reason).await?;
            queue.dead_letter(delivery, error).await?;
            crate::metrics::job_dead_lettered(kind_of(&delivery.payload));
            return Ok(());
        };
        let txn = self.db.begin().await?;
        if table.bury_in(&txn, delivery, error).await? {
            let ended =
                super::terminate_in(&txn, &self.outbox, upload_id, UploadStatus::Failed, Some(reason))
                    .await?;
            txn.commit().await?;
            crate::metrics::job_dead_lettered(kind_of(&delivery.payload));
            if ended {
                crate::metrics::upload_finished(UploadStatus::Failed);
            }
        } else {
            tracing::warn!("dead letter ignored: the job is no longer ours");
            txn.rollback().await?;
        }
        Ok(())
    }

    async fn run(&self, payload: &JobPayload) -> Result<Next, JobFailure> {
        let dispatcher = Dispatcher {
            db: &self.db,
            storage: self.storage.as_ref(),
            chunks: self.chunks.as_ref(),
            outbox: &self.outbox,
            chunk_size: self.settings.chunk_size.max(1),
            max_rows: self.settings.max_rows,
            // The job table claims chunks by their first row across uploads, so every
            // upload's chunks may wait there at once; a queue without order (SQS) gets the
            // window instead.
            window: match self.chunks.job_table() {
                Some(_) => Window::new(0),
                None => self.window,
            },
            stalled_after: self.settlement.sweep_stale,
            paused: Some(&self.paused),
        };
        match payload {
            JobPayload::DispatchUpload { upload_id } => {
                let started = std::time::Instant::now();
                let outcome = dispatcher.dispatch(*upload_id).await;
                crate::metrics::dispatch_duration(started.elapsed());
                dispatched(outcome)
            }
            JobPayload::ContinueDispatch {
                upload_id,
                from_chunk,
                ..
            } => {
                let started = std::time::Instant::now();
                let outcome = dispatcher.resume(*upload_id, *from_chunk).await;
                crate::metrics::dispatch_duration(started.elapsed());
                dispatched(outcome)
            }
            JobPayload::ProcessChunk(job) => {
                match apply_chunk(&self.db, self.storage.as_ref(), job, &self.outbox).await {
                    Ok(ChunkOutcome::Skipped(status)) => {
                        crate::metrics::chunk("skipped", None);
                        tracing::info!(chunk = job.chunk, ?status, "chunk skipped");
                        Ok(Next::Done)
                    }
                    Ok(ChunkOutcome::AlreadyApplied) => {
                        crate::metrics::chunk("already_applied", None);
                        Ok(Next::Done)
                    }
                    // Counted (with its transaction's time) where it committed.
                    Ok(ChunkOutcome::Applied { .. }) => {
                        // This chunk may have made room in its upload's paused fan-out
                        // window: the continuation becomes due now and this worker's next
                        // step (dispatch jobs first) takes it, instead of after
                        // `CONTINUE_AFTER` or an idle worker's long poll of the chunk queue.
                        if let Some(table) = self.windowed_dispatch()
                            && let Err(e) = wake_continuations(&self.db, table.queue_name()).await
                        {
                            tracing::debug!(error = %e, "could not wake paused fan-outs");
                        }
                        Ok(Next::Done)
                    }
                    Err(e) => {
                        crate::metrics::chunk("error", None);
                        Err(JobFailure {
                            retryable: e.is_retryable(),
                            message: e.to_string(),
                        })
                    }
                }
            }
            JobPayload::NotifyWebhook { .. } => Err(JobFailure {
                retryable: false,
                message: "webhook calls belong on the webhook queue".into(),
            }),
        }
    }

    /// Fails the uploads of jobs whose workers died on their last attempt: on the job table
    /// in the transaction that marks the jobs dead; elsewhere each dead letter is removed
    /// only after its upload is failed.
    pub async fn rescue(&self) -> Result<usize, QueueError> {
        let mut rescued = 0;
        for queue in [&self.dispatch, &self.chunks] {
            let reason = |payload: &JobPayload| {
                format!(
                    "{} was abandoned by its workers {} times",
                    describe(payload),
                    queue.max_attempts()
                )
            };
            let mut failed = Vec::new();
            if let Some(table) = queue.job_table() {
                let txn = self.db.begin().await?;
                let mut ended = 0;
                let mut kinds = Vec::new();
                for payload in table.rescue_in(&txn).await? {
                    if super::terminate_in(
                        &txn,
                        &self.outbox,
                        payload.upload_id(),
                        UploadStatus::Failed,
                        Some(&reason(&payload)),
                    )
                    .await?
                    {
                        ended += 1;
                    }
                    kinds.push(kind_of(&payload));
                    failed.push(payload.upload_id());
                }
                txn.commit().await?;
                kinds.into_iter().for_each(crate::metrics::job_dead_lettered);
                (0..ended).for_each(|_| crate::metrics::upload_finished(UploadStatus::Failed));
            } else {
                for dead in queue.dead_jobs().await? {
                    let upload_id = dead.payload.upload_id();
                    fail_upload(&self.db, &self.outbox, upload_id, &reason(&dead.payload)).await?;
                    queue.forget(&dead).await?;
                    crate::metrics::job_dead_lettered(kind_of(&dead.payload));
                    failed.push(upload_id);
                }
            }
            for upload_id in failed {
                self.progress.changed(upload_id).await;
                rescued += 1;
            }
        }
        Ok(rescued)
    }

    /// Resumes or fails the uploads nothing works on any more and ends abandoned multipart
    /// uploads (see [`super::sweeper`]); returns how many it acted on.
    pub async fn sweep(&self) -> Result<usize, QueueError> {
        let report = Sweeper {
            db: &self.db,
            dispatch: self.dispatch.as_ref(),
            chunks: self.chunks.as_ref(),
            outbox: &self.outbox,
            stale_after: self.settlement.sweep_stale,
            storage: self.storage.as_ref(),
        }
        .sweep()
        .await?;
        let acted: Vec<i64> = [&report.resumed, &report.failed, &report.expired]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for &upload_id in &acted {
            self.progress.changed(upload_id).await;
        }
        Ok(acted.len())
    }

    /// Ends the leases a dead predecessor of this process left, once, before any claim.
    async fn recover(&self) {
        let owner = match &self.settlement.reclaim {
            Reclaim::Nothing => return,
            Reclaim::Owner(id) => Some(id.as_str()),
            Reclaim::SoleProcess { lock } => {
                match take_lock(lock) {
                    Ok(Some(file)) => *self.sole.lock().unwrap_or_else(|e| e.into_inner()) = Some(file),
                    Ok(None) => {
                        tracing::info!(lock = %lock.display(), "another process runs workers on this data dir; its leases are left to run out");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(lock = %lock.display(), error = %e, "could not lock the data dir; leases are left to run out");
                        return;
                    }
                }
                None
            }
        };
        for queue in [&self.dispatch, &self.chunks] {
            let Some(table) = queue.job_table() else {
                continue;
            };
            match table.expire_leases(owner).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        queue = table.queue_name(),
                        jobs = n,
                        "took back the jobs of a dead predecessor"
                    )
                }
                Err(e) => {
                    tracing::warn!(queue = table.queue_name(), error = %e, "could not take back a dead predecessor's jobs")
                }
            }
        }
    }

    /// Starts `workers` worker loops, one rescuer and (when configured) one sweeper; they
    /// stop taking jobs once `shutdown` is cancelled and end after settling the job in hand.
    pub fn spawn(self: &Arc<Self>, workers: usize, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut handles: Vec<JoinHandle<()>> = (0..workers)
            .map(|n| {
                let (pipeline, shutdown) = (self.clone(), shutdown.clone());
                tokio::spawn(async move { pipeline.work(n, shutdown).await })
            })
            .collect();
        if workers > 0 {
            let (pipeline, stop) = (self.clone(), shutdown.clone());
            handles.push(tokio::spawn(
                async move { pipeline.rescue_periodically(stop).await },
            ));
            if let Some(carrier) = &self.carrier {
                handles.push(tokio::spawn(carrier.clone().run(shutdown.clone())));
            }
            if !self.settlement.sweep_interval.is_zero() {
                let (pipeline, stop) = (self.clone(), shutdown);
                handles.push(tokio::spawn(
                    async move { pipeline.sweep_periodically(stop).await },
                ));
            }
        }
        handles
    }

    async fn work(&self, n: usize, shutdown: CancellationToken) {
        const BUSY: Duration = Duration::from_millis(2);
        self.recovered.get_or_init(|| self.recover()).await;
        tracing::debug!(worker = n, "worker started");
        let mut pause = BUSY;
        while !shutdown.is_cancelled() {
            // Not raced against `shutdown`: the step itself stops taking jobs and settles
            // the one in hand within the grace period.
            let step = self.step(self.settings.poll_wait, &shutdown).await;
            // Idle or failing, poll less and less often: quick to notice new work after a
            // moment of quiet, cheap when quiet lasts, patient with a queue that is down.
            let limit = match step {
                Ok(Step::Done) => {
                    pause = BUSY;
                    continue;
                }
                Ok(Step::Empty) => Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(worker = n, error = %e, "queue unavailable");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {},
                () = shutdown.cancelled() => break,
            }
            pause = (pause * 2).min(limit);
        }
        tracing::debug!(worker = n, "worker stopped");
    }

    async fn rescue_periodically(&self, shutdown: CancellationToken) {
        let every = (self.settings.lease / 2).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {},
                () = shutdown.cancelled() => return,
            }
            if let Err(e) = self.rescue().await {
                tracing::warn!(error = %e, "rescue failed");
            }
        }
    }

    async fn sweep_periodically(&self, shutdown: CancellationToken) {
        let every = self.settlement.sweep_interval.max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {},
                () = shutdown.cancelled() => return,
            }
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(uploads = n, "swept stranded uploads"),
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
    }
}

/// The lock file, locked by this process; `None` when another process holds it.
fn take_lock(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// What follows a dispatch job's run.
fn dispatched(
    outcome: Result<DispatchOutcome, super::dispatcher::DispatchError>,
) -> Result<Next, JobFailure> {
    match outcome {
        Ok(DispatchOutcome::Skipped(status)) => {
            tracing::info!(?status, "nothing to dispatch");
            Ok(Next::Done)
        }
        Ok(DispatchOutcome::Windowed { next, .. }) => Ok(Next::Continue(next)),
        Ok(DispatchOutcome::FannedOut { .. } | DispatchOutcome::Rejected(_)) => Ok(Next::Done),
        Err(e) => Err(JobFailure {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }),
    }
}

/// 0.5 s, 1 s, 2 s, … up to 30 s between attempts.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.saturating_sub(1).min(6)))
        .min(Duration::from_secs(30))
}

/// A job's kind, as the `kind` label and the `step` span field name it.
fn kind_of(payload: &JobPayload) -> &'static str {
    match payload {
        JobPayload::DispatchUpload { .. } => "dispatch",
        JobPayload::ContinueDispatch { .. } => "continue_dispatch",
        JobPayload::ProcessChunk(_) => "chunk",
        JobPayload::NotifyWebhook { .. } => "webhook",
    }
}

fn describe(payload: &JobPayload) -> String {
    match payload {
        JobPayload::DispatchUpload { .. } | JobPayload::ContinueDispatch { .. } => {
            "reading the file".to_owned()
        }
        JobPayload::ProcessChunk(c) => {
            let (first, last) = c.row_span();
            format!("chunk {} (rows {first}–{last})", c.chunk)
        }
        JobPayload::NotifyWebhook { .. } => "the webhook call".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn worker_ids_are_short_names_without_like_wildcards() {
        for good in ["worker-0", "fleetload-worker-7f9c.eu-west-1", "A"] {
            assert!(super::valid_worker_id(good).is_ok(), "{good}");
        }
        let long = "w".repeat(65);
        for bad in ["", "a_b", "a%b", "a/b", "a b", "ä", long.as_str()] {
            assert!(super::valid_worker_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}
