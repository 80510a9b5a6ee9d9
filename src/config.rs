//! One configuration struct for every process, read from flags and the environment.
//!
//! Defaults give the embedded setup (SQLite + local object storage in `--data-dir`);
//! `DATABASE_URL=postgres://…` and `FLEETLOAD_S3_BUCKET` switch to the production backends.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;
use url::Url;

/// Settings shared by `serve`, `worker`, `migrate` and `token`.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the HTTP server listens on (port 0 picks a free port).
    #[arg(
        long,
        env = "FLEETLOAD_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Base URL clients reach this server at; used in the upload URLs of the local object
    /// store. Defaults to `http://<listen address>`.
    #[arg(long, env = "FLEETLOAD_PUBLIC_URL", global = true)]
    pub public_url: Option<Url>,

    /// Directory of the embedded default: SQLite file, local objects, generated secrets.
    #[arg(
        long,
        env = "FLEETLOAD_DATA_DIR",
        default_value = "./fleetload-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Database URL (`postgres://…` or `sqlite://…`); default: SQLite in the data dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<SecretString>,

    /// Connections in the database pool.
    #[arg(
        long,
        env = "FLEETLOAD_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,

    /// Seed the demo tenants, actions and workflows of SPEC §7 (always on for a new embedded
    /// database; idempotent).
    #[arg(long, env = "FLEETLOAD_DEMO_DATA", global = true)]
    pub demo_data: bool,

    /// S3 bucket for uploaded files; when set, objects go to S3 instead of the data dir.
    #[arg(long, env = "FLEETLOAD_S3_BUCKET", global = true)]
    pub s3_bucket: Option<String>,

    /// Custom S3 endpoint (e.g. a local S3-compatible server).
    #[arg(long, env = "FLEETLOAD_S3_ENDPOINT_URL", global = true)]
    pub s3_endpoint_url: Option<Url>,

    /// Address buckets by path (`endpoint/bucket/key`) rather than by virtual host.
    #[arg(long, env = "FLEETLOAD_S3_FORCE_PATH_STYLE", global = true)]
    pub s3_force_path_style: bool,

    /// SQS queue URL for chunk jobs; when unset, chunks go through the database's job table.
    /// The queue's redrive policy (dead-letter queue, maxReceiveCount) is read at start.
    #[arg(long, env = "FLEETLOAD_SQS_QUEUE_URL", global = true)]
    pub sqs_queue_url: Option<String>,

    /// Custom SQS endpoint (e.g. a local SQS-compatible server).
    #[arg(long, env = "FLEETLOAD_SQS_ENDPOINT_URL", global = true)]
    pub sqs_endpoint_url: Option<Url>,

    /// Rows per chunk job: one worker transaction each.
    #[arg(long, env = "FLEETLOAD_CHUNK_SIZE", default_value_t = 2000, global = true)]
    pub chunk_size: usize,

    /// Worker tasks in this process. Default: 2 for `serve` on the embedded default, 0 for
    /// `serve` on PostgreSQL (run `fleetload worker` processes), 4 for `worker`.
    #[arg(long, env = "FLEETLOAD_WORKERS", global = true)]
    pub workers: Option<usize>,

    /// How long a claimed job stays hidden from other workers before it is offered again
    /// (extended while the job runs), in seconds.
    #[arg(long, env = "FLEETLOAD_JOB_LEASE_SECS", default_value_t = 60, global = true)]
    pub job_lease_secs: u64,

    /// Largest CSV a client may upload, enforced by the signed POST policy.
    #[arg(long, env = "FLEETLOAD_MAX_UPLOAD_BYTES", default_value_t = 100 * 1024 * 1024, global = true)]
    pub max_upload_bytes: u64,

    /// Most data rows an upload may declare or contain.
    #[arg(long, env = "FLEETLOAD_MAX_ROWS", default_value_t = 1_000_000, global = true)]
    pub max_rows: u32,

    /// How long a signed upload policy stays valid, in seconds.
    #[arg(
        long,
        env = "FLEETLOAD_UPLOAD_URL_TTL_SECS",
        default_value_t = 900,
        global = true
    )]
    pub upload_url_ttl_secs: u64,

    /// How long a signed download link (the error report) stays valid, in seconds.
    #[arg(
        long,
        env = "FLEETLOAD_DOWNLOAD_URL_TTL_SECS",
        default_value_t = 900,
        global = true
    )]
    pub download_url_ttl_secs: u64,

    /// HS256 secret for tokens; default: generated on first start and kept in the data dir.
    #[arg(long, env = "FLEETLOAD_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<SecretString>,

    /// JWKS URL (e.g. Cognito's); when set, tokens must be RS256 and signed by one of its keys.
    #[arg(long, env = "FLEETLOAD_JWKS_URL", global = true)]
    pub jwks_url: Option<Url>,

    /// Required `aud` of every token (for Cognito: the app client id).
    #[arg(
        long,
        env = "FLEETLOAD_JWT_AUDIENCE",
        default_value = "fleetload",
        global = true
    )]
    pub jwt_audience: String,

    /// Required `iss` of every token, when set.
    #[arg(long, env = "FLEETLOAD_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Origins allowed by CORS (comma-separated); `*` allows any.
    #[arg(
        long,
        env = "FLEETLOAD_CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,

    /// URL that gets a signed JSON POST whenever an upload finishes (any terminal state).
    /// Set it on every process (API and workers): whichever finishes an upload queues the call.
    #[arg(long, env = "FLEETLOAD_WEBHOOK_URL", global = true)]
    pub webhook_url: Option<Url>,

    /// Secret of the webhook's HMAC-SHA256 signature (`X-Fleetload-Signature`); required
    /// with `--webhook-url`.
    #[arg(long, env = "FLEETLOAD_WEBHOOK_SECRET", hide_env_values = true, global = true)]
    pub webhook_secret: Option<SecretString>,

    /// How long one webhook call may take before it counts as failed, in seconds.
    #[arg(
        long,
        env = "FLEETLOAD_WEBHOOK_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub webhook_timeout_secs: u64,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "FLEETLOAD_LOG_JSON", global = true)]
    pub log_json: bool,

    /// How often `/graphql/realtime` (AppSync flavour) sends `ka` on each connection, in
    /// milliseconds; AppSync clients drop a connection silent for `connectionTimeoutMs` (300000).
    #[arg(
        long,
        env = "FLEETLOAD_REALTIME_KEEPALIVE_MS",
        default_value_t = 60_000,
        global = true
    )]
    pub realtime_keepalive_ms: u64,

    // --- WebSocket limits (every endpoint: `/graphql` and `/graphql/realtime`) ---
    /// How long a new WebSocket connection may take to send `connection_init`, in
    /// milliseconds; then it is closed (graphql-transport-ws: 4408).
    #[arg(
        long,
        env = "FLEETLOAD_WS_INIT_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub ws_init_timeout_ms: u64,

    /// Largest WebSocket message (and frame) a client may send, in bytes; a larger one closes
    /// the connection with 1009.
    #[arg(
        long,
        env = "FLEETLOAD_WS_MAX_MESSAGE_BYTES",
        default_value_t = 64 * 1024,
        global = true
    )]
    pub ws_max_message_bytes: usize,

    /// Most subscriptions running at once on one WebSocket connection (AppSync's own limit).
    #[arg(
        long,
        env = "FLEETLOAD_WS_MAX_SUBSCRIPTIONS",
        default_value_t = 100,
        global = true
    )]
    pub ws_max_subscriptions: usize,

    /// Most messages waiting to be written to one WebSocket connection; a client that lets
    /// more pile up is disconnected as too slow a reader.
    #[arg(
        long,
        env = "FLEETLOAD_WS_OUTGOING_QUEUE",
        default_value_t = 1024,
        global = true
    )]
    pub ws_outgoing_queue: usize,

    // --- Operator console (/ui) and GraphiQL ---
    /// Let `/ui` mint tokens for the demo users (alice, bob). Only ever with HS256 and the
    /// secret generated in the data dir (never with `--jwks-url` or `--jwt-secret`); default:
    /// on for the embedded database, off otherwise.
    #[arg(long, env = "FLEETLOAD_DEV_SIGN_IN", global = true)]
    pub dev_sign_in: Option<bool>,
}

impl Settings {
    /// Settings as if no flag and no variable were given, rooted at `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        let mut settings = Only::parse_from(["fleetload"]).settings;
        settings.data_dir = data_dir.into();
        settings
    }

    /// The embedded default uses a SQLite file in the data dir.
    pub fn uses_embedded_database(&self) -> bool {
        self.database_url.is_none()
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("fleetload.sqlite")
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.data_dir.join("objects")
    }
}
