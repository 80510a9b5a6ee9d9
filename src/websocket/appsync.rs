//! AppSync's real-time WebSocket flavour at `/graphql/realtime`, where
//! `aws-appsync-subscription-link` and Amplify connect for a custom domain, so AppSync clients
//! switch to fleetload by URL alone.
//!
//! Matched against the clients' source (aws-mobile-appsync-sdk-js
//! `realtime-subscription-handshake-link.ts`; amplify-js `AWSWebSocketProvider`,
//! `AWSAppSyncRealTimeProvider`, `appsyncUrl.ts`):
//! - they offer the subprotocols `graphql-ws` and `header-<base64url, unpadded, of the JSON
//!   {Authorization, host}>`; `Authorization` is the bare JWT and `host` the host of the HTTP
//!   GraphQL URL. Older releases sent standard base64 in `?header=…&payload=e30=` instead.
//!   Either alphabet, padded or not, is accepted; `host` is not checked (behind a proxy or a
//!   custom domain it legitimately differs from ours).
//! - `connection_init` has no payload. They read `connection_ack`'s
//!   `payload.connectionTimeoutMs`, honour it only when ≥ 60000, and drop a connection that
//!   hears nothing (no `ka`) for that long.
//! - `connection_error`'s `payload.errors[0].errorCode` 400/401/403 stops their retries, so a
//!   refused token gets 401 (`errorType` UnauthorizedException, as AppSync answers).
//! - `start` carries `payload.data` as a JSON string of {query, variables} and
//!   `payload.extensions.authorization` (the same header object plus a user agent); they wait
//!   15 s for `start_ack`, forward a `data` message only when `payload.data` is set, and error
//!   the observer on `error` — so a refused subscription is an `error`, never an empty `data`.
//! - They ignore `complete`; it is sent anyway (after the final event, and in answer to `stop`
//!   as AppSync does) for clients that do read it.

use std::collections::HashMap;
use std::time::Duration;

use async_graphql::{Request, ServerError, Variables};
use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::ConnectionAuth;
use crate::auth::token_from_header;
use crate::graphql::{AppSchema, PresentedToken};
use crate::state::AppState;

/// What `connection_ack` promises: the client's silence limit (AppSync's own value).
const CONNECTION_TIMEOUT_MS: u64 = 300_000;

/// Upgrades a `/graphql/realtime` request; the token is checked at `connection_init`.
pub async fn accept(app: AppState, schema: AppSchema, request: axum::extract::Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let token = connection_token(&parts);
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // Only `graphql-ws` is ever selected: the `header-…` entry is a credential, not a protocol.
    upgrade
        .protocols(["graphql-ws"])
        .on_upgrade(move |socket| serve(socket, app, schema, token))
}

/// The token of the connection's header object: from the `header-…` subprotocol, else from
/// the `header` query parameter.
fn connection_token(parts: &Parts) -> Option<String> {
    let from_protocol = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("header-").map(str::to_owned));
    let from_query = || {
        url::form_urlencoded::parse(parts.uri.query()?.as_bytes())
            .find(|(key, _)| key == "header")
            .map(|(_, value)| value.into_owned())
    };
    let object = decode_header_object(&from_protocol.or_else(from_query)?)?;
    authorization_of(&object).map(str::to_owned)
}

/// base64 or base64url, padded or not, of a JSON object.
fn decode_header_object(encoded: &str) -> Option<Value> {
    let standard: String = encoded
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let bytes = STANDARD_NO_PAD.decode(standard).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

/// The token in a header object (`Authorization`, bare or `Bearer`).
fn authorization_of(object: &Value) -> Option<&str> {
    ["Authorization", "authorization"]
        .iter()
        .find_map(|key| object.get(key).and_then(Value::as_str))
        .and_then(token_from_header)
}

/// What subscription tasks hand the connection loop, which alone writes to the socket.
enum Out {
    Send(Value),
    /// Subscription `id` (started as `generation`) sent its last message.
    Finished(String, u64),
}

type Sink = SplitSink<WebSocket, Message>;

async fn send(sink: &mut Sink, message: Value) -> bool {
    sink.send(Message::Text(message.to_string().into())).await.is_ok()
}

async fn serve(socket: WebSocket, app: AppState, schema: AppSchema, token: Option<String>) {
    let (mut sink, mut stream) = socket.split();
    // The client sends `connection_init` first thing and waits for the answer.
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap_or_default();
                if message["type"] == "connection_init" {
                    break;
                }
                refuse(&mut sink, "BadRequestException", 400, "connection_init expected").await;
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            _ => return,
        }
    }
    let connection_token = match ConnectionAuth::check(&app.verifier, token.as_deref()).await {
        ConnectionAuth::User { token, .. } => token,
        ConnectionAuth::Anonymous | ConnectionAuth::Refused => {
            let message = "a valid token is required (Authorization in the header object)";
            refuse(&mut sink, "UnauthorizedException", 401, message).await;
            return;
        }
    };
    let ack = json!({"type": "connection_ack", "payload": {"connectionTimeoutMs": CONNECTION_TIMEOUT_MS}});
    if !send(&mut sink, ack).await {
        return;
    }

    let keepalive = Duration::from_millis(app.settings.realtime_keepalive_ms.max(10));
    // The first tick is immediate: AppSync also sends a `ka` right after the ack.
    let mut ka = tokio::time::interval(keepalive);
    let (out, mut outbox) = mpsc::unbounded_channel::<Out>();
    let mut running: HashMap<String, (u64, AbortHandle)> = HashMap::new();
    let mut generation = 0u64;
    loop {
        tokio::select! {
            _ = ka.tick() => {
                if !send(&mut sink, json!({"type": "ka"})).await {
                    break;
                }
            }
            Some(item) = outbox.recv() => match item {
                Out::Send(message) => {
                    if !send(&mut sink, message).await {
                        break;
                    }
                }
                Out::Finished(id, started) => {
                    if running.get(&id).is_some_and(|(g, _)| *g == started) {
                        running.remove(&id);
                    }
                }
            },
            incoming = stream.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                };
                let message: Value = serde_json::from_str(&text).unwrap_or_default();
                let id = message["id"].as_str().unwrap_or_default().to_owned();
                match message["type"].as_str() {
                    Some("start") if !id.is_empty() => {
                        if running.contains_key(&id) {
                            let error = error_message(&id, "BAD_USER_INPUT", "a subscription with this id is running");
                            let _ = out.send(Out::Send(error));
                            continue;
                        }
                        generation += 1;
                        let task = tokio::spawn(run_subscription(
                            schema.clone(),
                            id.clone(),
                            generation,
                            message["payload"].clone(),
                            connection_token.clone(),
                            out.clone(),
                        ));
                        running.insert(id, (generation, task.abort_handle()));
                    }
                    Some("stop") => {
                        // A subscription that already ended has sent its `complete`.
                        if let Some((_, task)) = running.remove(&id) {
                            task.abort();
                            if !send(&mut sink, json!({"type": "complete", "id": id})).await {
                                break;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    for (_, task) in running.into_values() {
        task.abort();
    }
}

/// `connection_error`, then close: the connection is not accepted.
async fn refuse(sink: &mut Sink, error_type: &str, code: u16, message: &str) {
    let error = json!({
        "type": "connection_error",
        "payload": {"errors": [{"errorType": error_type, "errorCode": code, "message": message}]},
    });
    let _ = send(sink, error).await;
    let _ = sink.close().await;
}

fn error_message(id: &str, error_type: &str, message: &str) -> Value {
    json!({
        "type": "error",
        "id": id,
        "payload": {"errors": [{"errorType": error_type, "message": message}]},
    })
}

/// One `start`: `error` if refused, else `start_ack`, a `data` per event and `complete`.
async fn run_subscription(
    schema: AppSchema,
    id: String,
    generation: u64,
    payload: Value,
    connection_token: SecretString,
    out: mpsc::UnboundedSender<Out>,
) {
    let send = |message: Value| {
        let _ = out.send(Out::Send(message));
    };
    match parse_start(&payload) {
        Err(reason) => send(error_message(&id, "BAD_USER_INPUT", &reason)),
        Ok((request, start_token)) => {
            // The start's own authorization counts when given (clients refresh it per start);
            // the resolver verifies it again either way.
            let token = start_token.unwrap_or(connection_token);
            let mut responses = schema.execute_stream(request.data(PresentedToken(token)));
            match responses.next().await {
                Some(first) if first.is_err() => send(errors_message(&id, &first.errors)),
                first => {
                    send(json!({"type": "start_ack", "id": id}));
                    let mut next = first;
                    while let Some(response) = next {
                        send(json!({"type": "data", "id": id, "payload": response}));
                        next = responses.next().await;
                    }
                    send(json!({"type": "complete", "id": id}));
                }
            }
        }
    }
    let _ = out.send(Out::Finished(id, generation));
}

/// The request of a `start` payload, and the token of its authorization, if any.
fn parse_start(payload: &Value) -> Result<(Request, Option<SecretString>), String> {
    let data = match &payload["data"] {
        Value::String(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| format!("payload.data is not a JSON string of {{query, variables}}: {e}"))?,
        object @ Value::Object(_) => object.clone(),
        _ => return Err("payload.data is missing".into()),
    };
    let query = data["query"].as_str().ok_or("payload.data has no query")?;
    let mut request = Request::new(query).variables(Variables::from_json(data["variables"].clone()));
    if let Some(name) = data["operationName"].as_str() {
        request = request.operation_name(name);
    }
    let token =
        authorization_of(&payload["extensions"]["authorization"]).map(|t| SecretString::from(t.to_owned()));
    Ok((request, token))
}

/// An `error` message from GraphQL errors, AppSync-style: `errorType` is the error's code.
fn errors_message(id: &str, errors: &[ServerError]) -> Value {
    let errors: Vec<Value> = errors
        .iter()
        .map(|e| {
            let code = e
                .extensions
                .as_ref()
                .and_then(|ext| ext.get("errorType"))
                .and_then(|v| v.clone().into_json().ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "INTERNAL_SERVER_ERROR".into());
            json!({"errorType": code, "message": e.message})
        })
        .collect();
    json!({"type": "error", "id": id, "payload": {"errors": errors}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn header_objects_decode_from_base64url_and_padded_base64() {
        let object = json!({"Authorization": "a.b.c", "host": "example.com:8080"}).to_string();
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&object);
        let standard = base64::engine::general_purpose::STANDARD.encode(&object);
        for encoded in [url_safe, standard] {
            let decoded = decode_header_object(&encoded).expect("decodes");
            assert_eq!(authorization_of(&decoded), Some("a.b.c"));
        }
        assert_eq!(decode_header_object("e30"), Some(json!({})));
        assert_eq!(decode_header_object("not base64!"), None);
    }

    #[test]
    fn a_start_payload_gives_its_request_and_token() {
        let payload = json!({
            "data": json!({"query": "subscription { x }", "variables": {"a": 1}}).to_string(),
            "extensions": {"authorization": {"Authorization": "Bearer t.o.k", "host": "h"}},
        });
        let (request, token) = parse_start(&payload).unwrap();
        assert_eq!(request.query, "subscription { x }");
        assert_eq!(token.map(|t| t.expose_secret().to_owned()), Some("t.o.k".into()));
        assert!(parse_start(&json!({"data": "{not json"})).is_err());
        assert!(parse_start(&json!({})).is_err());
    }
}
