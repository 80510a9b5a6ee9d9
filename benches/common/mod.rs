//! Helpers every bench shares: a throwaway PostgreSQL database, peak memory, a browser-like upload.
#![allow(dead_code)] // each bench uses some of them

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The process's peak resident memory so far (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

pub async fn fresh_pg_database(admin: &str) -> Option<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.ok()?;
    let name = format!("flbench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .ok()?;
    Some(format!("{}/{name}", admin.rsplit_once('/')?.0))
}

pub async fn drop_pg_database(admin: &str, url: &str) {
    use sqlx::Connection;
    let name = url.rsplit('/').next().unwrap();
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

pub async fn upload(http: &reqwest::Client, file_upload: &Value, bytes: Vec<u8>) {
    let fields: Value = serde_json::from_str(file_upload["fields"].as_str().unwrap()).unwrap();
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields.as_object().unwrap() {
        form = form.text(k.clone(), v.as_str().unwrap().to_owned());
    }
    form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name("d.csv"));
    let resp = http
        .post(file_upload["url"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// A server started on port 0 with `settings`, and a token for alice (demo, READ+UPDATE).
pub struct Started {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub base: String,
    pub token: String,
    pub state: fleetload::state::AppState,
    /// Stops the server and its workers (dropped: they run until the bench ends).
    pub stop: Stop,
}

pub struct Stop {
    signal: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Stop {
    /// Stops the server and waits until it has let go of everything, so the next run's
    /// memory is its own.
    pub async fn now(self) {
        let _ = self.signal.send(());
        let _ = self.server.await;
    }
}

pub async fn start(settings: fleetload::config::Settings) -> Started {
    start_with_aws(settings, None).await
}

/// As [`start`], with the AWS configuration given (a local SQS or S3 endpoint).
pub async fn start_with_aws(
    mut settings: fleetload::config::Settings,
    aws: Option<aws_config::SdkConfig>,
) -> Started {
    use fleetload::auth::{Permission, mint_token};
    settings.listen = "127.0.0.1:0".parse().unwrap();
    let secret = fleetload::startup::jwt_secret(&settings).unwrap();
    let permissions = [Permission::Read, Permission::Update];
    let token = mint_token(&secret, "alice", "demo", &permissions, "fleetload", None, 3600).unwrap();
    let app = fleetload::startup::Application::build_with_aws(settings, aws)
        .await
        .unwrap();
    let base = app.public_url().as_str().trim_end_matches('/').to_owned();
    let state = app.state().clone();
    let (signal, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        // Dropped without a send: run for the rest of the bench.
        if stopped.await.is_err() {
            std::future::pending::<()>().await;
        }
    }));
    Started {
        base,
        token,
        state,
        stop: Stop { signal, server },
    }
}

const PROGRESS_SUBSCRIPTION: &str = "subscription($id: String!) { uploadProgress(tenantId: \"demo\", uploadId: $id) { status processedRows } }";

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws subscription to the upload's progress, past its first event.
pub async fn subscribe_progress(base: &str, token: &str, id: &str) -> Ws {
    let mut request = format!("{}/graphql", base.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(
        json!({"type": "connection_init", "payload": {"Authorization": token}}),
    ))
    .await
    .unwrap();
    ws.send(send(
        json!({"id": "1", "type": "subscribe", "payload": {"query": PROGRESS_SUBSCRIPTION, "variables": {"id": id}}}),
    ))
    .await
    .unwrap();
    let mut seen = 0;
    while seen < 2 {
        if let Some(Ok(Message::Text(_))) = ws.next().await {
            seen += 1; // connection_ack, then the current (PREPARED) state
        }
    }
    ws
}
