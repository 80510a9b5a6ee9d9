//! `uploadProgress` over every WebSocket flavour, driven like each client drives it:
//! graphql-transport-ws (graphql-ws), legacy graphql-ws (subscriptions-transport-ws) and
//! AppSync's real-time protocol; the shared reader per upload; and progress crossing
//! processes through PostgreSQL.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::*;
use crate::on_both_backends;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A hang guard, never a timing assertion.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) const PROGRESS: &str = "subscription($t: String!, $id: String!) { uploadProgress(tenantId: $t, uploadId: $id) { uploadId status totalRows processedRows succeeded failed percentage rowsPerSecond etaSeconds recentErrors { rowNumber deviceUid outcome errorCode } } }";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// graphql-ws, Apollo Client 3.5+.
    TransportWs,
    /// subscriptions-transport-ws.
    LegacyWs,
    /// aws-appsync-subscription-link / Amplify: the `header-…` subprotocol.
    AppSync,
    /// Older AppSync clients: `?header=…&payload=e30=`.
    AppSyncQuery,
}

/// What a server sent, as a client sees it.
#[derive(Debug)]
pub(crate) enum Frame {
    Json(Value),
    Close(Option<(u16, String)>),
    Gone,
}

pub(crate) async fn next_frame(ws: &mut Ws) -> Frame {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the server answers within the hang guard");
        return match message {
            Some(Ok(Message::Text(text))) => Frame::Json(serde_json::from_str(text.as_str()).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                Frame::Close(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => Frame::Gone,
        };
    }
}

/// The next JSON message, skipping AppSync's `ka`.
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match next_frame(ws).await {
            Frame::Json(v) if v["type"] == "ka" => continue,
            Frame::Json(v) => return v,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

pub(crate) async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::Text(message.to_string().into())).await.unwrap();
}

pub(crate) fn ws_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.replacen("http://", "ws://", 1))
}

pub(crate) async fn open(url: &str, protocols: &[String]) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket handshake");
    ws
}

/// The JSON header object AppSync clients send: the bare JWT and the GraphQL endpoint's host.
pub(crate) fn header_object(base: &str, token: &str) -> String {
    let host = base.trim_start_matches("http://").to_owned();
    json!({"Authorization": token, "host": host}).to_string()
}

/// Opens a connection of `flavour` with `token` and waits for the connection's verdict:
/// `Ok(ws)` once acknowledged, `Err(frame)` with what refused it.
pub(crate) async fn connect(app: &TestApp, flavour: Flavour, token: Option<&str>) -> Result<Ws, Vec<Frame>> {
    connect_to(&app.url, flavour, token).await
}

/// [`connect`] to the server at `base` (`http://host:port`).
pub(crate) async fn connect_to(base: &str, flavour: Flavour, token: Option<&str>) -> Result<Ws, Vec<Frame>> {
    let mut ws = match flavour {
        Flavour::TransportWs | Flavour::LegacyWs => {
            let protocol = if flavour == Flavour::TransportWs {
                "graphql-transport-ws"
            } else {
                "graphql-ws"
            };
            let mut ws = open(&ws_url(base, "/graphql"), &[protocol.to_owned()]).await;
            let payload = match (flavour, token) {
                (_, None) => json!({}),
                (Flavour::TransportWs, Some(t)) => json!({"Authorization": format!("Bearer {t}")}),
                (_, Some(t)) => json!({"authToken": t}),
            };
            send(&mut ws, json!({"type": "connection_init", "payload": payload})).await;
            ws
        }
        Flavour::AppSync => {
            let header = URL_SAFE_NO_PAD.encode(header_object(base, token.unwrap_or_default()));
            let protocols = ["graphql-ws".to_owned(), format!("header-{header}")];
            let mut ws = open(&ws_url(base, "/graphql/realtime"), &protocols).await;
            send(&mut ws, json!({"type": "connection_init"})).await;
            ws
        }
        Flavour::AppSyncQuery => {
            let header = STANDARD.encode(header_object(base, token.unwrap_or_default()));
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("header", &header)
                .append_pair("payload", "e30=")
                .finish();
            let url = ws_url(base, &format!("/graphql/realtime?{query}"));
            let mut ws = open(&url, &["graphql-ws".to_owned()]).await;
            send(&mut ws, json!({"type": "connection_init"})).await;
            ws
        }
    };
    let mut refusal = Vec::new();
    loop {
        match next_frame(&mut ws).await {
            Frame::Json(v) if v["type"] == "ka" => continue,
            Frame::Json(v) if v["type"] == "connection_ack" => {
                if matches!(flavour, Flavour::AppSync | Flavour::AppSyncQuery) {
                    assert_eq!(v["payload"]["connectionTimeoutMs"], 300_000, "{v}");
                }
                return Ok(ws);
            }
            frame @ Frame::Json(_) => refusal.push(frame),
            end => {
                refusal.push(end);
                return Err(refusal);
            }
        }
    }
}

/// Starts `uploadProgress` as subscription `id` on a connection of `flavour`; AppSync's
/// start carries `token` in its own authorization, as the clients send it.
pub(crate) async fn start(
    ws: &mut Ws,
    flavour: Flavour,
    id: &str,
    token: &str,
    tenant: &str,
    upload_id: &str,
) {
    let variables = json!({"t": tenant, "id": upload_id});
    let message = match flavour {
        Flavour::TransportWs => {
            json!({"id": id, "type": "subscribe", "payload": {"query": PROGRESS, "variables": variables}})
        }
        Flavour::LegacyWs => {
            json!({"id": id, "type": "start", "payload": {"query": PROGRESS, "variables": variables}})
        }
        Flavour::AppSync | Flavour::AppSyncQuery => json!({
            "id": id,
            "type": "start",
            "payload": {
                "data": json!({"query": PROGRESS, "variables": variables}).to_string(),
                "extensions": {"authorization": {"Authorization": token, "host": "fleetload.test", "x-amz-user-agent": "aws-amplify/6"}},
            },
        }),
    };
    send(ws, message).await;
}

/// What one subscription produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) events: Vec<Value>,
    /// Codes of the errors it was refused with.
    pub(crate) errors: Vec<String>,
    pub(crate) completed: bool,
    pub(crate) acked: bool,
}

/// Adds one message of subscription traffic to what the subscription produced.
pub(crate) fn record(flavour: Flavour, message: &Value, outcome: &mut Outcome) {
    let ty = message["type"].as_str().unwrap_or_default();
    match (flavour, ty) {
        (Flavour::TransportWs, "next") | (Flavour::LegacyWs, "data") => {
            let payload = &message["payload"];
            if let Some(errors) = payload["errors"].as_array() {
                outcome
                    .errors
                    .extend(errors.iter().map(|e| error_code(&json!({"errors": [e]}))));
            }
            if !payload["data"].is_null() {
                outcome.events.push(payload["data"]["uploadProgress"].clone());
            }
        }
        (Flavour::AppSync | Flavour::AppSyncQuery, "data") => {
            outcome
                .events
                .push(message["payload"]["data"]["uploadProgress"].clone());
        }
        (Flavour::AppSync | Flavour::AppSyncQuery, "start_ack") => outcome.acked = true,
        (Flavour::AppSync | Flavour::AppSyncQuery, "error") => {
            let errors = message["payload"]["errors"].as_array().unwrap();
            outcome
                .errors
                .extend(errors.iter().map(|e| e["errorType"].as_str().unwrap().to_owned()));
        }
        (_, "complete") => outcome.completed = true,
        _ => panic!("unexpected message {message}"),
    }
}

/// Follows subscription `id` until it completes or is refused (AppSync's `error` ends it).
pub(crate) async fn follow(ws: &mut Ws, flavour: Flavour, id: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let appsync = matches!(flavour, Flavour::AppSync | Flavour::AppSyncQuery);
    // AppSync ends a refused subscription with `error` alone.
    loop {
        let refused = appsync && !outcome.errors.is_empty();
        if outcome.completed || refused {
            return outcome;
        }
        let message = next_json(ws).await;
        assert_eq!(message["id"], id, "{message}");
        record(flavour, &message, &mut outcome);
    }
}

/// The first event of subscription `id`, once it is there.
pub(crate) async fn first_event(ws: &mut Ws, flavour: Flavour, id: &str) -> (Value, Outcome) {
    let mut outcome = Outcome::default();
    while outcome.events.is_empty() {
        let message = next_json(ws).await;
        assert_eq!(message["id"], id, "{message}");
        record(flavour, &message, &mut outcome);
        assert!(outcome.errors.is_empty() && !outcome.completed, "{outcome:?}");
    }
    (outcome.events[0].clone(), outcome)
}

/// 300 rows, of which rows 37, 74, …, 296 (eight) are not IMEIs.
fn rows_with_failures(seed: u64) -> Vec<u8> {
    let mut rows = imeis(seed, 300);
    for row in (37..=300).step_by(37) {
        rows[row - 1] = format!("bad-{row}");
    }
    csv("imei", &rows)
}

/// Prepares, posts and finalizes [`rows_with_failures`] as alice in `demo`.
pub(crate) async fn upload_with_failures(app: &TestApp, seed: u64) -> String {
    app.upload_csv(&app.alice(), json!({"rowCount": 300}), rows_with_failures(seed))
        .await
}

/// What every progress stream must look like: monotonic, ending on the final state.
fn assert_progress_well_formed(events: &[Value], upload_id: &str) {
    assert!(!events.is_empty());
    for pair in events.windows(2) {
        assert!(
            pair[1]["processedRows"].as_i64() >= pair[0]["processedRows"].as_i64(),
            "processedRows went back: {} then {}",
            pair[0],
            pair[1]
        );
    }
    for event in &events[..events.len() - 1] {
        assert!(
            !["COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED"]
                .contains(&event["status"].as_str().unwrap()),
            "a final state before the last event: {events:?}"
        );
    }
    let last = events.last().unwrap();
    assert_eq!(last["uploadId"], upload_id);
    assert_eq!(last["status"], "COMPLETED_WITH_ERRORS", "{last}");
    assert_eq!(
        (
            last["totalRows"].clone(),
            last["processedRows"].clone(),
            last["succeeded"].clone(),
            last["failed"].clone(),
            last["percentage"].clone(),
            last["etaSeconds"].clone(),
        ),
        (
            json!(300),
            json!(300),
            json!(292),
            json!(8),
            json!(100.0),
            json!(0.0)
        )
    );
    // The latest five failures, newest row first.
    let rows: Vec<i64> = last["recentErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rowNumber"].as_i64().unwrap())
        .collect();
    assert_eq!(rows, [296, 259, 222, 185, 148]);
    assert!(
        last["recentErrors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["outcome"] == "FAIL" && e["errorCode"] == "INVALID_DEVICE_UID")
    );
}

/// Subscribes over `flavour`, sees the queued state at once, drains the pipeline and follows
/// the stream to its end.
async fn progress_over(app: TestApp, flavour: Flavour) {
    let upload_id = upload_with_failures(&app, 70).await;
    let token = app.alice();
    let mut ws = connect(&app, flavour, Some(&token))
        .await
        .expect("connection accepted");
    start(&mut ws, flavour, "p1", &token, "demo", &upload_id).await;
    let (first, mut outcome) = first_event(&mut ws, flavour, "p1").await;
    assert_eq!(
        first["status"], "QUEUED",
        "the current state comes at once: {first}"
    );
    assert_eq!(first["processedRows"], 0);
    if matches!(flavour, Flavour::AppSync | Flavour::AppSyncQuery) {
        assert!(outcome.acked, "start_ack precedes the first data");
    }

    let follower = tokio::spawn(async move {
        let rest = follow(&mut ws, flavour, "p1").await;
        (rest, ws)
    });
    assert!(app.drain().await >= 7, "a dispatch and six chunks ran");
    let (rest, _ws) = follower.await.unwrap();
    assert!(rest.errors.is_empty(), "{rest:?}");
    assert!(rest.completed, "the stream completes after the final state");
    outcome.events.extend(rest.events);
    assert_progress_well_formed(&outcome.events, &upload_id);
}

fn chunked(s: &mut fleetload::config::Settings) {
    s.chunk_size = 50;
}

async fn spawn_chunked(backend: Backend) -> TestApp {
    spawn_app_with(backend, chunked).await
}

mod graphql_transport_ws_streams_progress_to_the_final_state_then_completes {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        progress_over(spawn_chunked(Backend::Sqlite).await, Flavour::TransportWs).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        progress_over(spawn_chunked(Backend::Postgres).await, Flavour::TransportWs).await
    }
}

mod legacy_graphql_ws_streams_progress_to_the_final_state_then_completes {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        progress_over(spawn_chunked(Backend::Sqlite).await, Flavour::LegacyWs).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        progress_over(spawn_chunked(Backend::Postgres).await, Flavour::LegacyWs).await
    }
}

mod appsync_realtime_with_the_header_subprotocol_streams_progress {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        progress_over(spawn_chunked(Backend::Sqlite).await, Flavour::AppSync).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        progress_over(spawn_chunked(Backend::Postgres).await, Flavour::AppSync).await
    }
}

mod appsync_realtime_with_header_query_parameters_streams_progress {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        progress_over(spawn_chunked(Backend::Sqlite).await, Flavour::AppSyncQuery).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        progress_over(spawn_chunked(Backend::Postgres).await, Flavour::AppSyncQuery).await
    }
}

const ALL: [Flavour; 4] = [
    Flavour::TransportWs,
    Flavour::LegacyWs,
    Flavour::AppSync,
    Flavour::AppSyncQuery,
];

on_both_backends! {
    async fn a_finished_upload_emits_its_final_state_once_then_completes(app: TestApp) {
        let upload_id = upload_with_failures(&app, 71).await;
        app.drain().await;
        let token = app.alice();
        for flavour in ALL {
            let mut ws = connect(&app, flavour, Some(&token)).await.expect("accepted");
            start(&mut ws, flavour, "done", &token, "demo", &upload_id).await;
            let outcome = follow(&mut ws, flavour, "done").await;
            assert!(outcome.completed && outcome.errors.is_empty(), "{flavour:?}: {outcome:?}");
            assert_eq!(outcome.events.len(), 1, "{flavour:?}: {outcome:?}");
            assert_eq!(outcome.events[0]["status"], "COMPLETED_WITH_ERRORS");
            assert_eq!(outcome.events[0]["processedRows"], 300);
        }
    }

    async fn another_tenants_upload_is_not_found_and_sends_nothing(app: TestApp) {
        let upload_id = upload_with_failures(&app, 72).await;
        let bob = app.bob();
        for flavour in ALL {
            let mut ws = connect(&app, flavour, Some(&bob)).await.expect("bob's token is valid");
            // bob's own tenant with alice's upload id: not found, as if it did not exist.
            start(&mut ws, flavour, "x", &bob, "acme", &upload_id).await;
            let outcome = follow(&mut ws, flavour, "x").await;
            assert!(outcome.events.is_empty(), "{flavour:?} leaked: {outcome:?}");
            assert_eq!(outcome.errors, ["UPLOAD_NOT_FOUND"], "{flavour:?}");
            // alice's tenant: not bob's to read at all.
            start(&mut ws, flavour, "y", &bob, "demo", &upload_id).await;
            let outcome = follow(&mut ws, flavour, "y").await;
            assert!(outcome.events.is_empty(), "{flavour:?} leaked: {outcome:?}");
            assert_eq!(outcome.errors, ["FORBIDDEN"], "{flavour:?}");
        }
        // An unknown id is the same answer.
        let token = app.alice();
        let mut ws = connect(&app, Flavour::TransportWs, Some(&token)).await.unwrap();
        start(&mut ws, Flavour::TransportWs, "z", &token, "demo", "0198e3b2-0000-7000-8000-000000000000").await;
        let outcome = follow(&mut ws, Flavour::TransportWs, "z").await;
        assert_eq!(outcome.errors, ["UPLOAD_NOT_FOUND"]);
        assert!(outcome.events.is_empty());
    }

    async fn forged_expired_or_missing_tokens_get_no_event(app: TestApp) {
        let upload_id = upload_with_failures(&app, 73).await;
        let mut forged = app.alice();
        forged.truncate(forged.len() - 4);
        forged.push_str("AAAA");
        let expired = app.expired_alice();
        for bad in [&forged, &expired] {
            // graphql-transport-ws: closed with 4403 Forbidden, nothing else.
            let refusal = connect(&app, Flavour::TransportWs, Some(bad)).await.expect_err("refused");
            assert!(
                matches!(refusal.as_slice(), [Frame::Close(Some((4403, reason)))] if reason == "Forbidden"),
                "{refusal:?}"
            );
            // Legacy graphql-ws: connection_error.
            let refusal = connect(&app, Flavour::LegacyWs, Some(bad)).await.expect_err("refused");
            assert!(
                matches!(refusal.first(), Some(Frame::Json(v)) if v["type"] == "connection_error"),
                "{refusal:?}"
            );
            // AppSync: connection_error with a code that stops the clients' retries.
            for flavour in [Flavour::AppSync, Flavour::AppSyncQuery] {
                let refusal = connect(&app, flavour, Some(bad)).await.expect_err("refused");
                let Some(Frame::Json(v)) = refusal.first() else { panic!("{refusal:?}") };
                assert_eq!(v["type"], "connection_error", "{v}");
                assert_eq!(v["payload"]["errors"][0]["errorType"], "UnauthorizedException");
                assert_eq!(v["payload"]["errors"][0]["errorCode"], 401);
            }
        }
        // No token at all: refused at connection_init too, as AppSync refuses it (every
        // operation needs a user).
        let refusal = connect(&app, Flavour::TransportWs, None).await.expect_err("refused");
        assert!(
            matches!(refusal.as_slice(), [Frame::Close(Some((4403, reason)))] if reason == "Forbidden"),
            "{refusal:?}"
        );
        let refusal = connect(&app, Flavour::LegacyWs, None).await.expect_err("refused");
        assert!(
            matches!(refusal.as_slice(), [Frame::Json(v), Frame::Close(Some((4403, _)))]
                if v["type"] == "connection_error" && v["payload"]["extensions"]["code"] == "UNAUTHENTICATED"),
            "{refusal:?}"
        );
        // AppSync: a good connection, a start carrying an expired token gets the errorType
        // AppSync clients refresh their token on.
        let good = app.alice();
        let mut ws = connect(&app, Flavour::AppSync, Some(&good)).await.unwrap();
        start(&mut ws, Flavour::AppSync, "old", &expired, "demo", &upload_id).await;
        let outcome = follow(&mut ws, Flavour::AppSync, "old").await;
        assert_eq!(outcome.errors, ["UnauthorizedException"]);
        assert!(outcome.events.is_empty() && !outcome.acked, "{outcome:?}");
    }

    async fn a_token_that_expired_after_connection_init_gets_no_event(app: TestApp) {
        // What a connection holds once its token has expired: the identity verified at
        // connection_init, and the raw token. Subscriptions verify the token again.
        use fleetload::graphql::{Auth, PresentedToken};
        let upload_id = upload_with_failures(&app, 74).await;
        let alice = app.state.verifier.verify(&app.alice()).await.unwrap();
        let schema = fleetload::graphql::build_schema(app.state.clone());
        let request = async_graphql::Request::new(PROGRESS)
            .variables(async_graphql::Variables::from_json(json!({"t": "demo", "id": upload_id})))
            .data(Auth::User(alice.clone()))
            .data(PresentedToken(app.expired_alice().into()));
        let responses: Vec<_> = schema.execute_stream(request).collect().await;
        assert_eq!(responses.len(), 1);
        let body = serde_json::to_value(&responses[0]).unwrap();
        assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
        assert!(body["data"].is_null());

        // The same connection with its token still valid gets the state.
        let request = async_graphql::Request::new(PROGRESS)
            .variables(async_graphql::Variables::from_json(json!({"t": "demo", "id": upload_id})))
            .data(Auth::User(alice))
            .data(PresentedToken(app.alice().into()));
        let first = schema.execute_stream(request).next().await.unwrap();
        assert!(first.errors.is_empty(), "{:?}", first.errors);
    }

    async fn appsync_stop_is_answered_with_complete(app: TestApp) {
        let upload_id = upload_with_failures(&app, 75).await;
        let token = app.alice();
        let mut ws = connect(&app, Flavour::AppSync, Some(&token)).await.unwrap();
        start(&mut ws, Flavour::AppSync, "s", &token, "demo", &upload_id).await;
        let (first, _) = first_event(&mut ws, Flavour::AppSync, "s").await;
        assert_eq!(first["status"], "QUEUED");
        send(&mut ws, json!({"type": "stop", "id": "s"})).await;
        assert_eq!(next_json(&mut ws).await, json!({"type": "complete", "id": "s"}));
        // The stopped subscription sends nothing more, even as the upload moves.
        app.drain().await;
        let start_again = upload_with_failures(&app, 76).await;
        start(&mut ws, Flavour::AppSync, "t", &token, "demo", &start_again).await;
        let (next, _) = first_event(&mut ws, Flavour::AppSync, "t").await;
        assert_eq!(next["uploadId"], start_again.as_str());
    }

    async fn five_hundred_subscriptions_of_one_upload_share_one_reader(app: TestApp) {
        let upload_id = upload_with_failures(&app, 77).await;
        let token = app.alice();
        let mut connections = Vec::new();
        // 100 connections of 5 subscriptions each, all open before anything moves.
        for _ in 0..100 {
            let mut ws = connect(&app, Flavour::TransportWs, Some(&token)).await.unwrap();
            for n in 0..5 {
                start(&mut ws, Flavour::TransportWs, &n.to_string(), &token, "demo", &upload_id).await;
            }
            let mut firsts = 0;
            while firsts < 5 {
                let message = next_json(&mut ws).await;
                assert_eq!(message["type"], "next", "{message}");
                assert_eq!(message["payload"]["data"]["uploadProgress"]["status"], "QUEUED");
                firsts += 1;
            }
            connections.push(ws);
        }
        assert_eq!(app.state.hub.watched(), 1);
        assert_eq!(app.state.hub.readers_started(), 1, "500 subscribers, one reader");

        let followers: Vec<_> = connections
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    let mut outcomes: Vec<Outcome> = (0..5).map(|_| Outcome::default()).collect();
                    while outcomes.iter().any(|o| !o.completed) {
                        let message = next_json(&mut ws).await;
                        let id: usize = message["id"].as_str().unwrap().parse().unwrap();
                        record(Flavour::TransportWs, &message, &mut outcomes[id]);
                    }
                    outcomes
                })
            })
            .collect();
        app.drain().await;
        for follower in followers {
            for outcome in follower.await.unwrap() {
                assert!(outcome.errors.is_empty(), "{outcome:?}");
                let last = outcome.events.last().expect("the final state");
                assert_eq!(last["status"], "COMPLETED_WITH_ERRORS");
                assert_eq!(last["processedRows"], 300);
            }
        }
        assert_eq!(app.state.hub.readers_started(), 1, "still that one reader");
        assert_eq!(app.state.hub.watched(), 0, "the reader ended with the upload");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appsync_keep_alives_arrive_at_the_configured_interval() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.realtime_keepalive_ms = 50).await;
    let mut ws = connect(&app, Flavour::AppSync, Some(&app.alice())).await.unwrap();
    for _ in 0..3 {
        match next_frame(&mut ws).await {
            Frame::Json(v) => assert_eq!(v, json!({"type": "ka"})),
            other => panic!("{other:?}"),
        }
    }
}

/// A `fleetload` child process, killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Process {
    pub(crate) fn spawn(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetload"));
        cmd.args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("FLEETLOAD_") || key.starts_with("AWS_") || key == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let logs = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logs);
        Self(cmd.spawn().expect("the fleetload binary starts"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `fleetload serve --workers 0` on `env`'s database, once it answers `/readyz`.
pub(crate) async fn api_process(env: &[(&str, String)]) -> (Process, String) {
    let port = free_port();
    let mut env = env.to_vec();
    env.push(("FLEETLOAD_LISTEN", format!("127.0.0.1:{port}")));
    let process = Process::spawn(&["serve", "--workers", "0"], &env);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(resp) = http.get(format!("{url}/readyz")).send().await
            && resp.status().is_success()
        {
            return (process, url);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API process never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_processes_on_postgres_stream_an_upload_a_worker_process_runs() {
    use secrecy::ExposeSecret;
    // This app only prepares the database and signs tokens; it runs no workers.
    let app = spawn_app(Backend::Postgres).await;
    let env = [
        (
            "DATABASE_URL",
            app.settings
                .database_url
                .as_ref()
                .unwrap()
                .expose_secret()
                .to_owned(),
        ),
        ("FLEETLOAD_DATA_DIR", app.data_dir.path().display().to_string()),
        ("FLEETLOAD_CHUNK_SIZE", "50".to_owned()),
    ];
    let (_api_a, url_a) = api_process(&env).await;
    let (_api_b, url_b) = api_process(&env).await;
    let token = app.alice();

    // The upload goes through API A …
    let upload_id = upload_via(&url_a, &token, rows_with_failures(78)).await;
    // … a subscriber on API B watches it …
    let mut ws = connect_to(&url_b, Flavour::TransportWs, Some(&token))
        .await
        .unwrap();
    start(&mut ws, Flavour::TransportWs, "1", &token, "demo", &upload_id).await;
    let (first, mut outcome) = first_event(&mut ws, Flavour::TransportWs, "1").await;
    assert_eq!(first["status"], "QUEUED");
    // … and a worker process does the work.
    let mut worker_env = env.to_vec();
    worker_env.push(("FLEETLOAD_LISTEN", "127.0.0.1:0".to_owned()));
    worker_env.push(("FLEETLOAD_WORKERS", "2".to_owned()));
    let _worker = Process::spawn(&["worker"], &worker_env);

    let rest = follow(&mut ws, Flavour::TransportWs, "1").await;
    assert!(rest.completed && rest.errors.is_empty(), "{rest:?}");
    outcome.events.extend(rest.events);
    assert!(
        outcome.events.len() >= 2,
        "progress crossed processes: {:?}",
        outcome.events
    );
    assert_progress_well_formed(&outcome.events, &upload_id);
}

/// prepare → POST → finalize against the API at `base`, as alice in `demo`.
async fn upload_via(base: &str, token: &str, file: Vec<u8>) -> String {
    let http = reqwest::Client::new();
    let gql = |query: &'static str, variables: Value| {
        let http = http.clone();
        async move {
            let body: Value = http
                .post(format!("{base}/graphql"))
                .header("Authorization", format!("Bearer {token}"))
                .json(&json!({"query": query, "variables": variables}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(body.get("errors").is_none(), "{body}");
            body["data"].clone()
        }
    };
    let prepared = gql(
        PREPARE,
        json!({"tenantId": "demo", "assignActionId": "register-prepaid", "rowCount": 300, "deviceType": 1}),
    )
    .await;
    let payload = &prepared["prepareBatchUpload"];
    let upload_id = payload["uploadId"].as_str().unwrap().to_owned();
    let posted = post_form(&http, &payload["fileUpload"], file).await;
    assert!(posted.status().is_success(), "{}", posted.status());
    let finalized = gql(FINALIZE, json!({"tenantId": "demo", "uploadId": upload_id})).await;
    assert_eq!(finalized["finalizeBatchUpload"], "QUEUED");
    upload_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_upgrade_requests_authorization_header_counts_when_connection_init_has_none() {
    let app = spawn_app(Backend::Sqlite).await;
    let upload_id = upload_with_failures(&app, 79).await;
    let token = app.alice();
    for (header, accepted) in [
        (format!("Bearer {token}"), true),
        ("Bearer not.a.token".to_owned(), false),
    ] {
        let mut request = ws_url(&app.url, "/graphql").into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
        headers.insert("Authorization", header.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        send(&mut ws, json!({"type": "connection_init"})).await;
        match next_frame(&mut ws).await {
            Frame::Json(v) if accepted => assert_eq!(v["type"], "connection_ack", "{v}"),
            Frame::Close(Some((4403, _))) if !accepted => continue,
            other => panic!("accepted={accepted}: {other:?}"),
        }
        start(&mut ws, Flavour::TransportWs, "h", &token, "demo", &upload_id).await;
        let (first, _) = first_event(&mut ws, Flavour::TransportWs, "h").await;
        assert_eq!(first["status"], "QUEUED");
    }
}
