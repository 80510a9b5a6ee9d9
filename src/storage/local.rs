//! Objects on local disk under the data dir, uploaded through the server's own POST endpoint
//! that verifies the same signed policy S3 would (signature, expiry, exact key, size), or in
//! signed multipart parts (`super::local_parts`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

use super::download_url::{self, LinkError};
use super::policy::{self, PolicyError, PolicyRequest, Signer};
use super::{ObjectReader, ObjectStore, PresignedPost, SignedUrl, StorageError, StoredPart, validate_key};

/// The local store poses as one bucket with one access key; the secret lives in the data dir.
const BUCKET: &str = "local";
const ACCESS_KEY_ID: &str = "fleetload-local";
const REGION: &str = "local";
/// Room for the form's other fields around the file.
const FORM_OVERHEAD: u64 = 64 * 1024;
/// How long a refused upload's remaining bytes are read before the connection is dropped.
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub struct LocalStore {
    pub(super) root: PathBuf,
    pub(super) post_url: String,
    pub(super) secret: SecretString,
}

impl LocalStore {
    /// `public_url` is how clients reach this server; uploads go to `<public_url>/objects`.
    pub fn new(root: PathBuf, public_url: &url::Url, secret: SecretString) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join(".incoming"))?;
        std::fs::create_dir_all(root.join(".multipart"))?;
        let post_url = public_url
            .join("objects")
            .map_err(std::io::Error::other)?
            .to_string();
        Ok(Self {
            root,
            post_url,
            secret,
        })
    }

    pub(super) fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// The upload endpoint and the signed download links; `max_upload_bytes` caps the whole
    /// upload request while it streams.
    pub fn router(self: Arc<Self>, max_upload_bytes: u64) -> Router {
        let limit = usize::try_from(max_upload_bytes.saturating_add(FORM_OVERHEAD)).unwrap_or(usize::MAX);
        Router::new()
            .route("/objects", post(post_object))
            .route(
                "/objects/{*key}",
                get(get_object).put(super::local_parts::put_part),
            )
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    async fn receive(&self, form: &mut Multipart) -> Result<(), S3Error> {
        let mut fields = BTreeMap::new();
        while let Some(field) = form.next_field().await.map_err(S3Error::from_multipart)? {
            let name = field.name().unwrap_or_default().to_owned();
            if name != "file" {
                let value = field.text().await.map_err(S3Error::from_multipart)?;
                fields.insert(name, value);
                continue;
            }
            // As S3 does, fields after `file` are ignored: everything is decided here.
            let verified = policy::verify(
                &fields,
                ACCESS_KEY_ID,
                self.secret.expose_secret(),
                BUCKET,
                Utc::now(),
            )
            .map_err(S3Error::from_policy)?;
            return self.store_streaming(&verified, field).await;
        }
        Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "POST requires exactly one file upload per request.",
        ))
    }

    /// Streams the file to a temporary name and renames it into place only once it is whole
    /// and within the policy's size range; a refused upload leaves nothing behind.
    async fn store_streaming(
        &self,
        verified: &policy::VerifiedPolicy,
        mut field: axum::extract::multipart::Field<'_>,
    ) -> Result<(), S3Error> {
        let target = self
            .path_of(&verified.key)
            .map_err(|_| S3Error::access_denied("Invalid key"))?;
        let temp = self.root.join(".incoming").join(uuid::Uuid::new_v4().to_string());
        let outcome = async {
            let mut file = tokio::fs::File::create(&temp).await.map_err(S3Error::internal)?;
            let mut size: u64 = 0;
            while let Some(chunk) = field.chunk().await.map_err(S3Error::from_multipart)? {
                size += chunk.len() as u64;
                if size > verified.max_bytes {
                    return Err(S3Error::too_large());
                }
                file.write_all(&chunk).await.map_err(S3Error::internal)?;
            }
            if size < verified.min_bytes {
                return Err(S3Error::new(
                    StatusCode::BAD_REQUEST,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed size",
                ));
            }
            file.sync_all().await.map_err(S3Error::internal)?;
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(S3Error::internal)?;
            }
            tokio::fs::rename(&temp, &target).await.map_err(S3Error::internal)
        }
        .await;
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        outcome
    }
}

async fn post_object(State(store): State<Arc<LocalStore>>, mut form: Multipart) -> Response {
    match store.receive(&mut form).await {
        // S3's default `success_action_status`.
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => {
            tokio::spawn(drain(form));
            err.into_response()
        }
    }
}

/// Reads and discards what is left of a refused form while its response goes out. A server
/// that closes a connection with unread bytes makes the kernel reset it, and a browser still
/// sending its file then shows a network error instead of the S3 error. The body limit of the
/// route (the largest upload plus the form) and a deadline bound the work.
async fn drain(mut form: Multipart) {
    let rest = async {
        while let Ok(Some(mut field)) = form.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    };
    let _ = tokio::time::timeout(DRAIN_DEADLINE, rest).await;
}

/// The query string of a signed download link.
#[derive(serde::Deserialize)]
struct LinkQuery {
    expires: i64,
    signature: String,
}

/// Serves a signed download link: signature first, then expiry, then the file, streamed.
async fn get_object(
    State(store): State<Arc<LocalStore>>,
    UrlPath(key): UrlPath<String>,
    query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(link)) = query else {
        return S3Error::access_denied(
            "Query-string authentication requires the expires and signature parameters",
        )
        .into_response();
    };
    if let Err(err) = download_url::verify(
        store.secret.expose_secret(),
        &key,
        link.expires,
        &link.signature,
        Utc::now(),
    ) {
        return S3Error::from_link(err).into_response();
    }
    let file = match store.path_of(&key) {
        Ok(path) => tokio::fs::File::open(path).await,
        Err(_) => return S3Error::no_such_key().into_response(),
    };
    match file {
        Ok(file) => {
            let name = key.rsplit('/').next().unwrap_or("download");
            let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => S3Error::no_such_key().into_response(),
        Err(e) => S3Error::internal(e).into_response(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    async fn check(&self) -> Result<(), StorageError> {
        let meta = tokio::fs::metadata(self.root.join(".incoming")).await?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(StorageError::Io(std::io::Error::other(
                "the objects directory is not a directory",
            )))
        }
    }

    async fn presign_post(
        &self,
        key: &str,
        max_bytes: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<PresignedPost, StorageError> {
        validate_key(key)?;
        let signer = Signer {
            access_key_id: ACCESS_KEY_ID,
            secret_access_key: self.secret.expose_secret(),
            session_token: None,
            region: REGION,
        };
        let fields = policy::sign(
            &signer,
            &PolicyRequest {
                bucket: BUCKET,
                key,
                min_bytes: 1,
                max_bytes,
                now: Utc::now(),
                expires_at,
            },
        );
        Ok(PresignedPost {
            url: self.post_url.clone(),
            fields,
            expires_at,
        })
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.path_of(key)?).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
        match tokio::fs::File::open(self.path_of(key)?).await {
            Ok(file) => Ok(Box::pin(tokio::io::BufReader::with_capacity(256 * 1024, file))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound(key.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let target = self.path_of(key)?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let temp = self.root.join(".incoming").join(uuid::Uuid::new_v4().to_string());
        tokio::fs::copy(path, &temp).await?;
        tokio::fs::rename(&temp, &target).await?;
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let source = self.path_of(from)?;
        if tokio::fs::metadata(&source).await.is_err() {
            return Err(StorageError::NotFound(from.to_owned()));
        }
        let target = self.path_of(to)?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        // A hard link costs nothing and keeps the bytes even when an upload later replaces
        // the source (uploads rename a new file into place); copy where links are refused.
        let temp = self.root.join(".incoming").join(uuid::Uuid::new_v4().to_string());
        if tokio::fs::hard_link(&source, &temp).await.is_err() {
            tokio::fs::copy(&source, &temp).await?;
        }
        tokio::fs::rename(&temp, &target).await?;
        Ok(())
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Result<SignedUrl, StorageError> {
        validate_key(key)?;
        let ttl =
            chrono::Duration::from_std(expires_in).map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        // Whole seconds in the link; the reported expiry is the one the link really has.
        let expires = (Utc::now() + ttl).timestamp();
        let expires_at = DateTime::from_timestamp(expires, 0).unwrap_or_else(Utc::now);
        let signature = download_url::sign(self.secret.expose_secret(), key, expires);
        Ok(SignedUrl {
            url: format!("{}/{key}?expires={expires}&signature={signature}", self.post_url),
            expires_at,
        })
    }

    async fn create_multipart(&self, key: &str) -> Result<String, StorageError> {
        self.create_multipart_upload(key).await
    }

    async fn presign_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        max_bytes: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<SignedUrl, StorageError> {
        self.sign_part(key, upload_id, part_number, max_bytes, expires_at)
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<StoredPart>, StorageError> {
        self.list_multipart_parts(key, upload_id).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[StoredPart],
    ) -> Result<(), StorageError> {
        self.complete_multipart_upload(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        self.abort_multipart_upload(key, upload_id).await
    }
}

/// An S3-shaped error response, so clients handle both stores the same way.
#[derive(Debug)]
pub(super) struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn access_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }

    fn no_such_key() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        )
    }

    pub(super) fn from_link(err: LinkError) -> Self {
        match err {
            LinkError::Expired => Self::access_denied("Request has expired"),
            LinkError::BadSignature => Self::new(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            ),
        }
    }

    pub(super) fn no_such_upload() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            "The specified multipart upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or completed.",
        )
    }

    /// The body ended before its `Content-Length` (a dropped connection).
    pub(super) fn incomplete_body() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        )
    }

    pub(super) fn storage(err: StorageError) -> Self {
        match err {
            StorageError::Io(e) => Self::internal(e),
            other => Self::internal(std::io::Error::other(other)),
        }
    }

    pub(super) fn too_large() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size",
        )
    }

    pub(super) fn internal(err: std::io::Error) -> Self {
        tracing::error!(error = %err, "local object store failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    }

    fn from_policy(err: PolicyError) -> Self {
        match err {
            PolicyError::Expired => Self::access_denied("Invalid according to Policy: Policy expired."),
            PolicyError::BadSignature => Self::new(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            ),
            PolicyError::MissingField(_) | PolicyError::Malformed => {
                Self::new(StatusCode::BAD_REQUEST, "InvalidPolicyDocument", err.to_string())
            }
            PolicyError::ConditionFailed(_) | PolicyError::ExtraField(_) => {
                Self::access_denied(format!("Invalid according to Policy: {err}"))
            }
        }
    }

    fn from_multipart(err: axum::extract::multipart::MultipartError) -> Self {
        // The body limit trips while streaming: the only way a form gets this large.
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large()
        } else {
            Self::new(
                StatusCode::BAD_REQUEST,
                "MalformedPOSTRequest",
                "The body of your POST request is not well-formed multipart/form-data.",
            )
        }
    }
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            xml_escape(&self.message)
        );
        (self.status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
