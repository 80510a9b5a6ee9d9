//! The error report of an upload that ended with failures: queued with its terminal state
//! (`report_status = PENDING` in the same statement), built in the background by
//! [`ReportBuilder`] from the streaming merge of its file and its failures, stored next to
//! it, then offered as a signed link. A request never merges: until the report is built,
//! `errorReport` is null and `errorReportStatus` says PENDING.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use entity::prelude::*;
use entity::upload::{self, ReportStatus};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::failed_rows::{Layout, store};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::{ObjectStore, SignedUrl, error_report_key};

/// Attempts before a report is given up (`FAILED`); with the backoff below, about ten minutes.
pub const MAX_ATTEMPTS: i32 = 8;

/// A download link of `upload`'s error report, once built; `None` before (not finished, no
/// failure, or still being built). Signing only: no statement, no merge.
pub async fn error_report(state: &AppState, upload: &upload::Model) -> Result<Option<SignedUrl>, ApiError> {
    let Some(key) = ready_key(upload) else {
        if upload.report_status == Some(ReportStatus::Pending) {
            // Asked before it is built: wake this process's builder (if it runs one) rather
            // than merge here. Wakes coalesce, so a page of 500 pending reports is one wake.
            nudge().notify_one();
        }
        return Ok(None);
    };
    let ttl = Duration::from_secs(state.settings.download_url_ttl_secs.max(1));
    Ok(Some(state.storage.presign_get(key, ttl).await?))
}

/// Wakes an idle builder of this process early.
fn nudge() -> &'static tokio::sync::Notify {
    static NUDGE: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    NUDGE.get_or_init(tokio::sync::Notify::new)
}

/// The stored report's key, when it is built.
fn ready_key(upload: &upload::Model) -> Option<&str> {
    match upload.report_status {
        Some(ReportStatus::Ready) => upload.error_report_key.as_deref(),
        _ => None,
    }
}

/// What one builder step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Built {
    /// A report was taken and built (or its attempt failed and was put back).
    Done,
    /// No report was due.
    Empty,
}

/// Builds the reports that are due, one at a time per builder; any number of builders (one
/// per worker process) share the work through a claim on the upload row.
#[derive(Clone)]
pub struct ReportBuilder {
    db: DatabaseConnection,
    storage: Arc<dyn ObjectStore>,
    /// How long a claimed report stays with its builder before another may take it (the
    /// builder died). Longer than any merge: a million-row file merges in seconds.
    lease: Duration,
}

impl ReportBuilder {
    pub fn new(db: DatabaseConnection, storage: Arc<dyn ObjectStore>) -> Self {
        Self {
            db,
            storage,
            lease: Duration::from_secs(300),
        }
    }

    /// With another lease (tests let one run out).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Takes the oldest due report for this builder: pushes its due time a lease ahead and
    /// counts the attempt, in one statement, so two builders never take the same one.
    /// Returns the upload id and the attempt number.
    pub async fn claim(&self) -> Result<Option<(i64, i32)>, DbErr> {
        let backend = self.db.get_database_backend();
        let now = Utc::now();
        // A read first: an idle builder polls without taking SQLite's write lock.
        const DUE: &str = "SELECT id FROM uploads WHERE report_due_at IS NOT NULL AND report_due_at <= $1 \
                           AND report_status = 'PENDING' LIMIT 1";
        if self
            .db
            .query_one(crate::db::stmt(backend, DUE, [now.into()]))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        // PostgreSQL: concurrent builders pass over each other's row instead of waiting.
        // SQLite runs one writer at a time, so the UPDATE is atomic as it stands.
        let lock = if backend == DbBackend::Postgres {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE uploads SET report_due_at = $2, report_attempts = report_attempts + 1 \
             WHERE id = (SELECT id FROM uploads WHERE report_due_at IS NOT NULL AND report_due_at <= $1 \
                           AND report_status = 'PENDING' ORDER BY report_due_at LIMIT 1 {lock}) \
             AND report_due_at <= $1 AND report_status = 'PENDING' \
             RETURNING id, report_attempts"
        );
        let row = self
            .db
            .query_one(crate::db::stmt(
                backend,
                &sql,
                [now.into(), after(now, self.lease).into()],
            ))
            .await?;
        row.map(|r| Ok((r.try_get("", "id")?, r.try_get("", "report_attempts")?)))
            .transpose()
    }

    /// Builds one due report, if any.
    pub async fn try_build_next(&self) -> Result<Built, DbErr> {
        let Some((upload_id, attempt)) = self.claim().await? else {
            return Ok(Built::Empty);
        };
        let span = crate::telemetry::upload_span(&self.db, "report", upload_id, None).await;
        self.build_and_settle(upload_id, attempt).instrument(span).await?;
        Ok(Built::Done)
    }

    async fn build_and_settle(&self, upload_id: i64, attempt: i32) -> Result<(), DbErr> {
        let result = self.build(upload_id).await;
        match result {
            Ok(key) => {
                self.settle(upload_id, attempt, ReportStatus::Ready, None, Some(key))
                    .await?
            }
            Err(e) if attempt >= MAX_ATTEMPTS => {
                tracing::error!(attempt, error = ?e, "error report given up");
                self.settle(upload_id, attempt, ReportStatus::Failed, None, None)
                    .await?;
            }
            Err(e) => {
                tracing::warn!(attempt, error = ?e, "error report failed, will retry");
                let due = after(Utc::now(), backoff(attempt));
                self.settle(upload_id, attempt, ReportStatus::Pending, Some(due), None)
                    .await?;
            }
        }
        Ok(())
    }

    /// Merges and stores the report. Idempotent: a builder whose lease ran out and the one
    /// that took over write the same bytes to the same key.
    async fn build(&self, upload_id: i64) -> Result<String, ApiError> {
        let started = std::time::Instant::now();
        let upload = Upload::find_by_id(upload_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("upload {upload_id} is gone")))?;
        let key = error_report_key(&upload.object_key);
        let rows = store(
            &self.db,
            self.storage.as_ref(),
            &upload,
            Layout::ErrorReport,
            &key,
        )
        .await?;
        tracing::info!(
            rows,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "error report built"
        );
        Ok(key)
    }

    /// Records how the attempt `attempt` ended, unless another builder has claimed the report
    /// since (its own outcome counts then).
    async fn settle(
        &self,
        upload_id: i64,
        attempt: i32,
        status: ReportStatus,
        due: Option<DateTime<Utc>>,
        key: Option<String>,
    ) -> Result<(), DbErr> {
        const SQL: &str = "UPDATE uploads SET report_status = $3, report_due_at = $4, \
                             error_report_key = COALESCE($5, error_report_key) \
                           WHERE id = $1 AND report_attempts = $2 AND report_status = 'PENDING'";
        self.db
            .execute(crate::db::stmt(
                self.db.get_database_backend(),
                SQL,
                [
                    upload_id.into(),
                    attempt.into(),
                    sea_orm::ActiveEnum::to_value(&status).into(),
                    due.into(),
                    key.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Builds until `shutdown`, pausing while nothing is due. A report in hand is finished
    /// first (it is short); the lease covers a process killed meanwhile.
    pub async fn run(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let pause = match self.try_build_next().await {
                Ok(Built::Done) => continue,
                Ok(Built::Empty) => Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %e, "error reports unavailable");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {},
                () = nudge().notified() => {},
                () = shutdown.cancelled() => break,
            }
        }
    }
}

/// `now + d`, saturating (a lease far in the future is still a valid timestamp).
fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let d = TimeDelta::from_std(d)
        .unwrap_or(TimeDelta::hours(12))
        .min(TimeDelta::hours(12));
    now.checked_add_signed(d).unwrap_or(now)
}

/// 5 s, 10 s, 20 s, … up to 15 min between attempts.
fn backoff(attempt: i32) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(10);
    Duration::from_secs(5u64.saturating_mul(1 << exp)).min(Duration::from_secs(900))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(3), Duration::from_secs(20));
        assert_eq!(backoff(40), Duration::from_secs(900));
    }
}
