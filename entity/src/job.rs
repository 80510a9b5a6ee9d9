//! A durable job: the outbox `finalizeBatchUpload` writes in its own transaction, and the
//! embedded queue the dispatcher and workers claim from with a lease.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for `run_at`; claimable.
    #[sea_orm(string_value = "available")]
    Available,
    /// Claimed by `locked_by` until `locked_until`; the rescuer re-offers it after that.
    #[sea_orm(string_value = "running")]
    Running,
    /// Handed to an external queue (SQS); kept for audit, never claimed again.
    #[sea_orm(string_value = "sent")]
    Sent,
    #[sea_orm(string_value = "done")]
    Done,
    /// Gave up after `max_attempts`; needs an operator.
    #[sea_orm(string_value = "dead")]
    Dead,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Logical queue name, e.g. `dispatch` or `chunks`.
    pub queue: String,
    /// JSON of the job's kind and arguments.
    pub payload: String,
    /// At most one job per key: the guard that makes enqueueing idempotent.
    #[sea_orm(unique)]
    pub dedupe_key: Option<String>,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTimeUtc,
    pub locked_until: Option<DateTimeUtc>,
    pub locked_by: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The upload the job works for (NULL on jobs queued before it was recorded).
    pub upload_id: Option<i64>,
    /// Fairness rank within a queue, claimed lowest first: a chunk's first row number, 0
    /// for other jobs.
    pub seq: i32,
    /// W3C trace context of the span that queued the job (NULL when traces are not
    /// exported); the worker's span continues it.
    pub traceparent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
