//! Builds the whole application from settings, so `main` and the tests start the same thing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use secrecy::SecretString;
use tokio::net::TcpListener;
use url::Url;

use crate::auth::{Verifier, load_or_create_secret};
use crate::config::Settings;
use crate::state::AppState;
use crate::storage::{LocalStore, ObjectStore, S3Store};
use crate::{db, demo, graphql, http};

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    public_url: Url,
    router: Router,
    state: AppState,
}

impl Application {
    /// Connects and migrates the database, seeds demo data where due, opens object storage
    /// and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_aws(settings, None).await
    }

    /// As [`Application::build`], with the AWS configuration given instead of read from the
    /// standard `AWS_*` environment (tests pass static credentials for a local endpoint).
    pub async fn build_with_aws(
        settings: Settings,
        aws: Option<aws_config::SdkConfig>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let address = listener.local_addr()?;
        let public_url = match &settings.public_url {
            Some(url) => url.clone(),
            None => Url::parse(&format!("http://{address}/"))?,
        };

        let db = db::connect(&settings).await?;
        db::migrate(&db).await?;
        if settings.demo_data || (settings.uses_embedded_database() && demo::is_empty(&db).await?) {
            demo::seed(&db).await.context("seeding demo data")?;
            tracing::info!("demo data seeded");
        }

        let (storage, storage_routes) = storage(&settings, &public_url, aws).await?;
        let verifier = verifier(&settings)?;
        let state = AppState {
            db,
            storage,
            verifier: Arc::new(verifier),
            settings: Arc::new(settings),
        };
        let schema = graphql::build_schema(state.clone());
        let router = http::router(state.clone(), schema, storage_routes);
        Ok(Self {
            listener,
            address,
            public_url,
            router,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where clients reach the server (`http://127.0.0.1:<port>/` unless configured).
    pub fn public_url(&self) -> &Url {
        &self.public_url
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGINT or SIGTERM, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(address = %self.address, url = %self.public_url, "serving");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn storage(
    settings: &Settings,
    public_url: &Url,
    aws: Option<aws_config::SdkConfig>,
) -> anyhow::Result<(Arc<dyn ObjectStore>, Option<Router>)> {
    match &settings.s3_bucket {
        Some(bucket) => {
            let sdk = match aws {
                Some(sdk) => sdk,
                None => aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
            };
            let store = S3Store::new(
                &sdk,
                bucket.clone(),
                settings.s3_endpoint_url.as_ref(),
                settings.s3_force_path_style,
            )
            .await
            .context("configuring S3")?;
            Ok((Arc::new(store), None))
        }
        None => {
            let secret =
                load_or_create_secret(&settings.data_dir, "storage-secret").context("storage secret")?;
            let store = Arc::new(
                LocalStore::new(settings.objects_dir(), public_url, secret).context("local object store")?,
            );
            let routes = store.clone().router(settings.max_upload_bytes);
            Ok((store, Some(routes)))
        }
    }
}

/// RS256 against a JWKS when configured, else HS256 with the data dir's (or given) secret.
pub fn verifier(settings: &Settings) -> anyhow::Result<Verifier> {
    let issuer = settings.jwt_issuer.as_deref();
    Ok(match &settings.jwks_url {
        Some(url) => Verifier::jwks(url.clone(), &settings.jwt_audience, issuer),
        None => Verifier::hs256(&jwt_secret(settings)?, &settings.jwt_audience, issuer),
    })
}

/// The HS256 secret `serve` verifies and `token` signs with.
pub fn jwt_secret(settings: &Settings) -> anyhow::Result<SecretString> {
    match &settings.jwt_secret {
        Some(secret) => Ok(secret.clone()),
        None => load_or_create_secret(&settings.data_dir, "jwt-secret").context("JWT secret"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = terminate => {} }
    tracing::info!("shutting down");
}
