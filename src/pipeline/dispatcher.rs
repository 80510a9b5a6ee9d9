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
//! chunks are sent and not yet applied. When the window is full the dispatch job becomes a
//! continuation ([`JobPayload::ContinueDispatch`]) that comes back shortly, checks with one
//! count whether enough chunks were applied, and if so sends the next ones: reading on where
//! the fan-out stopped when this process paused it ([`PausedFanOuts`]), else streaming the
//! file again from the start (rebuilding the set of keys seen, so duplicates are marked as
//! in one pass) and skipping the chunks already sent. So a small upload never queues behind
//! more than a window of a large one's chunks, although SQS messages have no order.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use entity::prelude::*;
use entity::upload::{self, UploadStatus};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait};

use super::csv_file::{self, CsvFile, CsvRow, FileError};
use super::fanout_window::Window;
use crate::domain::device_uid;
use crate::domain::{DeviceType, KeyKind};
use crate::queue::{ChunkJob, ChunkRows, FileRange, JobPayload, Queue, QueueError};
use crate::storage::{ObjectReader, ObjectStore, StorageError, snapshot_key};
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
    /// Fan-outs this process paused, read on by their continuations when this process takes
    /// them (`None`: every continuation reads the file from the start).
    pub paused: Option<&'a PausedFanOuts>,
}

/// A fan-out paused behind its window, as far as it had read the file.
pub struct PausedFanOut {
    upload_id: i64,
    /// The chunk the continuation starts at, beginning at file offset `next_start`;
    /// `peeked` is its first row.
    next_chunk: i32,
    next_start: u64,
    file: CsvFile<ObjectReader>,
    seen: HashSet<u128>,
    peeked: CsvRow,
    since: Instant,
}

/// The fan-outs this process paused, so that their continuations, when this process takes
/// them (usually: the process that paused one is idle soonest), read on instead of from the
/// start of the file. Only a shortcut: a continuation elsewhere, or after an entry was
/// dropped, reads from the start and sends the same chunks. A few at most (each holds an open
/// file and its keys, 16 B per row read), none older than a minute.
#[derive(Default)]
pub struct PausedFanOuts(Mutex<Vec<PausedFanOut>>);

impl PausedFanOuts {
    const MAX: usize = 4;
    const KEEP: Duration = Duration::from_secs(60);

    /// The upload's paused fan-out if it stopped before chunk `next_chunk`; any other entry
    /// of the upload is stale and dropped.
    fn take(&self, upload_id: i64, next_chunk: i32) -> Option<PausedFanOut> {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = entries.iter().position(|p| p.upload_id == upload_id)?;
        let entry = entries.swap_remove(at);
        (entry.next_chunk == next_chunk && entry.since.elapsed() < Self::KEEP).then_some(entry)
    }

    fn keep(&self, paused: PausedFanOut) {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|p| p.upload_id != paused.upload_id && p.since.elapsed() < Self::KEEP);
        if entries.len() >= Self::MAX
            && let Some(oldest) = (0..entries.len()).min_by_key(|&i| entries[i].since)
        {
            entries.swap_remove(oldest);
        }
        entries.push(paused);
    }
}

/// How a fan-out ended.
enum FanOut {
    /// Every chunk from the start point on was sent (or was applied already).
    Done { chunks: u32 },
    /// The window is full; chunks from `next_chunk` on are still to be sent.
    Paused { sent: u32, next_chunk: i32 },
}

impl Dispatcher<'_> {
    #[tracing::instrument(skip_all, fields(upload_pk = upload_id))]
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
        let keys = KeyKind::of_upload(upload.action_kind, device_type);

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

        let rows = match csv_file::validate(self.storage.get(&source).await?, keys, self.max_rows).await {
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
                chunk_size,
                configured = self.chunk_size,
                "re-dispatch keeps the upload's recorded chunk size"
            );
        }

        // A dispatch run again (redelivered, or resumed by the sweeper) starts over with the
        // chunks already applied counted as such.
        let room = self.window.room(0, 0);
        self.fan_out(&upload, keys, &source, chunk_size, 0, room)
            .await
            .map(|done| self.outcome(upload_id, rows, done))
    }

    /// Goes on with a fan-out paused before chunk `from`: a cheap count first, the file only
    /// when the window has room.
    #[tracing::instrument(skip_all, fields(upload_pk = upload_id, from))]
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
        let keys = KeyKind::of_upload(upload.action_kind, device_type);
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
        self.fan_out(&upload, keys, &source, chunk_size, from, room)
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
        tracing::info!(%reason, "upload rejected");
        fail_upload(self.db, self.outbox, upload.id, &reason).await?;
        Ok(DispatchOutcome::Rejected(reason))
    }

    /// Streams the file from its start (the keys of every earlier row are needed to mark
    /// duplicates), or from where this process paused it before chunk `from`; skips chunks
    /// below `from` and those already applied, and sends at most `room` chunks. A chunk job
    /// names its rows' byte range of the snapshot `source`, not the rows.
    async fn fan_out(
        &self,
        upload: &upload::Model,
        keys: KeyKind,
        source: &str,
        chunk_size: usize,
        from: i32,
        room: u32,
    ) -> Result<FanOut, DispatchError> {
        let applied = self.applied_from(upload.id, from).await?;
        // This process paused the fan-out itself: read on where it stopped.
        let (mut file, mut seen, mut chunk, mut peeked, mut start) =
            match self.paused.and_then(|p| p.take(upload.id, from)) {
                Some(p) => (p.file, p.seen, from, Some(p.peeked), p.next_start),
                None => {
                    let file = CsvFile::open(self.storage.get(source).await?, keys)
                        .await
                        .map_err(DispatchError::Read)?;
                    let start = file.offset();
                    (file, HashSet::new(), 0, None, start)
                }
            };
        let (key, key2) = file.key_columns();
        let plan = file.plan_column();
        let column = |c: usize| u32::try_from(c).unwrap_or(u32::MAX);
        let mut pending: Vec<JobPayload> = Vec::with_capacity(CHUNKS_PER_SEND);
        // The chunk being read; `start` is where it begins.
        let mut open: Option<FileRange> = None;
        let mut sent = 0u32;
        loop {
            let row = match peeked.take() {
                Some(row) => row,
                None => match file.next_row().await.map_err(DispatchError::Read)? {
                    Some(row) => row,
                    None => break,
                },
            };
            let duplicate = match device_uid::normalize(keys, &row.uid) {
                Ok(key) => !seen.insert(dedupe_key(&key)),
                // Invalid keys fail on their own; they cannot repeat a device.
                Err(_) => false,
            };
            let current = open.get_or_insert_with(|| FileRange {
                key: source.to_owned(),
                start,
                end: start,
                first_row: row.row_number,
                rows: 0,
                key_column: column(key),
                key2_column: key2.map(column),
                plan_column: plan.map(column),
                duplicates: Vec::new(),
            });
            current.rows += 1;
            if duplicate {
                current.duplicates.push(row.row_number);
            }
            if (current.rows as usize) < chunk_size {
                continue;
            }
            let mut full = open.take().expect("the chunk just read");
            full.end = file.offset();
            start = full.end;
            if chunk >= from && !applied.contains(&chunk) {
                pending.push(chunk_job(upload.id, chunk, full));
                sent += 1;
            }
            chunk += 1;
            let window_full = sent == room;
            if pending.len() == CHUNKS_PER_SEND || (window_full && !pending.is_empty()) {
                self.chunks.send(&pending).await?;
                pending.clear();
                // Cancelled meanwhile: the workers would skip the rest anyway.
                if !self.still_processing(upload.id).await? {
                    tracing::info!(chunks = chunk, "fan-out stopped: upload no longer processing");
                    return Ok(FanOut::Done { chunks: sent });
                }
            }
            if window_full {
                let Some(next) = file.next_row().await.map_err(DispatchError::Read)? else {
                    return Ok(FanOut::Done { chunks: sent });
                };
                if let Some(paused) = self.paused {
                    paused.keep(PausedFanOut {
                        upload_id: upload.id,
                        next_chunk: chunk,
                        next_start: start,
                        file,
                        seen,
                        peeked: next,
                        since: Instant::now(),
                    });
                }
                return Ok(FanOut::Paused {
                    sent,
                    next_chunk: chunk,
                });
            }
        }
        if let Some(mut last) = open.take()
            && chunk >= from
            && !applied.contains(&chunk)
        {
            last.end = file.offset();
            pending.push(chunk_job(upload.id, chunk, last));
            sent += 1;
        }
        if !pending.is_empty() {
            self.chunks.send(&pending).await?;
        }
        Ok(FanOut::Done { chunks: sent })
    }
}

fn chunk_job(upload_id: i64, chunk: i32, file: FileRange) -> JobPayload {
    JobPayload::ProcessChunk(ChunkJob {
        upload_id,
        chunk,
        rows: ChunkRows::InFile { file },
    })
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
    super::terminate(db, outbox, upload_id, UploadStatus::Failed, Some(reason)).await
}

/// A normalised key packed into 16 bytes, so the set of keys seen stays compact (about
/// 16 MiB per million rows) and exact: an IMEI is a 15-digit number, an ICCID a 19–20-digit
/// one; a serial number is up to 20 base-36 digits (< 36^20 < 2^104), kept apart by its
/// length.
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
    use super::{PausedFanOut, PausedFanOuts, dedupe_key};
    use crate::domain::DeviceType;
    use crate::pipeline::csv_file::{CsvFile, CsvRow};
    use proptest::prelude::*;

    async fn paused(upload_id: i64, next_chunk: i32) -> PausedFanOut {
        let bytes = b"imei\n490154203237518\n".to_vec();
        let file = CsvFile::open(
            Box::pin(std::io::Cursor::new(bytes)) as crate::storage::ObjectReader,
            DeviceType::Smartphone,
        )
        .await
        .unwrap();
        PausedFanOut {
            upload_id,
            next_chunk,
            next_start: 5,
            file,
            seen: Default::default(),
            peeked: CsvRow {
                row_number: 1,
                uid: String::new(),
                uid2: None,
                plan: None,
            },
            since: std::time::Instant::now(),
        }
    }

    #[tokio::test]
    async fn a_paused_fan_out_is_taken_once_and_only_at_its_chunk() {
        let cache = PausedFanOuts::default();
        cache.keep(paused(1, 16).await);
        assert!(cache.take(1, 16).is_some());
        assert!(cache.take(1, 16).is_none(), "taken once");
        cache.keep(paused(1, 16).await);
        assert!(
            cache.take(1, 8).is_none(),
            "another resume point reads from the start"
        );
        assert!(cache.take(1, 16).is_none(), "and drops the stale entry");
    }

    #[tokio::test]
    async fn few_paused_fan_outs_are_kept_the_oldest_dropped() {
        let cache = PausedFanOuts::default();
        for upload in 1..=PausedFanOuts::MAX as i64 + 1 {
            cache.keep(paused(upload, 16).await);
        }
        assert!(cache.take(1, 16).is_none(), "the oldest made room");
        for upload in 2..=PausedFanOuts::MAX as i64 + 1 {
            assert!(cache.take(upload, 16).is_some(), "{upload}");
        }
    }

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
