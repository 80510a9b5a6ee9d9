//! Request ids: every HTTP request (WebSocket upgrades included) gets one — the client's
//! `x-request-id` when it is a sane one, else a new UUID — which is echoed in the response
//! and recorded in the request's span, so a client's report finds the server's log lines.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Span;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept; a longer one (or one with other than visible ASCII) is replaced,
/// so a client cannot make every log line of its request arbitrarily large or garbled.
pub const MAX_LEN: usize = 128;

/// The id of a request, as the middleware put it in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// The client's id when it is 1 to [`MAX_LEN`] visible ASCII characters.
pub fn accept(value: Option<&HeaderValue>) -> Option<HeaderValue> {
    let value = value?;
    let bytes = value.as_bytes();
    let sane = !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| b.is_ascii_graphic());
    sane.then(|| value.clone())
}

/// Middleware: picks the request's id, stores it in the request (header and extension)
/// for the span and the handlers, and sets it on the response.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = accept(request.headers().get(&X_REQUEST_ID)).unwrap_or_else(|| {
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid header value")
    });
    request.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}

/// The span of one request: method, path (never the query string, which may carry a
/// download signature) and request id. At INFO, so it is on every line the request logs.
/// When traces are exported it continues the caller's trace (`traceparent`).
pub fn span(request: &Request) -> Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .map(RequestId::as_str)
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    );
    crate::telemetry::continue_request_trace(&span, request.headers());
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        let ok = HeaderValue::from_static("abc-123_XYZ.:/");
        assert_eq!(accept(Some(&ok)), Some(ok));
        assert_eq!(accept(None), None);
        for bad in [
            HeaderValue::from_static(""),
            HeaderValue::from_static("has space"),
            HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap(),
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
            HeaderValue::from_bytes(b"tab\there").unwrap(),
        ] {
            assert_eq!(accept(Some(&bad)), None, "{bad:?}");
        }
        assert!(accept(Some(&HeaderValue::from_str(&"a".repeat(MAX_LEN)).unwrap())).is_some());
    }
}
