//! Runs pipeline jobs: one step at a time (tests drain the queues deterministically with
//! [`Pipeline::try_execute_next`]) or as worker loops in `serve` and `worker` processes.
//!
//! Each job runs with its lease kept alive; success acks it, a retryable failure goes back
//! with backoff, and a job that cannot succeed (or ran out of attempts) is dead-lettered
//! and fails its upload with a reason, keeping the results already written.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::dispatcher::{DispatchOutcome, Dispatcher, fail_upload};
use super::worker::{ChunkOutcome, apply_chunk};
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

pub struct Pipeline {
    db: DatabaseConnection,
    storage: Arc<dyn ObjectStore>,
    dispatch: Arc<dyn Queue>,
    chunks: Arc<dyn Queue>,
    progress: Arc<ProgressBus>,
    outbox: Outbox,
    settings: PipelineSettings,
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
        }
    }

    /// Finished uploads queue a webhook call through `outbox`.
    pub fn with_outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// Takes one job (dispatch jobs first) and handles it, without waiting for work.
    pub async fn try_execute_next(&self) -> Result<Step, QueueError> {
        self.step(Duration::ZERO).await
    }

    async fn step(&self, chunk_wait: Duration) -> Result<Step, QueueError> {
        for (queue, wait) in [(&self.dispatch, Duration::ZERO), (&self.chunks, chunk_wait)] {
            if let Some(delivery) = queue.receive(1, self.settings.lease, wait).await?.pop() {
                self.execute(queue.as_ref(), delivery).await?;
                return Ok(Step::Done);
            }
        }
        Ok(Step::Empty)
    }

    async fn execute(&self, queue: &dyn Queue, delivery: Delivery) -> Result<(), QueueError> {
        let lease = self.settings.lease;
        let keep_alive = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Err(e) = queue.extend(&delivery, lease).await {
                    tracing::warn!(error = %e, "could not extend a job's lease");
                }
            }
        };
        let result = tokio::select! {
            result = self.run(&delivery.payload) => result,
            () = keep_alive => unreachable!("the keep-alive loop never ends"),
        };
        let upload_id = delivery.payload.upload_id();
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
        result: Result<(), JobFailure>,
    ) -> Result<(), QueueError> {
        match result {
            Ok(()) => queue.ack(delivery).await,
            Err(failure) if failure.retryable && delivery.attempt < queue.max_attempts() => {
                tracing::warn!(attempt = delivery.attempt, error = %failure.message, "job failed, will retry");
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
                tracing::error!(upload_id = delivery.payload.upload_id(), %reason, error = %failure.message, "job given up");
                if let Err(e) =
                    fail_upload(&self.db, &self.outbox, delivery.payload.upload_id(), &reason).await
                {
                    tracing::error!(error = %e, "could not mark the upload failed");
                }
                queue.dead_letter(delivery, &failure.message).await
            }
        }
    }

    async fn run(&self, payload: &JobPayload) -> Result<(), JobFailure> {
        match payload {
            JobPayload::DispatchUpload { upload_id } => {
                let dispatcher = Dispatcher {
                    db: &self.db,
                    storage: self.storage.as_ref(),
                    chunks: self.chunks.as_ref(),
                    outbox: &self.outbox,
                    chunk_size: self.settings.chunk_size.max(1),
                    max_rows: self.settings.max_rows,
                };
                match dispatcher.dispatch(*upload_id).await {
                    Ok(DispatchOutcome::Skipped(status)) => {
                        tracing::info!(upload_id, ?status, "nothing to dispatch");
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(JobFailure {
                        retryable: e.is_retryable(),
                        message: e.to_string(),
                    }),
                }
            }
            JobPayload::ProcessChunk(job) => match apply_chunk(&self.db, job, &self.outbox).await {
                Ok(ChunkOutcome::Skipped(status)) => {
                    tracing::info!(
                        upload_id = job.upload_id,
                        chunk = job.chunk,
                        ?status,
                        "chunk skipped"
                    );
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(JobFailure {
                    retryable: e.is_retryable(),
                    message: e.to_string(),
                }),
            },
            JobPayload::NotifyWebhook { .. } => Err(JobFailure {
                retryable: false,
                message: "webhook calls belong on the webhook queue".into(),
            }),
        }
    }

    /// Fails the uploads of jobs whose workers died on their last attempt.
    pub async fn rescue(&self) -> Result<usize, QueueError> {
        let mut rescued = 0;
        for queue in [&self.dispatch, &self.chunks] {
            for payload in queue.rescue().await? {
                let reason = format!(
                    "{} was abandoned by its workers {} times",
                    describe(&payload),
                    queue.max_attempts()
                );
                fail_upload(&self.db, &self.outbox, payload.upload_id(), &reason).await?;
                self.progress.changed(payload.upload_id()).await;
                rescued += 1;
            }
        }
        Ok(rescued)
    }

    /// Starts `workers` worker loops and one rescuer; they stop taking jobs once `shutdown`
    /// is cancelled and end after finishing the job in hand.
    pub fn spawn(self: &Arc<Self>, workers: usize, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut handles: Vec<JoinHandle<()>> = (0..workers)
            .map(|n| {
                let (pipeline, shutdown) = (self.clone(), shutdown.clone());
                tokio::spawn(async move { pipeline.work(n, shutdown).await })
            })
            .collect();
        if workers > 0 {
            let (pipeline, shutdown) = (self.clone(), shutdown);
            handles.push(tokio::spawn(async move {
                pipeline.rescue_periodically(shutdown).await
            }));
        }
        handles
    }

    async fn work(&self, n: usize, shutdown: CancellationToken) {
        const BUSY: Duration = Duration::from_millis(2);
        tracing::debug!(worker = n, "worker started");
        let mut pause = BUSY;
        while !shutdown.is_cancelled() {
            let step = tokio::select! {
                step = self.step(self.settings.poll_wait) => step,
                () = shutdown.cancelled() => break,
            };
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
}

/// 0.5 s, 1 s, 2 s, … up to 30 s between attempts.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.saturating_sub(1).min(6)))
        .min(Duration::from_secs(30))
}

fn describe(payload: &JobPayload) -> String {
    match payload {
        JobPayload::DispatchUpload { .. } => "reading the file".to_owned(),
        JobPayload::ProcessChunk(c) => format!("chunk {} (rows {}–{})", c.chunk, first_row(c), last_row(c)),
        JobPayload::NotifyWebhook { .. } => "the webhook call".to_owned(),
    }
}

fn first_row(c: &crate::queue::ChunkJob) -> i32 {
    c.rows.first().map_or(0, |r| r.row_number)
}

fn last_row(c: &crate::queue::ChunkJob) -> i32 {
    c.rows.last().map_or(0, |r| r.row_number)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}
