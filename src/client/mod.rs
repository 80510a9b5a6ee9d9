//! The client side of the command line: `fleetload upload`, `status` and `uploads` drive a
//! running server through its public API, as any other client does.

mod follow;
mod listing;
mod multipart;
mod part_plan;
mod resume_command;
mod transfer_progress;
mod upload;

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

use crate::config::Settings;

pub use listing::{status, uploads};
pub use upload::{UploadArgs, upload};

/// Where the server is and who is asking; shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the server; default: `--public-url`, else `http://<--listen>`.
    #[arg(long, env = "FLEETLOAD_SERVER")]
    pub server: Option<Url>,
    /// Bearer token; default on the embedded default: a dev token for `--user`, signed with
    /// the secret of `--data-dir`.
    #[arg(long, env = "FLEETLOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The user of the dev token minted when no `--token` is given.
    #[arg(long, default_value = "alice")]
    pub user: String,
    /// The tenant (or workspace) to act in.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
}

/// What a client command can fail with: a GraphQL error's code, or the client's own.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    pub code: String,
    pub message: String,
}

impl ClientError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Prints the error as `error: CODE: message` and gives exit code 1.
pub fn report_error(err: &ClientError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(1)
}

/// A connected client: the server's URLs and the `Authorization` header.
pub struct Client {
    base: Url,
    authorization: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(settings: &Settings, args: &ClientArgs) -> Result<Self, ClientError> {
        let base = match (&args.server, &settings.public_url) {
            (Some(url), _) | (None, Some(url)) => url.clone(),
            (None, None) => Url::parse(&format!("http://{}/", settings.listen))
                .map_err(|e| ClientError::new("BAD_USER_INPUT", e.to_string()))?,
        };
        let token = match &args.token {
            Some(token) => token.clone(),
            None => dev_token(settings, &args.user, &args.tenant)?,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::new("INTERNAL_CLIENT_ERROR", e.to_string()))?;
        Ok(Self {
            base,
            authorization: format!("Bearer {}", token.trim()),
            http,
        })
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("a relative path")
    }

    /// `ws://…/graphql` (or `wss://`) for the subscription.
    fn ws_url(&self) -> Url {
        let mut url = self.url("graphql");
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme).expect("ws schemes are valid");
        url
    }

    /// Runs one operation; GraphQL errors become the first error's code and message.
    pub async fn gql(&self, query: &str, variables: Value) -> Result<Value, ClientError> {
        let response = self
            .http
            .post(self.url("graphql"))
            .header("Authorization", &self.authorization)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| unreachable_server(&self.base, &e))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| ClientError::new("BAD_RESPONSE", format!("HTTP {status}: {e}")))?;
        if let Some(error) = body["errors"].as_array().and_then(|e| e.first()) {
            return Err(graphql_error(error));
        }
        Ok(body["data"].clone())
    }
}

fn unreachable_server(base: &Url, err: &reqwest::Error) -> ClientError {
    ClientError::new(
        "SERVER_UNREACHABLE",
        format!("cannot reach {base} ({err}); is `fleetload serve` running? (--server)"),
    )
}

/// `extensions.code` (or AppSync's `errorType`) and the message of a GraphQL error.
fn graphql_error(error: &Value) -> ClientError {
    let code = error["extensions"]["code"]
        .as_str()
        .or(error["extensions"]["errorType"].as_str())
        .unwrap_or("GRAPHQL_ERROR");
    let message = error["message"].as_str().unwrap_or("(no message)");
    ClientError::new(code, message)
}

/// A dev token signed with the data dir's secret, as `fleetload token` prints it; only on
/// the embedded default (HS256 and no JWKS).
fn dev_token(settings: &Settings, user: &str, tenant: &str) -> Result<String, ClientError> {
    if settings.jwks_url.is_some() {
        return Err(ClientError::new(
            "UNAUTHENTICATED",
            "this server takes tokens from its JWKS: pass --token or FLEETLOAD_TOKEN",
        ));
    }
    let secret = crate::startup::jwt_secret(settings)
        .map_err(|e| ClientError::new("UNAUTHENTICATED", format!("no token and no dev secret: {e:#}")))?;
    // A demo user signs in at their own root tenant; anyone else at the tenant asked for.
    let (root, permissions) = crate::console::DEMO_USERS.iter().find(|u| u.user == user).map_or(
        (
            tenant,
            &[crate::auth::Permission::Read, crate::auth::Permission::Update][..],
        ),
        |u| (u.tenant, u.permissions),
    );
    crate::auth::mint_token(
        &secret,
        user,
        root,
        permissions,
        &settings.jwt_audience,
        settings.jwt_issuer.as_deref(),
        3600,
    )
    .map_err(|e| ClientError::new("UNAUTHENTICATED", e.to_string()))
}
