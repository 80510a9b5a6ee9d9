//! The API's one error type, mapped once to GraphQL errors with `extensions.code` (Apollo) and
//! `extensions.errorType` (AppSync). Internal causes are logged here and never sent.

use async_graphql::ErrorExtensions;

/// Everything a resolver can answer with instead of data.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid token is required")]
    Unauthenticated,
    #[error("you are not allowed to do this")]
    Forbidden,
    #[error("the target workspace is not inside the tenant")]
    InvalidTenant,
    #[error("no such action in this tenant")]
    ActionNotFound,
    #[error("no such workflow in this tenant")]
    WorkflowNotFound,
    #[error("no such carrier account in this tenant")]
    CarrierAccountNotFound,
    /// A shared database and no `--carrier-secret-key`: no secret can be sealed.
    #[error(
        "this server has no carrier secret key (FLEETLOAD_CARRIER_SECRET_KEY) to seal client secrets with"
    )]
    CarrierSecretKeyMissing,
    #[error("this action needs a workflowId")]
    WorkflowRequired,
    #[error(
        "the workflow's service type ({workflow}) differs from the action's target service type ({action})"
    )]
    WorkflowServiceTypeMismatch { workflow: i32, action: i32 },
    #[error("deviceType must be 1 (SMARTPHONE) or 2 (TABLET)")]
    InvalidDeviceType,
    #[error("rowCount must be between 1 and {max}")]
    InvalidRowCount { max: u32 },
    #[error("no such upload")]
    UploadNotFound,
    #[error("the file has not been uploaded yet")]
    UploadNotUploaded,
    #[error("an item with this id already exists")]
    AlreadyExists,
    #[error("still in use: {0}")]
    InUse(String),
    #[error("the upload has already finished")]
    UploadAlreadyFinished,
    #[error("the upload has no failed rows to retry")]
    NothingToRetry,
    #[error("the upload has not finished processing yet")]
    UploadNotFinished,
    #[error("a retry of this upload is being prepared; try again in a moment")]
    RetryInProgress,
    #[error("fileSize must be at least 1 byte")]
    InvalidFileSize,
    #[error("fileSize must be at most {max} bytes")]
    FileTooLarge { max: u64 },
    #[error("partSize must be between {min} and {max} bytes")]
    InvalidPartSize { min: u64, max: u64 },
    #[error("the file would have {parts} parts; at most {max} are allowed: choose a larger partSize")]
    TooManyParts { parts: u64, max: u32 },
    #[error("the upload was not prepared as a multipart upload")]
    UploadNotMultipart,
    #[error("the parts of this upload have already been assembled; finalize it")]
    MultipartAlreadyCompleted,
    #[error("the multipart upload expired before it was completed")]
    UploadExpired,
    #[error("parts {} have not been uploaded (or not with their full size)", list(.parts))]
    UploadPartsMissing { parts: Vec<u32> },
    #[error("{0}")]
    BadUserInput(String),
    #[error("first must be at most {max}")]
    FirstTooLarge { max: i32 },
    /// The API's connection pool stayed exhausted: the client may retry later.
    #[error("the server is busy; try again shortly")]
    ServiceBusy,
    /// Anything the client cannot fix; the cause goes to the log only.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The SCREAMING_SNAKE code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::InvalidTenant => "INVALID_TENANT",
            Self::ActionNotFound => "ACTION_NOT_FOUND",
            Self::WorkflowNotFound => "WORKFLOW_NOT_FOUND",
            Self::CarrierAccountNotFound => "CARRIER_ACCOUNT_NOT_FOUND",
            Self::CarrierSecretKeyMissing => "CARRIER_SECRET_KEY_MISSING",
            Self::WorkflowRequired => "WORKFLOW_REQUIRED",
            Self::WorkflowServiceTypeMismatch { .. } => "WORKFLOW_SERVICE_TYPE_MISMATCH",
            Self::InvalidDeviceType => "INVALID_DEVICE_TYPE",
            Self::InvalidRowCount { .. } => "INVALID_ROW_COUNT",
            Self::UploadNotFound => "UPLOAD_NOT_FOUND",
            Self::UploadNotUploaded => "UPLOAD_NOT_UPLOADED",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::InUse(_) => "IN_USE",
            Self::UploadAlreadyFinished => "UPLOAD_ALREADY_FINISHED",
            Self::NothingToRetry => "NOTHING_TO_RETRY",
            Self::UploadNotFinished => "UPLOAD_NOT_FINISHED",
            Self::RetryInProgress => "RETRY_IN_PROGRESS",
            Self::InvalidFileSize => "INVALID_FILE_SIZE",
            Self::FileTooLarge { .. } => "FILE_TOO_LARGE",
            Self::InvalidPartSize { .. } => "INVALID_PART_SIZE",
            Self::TooManyParts { .. } => "TOO_MANY_PARTS",
            Self::UploadNotMultipart => "UPLOAD_NOT_MULTIPART",
            Self::MultipartAlreadyCompleted => "MULTIPART_ALREADY_COMPLETED",
            Self::UploadExpired => "UPLOAD_EXPIRED",
            Self::UploadPartsMissing { .. } => "UPLOAD_PARTS_MISSING",
            Self::BadUserInput(_) => "BAD_USER_INPUT",
            Self::FirstTooLarge { .. } => "FIRST_TOO_LARGE",
            Self::ServiceBusy => "SERVICE_BUSY",
            Self::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }
}

/// `1, 2, 5`: part numbers in a message; a long list is cut (the extensions hold it all).
fn list(numbers: &[u32]) -> String {
    const SHOWN: usize = 20;
    let mut text = numbers
        .iter()
        .take(SHOWN)
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if numbers.len() > SHOWN {
        text.push_str(&format!(" and {} more", numbers.len() - SHOWN));
    }
    text
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        if is_pool_timeout(&err) {
            tracing::warn!("API database pool exhausted");
            Self::ServiceBusy
        } else {
            Self::Internal(err.into())
        }
    }
}

/// A pool that stayed exhausted for its whole acquire timeout, however sea-orm wraps it.
fn is_pool_timeout(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};
    match err {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => matches!(e, sqlx::Error::PoolTimedOut),
        _ => false,
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(err: crate::storage::StorageError) -> Self {
        Self::Internal(err.into())
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        if let Self::Internal(cause) = self {
            tracing::error!(error = ?cause, "request failed");
        }
        let code = self.code();
        async_graphql::Error::new(self.to_string()).extend_with(|_, ext| {
            ext.set("code", code);
            ext.set("errorType", code);
            // Which parts to upload, for clients that resume without parsing the message.
            if let Self::UploadPartsMissing { parts } = self {
                ext.set("missingParts", parts.clone());
            }
        })
    }
}

/// What resolvers return: the API error already turned into a coded GraphQL error.
pub type GqlResult<T> = async_graphql::Result<T>;

/// `.gql()` on a service result: the single place an `ApiError` becomes a GraphQL error.
pub trait IntoGql<T> {
    fn gql(self) -> GqlResult<T>;
}

impl<T> IntoGql<T> for Result<T, ApiError> {
    fn gql(self) -> GqlResult<T> {
        self.map_err(|e| e.extend())
    }
}
