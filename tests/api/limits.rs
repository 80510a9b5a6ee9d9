//! Limits and abuse (issue #9): documents that expand, bodies that never end, floods; each
//! refused with its code while the server keeps serving, and processing kept apart from
//! API load.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, imeis, spawn_app, spawn_app_with};
use futures::StreamExt;

/// The test process's resident memory (the server runs in it), in MiB.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// Generous: other tests of this binary run alongside and allocate too.
const RSS_BOUND_MIB: u64 = 200;

/// POSTs a raw JSON body without a token; the status and the parsed body.
async fn post(app: &TestApp, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = app.http.post(format!("{}/graphql", app.url)).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn still_serving(app: &TestApp) {
    let (status, body) = post(app, None, &json!({"query": "{ __typename }"})).await;
    assert_eq!(
        (status, &body["data"]["__typename"]),
        (200, &json!("Query")),
        "{body}"
    );
}

/// `F0` spreads `F1` `fanout` times, `F1` spreads `F2`, …: fanout^levels expansions in about
/// a kilobyte.
fn fragment_bomb(levels: usize, fanout: usize) -> String {
    let mut q = String::from("query { ...F0 }\n");
    for i in 0..levels {
        let spreads = format!("...F{} ", i + 1).repeat(fanout);
        q.push_str(&format!("fragment F{i} on Query {{ {spreads}}}\n"));
    }
    q.push_str(&format!("fragment F{levels} on Query {{ __typename }}\n"));
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fragment_bombs_are_refused_before_they_expand() {
    let app = spawn_app(Backend::Sqlite).await;
    let before = rss_mib();
    // 2^26 as in the finding (it aborted the process), and 10^30 that nothing could walk.
    for (levels, fanout) in [(26, 2), (30, 10)] {
        let query = fragment_bomb(levels, fanout);
        assert!(query.len() < 4096, "{}", query.len());
        let (status, body) = post(&app, None, &json!({"query": query})).await;
        assert_eq!(status, 200);
        assert_eq!(error_code(&body), "QUERY_TOO_LARGE", "{body}");
        assert!(body.get("data").is_none(), "a request error has no data: {body}");
    }
    let cycle = "{ ...A } fragment A on Query { ...B ...B } fragment B on Query { ...A ...A }";
    let (_, body) = post(&app, None, &json!({"query": cycle})).await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    let grown = rss_mib().saturating_sub(before);
    assert!(grown < RSS_BOUND_MIB, "RSS grew {grown} MiB");
    still_serving(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alias_bombs_and_expensive_pages_are_refused_before_they_run() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.alice();
    let id = app
        .upload_csv(
            &token,
            json!({"rowCount": 3}),
            crate::helpers::csv("imei", &imeis(71, 3)),
        )
        .await;
    app.drain().await;
    let before = rss_mib();
    let aliases: String = (0..10_000)
        .map(|i| format!("a{i}: results(first: 500) {{ edges {{ node {{ rowNumber }} }} }} "))
        .collect();
    let query = format!("{{ upload(tenantId: \"demo\", uploadId: \"{id}\") {{ {aliases} }} }}");
    let (status, body) = post(&app, Some(&token), &json!({"query": query})).await;
    assert_eq!(status, 200);
    // 600 KB of text: refused before it is parsed.
    assert_eq!(error_code(&body), "QUERY_TOO_LARGE", "{body}");
    // Short text, many aliases once its fragment is expanded.
    let fragment: String = (0..11)
        .map(|i| format!("r{i}: results(first: 1) {{ totalCount }} "))
        .collect();
    let spreads = "...R ".repeat(10);
    let query = format!(
        "{{ upload(tenantId: \"demo\", uploadId: \"{id}\") {{ {spreads} }} }} fragment R on Upload {{ {fragment} }}"
    );
    let (_, body) = post(&app, Some(&token), &json!({"query": query})).await;
    assert_eq!(error_code(&body), "TOO_MANY_ALIASES", "{body}");
    // Under the alias limit, but 50 pages of 500 rows: refused for its cost.
    let aliases: String = (0..50)
        .map(|i| format!("a{i}: results(first: 500) {{ edges {{ node {{ rowNumber deviceUid }} }} }} "))
        .collect();
    let query = format!("{{ upload(tenantId: \"demo\", uploadId: \"{id}\") {{ {aliases} }} }}");
    let (_, body) = post(&app, Some(&token), &json!({"query": query})).await;
    assert_eq!(error_code(&body), "QUERY_TOO_COMPLEX", "{body}");
    // A real page still passes, and `first` past the page size has its own code.
    let query = format!(
        "{{ upload(tenantId: \"demo\", uploadId: \"{id}\") {{ results(first: 500) {{ totalCount edges {{ node {{ rowNumber }} }} }} }} }}"
    );
    let (_, body) = post(&app, Some(&token), &json!({"query": query})).await;
    assert_eq!(body["data"]["upload"]["results"]["totalCount"], 3, "{body}");
    let (_, body) = post(
        &app,
        Some(&token),
        &json!({"query": "{ uploads(tenantId: \"demo\", first: 501) { totalCount } }"}),
    )
    .await;
    assert_eq!(error_code(&body), "FIRST_TOO_LARGE", "{body}");
    let grown = rss_mib().saturating_sub(before);
    assert!(grown < RSS_BOUND_MIB, "RSS grew {grown} MiB");
    still_serving(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deep_documents_are_refused_and_the_introspection_query_is_not() {
    let app = spawn_app(Backend::Sqlite).await;
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
        "ofType { ".repeat(14),
        "} ".repeat(14)
    );
    let (_, body) = post(&app, None, &json!({"query": deep})).await;
    assert_eq!(error_code(&body), "QUERY_TOO_DEEP", "{body}");
    // What GraphiQL and codegen send (graphql-js `getIntrospectionQuery`, typeDepth 9).
    let (_, body) = post(&app, None, &json!({"query": INTROSPECTION})).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_400_mb_body_is_refused_with_413_and_never_held() {
    let app = spawn_app(Backend::Sqlite).await;
    let before = rss_mib();
    // Streamed, so the server cannot know its length up front; generated, never held whole.
    const CHUNK: usize = 64 * 1024;
    let chunks = 400 * 1024 * 1024 / CHUNK;
    let stream = futures::stream::iter((0..chunks).map(|i| {
        let chunk = if i == 0 {
            let mut c = b"{\"query\": \"{ __typename }\", \"x\": \"".to_vec();
            c.resize(CHUNK, b'a');
            c
        } else {
            vec![b'a'; CHUNK]
        };
        Ok::<_, std::io::Error>(Bytes::from(chunk))
    }));
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("the refusal reaches a client that is still sending");
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&body), "PAYLOAD_TOO_LARGE", "{body}");
    // A declared length past the limit is refused before a byte is read.
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let grown = rss_mib().saturating_sub(before);
    assert!(grown < RSS_BOUND_MIB, "RSS grew {grown} MiB");
    still_serving(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_strings_are_refused_as_arguments_and_as_variables() {
    let ten_mb = "x".repeat(10 * 1024 * 1024);
    let query = "query($t: String!) { upload(tenantId: $t, uploadId: \"x\") { id } }";
    // Under the default body limit the body itself is refused.
    let app = spawn_app(Backend::Sqlite).await;
    let (status, body) = post(&app, None, &json!({"query": query, "variables": {"t": ten_mb}})).await;
    assert_eq!((status, error_code(&body)), (413, "PAYLOAD_TOO_LARGE".into()));
    // With room for the body, the string itself.
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.max_body_bytes = 32 * 1024 * 1024;
        s.max_query_bytes = 1024 * 1024;
    })
    .await;
    let token = app.alice();
    let (_, body) = post(
        &app,
        Some(&token),
        &json!({"query": query, "variables": {"t": ten_mb}}),
    )
    .await;
    assert_eq!(
        error_code(&body),
        "ARGUMENT_TOO_LONG",
        "{}",
        &body.to_string()[..200]
    );
    let inline = format!(
        "{{ upload(tenantId: \"{}\", uploadId: \"x\") {{ id }} }}",
        "y".repeat(100_000)
    );
    let (_, body) = post(&app, Some(&token), &json!({"query": inline})).await;
    assert_eq!(error_code(&body), "ARGUMENT_TOO_LONG");
    let nested = json!({"b": {"deep": ["z".repeat(70_000)]}});
    let (_, body) = post(
        &app,
        Some(&token),
        &json!({"query": crate::helpers::FINALIZE, "variables": {"tenantId": "demo", "uploadId": "x", "billingDetail": nested}}),
    )
    .await;
    assert_eq!(error_code(&body), "ARGUMENT_TOO_LONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_are_answered_in_order_up_to_their_limit() {
    let app = spawn_app(Backend::Sqlite).await;
    let op = json!({"query": "{ __typename }"});
    let (status, body) = post(&app, None, &json!([op, {"query": "{ nope }"}])).await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["data"]["__typename"], "Query");
    assert_eq!(
        body[1]["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    let eleven: Vec<Value> = std::iter::repeat_n(op, 11).collect();
    let (status, body) = post(&app, None, &Value::Array(eleven)).await;
    assert_eq!((status, error_code(&body)), (400, "BATCH_TOO_LARGE".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_past_its_rate_gets_429_and_others_do_not() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limit_per_sec = 1;
        s.rate_limit_burst = 3;
    })
    .await;
    let alice = app.alice();
    let op = json!({"query": "{ __typename }"});
    for _ in 0..3 {
        assert_eq!(post(&app, Some(&alice), &op).await.0, 200);
    }
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .bearer_auth(&alice)
        .json(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&body), "RATE_LIMITED");
    // Bob (another subject) and anonymous callers (by address) have buckets of their own.
    assert_eq!(post(&app, Some(&app.bob()), &op).await.0, 200);
    assert_eq!(post(&app, None, &op).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_stalls_times_out() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.request_timeout_secs = 1).await;
    let stream = futures::stream::iter([0, 1]).then(|i| async move {
        if i == 1 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok::<_, std::io::Error>(Bytes::from_static(b"{\"query\": "))
    });
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&body), "REQUEST_TIMEOUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn introspection_can_require_a_token_or_be_off() {
    let query = json!({"query": "{ __schema { queryType { name } } }"});
    let app = spawn_app(Backend::Sqlite).await;
    let (_, body) = post(&app, None, &query).await;
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query", "{body}");

    use fleetload::config::IntrospectionPolicy;
    let app = spawn_app_with(Backend::Sqlite, |s| s.introspection = IntrospectionPolicy::Token).await;
    let (_, body) = post(&app, None, &query).await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
    let hidden = json!({"query": "{ ...F } fragment F on Query { __type(name: \"Upload\") { name } }"});
    let (_, body) = post(&app, None, &hidden).await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
    let (_, body) = post(&app, Some(&app.alice()), &query).await;
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query", "{body}");
    still_serving(&app).await;

    let app = spawn_app_with(Backend::Sqlite, |s| s.introspection = IntrospectionPolicy::Off).await;
    let (_, body) = post(&app, Some(&app.alice()), &query).await;
    assert_eq!(error_code(&body), "INTROSPECTION_DISABLED", "{body}");
    // `__typename` is not introspection: clients (Apollo's cache) add it everywhere.
    still_serving(&app).await;
}

/// SPEC §7 writes `FLEETLOAD_DEMO_DATA=1`.
#[test]
fn demo_data_takes_the_usual_spellings_of_a_boolean() {
    let run = |value: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetload"))
            .arg("schema")
            .env("FLEETLOAD_DEMO_DATA", value)
            .output()
            .unwrap()
    };
    for value in ["1", "0", "true", "false", "yes", "no", "on", "off"] {
        let out = run(value);
        assert!(
            out.status.success(),
            "{value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run("maybe");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLEETLOAD_DEMO_DATA") || !out.stderr.is_empty());
}

/// With every API connection taken, an API request answers SERVICE_BUSY (not an internal
/// error) and the pipeline, on its own pool, still finishes an upload.
async fn an_exhausted_api_pool_answers_service_busy_and_processing_goes_on(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.db_acquire_timeout_secs = 1).await;
    let token = app.alice();
    let id = app
        .upload_csv(
            &token,
            json!({"rowCount": 50}),
            crate::helpers::csv("imei", &imeis(72, 50)),
        )
        .await;
    let held = hold_api_pool(&app).await;
    let (_, body) = post(
        &app,
        Some(&token),
        &json!({"query": format!("{{ upload(tenantId: \"demo\", uploadId: \"{id}\") {{ status }} }}")}),
    )
    .await;
    assert_eq!(error_code(&body), "SERVICE_BUSY", "{body}");
    assert!(app.drain().await > 0);
    drop(held);
    let state = app.upload_state(&token, "demo", &id).await;
    assert_eq!(state["status"], "COMPLETED", "{state}");
    assert_eq!(state["succeeded"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_api_pool_answers_service_busy_sqlite() {
    an_exhausted_api_pool_answers_service_busy_and_processing_goes_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_api_pool_answers_service_busy_postgres() {
    an_exhausted_api_pool_answers_service_busy_and_processing_goes_on(Backend::Postgres).await;
}

/// Takes every connection of the API pool until dropped.
async fn hold_api_pool(app: &TestApp) -> Vec<Box<dyn std::any::Any + Send>> {
    use sea_orm::ConnectionTrait;
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    match app.state.db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = app.state.db.get_postgres_connection_pool();
            while let Ok(conn) = tokio::time::timeout(Duration::from_millis(300), pool.acquire()).await {
                held.push(Box::new(conn.unwrap()));
            }
        }
        _ => {
            let pool = app.state.db.get_sqlite_connection_pool();
            while let Ok(conn) = tokio::time::timeout(Duration::from_millis(300), pool.acquire()).await {
                held.push(Box::new(conn.unwrap()));
            }
        }
    }
    assert!(!held.is_empty());
    held
}

/// Sends a whole request (head, then the body in 64 KiB writes) before reading a byte of the
/// answer, as browsers do with an upload; a server that closes early resets the connection
/// and the client never sees its answer.
async fn send_all_then_read(base: &str, head: String, body: Vec<u8>) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await?;
    for piece in body.chunks(64 * 1024) {
        stream.write_all(piece).await?;
    }
    stream.flush().await?;
    let mut answer = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .map_err(std::io::Error::other)??;
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if n == 0 || text.contains("</Error>") || text.trim_end().ends_with('}') {
            return Ok(text.into_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_upload_endpoint_s_refusal_reaches_a_client_that_sends_its_whole_file_first() {
    let app = spawn_app(Backend::Sqlite).await;
    for attempt in 0..3 {
        let (_, file_upload) = app.prepare_demo().await;
        let mut fields: serde_json::Map<String, Value> =
            serde_json::from_str(file_upload["fields"].as_str().unwrap()).unwrap();
        // A policy that no longer matches its signature: refused as soon as `file` starts.
        fields.insert("key".into(), json!("uploads/someone-else/devices.csv"));
        let boundary = "----fleetloadboundary";
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{}\r\n",
                    value.as_str().unwrap()
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"devices.csv\"\r\nContent-Type: text/csv\r\n\r\n").as_bytes(),
        );
        body.extend(std::iter::repeat_n(b'1', 3 * 1024 * 1024));
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = url::Url::parse(file_upload["url"].as_str().unwrap()).unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
            url.path(),
            url.authority(),
            body.len()
        );
        let answer = send_all_then_read(&app.url, head, body)
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: the client saw {e:?} instead of the 403"));
        assert!(answer.starts_with("HTTP/1.1 403"), "attempt {attempt}: {answer}");
        assert!(answer.contains("<Code>AccessDenied</Code>"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_too_large_graphql_body_s_413_reaches_a_client_that_sends_it_whole_first() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut body = br#"{"query": "{ __typename }", "x": ""#.to_vec();
    body.extend(std::iter::repeat_n(b'a', 3 * 1024 * 1024));
    body.extend_from_slice(br#""}"#);
    let authority = app.url.trim_start_matches("http://").to_owned();
    // With its length declared (refused before reading) and chunked (refused while reading).
    let declared = format!(
        "POST /graphql HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut chunked = Vec::new();
    for piece in body.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let streamed = format!(
        "POST /graphql HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for (head, body) in [(declared, body), (streamed, chunked)] {
        let answer = send_all_then_read(&app.url, head, body)
            .await
            .unwrap_or_else(|e| panic!("the client saw {e:?} instead of the 413"));
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");
    }
}

/// graphql-js `getIntrospectionQuery()` with its default `typeDepth` of 9.
const INTROSPECTION: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) { name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } } }
}
"#;

/// The document limits hold on every transport: here a fragment bomb subscribed over
/// graphql-transport-ws.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fragment_bomb_over_a_websocket_is_refused_with_its_code() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let app = spawn_app(Backend::Sqlite).await;
    let before = rss_mib();
    let mut request = format!("{}/graphql", app.url.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let next = async move |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("an answer")
            .expect("the connection stays open")
            .unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str::<Value>(&text).unwrap();
        }
    };
    let send = |v: Value| Message::Text(v.to_string().into());
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", app.alice())}});
    ws.send(send(init)).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    let bomb = fragment_bomb(26, 2)
        .replace("on Query", "on Subscription")
        .replacen("query", "subscription", 1);
    ws.send(send(
        json!({"type": "subscribe", "id": "1", "payload": {"query": bomb}}),
    ))
    .await
    .unwrap();
    let answer = next(&mut ws).await;
    // graphql-ws answers a refused document with `error` (its errors as the payload); a
    // `next` carrying only errors says the same. Either way: nothing ran, the code is there.
    let errors = match answer["type"].as_str() {
        Some("error") => &answer["payload"],
        _ => &answer["payload"]["errors"],
    };
    assert_eq!(errors[0]["extensions"]["code"], "QUERY_TOO_LARGE", "{answer}");
    let grown = rss_mib().saturating_sub(before);
    assert!(grown < RSS_BOUND_MIB, "RSS grew {grown} MiB");
    still_serving(&app).await;
}

/// A request still running at its deadline answers REQUEST_TIMEOUT (504); here it waits for
/// a pool connection that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_past_its_deadline_answers_request_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.request_timeout_secs = 1;
        s.db_acquire_timeout_secs = 60;
    })
    .await;
    let held = hold_api_pool(&app).await;
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .bearer_auth(app.alice())
        .json(&json!({"query": "{ upload(tenantId: \"demo\", uploadId: \"x\") { id } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&body), "REQUEST_TIMEOUT");
    drop(held);
    still_serving(&app).await;
}

/// Heavy queries take turns: two that each wait out the pool's acquire timeout finish one
/// after the other, while a light query is not held up by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_queries_take_turns_and_light_ones_pass() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.db_acquire_timeout_secs = 2;
        // `upload { status }` costs 2, `__typename` 1.
        s.heavy_query_complexity = 2;
        s.heavy_queries_at_once = 1;
    })
    .await;
    let token = app.alice();
    let held = hold_api_pool(&app).await;
    let heavy = json!({"query": "{ upload(tenantId: \"demo\", uploadId: \"x\") { status } }"});
    let started = std::time::Instant::now();
    let (a, b, light) = tokio::join!(
        post(&app, Some(&token), &heavy),
        post(&app, Some(&token), &heavy),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let answer = post(&app, Some(&token), &json!({"query": "{ __typename }"})).await;
            (answer, started.elapsed())
        }
    );
    let both = started.elapsed();
    assert_eq!(error_code(&a.1), "SERVICE_BUSY");
    assert_eq!(error_code(&b.1), "SERVICE_BUSY");
    // Side by side they would be done after one acquire timeout (2 s); in turn, after two.
    assert!(both >= Duration::from_millis(3900), "{both:?}");
    let ((_, body), _) = light;
    assert_eq!(body["data"]["__typename"], "Query");
    drop(held);
}
