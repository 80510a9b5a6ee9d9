//! The embedded object store's POST endpoint (`<server>/objects`): it must accept exactly
//! what S3 would accept for the signed policy of `prepareBatchUpload`, answer refusals the
//! way S3 does (status + XML `<Error><Code>`), and keep nothing of a refused upload.
//! Storage does not depend on the database, so these run on SQLite only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use crate::helpers::*;

const CSV: &[u8] = b"imei\r\n490154203237518\r\n";

/// The signed fields of a `fileUpload`, parsed from their AWSJSON string.
fn fields_of(file_upload: &Value) -> Map<String, Value> {
    let text = file_upload["fields"].as_str().expect("fields is a JSON string");
    serde_json::from_str(text).expect("fields is a JSON object")
}

fn key_of(file_upload: &Value) -> String {
    fields_of(file_upload)["key"].as_str().unwrap().to_owned()
}

/// A browser's form: `fields` in order, then `file` if given.
fn form(fields: &Map<String, Value>, file: Option<Part>) -> Form {
    let mut form = Form::new();
    for (name, value) in fields {
        form = form.text(name.clone(), value.as_str().unwrap().to_owned());
    }
    match file {
        Some(part) => form.part("file", part),
        None => form,
    }
}

fn csv_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes)
        .file_name("devices.csv")
        .mime_str("text/csv")
        .unwrap()
}

async fn post(app: &TestApp, file_upload: &Value, form: Form) -> reqwest::Response {
    app.http
        .post(file_upload["url"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Status and S3 error code (`<Error><Code>…</Code>`) of a refusal.
pub async fn s3_error(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let code = body
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_owned())
        .unwrap_or_else(|| panic!("no <Code> in the HTTP {status} body {body:?}"));
    (status, code)
}

async fn stored(app: &TestApp, key: &str) -> Option<Vec<u8>> {
    app.state.storage.head(key).await.unwrap()?;
    let mut reader = app.state.storage.get(key).await.unwrap();
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.unwrap();
    Some(bytes)
}

/// Every regular file under `dir`, recursively (the partial uploads a refusal must not keep).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn objects_dir(app: &TestApp) -> PathBuf {
    app.settings.objects_dir()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_upload_is_stored_with_exactly_the_uploaded_bytes() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;
    let key = key_of(&file_upload);

    let resp = app.post_file(&file_upload, CSV.to_vec()).await;

    assert_eq!(resp.status(), 204);
    assert_eq!(stored(&app, &key).await.as_deref(), Some(CSV));
    assert_eq!(
        app.state.storage.head(&key).await.unwrap(),
        Some(CSV.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_policy_is_refused_and_nothing_is_stored() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.upload_url_ttl_secs = 1).await;
    let (_, file_upload) = app.prepare_demo().await;
    let key = key_of(&file_upload);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let resp = app.post_file(&file_upload, CSV.to_vec()).await;

    assert_eq!(s3_error(resp).await, (403, "AccessDenied".into()));
    assert_eq!(stored(&app, &key).await, None);
    assert_eq!(files_under(&objects_dir(&app)), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_other_than_the_signed_one_is_refused_and_nothing_is_stored_under_either() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;
    let signed_key = key_of(&file_upload);
    let other_key = "uploads/2020/01/01/someone-elses-upload.csv";
    let mut fields = fields_of(&file_upload);
    fields.insert("key".into(), other_key.into());

    let resp = post(&app, &file_upload, form(&fields, Some(csv_part(CSV.to_vec())))).await;

    assert_eq!(s3_error(resp).await, (403, "AccessDenied".into()));
    assert_eq!(stored(&app, &signed_key).await, None);
    assert_eq!(stored(&app, other_key).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_signature_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;
    let mut fields = fields_of(&file_upload);
    let signature = fields["x-amz-signature"].as_str().unwrap();
    // Flip the last hex digit: still well-formed, no longer the signature.
    let last = if signature.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &signature[..signature.len() - 1]);
    fields.insert("x-amz-signature".into(), tampered.into());

    let resp = post(&app, &file_upload, form(&fields, Some(csv_part(CSV.to_vec())))).await;

    assert_eq!(s3_error(resp).await, (403, "SignatureDoesNotMatch".into()));
    assert_eq!(stored(&app, &key_of(&file_upload)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_policy_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;
    let mut fields = fields_of(&file_upload);
    // What an attacker would do: raise the size limit in the policy and keep the signature.
    let mut document: Value =
        serde_json::from_slice(&STANDARD.decode(fields["policy"].as_str().unwrap()).unwrap()).unwrap();
    for condition in document["conditions"].as_array_mut().unwrap() {
        if condition[0] == "content-length-range" {
            condition[2] = Value::from(u64::MAX);
        }
    }
    fields.insert("policy".into(), STANDARD.encode(document.to_string()).into());

    let resp = post(&app, &file_upload, form(&fields, Some(csv_part(CSV.to_vec())))).await;

    assert_eq!(s3_error(resp).await, (403, "SignatureDoesNotMatch".into()));
    assert_eq!(stored(&app, &key_of(&file_upload)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_field_the_policy_does_not_mention_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;
    let mut fields = fields_of(&file_upload);
    fields.insert("acl".into(), "public-read".into());

    let resp = post(&app, &file_upload, form(&fields, Some(csv_part(CSV.to_vec())))).await;

    assert_eq!(s3_error(resp).await, (403, "AccessDenied".into()));
    assert_eq!(stored(&app, &key_of(&file_upload)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_far_over_the_limit_is_refused_while_streaming_and_nothing_is_kept() {
    const LIMIT: u64 = 64 * 1024;
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 320; // 20 MiB, generated as it is sent.
    let app = spawn_app_with(Backend::Sqlite, |s| s.max_upload_bytes = LIMIT).await;
    let (_, file_upload) = app.prepare_demo().await;
    let key = key_of(&file_upload);
    let chunk = Bytes::from(vec![b'7'; CHUNK]);
    let body = futures::stream::iter((0..CHUNKS).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let part = Part::stream(reqwest::Body::wrap_stream(body))
        .file_name("devices.csv")
        .mime_str("text/csv")
        .unwrap();

    let sent = app
        .http
        .post(file_upload["url"].as_str().unwrap())
        .multipart(form(&fields_of(&file_upload), Some(part)))
        .send()
        .await;

    // S3 answers 400 EntityTooLarge; a server may also close the connection before the body
    // is through. Either way, the upload must not have succeeded.
    if let Ok(resp) = sent {
        assert_eq!(s3_error(resp).await, (400, "EntityTooLarge".into()));
    }
    assert_eq!(stored(&app, &key).await, None);
    assert_eq!(files_under(&objects_dir(&app)), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_exactly_at_the_limit_is_accepted() {
    const LIMIT: u64 = 64 * 1024;
    let app = spawn_app_with(Backend::Sqlite, |s| s.max_upload_bytes = LIMIT).await;
    let (_, file_upload) = app.prepare_demo().await;
    let mut bytes = b"imei\n".to_vec();
    bytes.resize(LIMIT as usize, b'\n');

    let resp = app.post_file(&file_upload, bytes.clone()).await;

    assert_eq!(resp.status(), 204);
    assert_eq!(stored(&app, &key_of(&file_upload)).await, Some(bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_over_the_limit_is_refused() {
    const LIMIT: u64 = 64 * 1024;
    let app = spawn_app_with(Backend::Sqlite, |s| s.max_upload_bytes = LIMIT).await;
    let (_, file_upload) = app.prepare_demo().await;

    let resp = app.post_file(&file_upload, vec![b'\n'; LIMIT as usize + 1]).await;

    assert_eq!(s3_error(resp).await, (400, "EntityTooLarge".into()));
    assert_eq!(stored(&app, &key_of(&file_upload)).await, None);
    assert_eq!(files_under(&objects_dir(&app)), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_refused_because_the_policy_needs_at_least_one_byte() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;

    let resp = app.post_file(&file_upload, Vec::new()).await;

    assert_eq!(s3_error(resp).await, (400, "EntityTooSmall".into()));
    assert_eq!(stored(&app, &key_of(&file_upload)).await, None);
    assert_eq!(files_under(&objects_dir(&app)), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_a_file_is_refused_as_a_bad_request() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;

    let resp = post(&app, &file_upload, form(&fields_of(&file_upload), None)).await;

    assert_eq!(s3_error(resp).await, (400, "InvalidArgument".into()));
    assert_eq!(stored(&app, &key_of(&file_upload)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_s3_style_xml_error_documents() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;
    let mut fields = fields_of(&file_upload);
    fields.insert("x-amz-signature".into(), "00".repeat(32).into());

    let resp = post(&app, &file_upload, form(&fields, Some(csv_part(CSV.to_vec())))).await;

    assert_eq!(resp.status(), 403);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("application/xml"), "{content_type}");
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("<?xml"), "{body}");
    assert!(
        body.contains("<Error><Code>SignatureDoesNotMatch</Code><Message>"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("</Error>"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_upload_leaves_nothing_behind() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, file_upload) = app.prepare_demo().await;
    let key = key_of(&file_upload);
    let incoming = objects_dir(&app).join(".incoming");
    // Send data until the server has started writing the upload, then break the connection
    // the way a closed browser tab does: the body ends with an error, never completing.
    let chunk = Bytes::from(vec![b'7'; 64 * 1024]);
    let watched = incoming.clone();
    let body = futures::stream::unfold(0usize, move |sent| {
        let (chunk, watched) = (chunk.clone(), watched.clone());
        async move {
            if sent == usize::MAX {
                return None;
            }
            if !files_under(&watched).is_empty() || sent >= 1000 {
                return Some((Err(std::io::Error::other("client went away")), usize::MAX));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((Ok(chunk), sent + 1))
        }
    });
    let part = Part::stream(reqwest::Body::wrap_stream(body)).file_name("devices.csv");

    let sent = app
        .http
        .post(file_upload["url"].as_str().unwrap())
        .multipart(form(&fields_of(&file_upload), Some(part)))
        .send()
        .await;

    assert!(sent.is_err(), "the aborted request got an answer: {sent:?}");
    // The server notices the broken connection on its own schedule: wait for it, boundedly.
    for _ in 0..100 {
        if files_under(&incoming).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(files_under(&incoming), Vec::<PathBuf>::new());
    assert_eq!(stored(&app, &key).await, None);
}
