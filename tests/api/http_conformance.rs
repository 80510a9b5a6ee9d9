//! GraphQL over HTTP (spec draft) as the `graphql-http` audit and browsers check it: media
//! types, status codes of request errors, GET for queries only, CORS preflights. The audit
//! itself runs too (node and `tests/audit`).

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use crate::helpers::{Backend, TestApp, error_code, spawn_app};

const GR: &str = "application/graphql-response+json";

async fn post_with(app: &TestApp, accept: Option<&str>, body: &str) -> (u16, String, Value) {
    let mut req = app
        .http
        .post(format!("{}/graphql", app.url))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    if let Some(accept) = accept {
        req = req.header(ACCEPT, accept);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
    let text = resp.text().await.unwrap();
    (
        status,
        content_type,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_response_type_follows_accept() {
    let app = spawn_app(Backend::Sqlite).await;
    let ok = r#"{"query": "{ __typename }"}"#;
    for (accept, expected) in [
        (None, "application/json"),
        (Some("*/*"), "application/json"),
        (Some("application/json"), "application/json"),
        (Some(GR), GR),
        (
            Some("application/graphql-response+json, application/json;q=0.9"),
            GR,
        ),
    ] {
        let (status, content_type, body) = post_with(&app, accept, ok).await;
        assert_eq!(status, 200, "{accept:?}");
        assert!(content_type.starts_with(expected), "{accept:?}: {content_type}");
        assert_eq!(body["data"]["__typename"], "Query");
    }
    let (status, _, body) = post_with(&app, Some("text/html"), ok).await;
    assert_eq!((status, error_code(&body)), (406, "NOT_ACCEPTABLE".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_errors_are_400_under_graphql_response_json_and_200_under_json() {
    let app = spawn_app(Backend::Sqlite).await;
    let cases = [
        (r#"{"query": "{"}"#, "GRAPHQL_PARSE_FAILED"),
        (r#"{"query": "{ notAField }"}"#, "GRAPHQL_VALIDATION_FAILED"),
        (
            r#"{"query": "query($id: ID!) { __typename }", "variables": {"id": null}}"#,
            "GRAPHQL_VALIDATION_FAILED",
        ),
    ];
    for (body, code) in cases {
        let (status, _, json) = post_with(&app, Some(GR), body).await;
        assert_eq!(status, 400, "{body}: {json}");
        assert_eq!(error_code(&json), code);
        assert!(json.get("data").is_none(), "{json}");
        let (status, _, json) = post_with(&app, Some("application/json"), body).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(error_code(&json), code);
        assert!(json.get("data").is_none(), "{json}");
    }
    // An execution error is a result with data, whatever the media type.
    let unauthenticated = r#"{"query": "{ upload(tenantId: \"demo\", uploadId: \"x\") { id } }"}"#;
    let (status, _, json) = post_with(&app, Some(GR), unauthenticated).await;
    assert_eq!(status, 200);
    assert_eq!(error_code(&json), "UNAUTHENTICATED");
    assert!(json.get("data").is_some(), "{json}");
    // Bodies that are not GraphQL requests at all.
    for body in [
        r#"{ "not a JSON"#,
        r#"{"qeury": "{ __typename }"}"#,
        r#"{"query": "{ a }", "variables": []}"#,
    ] {
        for accept in ["application/json", GR] {
            let (status, _, json) = post_with(&app, Some(accept), body).await;
            assert_eq!((status, error_code(&json)), (400, "BAD_REQUEST".into()), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_bodies_must_be_json() {
    let app = spawn_app(Backend::Sqlite).await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = app
            .http
            .post(format!("{}/graphql", app.url))
            .body(r#"{"query": "{ __typename }"}"#);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 415, "{content_type:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(error_code(&body), "UNSUPPORTED_MEDIA_TYPE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_runs_queries_and_refuses_mutations_with_405() {
    let app = spawn_app(Backend::Sqlite).await;
    let url = format!("{}/graphql", app.url);
    let resp = app
        .http
        .get(&url)
        .query(&[
            ("query", "query T($n: String!) { __type(name: $n) { name } }"),
            ("variables", r#"{"n": "Upload"}"#),
            ("operationName", "T"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["__type"]["name"], "Upload");

    let mutation = r#"mutation { finalizeBatchUpload(tenantId: "demo", uploadId: "x") }"#;
    for (query, name) in [
        (mutation.to_owned(), None),
        (
            "query Q { __typename } mutation M { __typename }".to_owned(),
            Some("M"),
        ),
    ] {
        let mut params = vec![("query", query.as_str())];
        params.extend(name.map(|n| ("operationName", n)));
        let resp = app.http.get(&url).query(&params).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{query}");
        assert_eq!(resp.headers()["allow"], "POST");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(error_code(&body), "METHOD_NOT_ALLOWED");
    }
    // The query of a document that also holds a mutation is fine.
    let resp = app
        .http
        .get(&url)
        .query(&[
            ("query", "query Q { __typename } mutation M { __typename }"),
            ("operationName", "Q"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cors_preflights_allow_authorization_and_client_headers_by_name() {
    let app = spawn_app(Backend::Sqlite).await;
    let asked = "authorization,content-type,x-api-key,x-amz-date,x-amz-user-agent,apollo-require-preflight";
    let resp = app
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/graphql", app.url))
        .header("Origin", "http://localhost:3000")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", asked)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    // `*` would not cover Authorization (Fetch standard): each header is named.
    assert_ne!(allowed.trim(), "*");
    for header in asked.split(',') {
        assert!(allowed.contains(header), "{header} not in {allowed}");
    }
}

/// The `graphql-http` package's server audits against the real server: every MUST passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_graphql_http_audit_passes_every_must() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/audit");
    if !dir.join("node_modules/graphql-http").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm (node) is needed for the GraphQL over HTTP audit");
        assert!(status.success(), "npm ci in tests/audit failed");
    }
    let app = spawn_app(Backend::Sqlite).await;
    let url = format!("{}/graphql", app.url);
    let out = tokio::process::Command::new("node")
        .arg("graphql-http-audit.mjs")
        .arg(&url)
        .current_dir(&dir)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a MUST failed:\n{stdout}");
    assert!(stdout.contains("MUST: "), "{stdout}");
    assert!(!stdout.contains("MUST: 0 passed"), "{stdout}");
}
