//! GraphQL over HTTP as the spec draft (graphql.github.io/graphql-over-http) and AppSync
//! clients expect it: POST with a JSON body (or a batch array), GET for queries only, the
//! response media type the client accepts, and every request bounded (body size, batch size,
//! deadline, rate) with a GraphQL-shaped error carrying a typed `extensions.code`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{Request, Variables};
use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::Http;
use super::media::{ResponseType, is_json_request, negotiate};
use crate::graphql::{Auth, DbPermits, Executed};

/// How much of a refused body is read (and thrown away) after the refusal went out, so
/// the client reads the answer instead of a connection reset; and for how long.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// A refusal before any GraphQL ran: the HTTP status, a code, a message.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    fn respond(self, media: ResponseType) -> Response {
        let code = self.code;
        let body =
            json!({"errors": [{"message": self.message, "extensions": {"code": code, "errorType": code}}]});
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, media.content_type())],
            body.to_string(),
        )
            .into_response();
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// One operation or a batch (a JSON array of them).
enum Operations {
    Single(Box<Request>),
    Batch(Vec<Request>),
}

/// `POST /graphql`.
pub async fn post(State(http): State<Http>, request: axum::extract::Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let Some(media) = negotiate(header_str(&parts, header::ACCEPT)) else {
        return refuse(body, not_acceptable());
    };
    if !is_json_request(header_str(&parts, header::CONTENT_TYPE)) {
        let refusal = Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "POST /graphql takes an application/json body",
        );
        return refuse(body, refusal.respond(media));
    }
    let auth = authenticate(&http, &parts).await;
    if let Err(refusal) = rate_limit(&http, &parts, &auth) {
        return refuse(body, refusal.respond(media));
    }
    let settings = &http.app.settings;
    let max = settings.max_body_bytes;
    let declared = header_str(&parts, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return refuse(body, too_large(max).respond(media));
    }
    let deadline = Duration::from_secs(settings.request_timeout_secs.max(1));
    let bytes = match tokio::time::timeout(deadline, read_limited(body.into_data_stream(), max)).await {
        Err(_) => {
            let refusal = Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                "the request body did not arrive in time",
            );
            return refusal.respond(media);
        }
        Ok(Err(ReadError::TooLarge(rest))) => {
            tokio::spawn(drain(rest));
            return too_large(max).respond(media);
        }
        Ok(Err(ReadError::Broken)) => {
            return Refusal::bad_request("the request body broke off").respond(media);
        }
        Ok(Ok(bytes)) => bytes,
    };
    let operations = match parse_body(&bytes, settings.max_batch) {
        Ok(operations) => operations,
        Err(refusal) => return refusal.respond(media),
    };
    execute(
        &http,
        operations,
        auth,
        media,
        deadline.saturating_sub(started.elapsed()),
    )
    .await
}

/// `GET /graphql?query=…`: queries only; a mutation must not run on a safe method.
pub async fn get(http: Http, request: axum::extract::Request) -> Response {
    let started = Instant::now();
    let (parts, _body) = request.into_parts();
    let Some(media) = negotiate(header_str(&parts, header::ACCEPT)) else {
        return not_acceptable();
    };
    let auth = authenticate(&http, &parts).await;
    if let Err(refusal) = rate_limit(&http, &parts, &auth) {
        return refusal.respond(media);
    }
    let request = match request_from_query_string(parts.uri.query().unwrap_or_default()) {
        Ok(request) => request,
        Err(refusal) => return refusal.respond(media),
    };
    let mut request = request;
    let operation_name = request.operation_name.clone();
    // A document that does not parse is reported by execution, like on POST.
    if let Ok(doc) = request.parsed_query() {
        let chosen = match &operation_name {
            Some(name) => doc
                .operations
                .iter()
                .find(|(n, _)| n.is_some_and(|n| n.as_str() == name))
                .map(|(_, op)| op.node.ty),
            // Several operations and no name: execution reports it, nothing runs.
            None => match &doc.operations {
                DocumentOperations::Single(op) => Some(op.node.ty),
                DocumentOperations::Multiple(ops) if ops.len() == 1 => {
                    ops.values().next().map(|op| op.node.ty)
                }
                DocumentOperations::Multiple(_) => None,
            },
        };
        if chosen.is_some_and(|ty| ty != OperationType::Query) {
            let refusal = Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "only queries may be sent with GET; send mutations and subscriptions with POST",
            );
            return refusal.respond(media);
        }
    }
    let deadline = Duration::from_secs(http.app.settings.request_timeout_secs.max(1));
    execute(
        &http,
        Operations::Single(Box::new(request)),
        auth,
        media,
        deadline.saturating_sub(started.elapsed()),
    )
    .await
}

async fn execute(
    http: &Http,
    operations: Operations,
    auth: Auth,
    media: ResponseType,
    remaining: Duration,
) -> Response {
    // One share of the pool for the whole HTTP request, batch included.
    let permits = DbPermits::new(http.app.settings.db_connections_per_request);
    let run = |request: Request| {
        let executed = Executed::default();
        let request = request
            .data(auth.clone())
            .data(executed.clone())
            .data(permits.clone());
        async move { (http.schema.execute(request).await, executed) }
    };
    let timed_out = || {
        Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request took longer than the server allows",
        )
        .respond(media)
    };
    match operations {
        Operations::Single(request) => match tokio::time::timeout(remaining, run(*request)).await {
            Err(_) => timed_out(),
            Ok((response, executed)) => {
                let request_error = !executed.get() && response.is_err();
                let status = if request_error && media == ResponseType::GraphqlResponse {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::OK
                };
                let headers = response.http_headers.clone();
                let body = result_json(response, request_error);
                let mut http_response = (
                    status,
                    [(header::CONTENT_TYPE, media.content_type())],
                    body.to_string(),
                )
                    .into_response();
                http_response.headers_mut().extend(headers);
                http_response
            }
        },
        Operations::Batch(requests) => {
            let all = futures::future::join_all(requests.into_iter().map(run));
            match tokio::time::timeout(remaining, all).await {
                Err(_) => timed_out(),
                Ok(results) => {
                    let bodies: Vec<Value> = results
                        .into_iter()
                        .map(|(response, executed)| {
                            let request_error = !executed.get() && response.is_err();
                            result_json(response, request_error)
                        })
                        .collect();
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, media.content_type())],
                        Value::Array(bodies).to_string(),
                    )
                        .into_response()
                }
            }
        }
    }
}

/// A GraphQL response; one that failed before execution has no `data` entry at all.
fn result_json(response: async_graphql::Response, request_error: bool) -> Value {
    let mut body = serde_json::to_value(&response).unwrap_or_else(|_| json!({}));
    if request_error && let Some(map) = body.as_object_mut() {
        map.remove("data");
    }
    body
}

/// The JSON body: one request object, or a non-empty array of at most `max_batch`.
fn parse_body(bytes: &[u8], max_batch: usize) -> Result<Operations, Refusal> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Refusal::bad_request(format!("the body is not JSON: {e}")))?;
    match value {
        Value::Object(params) => Ok(Operations::Single(Box::new(request_from_params(params)?))),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(Refusal::bad_request("an empty batch"));
            }
            if items.len() > max_batch {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "BATCH_TOO_LARGE",
                    format!("a batch may hold at most {max_batch} operations"),
                ));
            }
            let requests = items
                .into_iter()
                .map(|item| match item {
                    Value::Object(params) => request_from_params(params),
                    _ => Err(Refusal::bad_request("each batch item must be a request object")),
                })
                .collect::<Result<_, _>>()?;
            Ok(Operations::Batch(requests))
        }
        _ => Err(Refusal::bad_request("the body must be a JSON object")),
    }
}

/// `query` (a string), `operationName` (string or null), `variables` and `extensions`
/// (objects or null), as the spec defines the request parameters.
fn request_from_params(mut params: Map<String, Value>) -> Result<Request, Refusal> {
    let query = match params.remove("query") {
        Some(Value::String(query)) => query,
        _ => return Err(Refusal::bad_request("the request needs a string `query`")),
    };
    let mut request = Request::new(query);
    match params.remove("operationName") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => request = request.operation_name(name),
        Some(_) => return Err(Refusal::bad_request("`operationName` must be a string")),
    }
    match params.remove("variables") {
        None | Some(Value::Null) => {}
        Some(variables @ Value::Object(_)) => request = request.variables(Variables::from_json(variables)),
        Some(_) => return Err(Refusal::bad_request("`variables` must be an object")),
    }
    match params.remove("extensions") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(Refusal::bad_request("`extensions` must be an object")),
    }
    Ok(request)
}

/// The same parameters from a URL query string, `variables` and `extensions` as JSON text.
fn request_from_query_string(query_string: &str) -> Result<Request, Refusal> {
    let mut params = Map::new();
    for (key, value) in url::form_urlencoded::parse(query_string.as_bytes()) {
        let value = match key.as_ref() {
            "variables" | "extensions" => serde_json::from_str(&value)
                .map_err(|_| Refusal::bad_request(format!("`{key}` must be URL-encoded JSON")))?,
            _ => Value::String(value.into_owned()),
        };
        params.insert(key.into_owned(), value);
    }
    request_from_params(params)
}

enum ReadError {
    TooLarge(BodyDataStream),
    Broken,
}

/// The whole body, unless it grows past `max`: then what is left of it, unread.
async fn read_limited(mut stream: BodyDataStream, max: usize) -> Result<Bytes, ReadError> {
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ReadError::Broken)?;
        if buf.len() + chunk.len() > max {
            return Err(ReadError::TooLarge(stream));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Answers `response` at once and reads what is left of `body` meanwhile (bounded).
fn refuse(body: Body, response: Response) -> Response {
    tokio::spawn(drain(body.into_data_stream()));
    response
}

/// Reads and discards what is still coming for at most [`DRAIN_DEADLINE`] (a lingering
/// close): a connection closed with unread bytes is reset, and the reset destroys the answer
/// in a client's receive buffer if it has not read it yet. A byte cap instead of a time cap
/// raced the client: on a busy machine it kept sending past the cap before it read the 413.
/// Nothing is kept, so the cost is bounded by time alone.
async fn drain(mut stream: BodyDataStream) {
    let discard = async { while let Some(Ok(_)) = stream.next().await {} };
    let _ = tokio::time::timeout(DRAIN_DEADLINE, discard).await;
}

fn too_large(max: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("the request body is larger than {max} bytes"),
    )
}

fn not_acceptable() -> Response {
    Refusal::new(
        StatusCode::NOT_ACCEPTABLE,
        "NOT_ACCEPTABLE",
        "accept application/graphql-response+json or application/json",
    )
    .respond(ResponseType::Json)
}

fn header_str(parts: &Parts, name: header::HeaderName) -> Option<&str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

async fn authenticate(http: &Http, parts: &Parts) -> Auth {
    Auth::from_header(&http.app.verifier, header_str(parts, header::AUTHORIZATION)).await
}

/// Counts the request against its client: the token's user when it has a valid one, else
/// the peer address.
fn rate_limit(http: &Http, parts: &Parts, auth: &Auth) -> Result<(), Refusal> {
    let Some(limiter) = &http.limiter else {
        return Ok(());
    };
    let client = match auth {
        Auth::User(identity) => format!("user:{}", identity.user),
        _ => match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => format!("ip:{}", peer.ip()),
            None => "ip:unknown".to_owned(),
        },
    };
    limiter.check(&client).map_err(|wait| Refusal {
        retry_after: Some(wait),
        ..Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "too many requests; slow down",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parameters_are_checked_as_the_spec_defines_them() {
        let ok = |v: Value| parse_body(v.to_string().as_bytes(), 3).is_ok();
        assert!(ok(json!({"query": "{ __typename }"})));
        assert!(ok(
            json!({"query": "{ __typename }", "operationName": null, "variables": null, "extensions": {}})
        ));
        assert!(!ok(json!({"qeury": "{ __typename }"})));
        assert!(!ok(json!({"query": 1})));
        assert!(!ok(json!({"query": "{ a }", "variables": "x"})));
        assert!(!ok(json!({"query": "{ a }", "extensions": ["array"]})));
        assert!(!ok(json!({"query": "{ a }", "operationName": 0})));
        assert!(ok(json!([{"query": "{ a }"}, {"query": "{ b }"}])));
        assert!(!ok(json!([])));
        let batch = json!([{"query": "{ a }"}, {"query": "{ a }"}, {"query": "{ a }"}, {"query": "{ a }"}]);
        let Err(refusal) = parse_body(batch.to_string().as_bytes(), 3) else {
            panic!("a batch of 4 passed a limit of 3");
        };
        assert_eq!(refusal.code, "BATCH_TOO_LARGE");
        assert!(parse_body(b"{ \"not a JSON", 3).is_err());
    }

    #[test]
    fn get_parameters_come_from_the_query_string() {
        let request = request_from_query_string(
            "query=query%20T(%24n%3A%20String!)%20%7B%20__type(name%3A%20%24n)%20%7B%20name%20%7D%20%7D&variables=%7B%22n%22%3A%22X%22%7D&operationName=T",
        )
        .ok()
        .unwrap();
        assert_eq!(request.operation_name.as_deref(), Some("T"));
        assert!(request_from_query_string("variables=%7B%7D").is_err());
        assert!(request_from_query_string("query=%7B%20a%20%7D&variables=nope").is_err());
    }
}
