//! The bounds every WebSocket connection lives within, and the one error type of this layer:
//! why a connection or one of its subscriptions is refused, with its typed code and each
//! protocol's answer (close code, AppSync `errorType`).

use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use serde_json::{Value, json};

use crate::config::Settings;

/// What tungstenite reads per call. Its default (128 KiB) is zero-filled on the first read,
/// so every connection, idle or not, would hold that much; larger messages still arrive whole
/// (the buffer grows to the frame's length, within the message limit).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The limits of one connection, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub init_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    pub outgoing_queue: usize,
    /// How long an acknowledged connection may run no subscription and hear nothing from
    /// its client; `None` for ever.
    pub idle_timeout: Option<Duration>,
}

impl Limits {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            init_timeout: Duration::from_millis(settings.ws_init_timeout_ms),
            // Below a few hundred bytes no client could even send `connection_init`.
            max_message_bytes: settings.ws_max_message_bytes.max(256),
            max_subscriptions: settings.ws_max_subscriptions,
            outgoing_queue: settings.ws_outgoing_queue.max(1),
            idle_timeout: (settings.ws_idle_timeout_secs > 0)
                .then(|| Duration::from_secs(settings.ws_idle_timeout_secs)),
        }
    }

    /// Applies the message and frame limits to an upgrade: tungstenite refuses a larger
    /// frame from its header, before reading (or allocating) its payload.
    pub fn apply(&self, upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
        upgrade
            .max_message_size(self.max_message_bytes)
            .max_frame_size(self.max_message_bytes)
            .read_buffer_size(READ_BUFFER_BYTES)
    }
}

/// Resolves when a connection idle since `since` has been idle for `timeout`; never when
/// there is no timeout.
pub async fn sleep_until_idle(since: tokio::time::Instant, timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep_until(since + timeout).await,
        None => std::future::pending().await,
    }
}

/// Why a WebSocket connection, or one subscription on it, is refused or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// No `connection_init` within the init timeout.
    InitTimeout,
    /// `connection_init` without a token, or with one that is forged or expired.
    Unauthenticated,
    /// A subscription before the connection was acknowledged.
    NotAcknowledged,
    /// A second `connection_init`.
    TooManyInits,
    /// A subscription id that is already running.
    DuplicateId(String),
    /// A message that is not one of the protocol's.
    BadMessage(String),
    /// A message or frame over the size limit.
    MessageTooLarge,
    /// One subscription more than a connection may run.
    TooManySubscriptions(usize),
    /// The outgoing queue is full: the client does not read what it is sent.
    SlowReader,
    /// Acknowledged, but no subscription and no client message for the idle timeout.
    IdleTimeout,
    /// The server is stopping: the client should connect again (to another replica).
    GoingAway,
}

impl WsError {
    /// The SCREAMING_SNAKE code, as in `extensions.code` of GraphQL errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InitTimeout => "CONNECTION_INIT_TIMEOUT",
            Self::Unauthenticated | Self::NotAcknowledged => "UNAUTHENTICATED",
            Self::TooManyInits => "TOO_MANY_INIT_REQUESTS",
            Self::DuplicateId(_) => "SUBSCRIPTION_ID_IN_USE",
            Self::BadMessage(_) => "BAD_MESSAGE",
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::TooManySubscriptions(_) => "TOO_MANY_SUBSCRIPTIONS",
            Self::SlowReader => "SLOW_READER",
            Self::IdleTimeout => "IDLE_TIMEOUT",
            Self::GoingAway => "GOING_AWAY",
        }
    }

    /// Whether the protocols' error message (`connection_error`) precedes the close frame:
    /// not when the connection cannot be written to, nor when it ends for a reason that is
    /// no fault of the client's.
    pub fn announced(&self) -> bool {
        !matches!(
            self,
            Self::MessageTooLarge | Self::SlowReader | Self::IdleTimeout | Self::GoingAway
        )
    }

    /// The close code graphql-transport-ws specifies (RFC 6455's for size and policy).
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InitTimeout => 4408,
            Self::Unauthenticated => 4403,
            Self::NotAcknowledged => 4401,
            Self::TooManyInits => 4429,
            Self::DuplicateId(_) => 4409,
            Self::BadMessage(_) => 4400,
            Self::MessageTooLarge => 1009,
            // Not a close in graphql-transport-ws (an `error` for the id); kept for completeness.
            Self::TooManySubscriptions(_) => 4400,
            Self::SlowReader => 1008,
            // Not an error of the client's: graphql-ws's client retries neither 1000 nor 1001
            // as fatal, and with no subscription running a lazy client just reconnects when
            // it next needs to. 4408 would read as a missed `connection_init`.
            Self::IdleTimeout => 1000,
            // RFC 6455 "going away": graphql-ws's and AppSync's clients reconnect.
            Self::GoingAway => 1001,
        }
    }

    /// The close reason (graphql-ws's own wording where it has one). Close reasons are at
    /// most 123 bytes, so anything the client sent is cut.
    pub fn close_reason(&self) -> String {
        let reason = match self {
            Self::InitTimeout => "Connection initialisation timeout".to_owned(),
            Self::Unauthenticated => "Forbidden".to_owned(),
            Self::NotAcknowledged => "Unauthorized".to_owned(),
            Self::TooManyInits => "Too many initialisation requests".to_owned(),
            Self::DuplicateId(id) => format!("Subscriber for {id} already exists"),
            Self::BadMessage(reason) => reason.clone(),
            Self::MessageTooLarge => "Message too big".to_owned(),
            Self::TooManySubscriptions(max) => format!("Too many subscriptions (at most {max})"),
            Self::SlowReader => "Outgoing queue full: the client does not read".to_owned(),
            // The typed code in the reason: close code 1000 alone does not say why.
            Self::IdleTimeout => "IDLE_TIMEOUT: no subscription running".to_owned(),
            Self::GoingAway => "Going away".to_owned(),
        };
        truncate(reason, 123)
    }

    /// The human-readable message of error payloads.
    pub fn message(&self) -> String {
        match self {
            Self::InitTimeout => "connection_init was not sent in time".to_owned(),
            Self::Unauthenticated => "a valid token is required".to_owned(),
            Self::TooManySubscriptions(max) => {
                format!("Max number of {max} subscriptions reached")
            }
            other => other.close_reason(),
        }
    }

    /// AppSync's `errorType` for this refusal on `/graphql/realtime`.
    pub fn appsync_type(&self) -> &'static str {
        match self {
            Self::Unauthenticated | Self::NotAcknowledged => "UnauthorizedException",
            Self::TooManySubscriptions(_) => "MaxSubscriptionsReachedError",
            Self::BadMessage(_) => "UnsupportedOperation",
            Self::InitTimeout | Self::TooManyInits | Self::DuplicateId(_) => "BadRequestException",
            Self::MessageTooLarge => "BadRequestException",
            Self::SlowReader => "LimitExceededError",
            Self::IdleTimeout | Self::GoingAway => "ConnectionClosed",
        }
    }

    /// A GraphQL error object with the code in `extensions` (`code` and `errorType`, as the
    /// HTTP endpoint answers).
    pub fn graphql_error(&self) -> Value {
        json!({
            "message": self.message(),
            "extensions": {"code": self.code(), "errorType": self.code()},
        })
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// AppSync's `errorType` for a GraphQL error code on `/graphql/realtime`: the codes AppSync
/// clients act on are AppSync's own (an `UnauthorizedException` makes them refresh the
/// token); every other code is passed through, as an AppSync resolver's `$util.error` would.
pub fn appsync_error_type(code: &str) -> &str {
    match code {
        "UNAUTHENTICATED" => "UnauthorizedException",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = WsError::DuplicateId("é".repeat(200));
        let reason = long.close_reason();
        assert!(reason.len() <= 123, "{}", reason.len());
        assert!(reason.starts_with("Subscriber for é"));
        assert_eq!(
            WsError::DuplicateId("a".into()).close_reason(),
            "Subscriber for a already exists"
        );
    }

    #[test]
    fn every_refusal_has_a_typed_code_and_an_appsync_type() {
        for error in [
            WsError::InitTimeout,
            WsError::Unauthenticated,
            WsError::NotAcknowledged,
            WsError::TooManyInits,
            WsError::DuplicateId("x".into()),
            WsError::BadMessage("x".into()),
            WsError::MessageTooLarge,
            WsError::TooManySubscriptions(3),
            WsError::SlowReader,
            WsError::IdleTimeout,
            WsError::GoingAway,
        ] {
            assert!(
                error.code().chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{error:?}"
            );
            assert!(!error.appsync_type().is_empty());
            assert_eq!(error.graphql_error()["extensions"]["code"], error.code());
        }
        assert_eq!(appsync_error_type("UNAUTHENTICATED"), "UnauthorizedException");
        assert_eq!(appsync_error_type("UPLOAD_NOT_FOUND"), "UPLOAD_NOT_FOUND");
    }
}
