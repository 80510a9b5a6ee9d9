//! Finds uploads left QUEUED or PROCESSING with nothing that will move them on, and resumes
//! them (dispatches them again, which is idempotent) or, when one of their jobs was given
//! up, fails them with a reason. Any number of processes may sweep at once: each upload is
//! claimed by a conditional update before anything is done to it.
//!
//! "Nothing will move it on": on the job table, no available or running job names the
//! upload. Chunks on SQS cannot be seen, so there it is: no job of the upload on the job
//! table, no change for a while, and the chunk queue empty.
//!
//! It also ends abandoned multipart uploads: PREPARED, not assembled, past their expiry.
//! Their parts are aborted in the store, then the upload is failed with a reason.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use entity::upload::UploadStatus;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use tracing::Instrument;

use crate::queue::{JobPayload, Queue, QueueError};
use crate::storage::ObjectStore;
use crate::webhook::Outbox;

/// Uploads looked at per sweep, oldest change first; the rest wait for the next sweep.
const UPLOADS_PER_SWEEP: i64 = 100;

/// Public reason of an upload failed by the sweeper.
pub const GIVEN_UP_REASON: &str = "processing stopped: one of the upload's jobs was given up after repeated \
                                   internal errors; the results written so far are kept";

/// Public reason of a multipart upload failed because it was never completed.
pub const MULTIPART_EXPIRED_REASON: &str = "the multipart upload was not completed before it expired; \
                                            its parts were discarded";

/// What the sweeper saw of one unfinished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub status: UploadStatus,
    /// Available or running jobs of the upload on the job table.
    pub live_jobs: i64,
    /// Dead (given-up) dispatch or chunk jobs of the upload on the job table.
    pub dead_jobs: i64,
    /// Unchanged for at least the staleness period.
    pub stale: bool,
}

/// Where chunk jobs wait, as far as the sweeper can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkQueue {
    /// On the job table: the upload's jobs are all visible.
    JobTable,
    /// Elsewhere (SQS): `backlog` messages waiting or in flight, `None` when unknown.
    External { backlog: Option<u64> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Something still works on it, or may.
    Leave,
    /// Dispatch it again: the dispatcher re-sends its chunks and workers skip applied ones.
    Resume,
    /// A job of it was given up: end it FAILED with this public reason.
    Fail(&'static str),
}

/// The sweeper's decision, apart from any I/O.
pub fn verdict(c: &Candidate, chunks: ChunkQueue) -> Verdict {
    if c.status.is_terminal() || c.status == UploadStatus::Prepared || !c.stale {
        return Verdict::Leave;
    }
    if c.live_jobs > 0 {
        return Verdict::Leave;
    }
    if c.dead_jobs > 0 {
        return Verdict::Fail(GIVEN_UP_REASON);
    }
    match (c.status, chunks) {
        // Nothing was fanned out yet, wherever chunks go.
        (UploadStatus::Queued, _) | (_, ChunkQueue::JobTable) => Verdict::Resume,
        // Its chunks may still be waiting unseen; an empty queue (approximate, hence the
        // staleness too) means they are not.
        (_, ChunkQueue::External { backlog: Some(0) }) => Verdict::Resume,
        (_, ChunkQueue::External { .. }) => Verdict::Leave,
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub resumed: Vec<i64>,
    pub failed: Vec<i64>,
    /// Abandoned multipart uploads aborted in the store and failed.
    pub expired: Vec<i64>,
}

/// One sweep over the uploads of a database.
pub struct Sweeper<'a> {
    pub db: &'a DatabaseConnection,
    /// The job-table queue dispatch jobs go to.
    pub dispatch: &'a dyn Queue,
    pub chunks: &'a dyn Queue,
    pub outbox: &'a Outbox,
    pub stale_after: Duration,
    /// Where abandoned multipart uploads are aborted.
    pub storage: &'a dyn ObjectStore,
}

impl Sweeper<'_> {
    pub async fn sweep(&self) -> Result<SweepReport, QueueError> {
        let now = Utc::now();
        let stale_before = now - TimeDelta::from_std(self.stale_after).unwrap_or(TimeDelta::MAX);
        let chunks = match self.chunks.job_table() {
            Some(_) => ChunkQueue::JobTable,
            None => ChunkQueue::External {
                backlog: self.chunks.backlog().await?,
            },
        };
        let backend = self.db.get_database_backend();
        // One statement, so the upload and its jobs are read in one snapshot.
        // Uploads something works on are left out here already, so that the page of
        // candidates holds only ones that may need the sweeper; `$5` also leaves out
        // PROCESSING uploads while chunks may still wait unseen on SQS, and those whose rows
        // wait for the carrier (the carrier executors move them on).
        const SQL: &str = "SELECT u.id, u.status, \
               (SELECT COUNT(*) FROM jobs j WHERE j.upload_id = u.id AND j.state IN ('available', 'running')) AS live_jobs, \
               (SELECT COUNT(*) FROM jobs j WHERE j.upload_id = u.id AND j.state = 'dead' AND j.queue IN ($2, $3)) AS dead_jobs \
             FROM uploads u \
             WHERE u.status IN ('QUEUED', $5) AND u.updated_at <= $1 \
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.upload_id = u.id AND j.state IN ('available', 'running')) \
               AND NOT EXISTS (SELECT 1 FROM carrier_intents c WHERE c.upload_id = u.id AND c.state <> 'DONE') \
             ORDER BY u.updated_at LIMIT $4";
        let processing_too = match chunks {
            ChunkQueue::JobTable | ChunkQueue::External { backlog: Some(0) } => "PROCESSING",
            ChunkQueue::External { .. } => "QUEUED",
        };
        let dispatch_queue = queue_name(self.dispatch);
        let chunk_queue = queue_name(self.chunks);
        let rows = self
            .db
            .query_all(crate::db::stmt(
                backend,
                SQL,
                [
                    stale_before.into(),
                    dispatch_queue.into(),
                    chunk_queue.into(),
                    UPLOADS_PER_SWEEP.into(),
                    processing_too.into(),
                ],
            ))
            .await?;
        let mut report = SweepReport::default();
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let status: UploadStatus = row.try_get("", "status")?;
            let candidate = Candidate {
                status,
                live_jobs: row.try_get("", "live_jobs")?,
                dead_jobs: row.try_get("", "dead_jobs")?,
                stale: true,
            };
            let verdict = verdict(&candidate, chunks);
            if verdict == Verdict::Leave || !self.claim(id, status, stale_before).await? {
                continue;
            }
            let span = crate::telemetry::upload_span(self.db, "sweep", id, None).await;
            async {
                match verdict {
                    Verdict::Resume => {
                        tracing::warn!(?status, "stranded upload: dispatching it again");
                        self.dispatch
                            .send(&[JobPayload::DispatchUpload { upload_id: id }])
                            .await?;
                        report.resumed.push(id);
                    }
                    Verdict::Fail(reason) => {
                        tracing::warn!(?status, reason, "stranded upload with a given-up job: failed");
                        if super::terminate(self.db, self.outbox, id, UploadStatus::Failed, Some(reason))
                            .await?
                        {
                            report.failed.push(id);
                        }
                    }
                    Verdict::Leave => {}
                }
                Ok::<_, QueueError>(())
            }
            .instrument(span)
            .await?;
        }
        report.expired = self.end_abandoned_multipart().await?;
        Ok(report)
    }

    /// Aborts in the store the multipart uploads that expired unassembled, then fails their
    /// uploads. The store first: an abort that fails is tried again by the next sweep, and
    /// aborting twice (concurrent sweepers) is harmless.
    async fn end_abandoned_multipart(&self) -> Result<Vec<i64>, QueueError> {
        const SQL: &str = "SELECT m.upload_id, m.store_upload_id, u.object_key \
             FROM multipart_uploads m JOIN uploads u ON u.id = m.upload_id \
             WHERE m.completed_at IS NULL AND m.expires_at <= $1 AND u.status = 'PREPARED' \
             ORDER BY m.expires_at LIMIT $2";
        let rows = self
            .db
            .query_all(crate::db::stmt(
                self.db.get_database_backend(),
                SQL,
                [Utc::now().into(), UPLOADS_PER_SWEEP.into()],
            ))
            .await?;
        let mut ended = Vec::new();
        for row in rows {
            let id: i64 = row.try_get("", "upload_id")?;
            let store_upload_id: String = row.try_get("", "store_upload_id")?;
            let key: String = row.try_get("", "object_key")?;
            if let Err(e) = self.storage.abort_multipart(&key, &store_upload_id).await {
                tracing::warn!(upload_pk = id, error = %e, "could not abort an expired multipart upload; next sweep tries again");
                continue;
            }
            if super::terminate(
                self.db,
                self.outbox,
                id,
                UploadStatus::Failed,
                Some(MULTIPART_EXPIRED_REASON),
            )
            .await?
            {
                tracing::info!(upload_pk = id, "expired multipart upload aborted");
                ended.push(id);
            }
        }
        Ok(ended)
    }

    /// Touches the upload if it is still as stale as it was read: of concurrent sweepers
    /// one acts, and the upload is not stale again for a whole period.
    async fn claim(&self, id: i64, status: UploadStatus, stale_before: DateTime<Utc>) -> Result<bool, DbErr> {
        const SQL: &str =
            "UPDATE uploads SET updated_at = $1 WHERE id = $2 AND status = $3 AND updated_at <= $4";
        let result = self
            .db
            .execute(crate::db::stmt(
                self.db.get_database_backend(),
                SQL,
                [Utc::now().into(), id.into(), status.into(), stale_before.into()],
            ))
            .await?;
        Ok(result.rows_affected() == 1)
    }
}

fn queue_name(queue: &dyn Queue) -> String {
    queue
        .job_table()
        .map_or_else(String::new, |t| t.queue_name().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(status: UploadStatus, live_jobs: i64, dead_jobs: i64, stale: bool) -> Candidate {
        Candidate {
            status,
            live_jobs,
            dead_jobs,
            stale,
        }
    }

    const SQS_EMPTY: ChunkQueue = ChunkQueue::External { backlog: Some(0) };
    const SQS_BUSY: ChunkQueue = ChunkQueue::External { backlog: Some(3) };
    const SQS_UNKNOWN: ChunkQueue = ChunkQueue::External { backlog: None };

    #[test]
    fn an_upload_with_a_live_job_or_a_recent_change_is_left_alone() {
        for status in [UploadStatus::Queued, UploadStatus::Processing] {
            for chunks in [ChunkQueue::JobTable, SQS_EMPTY] {
                assert_eq!(verdict(&candidate(status, 1, 0, true), chunks), Verdict::Leave);
                assert_eq!(verdict(&candidate(status, 1, 1, true), chunks), Verdict::Leave);
                assert_eq!(verdict(&candidate(status, 0, 0, false), chunks), Verdict::Leave);
                assert_eq!(verdict(&candidate(status, 0, 1, false), chunks), Verdict::Leave);
            }
        }
    }

    #[test]
    fn finished_or_unfinalized_uploads_are_never_touched() {
        for status in [
            UploadStatus::Prepared,
            UploadStatus::Completed,
            UploadStatus::CompletedWithErrors,
            UploadStatus::Failed,
            UploadStatus::Cancelled,
        ] {
            assert_eq!(
                verdict(&candidate(status, 0, 1, true), ChunkQueue::JobTable),
                Verdict::Leave
            );
            assert_eq!(verdict(&candidate(status, 0, 0, true), SQS_EMPTY), Verdict::Leave);
        }
    }

    #[test]
    fn a_stranded_upload_with_a_given_up_job_fails_and_one_without_resumes() {
        for status in [UploadStatus::Queued, UploadStatus::Processing] {
            assert_eq!(
                verdict(&candidate(status, 0, 2, true), ChunkQueue::JobTable),
                Verdict::Fail(GIVEN_UP_REASON)
            );
            assert_eq!(
                verdict(&candidate(status, 0, 0, true), ChunkQueue::JobTable),
                Verdict::Resume
            );
        }
    }

    #[test]
    fn with_chunks_on_sqs_a_processing_upload_resumes_only_once_the_queue_is_empty() {
        let processing = candidate(UploadStatus::Processing, 0, 0, true);
        assert_eq!(verdict(&processing, SQS_EMPTY), Verdict::Resume);
        assert_eq!(verdict(&processing, SQS_BUSY), Verdict::Leave);
        assert_eq!(verdict(&processing, SQS_UNKNOWN), Verdict::Leave);
        // A queued upload has no chunks anywhere yet.
        let queued = candidate(UploadStatus::Queued, 0, 0, true);
        assert_eq!(verdict(&queued, SQS_BUSY), Verdict::Resume);
    }
}
