//! GraphiQL at `/` and the console at `/ui`: every asset comes from the server itself under a
//! strict Content-Security-Policy, and the dev sign-in exists only on the embedded default.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::on_both_backends;

/// `src="/…"` and `href="/…"` of a page.
fn local_references(html: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            refs.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    refs
}

async fn check_page(app: &TestApp, path: &str, title: &str) {
    let resp = app.http.get(format!("{}{path}", app.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "connect-src 'self';",
        "font-src 'self' data:",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{path}: {directive} missing from {csp}");
    }
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let html = resp.text().await.unwrap();
    assert!(html.contains(title), "{path}: {html}");
    let refs = local_references(&html);
    assert!(
        refs.iter().any(|r| r.ends_with(".js")),
        "{path} loads scripts: {refs:?}"
    );
    for r in refs {
        if r.starts_with("data:") || r == "/" || r == "/ui" {
            continue;
        }
        assert!(
            r.starts_with("/assets/"),
            "{path} refers to {r}, not to an embedded asset"
        );
        let asset = app.http.get(format!("{}{r}", app.url)).send().await.unwrap();
        assert_eq!(asset.status(), 200, "{r}");
        let kind = asset.headers()["content-type"].to_str().unwrap().to_owned();
        let expected = if r.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(kind.starts_with(expected), "{r}: {kind}");
        let body = asset.bytes().await.unwrap();
        assert!(!body.is_empty(), "{r} is empty");
    }
}

on_both_backends! {
    async fn pages_load_only_their_own_assets(app: TestApp) {
        check_page(&app, "/", "GraphiQL").await;
        check_page(&app, "/ui", "fleetload console").await;
        // The production builds, not the development ones.
        let react = app.http.get(format!("{}/assets/vendor/react-dom.production.min.js", app.url)).send().await.unwrap();
        let text = react.text().await.unwrap();
        assert!(text.contains("react-dom.production.min.js"), "not the production build");

        // The large files go gzipped to clients that take it, as they are to the others.
        let url = format!("{}/assets/vendor/graphiql.min.js", app.url);
        let plain = app.http.get(&url).send().await.unwrap();
        assert!(plain.headers().get("content-encoding").is_none());
        let plain_len = plain.bytes().await.unwrap().len();
        let zipped = app.http.get(&url).header("accept-encoding", "gzip").send().await.unwrap();
        assert_eq!(zipped.headers()["content-encoding"], "gzip");
        assert_eq!(zipped.headers()["vary"], "accept-encoding");
        let zipped = zipped.bytes().await.unwrap();
        assert_eq!(&zipped[..2], &[0x1f, 0x8b], "gzip magic");
        assert!(zipped.len() * 3 < plain_len, "{} vs {plain_len}", zipped.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_traversing_asset_paths_are_not_found() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in [
        "/assets/nope.js",
        "/assets/../Cargo.toml",
        "/assets/%2e%2e/Cargo.toml",
        "/assets/vendor/SHA256SUMS",
        "/assets/console/index.html",
    ] {
        let resp = app.http.get(format!("{}{path}", app.url)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
}

async fn sign_in(app: &TestApp, body: &str) -> (u16, Value) {
    let resp = app
        .http
        .post(format!("{}/ui/dev-sign-in", app.url))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    let code = body["errors"][0]["extensions"]["code"].as_str().unwrap_or("");
    assert_eq!(
        body["errors"][0]["extensions"]["errorType"]
            .as_str()
            .unwrap_or(""),
        code
    );
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_sign_in_on_the_embedded_default_mints_working_tokens_for_demo_users_only() {
    let app = spawn_app(Backend::Sqlite).await;
    let list: Value = app
        .http
        .get(format!("{}/ui/dev-sign-in", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["enabled"], true);
    let users: Vec<_> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].clone())
        .collect();
    assert_eq!(users, [json!("alice"), json!("bob")]);

    let (status, body) = sign_in(&app, r#"{"user":"bob"}"#).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap();
    let data = app
        .gql(Some(token), "{ tenants(tenantId: \"acme\") { id } }", json!({}))
        .await;
    assert_eq!(data["data"]["tenants"][0]["id"], "acme", "{data}");
    // bob's token is bob's: demo is another customer.
    let data = app
        .gql(Some(token), "{ tenants(tenantId: \"demo\") { id } }", json!({}))
        .await;
    assert_eq!(code(&data), "FORBIDDEN", "{data}");

    for bad in [r#"{"user":"mallory"}"#, r#"{"user":1}"#, "not json", "{}", ""] {
        let (status, body) = sign_in(&app, bad).await;
        assert_eq!((status, code(&body)), (400, "BAD_USER_INPUT"), "{bad}: {body}");
    }
    // Another site's page may call the API (CORS), but gets no token.
    let resp = app
        .http
        .post(format!("{}/ui/dev-sign-in", app.url))
        .header("content-type", "application/json")
        .header("origin", "http://evil.example")
        .body(r#"{"user":"alice"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(code(&resp.json().await.unwrap()), "FORBIDDEN");
    let own = app
        .http
        .post(format!("{}/ui/dev-sign-in", app.url))
        .header("content-type", "application/json")
        .header("origin", &app.url)
        .body(r#"{"user":"alice"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "from its own page");

    let huge = format!(r#"{{"user":"{}"}}"#, "a".repeat(10_000));
    let (status, _) = sign_in(&app, &huge).await;
    assert!(status == 400 || status == 413, "an oversized body: {status}");
}

async fn assert_disabled(app: &TestApp) {
    let list: Value = app
        .http
        .get(format!("{}/ui/dev-sign-in", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!({"enabled": false, "users": []}));
    let (status, body) = sign_in(app, r#"{"user":"alice"}"#).await;
    assert_eq!((status, code(&body)), (403, "DEV_SIGN_IN_DISABLED"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_sign_in_is_off_with_a_configured_secret_or_when_turned_off() {
    let configured = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some("a-configured-production-secret".to_owned().into());
        s.dev_sign_in = Some(true);
    })
    .await;
    assert_disabled(&configured).await;
    let off = spawn_app_with(Backend::Sqlite, |s| s.dev_sign_in = Some(false)).await;
    assert_disabled(&off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_sign_in_is_off_by_default_on_postgres() {
    let app = spawn_app(Backend::Postgres).await;
    assert_disabled(&app).await;
}
