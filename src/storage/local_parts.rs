//! Multipart uploads on the local store, as S3 does them: a signed PUT per part answered
//! with the part's MD5 as `ETag`, parts listed from disk, and assembly that streams the parts
//! into a temporary file renamed into place, so the object is either as it was or whole.
//!
//! Layout: `.multipart/<upload id>/key` names the object; each upload of a part is
//! `.multipart/<upload id>/part-<number>.<version>.<md5 hex>`, the newest version counting.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, BodyDataStream};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use md5::{Digest, Md5};
use secrecy::ExposeSecret;
use tokio::io::AsyncWriteExt;

use super::local::{LocalStore, S3Error};
use super::part_url::{self, PartGrant};
use super::{MAX_PARTS, SignedUrl, StorageError, StoredPart, validate_key};

const KEY_FILE: &str = "key";
/// How much of a refused part is read (and thrown away) so the client sees the error
/// instead of a reset connection; the deadline bounds the time.
const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Upload ids are ours (hex UUIDs); anything else could leave the directory.
fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn part_prefix(part_number: u32) -> String {
    format!("part-{part_number:05}.")
}

/// One upload of a part. Versions order the uploads of one part number (the clock in
/// nanoseconds when it was stored; the MD5 breaks a tie), so every request agrees on which
/// is the newest without any lock.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PartFile {
    number: u32,
    version: u64,
    md5: String,
}

impl PartFile {
    fn name(&self) -> String {
        format!("{}{:020}.{}", part_prefix(self.number), self.version, self.md5)
    }

    fn parse(name: &str) -> Option<Self> {
        let (number, rest) = name.strip_prefix("part-")?.split_once('.')?;
        let (version, md5) = rest.split_once('.')?;
        Some(Self {
            number: number.parse().ok()?,
            version: version.parse().ok()?,
            md5: md5.to_owned(),
        })
    }
}

/// Every part file in the upload's directory with its size; `NoSuchUpload` when the
/// directory went away before or during the listing (a complete or abort moved it: it never
/// comes back, so its absence afterwards tells a listing cut short).
async fn part_files(dir: &Path, upload_id: &str) -> Result<Vec<(PartFile, u64)>, StorageError> {
    let gone = || StorageError::NoSuchUpload(upload_id.to_owned());
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let mut files = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let Some(part) = entry.file_name().to_str().and_then(PartFile::parse) else {
            continue;
        };
        match entry.metadata().await {
            Ok(meta) => files.push((part, meta.len())),
            // Replaced by a newer upload meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !tokio::fs::try_exists(dir.join(KEY_FILE)).await? {
        return Err(gone());
    }
    Ok(files)
}

impl LocalStore {
    fn multipart_dir(&self, upload_id: &str) -> Result<PathBuf, StorageError> {
        if valid_upload_id(upload_id) {
            Ok(self.root.join(".multipart").join(upload_id))
        } else {
            Err(StorageError::NoSuchUpload(upload_id.to_owned()))
        }
    }

    fn temp_path(&self) -> PathBuf {
        self.root.join(".incoming").join(uuid::Uuid::new_v4().to_string())
    }

    /// The upload's directory, if the upload exists and is one of `key`.
    async fn open_upload(&self, key: &str, upload_id: &str) -> Result<PathBuf, StorageError> {
        let dir = self.multipart_dir(upload_id)?;
        match tokio::fs::read_to_string(dir.join(KEY_FILE)).await {
            Ok(stored) if stored == key => Ok(dir),
            Ok(_) => Err(StorageError::NoSuchUpload(upload_id.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NoSuchUpload(upload_id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn create_multipart_upload(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        // Built aside and renamed into place: an upload directory always names its key.
        let temp = self.temp_path();
        tokio::fs::create_dir_all(&temp).await?;
        tokio::fs::write(temp.join(KEY_FILE), key).await?;
        let dir = self.multipart_dir(&id)?;
        if let Some(parent) = dir.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&temp, &dir).await?;
        Ok(id)
    }

    pub(super) fn sign_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        max_bytes: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<SignedUrl, StorageError> {
        validate_key(key)?;
        self.multipart_dir(upload_id)?;
        // Whole seconds in the URL; the reported expiry is the one the URL really has.
        let expires = expires_at.timestamp();
        let grant = PartGrant {
            key,
            upload_id,
            part_number,
            max_bytes,
            expires,
        };
        let signature = part_url::sign(self.secret.expose_secret(), &grant);
        Ok(SignedUrl {
            url: format!(
                "{}/{key}?uploadId={upload_id}&partNumber={part_number}&maxBytes={max_bytes}&expires={expires}&signature={signature}",
                self.post_url
            ),
            expires_at: DateTime::from_timestamp(expires, 0).unwrap_or(expires_at),
        })
    }

    pub(super) async fn list_multipart_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<StoredPart>, StorageError> {
        let dir = self.open_upload(key, upload_id).await?;
        let mut newest: std::collections::BTreeMap<u32, (PartFile, u64)> = Default::default();
        for (part, size) in part_files(&dir, upload_id).await? {
            if newest.get(&part.number).is_none_or(|(kept, _)| part > *kept) {
                newest.insert(part.number, (part, size));
            }
        }
        Ok(newest
            .into_values()
            .map(|(part, size)| StoredPart {
                part_number: part.number,
                size,
                etag: format!("\"{}\"", part.md5),
            })
            .take(MAX_PARTS as usize)
            .collect())
    }

    pub(super) async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[StoredPart],
    ) -> Result<(), StorageError> {
        let dir = self.open_upload(key, upload_id).await?;
        let target = self.path_of(key)?;
        let temp = self.temp_path();
        let files = part_files(&dir, upload_id).await?;
        let assembled = async {
            let mut out = tokio::fs::File::create(&temp).await?;
            for part in parts {
                let md5 = part.etag.trim_matches('"');
                // The newest upload of the part with the listed content.
                let Some((file, _)) = files
                    .iter()
                    .filter(|(f, _)| f.number == part.part_number && f.md5 == md5)
                    .max()
                else {
                    return Err(StorageError::NotFound(format!(
                        "part {} ({}) of {upload_id}",
                        part.part_number, part.etag
                    )));
                };
                let mut file = match tokio::fs::File::open(dir.join(file.name())).await {
                    Ok(file) => file,
                    // A concurrent complete or abort took the whole upload away.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
                        return Err(StorageError::NoSuchUpload(upload_id.to_owned()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StorageError::NotFound(format!(
                            "part {} ({}) of {upload_id}",
                            part.part_number, part.etag
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
                tokio::io::copy(&mut file, &mut out).await?;
            }
            out.sync_all().await?;
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::rename(&temp, &target).await?;
            Ok::<(), StorageError>(())
        }
        .await;
        if assembled.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        assembled?;
        self.remove_upload_dir(&dir).await
    }

    pub(super) async fn abort_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        match self.open_upload(key, upload_id).await {
            Ok(dir) => self.remove_upload_dir(&dir).await,
            Err(StorageError::NoSuchUpload(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moved out of `.multipart` first, so the upload is gone at once for every other
    /// request (a part PUT then fails to rename into it), then deleted.
    async fn remove_upload_dir(&self, dir: &std::path::Path) -> Result<(), StorageError> {
        let trash = self.temp_path();
        match tokio::fs::rename(dir, &trash).await {
            Ok(()) => Ok(tokio::fs::remove_dir_all(&trash).await?),
            // A concurrent complete or abort got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams one part to a temporary file, at most `grant.max_bytes` of it, then renames
    /// it into the upload; returns its ETag. Nothing is kept of a refused or cut-off part.
    async fn receive_part(
        &self,
        grant: &PartGrant<'_>,
        declared: Option<u64>,
        body: &mut BodyDataStream,
    ) -> Result<String, S3Error> {
        if declared.is_some_and(|len| len > grant.max_bytes) {
            return Err(S3Error::too_large());
        }
        let dir = match self.open_upload(grant.key, grant.upload_id).await {
            Ok(dir) => dir,
            Err(StorageError::NoSuchUpload(_)) => return Err(S3Error::no_such_upload()),
            Err(e) => return Err(S3Error::storage(e)),
        };
        let temp = self.temp_path();
        let outcome = async {
            let mut file = tokio::fs::File::create(&temp).await.map_err(S3Error::internal)?;
            let mut md5 = Md5::new();
            let mut size: u64 = 0;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|_| S3Error::incomplete_body())?;
                size += chunk.len() as u64;
                if size > grant.max_bytes {
                    return Err(S3Error::too_large());
                }
                md5.update(&chunk);
                file.write_all(&chunk).await.map_err(S3Error::internal)?;
            }
            if declared.is_some_and(|len| len != size) {
                return Err(S3Error::incomplete_body());
            }
            file.sync_all().await.map_err(S3Error::internal)?;
            let ours = PartFile {
                number: grant.part_number,
                version: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                md5: hex::encode(md5.finalize()),
            };
            match tokio::fs::rename(&temp, dir.join(ours.name())).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(S3Error::no_such_upload()),
                Err(e) => return Err(S3Error::internal(e)),
            }
            // Older uploads of the part are of no use any more; newer ones (a concurrent
            // upload) stay, so the newest always survives.
            if let Ok(files) = part_files(&dir, grant.upload_id).await {
                for (older, _) in files.iter().filter(|(f, _)| f.number == ours.number && *f < ours) {
                    let _ = tokio::fs::remove_file(dir.join(older.name())).await;
                }
            }
            let md5 = ours.md5;
            Ok::<String, S3Error>(format!("\"{md5}\""))
        }
        .await;
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        outcome
    }
}

/// The query string of a signed part URL.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PartQuery {
    upload_id: String,
    part_number: u32,
    max_bytes: u64,
    expires: i64,
    signature: String,
}

/// `PUT /objects/{key}?uploadId=…&partNumber=…`: the signature and expiry first, then the
/// bytes, streamed; answers the part's `ETag` as S3 does.
pub(super) async fn put_part(
    State(store): State<Arc<LocalStore>>,
    UrlPath(key): UrlPath<String>,
    query: Result<Query<PartQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = body.into_data_stream();
    let outcome = match query {
        Err(_) => Err(S3Error::access_denied(
            "Query-string authentication requires the uploadId, partNumber, maxBytes, expires and signature parameters",
        )),
        Ok(Query(q)) => {
            let grant = PartGrant {
                key: &key,
                upload_id: &q.upload_id,
                part_number: q.part_number,
                max_bytes: q.max_bytes,
                expires: q.expires,
            };
            match part_url::verify(store.secret.expose_secret(), &grant, &q.signature, Utc::now()) {
                Err(err) => Err(S3Error::from_link(err)),
                Ok(()) => {
                    let declared = headers
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    store.receive_part(&grant, declared, &mut body).await
                }
            }
        }
    };
    match outcome {
        Ok(etag) => (StatusCode::OK, [(header::ETAG, etag)]).into_response(),
        Err(err) => {
            tokio::spawn(drain(body));
            err.into_response()
        }
    }
}

/// Reads and discards what is left of a refused part, bounded in bytes and time, so that
/// the client reads the S3 error rather than a reset connection.
async fn drain(mut body: BodyDataStream) {
    let rest = async {
        let mut read: u64 = 0;
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_DEADLINE, rest).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectStore;

    fn store(root: &std::path::Path) -> LocalStore {
        let url = url::Url::parse("http://127.0.0.1:1/").unwrap();
        LocalStore::new(root.to_path_buf(), &url, secrecy::SecretString::from("s")).unwrap()
    }

    /// Writes a part file as the PUT route leaves it; returns its listing.
    fn write_part(store: &LocalStore, upload_id: &str, n: u32, version: u64, bytes: &[u8]) -> StoredPart {
        let file = PartFile {
            number: n,
            version,
            md5: hex::encode(Md5::digest(bytes)),
        };
        let dir = store.multipart_dir(upload_id).unwrap();
        std::fs::write(dir.join(file.name()), bytes).unwrap();
        StoredPart {
            part_number: n,
            size: bytes.len() as u64,
            etag: format!("\"{}\"", file.md5),
        }
    }

    #[tokio::test]
    async fn a_failed_assembly_leaves_the_old_object_and_a_good_one_the_whole_file() {
        let root = tempfile::tempdir().unwrap();
        let store = store(root.path());
        let key = "uploads/x.csv";
        std::fs::create_dir_all(root.path().join("uploads")).unwrap();
        std::fs::write(root.path().join(key), b"old").unwrap();
        let id = store.create_multipart(key).await.unwrap();
        let one = write_part(&store, &id, 1, 1, b"hello ");
        let two = write_part(&store, &id, 2, 1, b"world");
        assert_eq!(
            store.list_parts(key, &id).await.unwrap(),
            [one.clone(), two.clone()]
        );

        // Part 2 as the client last saw it is gone (replaced meanwhile): nothing changes.
        let stale = StoredPart {
            etag: "\"00000000000000000000000000000000\"".into(),
            ..two.clone()
        };
        let failed = store.complete_multipart(key, &id, &[one.clone(), stale]).await;
        assert!(matches!(failed, Err(StorageError::NotFound(_))), "{failed:?}");
        assert_eq!(std::fs::read(root.path().join(key)).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(root.path().join(".incoming")).unwrap().count(),
            0
        );

        store.complete_multipart(key, &id, &[one, two]).await.unwrap();
        assert_eq!(std::fs::read(root.path().join(key)).unwrap(), b"hello world");
        assert!(matches!(
            store.list_parts(key, &id).await,
            Err(StorageError::NoSuchUpload(_))
        ));
        assert_eq!(
            std::fs::read_dir(root.path().join(".incoming")).unwrap().count(),
            0
        );
        // Aborting what is gone is no error.
        store.abort_multipart(key, &id).await.unwrap();
    }

    #[tokio::test]
    async fn an_upload_is_listed_only_under_its_own_key_and_the_newest_version_of_a_part_wins() {
        let root = tempfile::tempdir().unwrap();
        let store = store(root.path());
        let id = store.create_multipart("uploads/a.csv").await.unwrap();
        assert!(matches!(
            store.list_parts("uploads/b.csv", &id).await,
            Err(StorageError::NoSuchUpload(_))
        ));
        assert!(matches!(
            store.list_parts("uploads/a.csv", "../../etc").await,
            Err(StorageError::NoSuchUpload(_))
        ));
        // A replacement cut off before it removed the older file: both are on disk, and
        // the version decides, not the order of the directory.
        let again = write_part(&store, &id, 1, 7, b"second");
        write_part(&store, &id, 1, 3, b"first try");
        assert_eq!(store.list_parts("uploads/a.csv", &id).await.unwrap(), [again]);
    }

    #[test]
    fn part_file_names_round_trip_and_order_by_number_then_version() {
        let file = PartFile {
            number: 12,
            version: 1_764_600_000_123_456_789,
            md5: "5d41402abc4b2a76b9719d911017c592".into(),
        };
        assert_eq!(
            file.name(),
            "part-00012.01764600000123456789.5d41402abc4b2a76b9719d911017c592"
        );
        assert_eq!(PartFile::parse(&file.name()), Some(file.clone()));
        assert_eq!(PartFile::parse("key"), None);
        assert_eq!(
            PartFile::parse("part-00012.5d41402abc4b2a76b9719d911017c592"),
            None
        );
        let newer = PartFile {
            version: file.version + 1,
            md5: "0".into(),
            ..file.clone()
        };
        assert!(newer > file);
    }

    #[test]
    fn only_our_hex_upload_ids_name_a_directory() {
        assert!(valid_upload_id(&uuid::Uuid::new_v4().simple().to_string()));
        for bad in ["", "..", "../../etc", "0123456789abcdef0123456789abcdeg", "0123"] {
            assert!(!valid_upload_id(bad), "{bad:?}");
        }
    }
}
