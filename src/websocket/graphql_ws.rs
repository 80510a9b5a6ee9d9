//! `/graphql` over WebSocket, in both protocols Apollo clients speak: `graphql-transport-ws`
//! (graphql-ws, Apollo Client 3.5+) and legacy `graphql-ws` (subscriptions-transport-ws).
//! async-graphql runs the protocol; this module supplies the token check of
//! `connection_init` and turns a refusal into each protocol's answer.

use std::str::FromStr;

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, WebSocket, WebSocketProtocols, WsMessage};
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt, future};
use serde_json::Value;

use super::{ConnectionAuth, authorization_header, token_in_init_payload};
use crate::graphql::AppSchema;
use crate::state::AppState;

/// The message a refused `connection_init` fails with inside async-graphql, which closes
/// graphql-transport-ws with 1002 and this reason; we send 4403 instead, as graphql-ws
/// specifies for a forbidden connection.
const FORBIDDEN: &str = "Forbidden";

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
    let header_token = authorization_header(&parts.headers);
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve(socket, app, schema, protocol, header_token))
}

async fn serve(
    socket: axum::extract::ws::WebSocket,
    app: AppState,
    schema: AppSchema,
    protocol: WebSocketProtocols,
    header_token: Option<String>,
) {
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|msg| future::ready(msg.is_ok()))
        .filter_map(|msg| {
            future::ready(match msg {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => Some(msg.into_data()),
                _ => None,
            })
        });
    let on_init = move |payload: Value| async move {
        // The init payload wins over the upgrade request's header: it is what graphql-ws
        // clients (browsers cannot set WebSocket headers) send.
        let token = token_in_init_payload(&payload).map(str::to_owned).or_else(|| {
            header_token
                .as_deref()
                .and_then(crate::auth::token_from_header)
                .map(str::to_owned)
        });
        match ConnectionAuth::check(&app.verifier, token.as_deref()).await {
            ConnectionAuth::Refused => Err(async_graphql::Error::new(FORBIDDEN)),
            auth => Ok(auth.into_data()),
        }
    };
    let messages = WebSocket::new(schema, input, protocol).on_connection_init(on_init);
    futures::pin_mut!(messages);
    while let Some(message) = messages.next().await {
        let frame = match message {
            WsMessage::Text(text) => Message::Text(text.into()),
            WsMessage::Close(1002, reason) if reason == FORBIDDEN => Message::Close(Some(CloseFrame {
                code: 4403,
                reason: FORBIDDEN.into(),
            })),
            WsMessage::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        };
        if sink.send(frame).await.is_err() {
            return;
        }
    }
    // Legacy graphql-ws ends a refused connection with `connection_error` and no close frame.
    let _ = sink.close().await;
}
