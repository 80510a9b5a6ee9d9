//! One bulk upload: what was asked at prepare, where its file is, and how far processing got.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::action::ActionKind;

/// Lifecycle of an upload (SPEC §6): `PREPARED → QUEUED → PROCESSING → terminal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(24))")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UploadStatus {
    #[sea_orm(string_value = "PREPARED")]
    Prepared,
    #[sea_orm(string_value = "QUEUED")]
    Queued,
    #[sea_orm(string_value = "PROCESSING")]
    Processing,
    #[sea_orm(string_value = "COMPLETED")]
    Completed,
    #[sea_orm(string_value = "COMPLETED_WITH_ERRORS")]
    CompletedWithErrors,
    #[sea_orm(string_value = "FAILED")]
    Failed,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
}

impl UploadStatus {
    /// A terminal upload never changes status again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::CompletedWithErrors | Self::Failed | Self::Cancelled
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "uploads")]
pub struct Model {
    /// Internal key: child tables (results, jobs) reference this compact integer.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The id clients see (`uploadId`): a UUIDv7, unguessable and time-ordered.
    #[sea_orm(unique)]
    pub public_id: String,
    /// The `tenantId` the upload was prepared under; visibility follows this tenant's tree.
    pub tenant_id: String,
    /// The workspace devices are registered into (`targetWorkspaceId`, default `tenant_id`).
    pub target_tenant_id: String,
    /// `sub` of the user who prepared it.
    pub created_by: String,
    pub device_type: i16,
    pub action_id: String,
    pub action_kind: ActionKind,
    /// REGISTER's target service type, copied so workers need not join.
    pub action_service_type: Option<i32>,
    /// CARRIER_STATUS: the target line status and the carrier account, copied at prepare.
    pub action_carrier_status: Option<crate::carrier_status::CarrierStatus>,
    pub carrier_account_id: Option<String>,
    /// The root tenant the carrier account belongs to (the action's).
    pub carrier_root_tenant_id: Option<String>,
    /// Rows sent to the carrier that have no result yet (to be sent, sent, being verified).
    pub carrier_pending: i32,
    pub workflow_id: Option<String>,
    /// The workflow's service type, copied for ASSIGN_WORKFLOW's per-row check.
    pub workflow_service_type: Option<i32>,
    pub brand_id: Option<i32>,
    pub provision_type: Option<String>,
    pub sim_control_name: Option<String>,
    pub sim_control_id: Option<String>,
    /// `billingDetail` of finalize, as JSON text.
    pub billing_detail: Option<String>,
    /// The client's own row count from prepare; shown until the file is read.
    pub declared_row_count: i32,
    /// Object-store key of the CSV.
    pub object_key: String,
    pub status: UploadStatus,
    /// Data rows in the file, known once the dispatcher has read it.
    pub total_rows: Option<i32>,
    pub processed_rows: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub failure_reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub queued_at: Option<DateTimeUtc>,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
    /// Object-store key of the error report, once generated (it never changes afterwards:
    /// only terminal uploads get one).
    pub error_report_key: Option<String>,
    /// Rows per chunk job, recorded by the first dispatch so every later one cuts the same
    /// chunks (chunk numbers are the workers' idempotency key).
    pub chunk_size: Option<i32>,
    /// The error report's state: null while none is due (not finished, or nothing failed),
    /// then `PENDING` (queued with the terminal state), `READY` or `FAILED` (given up).
    pub report_status: Option<ReportStatus>,
    /// When the background builder may (next) take the report: due while pending, pushed
    /// ahead as the lease of a builder at work and as the backoff after a failed attempt.
    pub report_due_at: Option<DateTimeUtc>,
    /// Builder attempts so far.
    pub report_attempts: i32,
}

/// Where an upload's error report stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReportStatus {
    #[sea_orm(string_value = "PENDING")]
    Pending,
    #[sea_orm(string_value = "READY")]
    Ready,
    #[sea_orm(string_value = "FAILED")]
    Failed,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
