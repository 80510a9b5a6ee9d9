//! Tokens on `POST /graphql`: what is refused (always as `UNAUTHENTICATED`, never with data),
//! what is accepted (`Bearer` or bare, as AppSync clients send it), that the `token` CLI and
//! the server agree, and RS256 tokens verified against a JWKS (Cognito in production).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetload::auth::{Permission, load_or_create_secret, mint_token};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::*;

/// A query that needs an identity: demo's uploads.
const UPLOADS: &str = r#"query { uploads(tenantId: "demo") { totalCount } }"#;

/// The RSA key of the test JWKS. Test-only: see tests/fixtures/README.md.
const TEST_RSA_KEY: &[u8] = include_bytes!("../fixtures/jwks-test-key.pem");
const TEST_JWKS: &str = include_str!("../fixtures/jwks.json");
const TEST_KID: &str = "test-key-1";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// POSTs `query` with the `Authorization` header given verbatim (or none).
async fn gql_with_header(app: &TestApp, authorization: Option<&str>, query: &str) -> Value {
    let mut req = app.http.post(format!("{}/graphql", app.url));
    if let Some(value) = authorization {
        req = req.header("Authorization", value);
    }
    let resp = req.json(&json!({ "query": query })).send().await.unwrap();
    assert!(resp.status().is_success(), "HTTP {}", resp.status());
    resp.json().await.unwrap()
}

/// Asserts the request was refused as unauthenticated and returned no data.
fn assert_unauthenticated(body: &Value) {
    assert_eq!(error_code(body), "UNAUTHENTICATED", "{body}");
    assert!(
        body["data"].is_null(),
        "data leaked to an unauthenticated caller: {body}"
    );
}

/// Asserts the request went through: demo's upload count, no error.
fn assert_accepted(body: &Value) {
    assert!(body.get("errors").is_none(), "refused: {body}");
    assert!(body["data"]["uploads"]["totalCount"].is_number(), "{body}");
}

async fn uploads_with_bearer(app: &TestApp, token: &str) -> Value {
    gql_with_header(app, Some(&format!("Bearer {token}")), UPLOADS).await
}

/// prepareBatchUpload's variables for a small REGISTER upload in `demo`.
fn prepare_vars() -> Value {
    json!({"tenantId": "demo", "assignActionId": "register-prepaid", "rowCount": 2, "deviceType": 1})
}

/// alice's claims, expiring `exp`, for audience `aud`.
fn alice_claims(exp: i64, aud: &str) -> Value {
    json!({
        "sub": "alice", "username": "alice", "tenant_id": "demo",
        "permissions": ["READ", "UPDATE"], "iat": now(), "exp": exp, "aud": aud,
    })
}

/// Signs `claims` HS256 with the app's own local secret (read from its data dir).
fn hs256_with_app_secret(app: &TestApp, header: Header, claims: &Value) -> String {
    let secret = load_or_create_secret(app.data_dir.path(), "jwt-secret").unwrap();
    let key = EncodingKey::from_secret(secret.expose_secret().as_bytes());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_token_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;

    let body = gql_with_header(&app, None, UPLOADS).await;

    assert_unauthenticated(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_secret_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;
    let other = secrecy::SecretString::from("not-the-secret-of-this-server-0123456789");
    let forged = mint_token(
        &other,
        "alice",
        "demo",
        &[Permission::Read],
        "fleetload",
        None,
        3600,
    )
    .unwrap();

    let body = uploads_with_bearer(&app, &forged).await;

    assert_unauthenticated(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_alg_none_token_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(alice_claims(now() + 3600, "fleetload").to_string());
    let token = format!("{header}.{claims}.");

    let body = uploads_with_bearer(&app, &token).await;

    assert_unauthenticated(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_built_token_signed_with_the_apps_secret_is_accepted() {
    // The control for the refusals below: only the one thing they change is wrong.
    let app = spawn_app(Backend::Sqlite).await;
    let token = hs256_with_app_secret(
        &app,
        Header::new(Algorithm::HS256),
        &alice_claims(now() + 3600, "fleetload"),
    );

    let body = uploads_with_bearer(&app, &token).await;

    assert_accepted(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = hs256_with_app_secret(
        &app,
        Header::new(Algorithm::HS256),
        &alice_claims(now() - 3600, "fleetload"),
    );

    let body = uploads_with_bearer(&app, &token).await;

    assert_unauthenticated(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = hs256_with_app_secret(
        &app,
        Header::new(Algorithm::HS256),
        &alice_claims(now() + 3600, "some-other-app"),
    );

    let body = uploads_with_bearer(&app, &token).await;

    assert_unauthenticated(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_value_that_is_not_a_jwt_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;

    let body = gql_with_header(&app, Some("Bearer not-a-jwt"), UPLOADS).await;

    assert_unauthenticated(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_is_accepted_with_or_without_the_bearer_scheme() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.alice();

    let with_bearer = gql_with_header(&app, Some(&format!("Bearer {token}")), UPLOADS).await;
    // What aws-appsync-auth-link sends: the bare token.
    let bare = gql_with_header(&app, Some(&token), UPLOADS).await;

    assert_accepted(&with_bearer);
    assert_accepted(&bare);
}

/// Runs the real `fleetload token` on `data_dir` and returns the printed token.
fn cli_token(data_dir: &std::path::Path, extra: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fleetload"));
    // Only the flags count: a developer's FLEETLOAD_* / DATABASE_URL must not leak in.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FLEETLOAD_") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    let output = command
        .args(["token", "--user", "alice", "--tenant", "demo", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("running the fleetload binary");
    assert!(
        output.status.success(),
        "fleetload token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_printed_by_the_cli_for_the_same_data_dir_is_accepted() {
    let app = spawn_app(Backend::Sqlite).await;

    let token = cli_token(app.data_dir.path(), &[]);

    assert_accepted(&uploads_with_bearer(&app, &token).await);
    app.prepare(&token, prepare_vars()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_cli_token_can_query_but_not_prepare_an_upload() {
    let app = spawn_app(Backend::Sqlite).await;

    let token = cli_token(app.data_dir.path(), &["--permissions", "READ"]);

    assert_accepted(&uploads_with_bearer(&app, &token).await);
    let body = app.gql(Some(&token), PREPARE, prepare_vars()).await;
    assert_eq!(error_code(&body), "FORBIDDEN");
    assert!(body["data"].is_null(), "{body}");
}

/// Serves the fixture JWKS on a port of its own, as an identity provider would.
struct JwksServer {
    url: url::Url,
    /// How many times the JWKS was fetched.
    fetches: Arc<AtomicUsize>,
    /// While set, the endpoint answers 500 (an identity provider outage).
    failing: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve_jwks() -> JwksServer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (counter, fail) = (fetches.clone(), failing.clone());
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let status = if fail.load(Ordering::SeqCst) {
                axum::http::StatusCode::INTERNAL_SERVER_ERROR
            } else {
                axum::http::StatusCode::OK
            };
            async move {
                (
                    status,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    TEST_JWKS,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    JwksServer {
        url: url::Url::parse(&format!("http://{address}/.well-known/jwks.json")).unwrap(),
        fetches,
        failing,
        stop: Some(stop),
    }
}

/// An app that verifies RS256 tokens against the fixture JWKS (dropped after the app).
async fn spawn_with_jwks() -> (TestApp, JwksServer) {
    let jwks = serve_jwks().await;
    let url = jwks.url.clone();
    let app = spawn_app_with(Backend::Sqlite, |s| s.jwks_url = Some(url)).await;
    (app, jwks)
}

fn rs256(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_rsa_pem(TEST_RSA_KEY).expect("the fixture RSA key");
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_token_signed_by_a_key_of_the_jwks_is_accepted() {
    let (app, _jwks) = spawn_with_jwks().await;
    let token = rs256(TEST_KID, &alice_claims(now() + 3600, "fleetload"));

    let body = uploads_with_bearer(&app, &token).await;

    assert_accepted(&body);
    app.prepare(&token, prepare_vars()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cognito_style_claim_names_are_read_too() {
    let (app, _jwks) = spawn_with_jwks().await;
    let token = rs256(
        TEST_KID,
        &json!({
            "sub": "6f1c2b9e-0000-4000-8000-00000000a11c",
            "cognito:username": "alice",
            "custom:tenant_id": "demo",
            "custom:permissions": "READ,UPDATE",
            "token_use": "id",
            "aud": "fleetload",
            "iat": now(),
            "exp": now() + 3600,
        }),
    );

    let body = uploads_with_bearer(&app, &token).await;

    assert_accepted(&body);
    // UPDATE was read from the comma-separated attribute.
    app.prepare(&token, prepare_vars()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_jwks_an_hs256_token_is_refused_even_when_signed_with_the_local_secret() {
    let (app, _jwks) = spawn_with_jwks().await;
    let claims = alice_claims(now() + 3600, "fleetload");
    let mut with_kid = Header::new(Algorithm::HS256);
    with_kid.kid = Some(TEST_KID.to_owned());
    // The algorithm-confusion attack: HMAC keyed with the published public key.
    let public_jwk: Value = serde_json::from_str(TEST_JWKS).unwrap();
    let public_jwk = public_jwk["keys"][0].to_string();
    let confused = jsonwebtoken::encode(
        &with_kid,
        &claims,
        &EncodingKey::from_secret(public_jwk.as_bytes()),
    )
    .unwrap();

    for token in [
        app.alice(),
        hs256_with_app_secret(&app, with_kid.clone(), &claims),
        confused,
    ] {
        let body = uploads_with_bearer(&app, &token).await;

        assert_unauthenticated(&body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_jwks_a_token_of_an_unknown_kid_is_refused() {
    let (app, _jwks) = spawn_with_jwks().await;
    let token = rs256("some-rotated-away-key", &alice_claims(now() + 3600, "fleetload"));

    let body = uploads_with_bearer(&app, &token).await;

    assert_unauthenticated(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_does_not_refetch_the_jwks_each_time() {
    let (app, jwks) = spawn_with_jwks().await;
    assert_accepted(
        &uploads_with_bearer(&app, &rs256(TEST_KID, &alice_claims(now() + 3600, "fleetload"))).await,
    );
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    for i in 0..5 {
        let forged = rs256(&format!("forged-{i}"), &alice_claims(now() + 3600, "fleetload"));
        assert_unauthenticated(&uploads_with_bearer(&app, &forged).await);
    }

    // The keys were fetched moments ago: unknown kids are refused from the cache.
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_jwks_endpoint_is_not_hammered_and_cached_keys_keep_working() {
    let (app, jwks) = spawn_with_jwks().await;
    jwks.failing.store(true, Ordering::SeqCst);
    let good = rs256(TEST_KID, &alice_claims(now() + 3600, "fleetload"));

    for _ in 0..5 {
        assert_unauthenticated(&uploads_with_bearer(&app, &good).await);
    }
    // One attempt per refresh interval, failed or not.
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    // Once the keys are cached, an outage does not lock valid users out.
    let (app, jwks) = spawn_with_jwks().await;
    assert_accepted(&uploads_with_bearer(&app, &good).await);
    jwks.failing.store(true, Ordering::SeqCst);
    for i in 0..5 {
        let forged = rs256(&format!("forged-{i}"), &alice_claims(now() + 3600, "fleetload"));
        assert_unauthenticated(&uploads_with_bearer(&app, &forged).await);
        assert_accepted(&uploads_with_bearer(&app, &good).await);
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
}
