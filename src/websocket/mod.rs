//! GraphQL subscriptions over WebSocket: `graphql-transport-ws` and legacy `graphql-ws` on
//! `/graphql`, and AppSync's real-time flavour on `/graphql/realtime`. What they share is how
//! a connection's token is found and checked, its plumbing and its limits.

pub mod appsync;
mod connection;
pub mod graphql_ws;
pub mod limits;
pub mod registry;

use std::net::SocketAddr;

use async_graphql::Data;
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde_json::{Value, json};

use self::registry::{Refused, Slot};
use crate::auth::{Identity, Verifier, token_from_header};
use crate::graphql::{Auth, PresentedToken};
use crate::state::AppState;

/// Takes a connection slot for the request's peer.
pub fn admit(app: &AppState, parts: &Parts) -> Result<Slot, Refused> {
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    app.websockets.admit(ip)
}

/// The HTTP 503 that refuses an upgrade, with the typed code in a JSON body, as GraphQL
/// errors carry it.
pub fn refusal(refused: Refused) -> Response {
    tracing::info!(code = refused.code(), "WebSocket upgrade refused");
    let body = json!({"errors": [{
        "message": refused.message(),
        "extensions": {"code": refused.code(), "errorType": refused.code()},
    }]});
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Whether a request asks to become a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The `Authorization` header of a request, as sent.
pub fn authorization_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The token a `connection_init` payload carries, in any of the shapes clients send:
/// `Authorization`, `authorization`, `authToken` (Apollo's `connectionParams` examples), or
/// `headers.Authorization`; with or without `Bearer`.
pub fn token_in_init_payload(payload: &Value) -> Option<&str> {
    let top = ["Authorization", "authorization", "authToken"]
        .iter()
        .find_map(|key| payload.get(key).and_then(Value::as_str));
    let nested = || {
        let headers = payload.get("headers")?;
        ["Authorization", "authorization"]
            .iter()
            .find_map(|key| headers.get(key).and_then(Value::as_str))
    };
    top.or_else(nested).and_then(token_from_header)
}

/// A connection's verdict on the token it was given.
pub enum ConnectionAuth {
    /// No token: every endpoint refuses the connection at `connection_init`.
    Anonymous,
    User {
        identity: Identity,
        token: SecretString,
    },
    /// A token was given and is forged, expired or otherwise refused: no connection.
    Refused,
}

impl ConnectionAuth {
    pub async fn check(verifier: &Verifier, token: Option<&str>) -> Self {
        let Some(token) = token else {
            return Self::Anonymous;
        };
        match verifier.verify(token).await {
            Ok(identity) => Self::User {
                identity,
                token: SecretString::from(token.to_owned()),
            },
            Err(err) => {
                tracing::info!(reason = %err, "WebSocket token refused");
                Self::Refused
            }
        }
    }

    /// The context data of the connection's operations: who it is, and the raw token each
    /// subscription verifies again when it starts.
    pub fn into_data(self) -> Data {
        let mut data = Data::default();
        match self {
            Self::User { identity, token } => {
                data.insert(Auth::User(identity));
                data.insert(PresentedToken(token));
            }
            Self::Anonymous => data.insert(Auth::Anonymous),
            Self::Refused => data.insert(Auth::Invalid),
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn init_payload_tokens_are_found_in_every_shape_clients_send() {
        for payload in [
            json!({"Authorization": "Bearer a.b.c"}),
            json!({"authorization": "a.b.c"}),
            json!({"authToken": "a.b.c"}),
            json!({"headers": {"Authorization": "Bearer a.b.c"}}),
            json!({"headers": {"authorization": "a.b.c"}}),
        ] {
            assert_eq!(token_in_init_payload(&payload), Some("a.b.c"), "{payload}");
        }
        assert_eq!(token_in_init_payload(&json!({})), None);
        assert_eq!(token_in_init_payload(&Value::Null), None);
        assert_eq!(token_in_init_payload(&json!({"Authorization": "Basic x"})), None);
    }
}
