//! Resumable multipart uploads (issue 13) on the embedded store and on S3 (moto): the seed's
//! property (any interruption, then resume from what the store holds, gives the original
//! file and a completed upload), signed part URLs that pin key, part, size and expiry,
//! abort, tenancy, and the sweeper that ends abandoned uploads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use md5::{Digest, Md5};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::AsyncReadExt;

use crate::helpers::*;
use crate::storage_local::s3_error;
use crate::storage_s3::{S3App, spawn_on_s3_with};

const PREPARE: &str = "mutation($t: String!, $rows: Int!, $size: Int!, $part: Int) { prepareMultipartUpload(tenantId: $t, assignActionId: \"register-prepaid\", rowCount: $rows, deviceType: 1, fileSize: $size, partSize: $part) { uploadId partSize parts { partNumber url expiresAt } } }";
const PARTS: &str = "query($t: String!, $id: String!) { uploadParts(tenantId: $t, uploadId: $id) { uploadId partSize completed { partNumber size etag } missing { partNumber url expiresAt } } }";
const COMPLETE: &str =
    "mutation($t: String!, $id: String!) { completeMultipartUpload(tenantId: $t, uploadId: $id) }";
const ABORT: &str =
    "mutation($t: String!, $id: String!) { abortMultipartUpload(tenantId: $t, uploadId: $id) }";

/// The smallest part the embedded-store tests allow (S3's 5 MiB would make every case huge).
const SMALL_PART: u64 = 1024;
/// S3's real minimum, which moto enforces when it assembles.
const S3_PART: u64 = 5 * 1024 * 1024;

fn small_parts(s: &mut fleetload::config::Settings) {
    s.multipart_min_part_bytes = SMALL_PART;
}

async fn prepare_body(app: &TestApp, token: &str, rows: usize, size: u64, part: Option<u64>) -> Value {
    app.gql(
        Some(token),
        PREPARE,
        json!({"t": "demo", "rows": rows, "size": size, "part": part}),
    )
    .await
}

/// Prepares a multipart upload of `file` as alice; returns `prepareMultipartUpload`.
async fn prepare(app: &TestApp, rows: usize, file: &[u8], part: Option<u64>) -> Value {
    let body = prepare_body(app, &app.alice(), rows, file.len() as u64, part).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["prepareMultipartUpload"].clone()
}

async fn call(app: &TestApp, token: &str, query: &str, upload_id: &str) -> Value {
    app.gql(Some(token), query, json!({"t": "demo", "id": upload_id}))
        .await
}

pub(crate) async fn upload_parts(app: &TestApp, upload_id: &str) -> Value {
    let body = call(app, &app.alice(), PARTS, upload_id).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["uploadParts"].clone()
}

async fn put(app: &TestApp, url: &str, bytes: Vec<u8>) -> reqwest::Response {
    app.http.put(url).body(bytes).send().await.unwrap()
}

/// PUTs a part and checks the store's answer: 200 and the part's MD5 as `ETag`.
pub(crate) async fn put_ok(app: &TestApp, url: &str, bytes: &[u8]) {
    let resp = put(app, url, bytes.to_vec()).await;
    let status = resp.status();
    let etag = resp.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status, 200, "part refused: {}", resp.text().await.unwrap());
    assert_eq!(etag, Some(etag_of(bytes)));
}

fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(bytes)))
}

pub(crate) fn url_of(parts: &Value, number: u64) -> String {
    parts
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partNumber"] == number)
        .unwrap_or_else(|| panic!("no URL for part {number} in {parts}"))["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) fn numbers(parts: &Value) -> Vec<u64> {
    parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["partNumber"].as_u64().unwrap())
        .collect()
}

/// The upload's object key and the store's multipart upload id.
async fn store_ids(app: &TestApp, upload_id: &str) -> (String, String) {
    use sea_orm::EntityTrait;
    let upload = app.upload_row(upload_id).await;
    let multipart = entity::prelude::MultipartUpload::find_by_id(upload.id)
        .one(&app.state.db)
        .await
        .unwrap()
        .expect("a multipart row");
    (upload.object_key, multipart.store_upload_id)
}

pub(crate) async fn stored_sha256(app: &TestApp, key: &str) -> String {
    let mut reader = app.state.storage.get(key).await.unwrap();
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.unwrap();
    hex::encode(Sha256::digest(&bytes))
}

/// `rows` new IMEIs from `seed`, each row padded with a `note` of `pad` bytes (S3's parts
/// are 5 MiB; padding keeps their row count, and the pipeline's work, small).
fn csv_file(seed: u64, rows: usize, pad: usize) -> Vec<u8> {
    let note = "x".repeat(pad);
    let mut out = String::from(if pad > 0 { "imei,note\n" } else { "imei\n" });
    for imei in imeis(seed, rows) {
        out.push_str(&imei);
        if pad > 0 {
            out.push(',');
            out.push_str(&note);
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// How the first upload attempt ends.
#[derive(Debug, Clone)]
enum Interruption {
    /// The part at the interruption point is sent whole but shorter (a client bug, a proxy).
    CutShort { keep: f64 },
    /// The connection drops after a share of the part's bytes.
    Dropped { keep: f64 },
    /// The client stops between parts and restarts knowing only the upload id.
    Restart,
}

#[derive(Debug, Clone)]
struct Case {
    rows: usize,
    part_size: u64,
    /// Share of the parts that arrive whole before the interruption.
    stop_at: f64,
    how: Interruption,
}

fn interruption() -> impl Strategy<Value = Interruption> {
    prop_oneof![
        (0.0..1.0f64).prop_map(|keep| Interruption::CutShort { keep }),
        (0.0..1.0f64).prop_map(|keep| Interruption::Dropped { keep }),
        Just(Interruption::Restart),
    ]
}

/// A body that sends `prefix`, claims `full` bytes, and then breaks the connection.
fn dropped_body(prefix: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(prefix),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "link lost",
        )),
    ];
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

/// The seed's property for one case: interrupted at any point, resumed from `uploadParts`
/// alone, the stored file is the original and the upload completes with exact counts.
async fn interrupted_then_resumed(app: &TestApp, case: &Case, seed: u64, pad: usize) {
    let token = app.alice();
    let file = csv_file(seed, case.rows, pad);
    let prepared = prepare(app, case.rows, &file, Some(case.part_size)).await;
    let upload_id = prepared["uploadId"].as_str().unwrap().to_owned();
    assert_eq!(prepared["partSize"], case.part_size);
    let chunks: Vec<&[u8]> = file.chunks(case.part_size as usize).collect();
    let count = chunks.len() as u64;
    assert_eq!(numbers(&prepared["parts"]), (1..=count).collect::<Vec<_>>());

    let whole = ((case.stop_at * count as f64) as u64).min(count - 1);
    for n in 1..=whole {
        put_ok(app, &url_of(&prepared["parts"], n), chunks[n as usize - 1]).await;
    }
    let next = chunks[whole as usize];
    let url = url_of(&prepared["parts"], whole + 1);
    match case.how {
        Interruption::CutShort { keep } => {
            let cut = (next.len() as f64 * keep) as usize;
            // Whatever the store answers, a short part must not count as uploaded.
            let _ = put(app, &url, next[..cut].to_vec()).await;
        }
        Interruption::Dropped { keep } => {
            let cut = (next.len() as f64 * keep) as usize;
            let sent = app
                .http
                .put(&url)
                .header("content-length", next.len())
                .body(dropped_body(next[..cut].to_vec()))
                .send()
                .await;
            assert!(sent.is_err(), "a dropped connection got an answer");
        }
        Interruption::Restart => {}
    }

    // The client restarts with only the upload id.
    let state = upload_parts(app, &upload_id).await;
    assert_eq!(state["uploadId"], upload_id.as_str());
    assert_eq!(state["partSize"], case.part_size);
    let completed: Vec<(u64, u64, String)> = state["completed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partNumber"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["etag"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64, String)> = (1..=whole)
        .map(|n| {
            let bytes = chunks[n as usize - 1];
            (n, bytes.len() as u64, etag_of(bytes))
        })
        .collect();
    assert_eq!(completed, expected);
    let missing: Vec<u64> = (whole + 1..=count).collect();
    assert_eq!(numbers(&state["missing"]), missing);

    let early = call(app, &token, COMPLETE, &upload_id).await;
    assert_eq!(error_code(&early), "UPLOAD_PARTS_MISSING");
    assert_eq!(early["errors"][0]["extensions"]["missingParts"], json!(missing));

    for n in missing {
        put_ok(app, &url_of(&state["missing"], n), chunks[n as usize - 1]).await;
    }
    let completed = call(app, &token, COMPLETE, &upload_id).await;
    assert_eq!(
        completed,
        json!({"data": {"completeMultipartUpload": "PREPARED"}})
    );
    let (key, _) = store_ids(app, &upload_id).await;
    assert_eq!(stored_sha256(app, &key).await, hex::encode(Sha256::digest(&file)));

    let finalized = app.finalize(&token, "demo", &upload_id).await;
    assert_eq!(finalized, json!({"data": {"finalizeBatchUpload": "QUEUED"}}));
    app.drain().await;
    let upload = app.upload_state(&token, "demo", &upload_id).await;
    assert_eq!(upload["status"], "COMPLETED", "{upload}");
    assert_eq!(upload["totalRows"], case.rows);
    assert_eq!(upload["processedRows"], case.rows);
    assert_eq!(upload["succeeded"], case.rows);
    assert_eq!(upload["failed"], 0);
    assert_eq!(app.results(&upload_id).await.len(), case.rows);
}

/// Runs the property over `strategy` on one app: proptest cases run one after the other on
/// a runtime of their own, each with IMEIs no earlier case registered.
fn check_property<H>(
    cases: u32,
    spawn: impl std::future::Future<Output = H>,
    app_of: fn(&H) -> &TestApp,
    strategy: impl Strategy<Value = Case>,
    pad: usize,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let holder = rt.block_on(spawn);
    let seeds = AtomicU64::new(1);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&strategy, |case| {
        let seed = seeds.fetch_add(1, Ordering::Relaxed);
        rt.block_on(interrupted_then_resumed(app_of(&holder), &case, seed, pad));
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    drop(holder);
}

#[test]
fn any_interrupted_upload_resumes_to_the_original_file_on_the_embedded_store() {
    let strategy = (1usize..1500, SMALL_PART..6000, 0.0..1.0f64, interruption()).prop_map(
        |(rows, part_size, stop_at, how)| Case {
            rows,
            part_size,
            stop_at,
            how,
        },
    );
    check_property(
        12,
        spawn_app_with(Backend::Sqlite, small_parts),
        |app| app,
        strategy,
        0,
    );
}

#[test]
fn any_interrupted_upload_resumes_to_the_original_file_on_s3() {
    // Rows of ~1 KiB: 2 or 3 parts of S3's 5 MiB.
    let strategy = (5300usize..11_000, 0.0..1.0f64, interruption()).prop_map(|(rows, stop_at, how)| Case {
        rows,
        part_size: S3_PART,
        stop_at,
        how,
    });
    check_property(
        3,
        spawn_on_s3_with(Backend::Postgres, |_| {}),
        |s3: &S3App| &s3.app,
        strategy,
        1000,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_refuses_each_bad_size_with_its_own_code_and_keeps_the_upload_checks() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.multipart_min_part_bytes = SMALL_PART;
        s.max_upload_bytes = 20 * 1024 * 1024;
    })
    .await;
    let token = app.alice();
    for (size, part, code) in [
        (0, None, "INVALID_FILE_SIZE"),
        (20 * 1024 * 1024 + 1, None, "FILE_TOO_LARGE"),
        (10_000, Some(SMALL_PART - 1), "INVALID_PART_SIZE"),
        (10_001 * SMALL_PART, Some(SMALL_PART), "TOO_MANY_PARTS"),
    ] {
        let body = prepare_body(&app, &token, 1, size, part).await;
        assert_eq!(
            error_code(&body),
            code,
            "fileSize {size}, partSize {part:?}: {body}"
        );
    }
    // The upload-level checks of prepareBatchUpload apply unchanged.
    let body = prepare_body(&app, &token, 0, 100, None).await;
    assert_eq!(error_code(&body), "INVALID_ROW_COUNT");
    let body = prepare_body(&app, &app.bob(), 1, 100, None).await;
    assert_eq!(error_code(&body), "FORBIDDEN");
    // partSize defaults to 8 MiB: a 20 MiB file is 3 parts.
    let body = prepare_body(&app, &token, 1, 20 * 1024 * 1024, None).await;
    let prepared = &body["data"]["prepareMultipartUpload"];
    assert_eq!(prepared["partSize"], 8 * 1024 * 1024, "{body}");
    assert_eq!(numbers(&prepared["parts"]), [1, 2, 3]);
    assert_eq!(app.count_jobs().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_part_url_is_refused_then_reissued_by_upload_parts_and_accepted() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        small_parts(s);
        s.upload_url_ttl_secs = 3;
    })
    .await;
    let file = csv_file(1, 10, 0);
    let prepared = prepare(&app, 10, &file, None).await;
    let upload_id = prepared["uploadId"].as_str().unwrap();
    let old = url_of(&prepared["parts"], 1);
    tokio::time::sleep(Duration::from_secs(4)).await;

    let refused = put(&app, &old, file.clone()).await;
    assert_eq!(refused.status(), 403);
    let xml = refused.text().await.unwrap();
    assert!(
        xml.contains("<Code>AccessDenied</Code><Message>Request has expired</Message>"),
        "{xml}"
    );
    let state = upload_parts(&app, upload_id).await;
    assert_eq!(state["completed"], json!([]));
    let fresh = url_of(&state["missing"], 1);
    assert_ne!(fresh, old);

    put_ok(&app, &fresh, &file).await;
    let state = upload_parts(&app, upload_id).await;
    assert_eq!(numbers(&state["completed"]), [1]);
    assert_eq!(state["missing"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_url_is_good_for_its_own_key_part_and_size_only() {
    let app = spawn_app_with(Backend::Sqlite, small_parts).await;
    let file = csv_file(2, 200, 0);
    let prepared = prepare(&app, 200, &file, Some(SMALL_PART)).await;
    let upload_id = prepared["uploadId"].as_str().unwrap();
    let url = url_of(&prepared["parts"], 1);
    let part = &file[..SMALL_PART as usize];

    let other_part = url.replace("partNumber=1&", "partNumber=2&");
    assert_ne!(other_part, url);
    let (status, code) = s3_error(put(&app, &other_part, part.to_vec()).await).await;
    assert_eq!((status, code.as_str()), (403, "SignatureDoesNotMatch"));

    let (key, _) = store_ids(&app, upload_id).await;
    let other_key = url.replace(&key, "uploads/2020/01/01/someone-else.csv");
    assert_ne!(other_key, url);
    let (status, code) = s3_error(put(&app, &other_key, part.to_vec()).await).await;
    assert_eq!((status, code.as_str()), (403, "SignatureDoesNotMatch"));
    assert!(!app.data_dir.path().join("objects/uploads/2020").exists());

    // One byte over, declared up front or only found while streaming (chunked).
    let mut over = part.to_vec();
    over.push(b'\n');
    let (status, code) = s3_error(put(&app, &url, over.clone()).await).await;
    assert_eq!((status, code.as_str()), (400, "EntityTooLarge"));
    let chunked = reqwest::Body::wrap_stream(futures::stream::iter(
        over.chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    ));
    let resp = app.http.put(&url).body(chunked).send().await.unwrap();
    let (status, code) = s3_error(resp).await;
    assert_eq!((status, code.as_str()), (400, "EntityTooLarge"));

    let state = upload_parts(&app, upload_id).await;
    assert_eq!(state["completed"], json!([]), "nothing of a refused part is kept");
    assert!(
        std::fs::read_dir(app.data_dir.path().join("objects/.incoming"))
            .unwrap()
            .next()
            .is_none(),
        "no temporary file is left"
    );
    put_ok(&app, &url, part).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_uploaded_again_replaces_the_earlier_one_even_when_two_race() {
    let app = spawn_app_with(Backend::Sqlite, small_parts).await;
    let file = csv_file(10, 100, 0);
    let prepared = prepare(&app, 100, &file, Some(SMALL_PART)).await;
    let upload_id = prepared["uploadId"].as_str().unwrap();
    let url = url_of(&prepared["parts"], 1);
    let (key, store_id) = store_ids(&app, upload_id).await;
    let part_files = || {
        std::fs::read_dir(app.data_dir.path().join("objects/.multipart").join(&store_id))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("part-00001.")
            })
            .count()
    };
    let other = vec![b'x'; SMALL_PART as usize];
    put_ok(&app, &url, &other).await;
    let right = &file[..SMALL_PART as usize];
    put_ok(&app, &url, right).await;
    assert_eq!(part_files(), 1, "the older upload of the part is removed");
    assert_eq!(
        upload_parts(&app, upload_id).await["completed"][0]["etag"],
        etag_of(right)
    );

    let (a, b) = tokio::join!(put(&app, &url, other.clone()), put(&app, &url, right.to_vec()));
    assert_eq!(
        (a.status(), b.status()),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK)
    );
    let state = upload_parts(&app, upload_id).await;
    assert_eq!(numbers(&state["completed"]), [1], "one of the two stays: {state}");
    let kept = state["completed"][0]["etag"].as_str().unwrap().to_owned();
    assert!(kept == etag_of(right) || kept == etag_of(&other), "{kept}");
    // What is listed is what gets assembled.
    put_ok(&app, &url_of(&prepared["parts"], 2), &file[SMALL_PART as usize..]).await;
    let body = call(&app, &app.alice(), COMPLETE, upload_id).await;
    assert_eq!(body, json!({"data": {"completeMultipartUpload": "PREPARED"}}));
    let mut object = Vec::new();
    app.state
        .storage
        .get(&key)
        .await
        .unwrap()
        .read_to_end(&mut object)
        .await
        .unwrap();
    assert_eq!(etag_of(&object[..SMALL_PART as usize]), kept);
    assert_eq!(&object[SMALL_PART as usize..], &file[SMALL_PART as usize..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_may_put_parts_cross_origin_and_read_their_etag() {
    let app = spawn_app_with(Backend::Sqlite, small_parts).await;
    let file = csv_file(3, 10, 0);
    let prepared = prepare(&app, 10, &file, None).await;
    let url = url_of(&prepared["parts"], 1);
    let origin = "https://console.example.com";

    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let header = |resp: &reqwest::Response, name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default()
    };
    assert!(header(&preflight, "access-control-allow-methods").contains("put"));
    assert!(!header(&preflight, "access-control-allow-origin").is_empty());

    let resp = app
        .http
        .put(&url)
        .header("origin", origin)
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!header(&resp, "access-control-allow-origin").is_empty());
    assert!(
        header(&resp, "access-control-expose-headers")
            .split(',')
            .any(|h| h.trim() == "etag"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(header(&resp, "etag"), etag_of(&file));
}

/// Two parts up, then abort: the parts are gone from the store, the upload is CANCELLED,
/// finalize answers CANCELLED and queues nothing, and the upload cannot be resumed.
async fn abort_discards_the_parts(app: &TestApp) {
    let token = app.alice();
    let file = csv_file(4, 200, 0);
    let prepared = prepare(app, 200, &file, Some(SMALL_PART)).await;
    let upload_id = prepared["uploadId"].as_str().unwrap();
    for n in 1..=2 {
        put_ok(
            app,
            &url_of(&prepared["parts"], n),
            &file[(n as usize - 1) * 1024..n as usize * 1024],
        )
        .await;
    }
    let (key, store_id) = store_ids(app, upload_id).await;
    assert_eq!(
        app.state.storage.list_parts(&key, &store_id).await.unwrap().len(),
        2
    );

    let aborted = call(app, &token, ABORT, upload_id).await;
    assert_eq!(aborted, json!({"data": {"abortMultipartUpload": "CANCELLED"}}));

    assert!(matches!(
        app.state.storage.list_parts(&key, &store_id).await,
        Err(fleetload::storage::StorageError::NoSuchUpload(_))
    ));
    assert_eq!(app.state.storage.head(&key).await.unwrap(), None);
    assert_eq!(
        app.upload_state(&token, "demo", upload_id).await["status"],
        "CANCELLED"
    );
    let finalized = app.finalize(&token, "demo", upload_id).await;
    assert_eq!(finalized, json!({"data": {"finalizeBatchUpload": "CANCELLED"}}));
    assert_eq!(app.count_jobs().await, 0);
    assert_eq!(
        error_code(&call(app, &token, PARTS, upload_id).await),
        "UPLOAD_ALREADY_FINISHED"
    );
    assert_eq!(
        error_code(&call(app, &token, COMPLETE, upload_id).await),
        "UPLOAD_ALREADY_FINISHED"
    );
    // A repeat answers the same.
    assert_eq!(
        call(app, &token, ABORT, upload_id).await,
        json!({"data": {"abortMultipartUpload": "CANCELLED"}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_discards_the_parts_on_the_embedded_store() {
    abort_discards_the_parts(&spawn_app_with(Backend::Postgres, small_parts).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_discards_the_parts_on_s3() {
    // Small parts are fine on S3 until it assembles them; these never are.
    abort_discards_the_parts(&spawn_on_s3_with(Backend::Sqlite, small_parts).await.app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_upload_is_not_found_and_keeps_its_parts() {
    let app = spawn_app_with(Backend::Sqlite, small_parts).await;
    let file = csv_file(5, 10, 0);
    let prepared = prepare(&app, 10, &file, None).await;
    let upload_id = prepared["uploadId"].as_str().unwrap();
    put_ok(&app, &url_of(&prepared["parts"], 1), &file).await;

    for query in [PARTS, COMPLETE, ABORT] {
        let body = app
            .gql(Some(&app.bob()), query, json!({"t": "acme", "id": upload_id}))
            .await;
        assert_eq!(error_code(&body), "UPLOAD_NOT_FOUND", "{query}: {body}");
    }
    assert_eq!(
        error_code(&call(&app, &app.alice(), PARTS, "no-such-upload").await),
        "UPLOAD_NOT_FOUND"
    );
    let state = upload_parts(&app, upload_id).await;
    assert_eq!(numbers(&state["completed"]), [1]);
    assert_eq!(
        app.upload_state(&app.alice(), "demo", upload_id).await["status"],
        "PREPARED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_names_the_missing_parts_and_once_assembled_repeats_idempotently() {
    let app = spawn_app_with(Backend::Sqlite, small_parts).await;
    let token = app.alice();
    let rows = 200;
    let file = csv_file(6, rows, 0);
    let prepared = prepare(&app, rows, &file, Some(SMALL_PART)).await;
    let upload_id = prepared["uploadId"].as_str().unwrap();
    let chunks: Vec<&[u8]> = file.chunks(SMALL_PART as usize).collect();
    assert_eq!(chunks.len(), 4);
    put_ok(&app, &url_of(&prepared["parts"], 1), chunks[0]).await;
    put_ok(&app, &url_of(&prepared["parts"], 3), chunks[2]).await;

    let body = call(&app, &token, COMPLETE, upload_id).await;
    assert_eq!(error_code(&body), "UPLOAD_PARTS_MISSING");
    assert_eq!(body["errors"][0]["extensions"]["missingParts"], json!([2, 4]));
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("2, 4"), "{message}");
    // Before the file is whole, finalize finds nothing to process.
    assert_eq!(
        error_code(&app.finalize(&token, "demo", upload_id).await),
        "UPLOAD_NOT_UPLOADED"
    );

    put_ok(&app, &url_of(&prepared["parts"], 2), chunks[1]).await;
    put_ok(&app, &url_of(&prepared["parts"], 4), chunks[3]).await;
    for _ in 0..2 {
        let body = call(&app, &token, COMPLETE, upload_id).await;
        assert_eq!(body, json!({"data": {"completeMultipartUpload": "PREPARED"}}));
    }
    assert_eq!(
        error_code(&call(&app, &token, PARTS, upload_id).await),
        "MULTIPART_ALREADY_COMPLETED"
    );
    let (key, store_id) = store_ids(&app, upload_id).await;
    assert!(matches!(
        app.state.storage.list_parts(&key, &store_id).await,
        Err(fleetload::storage::StorageError::NoSuchUpload(_))
    ));
    assert_eq!(
        app.finalize(&token, "demo", upload_id).await,
        json!({"data": {"finalizeBatchUpload": "QUEUED"}})
    );
    assert_eq!(
        call(&app, &token, COMPLETE, upload_id).await,
        json!({"data": {"completeMultipartUpload": "QUEUED"}})
    );
    // A single-POST upload has no parts.
    let (single, _) = app.prepare_demo().await;
    assert_eq!(
        error_code(&call(&app, &token, PARTS, &single).await),
        "UPLOAD_NOT_MULTIPART"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completes_assemble_the_file_once_and_both_answer_its_status() {
    let app = spawn_app_with(Backend::Postgres, small_parts).await;
    let token = app.alice();
    for seed in 20..24 {
        let file = csv_file(seed, 300, 0);
        let prepared = prepare(&app, 300, &file, Some(SMALL_PART)).await;
        let upload_id = prepared["uploadId"].as_str().unwrap();
        for (i, chunk) in file.chunks(SMALL_PART as usize).enumerate() {
            put_ok(&app, &url_of(&prepared["parts"], i as u64 + 1), chunk).await;
        }

        let (a, b) = tokio::join!(
            call(&app, &token, COMPLETE, upload_id),
            call(&app, &token, COMPLETE, upload_id)
        );

        for body in [a, b] {
            assert_eq!(body, json!({"data": {"completeMultipartUpload": "PREPARED"}}));
        }
        let (key, _) = store_ids(&app, upload_id).await;
        assert_eq!(
            stored_sha256(&app, &key).await,
            hex::encode(Sha256::digest(&file))
        );
        let (a, b) = tokio::join!(
            app.finalize(&token, "demo", upload_id),
            app.finalize(&token, "demo", upload_id)
        );
        assert_eq!(
            [&a, &b]
                .iter()
                .filter(|b| b["data"]["finalizeBatchUpload"] == "QUEUED")
                .count(),
            2,
            "{a} {b}"
        );
    }
    assert_eq!(app.count_jobs().await, 4, "one dispatch job per upload");
}

/// On S3 a presigned part URL cannot pin the part's size: S3 keeps a part of any size, and
/// fleetload counts it missing until one of the planned size replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_a_part_of_the_wrong_size_counts_as_missing_until_replaced() {
    let s3 = spawn_on_s3_with(Backend::Sqlite, small_parts).await;
    let app = &s3.app;
    let token = app.alice();
    let file = csv_file(9, 100, 0);
    let prepared = prepare(app, 100, &file, Some(SMALL_PART)).await;
    let upload_id = prepared["uploadId"].as_str().unwrap();
    let mut longer = file[..SMALL_PART as usize].to_vec();
    longer.extend_from_slice(b"352099001761481\n");
    put_ok(app, &url_of(&prepared["parts"], 1), &longer).await;

    let state = upload_parts(app, upload_id).await;
    assert_eq!(state["completed"], json!([]));
    assert_eq!(numbers(&state["missing"]), [1, 2]);
    let body = call(app, &token, COMPLETE, upload_id).await;
    assert_eq!(error_code(&body), "UPLOAD_PARTS_MISSING");
    assert_eq!(body["errors"][0]["extensions"]["missingParts"], json!([1, 2]));

    put_ok(app, &url_of(&state["missing"], 1), &file[..SMALL_PART as usize]).await;
    let state = upload_parts(app, upload_id).await;
    assert_eq!(numbers(&state["completed"]), [1]);
    assert_eq!(
        state["completed"][0]["etag"],
        etag_of(&file[..SMALL_PART as usize])
    );
    assert_eq!(numbers(&state["missing"]), [2]);
}

/// An upload left unassembled past its expiry is aborted in the store by the sweeper and
/// failed with a reason; a second sweep finds nothing.
async fn the_sweeper_ends_abandoned_uploads(app: &TestApp) {
    use sea_orm::{ActiveModelTrait, Set};
    let token = app.alice();
    let file = csv_file(7, 200, 0);
    let prepared = prepare(app, 200, &file, Some(SMALL_PART)).await;
    let upload_id = prepared["uploadId"].as_str().unwrap();
    put_ok(app, &url_of(&prepared["parts"], 1), &file[..SMALL_PART as usize]).await;
    // A live one next to it is left alone.
    let live = prepare(app, 10, &csv_file(8, 10, 0), None).await;
    let (key, store_id) = store_ids(app, upload_id).await;
    let pk = app.upload_row(upload_id).await.id;
    // Its expiry passed (rather than waiting out a real one).
    entity::multipart_upload::ActiveModel {
        upload_id: Set(pk),
        expires_at: Set(chrono::Utc::now() - chrono::Duration::seconds(1)),
        ..Default::default()
    }
    .update(&app.state.db)
    .await
    .unwrap();

    assert_eq!(app.pipeline.sweep().await.unwrap(), 1);

    let upload = app.upload_state(&token, "demo", upload_id).await;
    assert_eq!(upload["status"], "FAILED");
    assert_eq!(
        upload["failureReason"],
        fleetload::pipeline::sweeper::MULTIPART_EXPIRED_REASON
    );
    assert!(matches!(
        app.state.storage.list_parts(&key, &store_id).await,
        Err(fleetload::storage::StorageError::NoSuchUpload(_))
    ));
    assert_eq!(app.pipeline.sweep().await.unwrap(), 0);
    let live_id = live["uploadId"].as_str().unwrap();
    assert_eq!(
        app.upload_state(&token, "demo", live_id).await["status"],
        "PREPARED"
    );
    assert_eq!(upload_parts(app, live_id).await["completed"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_ends_abandoned_uploads_on_the_embedded_store_and_sqlite() {
    the_sweeper_ends_abandoned_uploads(&spawn_app_with(Backend::Sqlite, small_parts).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_ends_abandoned_uploads_on_s3_and_postgres() {
    the_sweeper_ends_abandoned_uploads(&spawn_on_s3_with(Backend::Postgres, small_parts).await.app).await;
}
