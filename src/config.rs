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
    /// Accepts `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off` (SPEC §7 writes `=1`).
    #[arg(
        long,
        env = "FLEETLOAD_DEMO_DATA",
        global = true,
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub demo_data: bool,

    /// Base URL of a carrier the demo may call (e.g. `fleetload carrier-simulator`'s
    /// `http://127.0.0.1:9400`): seeds the demo carrier account `demo-carrier`, the actions
    /// `activate-lines` / `deactivate-lines` and ten demo devices with SIMs (idempotent).
    #[arg(long, env = "FLEETLOAD_DEMO_CARRIER_URL", global = true)]
    pub demo_carrier_url: Option<Url>,

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

    /// Rows per chunk job: one worker transaction each (1 to 20,000: a chunk job lists its
    /// rows that repeat an earlier key, and must stay well under SQS's 256 KiB message).
    #[arg(long, env = "FLEETLOAD_CHUNK_SIZE", default_value_t = 2000, global = true, value_parser = chunk_size)]
    pub chunk_size: usize,

    /// Worker tasks in this process. Default: 2 for `serve` on the embedded default, 0 for
    /// `serve` on PostgreSQL (run `fleetload worker` processes), 4 for `worker`.
    #[arg(long, env = "FLEETLOAD_WORKERS", global = true)]
    pub workers: Option<usize>,

    /// How long a claimed job stays hidden from other workers before it is offered again,
    /// in seconds; renewed every third of it while the job runs, so a job whose process died
    /// is taken again within about this long.
    #[arg(long, env = "FLEETLOAD_JOB_LEASE_SECS", default_value_t = 10, global = true)]
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

    /// Smallest part of a multipart upload but the last, in bytes. S3 refuses to assemble
    /// parts under 5 MiB, so lower it only on the embedded store (tests, demos).
    #[arg(
        long,
        env = "FLEETLOAD_MULTIPART_MIN_PART_BYTES",
        default_value_t = 5 * 1024 * 1024,
        global = true
    )]
    pub multipart_min_part_bytes: u64,

    /// How long a multipart upload may be resumed, in seconds; after that the server aborts
    /// it in the store and fails the upload. Each part URL lives `upload_url_ttl_secs` and is
    /// re-issued by `uploadParts`.
    #[arg(
        long,
        env = "FLEETLOAD_MULTIPART_TTL_SECS",
        default_value_t = 24 * 3600,
        global = true
    )]
    pub multipart_ttl_secs: u64,

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

    /// Key sealing carrier accounts' client secrets at rest: base64 of 32 random bytes
    /// (`openssl rand -base64 32`), the same on every process. Default: generated on first
    /// start and kept in the data dir on the embedded database; none on a shared database,
    /// where carrier account writes then answer `CARRIER_SECRET_KEY_MISSING`.
    #[arg(
        long,
        env = "FLEETLOAD_CARRIER_SECRET_KEY",
        hide_env_values = true,
        global = true
    )]
    pub carrier_secret_key: Option<SecretString>,

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

    /// Carrier actions: wait after the carrier accepted a call before the first status poll,
    /// in milliseconds (carriers activate lines minutes later).
    #[arg(
        long,
        env = "FLEETLOAD_CARRIER_VERIFY_DELAY_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(0..=86_400_000),
        global = true
    )]
    pub carrier_verify_delay_ms: u64,

    /// Carrier actions: between two status polls of a line not yet confirmed, in milliseconds.
    #[arg(
        long,
        env = "FLEETLOAD_CARRIER_VERIFY_INTERVAL_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(10..=86_400_000),
        global = true
    )]
    pub carrier_verify_interval_ms: u64,

    /// Carrier actions: from the carrier's acceptance to `CARRIER_VERIFICATION_TIMEOUT`, in
    /// seconds.
    #[arg(
        long,
        env = "FLEETLOAD_CARRIER_VERIFY_TIMEOUT_SECS",
        default_value_t = 1800,
        value_parser = clap::value_parser!(u64).range(1..=604_800),
        global = true
    )]
    pub carrier_verify_timeout_secs: u64,

    /// Carrier actions: calls per row (rate limited, server errors, no answer) before the row
    /// fails `CARRIER_UNAVAILABLE`.
    #[arg(
        long,
        env = "FLEETLOAD_CARRIER_MAX_ATTEMPTS",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=100),
        global = true
    )]
    pub carrier_max_attempts: u32,

    /// Carrier actions: time limit of one call to the carrier, in milliseconds.
    #[arg(
        long,
        env = "FLEETLOAD_CARRIER_CALL_TIMEOUT_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..=300_000),
        global = true
    )]
    pub carrier_call_timeout_ms: u64,

    /// Log as JSON lines (one object per line, with the fields of every enclosing span:
    /// request id, upload id, tenant) instead of human-readable text.
    /// Accepts `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`.
    #[arg(
        long,
        env = "FLEETLOAD_LOG_JSON",
        global = true,
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub log_json: bool,

    /// Address of a small listener that serves only `/metrics`, `/healthz` and `/readyz`
    /// (e.g. `0.0.0.0:9464`); default: none. `fleetload worker` has no other listener, so
    /// set it on workers to scrape and probe them; `serve` answers the same paths on its
    /// main listener as well.
    #[arg(long, env = "FLEETLOAD_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,

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

    // --- Job settlement and recovery (shutdown, restart, stranded uploads) ---
    /// On SIGTERM / ctrl-c, how long a job in hand may still run, in seconds; after that its
    /// lease is given back unfinished (the attempt not counted) and the process exits.
    #[arg(
        long,
        env = "FLEETLOAD_SHUTDOWN_GRACE_SECS",
        default_value_t = 20,
        global = true
    )]
    pub shutdown_grace_secs: u64,

    /// Stable id of this worker process (e.g. its pod name), unique among the processes
    /// running at once: a process restarted under the same id takes back its previous
    /// incarnation's jobs at once instead of waiting for their leases to run out. Not needed
    /// on the embedded default (the process holding the data dir does that for every job).
    #[arg(long, env = "FLEETLOAD_WORKER_ID", global = true)]
    pub worker_id: Option<String>,

    /// How often each process running workers looks for stranded uploads (QUEUED or
    /// PROCESSING with nothing working on them), in seconds; 0 turns the sweeper off.
    #[arg(
        long,
        env = "FLEETLOAD_SWEEP_INTERVAL_SECS",
        default_value_t = 30,
        global = true
    )]
    pub sweep_interval_secs: u64,

    /// How long an unfinished upload must have gone unchanged before the sweeper resumes or
    /// fails it, in seconds.
    #[arg(
        long,
        env = "FLEETLOAD_SWEEP_STALE_SECS",
        default_value_t = 120,
        global = true
    )]
    pub sweep_stale_secs: u64,

    // ---- HTTP and GraphQL limits, worker pool isolation (issue #9, "Limits and abuse") ----
    /// Largest request body `/graphql` reads, in bytes; more answers 413 `PAYLOAD_TOO_LARGE`.
    #[arg(long, env = "FLEETLOAD_MAX_BODY_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// How long one GraphQL request may take, body included, in seconds (`REQUEST_TIMEOUT`).
    #[arg(
        long,
        env = "FLEETLOAD_REQUEST_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub request_timeout_secs: u64,

    /// Deepest selection nesting a document may have (`QUERY_TOO_DEEP`).
    #[arg(long, env = "FLEETLOAD_MAX_QUERY_DEPTH", default_value_t = 16, global = true)]
    pub max_query_depth: usize,

    /// Highest complexity a document may have; list fields count their `first` times their
    /// selection (`QUERY_TOO_COMPLEX`).
    #[arg(
        long,
        env = "FLEETLOAD_MAX_QUERY_COMPLEXITY",
        default_value_t = 50_000,
        global = true
    )]
    pub max_query_complexity: usize,

    /// Most aliased fields in a document, fragments expanded (`TOO_MANY_ALIASES`).
    #[arg(long, env = "FLEETLOAD_MAX_ALIASES", default_value_t = 100, global = true)]
    pub max_aliases: usize,

    /// Longest query text, in bytes (`QUERY_TOO_LARGE`): refused before it is parsed.
    #[arg(long, env = "FLEETLOAD_MAX_QUERY_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_query_bytes: usize,

    /// Complexity from which a query counts as heavy and waits for one of
    /// `FLEETLOAD_HEAVY_QUERIES_AT_ONCE` slots, so that a flood of them cannot take the CPU.
    #[arg(
        long,
        env = "FLEETLOAD_HEAVY_QUERY_COMPLEXITY",
        default_value_t = 2_000,
        global = true
    )]
    pub heavy_query_complexity: usize,

    /// Heavy queries this process runs at once; the others wait in line (within the timeout).
    #[arg(
        long,
        env = "FLEETLOAD_HEAVY_QUERIES_AT_ONCE",
        default_value_t = 1,
        global = true
    )]
    pub heavy_queries_at_once: usize,

    /// Most fields and fragment spreads a document may expand to (`QUERY_TOO_LARGE`).
    #[arg(
        long,
        env = "FLEETLOAD_MAX_QUERY_NODES",
        default_value_t = 5_000,
        global = true
    )]
    pub max_query_nodes: usize,

    /// Most operations in one batched (JSON array) request (`BATCH_TOO_LARGE`).
    #[arg(long, env = "FLEETLOAD_MAX_BATCH", default_value_t = 10, global = true)]
    pub max_batch: usize,

    /// Longest string argument or variable, in bytes (`ARGUMENT_TOO_LONG`).
    #[arg(long, env = "FLEETLOAD_MAX_STRING_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_string_bytes: usize,

    /// Introspection (`__schema`, `__type`): `on` for anyone, `token` for a valid token,
    /// `off` for no one.
    #[arg(long, env = "FLEETLOAD_INTROSPECTION", default_value = "on", global = true)]
    pub introspection: IntrospectionPolicy,

    /// Requests per second one client (token subject, else IP address) may send to `/graphql`;
    /// 0 turns the rate limit off (`RATE_LIMITED`, HTTP 429).
    #[arg(
        long,
        env = "FLEETLOAD_RATE_LIMIT_PER_SEC",
        default_value_t = 0,
        global = true
    )]
    pub rate_limit_per_sec: u32,

    /// Requests a client may send at once above its rate.
    #[arg(long, env = "FLEETLOAD_RATE_LIMIT_BURST", default_value_t = 50, global = true)]
    pub rate_limit_burst: u32,

    /// Database connections the API may use at once for one GraphQL request.
    #[arg(
        long,
        env = "FLEETLOAD_DB_CONNECTIONS_PER_REQUEST",
        default_value_t = 4,
        global = true
    )]
    pub db_connections_per_request: usize,

    /// How long an API request waits for a pooled connection before `SERVICE_BUSY`, in seconds.
    #[arg(
        long,
        env = "FLEETLOAD_DB_ACQUIRE_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub db_acquire_timeout_secs: u64,

    /// Connections in the pipeline's own pool (dispatcher, workers, webhook), apart from the
    /// API's `FLEETLOAD_DB_MAX_CONNECTIONS`, so API load cannot starve processing.
    #[arg(
        long,
        env = "FLEETLOAD_WORKER_DB_MAX_CONNECTIONS",
        default_value_t = 8,
        global = true
    )]
    pub worker_db_max_connections: u32,

    // --- Operator console (/ui) and GraphiQL ---
    /// Let `/ui` mint tokens for the demo users (alice, bob). Only ever with HS256 and the
    /// secret generated in the data dir (never with `--jwks-url` or `--jwt-secret`); default:
    /// on for the embedded database, off otherwise.
    #[arg(
        long,
        env = "FLEETLOAD_DEV_SIGN_IN",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dev_sign_in: Option<bool>,

    // ---- Fair scheduling with chunks on SQS (issue #9, "fair scheduling") ----
    /// With chunks on SQS, most chunks of one upload on the queue and not yet applied; the
    /// dispatcher sends more as they are applied. Bounds how many of a large upload's chunks
    /// a small one queues behind (SQS has no order); 0: no bound (every chunk sent at once).
    /// The job table needs none: it claims chunks by their first row across uploads.
    #[arg(long, env = "FLEETLOAD_FANOUT_WINDOW", default_value_t = 16, global = true)]
    pub fanout_window: usize,

    // --- WebSocket connections and shutdown (hardening: ws) ---
    /// An acknowledged WebSocket with no subscription running and no message from the client
    /// for this long is closed (1000, reason `IDLE_TIMEOUT`), in seconds; 0 never.
    #[arg(
        long,
        env = "FLEETLOAD_WS_IDLE_TIMEOUT_SECS",
        default_value_t = 300,
        global = true
    )]
    pub ws_idle_timeout_secs: u64,

    /// WebSocket connections this process keeps open at once; one more is refused before the
    /// upgrade (HTTP 503, `TOO_MANY_CONNECTIONS`).
    #[arg(
        long,
        env = "FLEETLOAD_WS_MAX_CONNECTIONS",
        default_value_t = 10_000,
        global = true
    )]
    pub ws_max_connections: usize,

    /// WebSocket connections one peer address may keep open at once (`TOO_MANY_CONNECTIONS`);
    /// 0 no cap per address (behind a proxy every client has the proxy's address).
    #[arg(
        long,
        env = "FLEETLOAD_WS_MAX_CONNECTIONS_PER_IP",
        default_value_t = 0,
        global = true
    )]
    pub ws_max_connections_per_ip: usize,
}

/// Who may introspect the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IntrospectionPolicy {
    On,
    Token,
    Off,
}

impl Settings {
    /// Settings as if no flag and no variable were given, rooted at `data_dir`. The
    /// environment is ignored, so tests and embedders get the same settings on every machine.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        use clap::FromArgMatches;
        let matches = defaults_only_command()
            .try_get_matches_from(["fleetload"])
            .expect("every setting has a default or is optional");
        let mut settings = Self::from_arg_matches(&matches).expect("defaults parse as settings");
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

/// The settings' command line with every `env = …` removed: only flags and defaults count.
fn defaults_only_command() -> clap::Command {
    Settings::augment_args(clap::Command::new("fleetload")).mut_args(|arg| arg.env(None))
}

/// `--chunk-size`: at most 20,000 rows, so a chunk job naming every row of its range as a
/// repeat (8 bytes each as JSON) still fits an SQS message.
fn chunk_size(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=20_000).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is not between 1 and 20000")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_size_is_bounded() {
        assert_eq!(chunk_size("2000"), Ok(2000));
        assert_eq!(chunk_size("20000"), Ok(20_000));
        for bad in ["0", "20001", "-1", "many"] {
            assert!(chunk_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_embedded_command_reads_no_environment_variable() {
        let command = defaults_only_command();
        let with_env: Vec<_> = command
            .get_arguments()
            .filter(|a| a.get_env().is_some())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(with_env.is_empty(), "{with_env:?}");
        // The reset must not drop the settings themselves.
        assert!(command.get_arguments().any(|a| a.get_id() == "chunk_size"));
    }

    /// The table rows (`| … |` lines) of a Markdown document that name `` `env` ``.
    fn table_rows<'a>(doc: &'a str, env: &str) -> Vec<&'a str> {
        let quoted = format!("`{env}`");
        doc.lines()
            .filter(|l| l.trim_start().starts_with('|') && l.contains(&quoted))
            .collect()
    }

    /// Every setting `fleetload --help` shows (clap's own command, each argument's
    /// `get_env()`) is in a table of the README and in the settings table of
    /// docs/deployment.md, whose row also states clap's default: neither can rot.
    #[test]
    fn every_setting_is_documented() {
        use clap::CommandFactory;
        let readme = include_str!("../README.md");
        let guide = include_str!("../docs/deployment.md");
        let command = crate::cli::Cli::command();
        let mut missing = Vec::new();
        let mut checked = 0;
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy();
            checked += 1;
            if table_rows(readme, &env).is_empty() {
                missing.push(format!("README.md has no table row for {env}"));
            }
            let rows = table_rows(guide, &env);
            if rows.is_empty() {
                missing.push(format!("docs/deployment.md has no table row for {env}"));
                continue;
            }
            // Flags that take a value show their default; switches default to off.
            if arg.get_action().takes_values() {
                for default in arg.get_default_values() {
                    let default = format!("`{}`", default.to_string_lossy());
                    if !rows.iter().any(|row| row.contains(&default)) {
                        missing.push(format!("docs/deployment.md: {env} lacks its default {default}"));
                    }
                }
            }
        }
        assert!(checked >= 50, "only {checked} settings with a variable");
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    /// The README stands alone: its links point into the repository (or at the local server
    /// of its own examples), never at a page that may move or vanish.
    #[test]
    fn the_readme_links_only_inside_the_repository() {
        let readme = include_str!("../README.md");
        let mut targets = Vec::new();
        for (i, _) in readme.match_indices("](") {
            let rest = &readme[i + 2..];
            targets.push(&rest[..rest.find(')').unwrap_or(rest.len())]);
        }
        for (i, _) in readme.match_indices("<http") {
            let rest = &readme[i + 1..];
            targets.push(&rest[..rest.find('>').unwrap_or(rest.len())]);
        }
        assert!(!targets.is_empty());
        for target in targets {
            let local = target.starts_with("http://127.0.0.1");
            let in_repo = !target.contains("://") && !target.starts_with("//");
            assert!(
                local || in_repo,
                "README.md links outside the repository: {target}"
            );
            if in_repo && !target.starts_with('#') {
                let path = target.split('#').next().unwrap();
                let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
                assert!(file.exists(), "README.md links to a missing file: {target}");
            }
        }
    }

    /// Runs in a child process with `FLEETLOAD_*` set (changing this process's environment
    /// is unsound while other test threads run): the child checks that nothing leaked in.
    #[test]
    fn embedded_settings_ignore_fleetload_variables() {
        const CHILD: &str = "FLEETLOAD_TEST_EMBEDDED_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let settings = Settings::embedded("/tmp/x");
            assert_eq!(settings.chunk_size, 2000);
            assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
            assert!(settings.database_url.is_none());
            assert!(!settings.demo_data);
            assert_eq!(settings.jwt_audience, "fleetload");
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "config::tests::embedded_settings_ignore_fleetload_variables",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("FLEETLOAD_CHUNK_SIZE", "7")
            .env("FLEETLOAD_LISTEN", "0.0.0.0:1")
            .env("DATABASE_URL", "postgres://elsewhere/db")
            .env("FLEETLOAD_DEMO_DATA", "true")
            .env("FLEETLOAD_JWT_AUDIENCE", "other")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&status.stdout);
        assert!(
            status.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&status.stderr)
        );
        // The filter matched the test (it did not pass by running nothing).
        assert!(out.contains("1 passed"), "{out}");
    }
}
