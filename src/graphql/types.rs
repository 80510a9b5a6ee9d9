//! GraphQL object types of uploads, mirroring SPEC §1's shapes.

use async_graphql::{Enum, Object, SimpleObject};
use entity::upload;

use super::scalars::{AwsDateTime, AwsJson};
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
}
