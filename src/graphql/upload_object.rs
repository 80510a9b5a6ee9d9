//! The `Upload` object: an upload's fields, and the resolvers that read more of it (progress,
//! results, error report) from `upload_results`.

use async_graphql::{Context, Object};
use entity::upload;

use super::scalars::AwsDateTime;
use super::types::{ErrorReportStatus, FileDownload, Outcome, UploadProgress, UploadStatus};
use super::upload_results::{self, BatchResultConnection};
use crate::error::GqlResult;

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
    /// Carrier actions: the calls made to the carrier for this upload, oldest first, `first`
    /// (default 20, at most 500) after the cursor `after`. Empty for other actions.
    #[graphql(complexity = "super::upload_query::list_complexity(first, child_complexity)")]
    async fn carrier_calls(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<super::carrier_calls::CarrierCallConnection> {
        super::carrier_calls::carrier_calls(ctx, &self.0, first, after).await
    }
    /// Carrier actions: rows still waiting for the carrier (to be sent, sent, or being
    /// verified); they have no result yet. 0 for other actions and once the upload has ended.
    async fn awaiting_carrier(&self) -> i32 {
        crate::uploads::awaiting_carrier(&self.0)
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
