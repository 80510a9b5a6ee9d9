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
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::ConnectionAuth;
use super::connection::{self, Inbound, Incoming, Outbox};
use super::limits::{Limits, WsError, appsync_error_type, sleep_until_idle};
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
    let slot = match super::admit(&app, &parts) {
        Ok(slot) => slot,
        Err(refused) => return super::refusal(refused),
    };
    let limits = Limits::from_settings(&app.settings);
    let registry = app.websockets.clone();
    // A child of the upgrade request's span: the connection's lines carry its request id.
    let span = tracing::info_span!("websocket", protocol = "appsync");
    // Only `graphql-ws` is ever selected: the `header-…` entry is a credential, not a protocol.
    limits
        .apply(upgrade)
        .protocols(["graphql-ws"])
        .on_upgrade(move |socket| {
            registry.track(
                crate::metrics::Open::connection("appsync")
                    .around(async move {
                        serve(socket, app, schema, token, limits).await;
                        drop(slot);
                    })
                    .instrument(span),
            )
        })
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

async fn serve(socket: WebSocket, app: AppState, schema: AppSchema, token: Option<String>, limits: Limits) {
    let (outbox, mut incoming, writer) = connection::open(socket, &limits);
    let protocol = async move {
        let (finished, finishing) = mpsc::unbounded_channel();
        let mut session = Session {
            schema,
            limits,
            outbox,
            running: HashMap::new(),
            generation: 0,
            tasks: JoinSet::new(),
            finished,
        };
        let end = session.run(&app, token, &mut incoming, finishing).await;
        // Subscriptions hold outboxes: once they are gone, the writer ends (answering the
        // client's close frame if that is how the connection ended).
        session.tasks.shutdown().await;
        drop(session);
        if end == End::WeClosed {
            incoming.finish().await;
        }
    };
    tokio::join!(writer, protocol);
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// We sent a close frame: the client's answer is awaited.
    WeClosed,
    /// The client closed, or the connection is gone.
    Gone,
}

struct Session {
    schema: AppSchema,
    limits: Limits,
    outbox: Outbox,
    /// Running subscriptions: id → (generation, task).
    running: HashMap<String, (u64, AbortHandle)>,
    generation: u64,
    tasks: JoinSet<()>,
    finished: mpsc::UnboundedSender<(String, u64)>,
}

impl Session {
    async fn run(
        &mut self,
        app: &AppState,
        token: Option<String>,
        incoming: &mut Incoming,
        mut finishing: mpsc::UnboundedReceiver<(String, u64)>,
    ) -> End {
        // The client sends `connection_init` first thing and waits for the answer.
        let init_deadline = Instant::now() + self.limits.init_timeout;
        let shutdown = app.websockets.shutdown_token();
        let first = tokio::select! {
            biased;
            _ = self.outbox.closed() => return End::Gone,
            _ = shutdown.cancelled() => return self.refuse(WsError::GoingAway),
            _ = tokio::time::sleep_until(init_deadline) => return self.refuse(WsError::InitTimeout),
            first = incoming.next() => first,
        };
        match first {
            Inbound::Text(text) if message_type(&text).as_deref() == Some("connection_init") => {}
            Inbound::Text(_) => {
                return self.refuse(WsError::BadMessage("connection_init expected".into()));
            }
            Inbound::TooLarge => return self.refuse(WsError::MessageTooLarge),
            Inbound::Closed => return End::Gone,
        }
        let connection_token = match ConnectionAuth::check(&app.verifier, token.as_deref()).await {
            ConnectionAuth::User { token, .. } => token,
            ConnectionAuth::Anonymous | ConnectionAuth::Refused => {
                return self.refuse(WsError::Unauthenticated);
            }
        };
        let ack =
            json!({"type": "connection_ack", "payload": {"connectionTimeoutMs": CONNECTION_TIMEOUT_MS}});
        self.outbox.send_json(&ack);

        let keepalive = Duration::from_millis(app.settings.realtime_keepalive_ms.max(10));
        // The first tick is immediate: AppSync also sends a `ka` right after the ack.
        let mut ka = tokio::time::interval(keepalive);
        // Our `ka`s do not count as activity; the client's messages and its subscriptions do.
        let mut idle_since = Instant::now();
        loop {
            let inbound = tokio::select! {
                biased;
                _ = self.outbox.closed() => return End::Gone,
                _ = shutdown.cancelled() => return self.refuse(WsError::GoingAway),
                // Before the client's next message: a subscription that completed frees its
                // id before the client, having read the `complete`, can reuse it.
                Some((id, generation)) = finishing.recv() => {
                    if self.running.get(&id).is_some_and(|(g, _)| *g == generation) {
                        self.running.remove(&id);
                        if self.running.is_empty() {
                            idle_since = Instant::now();
                        }
                    }
                    while self.tasks.try_join_next().is_some() {}
                    continue;
                }
                _ = sleep_until_idle(idle_since, self.limits.idle_timeout), if self.running.is_empty() => {
                    return self.refuse(WsError::IdleTimeout);
                }
                _ = ka.tick() => {
                    self.outbox.send_json(&json!({"type": "ka"}));
                    continue;
                }
                inbound = incoming.next() => inbound,
            };
            let text = match inbound {
                Inbound::Text(text) => {
                    idle_since = Instant::now();
                    text
                }
                Inbound::TooLarge => return self.refuse(WsError::MessageTooLarge),
                Inbound::Closed => return End::Gone,
            };
            let message: Value = serde_json::from_str(&text).unwrap_or_default();
            let id = message["id"].as_str().unwrap_or_default().to_owned();
            match message["type"].as_str() {
                Some("start") if !id.is_empty() => self.start(id, &message["payload"], &connection_token),
                Some("stop") => {
                    // A subscription that already ended has sent its `complete`.
                    if let Some((_, task)) = self.running.remove(&id) {
                        task.abort();
                        self.outbox.send_json(&json!({"type": "complete", "id": id}));
                    }
                }
                // AppSync's answer to anything else, `connection_init` again included.
                other => {
                    let what = other.unwrap_or("unknown");
                    let error =
                        WsError::BadMessage(format!("{what} not supported through the realtime channel"));
                    let mut answer = refusal_message(&id, &error);
                    if id.is_empty() {
                        answer.as_object_mut().map(|m| m.remove("id"));
                    }
                    self.outbox.send_json(&answer);
                }
            }
        }
    }

    fn start(&mut self, id: String, payload: &Value, connection_token: &SecretString) {
        if self.running.contains_key(&id) {
            self.outbox
                .send_json(&refusal_message(&id, &WsError::DuplicateId(id.clone())));
            return;
        }
        if self.running.len() >= self.limits.max_subscriptions {
            let error = WsError::TooManySubscriptions(self.limits.max_subscriptions);
            self.outbox.send_json(&refusal_message(&id, &error));
            return;
        }
        self.generation += 1;
        let task = self.tasks.spawn(
            crate::metrics::Open::subscription("appsync")
                .around(run_subscription(
                    self.schema.clone(),
                    id.clone(),
                    self.generation,
                    payload.clone(),
                    connection_token.clone(),
                    self.outbox.clone(),
                    self.finished.clone(),
                ))
                .in_current_span(),
        );
        self.running.insert(id, (self.generation, task));
    }

    /// `connection_error` (AppSync's errorCode 401 for a refused token, which stops the
    /// clients' retries), then the close frame.
    fn refuse(&self, error: WsError) -> End {
        tracing::info!(code = error.code(), "AppSync WebSocket connection refused");
        if error.announced() {
            let error_code = if error == WsError::Unauthenticated {
                401
            } else {
                400
            };
            let message = match &error {
                WsError::Unauthenticated => {
                    "a valid token is required (Authorization in the header object)".to_owned()
                }
                other => other.message(),
            };
            self.outbox.send_json(&json!({
                "type": "connection_error",
                "payload": {"errors": [{
                    "errorType": error.appsync_type(),
                    "errorCode": error_code,
                    "message": message,
                    "extensions": {"code": error.code()},
                }]},
            }));
        }
        self.outbox.close(&error);
        End::WeClosed
    }
}

fn message_type(text: &str) -> Option<String> {
    let message: Value = serde_json::from_str(text).ok()?;
    message["type"].as_str().map(str::to_owned)
}

/// An `error` message for subscription `id` refused by this layer.
fn refusal_message(id: &str, error: &WsError) -> Value {
    json!({
        "type": "error",
        "id": id,
        "payload": {"errors": [{
            "errorType": error.appsync_type(),
            "message": error.message(),
            "extensions": {"code": error.code()},
        }]},
    })
}

fn error_message(id: &str, code: &str, message: &str) -> Value {
    json!({
        "type": "error",
        "id": id,
        "payload": {"errors": [{
            "errorType": appsync_error_type(code),
            "message": message,
            "extensions": {"code": code},
        }]},
    })
}

/// One `start`: `error` if refused, else `start_ack`, a `data` per event and `complete`.
async fn run_subscription(
    schema: AppSchema,
    id: String,
    generation: u64,
    payload: Value,
    connection_token: SecretString,
    outbox: Outbox,
    finished: mpsc::UnboundedSender<(String, u64)>,
) {
    // The id is free before the client can read the last message and reuse it.
    let last = |message: Value| {
        let _ = finished.send((id.clone(), generation));
        outbox.send_json(&message);
    };
    match parse_start(&payload) {
        Err(reason) => last(error_message(&id, "BAD_USER_INPUT", &reason)),
        Ok((request, start_token)) => {
            // The start's own authorization counts when given (clients refresh it per start);
            // the resolver verifies it again either way.
            let token = start_token.unwrap_or(connection_token);
            let mut responses = schema.execute_stream(request.data(PresentedToken(token)));
            match responses.next().await {
                Some(first) if first.is_err() => last(errors_message(&id, &first.errors)),
                first => {
                    outbox.send_json(&json!({"type": "start_ack", "id": id}));
                    let mut next = first;
                    while let Some(response) = next {
                        if !outbox.send_json(&json!({"type": "data", "id": id, "payload": response})) {
                            return;
                        }
                        next = responses.next().await;
                    }
                    last(json!({"type": "complete", "id": id}));
                }
            }
        }
    }
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
            json!({"errorType": appsync_error_type(&code), "message": e.message, "extensions": {"code": code}})
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
