//! Objects in an S3 bucket (or any S3-compatible endpoint); clients upload straight to S3
//! with a SigV4 POST policy, so file bytes never pass through the API.

use std::path::Path;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use super::policy::{self, PolicyRequest, Signer};
use super::{ObjectReader, ObjectStore, PresignedPost, SignedDownload, StorageError};

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    post_url: String,
    region: String,
    credentials: SharedCredentialsProvider,
    /// Signing a policy needs the raw credentials; fetching them may be a network call
    /// (instance roles), so they are kept until shortly before they expire.
    cached: Mutex<Option<Credentials>>,
}

impl S3Store {
    /// `endpoint` overrides AWS's (e.g. a local S3-compatible server); `path_style`
    /// addresses the bucket as `endpoint/bucket`.
    pub async fn new(
        sdk: &aws_config::SdkConfig,
        bucket: String,
        endpoint: Option<&url::Url>,
        path_style: bool,
    ) -> Result<Self, StorageError> {
        let mut builder = aws_sdk_s3::config::Builder::from(sdk).force_path_style(path_style);
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        let client = aws_sdk_s3::Client::from_conf(builder.build());
        let region = sdk
            .region()
            .map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
        let credentials = sdk
            .credentials_provider()
            .ok_or_else(|| StorageError::Credentials("no AWS credentials configured".into()))?;
        let post_url = post_url(endpoint, &bucket, &region, path_style);
        Ok(Self {
            client,
            bucket,
            post_url,
            region,
            credentials,
            cached: Mutex::new(None),
        })
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn credentials(&self) -> Result<Credentials, StorageError> {
        let mut cached = self.cached.lock().await;
        let fresh = cached.as_ref().is_some_and(|c| {
            c.expiry()
                .is_none_or(|exp| exp > std::time::SystemTime::now() + Duration::from_secs(300))
        });
        if !fresh {
            let creds = self
                .credentials
                .provide_credentials()
                .await
                .map_err(|e| StorageError::Credentials(e.to_string()))?;
            *cached = Some(creds);
        }
        cached
            .clone()
            .ok_or_else(|| StorageError::Credentials("no credentials".into()))
    }
}

fn post_url(endpoint: Option<&url::Url>, bucket: &str, region: &str, path_style: bool) -> String {
    match (endpoint, path_style) {
        (Some(ep), true) => format!("{}/{bucket}", ep.as_str().trim_end_matches('/')),
        (Some(ep), false) => {
            let host = ep.host_str().unwrap_or_default();
            let port = ep.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{bucket}.{host}{port}/", ep.scheme())
        }
        (None, true) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        (None, false) => format!("https://{bucket}.s3.{region}.amazonaws.com/"),
    }
}

fn s3_error(err: impl std::error::Error) -> StorageError {
    StorageError::S3(aws_sdk_s3::error::DisplayErrorContext(err).to_string())
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    async fn presign_post(
        &self,
        key: &str,
        max_bytes: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<PresignedPost, StorageError> {
        let creds = self.credentials().await?;
        let signer = Signer {
            access_key_id: creds.access_key_id(),
            secret_access_key: creds.secret_access_key(),
            session_token: creds.session_token(),
            region: &self.region,
        };
        let request = PolicyRequest {
            bucket: &self.bucket,
            key,
            min_bytes: 1,
            max_bytes,
            now: Utc::now(),
            expires_at,
        };
        Ok(PresignedPost {
            url: self.post_url.clone(),
            fields: policy::sign(&signer, &request),
            expires_at,
        })
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(s3_error(err)),
        }
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Box::pin(out.body.into_async_read())),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(err) => Err(s3_error(err)),
        }
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<ObjectReader, StorageError> {
        if range.is_empty() {
            return Ok(Box::pin(tokio::io::empty()));
        }
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            // HTTP ranges are inclusive.
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
        {
            Ok(out) => Ok(Box::pin(out.body.into_async_read())),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(err) => Err(s3_error(err)),
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let body = ByteStream::from_path(path).await.map_err(s3_error)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let source = format!("{}/{from}", self.bucket);
        match self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(source)
            .key(to)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                Err(StorageError::NotFound(from.to_owned()))
            }
            Err(err) => Err(s3_error(err)),
        }
    }

    async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<SignedDownload, StorageError> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in).map_err(s3_error)?;
        let name = key.rsplit('/').next().unwrap_or("download");
        let expires_at = Utc::now()
            + chrono::Duration::from_std(expires_in).map_err(|e| StorageError::S3(e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            // Browsers save the report under its own name instead of showing it.
            .response_content_disposition(format!("attachment; filename=\"{name}\""))
            .presigned(config)
            .await
            .map_err(s3_error)?;
        Ok(SignedDownload {
            url: request.uri().to_owned(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::post_url;

    #[test]
    fn post_urls_follow_the_addressing_style() {
        let ep = url::Url::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(
            post_url(Some(&ep), "b", "us-east-1", true),
            "http://127.0.0.1:5000/b"
        );
        assert_eq!(
            post_url(Some(&ep), "b", "us-east-1", false),
            "http://b.127.0.0.1:5000/"
        );
        assert_eq!(
            post_url(None, "b", "eu-west-1", false),
            "https://b.s3.eu-west-1.amazonaws.com/"
        );
    }
}
