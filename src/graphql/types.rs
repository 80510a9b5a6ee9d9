//! GraphQL object types of uploads, mirroring SPEC §1's shapes.

use async_graphql::{Context, Enum, Object, SimpleObject};
use entity::upload;

use super::scalars::{AwsDateTime, AwsJson};
use super::upload_results::{self, BatchResultConnection};
use crate::error::GqlResult;
use crate::storage::PresignedPost;

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::upload::UploadStatus")]
pub enum UploadStatus {
    Prepared,
    Queued,
    Processing,
    Completed,
    CompletedWithErrors,
    Failed,
    Cancelled,
}

/// How to upload the CSV: POST a multipart form of `fields` (then `file`) to `url`.
#[derive(SimpleObject)]
pub struct FileUpload {
    pub url: String,
    /// The form fields as a JSON string (`JSON.parse(fields)`), AppSync-style.
    pub fields: AwsJson,
    pub expires_at: AwsDateTime,
}

impl From<PresignedPost> for FileUpload {
    fn from(post: PresignedPost) -> Self {
        let fields = serde_json::to_value(&post.fields).unwrap_or_default();
        Self {
            url: post.url,
            fields: AwsJson(fields),
            expires_at: post.expires_at.into(),
        }
    }
}

#[derive(SimpleObject)]
pub struct PrepareBatchUploadPayload {
    pub upload_id: String,
    pub file_upload: FileUpload,
}

/// A bulk upload of devices and how far its processing got.
pub struct Upload(pub upload::Model);

#[Object]
impl Upload {
    async fn id(&self) -> &str {
        &self.0.public_id
    }
    async fn tenant_id(&self) -> &str {
        &self.0.tenant_id
    }
    /// The workspace the devices go to (`targetWorkspaceId` at prepare).
    async fn target_workspace_id(&self) -> &str {
        &self.0.target_tenant_id
    }
    async fn status(&self) -> UploadStatus {
        self.0.status.into()
    }
    async fn device_type(&self) -> i32 {
        self.0.device_type.into()
    }
    async fn assign_action_id(&self) -> &str {
        &self.0.action_id
    }
    async fn workflow_id(&self) -> Option<&str> {
        self.0.workflow_id.as_deref()
    }
    async fn brand_id(&self) -> Option<i32> {
        self.0.brand_id
    }
    async fn provision_type(&self) -> Option<&str> {
        self.0.provision_type.as_deref()
    }
    /// The row count the client declared at prepare.
    async fn declared_row_count(&self) -> i32 {
        self.0.declared_row_count
    }
    /// Data rows in the file; null until the file has been read.
    async fn total_rows(&self) -> Option<i32> {
        self.0.total_rows
    }
    async fn processed_rows(&self) -> i32 {
        self.0.processed_rows
    }
    async fn succeeded(&self) -> i32 {
        self.0.succeeded
    }
    async fn failed(&self) -> i32 {
        self.0.failed
    }
    /// Why the whole upload failed (status FAILED), e.g. an unreadable file.
    async fn failure_reason(&self) -> Option<&str> {
        self.0.failure_reason.as_deref()
    }
    /// `sub` of the user who prepared it.
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }
    async fn created_at(&self) -> AwsDateTime {
        self.0.created_at.into()
    }
    async fn queued_at(&self) -> Option<AwsDateTime> {
        self.0.queued_at.map(Into::into)
    }
    async fn started_at(&self) -> Option<AwsDateTime> {
        self.0.started_at.map(Into::into)
    }
    async fn finished_at(&self) -> Option<AwsDateTime> {
        self.0.finished_at.map(Into::into)
    }
    /// Counters, rate, ETA and the latest failures, as `uploadProgress` emits them.
    async fn progress(&self, ctx: &Context<'_>) -> GqlResult<UploadProgress> {
        upload_results::progress(ctx, &self.0).await
    }
    /// The result rows by row number, `first` (default 20, at most 500) after the cursor
    /// `after`. Filters are exact; an `errorCode` matches FAIL rows only.
    #[graphql(complexity = "super::upload_query::list_complexity(first, child_complexity)")]
    async fn results(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        outcome: Option<Outcome>,
        error_code: Option<String>,
    ) -> GqlResult<BatchResultConnection> {
        upload_results::results(ctx, &self.0, first, after, outcome, error_code).await
    }
    /// A CSV of the failed rows: the file's header and each failed row as written, plus
    /// `rowNumber,errorCode,message`. Null until the upload has finished and its report is
    /// built (in the background, moments after the end: see `errorReportStatus`), and null
    /// when no row failed. The link expires (`expiresAt`); ask again for a fresh one.
    async fn error_report(&self, ctx: &Context<'_>) -> GqlResult<Option<FileDownload>> {
        upload_results::error_report(ctx, &self.0).await
    }
    /// Where the error report stands: null while none is due (not finished, or no row
    /// failed), PENDING while it is being built, then READY (`errorReport` gives the link) or
    /// FAILED (it could not be built; the results are still all there).
    async fn error_report_status(&self) -> Option<ErrorReportStatus> {
        self.0.report_status.map(Into::into)
    }
}

/// Where an upload's error report stands.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::upload::ReportStatus")]
pub enum ErrorReportStatus {
    /// Queued or being built; `errorReport` is null until it is ready.
    Pending,
    Ready,
    /// Could not be built after several attempts.
    Failed,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::batch_result::Outcome")]
pub enum Outcome {
    Success,
    Fail,
}

/// The one result of one data row.
#[derive(SimpleObject, Clone, Debug)]
pub struct BatchResult {
    /// 1-based number of the data row in the file (the header is row 0).
    pub row_number: i32,
    /// The device key as written in the row (trimmed), even when invalid.
    pub device_uid: String,
    pub outcome: Outcome,
    /// Set when `outcome` is FAIL: the first error of the row.
    pub error_code: Option<String>,
    pub message: Option<String>,
}

impl From<entity::batch_result::Model> for BatchResult {
    fn from(r: entity::batch_result::Model) -> Self {
        Self {
            row_number: r.row_number,
            device_uid: r.device_uid,
            outcome: r.outcome.into(),
            error_code: r.error_code,
            message: r.message,
        }
    }
}

/// How far an upload got, as `uploadProgress` emits it.
#[derive(SimpleObject, Clone, Debug)]
pub struct UploadProgress {
    pub upload_id: String,
    pub status: UploadStatus,
    /// Data rows in the file; null until the file has been read.
    pub total_rows: Option<i32>,
    pub processed_rows: i32,
    pub succeeded: i32,
    pub failed: i32,
    /// 0–100.
    pub percentage: f64,
    /// Rows per second since processing started; null before the first row.
    pub rows_per_second: Option<f64>,
    /// Seconds left at the measured rate; null while unknown, 0 once finished.
    pub eta_seconds: Option<f64>,
    /// The latest few failed rows.
    pub recent_errors: Vec<BatchResult>,
}

impl UploadProgress {
    /// The progress of `upload` as of `now`, with the failures given.
    pub fn of(
        upload: &upload::Model,
        recent_errors: Vec<BatchResult>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let figures = crate::progress::figures(
            upload.status,
            upload.total_rows,
            upload.processed_rows,
            upload.started_at,
            upload.finished_at,
            now,
        );
        Self {
            upload_id: upload.public_id.clone(),
            status: upload.status.into(),
            total_rows: upload.total_rows,
            processed_rows: upload.processed_rows,
            succeeded: upload.succeeded,
            failed: upload.failed,
            percentage: figures.percentage,
            rows_per_second: figures.rows_per_second,
            eta_seconds: figures.eta_seconds,
            recent_errors,
        }
    }
}

/// A signed, expiring download link.
#[derive(SimpleObject, Clone, Debug)]
pub struct FileDownload {
    pub url: String,
    pub expires_at: AwsDateTime,
}
