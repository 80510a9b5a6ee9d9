//! Builds the whole application from settings, so `main` and the tests start the same thing.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use sea_orm::DatabaseConnection;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::auth::{Verifier, load_or_create_secret};
use crate::carrier::SecretBox;
use crate::config::Settings;
use crate::health::Readiness;
use crate::http::ops::Ops;
use crate::pipeline::carrier_calls::{CarrierExecutor, CarrierSettings};
use crate::pipeline::{Pipeline, PipelineSettings, Settlement};
use crate::progress::{Pace, ProgressBus, ProgressHub, ProgressListener};
use crate::queue::{CHUNK_QUEUE, DEFAULT_MAX_ATTEMPTS, DISPATCH_QUEUE, DbQueue, Queue, SqsQueue};
use crate::state::AppState;
use crate::storage::{LocalStore, ObjectStore, S3Store};
use crate::webhook::{MAX_ATTEMPTS as WEBHOOK_MAX_ATTEMPTS, Outbox, WEBHOOK_QUEUE, WebhookDeliverer};
use crate::{db, demo, graphql, http};

/// How long `serve` waits, after the HTTP drain, for WebSockets still closing.
const WEBSOCKET_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    public_url: Url,
    router: Router,
    state: AppState,
    pipeline: Arc<Pipeline>,
    webhook: Option<Arc<WebhookDeliverer>>,
    /// The pipeline's own pool, which the report builder shares.
    worker_db: DatabaseConnection,
    workers: usize,
    /// Where this process hears other processes' progress (PostgreSQL).
    _listener: Option<ProgressListener>,
    /// The operator's endpoints and the queues the metrics sampler reads.
    ops: Arc<Ops>,
    sampled: Vec<(&'static str, Arc<dyn Queue>)>,
    /// The separate `/metrics` + probes listener, when configured.
    metrics_listener: Option<TcpListener>,
}

impl Application {
    /// Connects and migrates the database, seeds demo data where due, opens object storage
    /// and the queues, and binds the listener (port 0 picks a free port).
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
        let metrics_listener = bind_metrics(&settings).await?;
        let parts = Components::build(&settings, &public_url, aws).await?;
        // On the embedded default everything runs in this process; elsewhere `serve` is
        // API-only unless told otherwise and `fleetload worker` processes do the work.
        let workers = settings
            .workers
            .unwrap_or(if settings.uses_embedded_database() { 2 } else { 0 });
        let verifier = verifier(&settings)?;
        // Only a process serving subscriptions listens; `fleetload worker` only notifies.
        let progress_listener = parts.progress.listen().await.context("listening for progress")?;
        let hub = Arc::new(ProgressHub::new(
            parts.db.clone(),
            &parts.progress,
            Pace::default(),
        ));
        let websockets = crate::websocket::registry::Registry::from_settings(&settings);
        let state = AppState {
            db: parts.db,
            storage: parts.storage,
            verifier: Arc::new(verifier),
            settings: Arc::new(settings),
            progress: parts.progress,
            outbox: parts.outbox,
            statements: parts.statements,
            hub,
            websockets,
            carrier_secrets: parts.carrier_secrets,
        };
        let schema = graphql::build_schema(state.clone());
        let router = http::router(state.clone(), schema, parts.storage_routes, parts.ops.clone());
        Ok(Self {
            listener,
            address,
            public_url,
            router,
            state,
            pipeline: parts.pipeline,
            webhook: parts.webhook,
            worker_db: parts.worker_db,
            workers,
            _listener: progress_listener,
            ops: parts.ops,
            sampled: parts.sampled,
            metrics_listener,
        })
    }

    /// Where the separate metrics listener listens, when `--metrics-listen` is set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
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

    /// The pipeline's own pool, apart from the API's (`state().db`).
    pub fn worker_db(&self) -> &DatabaseConnection {
        &self.worker_db
    }

    /// The pipeline this process runs; tests drain it step by step.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves (and runs this process's workers) until `shutdown` completes; then stops
    /// taking requests and jobs and lets the ones in hand finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(address = %self.address, url = %self.public_url, workers = self.workers, "serving");
        let stop = CancellationToken::new();
        let mut workers = self.pipeline.spawn(self.workers, stop.clone());
        workers.extend(spawn_webhook(self.webhook, stop.clone()));
        if self.workers > 0 {
            workers.push(spawn_reports(&self.worker_db, &self.state.storage, stop.clone()));
        }
        workers.push(crate::metrics::spawn_sampler(self.sampled, stop.clone()));
        if let Some(listener) = self.metrics_listener {
            workers.push(spawn_metrics_listener(listener, self.ops.clone(), stop.clone()));
        }
        let stopping = stop.clone();
        let websockets = self.state.websockets.clone();
        let grace = Duration::from_secs(self.state.settings.shutdown_grace_secs);
        // The peer address keys the per-IP rate limit of anonymous requests.
        let service = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let serving = axum::serve(self.listener, service)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stopping.cancel();
                // Open WebSockets would hold the graceful shutdown for as long as their
                // clients stay: each is told to go away (1001) instead.
                websockets.shutdown_token().cancel();
            })
            .into_future();
        tokio::pin!(serving);
        // In-flight HTTP requests get the grace period to finish, then the process exits
        // without them rather than waiting on a slow request (or client) for ever.
        let served = tokio::select! {
            served = &mut serving => served,
            () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "requests still running after the grace period; exiting without them");
                Ok(())
            }
        };
        stop.cancel();
        // The WebSockets were told at the signal; their close handshakes (at most 2 s each, in
        // parallel) are done by now or nearly: the exit waits only a little for stragglers.
        if !self.state.websockets.shut_down(WEBSOCKET_CLOSE_WAIT).await {
            tracing::warn!("WebSocket connections still closing; exiting without them");
        }
        futures::future::join_all(workers).await;
        served
    }
}

/// Runs only the pipeline (`fleetload worker`): dispatcher and workers, no API.
pub async fn run_worker(settings: Settings, aws: Option<aws_config::SdkConfig>) -> anyhow::Result<()> {
    let public_url = match &settings.public_url {
        Some(url) => url.clone(),
        None => Url::parse(&format!("http://{}/", settings.listen))?,
    };
    let metrics_listener = bind_metrics(&settings).await?;
    let parts = Components::build(&settings, &public_url, aws).await?;
    let workers = settings.workers.unwrap_or(4).max(1);
    tracing::info!(workers, "worker running");
    let stop = CancellationToken::new();
    let mut handles = parts.pipeline.spawn(workers, stop.clone());
    handles.extend(spawn_webhook(parts.webhook, stop.clone()));
    handles.push(spawn_reports(&parts.worker_db, &parts.storage, stop.clone()));
    handles.push(crate::metrics::spawn_sampler(parts.sampled, stop.clone()));
    if let Some(listener) = metrics_listener {
        handles.push(spawn_metrics_listener(listener, parts.ops, stop.clone()));
    }
    shutdown_signal().await;
    stop.cancel();
    futures::future::join_all(handles).await;
    Ok(())
}

/// What both `serve` and `worker` are built from.
pub struct Components {
    /// The API's pool.
    pub db: DatabaseConnection,
    /// The pipeline's pool: dispatcher, workers, webhook, progress notifications.
    pub worker_db: DatabaseConnection,
    pub storage: Arc<dyn ObjectStore>,
    /// The local store's upload endpoint, when storage is local.
    pub storage_routes: Option<Router>,
    pub pipeline: Arc<Pipeline>,
    pub progress: Arc<ProgressBus>,
    pub outbox: Outbox,
    /// Delivers webhook calls, when a webhook is configured.
    pub webhook: Option<Arc<WebhookDeliverer>>,
    pub statements: db::StatementCounter,
    /// `/healthz`, `/readyz` and `/metrics` of this process.
    pub ops: Arc<Ops>,
    /// The queues whose depths the metrics sampler reads, by `queue` label.
    pub sampled: Vec<(&'static str, Arc<dyn Queue>)>,
    /// The carrier secret key, for the API's account writes and the workers' calls.
    pub carrier_secrets: Option<Arc<SecretBox>>,
}

impl Components {
    /// Connects and migrates the database, seeds demo data where due, opens object storage
    /// and the queues.
    pub async fn build(
        settings: &Settings,
        public_url: &Url,
        aws: Option<aws_config::SdkConfig>,
    ) -> anyhow::Result<Self> {
        // Installed before anything records (and described once per process).
        crate::metrics::handle();
        // A malformed key stops the start before anything is touched.
        let carrier_secrets = SecretBox::from_settings(settings)?.map(Arc::new);
        let mut db = db::connect(settings).await?;
        let statements = db::StatementCounter::attach(&mut db);
        db::migrate(&db).await?;
        let worker_db = db::connect_workers(settings).await?;
        if let Some(seeded) = demo::seed_if_wanted(&db, settings)
            .await
            .context("seeding demo data")?
        {
            tracing::info!(
                tenants = seeded.tenants,
                actions = seeded.actions,
                workflows = seeded.workflows,
                "demo data seeded"
            );
        }
        if let Some(url) = &settings.demo_carrier_url {
            let secrets = carrier_secrets
                .as_deref()
                .context("--demo-carrier-url needs a carrier secret key (--carrier-secret-key)")?;
            let inserted = demo::seed_carrier(&db, secrets, url)
                .await
                .context("seeding the demo carrier")?;
            tracing::info!(inserted, carrier = %url, "demo carrier seeded");
        }
        let aws = match aws {
            Some(sdk) => Some(sdk),
            None if settings.s3_bucket.is_some() || settings.sqs_queue_url.is_some() => {
                Some(aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
            }
            None => None,
        };
        warn_if_local_storage_is_shared(settings);
        let (storage, storage_routes) = storage(settings, public_url, aws.as_ref()).await?;
        // Job settlement (queue): a worker id marks this process's claims as its own.
        let settlement = Settlement::from_settings(settings)?;
        let owned = |q: DbQueue| match &settings.worker_id {
            Some(id) => q.with_owner(id),
            None => q,
        };
        let dispatch: Arc<dyn Queue> = Arc::new(owned(DbQueue::new(
            worker_db.clone(),
            DISPATCH_QUEUE,
            DEFAULT_MAX_ATTEMPTS,
        )));
        let (chunks, poll_wait): (Arc<dyn Queue>, Duration) = match (&settings.sqs_queue_url, &aws) {
            (Some(url), Some(sdk)) => (
                Arc::new(
                    SqsQueue::new(sdk, url.clone(), settings.sqs_endpoint_url.as_ref())
                        .await
                        .context("configuring SQS")?,
                ),
                Duration::from_secs(1),
            ),
            _ => (
                Arc::new(owned(DbQueue::new(
                    worker_db.clone(),
                    CHUNK_QUEUE,
                    DEFAULT_MAX_ATTEMPTS,
                ))),
                Duration::ZERO,
            ),
        };
        let mut sampled = vec![("dispatch", dispatch.clone()), ("chunks", chunks.clone())];
        let readiness = Readiness {
            db: db.clone(),
            storage: storage.clone(),
            queues: vec![dispatch.clone(), chunks.clone()],
        };
        let progress = Arc::new(ProgressBus::for_database(&worker_db));
        let webhook = webhook(settings, &worker_db)?;
        if webhook.is_some() {
            let queue = DbQueue::new(worker_db.clone(), WEBHOOK_QUEUE, WEBHOOK_MAX_ATTEMPTS);
            sampled.push(("webhooks", Arc::new(queue)));
        }
        let ops = Arc::new(Ops {
            readiness,
            pools: vec![("api", db.clone()), ("pipeline", worker_db.clone())],
        });
        let outbox = Outbox::new(webhook.is_some());
        let carrier = CarrierExecutor::new(
            worker_db.clone(),
            carrier_secrets.clone(),
            CarrierSettings::from_settings(settings),
            outbox,
            progress.clone(),
        )?;
        let pipeline = Arc::new(
            Pipeline::new(
                worker_db.clone(),
                storage.clone(),
                dispatch,
                chunks,
                progress.clone(),
                PipelineSettings {
                    chunk_size: settings.chunk_size.max(1),
                    max_rows: settings.max_rows,
                    lease: Duration::from_secs(settings.job_lease_secs.max(1)),
                    poll_wait,
                },
            )
            .with_outbox(outbox)
            .with_settlement(settlement)
            .with_fanout_window(settings.fanout_window)
            .with_carrier(carrier),
        );
        Ok(Self {
            db,
            worker_db,
            storage,
            storage_routes,
            pipeline,
            progress,
            outbox,
            webhook,
            statements,
            ops,
            sampled,
            carrier_secrets,
        })
    }
}

/// Binds `--metrics-listen`, when set, before anything else starts (a taken port fails the
/// start instead of leaving a process that cannot be probed).
async fn bind_metrics(settings: &Settings) -> anyhow::Result<Option<TcpListener>> {
    let Some(address) = settings.metrics_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics listener {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "metrics and probes listening");
    Ok(Some(listener))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
fn spawn_metrics_listener(listener: TcpListener, ops: Arc<Ops>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = http::ops::serve(listener, ops, async move { stop.cancelled().await }).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    })
}

fn webhook(settings: &Settings, db: &DatabaseConnection) -> anyhow::Result<Option<Arc<WebhookDeliverer>>> {
    let Some(url) = &settings.webhook_url else {
        return Ok(None);
    };
    let secret = settings
        .webhook_secret
        .clone()
        .context("--webhook-url needs --webhook-secret (FLEETLOAD_WEBHOOK_SECRET) to sign its calls")?;
    let timeout = Duration::from_secs(settings.webhook_timeout_secs.max(1));
    Ok(Some(Arc::new(WebhookDeliverer::new(
        db.clone(),
        url.clone(),
        secret,
        timeout,
    )?)))
}

/// The webhook delivery loop, apart from the workers so a slow receiver never holds them.
fn spawn_webhook(webhook: Option<Arc<WebhookDeliverer>>, stop: CancellationToken) -> Option<JoinHandle<()>> {
    webhook.map(|deliverer| tokio::spawn(async move { deliverer.run(stop).await }))
}

/// The error-report builder: every process that runs workers builds the reports of the
/// uploads that ended with failures (hardening: reports, retries and catalog ids).
fn spawn_reports(
    db: &DatabaseConnection,
    storage: &Arc<dyn ObjectStore>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let builder = crate::uploads::ReportBuilder::new(db.clone(), storage.clone());
    tokio::spawn(async move { builder.run(stop).await })
}

async fn storage(
    settings: &Settings,
    public_url: &Url,
    aws: Option<&aws_config::SdkConfig>,
) -> anyhow::Result<(Arc<dyn ObjectStore>, Option<Router>)> {
    match (&settings.s3_bucket, aws) {
        (Some(bucket), Some(sdk)) => {
            let store = S3Store::new(
                sdk,
                bucket.clone(),
                settings.s3_endpoint_url.as_ref(),
                settings.s3_force_path_style,
            )
            .await
            .context("configuring S3")?;
            Ok((Arc::new(store), None))
        }
        _ => {
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

/// A database other processes share with objects on this process's disk: a file uploaded
/// to one API replica is not on another replica's or a worker's disk unless they all use
/// the same data dir (one host, or a shared volume). Said at start rather than found out
/// from an upload failing later.
fn warn_if_local_storage_is_shared(settings: &Settings) {
    if !settings.uses_embedded_database() && settings.s3_bucket.is_none() {
        tracing::warn!(
            data_dir = %settings.data_dir.display(),
            "objects are stored on local disk while the database is shared: every process \
             (API replicas and `fleetload worker`s) must share this data dir; \
             set FLEETLOAD_S3_BUCKET for processes on several hosts"
        );
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

pub async fn shutdown_signal() {
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
