//! Object storage behind one trait: S3 in production, the data dir on the embedded default.
//! Both hand clients the same S3 POST-policy upload and the same multipart part PUTs, so a
//! frontend cannot tell them apart.

pub mod download_url;
pub mod local;
mod local_parts;
pub mod part_url;
pub mod policy;
pub mod s3;

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

pub use local::LocalStore;
pub use s3::S3Store;

/// A browser-style upload: POST a multipart form of `fields` plus `file` to `url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresignedPost {
    pub url: String,
    pub fields: BTreeMap<String, String>,
    pub expires_at: DateTime<Utc>,
}

/// A signed link that lets anyone holding it do one thing (GET an object, PUT a part) until
/// `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// A streaming reader of an object's bytes.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object key {0:?} is not allowed")]
    InvalidKey(String),
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("S3: {0}")]
    S3(String),
    #[error("credentials: {0}")]
    Credentials(String),
    /// The multipart upload was completed or aborted (S3 `NoSuchUpload`).
    #[error("multipart upload {0} not found")]
    NoSuchUpload(String),
}

/// One part of a multipart upload as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPart {
    pub part_number: u32,
    pub size: u64,
    /// As the store answers it: the quoted hex MD5 of the part.
    pub etag: String,
}

/// S3's bound on the parts of one multipart upload (and on part numbers).
pub const MAX_PARTS: u32 = 10_000;

#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// A signed POST policy allowing exactly one upload to `key`, between 1 and `max_bytes`
    /// bytes, until `expires_at`.
    async fn presign_post(
        &self,
        key: &str,
        max_bytes: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<PresignedPost, StorageError>;

    /// The object's size, or `None` when nothing was uploaded under `key`.
    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError>;

    /// The object's bytes as a stream; memory does not grow with the object.
    async fn get(&self, key: &str) -> Result<ObjectReader, StorageError>;

    /// Stores the file at `path` under `key` (server-written objects: reports, retry files).
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError>;

    /// Copies `from` to `to` inside the store (server side on S3). The pipeline reads a copy
    /// so that a client re-posting to the upload URL cannot change a file being processed.
    async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError>;

    /// A link to GET `key` that works for `expires_in`, without credentials.
    async fn presign_get(
        &self,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Result<SignedUrl, StorageError>;

    /// Whether the store answers (readiness): one cheap call, no object read or written.
    async fn check(&self) -> Result<(), StorageError>;

    /// Starts a multipart upload of `key`; returns the store's id of it.
    async fn create_multipart(&self, key: &str) -> Result<String, StorageError>;

    /// A URL to PUT the raw bytes of part `part_number` of multipart upload `upload_id` of
    /// `key` until `expires_at`. `max_bytes` is the part's size: the local store refuses more
    /// while the bytes stream; S3 cannot pin it in a presigned PUT, so the sizes of the
    /// parts are checked again before the object is assembled.
    async fn presign_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        max_bytes: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<SignedUrl, StorageError>;

    /// The parts the store holds, by part number (at most [`MAX_PARTS`]);
    /// [`StorageError::NoSuchUpload`] once the upload was completed or aborted.
    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<StoredPart>, StorageError>;

    /// Assembles `parts`, in order, into the object `key`: afterwards the object is either
    /// what it was or the whole file. [`StorageError::NoSuchUpload`] when it is gone.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[StoredPart],
    ) -> Result<(), StorageError>;

    /// Drops the multipart upload and every part of it; one already gone is no error.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError>;
}

/// The key an upload's CSV is stored under; dated so storage lifecycle rules can expire it.
pub fn upload_key(public_id: &str, at: DateTime<Utc>) -> String {
    format!("uploads/{}/{public_id}.csv", at.format("%Y/%m/%d"))
}

/// The immutable copy of an upload's file that the pipeline reads.
pub fn snapshot_key(object_key: &str) -> String {
    format!("snapshots/{object_key}")
}

/// Where an upload's error report is stored: next to nothing a client can write to.
pub fn error_report_key(object_key: &str) -> String {
    let stem = object_key.strip_suffix(".csv").unwrap_or(object_key);
    format!("reports/{stem}-errors.csv")
}

/// Keys are ours, but the local store maps them onto the file system: refuse anything that
/// could leave the objects directory.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_keys_are_valid_and_dated() {
        let at = DateTime::parse_from_rfc3339("2026-11-23T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let key = upload_key("0193a1b2-0000-7000-8000-000000000000", at);
        assert_eq!(key, "uploads/2026/11/23/0193a1b2-0000-7000-8000-000000000000.csv");
        validate_key(&key).unwrap();
        assert_eq!(
            error_report_key(&key),
            "reports/uploads/2026/11/23/0193a1b2-0000-7000-8000-000000000000-errors.csv"
        );
        validate_key(&error_report_key(&key)).unwrap();
    }

    #[test]
    fn keys_that_escape_the_directory_are_refused() {
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/abs",
            "a//b",
            "a/./b",
            "a\\b",
            "a b",
            "x/..",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
