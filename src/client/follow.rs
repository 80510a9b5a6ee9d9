//! Following an upload to its final state: the `uploadProgress` subscription over
//! graphql-transport-ws, or (for `wss://`, which this client does not speak) polling, shown
//! as a progress bar on a terminal and as plain lines elsewhere.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::listing::plain;
use super::{Client, ClientError, graphql_error};

const PROGRESS_FIELDS: &str = "uploadId status totalRows processedRows succeeded failed percentage \
    rowsPerSecond etaSeconds recentErrors { rowNumber deviceUid errorCode message }";

/// As long as the HTTP client waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const FINAL: [&str; 4] = ["COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED"];

/// Follows the upload until its final state and returns that state.
pub async fn follow(
    client: &Client,
    tenant: &str,
    upload_id: &str,
    display: &mut Display,
) -> Result<Value, ClientError> {
    let last = if client.ws_url().scheme() == "ws" {
        subscribe(client, tenant, upload_id, display).await?
    } else {
        poll(client, tenant, upload_id, display).await?
    };
    display.finish(&last);
    Ok(last)
}

async fn subscribe(
    client: &Client,
    tenant: &str,
    upload_id: &str,
    display: &mut Display,
) -> Result<Value, ClientError> {
    let url = client.ws_url();
    let closed = |e: tokio_tungstenite::tungstenite::Error| {
        ClientError::new("SUBSCRIPTION_FAILED", format!("{url}: {e}"))
    };
    let mut request = url.as_str().into_client_request().map_err(closed)?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| ClientError::new("SUBSCRIPTION_FAILED", format!("{url}: no answer in time")))?
        .map_err(closed)?;
    let init = json!({ "type": "connection_init", "payload": { "Authorization": client.authorization } });
    ws.send(Message::text(init.to_string())).await.map_err(closed)?;
    let mut last = Value::Null;
    while let Some(message) = ws.next().await {
        let text = match message.map_err(closed)? {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let (code, reason) =
                    frame.map_or((0, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                let code_name = if code == 4403 {
                    "UNAUTHENTICATED"
                } else {
                    "SUBSCRIPTION_FAILED"
                };
                return Err(ClientError::new(
                    code_name,
                    format!("the server closed the subscription: {code} {reason}"),
                ));
            }
            _ => continue,
        };
        let message: Value = serde_json::from_str(text.as_str())
            .map_err(|e| ClientError::new("BAD_RESPONSE", e.to_string()))?;
        match message["type"].as_str().unwrap_or("") {
            "connection_ack" => {
                let subscribe = json!({ "id": "1", "type": "subscribe", "payload": {
                    "query": format!("subscription($t: String!, $id: String!) {{ uploadProgress(tenantId: $t, uploadId: $id) {{ {PROGRESS_FIELDS} }} }}"),
                    "variables": { "t": tenant, "id": upload_id } } });
                ws.send(Message::text(subscribe.to_string()))
                    .await
                    .map_err(closed)?;
            }
            "ping" => {
                ws.send(Message::text(json!({ "type": "pong" }).to_string()))
                    .await
                    .map_err(closed)?;
            }
            "next" => {
                let payload = &message["payload"];
                if let Some(error) = payload["errors"].as_array().and_then(|e| e.first()) {
                    return Err(graphql_error(error));
                }
                last = payload["data"]["uploadProgress"].clone();
                display.update(&last);
            }
            "error" => {
                let error = message["payload"]
                    .as_array()
                    .and_then(|e| e.first())
                    .cloned()
                    .unwrap_or_default();
                return Err(graphql_error(&error));
            }
            "complete" => {
                let _ = ws.close(None).await;
                break;
            }
            _ => {}
        }
    }
    if FINAL.contains(&plain(&last["status"]).as_str()) {
        Ok(last)
    } else {
        Err(ClientError::new(
            "SUBSCRIPTION_FAILED",
            "the subscription ended before the upload did",
        ))
    }
}

async fn poll(
    client: &Client,
    tenant: &str,
    upload_id: &str,
    display: &mut Display,
) -> Result<Value, ClientError> {
    let query = format!(
        "query($t: String!, $id: String!) {{ upload(tenantId: $t, uploadId: $id) {{ progress {{ {PROGRESS_FIELDS} }} }} }}"
    );
    loop {
        let data = client
            .gql(&query, json!({ "t": tenant, "id": upload_id }))
            .await?;
        let progress = data["upload"]["progress"].clone();
        if progress.is_null() {
            return Err(ClientError::new(
                "UPLOAD_NOT_FOUND",
                format!("no upload {upload_id}"),
            ));
        }
        display.update(&progress);
        if FINAL.contains(&plain(&progress["status"]).as_str()) {
            return Ok(progress);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How progress is shown: a bar on a terminal, a line at most every second elsewhere.
pub enum Display {
    Bar(ProgressBar),
    Lines {
        printed: Option<Instant>,
        status: String,
    },
}

impl Display {
    pub fn bar(rows: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(rows), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix:<10} [{bar:32}] {pos}/{len} rows {percent:>3}% · {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix("QUEUED");
        bar.enable_steady_tick(Duration::from_millis(200));
        Self::Bar(bar)
    }

    pub fn lines() -> Self {
        Self::Lines {
            printed: None,
            status: String::new(),
        }
    }

    fn update(&mut self, progress: &Value) {
        match self {
            Self::Bar(bar) => {
                if let Some(total) = progress["totalRows"].as_u64() {
                    bar.set_length(total);
                }
                bar.set_position(progress["processedRows"].as_u64().unwrap_or(0));
                bar.set_prefix(plain(&progress["status"]));
                bar.set_message(format!(
                    "{} ok · {} failed · {} · ETA {}",
                    plain(&progress["succeeded"]),
                    plain(&progress["failed"]),
                    rate(&progress["rowsPerSecond"]),
                    eta(&progress["etaSeconds"]),
                ));
            }
            Self::Lines { printed, status } => {
                let now_status = plain(&progress["status"]);
                let due = printed.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
                if due || now_status != *status {
                    println!("{}", line(progress));
                    *printed = Some(Instant::now());
                    *status = now_status;
                }
            }
        }
    }

    /// The last state was shown by `update` (a line per status change); the bar only stops.
    fn finish(&mut self, last: &Value) {
        if let Self::Bar(bar) = self {
            bar.set_position(last["processedRows"].as_u64().unwrap_or(0));
            bar.finish();
        }
    }
}

fn line(p: &Value) -> String {
    format!(
        "{} {}/{} rows ({:.1} %), {} ok, {} failed, {}, ETA {}",
        plain(&p["status"]),
        plain(&p["processedRows"]),
        plain(&p["totalRows"]),
        p["percentage"].as_f64().unwrap_or(0.0),
        plain(&p["succeeded"]),
        plain(&p["failed"]),
        rate(&p["rowsPerSecond"]),
        eta(&p["etaSeconds"]),
    )
}

fn rate(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "- rows/s".to_owned(), |r| format!("{r:.0} rows/s"))
}

fn eta(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.0}s"))
}
