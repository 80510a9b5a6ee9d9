//! Durable jobs behind one trait, with two real backends: a job table in the database
//! (embedded default and PostgreSQL) and SQS (any SQS-compatible endpoint).
//!
//! Delivery is at least once: a job may arrive twice or after its consumer died, so every
//! consumer is idempotent. `finalizeBatchUpload` writes its dispatch job into the job table
//! in the same transaction that flips the upload to QUEUED (an outbox), so no crash loses it.

pub mod db;
pub mod sqs;

pub use db::DbQueue;
pub use sqs::SqsQueue;

use std::time::Duration;

use chrono::Utc;
use entity::job::{self, JobState};
use entity::prelude::Job;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Set};
use serde::{Deserialize, Serialize};

/// Queue that dispatch jobs (one per finalized upload) go to; always the job table.
pub const DISPATCH_QUEUE: &str = "dispatch";
/// Queue of chunk jobs on the job table, when SQS is not configured.
pub const CHUNK_QUEUE: &str = "chunks";
/// Attempts before a job is dead-lettered, unless a backend says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Longest lease or retry delay honoured (longer ones are cut to it): SQS's limit on a
/// visibility timeout, applied by both backends so they behave alike.
pub const MAX_LEASE: Duration = Duration::from_secs(12 * 60 * 60);

/// What a job asks for; serialised as its payload / message body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobPayload {
    /// Read the upload's file and fan its rows out as chunk jobs.
    DispatchUpload { upload_id: i64 },
    /// Go on fanning out an upload whose bounded window of chunks was full: send the chunks
    /// from `from_chunk` on, as far as the window has room.
    ContinueDispatch {
        upload_id: i64,
        from_chunk: i32,
        /// Chunks of the upload applied when the window has room again: the job-table row's
        /// fairness rank, which idle workers compare with the applied chunks to wake it early.
        resume_at_applied: i32,
    },
    /// Decide and apply one chunk of an upload's rows, in one transaction.
    ProcessChunk(ChunkJob),
    /// Tell the configured webhook that the upload finished.
    NotifyWebhook { upload_id: i64 },
}

/// One chunk of an upload: consecutive data rows, as the dispatcher read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkJob {
    pub upload_id: i64,
    /// 0-based position of the chunk in the file.
    pub chunk: i32,
    #[serde(flatten)]
    pub rows: ChunkRows,
}

/// Where a chunk's rows are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChunkRows {
    /// A byte range of the upload's immutable snapshot, read by the worker: a job stays a
    /// few hundred bytes whatever its rows hold, so queues carry no copy of the file.
    InFile { file: FileRange },
    /// The rows themselves, as chunk jobs were written before file ranges; still read, so
    /// jobs queued by an older version run after an upgrade.
    Listed { rows: Vec<ChunkRow> },
}

/// A chunk's rows in the snapshot: `[start, end)` holds exactly `rows` data rows, numbered
/// from `first_row`, beginning at the start of a row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRange {
    /// The snapshot's object key.
    pub key: String,
    pub start: u64,
    pub end: u64,
    pub first_row: i32,
    pub rows: u32,
    /// The header's device key column and, for smartphones, second IMEI column.
    pub key_column: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key2_column: Option<u32>,
    /// A line's service plan column (carrier actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_column: Option<u32>,
    /// Rows of the range repeating a (valid) device key of an earlier row of the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<i32>,
}

impl ChunkJob {
    /// The numbers of the chunk's first and last rows.
    pub fn row_span(&self) -> (i32, i32) {
        match &self.rows {
            ChunkRows::InFile { file } => {
                let last = i64::from(file.first_row) + i64::from(file.rows) - 1;
                (file.first_row, i32::try_from(last).unwrap_or(i32::MAX))
            }
            ChunkRows::Listed { rows } => (
                rows.first().map_or(0, |r| r.row_number),
                rows.last().map_or(0, |r| r.row_number),
            ),
        }
    }
}

/// A data row as the worker needs it; everything else of the row stays in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRow {
    /// 1-based number of the data row (the header is not counted).
    #[serde(rename = "n")]
    pub row_number: i32,
    /// The device key cell, trimmed (the result echoes it).
    #[serde(rename = "k")]
    pub uid: String,
    /// A smartphone's second IMEI cell, when present and not blank.
    #[serde(rename = "k2", default, skip_serializing_if = "Option::is_none")]
    pub uid2: Option<String>,
    /// A line's service plan cell (carrier actions), when present and not blank.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// An earlier row of the file has the same (valid) device key.
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl JobPayload {
    /// At most one job exists per key on the job table, whatever the number of senders.
    pub fn dedupe_key(&self) -> String {
        match self {
            // A continuation takes the place of its upload's dispatch job: one per upload.
            Self::DispatchUpload { upload_id } | Self::ContinueDispatch { upload_id, .. } => {
                format!("dispatch:{upload_id}")
            }
            Self::ProcessChunk(c) => format!("chunk:{}:{}", c.upload_id, c.chunk),
            // An upload reaches a terminal state once: one call per upload.
            Self::NotifyWebhook { upload_id } => format!("webhook:{upload_id}"),
        }
    }

    /// The upload the job belongs to.
    pub fn upload_id(&self) -> i64 {
        match self {
            Self::DispatchUpload { upload_id }
            | Self::ContinueDispatch { upload_id, .. }
            | Self::NotifyWebhook { upload_id } => *upload_id,
            Self::ProcessChunk(c) => c.upload_id,
        }
    }

    /// Fairness rank on the job table, lowest claimed first: a chunk's first row, so the
    /// first rows of every upload go before the later rows of any (a 100-row upload queued
    /// behind a million-row one is not starved); a dispatch continuation's number of applied
    /// chunks it waits for (so first dispatches go before continuations); other jobs are
    /// first come, first served.
    pub fn seq(&self) -> i32 {
        match self {
            Self::ProcessChunk(c) => c.row_span().0,
            Self::ContinueDispatch {
                resume_at_applied, ..
            } => (*resume_at_applied).max(1),
            Self::DispatchUpload { .. } | Self::NotifyWebhook { .. } => 0,
        }
    }
}

/// A job its queue gave up on (SQS: a message in the dead-letter queue) whose upload is
/// still to be failed; [`Queue::forget`] it once the upload is failed.
#[derive(Clone, Debug)]
pub struct DeadJob {
    pub payload: JobPayload,
    /// Backend handle (the dead letter's receipt handle), if the backend keeps it until then.
    pub handle: Option<String>,
}

/// A job handed to one consumer, hidden from the others until its lease runs out.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Backend handle: the job id, or the SQS receipt handle.
    pub handle: String,
    pub payload: JobPayload,
    /// 1 on the first delivery.
    pub attempt: u32,
    /// W3C trace context of the span that sent the job, when traces are exported.
    pub traceparent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("SQS: {0}")]
    Sqs(String),
    #[error("job payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// A delivery handed to a queue that did not produce it (a bug in the caller).
    #[error("delivery handle {0:?} does not belong to this queue")]
    ForeignHandle(String),
    /// The backend cannot carry a job this large (SQS: 256 KiB per message).
    #[error("job {key} is {bytes} bytes as JSON; the queue takes at most {limit}")]
    TooLarge { key: String, bytes: usize, limit: usize },
}

/// A queue of jobs with leases (visibility timeouts), retries and a dead letter.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Puts jobs on the queue (at least once; a repeat is the consumer's to ignore).
    async fn send(&self, jobs: &[JobPayload]) -> Result<(), QueueError>;

    /// Up to `max` jobs, each leased to this consumer for `lease`. Waits up to `wait` for
    /// the first one (long polling); returns empty when there was none.
    async fn receive(&self, max: usize, lease: Duration, wait: Duration)
    -> Result<Vec<Delivery>, QueueError>;

    /// Keeps a job leased for `lease` from now (a chunk that takes long).
    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<(), QueueError>;

    /// The job is done and is never delivered again.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;

    /// The attempt failed: deliver the job again after `delay`.
    async fn retry(&self, delivery: &Delivery, delay: Duration, error: &str) -> Result<(), QueueError>;

    /// The job will never succeed: move it to the dead letter, kept for an operator.
    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<(), QueueError>;

    /// Jobs whose consumers died on their last attempt since the last call (leases that ran
    /// out / messages redriven to the dead-letter queue). Each is returned once; the caller
    /// fails their uploads.
    async fn rescue(&self) -> Result<Vec<JobPayload>, QueueError>;

    /// Deliveries a job gets before it is dead-lettered.
    fn max_attempts(&self) -> u32;

    /// Gives a job back at once, its attempt not counted where the backend can (shutdown of
    /// a consumer that did not start or finish it). Default: a retry without delay.
    async fn release(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.retry(delivery, Duration::ZERO, "released by a consumer shutting down")
            .await
    }

    /// The job table behind this queue, when it is one: dead-lettering and failing the
    /// upload then happen in one transaction.
    fn job_table(&self) -> Option<&DbQueue> {
        None
    }

    /// Like [`Queue::rescue`], but each dead job stays in the backend until
    /// [`Queue::forget`]: a crash before its upload is failed hands it out again. The
    /// default is `rescue` (already removed).
    async fn dead_jobs(&self) -> Result<Vec<DeadJob>, QueueError> {
        Ok(self
            .rescue()
            .await?
            .into_iter()
            .map(|payload| DeadJob {
                payload,
                handle: None,
            })
            .collect())
    }

    /// Jobs waiting or in flight, as far as the backend tells (SQS: approximately);
    /// `None` when it does not.
    async fn backlog(&self) -> Result<Option<u64>, QueueError> {
        Ok(None)
    }

    /// Removes a dead job returned by [`Queue::dead_jobs`], once its upload is failed.
    async fn forget(&self, _dead: &DeadJob) -> Result<(), QueueError> {
        Ok(())
    }

    /// Depths for the metrics sampler (a few cheap reads, not per job). Default: the backlog.
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        Ok(QueueStats {
            ready: self.backlog().await?,
            ..QueueStats::default()
        })
    }

    /// Whether the backend answers (readiness); one cheap call. Default: the backlog.
    async fn check(&self) -> Result<(), QueueError> {
        self.backlog().await.map(drop)
    }
}

/// A queue's depths as the metrics show them; `None` where the backend does not tell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Jobs ready to run (SQS: approximately, messages in flight and delayed included).
    pub ready: Option<u64>,
    /// How long the oldest ready job has waited.
    pub oldest_ready_age: Option<Duration>,
    /// Dead-lettered jobs kept for an operator.
    pub dead: Option<u64>,
}

/// Adds `payload` to the job table's `queue` unless a job with the same dedupe key exists;
/// returns whether it was added. Call it inside the transaction whose effects the job
/// belongs to (the outbox of `finalizeBatchUpload`).
pub async fn enqueue(db: &impl ConnectionTrait, queue: &str, payload: &JobPayload) -> Result<bool, DbErr> {
    enqueue_with(db, queue, payload, DEFAULT_MAX_ATTEMPTS).await
}

/// [`enqueue`] with its own number of attempts.
pub async fn enqueue_with(
    db: &impl ConnectionTrait,
    queue: &str,
    payload: &JobPayload,
    max_attempts: u32,
) -> Result<bool, DbErr> {
    let now = Utc::now();
    let body = serde_json::to_string(payload).map_err(|e| DbErr::Custom(e.to_string()))?;
    let inserted = Job::insert(job::ActiveModel {
        queue: Set(queue.to_owned()),
        payload: Set(body),
        dedupe_key: Set(Some(payload.dedupe_key())),
        upload_id: Set(Some(payload.upload_id())),
        seq: Set(payload.seq()),
        traceparent: Set(crate::telemetry::traceparent()),
        state: Set(JobState::Available),
        attempts: Set(0),
        max_attempts: Set(i32::try_from(max_attempts).unwrap_or(i32::MAX)),
        run_at: Set(now),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .on_conflict(OnConflict::column(job::Column::DedupeKey).do_nothing().to_owned())
    .exec_without_returning(db)
    .await?;
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_rows_serialise_compactly_and_round_trip() {
        let job = JobPayload::ProcessChunk(ChunkJob {
            upload_id: 7,
            chunk: 3,
            rows: ChunkRows::Listed {
                rows: vec![
                    ChunkRow {
                        row_number: 1,
                        uid: "490154203237518".into(),
                        uid2: None,
                        plan: None,
                        duplicate: false,
                    },
                    ChunkRow {
                        row_number: 2,
                        uid: "490154203237518".into(),
                        uid2: Some("x".into()),
                        plan: None,
                        duplicate: true,
                    },
                ],
            },
        });
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"process_chunk","upload_id":7,"chunk":3,"rows":[{"n":1,"k":"490154203237518"},{"n":2,"k":"490154203237518","k2":"x","d":true}]}"#
        );
        assert_eq!(serde_json::from_str::<JobPayload>(&text).unwrap(), job);
        assert_eq!(job.dedupe_key(), "chunk:7:3");
    }

    #[test]
    fn a_chunk_in_the_file_is_a_few_hundred_bytes_and_round_trips() {
        let job = JobPayload::ProcessChunk(ChunkJob {
            upload_id: 7,
            chunk: 3,
            rows: ChunkRows::InFile {
                file: FileRange {
                    key: "snapshots/uploads/2026/12/01/x.csv".into(),
                    start: 120,
                    end: 40_120,
                    first_row: 6001,
                    rows: 2000,
                    key_column: 0,
                    key2_column: None,
                    plan_column: None,
                    duplicates: vec![6005],
                },
            },
        });
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"process_chunk","upload_id":7,"chunk":3,"file":{"key":"snapshots/uploads/2026/12/01/x.csv","start":120,"end":40120,"first_row":6001,"rows":2000,"key_column":0,"duplicates":[6005]}}"#
        );
        assert_eq!(serde_json::from_str::<JobPayload>(&text).unwrap(), job);
        assert_eq!(job.seq(), 6001);
        let JobPayload::ProcessChunk(c) = &job else {
            unreachable!()
        };
        assert_eq!(c.row_span(), (6001, 8000));
    }
}
