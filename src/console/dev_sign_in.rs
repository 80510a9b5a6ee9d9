//! Dev sign-in for the console on the embedded default: mints a token for one of the demo
//! users. Only where tokens are HS256 with the secret generated in the data dir (never with
//! a JWKS or a configured secret) and `--dev-sign-in` allows it, so a production server
//! never hands out tokens.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Permission, mint_token};
use crate::config::Settings;
use crate::state::AppState;

/// A user of the demo data (SPEC §7).
#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    pub user: &'static str,
    pub tenant: &'static str,
    pub permissions: &'static [Permission],
}

pub const DEMO_USERS: &[DemoUser] = &[
    DemoUser {
        user: "alice",
        tenant: "demo",
        permissions: &[Permission::Read, Permission::Update],
    },
    DemoUser {
        user: "bob",
        tenant: "acme",
        permissions: &[Permission::Read, Permission::Update],
    },
];

/// Dev tokens last a working day.
const TTL_SECS: i64 = 12 * 3600;

/// Whether this server may mint tokens for whoever asks: HS256 with the data dir's own
/// secret, and allowed by `--dev-sign-in` (default: on for the embedded database).
pub fn dev_sign_in_allowed(settings: &Settings) -> bool {
    settings.jwks_url.is_none()
        && settings.jwt_secret.is_none()
        && settings
            .dev_sign_in
            .unwrap_or_else(|| settings.uses_embedded_database())
}

#[derive(Clone)]
struct DevSignIn {
    /// Set only where dev sign-in is allowed.
    secret: Option<SecretString>,
    audience: String,
    issuer: Option<String>,
}

pub(super) fn routes(app: &AppState) -> Router {
    let settings = &app.settings;
    let secret = if dev_sign_in_allowed(settings) {
        // Allowed only without a configured secret: the one generated in the data dir.
        match crate::auth::load_or_create_secret(&settings.data_dir, "jwt-secret") {
            Ok(secret) => Some(secret),
            Err(err) => {
                tracing::warn!(error = %err, "dev sign-in off: no secret");
                None
            }
        }
    } else {
        None
    };
    Router::new()
        .route("/ui/dev-sign-in", get(users).post(sign_in))
        .layer(DefaultBodyLimit::max(1024))
        .with_state(DevSignIn {
            secret,
            audience: settings.jwt_audience.clone(),
            issuer: settings.jwt_issuer.clone(),
        })
}

/// `{"enabled": bool, "users": [...]}`: what the sign-in form offers.
async fn users(State(dev): State<DevSignIn>) -> Response {
    let users: Vec<_> = if dev.secret.is_some() {
        DEMO_USERS
            .iter()
            .map(|u| json!({ "user": u.user, "tenant": u.tenant, "permissions": u.permissions }))
            .collect()
    } else {
        Vec::new()
    };
    Json(json!({ "enabled": dev.secret.is_some(), "users": users })).into_response()
}

#[derive(Deserialize)]
struct SignIn {
    user: String,
}

/// `{"token", "user", "tenant"}`, or `{"errors": [...]}` with a typed code, as GraphQL answers.
async fn sign_in(
    State(dev): State<DevSignIn>,
    headers: HeaderMap,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(secret) = &dev.secret else {
        return error(
            StatusCode::FORBIDDEN,
            "DEV_SIGN_IN_DISABLED",
            "dev sign-in is off on this server: paste a token",
        );
    };
    // CORS lets any site call the API, but a token must not be handed to another site's page.
    if !same_origin(&headers) {
        return error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "dev sign-in is only for this server's own pages",
        );
    }
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "expected {\"user\": \"alice\"}",
        );
    };
    let Some(user) = DEMO_USERS.iter().find(|u| u.user == body.user) else {
        return error(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", "not a demo user");
    };
    match mint_token(
        secret,
        user.user,
        user.tenant,
        user.permissions,
        &dev.audience,
        dev.issuer.as_deref(),
        TTL_SECS,
    ) {
        Ok(token) => {
            Json(json!({ "token": token, "user": user.user, "tenant": user.tenant })).into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "minting a dev token");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_SERVER_ERROR",
                "internal error",
            )
        }
    }
}

/// A browser's request from a page of this server, or a request with no `Origin` (not a
/// browser's cross-site request).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(port) => format!("{h}:{port}"),
                None => h.to_owned(),
            })
        });
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body =
        json!({ "errors": [{ "message": message, "extensions": { "code": code, "errorType": code } }] });
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_only_on_the_embedded_secret() {
        let mut settings = Settings::embedded("/tmp/x");
        assert!(dev_sign_in_allowed(&settings));
        settings.dev_sign_in = Some(false);
        assert!(!dev_sign_in_allowed(&settings));
        settings.dev_sign_in = Some(true);
        settings.jwks_url = Some("https://example.com/jwks.json".parse().unwrap());
        assert!(!dev_sign_in_allowed(&settings), "never with a JWKS");
        settings.jwks_url = None;
        settings.jwt_secret = Some(SecretString::from("configured"));
        assert!(!dev_sign_in_allowed(&settings), "never with a configured secret");
        settings.jwt_secret = None;
        settings.database_url = Some(SecretString::from("postgres://x"));
        settings.dev_sign_in = None;
        assert!(
            !dev_sign_in_allowed(&settings),
            "off by default off the embedded database"
        );
    }
}
