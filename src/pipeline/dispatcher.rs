//! The dispatcher: turns a QUEUED upload's file into chunk jobs.
//!
//! It reads an immutable snapshot of the file twice, streaming (memory does not grow with
//! the file): pass 1 checks the whole file and counts its rows, so a bad file fails the
//! upload before any result exists; pass 2 marks later repeats of a device key and sends the
//! rows in chunks. Re-running it (a redelivered job, a dispatcher that died) sends the same
//! chunks again, which the workers ignore: the chunk size is recorded on the upload by the
//! first dispatch and every later one uses it, whatever its own process is configured with.
//!
//! With chunks on SQS the fan-out is windowed: at most the window's number of an upload's
//! chunks are sent and not yet applied. When the window is full the dispatch job becomes a continuation
//! ([`JobPayload::ContinueDispatch`]) that comes back shortly, checks with one count whether
//! enough chunks were applied, and if so streams the file again from the start (rebuilding
//! the set of keys seen, so duplicates are marked as in one pass), skips the chunks already
//! sent and sends the next ones. So a small upload is never behind more than a window of a
//! large one's chunks, on SQS too, where messages have no order.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use entity::prelude::*;
use entity::upload::{self, UploadStatus};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait};

use super::csv_file::{self, CsvFile, FileError};
use super::fanout_window::Window;
use crate::domain::DeviceType;
use crate::domain::device_uid;
use crate::queue::{ChunkJob, ChunkRow, JobPayload, Queue, QueueError};
use crate::storage::{ObjectStore, StorageError, snapshot_key};
use crate::webhook::Outbox;

/// Chunks handed to the queue per send (SQS takes ten per call).
const CHUNKS_PER_SEND: usize = 10;

/// Default bound on an upload's chunks sent and not yet applied.
pub const DEFAULT_FANOUT_WINDOW: usize = 16;

/// How long a continuation waits before it looks at its window again; an idle worker wakes
/// it earlier when the window has room ([`wake_continuations`]).
pub const CONTINUE_AFTER: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// The rows went out as `chunks` chunk jobs.
    FannedOut { rows: u32, chunks: u32 },
    /// `sent` chunks went out and the window is full: the job goes on as `next` (a
    /// [`JobPayload::ContinueDispatch`]) after [`CONTINUE_AFTER`].
    Windowed { sent: u32, next: JobPayload },
    /// The file is not a usable CSV: the upload FAILED with this reason and no results.
    Rejected(String),
    /// The upload is not waiting for dispatch (cancelled, already finished, …).
    Skipped(UploadStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("reading the file: {0}")]
    Read(FileError),
    #[error("upload {0} does not exist")]
    UploadMissing(i64),
}

impl DispatchError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::UploadMissing(_))
    }
}

/// What the dispatcher needs from the process around it.
pub struct Dispatcher<'a> {
    pub db: &'a DatabaseConnection,
    pub storage: &'a dyn ObjectStore,
    pub chunks: &'a dyn Queue,
    pub outbox: &'a Outbox,
    pub chunk_size: usize,
    pub max_rows: u32,
    /// Bound on an upload's chunks sent and not yet applied.
    pub window: Window,
    /// A paused fan-out whose upload has not changed for this long while the chunk queue is
    /// empty lost its chunks (a purged queue): it sends the unapplied ones again.
    pub stalled_after: Duration,
}

/// How a fan-out ended.
enum FanOut {
    /// Every chunk from the start point on was sent (or was applied already).
    Done { chunks: u32 },
    /// The window is full; chunks from `next_chunk` on are still to be sent.
    Paused { sent: u32, next_chunk: i32 },
}

impl Dispatcher<'_> {
    #[tracing::instrument(skip_all, fields(upload_id))]
    pub async fn dispatch(&self, upload_id: i64) -> Result<DispatchOutcome, DispatchError> {
        let upload = Upload::find_by_id(upload_id)
            .one(self.db)
            .await?
            .ok_or(DispatchError::UploadMissing(upload_id))?;
        if !matches!(upload.status, UploadStatus::Queued | UploadStatus::Processing) {
            return Ok(DispatchOutcome::Skipped(upload.status));
        }
        let Some(device_type) = DeviceType::from_code(upload.device_type.into()) else {
            return self
                .reject(&upload, "the upload names an unknown device type".into())
                .await;
        };

        let source = snapshot_key(&upload.object_key);
        if self.storage.head(&source).await?.is_none() {
            match self.storage.copy(&upload.object_key, &source).await {
                Ok(()) => {}
                Err(StorageError::NotFound(_)) => {
                    return self
                        .reject(&upload, "the uploaded file is gone from storage".into())
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }

        let rows =
            match csv_file::validate(self.storage.get(&source).await?, device_type, self.max_rows).await {
                Ok(rows) => rows,
                Err(e) if e.is_transient() => return Err(DispatchError::Read(e)),
                Err(e) => return self.reject(&upload, e.to_string()).await,
            };
        let Some(chunk_size) = self.start(&upload, rows).await? else {
            let now = Upload::find_by_id(upload_id)
                .one(self.db)
                .await?
                .map_or(UploadStatus::Failed, |u| u.status);
            return Ok(DispatchOutcome::Skipped(now));
        };
        if chunk_size != self.chunk_size {
            tracing::info!(
                upload_id,
                chunk_size,
                configured = self.chunk_size,
                "re-dispatch keeps the upload's recorded chunk size"
            );
        }

        // A dispatch run again (redelivered, or resumed by the sweeper) starts over with the
        // chunks already applied counted as such.
        let room = self.window.room(0, 0);
        self.fan_out(&upload, device_type, &source, chunk_size, 0, room)
            .await
            .map(|done| self.outcome(upload_id, rows, done))
    }

    /// Goes on with a fan-out paused before chunk `from`: a cheap count first, the file only
    /// when the window has room.
    #[tracing::instrument(skip_all, fields(upload_id, from))]
    pub async fn resume(&self, upload_id: i64, from: i32) -> Result<DispatchOutcome, DispatchError> {
        let upload = Upload::find_by_id(upload_id)
            .one(self.db)
            .await?
            .ok_or(DispatchError::UploadMissing(upload_id))?;
        // Cancelled, failed or finished meanwhile: the continuation ends here.
        if upload.status != UploadStatus::Processing {
            return Ok(DispatchOutcome::Skipped(upload.status));
        }
        let Some(device_type) = DeviceType::from_code(upload.device_type.into()) else {
            return self
                .reject(&upload, "the upload names an unknown device type".into())
                .await;
        };
        let chunk_size = upload
            .chunk_size
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s > 0)
            .unwrap_or(self.chunk_size);
        let rows = upload.total_rows.map_or(0, |r| u32::try_from(r).unwrap_or(0));
        let total_chunks = u64::from(rows).div_ceil(chunk_size as u64) as i64;
        let applied = self.applied_below(upload_id, from).await?;
        let (from, room) = if self
            .window
            .may_resume(from, applied, total_chunks - i64::from(from))
        {
            (from, self.window.room(from, applied))
        } else if self.stalled(&upload).await? {
            tracing::warn!(
                upload_id,
                from,
                applied,
                "fan-out stalled with the chunk queue empty: sending unapplied chunks again"
            );
            (0, self.window.room(0, 0))
        } else {
            return Ok(DispatchOutcome::Windowed {
                sent: 0,
                next: self.continuation(upload_id, from),
            });
        };
        let source = snapshot_key(&upload.object_key);
        self.fan_out(&upload, device_type, &source, chunk_size, from, room)
            .await
            .map(|done| self.outcome(upload_id, rows, done))
    }

    /// Chunks of the window are missing: nothing applied for `stalled_after` and the chunk
    /// queue empty, as far as it tells (the sweeper's test, for a fan-out that is paused).
    async fn stalled(&self, upload: &upload::Model) -> Result<bool, DispatchError> {
        let quiet = Utc::now().signed_duration_since(upload.updated_at);
        if quiet.to_std().unwrap_or_default() < self.stalled_after {
            return Ok(false);
        }
        Ok(self.chunks.backlog().await? == Some(0))
    }

    fn outcome(&self, upload_id: i64, rows: u32, done: FanOut) -> DispatchOutcome {
        match done {
            FanOut::Done { chunks } => {
                tracing::info!(rows, chunks, "upload dispatched");
                DispatchOutcome::FannedOut { rows, chunks }
            }
            FanOut::Paused { sent, next_chunk } => {
                tracing::debug!(sent, next_chunk, "fan-out window full");
                DispatchOutcome::Windowed {
                    sent,
                    next: self.continuation(upload_id, next_chunk),
                }
            }
        }
    }

    fn continuation(&self, upload_id: i64, from: i32) -> JobPayload {
        JobPayload::ContinueDispatch {
            upload_id,
            from_chunk: from,
            resume_at_applied: self.window.resume_at_applied(from),
        }
    }

    /// Applied chunks of the upload numbered below `from`.
    async fn applied_below(&self, upload_id: i64, from: i32) -> Result<i64, DbErr> {
        const SQL: &str = "SELECT COUNT(*) AS n FROM upload_chunks WHERE upload_id = $1 AND chunk < $2";
        let row = self
            .db
            .query_one(crate::db::stmt(
                self.db.get_database_backend(),
                SQL,
                [upload_id.into(), from.into()],
            ))
            .await?;
        Ok(row.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0))
    }

    /// Applied chunks of the upload numbered `from` or more (a fan-out run again skips them).
    async fn applied_from(&self, upload_id: i64, from: i32) -> Result<HashSet<i32>, DbErr> {
        const SQL: &str = "SELECT chunk FROM upload_chunks WHERE upload_id = $1 AND chunk >= $2";
        let rows = self
            .db
            .query_all(crate::db::stmt(
                self.db.get_database_backend(),
                SQL,
                [upload_id.into(), from.into()],
            ))
            .await?;
        rows.iter().map(|r| r.try_get::<i32>("", "chunk")).collect()
    }

    /// QUEUED → PROCESSING with the file's real row count (a re-run keeps `started_at`), and
    /// the chunk size pinned: the first dispatch records its own, later ones get that back.
    /// `None` when the upload is no longer waiting for dispatch.
    async fn start(&self, upload: &upload::Model, rows: u32) -> Result<Option<usize>, DbErr> {
        const SQL: &str = "UPDATE uploads SET status = 'PROCESSING', total_rows = $2, \
                             started_at = COALESCE(started_at, $3), updated_at = $3, \
                             chunk_size = COALESCE(chunk_size, $4) \
                           WHERE id = $1 AND status IN ('QUEUED', 'PROCESSING') RETURNING chunk_size";
        let mine = i32::try_from(self.chunk_size).unwrap_or(i32::MAX);
        let values = [
            upload.id.into(),
            (rows as i32).into(),
            Utc::now().into(),
            mine.into(),
        ];
        let row = self
            .db
            .query_one(crate::db::stmt(self.db.get_database_backend(), SQL, values))
            .await?;
        row.map(|r| r.try_get::<Option<i32>>("", "chunk_size"))
            .transpose()
            .map(|size| {
                size.map(|s| {
                    s.and_then(|s| usize::try_from(s).ok())
                        .filter(|&s| s > 0)
                        .unwrap_or(self.chunk_size)
                })
            })
    }

    async fn still_processing(&self, upload_id: i64) -> Result<bool, DbErr> {
        let upload = Upload::find_by_id(upload_id).one(self.db).await?;
        Ok(upload.is_some_and(|u| u.status == UploadStatus::Processing))
    }

    async fn reject(&self, upload: &upload::Model, reason: String) -> Result<DispatchOutcome, DispatchError> {
        tracing::info!(upload_id = upload.id, %reason, "upload rejected");
        fail_upload(self.db, self.outbox, upload.id, &reason).await?;
        Ok(DispatchOutcome::Rejected(reason))
    }

    /// Streams the file from its start (the keys of every earlier row are needed to mark
    /// duplicates), skips chunks below `from` and those already applied, and sends at most
    /// `room` chunks.
    async fn fan_out(
        &self,
        upload: &upload::Model,
        device_type: DeviceType,
        source: &str,
        chunk_size: usize,
        from: i32,
        room: u32,
    ) -> Result<FanOut, DispatchError> {
        let applied = self.applied_from(upload.id, from).await?;
        let mut file = CsvFile::open(self.storage.get(source).await?, device_type)
            .await
            .map_err(DispatchError::Read)?;
        let mut seen = HashSet::new();
        let mut pending: Vec<JobPayload> = Vec::with_capacity(CHUNKS_PER_SEND);
        let mut rows = Vec::with_capacity(chunk_size);
        let mut chunk = 0i32;
        let mut in_chunk = 0usize;
        let mut sent = 0u32;
        while let Some(row) = file.next_row().await.map_err(DispatchError::Read)? {
            let duplicate = match device_uid::normalize(device_type, &row.uid) {
                Ok(key) => !seen.insert(dedupe_key(&key)),
                // Invalid keys fail on their own; they cannot repeat a device.
                Err(_) => false,
            };
            in_chunk += 1;
            let wanted = chunk >= from && !applied.contains(&chunk);
            if wanted {
                rows.push(ChunkRow {
                    row_number: row.row_number,
                    uid: row.uid,
                    uid2: row.uid2,
                    duplicate,
                });
            }
            if in_chunk < chunk_size {
                continue;
            }
            in_chunk = 0;
            if wanted {
                let full = std::mem::replace(&mut rows, Vec::with_capacity(chunk_size));
                pending.push(JobPayload::ProcessChunk(ChunkJob {
                    upload_id: upload.id,
                    chunk,
                    rows: full,
                }));
                sent += 1;
            }
            chunk += 1;
            let window_full = sent == room;
            if pending.len() == CHUNKS_PER_SEND || (window_full && !pending.is_empty()) {
                self.chunks.send(&pending).await?;
                pending.clear();
                // Cancelled meanwhile: the workers would skip the rest anyway.
                if !self.still_processing(upload.id).await? {
                    tracing::info!(
                        upload_id = upload.id,
                        chunks = chunk,
                        "fan-out stopped: upload no longer processing"
                    );
                    return Ok(FanOut::Done { chunks: sent });
                }
            }
            if window_full {
                return Ok(match file.next_row().await.map_err(DispatchError::Read)? {
                    Some(_) => FanOut::Paused {
                        sent,
                        next_chunk: chunk,
                    },
                    None => FanOut::Done { chunks: sent },
                });
            }
        }
        if !rows.is_empty() {
            pending.push(JobPayload::ProcessChunk(ChunkJob {
                upload_id: upload.id,
                chunk,
                rows,
            }));
            sent += 1;
        }
        if !pending.is_empty() {
            self.chunks.send(&pending).await?;
        }
        Ok(FanOut::Done { chunks: sent })
    }
}

/// Makes the dispatch continuations whose windows have room due at once (applied chunks of
/// the upload reached the continuation's rank), so an idle worker does not wait out
/// [`CONTINUE_AFTER`]. Returns how many it woke.
pub async fn wake_continuations(db: &DatabaseConnection, dispatch_queue: &str) -> Result<u64, DbErr> {
    // Rank 0 is a first dispatch (or one in backoff): left alone.
    const SQL: &str = "UPDATE jobs SET run_at = $1 \
                       WHERE queue = $2 AND state = 'available' AND run_at > $1 AND seq > 0 \
                         AND upload_id IS NOT NULL \
                         AND (SELECT COUNT(*) FROM upload_chunks c WHERE c.upload_id = jobs.upload_id) >= jobs.seq";
    let result = db
        .execute(crate::db::stmt(
            db.get_database_backend(),
            SQL,
            [Utc::now().into(), dispatch_queue.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// FAILED with `reason`, unless the upload already reached a terminal state. Results
/// already written stay.
pub async fn fail_upload(
    db: &DatabaseConnection,
    outbox: &Outbox,
    upload_id: i64,
    reason: &str,
) -> Result<bool, DbErr> {
    crate::uploads::terminate(db, outbox, upload_id, UploadStatus::Failed, Some(reason)).await
}

/// A normalised key packed into 16 bytes, so the set of keys seen stays compact (about
/// 16 MiB per million rows) and exact: an IMEI is a 15-digit number; a serial number is
/// up to 20 base-36 digits (< 36^20 < 2^104), kept apart by its length.
pub fn dedupe_key(normalized: &str) -> u128 {
    let value = normalized.bytes().fold(0u128, |acc, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            _ => 0,
        };
        acc.wrapping_mul(36).wrapping_add(u128::from(digit))
    });
    (value << 5) | normalized.len() as u128
}

#[cfg(test)]
mod tests {
    use super::dedupe_key;
    use proptest::prelude::*;

    #[test]
    fn leading_zeros_do_not_collide() {
        assert_ne!(dedupe_key("0000000A1"), dedupe_key("000000A1"));
    }

    proptest! {
        #[test]
        fn distinct_serials_get_distinct_keys(a in "[A-Z0-9]{8,20}", b in "[A-Z0-9]{8,20}") {
            prop_assert_eq!(a == b, dedupe_key(&a) == dedupe_key(&b));
        }

        #[test]
        fn distinct_imeis_get_distinct_keys(a in "[0-9]{15}", b in "[0-9]{15}") {
            prop_assert_eq!(a == b, dedupe_key(&a) == dedupe_key(&b));
        }
    }
}
