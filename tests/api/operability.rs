//! What an operator runs fleetload with: Prometheus `/metrics` (parsed as text exposition),
//! request ids, JSON logs that follow one upload by its public id and hold no token, and
//! `/healthz` / `/readyz` on the API and on a `fleetload worker`'s metrics listener.
//!
//! Metrics are process-wide, so the tests that check exact values run the server as a child
//! process of its own (a fresh embedded data dir), as an operator would.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{SinkExt, StreamExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::*;

/// A `fleetload <command>` child with only the given environment, its stderr (the logs) in
/// a file; killed when dropped.
pub(crate) struct Process {
    child: Child,
    logs: std::path::PathBuf,
}

impl Process {
    pub(crate) fn spawn(command: &str, env: &[(&str, String)], logs: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetload"));
        cmd.arg(command);
        for (key, _) in std::env::vars() {
            if key.starts_with("FLEETLOAD_")
                || key.starts_with("AWS_")
                || key == "DATABASE_URL"
                || key == "RUST_LOG"
            {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let file = std::fs::File::create(logs).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        Self {
            child: cmd.spawn().expect("the fleetload binary starts"),
            logs: logs.to_owned(),
        }
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.logs).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A port free now (the child binds it a moment later).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `url` answers 200 (bounded).
pub(crate) async fn wait_ready(http: &reqwest::Client, url: &str, process: &Process) {
    let started = Instant::now();
    loop {
        if let Ok(resp) = http.get(url).send().await
            && resp.status() == 200
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{url} not ready; logs:\n{}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The samples of a text exposition, parsed by a Prometheus parser: `(name, labels) → value`.
/// The exposition text of `{base}/metrics`.
async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A `/readyz` body that names the database as what failed; the local object store, which
/// does not depend on it, still answers.
fn assert_unready_for_the_database(body: &Value) {
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["parts"]["database"], "failed", "{body}");
    assert!(
        body["failed"].as_array().unwrap().contains(&json!("database")),
        "{body}"
    );
    assert_eq!(body["parts"]["object_store"], "ok", "{body}");
}

fn scrape(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("the exposition parses")
        .samples
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// Each line of the exposition is a comment or `name{labels} value` with a finite value.
fn assert_exposition_lines(text: &str) {
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "bad name in {line}"
        );
        assert!(
            !series.contains('{') || series.ends_with('}'),
            "bad labels in {line}"
        );
    }
}

/// A client of a child server: prepare → POST → finalize as alice, with operation names.
pub(crate) struct Client {
    url: String,
    http: reqwest::Client,
    token: String,
}

impl Client {
    pub(crate) async fn gql(
        &self,
        query: &str,
        variables: Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"query": query, "variables": variables}));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.unwrap()
    }

    async fn data_with(&self, query: &str, variables: Value, headers: &[(&str, &str)]) -> Value {
        let body: Value = self.gql(query, variables, headers).await.json().await.unwrap();
        assert!(body.get("errors").is_none(), "{body}");
        body["data"].clone()
    }

    async fn data(&self, query: &str, variables: Value) -> Value {
        self.data_with(query, variables, &[]).await
    }

    /// Prepares, POSTs and finalizes `csv` (REGISTER in demo), the finalize sent with
    /// `headers`; returns the upload's public id.
    pub(crate) async fn queue_upload(&self, csv: Vec<u8>, rows: usize, headers: &[(&str, &str)]) -> String {
        let prepared = self
            .data(
                PREPARE,
                json!({"tenantId": "demo", "assignActionId": "register-prepaid", "rowCount": rows, "deviceType": 1}),
            )
            .await;
        let payload = &prepared["prepareBatchUpload"];
        let id = payload["uploadId"].as_str().unwrap().to_owned();
        let posted = post_form(&self.http, &payload["fileUpload"], csv).await;
        assert!(posted.status().is_success(), "{}", posted.status());
        let finalized = self
            .data_with(FINALIZE, json!({"tenantId": "demo", "uploadId": id}), headers)
            .await;
        assert_eq!(finalized["finalizeBatchUpload"], "QUEUED");
        id
    }

    /// Uploads `csv` (REGISTER in demo) and waits for its end; returns its public id.
    async fn upload(&self, csv: Vec<u8>, rows: usize) -> String {
        let id = self.queue_upload(csv, rows, &[]).await;
        self.wait_completed(&id).await;
        id
    }

    /// Waits (bounded) until the upload `id` is COMPLETED or COMPLETED_WITH_ERRORS.
    pub(crate) async fn wait_completed(&self, id: &str) {
        let started = Instant::now();
        loop {
            let state = self
                .data(
                    "query Status($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { status } }",
                    json!({"id": id}),
                )
                .await;
            if state["upload"]["status"]
                .as_str()
                .unwrap()
                .starts_with("COMPLETED")
            {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A webhook receiver answering 204; counts the calls.
async fn webhook_receiver() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { axum::http::StatusCode::NO_CONTENT }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

/// `fleetload serve` on the embedded data dir `dir/data`, with `env` besides; once it is
/// ready, a client of it signed in as alice.
pub(crate) async fn serve_with(dir: &Path, env: Vec<(&'static str, String)>) -> (Process, Client) {
    let port = free_port();
    let mut all = vec![
        ("FLEETLOAD_DATA_DIR", dir.join("data").display().to_string()),
        ("FLEETLOAD_LISTEN", format!("127.0.0.1:{port}")),
    ];
    all.extend(env);
    let process = Process::spawn("serve", &all, &dir.join("serve.log"));
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_ready(&http, &format!("{url}/readyz"), &process).await;
    let mut settings = fleetload::config::Settings::embedded(dir.join("data"));
    settings.jwt_audience = "fleetload".into();
    let secret = fleetload::startup::jwt_secret(&settings).unwrap();
    let token = fleetload::auth::mint_token(
        &secret,
        "alice",
        "demo",
        &[
            fleetload::auth::Permission::Read,
            fleetload::auth::Permission::Update,
        ],
        "fleetload",
        None,
        3600,
    )
    .unwrap();
    (process, Client { url, http, token })
}

/// `fleetload serve` on a fresh embedded data dir, JSON logs, its workers running, a
/// webhook configured.
async fn serve_child(dir: &Path) -> (Process, Client, String, Arc<AtomicUsize>) {
    let metrics_port = free_port();
    let (hook, calls) = webhook_receiver().await;
    let (process, client) = serve_with(
        dir,
        vec![
            ("FLEETLOAD_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
            ("FLEETLOAD_LOG_JSON", "1".into()),
            ("FLEETLOAD_CHUNK_SIZE", "3".into()),
            ("FLEETLOAD_WEBHOOK_URL", hook),
            ("FLEETLOAD_WEBHOOK_SECRET", "test-webhook-secret-1234".into()),
        ],
    )
    .await;
    (process, client, format!("http://127.0.0.1:{metrics_port}"), calls)
}

/// 7 rows: 4 new devices (SUCCESS), 2 invalid IMEIs, 1 repeat — 3 chunks of 3, 3, 1.
pub(crate) fn mixed_csv() -> Vec<u8> {
    let keys = imeis(71, 4);
    let text = format!(
        "imei\n{}\n{}\n123\n{}\n{}\nnot-an-imei\n{}\n",
        keys[0], keys[1], keys[2], keys[3], keys[0]
    );
    text.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_processed_upload_exactly_and_logs_follow_it_by_public_id() {
    let dir = tempfile::tempdir().unwrap();
    let (process, client, metrics_url, webhook_calls) = serve_child(dir.path()).await;

    let id = client.upload(mixed_csv(), 7).await;
    // The webhook call is made (and counted) once the upload finished.
    let started = Instant::now();
    while webhook_calls.load(Ordering::SeqCst) == 0 || !process.logs().contains("webhook delivered") {
        assert!(started.elapsed() < Duration::from_secs(30), "no webhook call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The API's own /metrics.
    let text = metrics_text(&client.http, &client.url).await;
    assert_exposition_lines(&text);
    let samples = scrape(&text);
    let rows = "fleetload_rows_total";
    assert_eq!(
        value(&samples, rows, &[("outcome", "SUCCESS")]),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            rows,
            &[("outcome", "FAIL"), ("error_code", "INVALID_DEVICE_UID")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            rows,
            &[("outcome", "FAIL"), ("error_code", "DUPLICATE_IN_FILE")]
        ),
        Some(1.0)
    );
    let finished = "fleetload_uploads_finished_total";
    assert_eq!(
        value(&samples, finished, &[("status", "COMPLETED_WITH_ERRORS")]),
        Some(1.0)
    );
    assert_eq!(value(&samples, finished, &[("status", "COMPLETED")]), Some(0.0));
    assert_eq!(
        value(&samples, "fleetload_chunks_total", &[("result", "applied")]),
        Some(3.0)
    );
    let hooks = "fleetload_webhook_deliveries_total";
    assert_eq!(value(&samples, hooks, &[("result", "delivered")]), Some(1.0));
    assert_eq!(value(&samples, hooks, &[("result", "retried")]), Some(0.0));
    let ops = "fleetload_graphql_operations_total";
    for name in ["prepareBatchUpload", "finalizeBatchUpload"] {
        assert_eq!(
            value(&samples, ops, &[("operation", name), ("outcome", "ok")]),
            Some(1.0),
            "{name}"
        );
    }
    assert!(value(&samples, ops, &[("operation", "Status"), ("outcome", "ok")]).unwrap() >= 1.0);
    assert!(
        text.lines().any(
            |l| l.starts_with("fleetload_graphql_operation_duration_seconds_bucket{")
                && l.contains("operation=\"prepareBatchUpload\"")
        ),
        "{text}"
    );
    assert!(!text.contains(&id), "an upload id is never a label");

    // Every name src/metrics.rs describes is exported (a dashboard can rely on the list).
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    for (name, kind, _) in fleetload::metrics::ALL {
        let exported = match kind {
            fleetload::metrics::Kind::Histogram => names.contains(&format!("{name}_bucket").as_str()),
            _ => names.contains(name),
        };
        assert!(exported, "{name} is not on /metrics:\n{text}");
    }

    // The separate listener serves the same registry and the probes.
    let other = client
        .http
        .get(format!("{metrics_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(other.text().await.unwrap().contains("fleetload_rows_total"));
    let ready: Value = client
        .http
        .get(format!("{metrics_url}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");

    // Logs: JSON lines; the dispatch and every chunk line carry the public id and tenant.
    let logs = process.logs();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_upload = |message: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .filter(|l| l.to_string().contains(&id))
            .collect()
    };
    let dispatched = of_upload("upload dispatched");
    assert_eq!(dispatched.len(), 1, "{logs}");
    assert!(
        dispatched[0].to_string().contains("\"tenant_id\":\"demo\""),
        "{}",
        dispatched[0]
    );
    assert_eq!(of_upload("chunk applied").len(), 3, "{logs}");
    assert_eq!(of_upload("upload prepared").len(), 1, "{logs}");
    assert_eq!(of_upload("webhook delivered").len(), 1, "{logs}");
    // No line carries the token (nor its signature part), nor the webhook secret.
    let signature = client.token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "the token is in the logs");
    assert!(
        !logs.contains("test-webhook-secret-1234"),
        "the webhook secret is in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_generated_or_replaced_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (process, client, metrics_url, _) = serve_child(dir.path()).await;
    let query = "query Template { batchUploadTemplate(deviceType: 1) }";

    let sent = client
        .gql(query, json!({}), &[("x-request-id", "client-id-42")])
        .await;
    assert_eq!(sent.headers()["x-request-id"], "client-id-42");

    let generated = client.gql(query, json!({}), &[]).await;
    let id = generated.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    // Too long, or not visible ASCII: replaced by a generated id, never echoed.
    let huge = "x".repeat(4096);
    for bad in [huge.as_str(), "has space", "tab\there"] {
        let resp = client.gql(query, json!({}), &[("x-request-id", bad)]).await;
        assert_eq!(resp.status(), 200);
        let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(echoed, bad);
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
    }
    // Any route: a probe gets one too.
    let probe = client
        .http
        .get(format!("{}/healthz", client.url))
        .send()
        .await
        .unwrap();
    assert!(probe.headers().contains_key("x-request-id"));

    // The request's span carries the id: a line logged inside it names it. A prepare
    // logs "upload prepared".
    let prepared = client
        .gql(
            PREPARE,
            json!({"tenantId": "demo", "assignActionId": "register-prepaid", "rowCount": 1, "deviceType": 1}),
            &[("x-request-id", "trace-me-7")],
        )
        .await;
    assert_eq!(prepared.status(), 200);
    let prepared: Value = prepared.json().await.unwrap();
    let prepared_id = prepared["data"]["prepareBatchUpload"]["uploadId"]
        .as_str()
        .unwrap()
        .to_owned();
    let logs = process.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("upload prepared"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("\"request_id\":\"trace-me-7\""), "{line}");
    assert!(!logs.contains(&huge), "an over-long id is not logged");

    // A WebSocket upgrade gets its id too, and the connection and its subscription are
    // counted by protocol while open.
    let mut request = format!("{}/graphql", client.url.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
    headers.insert("x-request-id", "ws-conn-9".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "ws-conn-9");
    let text = |v: Value| Message::Text(v.to_string().into());
    ws.send(text(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", client.token)}}),
    ))
    .await
    .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"), "{ack:?}");
    // A subscription to the prepared upload stays open until the upload ends.
    let subscribe = json!({"type": "subscribe", "id": "1", "payload": {
        "query": "subscription($id: String!) { uploadProgress(tenantId: \"demo\", uploadId: $id) { status } }",
        "variables": {"id": prepared_id}}});
    ws.send(text(subscribe)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.to_text().unwrap().contains("PREPARED"), "{first:?}");
    let gauge = |samples: &[prometheus_parse::Sample], name: &str| {
        value(samples, name, &[("protocol", "graphql-transport-ws")]).unwrap_or(-1.0)
    };
    let started = Instant::now();
    loop {
        let text = metrics_text(&client.http, &metrics_url).await;
        let samples = scrape(&text);
        let connections = gauge(&samples, "fleetload_websocket_connections");
        let subscriptions = gauge(&samples, "fleetload_websocket_subscriptions");
        assert_eq!(
            value(
                &samples,
                "fleetload_websocket_connections",
                &[("protocol", "appsync")]
            ),
            Some(0.0)
        );
        if connections == 1.0 && subscriptions == 1.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws.close(None).await.unwrap();
    let started = Instant::now();
    loop {
        let text = metrics_text(&client.http, &metrics_url).await;
        let samples = scrape(&text);
        if gauge(&samples, "fleetload_websocket_connections") == 0.0
            && gauge(&samples, "fleetload_websocket_subscriptions") == 0.0
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readiness_names_every_part_and_the_database_when_it_is_dropped() {
    let app = spawn_app(Backend::Postgres).await;
    let resp = app.http.get(format!("{}/readyz", app.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ready", "failed": [], "parts": {
            "database": "ok", "migrations": "ok", "object_store": "ok", "queue": "ok"}})
    );

    // The database goes away under the running server.
    let url = app
        .settings
        .database_url
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin = std::env::var("FLEETLOAD_TEST_PG_URL").unwrap_or_else(|_| format!("{base}/test"));
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let resp = app.http.get(format!("{}/readyz", app.url)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_unready_for_the_database(&body);
    // Alive all the same.
    let health = app.http.get(format!("{}/healthz", app.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn readiness_names_the_object_store_when_its_directory_is_gone() {
    let app = spawn_app(Backend::Sqlite).await;
    let ok = app.http.get(format!("{}/readyz", app.url)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // The objects directory removed: the object store part fails, and only it.
    std::fs::remove_dir_all(app.settings.objects_dir()).unwrap();
    let resp = app.http.get(format!("{}/readyz", app.url)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["failed"], json!(["object_store"]), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_answers_healthz_readyz_and_metrics_on_its_listener() {
    let app = spawn_app(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let process = Process::spawn(
        "worker",
        &[
            ("DATABASE_URL", crate::processes::database_url(&app)),
            ("FLEETLOAD_DATA_DIR", app.settings.data_dir.display().to_string()),
            ("FLEETLOAD_LISTEN", "127.0.0.1:0".into()),
            ("FLEETLOAD_METRICS_LISTEN", format!("127.0.0.1:{port}")),
            ("FLEETLOAD_WORKERS", "1".into()),
        ],
        &dir.path().join("worker.log"),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&app.http, &format!("{base}/healthz"), &process).await;
    wait_ready(&app.http, &format!("{base}/readyz"), &process).await;

    // The worker processes an upload the API process (this test's app) took.
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": 2}), csv("imei", &imeis(72, 2)))
        .await;
    let started = Instant::now();
    loop {
        let state = app.upload_state(&app.alice(), "demo", &id).await;
        if state["status"] == "COMPLETED" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{state}\n{}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let resp = app.http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert_exposition_lines(&text);
    let samples = scrape(&text);
    assert_eq!(
        value(&samples, "fleetload_rows_total", &[("outcome", "SUCCESS")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "fleetload_uploads_finished_total",
            &[("status", "COMPLETED")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &samples,
            "fleetload_db_pool_connections",
            &[("pool", "pipeline"), ("state", "idle")]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        value(&samples, "fleetload_queue_depth", &[("queue", "chunks")]).is_some(),
        "{text}"
    );
    // The public id is on the worker's lines for that upload.
    let logs = process.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("chunk applied") && l.contains(&id)),
        "{logs}"
    );
}

/// A TCP proxy in front of PostgreSQL that the test controls: stopped, the port refuses
/// connections and the open ones are cut, as when the database host goes away; started
/// again on the same port, the database is back at the address the server was given.
struct PgProxy {
    address: std::net::SocketAddr,
    upstream: String,
    running: Option<(tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl PgProxy {
    async fn start(upstream: String) -> Self {
        let mut proxy = Self {
            address: "127.0.0.1:0".parse().unwrap(),
            upstream,
            running: None,
        };
        proxy.listen().await;
        proxy
    }

    /// Listens on the proxy's address (a free port the first time, the same one after).
    async fn listen(&mut self) {
        assert!(self.running.is_none());
        // SO_REUSEADDR: the connections cut by `stop` leave the port in TIME_WAIT.
        let mut attempts = 0;
        let listener = loop {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            match socket.bind(self.address).and_then(|()| socket.listen(128)) {
                Ok(listener) => break listener,
                Err(e) if attempts < 50 => {
                    attempts += 1;
                    tracing::debug!(error = %e, "proxy port not free yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebinding the proxy on {}: {e}", self.address),
            }
        };
        self.address = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let upstream = self.upstream.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                let upstream = upstream.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    // Both sockets are dropped (closed) when the proxy stops.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {},
                        () = stopped.cancelled() => {},
                    }
                });
            }
        });
        self.running = Some((stop, task));
    }

    /// Closes the port and cuts every open connection; returns once the port is closed.
    async fn stop(&mut self) {
        let (stop, task) = self.running.take().expect("the proxy runs");
        stop.cancel();
        task.await.unwrap();
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.running {
            stop.cancel();
        }
    }
}

/// `/readyz` until it answers `status` (bounded), with its JSON body.
async fn readyz_until(app: &TestApp, status: u16, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let resp = app.http.get(format!("{}/readyz", app.url)).send().await.unwrap();
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if code == status {
            return body;
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {code} after {within:?}, wanted {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_postgres_going_away_and_coming_back_without_a_restart() {
    // The server reaches its database only through the proxy.
    let admin = std::env::var("FLEETLOAD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = url::Url::parse(&admin).unwrap();
    let upstream = format!("{}:{}", admin.host_str().unwrap(), admin.port().unwrap_or(5432));
    let mut proxy = PgProxy::start(upstream).await;
    let port = proxy.address.port();
    let app = spawn_app_with(Backend::Postgres, |settings| {
        let direct = settings.database_url.as_ref().unwrap().expose_secret().to_owned();
        let mut via_proxy = url::Url::parse(&direct).unwrap();
        via_proxy.set_host(Some("127.0.0.1")).unwrap();
        via_proxy.set_port(Some(port)).unwrap();
        settings.database_url = Some(via_proxy.to_string().into());
    })
    .await;
    let body = readyz_until(&app, 200, Duration::from_secs(10)).await;
    assert_eq!(body["status"], "ready", "{body}");

    // PostgreSQL unreachable: 503 naming the database, the process alive.
    proxy.stop().await;
    let body = readyz_until(&app, 503, Duration::from_secs(15)).await;
    assert_unready_for_the_database(&body);
    let health = app.http.get(format!("{}/healthz", app.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // Back on the same address: ready again, same process, no restart.
    proxy.listen().await;
    assert_eq!(proxy.address.port(), port);
    let body = readyz_until(&app, 200, Duration::from_secs(30)).await;
    assert_eq!(
        body,
        json!({"status": "ready", "failed": [], "parts": {
            "database": "ok", "migrations": "ok", "object_store": "ok", "queue": "ok"}})
    );
    // And it serves from the database again, not only answers the probe.
    let token = app.alice();
    let data = app
        .gql(
            Some(&token),
            r#"{ uploads(tenantId: "demo", first: 1) { totalCount } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["data"]["uploads"]["totalCount"], 0, "{data}");
}

/// `serve` on PostgreSQL with objects on local disk warns at start that every process must
/// share the data dir; with the embedded database (one process) it does not.
#[tokio::test]
async fn local_storage_with_a_shared_database_is_warned_about_at_start() {
    const WARNING: &str = "must share this data dir";
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let pg = PgDatabase::create().await;
    let port = free_port();
    let shared = Process::spawn(
        "serve",
        &[
            ("FLEETLOAD_DATA_DIR", dir.path().join("pg").display().to_string()),
            ("FLEETLOAD_LISTEN", format!("127.0.0.1:{port}")),
            ("DATABASE_URL", pg.url.clone()),
        ],
        &dir.path().join("pg.log"),
    );
    wait_ready(&http, &format!("http://127.0.0.1:{port}/readyz"), &shared).await;
    assert!(shared.logs().contains(WARNING), "{}", shared.logs());

    let port = free_port();
    let embedded = Process::spawn(
        "serve",
        &[
            (
                "FLEETLOAD_DATA_DIR",
                dir.path().join("embedded").display().to_string(),
            ),
            ("FLEETLOAD_LISTEN", format!("127.0.0.1:{port}")),
        ],
        &dir.path().join("embedded.log"),
    );
    wait_ready(&http, &format!("http://127.0.0.1:{port}/readyz"), &embedded).await;
    assert!(!embedded.logs().contains(WARNING), "{}", embedded.logs());
}
