//! `fleetload upload` in parts: the real binary against a real server (the embedded store,
//! and S3 on moto). A transfer cut short (ctrl-c, a store that keeps failing, parts a client
//! sent before it "restarted") is continued with `--resume`, the printed command included,
//! and the stored file is the original; a resume with another file is refused.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cli::{base_args_for, command, devices, run, text, upload_id, write};
use crate::helpers::{Backend, DEMO_WORKFLOW, TestApp, spawn_app_with};
use crate::multipart;

/// Parts of 8 KiB: a few thousand rows make a handful of parts.
const PART: usize = 8 * 1024;

const PREPARE_MULTIPART: &str = "mutation($size: Int!, $ps: Int, $n: Int!) { prepareMultipartUpload(tenantId: \"demo\", \
    assignActionId: \"register-prepaid\", rowCount: $n, deviceType: 1, workflowId: \"68a5ae7a4cb9e87b88b7d344\", \
    fileSize: $size, partSize: $ps) { uploadId partSize parts { partNumber url expiresAt } } }";

/// Parts as small as 1 KiB (the embedded store's minimum is a setting) and workers running.
fn small_parts(s: &mut fleetload::config::Settings) {
    s.workers = Some(2);
    s.multipart_min_part_bytes = 1024;
}

async fn app() -> TestApp {
    spawn_app_with(Backend::Sqlite, small_parts).await
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of the file the pipeline read: the upload's immutable snapshot.
async fn stored_sha256(app: &TestApp, upload_id: &str) -> String {
    let key = fleetload::storage::snapshot_key(&app.upload_row(upload_id).await.object_key);
    multipart::stored_sha256(app, &key).await
}

/// The arguments of a multipart upload of `file` in parts of 8 KiB.
fn upload_args<'a>(file: &'a str, parallel: &'a str) -> Vec<&'a str> {
    vec![
        "upload",
        file,
        "--action",
        "register-prepaid",
        "--workflow",
        DEMO_WORKFLOW,
        "--multipart-threshold",
        "16KiB",
        "--part-size",
        "8KiB",
        "--parallel",
        parallel,
    ]
}

/// A multipart upload prepared as a client that will be interrupted starts it.
async fn prepare_multipart(app: &TestApp, rows: usize, bytes: &[u8], part_size: usize) -> (String, Value) {
    let body = app
        .gql(
            Some(&app.alice()),
            PREPARE_MULTIPART,
            json!({ "size": bytes.len(), "ps": part_size, "n": rows }),
        )
        .await;
    let prepared = &body["data"]["prepareMultipartUpload"];
    assert!(prepared.is_object(), "{body}");
    (
        prepared["uploadId"].as_str().unwrap().to_owned(),
        prepared["parts"].clone(),
    )
}

/// PUTs part `number` of `bytes` to its URL, as S3 takes it.
async fn put_part(app: &TestApp, parts: &Value, number: usize, bytes: &[u8], part_size: usize) {
    let slice = &bytes[(number - 1) * part_size..(number * part_size).min(bytes.len())];
    multipart::put_ok(app, &multipart::url_of(parts, number as u64), slice).await;
}

/// The part numbers the store holds, and the upload's status.
async fn stored_parts(app: &TestApp, upload_id: &str) -> (Vec<u64>, String) {
    let mut numbers = multipart::numbers(&multipart::upload_parts(app, upload_id).await["completed"]);
    numbers.sort_unstable();
    let body = app
        .gql(
            Some(&app.alice()),
            "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { status } }",
            json!({ "id": upload_id }),
        )
        .await;
    (
        numbers,
        body["data"]["upload"]["status"].as_str().unwrap().to_owned(),
    )
}

/// The command printed after "to continue, run:".
fn printed_resume_command(stderr: &str) -> String {
    stderr
        .lines()
        .skip_while(|l| !l.ends_with("to continue, run:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no resume command in:\n{stderr}"))
        .trim()
        .to_owned()
}

/// A `--resume` run found `stored` of the file's parts in the store, sent the others, and the
/// upload completed with every row of `bytes`, whose SHA-256 the stored file has.
async fn assert_resumed(
    app: &TestApp,
    out: &std::process::Output,
    id: &str,
    stored: usize,
    bytes: &[u8],
    part: usize,
) {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let parts = bytes.len().div_ceil(part);
    assert!(
        stdout.contains(&format!(
            "upload {id}: resuming, {stored} of {parts} part(s) stored, {} to send",
            parts - stored
        )),
        "{stdout}"
    );
    let rows = bytes.iter().filter(|&&b| b == b'\n').count() - 1;
    assert!(
        stdout.contains(&format!(
            "COMPLETED: {rows} of {rows} rows processed, {rows} succeeded, 0 failed"
        )),
        "{stdout}"
    );
    assert_eq!(stored_sha256(app, id).await, sha256(bytes));
}

/// Runs `line` as a shell would, as a user pasting it does.
async fn run_in_shell(line: &str) -> std::process::Output {
    tokio::process::Command::new("sh")
        .args(["-c", line])
        .env_remove("FLEETLOAD_TOKEN")
        .env_remove("FLEETLOAD_SERVER")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_above_the_threshold_is_sent_in_parts_and_completes_with_exact_counts() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = devices(21, 4000, &[7, 3999]);
    let file = write(dir.path(), "big.csv", &bytes);
    let parts = bytes.len().div_ceil(PART);
    assert!(parts > 4, "more parts than run at once");

    let out = run(&app, &upload_args(file.to_str().unwrap(), "3")).await;

    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "4000 rows prepared, {} bytes in {parts} part(s)",
            bytes.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("SENT ") && l.contains("(100.0 %)")),
        "a last transfer line: {stdout}"
    );
    assert!(
        stdout.contains("COMPLETED_WITH_ERRORS: 4000 of 4000 rows processed, 3998 succeeded, 2 failed"),
        "{stdout}"
    );
    let id = upload_id(&stdout);
    assert_eq!(stored_sha256(&app, &id).await, sha256(&bytes));

    // At the threshold: one POST, as before.
    let small = devices(22, 300, &[]);
    let small_file = write(dir.path(), "small.csv", &small);
    let threshold = small.len().to_string();
    let out = run(
        &app,
        &[
            "upload",
            small_file.to_str().unwrap(),
            "--action",
            "register-prepaid",
            "--workflow",
            DEMO_WORKFLOW,
            "--multipart-threshold",
            &threshold,
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("300 rows prepared\n"), "{stdout}");
    assert!(
        !stdout.contains("part(s)") && !stdout.contains("SENT"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_sends_only_the_missing_parts_and_stores_the_original_file() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = devices(23, 3000, &[]);
    let file = write(dir.path(), "devices.csv", &bytes);
    let parts = bytes.len().div_ceil(PART);
    let (id, urls) = prepare_multipart(&app, 3000, &bytes, PART).await;
    // A client sent the first, the third and the last (short) part, then went away.
    for number in [1, 3, parts] {
        put_part(&app, &urls, number, &bytes, PART).await;
    }

    let out = run(
        &app,
        &[
            "upload",
            file.to_str().unwrap(),
            "--resume",
            &id,
            "--parallel",
            "2",
        ],
    )
    .await;

    assert_resumed(&app, &out, &id, 3, &bytes, PART).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_with_another_file_is_refused_and_nothing_is_assembled() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = devices(24, 3000, &[]);
    let (id, urls) = prepare_multipart(&app, 3000, &bytes, PART).await;
    put_part(&app, &urls, 1, &bytes, PART).await;
    put_part(&app, &urls, 2, &bytes, PART).await;

    // The same size, one digit changed in part 2.
    let mut edited = bytes.clone();
    let at = PART + 100;
    edited[at] = if edited[at] == b'9' { b'8' } else { b'9' };
    let edited_file = write(dir.path(), "edited.csv", &edited);
    let out = run(&app, &["upload", edited_file.to_str().unwrap(), "--resume", &id]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("error: RESUME_FILE_MISMATCH:"), "{stderr}");
    assert!(
        stderr.contains("part 2 (bytes 8192..16384) is stored with MD5")
            && stderr.contains("nothing was sent or assembled"),
        "{stderr}"
    );

    // A file of another size.
    let shorter = write(dir.path(), "shorter.csv", &bytes[..bytes.len() - 3 * PART]);
    let out = run(&app, &["upload", shorter.to_str().unwrap(), "--resume", &id]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: RESUME_FILE_MISMATCH:") && stderr.contains("part(s) of 8192 bytes"),
        "{stderr}"
    );

    // Nothing was sent or assembled: the store holds the same two parts, the upload waits.
    assert_eq!(stored_parts(&app, &id).await, (vec![1, 2], "PREPARED".to_owned()));

    // As many parts, the last one shorter and not stored yet: the parts go, and assembling
    // them is refused, as the store holds no last part of the planned size.
    let trimmed = write(dir.path(), "trimmed.csv", &bytes[..bytes.len() - 100]);
    let out = run(&app, &["upload", trimmed.to_str().unwrap(), "--resume", &id]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: UPLOAD_PARTS_MISSING: parts 6 ")
            && stderr.contains(&format!("is {} the file of this upload?", trimmed.display())),
        "{stderr}"
    );
    assert_eq!(
        stored_parts(&app, &id).await,
        (vec![1, 2, 3, 4, 5], "PREPARED".to_owned())
    );

    // The right file still completes it, its own last part replacing the short one.
    let file = write(dir.path(), "devices.csv", &bytes);
    let out = run(&app, &["upload", file.to_str().unwrap(), "--resume", &id]).await;
    assert_resumed(&app, &out, &id, 5, &bytes, PART).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_an_unknown_a_foreign_or_a_single_post_upload_is_refused_with_its_code() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = devices(29, 3000, &[]);
    let file = write(dir.path(), "devices.csv", &bytes);
    let file = file.to_str().unwrap();
    let refused = |out: &std::process::Output, code: &str| {
        let (stdout, stderr) = text(out);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(stderr.contains(&format!("error: {code}: ")), "{code}: {stderr}");
        assert!(!stderr.contains("to continue"), "nothing to continue: {stderr}");
    };

    let out = run(
        &app,
        &["upload", file, "--resume", "01a00000-0000-7000-8000-000000000000"],
    )
    .await;
    refused(&out, "UPLOAD_NOT_FOUND");

    // bob (acme) cannot see alice's upload, and takes nothing from it.
    let (id, urls) = prepare_multipart(&app, 3000, &bytes, PART).await;
    put_part(&app, &urls, 1, &bytes, PART).await;
    let out = run(
        &app,
        &[
            "upload", file, "--resume", &id, "--user", "bob", "--tenant", "acme",
        ],
    )
    .await;
    refused(&out, "UPLOAD_NOT_FOUND");
    assert_eq!(stored_parts(&app, &id).await, (vec![1], "PREPARED".to_owned()));

    // An upload sent in one POST has no parts to resume.
    let small = write(dir.path(), "small.csv", &devices(30, 10, &[]));
    let out = run(
        &app,
        &[
            "upload",
            small.to_str().unwrap(),
            "--action",
            "register-prepaid",
            "--workflow",
            DEMO_WORKFLOW,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let single = upload_id(&text(&out).0);
    let out = run(&app, &["upload", file, "--resume", &single]).await;
    refused(&out, "UPLOAD_NOT_MULTIPART");

    // Once completed, the same command only reports: nothing is sent again.
    let out = run(&app, &["upload", file, "--resume", &id]).await;
    assert_resumed(&app, &out, &id, 1, &bytes, PART).await;
    let out = run(&app, &["upload", file, "--resume", &id]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("upload {id}: its parts are assembled already"))
            && stdout.contains("COMPLETED: 3000 of 3000 rows processed")
            && !stdout.contains("SENDING"),
        "{stdout}"
    );
}

/// What happens to a part PUT once the gate's allowance is spent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Past {
    /// Answered 503, as a store that keeps failing.
    Fail,
    /// Never answered, as a link that went dead.
    Hold,
    /// The first one waits this long, then the gate opens and lets it through: a slow link
    /// that outlives the part's URL.
    Stall(Duration),
}

/// A proxy in front of the server's part URLs (the app's public URL points at it): part
/// PUTs go through while the allowance lasts, the rest as `past` says.
struct Gate {
    upstream: String,
    allowance: AtomicUsize,
    past: Past,
    /// Parts stored through the gate.
    passed: AtomicUsize,
    /// Part PUTs failed or held.
    stopped: AtomicUsize,
    /// Part PUTs the store refused with 403.
    forbidden: AtomicUsize,
    changed: tokio::sync::Notify,
    http: reqwest::Client,
}

impl Gate {
    fn admit(&self) -> bool {
        self.allowance
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn open(&self) {
        self.allowance.store(usize::MAX, Ordering::SeqCst);
    }

    fn count(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until `seen` holds; a guard of two minutes turns a hang into a failure.
    async fn wait_for(&self, seen: impl Fn(&Gate) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if seen(self) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .expect("the gate saw the parts it waited for");
    }
}

async fn forward(State(gate): State<Arc<Gate>>, request: axum::extract::Request) -> Response {
    let is_part = request.method() == axum::http::Method::PUT
        && request.uri().query().is_some_and(|q| q.contains("partNumber="));
    if is_part && !gate.admit() {
        gate.count(&gate.stopped);
        match gate.past {
            Past::Hold => return std::future::pending().await,
            Past::Stall(pause) => {
                tokio::time::sleep(pause).await;
                gate.open();
            }
            Past::Fail => {
                // Read first, so that the client gets the answer rather than a reset.
                let _ = axum::body::to_bytes(request.into_body(), usize::MAX).await;
                return (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "<Error><Code>SlowDown</Code><Message>the gate is closed</Message></Error>",
                )
                    .into_response();
            }
        }
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forwarded = gate
        .http
        .request(parts.method, format!("{}{path}", gate.upstream))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            forwarded = forwarded.header(name, value);
        }
    }
    let response = forwarded.send().await.expect("the server answers the proxy");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("the server's answer");
    if is_part && status.is_success() {
        gate.count(&gate.passed);
    }
    if is_part && status == axum::http::StatusCode::FORBIDDEN {
        gate.count(&gate.forbidden);
    }
    let mut answer = (status, bytes).into_response();
    *answer.headers_mut() = headers;
    answer
}

/// An app whose part URLs lead through a gate letting `allowance` parts through.
async fn gated_app(allowance: usize, past: Past) -> (TestApp, Arc<Gate>) {
    gated_app_with(allowance, past, |_| {}).await
}

/// The same after `configure` adjusted the app's settings.
async fn gated_app_with(
    allowance: usize,
    past: Past,
    configure: impl FnOnce(&mut fleetload::config::Settings),
) -> (TestApp, Arc<Gate>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let app = spawn_app_with(Backend::Sqlite, |s| {
        small_parts(s);
        s.public_url = Some(proxy);
        configure(s);
    })
    .await;
    let gate = Arc::new(Gate {
        upstream: format!("http://{}", app.address),
        allowance: AtomicUsize::new(allowance),
        past,
        passed: AtomicUsize::new(0),
        stopped: AtomicUsize::new(0),
        forbidden: AtomicUsize::new(0),
        changed: tokio::sync::Notify::new(),
        http: reqwest::Client::new(),
    });
    let router = axum::Router::new().fallback(forward).with_state(gate.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (app, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_during_the_transfer_prints_the_resume_command_which_completes_it() {
    let (app, gate) = gated_app(3, Past::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = devices(25, 4000, &[]);
    let file = write(dir.path(), "devices.csv", &bytes);
    let parts = bytes.len().div_ceil(PART);
    // The API straight, the part URLs through the gate.
    let server = format!("http://{}", app.address);
    let child = command(
        base_args_for(&app, &server),
        &upload_args(file.to_str().unwrap(), "2"),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();

    gate.wait_for(|g| g.passed.load(Ordering::SeqCst) == 3 && g.stopped.load(Ordering::SeqCst) >= 1)
        .await;
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().await.unwrap();

    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let id = upload_id(&stdout);
    assert!(
        stderr.contains(&format!("interrupted: upload {id}: "))
            && stderr.contains(&format!(" of {parts} part(s) stored; to continue, run:")),
        "{stderr}"
    );
    let resume = printed_resume_command(&stderr);
    assert!(resume.ends_with(&format!(" --resume {id}")), "{resume}");
    // Which three depends on the order the two at once reached the gate.
    let (stored, status) = stored_parts(&app, &id).await;
    assert_eq!((stored.len(), status.as_str()), (3, "PREPARED"), "{stored:?}");

    gate.open();
    assert_resumed(&app, &run_in_shell(&resume).await, &id, 3, &bytes, PART).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_the_store_keeps_refusing_stops_the_transfer_with_the_resume_command() {
    let (app, gate) = gated_app(2, Past::Fail).await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = devices(26, 4000, &[]);
    let file = write(dir.path(), "devices.csv", &bytes);
    let parts = bytes.len().div_ceil(PART);
    let server = format!("http://{}", app.address);

    // One part at a time: parts 1 and 2 pass, part 3 is tried four times.
    let out = command(
        base_args_for(&app, &server),
        &upload_args(file.to_str().unwrap(), "1"),
    )
    .output()
    .await
    .unwrap();

    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("error: PART_UPLOAD_FAILED: part 3: ")
            && stderr.contains("HTTP 503")
            && stderr.contains("SlowDown")
            && stderr.contains("(attempt 4 of 4)"),
        "{stderr}"
    );
    assert_eq!(gate.stopped.load(Ordering::SeqCst), 4, "tried four times");
    let id = upload_id(&stdout);
    assert!(
        stderr.contains(&format!(
            "upload {id}: 2 of {parts} part(s) stored; to continue, run:"
        )),
        "{stderr}"
    );

    gate.open();
    let resume = printed_resume_command(&stderr);
    assert_resumed(&app, &run_in_shell(&resume).await, &id, 2, &bytes, PART).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_url_that_expires_on_a_slow_link_is_issued_again_and_the_upload_completes() {
    // URLs live 2 s; part 3 reaches the store 4 s after it left.
    let (app, gate) = gated_app_with(2, Past::Stall(Duration::from_secs(4)), |s| {
        s.upload_url_ttl_secs = 2;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = devices(31, 4000, &[]);
    let file = write(dir.path(), "devices.csv", &bytes);
    let server = format!("http://{}", app.address);

    let out = command(
        base_args_for(&app, &server),
        &upload_args(file.to_str().unwrap(), "1"),
    )
    .output()
    .await
    .unwrap();

    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        gate.forbidden.load(Ordering::SeqCst) >= 1,
        "the late part was refused as expired"
    );
    assert!(
        stdout.contains("COMPLETED: 4000 of 4000 rows processed, 4000 succeeded, 0 failed"),
        "{stdout}"
    );
    assert_eq!(stored_sha256(&app, &upload_id(&stdout)).await, sha256(&bytes));
}

/// On S3 (moto) parts are at least 5 MiB: two parts, the first sent before the "restart".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_an_interrupted_upload_resumes_and_stores_the_original_file() {
    let s3 = crate::storage_s3::spawn_on_s3_with(Backend::Sqlite, |s| s.workers = Some(2)).await;
    let app = &s3.app;
    let dir = tempfile::tempdir().unwrap();
    // Rows of ~200 bytes (an extra column is kept, not checked): 6 MiB in 30,000 rows.
    let padding = "x".repeat(180);
    let mut bytes = b"imei,note\n".to_vec();
    for imei in crate::helpers::imeis(27, 30_000) {
        bytes.extend_from_slice(format!("{imei},{padding}\n").as_bytes());
    }
    let part = 5 * 1024 * 1024;
    assert_eq!(bytes.len().div_ceil(part), 2);
    let file = write(dir.path(), "devices.csv", &bytes);
    let (id, urls) = prepare_multipart(app, 30_000, &bytes, part).await;
    put_part(app, &urls, 1, &bytes, part).await;

    let out = run(app, &["upload", file.to_str().unwrap(), "--resume", &id]).await;

    assert_resumed(app, &out, &id, 1, &bytes, part).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_sent_under_a_terminal_draw_the_transfer_bar() {
    let Some(tmux) = crate::cli::tmux() else { return };
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = devices(28, 4000, &[]);
    let file = write(dir.path(), "devices.csv", &bytes);
    let file = file.to_str().unwrap();

    let (code, pane) = crate::cli::in_terminal(
        tmux,
        &format!(
            "upload {} {}",
            base_args_for(&app, &app.url).join(" "),
            upload_args(file, "4")[1..].join(" ")
        ),
        dir.path(),
    )
    .await;

    assert_eq!(code.as_deref(), Some("0"), "pane:\n{pane}");
    let size = indicatif::HumanBytes(bytes.len() as u64);
    let bar = pane
        .lines()
        .find(|l| l.contains("SENT"))
        .unwrap_or_else(|| panic!("no finished transfer bar in the pane:\n{pane}"));
    assert!(
        bar.contains("[================================]")
            && bar.contains(&format!("{size}/{size} 100%"))
            && bar.contains("/s"),
        "{bar}"
    );
    assert!(pane.contains("COMPLETED: 4000 of 4000 rows processed"), "{pane}");
}
