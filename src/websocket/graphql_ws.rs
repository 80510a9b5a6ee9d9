//! `/graphql` over WebSocket, in both protocols Apollo clients speak: `graphql-transport-ws`
//! (graphql-ws, Apollo Client 3.5+) and legacy `graphql-ws` (subscriptions-transport-ws).
//! The protocols are run here rather than by async-graphql, whose implementation has none of
//! the limits (init timeout, subscriptions per connection, bounded outgoing queue) and not
//! graphql-transport-ws's close codes (4401, 4403, 4409).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use async_graphql::Data;
use async_graphql::http::WebSocketProtocols;
use axum::extract::FromRequestParts;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::connection::{self, Inbound, Incoming, Outbox};
use super::limits::{Limits, WsError, sleep_until_idle};
use super::{ConnectionAuth, authorization_header, token_in_init_payload};
use crate::graphql::AppSchema;
use crate::state::AppState;

/// Upgrades a `/graphql` request that asks for one of the two protocols.
pub async fn accept(app: AppState, schema: AppSchema, request: axum::extract::Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let Some(protocol) = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|offered| {
            offered
                .split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        })
    else {
        return (
            StatusCode::BAD_REQUEST,
            "offer the graphql-transport-ws or graphql-ws subprotocol",
        )
            .into_response();
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let slot = match super::admit(&app, &parts) {
        Ok(slot) => slot,
        Err(refused) => return super::refusal(refused),
    };
    let header_token = authorization_header(&parts.headers);
    let limits = Limits::from_settings(&app.settings);
    let registry = app.websockets.clone();
    let label = protocol_label(protocol);
    // A child of the upgrade request's span: the connection's lines carry its request id.
    let span = tracing::info_span!("websocket", protocol = label);
    // The protocol selected is the one this connection will speak.
    limits
        .apply(upgrade)
        .protocols([protocol.sec_websocket_protocol()])
        .on_upgrade(move |socket| {
            registry.track(
                crate::metrics::Open::connection(label)
                    .around(async move {
                        serve(socket, app, schema, protocol, header_token, limits).await;
                        drop(slot);
                    })
                    .instrument(span),
            )
        })
}

/// The `protocol` label of a `/graphql` connection.
fn protocol_label(protocol: WebSocketProtocols) -> &'static str {
    if protocol == WebSocketProtocols::SubscriptionsTransportWS {
        "graphql-ws"
    } else {
        "graphql-transport-ws"
    }
}

async fn serve(
    socket: WebSocket,
    app: AppState,
    schema: AppSchema,
    protocol: WebSocketProtocols,
    header_token: Option<String>,
    limits: Limits,
) {
    let (outbox, mut incoming, writer) = connection::open(socket, &limits);
    let (finished, finishing) = mpsc::unbounded_channel();
    let shutdown = app.websockets.shutdown_token();
    let mut session = Session {
        shutdown,
        idle_since: Instant::now(),
        app,
        schema,
        legacy: protocol == WebSocketProtocols::SubscriptionsTransportWS,
        header_token,
        limits,
        outbox,
        init_received: false,
        data: None,
        running: HashMap::new(),
        generation: 0,
        tasks: JoinSet::new(),
        finished,
    };
    let protocol = async move {
        let end = session.run(&mut incoming, finishing).await;
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

/// What handling one message asks of the connection.
enum Next {
    Continue,
    Refuse(WsError),
    /// Legacy `connection_terminate`.
    Terminate,
}

struct Session {
    /// Cancelled when the server stops.
    shutdown: CancellationToken,
    /// Since when no subscription has run and the client has said nothing.
    idle_since: Instant,
    app: AppState,
    schema: AppSchema,
    /// subscriptions-transport-ws rather than graphql-transport-ws.
    legacy: bool,
    header_token: Option<String>,
    limits: Limits,
    outbox: Outbox,
    init_received: bool,
    /// The connection's context data, once `connection_init` is acknowledged.
    data: Option<Arc<Data>>,
    /// Running subscriptions: id → (generation, task).
    running: HashMap<String, (u64, AbortHandle)>,
    generation: u64,
    tasks: JoinSet<()>,
    finished: mpsc::UnboundedSender<(String, u64)>,
}

impl Session {
    async fn run(
        &mut self,
        incoming: &mut Incoming,
        mut finishing: mpsc::UnboundedReceiver<(String, u64)>,
    ) -> End {
        let init_deadline = Instant::now() + self.limits.init_timeout;
        loop {
            let inbound = tokio::select! {
                biased;
                _ = self.outbox.closed() => return End::Gone,
                _ = self.shutdown.cancelled() => return self.refuse(WsError::GoingAway),
                // Before the client's next message: a subscription that completed frees its
                // id before the client, having read the `complete`, can reuse it.
                Some((id, generation)) = finishing.recv() => {
                    if self.running.get(&id).is_some_and(|(g, _)| *g == generation) {
                        self.running.remove(&id);
                        if self.running.is_empty() {
                            self.idle_since = Instant::now();
                        }
                    }
                    while self.tasks.try_join_next().is_some() {}
                    continue;
                }
                _ = tokio::time::sleep_until(init_deadline), if !self.init_received => {
                    return self.refuse(WsError::InitTimeout);
                }
                _ = sleep_until_idle(self.idle_since, self.limits.idle_timeout),
                    if self.data.is_some() && self.running.is_empty() => {
                    return self.refuse(WsError::IdleTimeout);
                }
                inbound = incoming.next() => inbound,
            };
            let text = match inbound {
                Inbound::Text(text) => {
                    // Any message counts as activity, a `ping` included: the server's own
                    // messages never do.
                    self.idle_since = Instant::now();
                    text
                }
                Inbound::TooLarge => return self.refuse(WsError::MessageTooLarge),
                Inbound::Closed => return End::Gone,
            };
            let next = match serde_json::from_str::<Value>(&text) {
                Ok(message) if message.is_object() => self.handle(message).await,
                _ => self.invalid("Invalid message received"),
            };
            match next {
                Next::Continue => {}
                Next::Refuse(error) => return self.refuse(error),
                Next::Terminate => {
                    self.outbox.close_with(1000, "Normal Closure");
                    return End::WeClosed;
                }
            }
        }
    }

    async fn handle(&mut self, message: Value) -> Next {
        let id = message["id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        match (message["type"].as_str().unwrap_or_default(), self.legacy) {
            ("connection_init", _) => self.init(&message["payload"]).await,
            ("ping", false) => {
                self.outbox.send_json(&json!({"type": "pong"}));
                Next::Continue
            }
            ("pong", false) => Next::Continue,
            ("subscribe", false) | ("start", true) => match id {
                Some(id) if message["payload"].is_object() => self.subscribe(id, message["payload"].clone()),
                _ => self.invalid("Invalid message received"),
            },
            ("complete", false) | ("stop", true) => {
                let Some(id) = id else {
                    return self.invalid("Invalid message received");
                };
                if let Some((_, task)) = self.running.remove(&id) {
                    task.abort();
                    // subscriptions-transport-ws confirms a stop; graphql-ws does not.
                    if self.legacy {
                        self.outbox.send_json(&json!({"type": "complete", "id": id}));
                    }
                }
                Next::Continue
            }
            ("connection_terminate", true) => Next::Terminate,
            (other, _) => self.invalid(&format!("Unexpected message of type {other} received")),
        }
    }

    /// graphql-transport-ws closes with 4400 on a message it does not understand; legacy
    /// graphql-ws answers an `error` and carries on, as subscriptions-transport-ws does.
    fn invalid(&self, reason: &str) -> Next {
        if self.legacy {
            let error = WsError::BadMessage(reason.to_owned());
            self.outbox
                .send_json(&json!({"type": "error", "payload": error.graphql_error()}));
            Next::Continue
        } else {
            Next::Refuse(WsError::BadMessage(reason.to_owned()))
        }
    }

    async fn init(&mut self, payload: &Value) -> Next {
        if self.init_received {
            return Next::Refuse(WsError::TooManyInits);
        }
        self.init_received = true;
        // The init payload wins over the upgrade request's header: it is what graphql-ws
        // clients (browsers cannot set WebSocket headers) send.
        let token = token_in_init_payload(payload).map(str::to_owned).or_else(|| {
            self.header_token
                .as_deref()
                .and_then(crate::auth::token_from_header)
                .map(str::to_owned)
        });
        match ConnectionAuth::check(&self.app.verifier, token.as_deref()).await {
            auth @ ConnectionAuth::User { .. } => {
                self.data = Some(Arc::new(auth.into_data()));
                self.outbox.send_json(&json!({"type": "connection_ack"}));
                Next::Continue
            }
            // Every operation needs a user: a connection without one is refused at once, as
            // AppSync refuses it, rather than acknowledged to fail each subscription.
            ConnectionAuth::Anonymous | ConnectionAuth::Refused => Next::Refuse(WsError::Unauthenticated),
        }
    }

    fn subscribe(&mut self, id: String, payload: Value) -> Next {
        let Some(data) = self.data.clone() else {
            return Next::Refuse(WsError::NotAcknowledged);
        };
        if let Some((_, task)) = self.running.get(&id) {
            if !self.legacy {
                return Next::Refuse(WsError::DuplicateId(id));
            }
            // subscriptions-transport-ws restarts an operation under a reused id.
            task.abort();
            self.running.remove(&id);
        }
        if self.running.len() >= self.limits.max_subscriptions {
            let error = WsError::TooManySubscriptions(self.limits.max_subscriptions);
            self.send_error(&id, &[error.graphql_error()]);
            return Next::Continue;
        }
        let request = match serde_json::from_value::<async_graphql::Request>(payload) {
            Ok(request) => request,
            Err(err) => {
                if self.legacy {
                    let error = WsError::BadMessage(format!("invalid operation: {err}"));
                    self.send_error(&id, &[error.graphql_error()]);
                    return Next::Continue;
                }
                return Next::Refuse(WsError::BadMessage("Invalid message received".into()));
            }
        };
        self.generation += 1;
        let label = if self.legacy {
            "graphql-ws"
        } else {
            "graphql-transport-ws"
        };
        let task = self.tasks.spawn(
            crate::metrics::Open::subscription(label)
                .around(run_subscription(
                    self.schema.clone(),
                    self.legacy,
                    id.clone(),
                    self.generation,
                    request,
                    data,
                    self.outbox.clone(),
                    self.finished.clone(),
                ))
                .in_current_span(),
        );
        self.running.insert(id, (self.generation, task));
        Next::Continue
    }

    /// graphql-transport-ws's `error` (a list of GraphQL errors) or legacy's (one error).
    fn send_error(&self, id: &str, errors: &[Value]) {
        let payload = if self.legacy {
            errors.first().cloned().unwrap_or_default()
        } else {
            Value::from(errors.to_vec())
        };
        self.outbox
            .send_json(&json!({"type": "error", "id": id, "payload": payload}));
    }

    /// Ends the connection for `error`: legacy clients first get `connection_error` (they
    /// know no close codes) for what concerns the connection as a whole.
    fn refuse(&self, error: WsError) -> End {
        tracing::info!(code = error.code(), "WebSocket connection refused");
        if self.legacy && error.announced() {
            self.outbox
                .send_json(&json!({"type": "connection_error", "payload": error.graphql_error()}));
        }
        self.outbox.close(&error);
        End::WeClosed
    }
}

/// One subscription: its responses as `next` (legacy: `data`), then `complete`; a request
/// refused before execution (parse, validation) is graphql-transport-ws's `error` instead.
#[allow(clippy::too_many_arguments)]
async fn run_subscription(
    schema: AppSchema,
    legacy: bool,
    id: String,
    generation: u64,
    request: async_graphql::Request,
    data: Arc<Data>,
    outbox: Outbox,
    finished: mpsc::UnboundedSender<(String, u64)>,
) {
    let mut responses = schema.execute_stream_with_session_data(request, data);
    let mut first = true;
    while let Some(response) = responses.next().await {
        let before_execution = response.data == async_graphql::Value::Null
            && !response.errors.is_empty()
            && response.errors.iter().all(|e| e.path.is_empty());
        if first && before_execution && !legacy {
            let _ = finished.send((id.clone(), generation));
            outbox.send_json(&json!({"type": "error", "id": id, "payload": response.errors}));
            return;
        }
        first = false;
        let kind = if legacy { "data" } else { "next" };
        if !outbox.send_json(&json!({"type": kind, "id": id, "payload": response})) {
            return;
        }
    }
    // The id is free before the client can read `complete` and reuse it.
    let _ = finished.send((id.clone(), generation));
    outbox.send_json(&json!({"type": "complete", "id": id}));
}
