//! Durable jobs. `finalizeBatchUpload` writes its dispatch job into the `jobs` table in the
//! same transaction that flips the upload to QUEUED (an outbox), so no crash can lose it.

use chrono::Utc;
use entity::job::{self, JobState};
use entity::prelude::Job;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Set};
use serde::{Deserialize, Serialize};

/// Queue that dispatch jobs (one per finalized upload) go to.
pub const DISPATCH_QUEUE: &str = "dispatch";

/// What a job asks for; serialised as its payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobPayload {
    /// Read the upload's file and fan its rows out as chunk jobs.
    DispatchUpload { upload_id: i64 },
}

impl JobPayload {
    /// At most one job exists per key, whatever the number of callers.
    pub fn dedupe_key(&self) -> String {
        match self {
            Self::DispatchUpload { upload_id } => format!("dispatch:{upload_id}"),
        }
    }
}

/// Adds `payload` to `queue` unless a job with the same dedupe key exists; returns whether
/// it was added. Call it inside the transaction whose effects the job belongs to.
pub async fn enqueue(db: &impl ConnectionTrait, queue: &str, payload: &JobPayload) -> Result<bool, DbErr> {
    let now = Utc::now();
    let body = serde_json::to_string(payload).map_err(|e| DbErr::Custom(e.to_string()))?;
    let inserted = Job::insert(job::ActiveModel {
        queue: Set(queue.to_owned()),
        payload: Set(body),
        dedupe_key: Set(Some(payload.dedupe_key())),
        state: Set(JobState::Available),
        attempts: Set(0),
        max_attempts: Set(10),
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
