//! The plain GraphQL types of uploads, mirroring SPEC §1's shapes; the `Upload` object and
//! its resolvers are in `upload_object`.

use async_graphql::{Enum, SimpleObject};
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
    /// Carrier actions: rows waiting for the carrier (to be sent, sent, or being verified),
    /// not yet processed; 0 for other actions and once the upload has ended.
    pub awaiting_carrier: i32,
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
            awaiting_carrier: crate::uploads::awaiting_carrier(upload),
        }
    }
}

/// A signed, expiring download link.
#[derive(SimpleObject, Clone, Debug)]
pub struct FileDownload {
    pub url: String,
    pub expires_at: AwsDateTime,
}
