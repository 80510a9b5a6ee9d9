//! The multipart transfer of `fleetload upload`: prepares a multipart upload (or, with
//! `--resume`, reads back what the store holds and checks it is this file), PUTs the missing
//! parts concurrently, each streamed from the file, and assembles the object.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::listing::plain;
use super::part_plan::{self, Attempt, Part, StoredPart};
use super::transfer_progress::TransferProgress;
use super::{Client, ClientError};

const PREPARE: &str = "mutation($t: String!, $a: String!, $n: Int!, $d: Int!, $w: String, $ws: String, $size: Int!, $ps: Int) { \
    prepareMultipartUpload(tenantId: $t, assignActionId: $a, rowCount: $n, deviceType: $d, workflowId: $w, \
    targetWorkspaceId: $ws, fileSize: $size, partSize: $ps) { uploadId partSize parts { partNumber url expiresAt } } }";
const UPLOAD_PARTS: &str = "query($t: String!, $id: String!) { uploadParts(tenantId: $t, uploadId: $id) { \
    uploadId partSize completed { partNumber size etag } missing { partNumber url expiresAt } } }";
const COMPLETE: &str =
    "mutation($t: String!, $id: String!) { completeMultipartUpload(tenantId: $t, uploadId: $id) }";

/// A part URL this close to its expiry (seconds, by the server's clock) is asked for again
/// before it is used: the store checks the expiry when a PUT starts.
const URL_MARGIN_SECS: i64 = 10;
/// Asked for again early at most this often: with URLs that live shorter than the margin,
/// or a clock far from the server's, each part would otherwise ask (a 403 still does).
const EARLY_REFRESH_PAUSE: Duration = Duration::from_secs(30);

/// One attempt at a part may take this long plus a second per 16 KiB: a stalled connection
/// is given up and retried rather than waited on forever.
const ATTEMPT_BASE_TIMEOUT: Duration = Duration::from_secs(60);
const SLOWEST_BYTES_PER_SEC: u64 = 16 * 1024;

/// A multipart upload and what is left to send of the local file.
pub struct Transfer {
    pub upload_id: String,
    tenant: String,
    file: PathBuf,
    file_size: u64,
    to_send: Vec<Part>,
    /// Parts the store holds, counting those this run has sent.
    stored_parts: AtomicUsize,
    total_parts: usize,
    urls: PartUrls,
}

impl Transfer {
    /// Prepares a new multipart upload of `file` (`vars`: the prepare arguments but the size).
    pub async fn prepare(
        client: &Client,
        mut vars: Value,
        file: &Path,
        file_size: u64,
        part_size: Option<u64>,
    ) -> Result<Self, ClientError> {
        vars["size"] = json!(file_size);
        vars["ps"] = json!(part_size);
        let tenant = plain(&vars["t"]);
        let data = client.gql(PREPARE, vars).await?;
        let payload = &data["prepareMultipartUpload"];
        let upload_id = plain(&payload["uploadId"]);
        let part_size = part_size_of(payload)?;
        let to_send = part_plan::parts(file_size, part_size);
        let urls = PartUrls::new(&tenant, &upload_id, &payload["parts"]);
        for part in &to_send {
            if !urls.knows(part.number).await {
                return Err(ClientError::new(
                    "BAD_RESPONSE",
                    format!("no URL for part {} in prepareMultipartUpload", part.number),
                ));
            }
        }
        Ok(Self {
            total_parts: to_send.len(),
            upload_id,
            tenant,
            file: file.to_owned(),
            file_size,
            to_send,
            stored_parts: AtomicUsize::new(0),
            urls,
        })
    }

    /// Reads back an interrupted upload and checks, part by part, that the store holds the
    /// bytes of `file` (size, then MD5 = ETag); a different file is refused before anything
    /// is sent or assembled.
    pub async fn resume(
        client: &Client,
        tenant: &str,
        upload_id: &str,
        file: &Path,
        file_size: u64,
    ) -> Result<Self, ClientError> {
        let data = client
            .gql(UPLOAD_PARTS, json!({ "t": tenant, "id": upload_id }))
            .await?;
        let state = &data["uploadParts"];
        let part_size = part_size_of(state)?;
        let stored: Vec<StoredPart> = state["completed"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| StoredPart {
                number: number_of(p),
                size: p["size"].as_u64().unwrap_or(0),
                etag: plain(&p["etag"]),
            })
            .collect();
        let missing: Vec<u32> = state["missing"]
            .as_array()
            .into_iter()
            .flatten()
            .map(number_of)
            .collect();
        let mismatch = |why: String| {
            ClientError::new(
                "RESUME_FILE_MISMATCH",
                format!(
                    "{} is not the file of upload {upload_id}: {why}; nothing was sent or assembled",
                    file.display()
                ),
            )
        };
        let plan = part_plan::plan_resume(file_size, part_size, &stored, &missing).map_err(mismatch)?;
        for (part, etag) in &plan.to_verify {
            let local = md5_of(file, *part).await?;
            if local != *etag {
                return Err(mismatch(format!(
                    "part {} (bytes {}..{}) is stored with MD5 {etag}, the file has {local} there",
                    part.number,
                    part.offset,
                    part.offset + part.len
                )));
            }
        }
        Ok(Self {
            upload_id: upload_id.to_owned(),
            tenant: tenant.to_owned(),
            file: file.to_owned(),
            file_size,
            total_parts: stored.len() + missing.len(),
            stored_parts: AtomicUsize::new(stored.len()),
            to_send: plan.to_send,
            urls: PartUrls::new(tenant, upload_id, &state["missing"]),
        })
    }

    /// Bytes the store held before this run.
    pub fn stored_bytes(&self) -> u64 {
        self.file_size - self.to_send.iter().map(|p| p.len).sum::<u64>()
    }

    /// `"k of n parts stored"`, for the messages that tell how to continue.
    pub fn stored_summary(&self) -> String {
        format!(
            "{} of {} part(s) stored",
            self.stored_parts.load(Ordering::Relaxed),
            self.total_parts
        )
    }

    pub fn parts_to_send(&self) -> usize {
        self.to_send.len()
    }

    pub fn total_parts(&self) -> usize {
        self.total_parts
    }

    /// Sends the missing parts, `parallel` at a time; the first part that fails for good
    /// stops the transfer (the parts stored so far stay for `--resume`).
    pub async fn send(
        &self,
        client: &Client,
        parallel: usize,
        progress: &TransferProgress,
    ) -> Result<(), ClientError> {
        futures::stream::iter(self.to_send.iter().copied())
            .map(|part| self.send_part(client, part, progress))
            .buffer_unordered(parallel.max(1))
            .try_for_each(|()| async {
                self.stored_parts.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .await
    }

    /// Assembles the object from its parts (a repeat is harmless); answers the upload's status,
    /// still PREPARED.
    pub async fn complete(&self, client: &Client) -> Result<String, ClientError> {
        let data = client
            .gql(COMPLETE, json!({ "t": self.tenant, "id": self.upload_id }))
            .await
            .map_err(|mut err| {
                // Every part asked for was sent: the store kept one of another size than the
                // upload's plan, which the first checks cannot see when it is the last part.
                if err.code == "UPLOAD_PARTS_MISSING" {
                    err.message.push_str(&format!(
                        "; they were sent, but not with the size the upload was prepared for: \
                         is {} the file of this upload?",
                        self.file.display()
                    ));
                }
                err
            })?;
        Ok(plain(&data["completeMultipartUpload"]))
    }

    async fn send_part(
        &self,
        client: &Client,
        part: Part,
        progress: &TransferProgress,
    ) -> Result<(), ClientError> {
        let mut fresh_url = false;
        let mut attempt = 1;
        loop {
            let Some(url) = self.urls.get(client, part.number, fresh_url).await? else {
                // An earlier attempt was stored after all (its answer was lost on the way).
                return Ok(());
            };
            let (how, why) = match put_part(client, &url, &self.file, part, progress).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            let Some(pause) = part_plan::retry_after(attempt, how) else {
                return Err(ClientError::new(
                    "PART_UPLOAD_FAILED",
                    format!(
                        "part {}: {why} (attempt {attempt} of {})",
                        part.number,
                        part_plan::ATTEMPTS
                    ),
                ));
            };
            tokio::time::sleep(pause).await;
            fresh_url = how == Attempt::Forbidden;
            attempt += 1;
        }
    }
}

/// PUTs one part, streamed from the file, and checks the store's ETag is the MD5 of what was
/// sent. The bytes of a failed attempt are taken back from the progress.
async fn put_part(
    client: &Client,
    url: &str,
    path: &Path,
    part: Part,
    progress: &TransferProgress,
) -> Result<(), (Attempt, String)> {
    let local = |e: std::io::Error| (Attempt::Refused, format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    file.seek(SeekFrom::Start(part.offset)).await.map_err(local)?;
    let sent = Arc::new(AtomicU64::new(0));
    let hasher = Arc::new(std::sync::Mutex::new(Md5::new()));
    let body = {
        let (sent, hasher, progress) = (sent.clone(), hasher.clone(), progress.clone());
        tokio_util::io::ReaderStream::with_capacity(file.take(part.len), 64 * 1024).inspect_ok(move |chunk| {
            hasher.lock().unwrap_or_else(|e| e.into_inner()).update(chunk);
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            progress.add(chunk.len() as u64);
        })
    };
    let request = client
        .http
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, part.len)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let limit = ATTEMPT_BASE_TIMEOUT + Duration::from_secs(part.len / SLOWEST_BYTES_PER_SEC);
    let outcome = match tokio::time::timeout(limit, request).await {
        Err(_) => Err((
            Attempt::Transient,
            format!("no answer within {} s", limit.as_secs()),
        )),
        Ok(Err(e)) => Err((Attempt::Transient, format!("PUT: {e}"))),
        Ok(Ok(response)) if response.status().is_success() => {
            let etag = response
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(part_plan::normalize_etag);
            let md5 = hex::encode(
                hasher
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .finalize(),
            );
            match etag {
                Some(etag) if etag == md5 => Ok(()),
                Some(etag) => Err((
                    Attempt::Corrupted,
                    format!("the store's ETag {etag} is not the MD5 of the bytes sent ({md5})"),
                )),
                None => Err((Attempt::Refused, "the store answered without an ETag".to_owned())),
            }
        }
        Ok(Ok(response)) => {
            let status = response.status();
            let how = part_plan::classify_status(status.as_u16());
            let text = response.text().await.unwrap_or_default();
            Err((how, super::upload::store_refusal(status, &text)))
        }
    };
    if outcome.is_err() {
        progress.take_back(sent.load(Ordering::Relaxed));
    }
    outcome
}

/// MD5 of one part of the file, read in a blocking thread (the file may be large).
async fn md5_of(path: &Path, part: Part) -> Result<String, ClientError> {
    let owned = path.to_owned();
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(&owned)?;
        file.seek(SeekFrom::Start(part.offset))?;
        let mut reader = file.take(part.len);
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| ClientError::new("INTERNAL_CLIENT_ERROR", e.to_string()))?;
    digest.map_err(|e| ClientError::new("BAD_USER_INPUT", format!("{}: {e}", path.display())))
}

fn part_size_of(payload: &Value) -> Result<u64, ClientError> {
    payload["partSize"]
        .as_u64()
        .filter(|&size| size > 0)
        .ok_or_else(|| ClientError::new("BAD_RESPONSE", "the server answered no partSize"))
}

fn number_of(part: &Value) -> u32 {
    part["partNumber"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// A part's presigned URL and when it expires.
type Urls = HashMap<u32, (String, Option<DateTime<Utc>>)>;

/// The presigned URL of each part still to send, asked for again (`uploadParts`) when it
/// is about to expire or the store refused it.
struct PartUrls {
    tenant: String,
    upload_id: String,
    state: tokio::sync::Mutex<UrlState>,
}

struct UrlState {
    urls: Urls,
    refreshed: Option<Instant>,
}

impl PartUrls {
    fn new(tenant: &str, upload_id: &str, parts: &Value) -> Self {
        Self {
            tenant: tenant.to_owned(),
            upload_id: upload_id.to_owned(),
            state: tokio::sync::Mutex::new(UrlState {
                urls: urls_of(parts),
                refreshed: None,
            }),
        }
    }

    async fn knows(&self, number: u32) -> bool {
        self.state.lock().await.urls.contains_key(&number)
    }

    /// The URL to PUT part `number` to (a new one when `fresh`), or `None` when the store
    /// holds the part already.
    async fn get(&self, client: &Client, number: u32, fresh: bool) -> Result<Option<String>, ClientError> {
        // Held while asking the server, so that parts waiting for a URL ask once between them.
        let mut state = self.state.lock().await;
        // Every part to send starts with a URL; only a refresh drops one, for a stored part.
        let Some((url, expires)) = state.urls.get(&number) else {
            return Ok(None);
        };
        let soon = Utc::now() + chrono::TimeDelta::seconds(URL_MARGIN_SECS);
        let expiring = expires.is_some_and(|at| at <= soon);
        let asked_lately = state
            .refreshed
            .is_some_and(|at| at.elapsed() < EARLY_REFRESH_PAUSE);
        if !fresh && (!expiring || asked_lately) {
            return Ok(Some(url.clone()));
        }
        let data = client
            .gql(UPLOAD_PARTS, json!({ "t": self.tenant, "id": self.upload_id }))
            .await?;
        state.urls = urls_of(&data["uploadParts"]["missing"]);
        state.refreshed = Some(Instant::now());
        Ok(state.urls.get(&number).map(|(url, _)| url.clone()))
    }
}

fn urls_of(parts: &Value) -> Urls {
    parts
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let expires = p["expiresAt"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            (number_of(p), (plain(&p["url"]), expires))
        })
        .collect()
}
