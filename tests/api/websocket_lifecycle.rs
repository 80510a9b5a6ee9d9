//! How WebSocket connections end besides refusals: the server's shutdown (1001 on every
//! protocol, and a bounded exit even with a request that never completes), the idle timeout
//! of acknowledged connections, and the caps on open connections (HTTP 503 before upgrading).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;
use crate::subscriptions::{
    Flavour, Frame, Ws, api_process, connect, connect_to, first_event, next_frame, next_json, send, start,
    upload_with_failures, ws_url,
};

const FLAVOURS: [Flavour; 3] = [Flavour::TransportWs, Flavour::LegacyWs, Flavour::AppSync];

/// Every frame until the connection ends, AppSync's `ka` left out.
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

fn close_of(frames: &[Frame]) -> (u16, String) {
    match frames.last() {
        Some(Frame::Close(Some((code, reason)))) => (*code, reason.clone()),
        other => panic!("expected a close frame with a code, got {other:?} (all: {frames:?})"),
    }
}

/// Nothing but AppSync's `ka` arrives for `quiet`: the connection is neither closed nor sent
/// anything else.
async fn stays_quiet(ws: &mut Ws, quiet: Duration) {
    let until = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(until, next_frame(ws)).await {
            Err(_) => return,
            Ok(Frame::Json(v)) if v["type"] == "ka" || v["type"] == "pong" => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_closes_every_websocket_with_1001_and_exits_0_despite_a_stalled_request() {
    use secrecy::ExposeSecret;
    // The in-process app prepares the database, signs tokens and creates the upload (it runs
    // no workers, so the upload stays queued and its subscriptions stay open).
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
        ("FLEETLOAD_SHUTDOWN_GRACE_SECS", "3".to_owned()),
        // The stalled request below must outlast the bound: the request timeout would end it.
        ("FLEETLOAD_REQUEST_TIMEOUT_SECS", "600".to_owned()),
    ];
    let (mut server, url) = api_process(&env).await;
    let token = app.alice();
    let upload_id = upload_with_failures(&app, 31).await;

    let mut open = Vec::new();
    for flavour in FLAVOURS {
        let mut ws = connect_to(&url, flavour, Some(&token))
            .await
            .expect("acknowledged");
        start(&mut ws, flavour, "s1", &token, "demo", &upload_id).await;
        let (first, _) = first_event(&mut ws, flavour, "s1").await;
        assert_eq!(first["status"], "QUEUED", "{flavour:?}");
        open.push((flavour, ws));
    }
    // A request whose body never arrives: without a bound, graceful shutdown waits on it.
    let mut stalled = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stalled
        .write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"query\":")
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    for (flavour, ws) in &mut open {
        let frames = frames_until_closed(ws).await;
        assert_eq!(
            close_of(&frames),
            (1001, "Going away".to_owned()),
            "{flavour:?}: {frames:?}"
        );
    }
    // Generous: the grace period is 3 s; a server that waits for the stalled request never
    // exits at all.
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(45),
            "serve did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("serve exited {status} {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "{status}");
}

/// Idle timeout of 1 s; no workers, so subscriptions to a queued upload keep running.
async fn idle_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| s.ws_idle_timeout_secs = 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledged_connection_without_subscriptions_is_closed_when_idle() {
    let app = idle_app().await;
    let token = app.alice();
    for flavour in FLAVOURS {
        let mut ws = connect(&app, flavour, Some(&token)).await.expect("acknowledged");
        let frames = frames_until_closed(&mut ws).await;
        assert_eq!(
            close_of(&frames),
            (1000, "IDLE_TIMEOUT: no subscription running".to_owned()),
            "{flavour:?}: {frames:?}"
        );
        // Nothing but the close frame: no error message, the client did nothing wrong.
        assert_eq!(frames.len(), 1, "{flavour:?}: {frames:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_pings_and_running_subscriptions_keep_a_connection_open() {
    let app = idle_app().await;
    let token = app.alice();
    let upload_id = upload_with_failures(&app, 32).await;

    // graphql-transport-ws `ping`s count as activity.
    let mut ws = connect(&app, Flavour::TransportWs, Some(&token)).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        send(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
    }
    let frames = frames_until_closed(&mut ws).await;
    assert_eq!(close_of(&frames).0, 1000, "{frames:?}");

    // A running subscription does too, on every protocol; its end starts the idle time.
    for flavour in FLAVOURS {
        let mut ws = connect(&app, flavour, Some(&token)).await.unwrap();
        start(&mut ws, flavour, "s1", &token, "demo", &upload_id).await;
        let (first, _) = first_event(&mut ws, flavour, "s1").await;
        assert_eq!(first["status"], "QUEUED");
        stays_quiet(&mut ws, Duration::from_millis(2500)).await;
        let stop = match flavour {
            Flavour::TransportWs => json!({"type": "complete", "id": "s1"}),
            _ => json!({"type": "stop", "id": "s1"}),
        };
        send(&mut ws, stop).await;
        let frames = frames_until_closed(&mut ws).await;
        assert_eq!(
            close_of(&frames),
            (1000, "IDLE_TIMEOUT: no subscription running".to_owned()),
            "{flavour:?}: {frames:?}"
        );
    }
}

/// The answer to a WebSocket upgrade of `flavour`'s endpoint from `local` (a loopback
/// address): `Ok` once upgraded, else the HTTP status and JSON body.
async fn upgrade_from(base: &str, local: &str, flavour: Flavour) -> Result<impl Send, (u16, Value)> {
    let path = match flavour {
        Flavour::AppSync => "/graphql/realtime",
        _ => "/graphql",
    };
    let protocol = match flavour {
        Flavour::TransportWs => "graphql-transport-ws",
        _ => "graphql-ws",
    };
    let mut request = ws_url(base, path).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket
        .connect(base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Err((response.status().as_u16(), json))
        }
        Err(other) => panic!("upgrade failed otherwise: {other}"),
    }
}

fn assert_refused(answer: Result<impl Send, (u16, Value)>) {
    let Err((status, body)) = answer else {
        panic!("upgraded past the cap")
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "TOO_MANY_CONNECTIONS",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["errorType"],
        "TOO_MANY_CONNECTIONS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_connections_are_capped_per_process_before_upgrading() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.ws_max_connections = 3).await;
    let mut open = Vec::new();
    for flavour in FLAVOURS {
        open.push(
            upgrade_from(&app.url, "127.0.0.1", flavour)
                .await
                .expect("under the cap"),
        );
    }
    for flavour in FLAVOURS {
        assert_refused(upgrade_from(&app.url, "127.0.0.1", flavour).await);
    }
    // The slot comes back when a connection ends (the server notices the close at once;
    // the bound only guards against a hang).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match upgrade_from(&app.url, "127.0.0.1", Flavour::TransportWs).await {
            Ok(_) => break,
            Err(_) => assert!(Instant::now() < deadline, "the slot never came back"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_connections_are_capped_per_peer_address() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.ws_max_connections_per_ip = 2).await;
    let base = app.url.clone();
    let _a1 = upgrade_from(&base, "127.0.0.1", Flavour::TransportWs)
        .await
        .unwrap();
    let _a2 = upgrade_from(&base, "127.0.0.1", Flavour::AppSync).await.unwrap();
    assert_refused(upgrade_from(&base, "127.0.0.1", Flavour::LegacyWs).await);
    // Another source address (all of 127/8 is loopback) has slots of its own.
    let _b1 = upgrade_from(&base, "127.0.0.2", Flavour::LegacyWs).await.unwrap();
    let _b2 = upgrade_from(&base, "127.0.0.2", Flavour::TransportWs)
        .await
        .unwrap();
    assert_refused(upgrade_from(&base, "127.0.0.2", Flavour::AppSync).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_requests_are_not_counted_as_connections() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.ws_max_connections = 1).await;
    let _ws = upgrade_from(&app.url, "127.0.0.1", Flavour::TransportWs)
        .await
        .unwrap();
    let answer = app
        .http
        .post(format!("{}/graphql", app.url))
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}
