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
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::{MAX_PARTS, ObjectReader, ObjectStore, PresignedPost, SignedUrl, StorageError, StoredPart};

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

    /// GetObject of the whole object, or of the HTTP `range` (`bytes=a-b`).
    async fn get_object(&self, key: &str, range: Option<String>) -> Result<ObjectReader, StorageError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range)
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

/// `NoSuchUpload` (the multipart upload was completed or aborted) apart from other failures;
/// only AbortMultipartUpload models it, so the others are told by the error code.
fn multipart_error<E, R>(upload_id: &str, err: aws_sdk_s3::error::SdkError<E, R>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if err.as_service_error().and_then(|e| e.code()) == Some("NoSuchUpload") {
        StorageError::NoSuchUpload(upload_id.to_owned())
    } else {
        s3_error(err)
    }
}

/// One page of a ListParts answer.
#[derive(Debug, Default, PartialEq, Eq)]
struct PartsPage {
    parts: Vec<StoredPart>,
    /// Where the next page starts; `None` on the last page.
    next_marker: Option<String>,
}

impl From<&aws_sdk_s3::operation::list_parts::ListPartsOutput> for PartsPage {
    fn from(out: &aws_sdk_s3::operation::list_parts::ListPartsOutput) -> Self {
        let parts = out
            .parts()
            .iter()
            .filter_map(|part| {
                Some(StoredPart {
                    part_number: u32::try_from(part.part_number()?).ok()?,
                    size: u64::try_from(part.size()?).ok()?,
                    etag: part.e_tag()?.to_owned(),
                })
            })
            .collect();
        let next_marker = out
            .next_part_number_marker()
            .filter(|_| out.is_truncated() == Some(true))
            .map(str::to_owned);
        Self { parts, next_marker }
    }
}

type SdkError<E> = aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>;

/// The body of an HTTP 200 answer the SDK refused. moto (5.2) names the root element of
/// ListParts and CompleteMultipartUpload answers `…Response` where S3 says `…Result`, and
/// the SDK refuses the whole answer for it; the rest of the document is S3's.
fn refused_ok_body<E>(err: &SdkError<E>) -> Option<&str> {
    let raw = err.raw_response().filter(|r| r.status().as_u16() == 200)?;
    std::str::from_utf8(raw.body().bytes()?).ok()
}

/// Whether `body` is an XML document whose root element is `root`.
fn has_root(body: &str, root: &str) -> bool {
    aws_smithy_xml::decode::Document::new(body)
        .root_element()
        .is_ok_and(|el| el.start_el().matches(root))
}

/// A ListParts answer under moto's root, read with the SDK's own XML decoder; any other
/// failure stays a failure.
fn lenient_parts_page<E>(err: &SdkError<E>) -> Option<PartsPage> {
    lenient_parts_xml(refused_ok_body(err)?)
}

fn lenient_parts_xml(text: &str) -> Option<PartsPage> {
    use aws_smithy_xml::decode::{Document, try_data};
    let mut doc = Document::new(text);
    let mut root = doc.root_element().ok()?;
    if !root.start_el().matches("ListPartsResponse") {
        return None;
    }
    let mut page = PartsPage::default();
    let (mut truncated, mut next) = (false, None);
    while let Some(mut tag) = root.next_tag() {
        match tag.start_el().local() {
            "IsTruncated" => truncated = try_data(&mut tag).ok()? == "true",
            "NextPartNumberMarker" => next = Some(try_data(&mut tag).ok()?.into_owned()),
            "Part" => {
                let (mut number, mut size, mut etag) = (None, None, None);
                while let Some(mut field) = tag.next_tag() {
                    match field.start_el().local() {
                        "PartNumber" => number = try_data(&mut field).ok()?.parse().ok(),
                        "Size" => size = try_data(&mut field).ok()?.parse().ok(),
                        "ETag" => etag = Some(try_data(&mut field).ok()?.into_owned()),
                        _ => {}
                    }
                }
                page.parts.push(StoredPart {
                    part_number: number?,
                    size: size?,
                    etag: etag?,
                });
            }
            _ => {}
        }
    }
    page.next_marker = next.filter(|_| truncated);
    Some(page)
}

fn presigning_config(
    expires_at: DateTime<Utc>,
) -> Result<aws_sdk_s3::presigning::PresigningConfig, StorageError> {
    let ttl = (expires_at - Utc::now())
        .to_std()
        .map_err(|_| StorageError::S3(format!("expiry {expires_at} is in the past")))?;
    aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl).map_err(s3_error)
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
        self.get_object(key, None).await
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<ObjectReader, StorageError> {
        if range.is_empty() {
            return Ok(Box::pin(tokio::io::empty()));
        }
        // HTTP ranges are inclusive.
        let range = format!("bytes={}-{}", range.start, range.end - 1);
        self.get_object(key, Some(range)).await
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

    async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<SignedUrl, StorageError> {
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
        Ok(SignedUrl {
            url: request.uri().to_owned(),
            expires_at,
        })
    }

    async fn create_multipart(&self, key: &str) -> Result<String, StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("text/csv")
            .send()
            .await
            .map_err(s3_error)?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StorageError::S3("CreateMultipartUpload answered no UploadId".into()))
    }

    async fn presign_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        _max_bytes: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<SignedUrl, StorageError> {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .presigned(presigning_config(expires_at)?)
            .await
            .map_err(s3_error)?;
        Ok(SignedUrl {
            url: request.uri().to_owned(),
            expires_at,
        })
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<StoredPart>, StorageError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        // Each page moves the marker on; the part bound ends even a store that never stops.
        while parts.len() < MAX_PARTS as usize {
            let page = match self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .max_parts(1000)
                .set_part_number_marker(marker.take())
                .send()
                .await
            {
                Ok(out) => PartsPage::from(&out),
                Err(err) => match lenient_parts_page(&err) {
                    Some(page) => page,
                    None => return Err(multipart_error(upload_id, err)),
                },
            };
            let last = page.parts.last().map(|p| p.part_number);
            parts.extend(page.parts);
            match page.next_marker {
                // A marker that does not move past the page's parts would loop forever.
                Some(next) if last.is_some_and(|l| next.parse::<u32>().is_ok_and(|n| n >= l)) => {
                    marker = Some(next);
                }
                _ => break,
            }
        }
        parts.truncate(MAX_PARTS as usize);
        Ok(parts)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[StoredPart],
    ) -> Result<(), StorageError> {
        let completed = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.part_number as i32)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        match self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // moto's answer of success; the caller checks the object's size either way.
            Err(err)
                if refused_ok_body(&err)
                    .is_some_and(|body| has_root(body, "CompleteMultipartUploadResponse")) =>
            {
                Ok(())
            }
            Err(err) => Err(multipart_error(upload_id, err)),
        }
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| multipart_error(upload_id, e))
        {
            Ok(_) | Err(StorageError::NoSuchUpload(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PartsPage, StoredPart, lenient_parts_xml, post_url};

    #[test]
    fn a_list_parts_answer_under_motos_root_is_read_and_others_are_not() {
        let body = |root: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<{root} xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId><PartNumberMarker>0</PartNumberMarker>\
                 <NextPartNumberMarker>2</NextPartNumberMarker><MaxParts>2</MaxParts><IsTruncated>true</IsTruncated>\
                 <Part><PartNumber>1</PartNumber><LastModified>2026-12-01T00:00:00.000Z</LastModified>\
                 <ETag>&quot;5d41402abc4b2a76b9719d911017c592&quot;</ETag><Size>5</Size></Part>\
                 <Part><PartNumber>2</PartNumber><ETag>\"7d793037a0760186574b0282f2f435e7\"</ETag><Size>6</Size></Part>\
                 </{root}>"
            )
        };
        assert_eq!(
            lenient_parts_xml(&body("ListPartsResponse")),
            Some(PartsPage {
                parts: vec![
                    StoredPart {
                        part_number: 1,
                        size: 5,
                        etag: "\"5d41402abc4b2a76b9719d911017c592\"".into()
                    },
                    StoredPart {
                        part_number: 2,
                        size: 6,
                        etag: "\"7d793037a0760186574b0282f2f435e7\"".into()
                    },
                ],
                next_marker: Some("2".into()),
            })
        );
        // What the SDK itself refused for another reason stays refused.
        assert_eq!(lenient_parts_xml(&body("ListPartsResult")), None);
        assert_eq!(
            lenient_parts_xml("<ListPartsResponse><Part><Size>1</Size></Part></ListPartsResponse>"),
            None
        );
    }

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
