//! The limits and protocol rules of every WebSocket endpoint, driven with raw frames:
//! the `connection_init` timeout (2,000 idle connections), graphql-transport-ws's close codes,
//! subscriptions per connection, message size, the close handshake and slow readers.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::helpers::*;
use crate::on_both_backends;
use crate::subscriptions::{
    Flavour, Frame, PATIENCE, PROGRESS, Ws, api_process, connect, first_event, follow, header_object,
    next_frame, next_json, open, send, start, upload_with_failures, ws_url,
};

/// Opens a connection of `flavour` and sends nothing, not even `connection_init`.
async fn open_idle(base: &str, flavour: Flavour) -> Ws {
    match flavour {
        Flavour::TransportWs => open(&ws_url(base, "/graphql"), &["graphql-transport-ws".into()]).await,
        Flavour::LegacyWs => open(&ws_url(base, "/graphql"), &["graphql-ws".into()]).await,
        Flavour::AppSync | Flavour::AppSyncQuery => {
            let header = URL_SAFE_NO_PAD.encode(header_object(base, "x.y.z"));
            let protocols = ["graphql-ws".to_owned(), format!("header-{header}")];
            open(&ws_url(base, "/graphql/realtime"), &protocols).await
        }
    }
}

/// Every frame until the connection ends (the close frame, or `Gone` without one).
async fn frames_until_closed(ws: &mut Ws) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match next_frame(ws).await {
            Frame::Json(v) if v["type"] == "ka" => {}
            frame @ Frame::Json(_) => frames.push(frame),
            end => {
                frames.push(end);
                return frames;
            }
        }
    }
}

/// The close frame that ended a connection, after any JSON messages before it.
fn close_of(frames: &[Frame]) -> (u16, String) {
    match frames.last() {
        Some(Frame::Close(Some((code, reason)))) => (*code, reason.clone()),
        other => panic!("expected a close frame with a code, got {other:?} (all: {frames:?})"),
    }
}

/// Opens a connection of `flavour` that sends nothing, with a small client read buffer
/// (tungstenite's default zero-fills 128 KiB per connection).
async fn open_light(base: &str, flavour: Flavour) -> Ws {
    let (path, protocol) = match flavour {
        Flavour::TransportWs => ("/graphql", "graphql-transport-ws"),
        Flavour::LegacyWs => ("/graphql", "graphql-ws"),
        Flavour::AppSync | Flavour::AppSyncQuery => ("/graphql/realtime", "graphql-ws"),
    };
    let mut request = ws_url(base, path).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .expect("WebSocket handshake");
    ws
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_connections_that_never_send_connection_init_are_all_closed() {
    const CONNECTIONS: usize = 2_000;
    // A server process of its own, so that its RSS is the server's alone.
    let data_dir = tempfile::tempdir().unwrap();
    let env = [
        ("FLEETLOAD_DATA_DIR", data_dir.path().display().to_string()),
        ("FLEETLOAD_WS_INIT_TIMEOUT_MS", "1000".to_owned()),
    ];
    let (server, url) = api_process(&env).await;
    let pid = server.0.id();
    let before = rss_kib(pid);
    let flavours = [Flavour::TransportWs, Flavour::LegacyWs, Flavour::AppSync];
    let mut idle: Vec<(Flavour, Ws)> = futures::stream::iter(0..CONNECTIONS)
        .map(|n| {
            let url = url.clone();
            let flavour = flavours[n % flavours.len()];
            async move { (flavour, open_light(&url, flavour).await) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let opened = rss_kib(pid);
    assert_eq!(idle.len(), CONNECTIONS);

    // Every one of them is closed by the server, each as its protocol says.
    let mut closed = 0;
    for (flavour, ws) in &mut idle {
        let frames = frames_until_closed(ws).await;
        let (code, reason) = close_of(&frames);
        assert_eq!(code, 4408, "{flavour:?}: {frames:?}");
        assert_eq!(reason, "Connection initialisation timeout");
        match flavour {
            Flavour::TransportWs => assert_eq!(frames.len(), 1, "{frames:?}"),
            Flavour::LegacyWs => {
                let Frame::Json(error) = &frames[0] else {
                    panic!("{frames:?}")
                };
                assert_eq!(error["type"], "connection_error");
                assert_eq!(error["payload"]["extensions"]["code"], "CONNECTION_INIT_TIMEOUT");
            }
            _ => {
                let Frame::Json(error) = &frames[0] else {
                    panic!("{frames:?}")
                };
                assert_eq!(error["type"], "connection_error");
                assert_eq!(
                    error["payload"]["errors"][0]["extensions"]["code"],
                    "CONNECTION_INIT_TIMEOUT"
                );
            }
        }
        closed += 1;
    }
    drop(idle);
    // The server's side is gone too: a new connection is served at once.
    let mut ws = open_light(&url, Flavour::TransportWs).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
    let after = rss_kib(pid);
    println!(
        "{closed} idle WebSockets closed by the init timeout; server RSS {} KiB before, {} KiB with all open, {} KiB after",
        before, opened, after
    );
    assert_eq!(closed, CONNECTIONS);
    // Generous bounds: tens of KiB per connection at most, and no growth left behind beyond
    // allocator slack.
    assert!(
        opened < before + 100 * 1024,
        "RSS grew from {before} KiB to {opened} KiB with {CONNECTIONS} open"
    );
    assert!(
        after < before + 100 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_sends_connection_init_in_time_is_not_timed_out() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.ws_init_timeout_ms = 300).await;
    let upload_id = upload_with_failures(&app, 90).await;
    let token = app.alice();
    for flavour in [Flavour::TransportWs, Flavour::LegacyWs, Flavour::AppSync] {
        let mut ws = connect(&app, flavour, Some(&token)).await.expect("acknowledged");
        // Well past the init timeout, the acknowledged connection still works.
        tokio::time::sleep(Duration::from_millis(900)).await;
        start(&mut ws, flavour, "late", &token, "demo", &upload_id).await;
        let (first, _) = first_event(&mut ws, flavour, "late").await;
        assert_eq!(first["status"], "QUEUED", "{flavour:?}");
    }
}

/// A graphql-transport-ws connection, acknowledged with alice's token.
async fn transport_ws(app: &TestApp) -> Ws {
    connect(app, Flavour::TransportWs, Some(&app.alice()))
        .await
        .expect("acknowledged")
}

fn subscribe(id: &str, upload_id: &str) -> Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": PROGRESS, "variables": {"t": "demo", "id": upload_id}}})
}

on_both_backends! {
    async fn graphql_transport_ws_closes_with_the_codes_its_protocol_specifies(app: TestApp) {
        let upload_id = upload_with_failures(&app, 91).await;

        // Subscribing before connection_init: 4401 Unauthorized.
        let mut ws = open_idle(&app.url, Flavour::TransportWs).await;
        send(&mut ws, subscribe("early", &upload_id)).await;
        assert_eq!(close_of(&frames_until_closed(&mut ws).await), (4401, "Unauthorized".into()));

        // A second connection_init: 4429.
        let mut ws = transport_ws(&app).await;
        send(&mut ws, json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", app.alice())}})).await;
        assert_eq!(close_of(&frames_until_closed(&mut ws).await), (4429, "Too many initialisation requests".into()));

        // A subscription id that is running: 4409, after the first one's event.
        let mut ws = transport_ws(&app).await;
        send(&mut ws, subscribe("p", &upload_id)).await;
        let (first, _) = first_event(&mut ws, Flavour::TransportWs, "p").await;
        assert_eq!(first["status"], "QUEUED");
        send(&mut ws, subscribe("p", &upload_id)).await;
        assert_eq!(close_of(&frames_until_closed(&mut ws).await), (4409, "Subscriber for p already exists".into()));

        // Once completed by the client, the id may be used again.
        let mut ws = transport_ws(&app).await;
        send(&mut ws, subscribe("again", &upload_id)).await;
        first_event(&mut ws, Flavour::TransportWs, "again").await;
        send(&mut ws, json!({"id": "again", "type": "complete"})).await;
        send(&mut ws, subscribe("again", &upload_id)).await;
        let (first, _) = first_event(&mut ws, Flavour::TransportWs, "again").await;
        assert_eq!(first["status"], "QUEUED");

        // What is not a message of the protocol: 4400.
        for bad in [
            "not json".to_owned(),
            json!({"type": "start", "id": "1", "payload": {"query": PROGRESS}}).to_string(),
            json!({"type": "subscribe", "payload": {"query": PROGRESS}}).to_string(),
            json!({"type": "subscribe", "id": "1"}).to_string(),
            json!(["connection_init"]).to_string(),
        ] {
            let mut ws = transport_ws(&app).await;
            ws.send(Message::Text(bad.clone().into())).await.unwrap();
            let (code, _) = close_of(&frames_until_closed(&mut ws).await);
            assert_eq!(code, 4400, "{bad}");
        }

        // ping before connection_init is answered, and does not count as one.
        let mut ws = open_idle(&app.url, Flavour::TransportWs).await;
        send(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
        send(&mut ws, json!({"type": "connection_init", "payload": {"authToken": app.alice()}})).await;
        assert_eq!(next_json(&mut ws).await, json!({"type": "connection_ack"}));

        // A query that does not validate: `error` for its id, and the connection stays.
        let mut ws = transport_ws(&app).await;
        send(&mut ws, json!({"id": "v", "type": "subscribe", "payload": {"query": "subscription { nope }"}})).await;
        let error = next_json(&mut ws).await;
        assert_eq!((error["type"].as_str(), error["id"].as_str()), (Some("error"), Some("v")), "{error}");
        assert!(error["payload"][0]["message"].as_str().unwrap().contains("nope"), "{error}");
        send(&mut ws, subscribe("v", &upload_id)).await;
        let (first, _) = first_event(&mut ws, Flavour::TransportWs, "v").await;
        assert_eq!(first["status"], "QUEUED");
    }

    async fn legacy_graphql_ws_answers_stop_terminate_and_a_second_init(app: TestApp) {
        let upload_id = upload_with_failures(&app, 92).await;
        let token = app.alice();
        let mut ws = connect(&app, Flavour::LegacyWs, Some(&token)).await.expect("acknowledged");
        start(&mut ws, Flavour::LegacyWs, "1", &token, "demo", &upload_id).await;
        first_event(&mut ws, Flavour::LegacyWs, "1").await;
        send(&mut ws, json!({"type": "stop", "id": "1"})).await;
        assert_eq!(next_json(&mut ws).await, json!({"type": "complete", "id": "1"}));
        // An unknown message: `error`, and the connection carries on.
        send(&mut ws, json!({"type": "bogus"})).await;
        let error = next_json(&mut ws).await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["payload"]["extensions"]["code"], "BAD_MESSAGE");
        start(&mut ws, Flavour::LegacyWs, "2", &token, "demo", &upload_id).await;
        first_event(&mut ws, Flavour::LegacyWs, "2").await;
        send(&mut ws, json!({"type": "connection_terminate"})).await;
        assert_eq!(close_of(&frames_until_closed(&mut ws).await).0, 1000);

        // A second connection_init: connection_error, then the close.
        let mut ws = connect(&app, Flavour::LegacyWs, Some(&token)).await.expect("acknowledged");
        send(&mut ws, json!({"type": "connection_init", "payload": {"authToken": token}})).await;
        let frames = frames_until_closed(&mut ws).await;
        assert!(
            matches!(&frames[..], [Frame::Json(v), Frame::Close(Some((4429, _)))] if v["type"] == "connection_error"),
            "{frames:?}"
        );

        // A start before connection_init.
        let mut ws = open_idle(&app.url, Flavour::LegacyWs).await;
        start(&mut ws, Flavour::LegacyWs, "early", &token, "demo", &upload_id).await;
        let frames = frames_until_closed(&mut ws).await;
        assert!(
            matches!(&frames[..], [Frame::Json(v), Frame::Close(Some((4401, _)))] if v["type"] == "connection_error"),
            "{frames:?}"
        );
    }
}

async fn subscriptions_are_capped(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.ws_max_subscriptions = 3).await;
    let upload_id = upload_with_failures(&app, 93).await;
    let token = app.alice();
    for flavour in [Flavour::TransportWs, Flavour::LegacyWs, Flavour::AppSync] {
        let mut ws = connect(&app, flavour, Some(&token)).await.expect("acknowledged");
        for id in ["a", "b", "c"] {
            start(&mut ws, flavour, id, &token, "demo", &upload_id).await;
            first_event(&mut ws, flavour, id).await;
        }
        start(&mut ws, flavour, "d", &token, "demo", &upload_id).await;
        let refusal = next_json(&mut ws).await;
        assert_eq!(
            (refusal["type"].as_str(), refusal["id"].as_str()),
            (Some("error"), Some("d")),
            "{flavour:?}: {refusal}"
        );
        let (code, message) = match flavour {
            Flavour::TransportWs => (
                &refusal["payload"][0]["extensions"]["code"],
                &refusal["payload"][0]["message"],
            ),
            Flavour::LegacyWs => (
                &refusal["payload"]["extensions"]["code"],
                &refusal["payload"]["message"],
            ),
            _ => {
                assert_eq!(
                    refusal["payload"]["errors"][0]["errorType"],
                    "MaxSubscriptionsReachedError"
                );
                (
                    &refusal["payload"]["errors"][0]["extensions"]["code"],
                    &refusal["payload"]["errors"][0]["message"],
                )
            }
        };
        assert_eq!(code, "TOO_MANY_SUBSCRIPTIONS", "{flavour:?}: {refusal}");
        assert_eq!(message, "Max number of 3 subscriptions reached");
        // Stopping one frees its place.
        let stop = if flavour == Flavour::TransportWs {
            "complete"
        } else {
            "stop"
        };
        send(&mut ws, json!({"type": stop, "id": "a"})).await;
        if flavour != Flavour::TransportWs {
            assert_eq!(next_json(&mut ws).await, json!({"type": "complete", "id": "a"}));
        }
        start(&mut ws, flavour, "d", &token, "demo", &upload_id).await;
        let (first, _) = first_event(&mut ws, flavour, "d").await;
        assert_eq!(first["status"], "QUEUED", "{flavour:?}");
    }
    // Subscriptions that end on their own free their places too.
    app.drain().await;
    let mut ws = connect(&app, Flavour::TransportWs, Some(&token)).await.unwrap();
    for round in 0..3 {
        for n in 0..3 {
            let id = format!("{round}-{n}");
            start(&mut ws, Flavour::TransportWs, &id, &token, "demo", &upload_id).await;
            let outcome = follow(&mut ws, Flavour::TransportWs, &id).await;
            assert!(outcome.completed && outcome.errors.is_empty(), "{outcome:?}");
        }
    }
}

mod subscriptions_per_connection_are_capped_with_a_typed_error {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        subscriptions_are_capped(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        subscriptions_are_capped(Backend::Postgres).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_over_the_size_limit_closes_the_connection_with_1009() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.ws_max_message_bytes = 16 * 1024).await;
    let upload_id = upload_with_failures(&app, 94).await;
    let token = app.alice();
    let padded = |size: usize| {
        let query = format!("{PROGRESS}{}", " ".repeat(size - PROGRESS.len()));
        json!({"id": "big", "type": "subscribe", "payload": {"query": query, "variables": {"t": "demo", "id": upload_id}}})
    };
    // Just under the limit: served.
    let mut ws = connect(&app, Flavour::TransportWs, Some(&token)).await.unwrap();
    send(&mut ws, padded(15 * 1024)).await;
    let (first, _) = first_event(&mut ws, Flavour::TransportWs, "big").await;
    assert_eq!(first["status"], "QUEUED");
    // Over it, on every endpoint, before and after connection_init.
    for flavour in [Flavour::TransportWs, Flavour::LegacyWs, Flavour::AppSync] {
        for initialised in [false, true] {
            let mut ws = if initialised {
                connect(&app, flavour, Some(&token)).await.unwrap()
            } else {
                open_idle(&app.url, flavour).await
            };
            ws.send(Message::Text(padded(64 * 1024).to_string().into()))
                .await
                .unwrap();
            let frames = frames_until_closed(&mut ws).await;
            assert_eq!(
                close_of(&frames).0,
                1009,
                "{flavour:?} initialised={initialised}: {frames:?}"
            );
        }
    }
    // The server is unharmed.
    assert!(connect(&app, Flavour::AppSync, Some(&token)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clients_close_frame_is_answered_on_every_endpoint() {
    let app = spawn_app(Backend::Sqlite).await;
    let upload_id = upload_with_failures(&app, 95).await;
    let token = app.alice();
    for flavour in [
        Flavour::AppSync,
        Flavour::AppSyncQuery,
        Flavour::TransportWs,
        Flavour::LegacyWs,
    ] {
        let mut ws = connect(&app, flavour, Some(&token)).await.unwrap();
        start(&mut ws, flavour, "s", &token, "demo", &upload_id).await;
        first_event(&mut ws, flavour, "s").await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        // Whatever was in flight, then the server's own close frame: not a dropped connection.
        let frames = frames_until_closed(&mut ws).await;
        assert_eq!(close_of(&frames).0, 1000, "{flavour:?}: {frames:?}");
    }
    // Also when the close frame comes right behind messages whose answers are still queued.
    for (flavour, message) in [
        (Flavour::TransportWs, json!({"type": "ping"})),
        (Flavour::AppSync, json!({"type": "bogus"})),
    ] {
        let mut ws = connect(&app, flavour, Some(&token)).await.unwrap();
        for _ in 0..500 {
            ws.feed(Message::Text(message.to_string().into())).await.unwrap();
        }
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        let frames = frames_until_closed(&mut ws).await;
        assert_eq!(
            close_of(&frames).0,
            1000,
            "{flavour:?}: {} frames before",
            frames.len() - 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appsync_answers_unknown_messages_and_refuses_bad_tokens_as_appsync_does() {
    let app = spawn_app(Backend::Sqlite).await;
    let upload_id = upload_with_failures(&app, 96).await;
    let token = app.alice();
    let mut ws = connect(&app, Flavour::AppSync, Some(&token)).await.unwrap();
    send(&mut ws, json!({"type": "publish", "id": "p"})).await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["payload"]["errors"][0]["errorType"], "UnsupportedOperation");
    // A forged token in a start's authorization: UnauthorizedException, nothing else.
    let mut forged = token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    start(&mut ws, Flavour::AppSync, "f", &forged, "demo", &upload_id).await;
    let outcome = follow(&mut ws, Flavour::AppSync, "f").await;
    assert_eq!(outcome.errors, ["UnauthorizedException"]);
    assert!(outcome.events.is_empty() && !outcome.acked, "{outcome:?}");
    // The same id with the good token is then served.
    start(&mut ws, Flavour::AppSync, "f", &token, "demo", &upload_id).await;
    let (first, _) = first_event(&mut ws, Flavour::AppSync, "f").await;
    assert_eq!(first["status"], "QUEUED");
    // A start whose id is running.
    start(&mut ws, Flavour::AppSync, "f", &token, "demo", &upload_id).await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(
        error["payload"]["errors"][0]["extensions"]["code"],
        "SUBSCRIPTION_ID_IN_USE"
    );
}

/// A client socket with a small receive buffer, so that what the server sends piles up on
/// the server's side soon once the client stops reading.
async fn open_small_window(url: &str, protocols: &[String]) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse().unwrap());
    let addr = request.uri().authority().unwrap().as_str().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .expect("WebSocket handshake");
    ws
}

/// Sends `message` over and over without ever reading, each one answered by the server,
/// until the server drops the connection; returns how many were sent.
async fn flood_without_reading(ws: &mut Ws, message: Value) -> usize {
    const MAX: usize = 5_000_000;
    let text = message.to_string();
    let flood = async {
        for sent in 0..MAX {
            if ws.feed(Message::Text(text.clone().into())).await.is_err() {
                return Some(sent);
            }
            if sent % 64 == 0 && ws.flush().await.is_err() {
                return Some(sent);
            }
        }
        None
    };
    let sent = tokio::time::timeout(PATIENCE, flood)
        .await
        .expect("the server drops a client that does not read within the hang guard");
    sent.unwrap_or_else(|| panic!("{MAX} messages answered and never read, and the connection still stands"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_does_not_read_is_disconnected_not_buffered_for() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.ws_outgoing_queue = 8).await;
    let token = app.alice();

    // graphql-transport-ws: pings, each answered with a pong.
    let mut ws = open_small_window(&ws_url(&app.url, "/graphql"), &["graphql-transport-ws".into()]).await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"authToken": token}}),
    )
    .await;
    let sent = flood_without_reading(&mut ws, json!({"type": "ping"})).await;
    println!("graphql-transport-ws: dropped after {sent} unread pongs");

    // AppSync: messages it does not support, each answered with an `error`.
    let header = URL_SAFE_NO_PAD.encode(header_object(&app.url, &token));
    let protocols = ["graphql-ws".to_owned(), format!("header-{header}")];
    let mut ws = open_small_window(&ws_url(&app.url, "/graphql/realtime"), &protocols).await;
    send(&mut ws, json!({"type": "connection_init"})).await;
    let sent = flood_without_reading(&mut ws, json!({"type": "unsupported", "id": "x"})).await;
    println!("AppSync: dropped after {sent} unread errors");

    // A client that reads is served as before.
    assert!(connect(&app, Flavour::AppSync, Some(&token)).await.is_ok());
    assert!(connect(&app, Flavour::TransportWs, Some(&token)).await.is_ok());
}

/// The npm clients (graphql-ws 6, subscriptions-transport-ws) see the answers above as their
/// users would: 4403, 4409, `error` messages, the cap. Their packages are pinned by
/// `tests/clients/package-lock.json` (`npm ci --prefix tests/clients`, which .ci/run does);
/// outside CI the test is skipped, loudly, when node or the packages are missing, under CI
/// (`CI=true`) it fails instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn npm_clients_see_each_protocol_answer() {
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node_modules");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    if !node || !modules.join("graphql-ws").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the npm clients test needs node and `npm ci --prefix tests/clients` under CI"
        );
        eprintln!(
            "\n*** SKIPPED the npm clients test: run `npm ci --prefix tests/clients` (needs node) ***\n"
        );
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, |s| s.ws_max_subscriptions = 3).await;
    // Queued and never drained: its stream stays open.
    let upload_id = upload_with_failures(&app, 97).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/npm_ws_clients.cjs");
    let run = tokio::process::Command::new("node")
        .arg(script)
        .args([
            ws_url(&app.url, "/graphql"),
            app.alice(),
            upload_id,
            "3".to_owned(),
        ])
        .env("NODE_PATH", modules)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .unwrap()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("every check passed"), "{stdout}");
}
