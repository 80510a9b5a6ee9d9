//! Prometheus metrics: every name this process exports, in one place with its description,
//! the recorder (installed once per process) and the helpers the rest of the code calls.
//!
//! The exposition is rendered by our own `/metrics` routes (the API's listener and the
//! metrics listener of `fleetload worker`), not by the exporter's HTTP server. Labels take
//! only bounded values: operation names are sanitised and capped, never upload or tenant ids.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ::metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::DatabaseConnection;

/// GraphQL queries and mutations, by `operation` and `outcome` (`ok` | `error`).
pub const GRAPHQL_OPERATIONS: &str = "fleetload_graphql_operations_total";
/// Latency of those operations, parsing to response.
pub const GRAPHQL_OPERATION_DURATION: &str = "fleetload_graphql_operation_duration_seconds";
/// Uploads that reached a final status, by `status`.
pub const UPLOADS_FINISHED: &str = "fleetload_uploads_finished_total";
/// Result rows written, by `outcome` (`SUCCESS` | `FAIL`) and `error_code` (empty on success).
pub const ROWS: &str = "fleetload_rows_total";
/// Chunk jobs handled, by `result` (`applied`, `already_applied`, `skipped`, `error`).
pub const CHUNKS: &str = "fleetload_chunks_total";
/// Time of one chunk's transaction (decide, apply, write results, commit).
pub const CHUNK_DURATION: &str = "fleetload_chunk_duration_seconds";
/// Time of one dispatch run (validate the file, fan its chunks out).
pub const DISPATCH_DURATION: &str = "fleetload_dispatch_duration_seconds";
/// Jobs ready to run, by `queue` (job table: exact; SQS: approximate, in flight included).
pub const QUEUE_DEPTH: &str = "fleetload_queue_depth";
/// Age of the oldest job ready to run on a job-table queue, by `queue` (0 when none).
pub const QUEUE_OLDEST_READY_AGE: &str = "fleetload_queue_oldest_ready_age_seconds";
/// Dead-lettered jobs kept, by `queue` (job table: dead rows; SQS: the redrive DLQ).
pub const QUEUE_DEAD_LETTER_DEPTH: &str = "fleetload_queue_dead_letter_depth";
/// Job attempts that failed and were put back with a delay, by `kind`.
pub const JOBS_RETRIED: &str = "fleetload_jobs_retried_total";
/// Jobs given up (dead-lettered), by `kind`.
pub const JOBS_DEAD_LETTERED: &str = "fleetload_jobs_dead_lettered_total";
/// WebSocket connections open now, by `protocol`.
pub const WEBSOCKET_CONNECTIONS: &str = "fleetload_websocket_connections";
/// Subscriptions running now on WebSocket connections, by `protocol`.
pub const WEBSOCKET_SUBSCRIPTIONS: &str = "fleetload_websocket_subscriptions";
/// Webhook calls, by `result` (`delivered`, `retried`, `dropped`, `given_up`).
pub const WEBHOOK_DELIVERIES: &str = "fleetload_webhook_deliveries_total";
/// Calls to carriers (carrier actions), by `operation` and `outcome`.
pub const CARRIER_CALLS: &str = "fleetload_carrier_calls_total";
/// Database pool connections, by `pool` (`api` | `pipeline`) and `state` (`in_use` | `idle`).
pub const DB_POOL_CONNECTIONS: &str = "fleetload_db_pool_connections";

/// Every metric name with its kind and description: what `/metrics` exports once a process
/// has run an upload, and what a dashboard may reference.
pub const ALL: &[(&str, Kind, &str)] = &[
    (
        GRAPHQL_OPERATIONS,
        Kind::Counter,
        "GraphQL queries and mutations by operation name and outcome.",
    ),
    (
        GRAPHQL_OPERATION_DURATION,
        Kind::Histogram,
        "Latency of GraphQL queries and mutations.",
    ),
    (
        UPLOADS_FINISHED,
        Kind::Counter,
        "Uploads that reached a final status, by status.",
    ),
    (
        ROWS,
        Kind::Counter,
        "Result rows written, by outcome and error code.",
    ),
    (CHUNKS, Kind::Counter, "Chunk jobs handled, by result."),
    (
        CHUNK_DURATION,
        Kind::Histogram,
        "Duration of one chunk's transaction.",
    ),
    (
        DISPATCH_DURATION,
        Kind::Histogram,
        "Duration of one dispatch run (read the file, fan out chunks).",
    ),
    (
        QUEUE_DEPTH,
        Kind::Gauge,
        "Jobs ready to run, by queue (SQS: approximate).",
    ),
    (
        QUEUE_OLDEST_READY_AGE,
        Kind::Gauge,
        "Age of the oldest ready job on a job-table queue.",
    ),
    (
        QUEUE_DEAD_LETTER_DEPTH,
        Kind::Gauge,
        "Dead-lettered jobs kept, by queue.",
    ),
    (
        JOBS_RETRIED,
        Kind::Counter,
        "Job attempts that failed and were retried, by kind.",
    ),
    (
        JOBS_DEAD_LETTERED,
        Kind::Counter,
        "Jobs given up (dead-lettered), by kind.",
    ),
    (
        WEBSOCKET_CONNECTIONS,
        Kind::Gauge,
        "WebSocket connections open, by protocol.",
    ),
    (
        WEBSOCKET_SUBSCRIPTIONS,
        Kind::Gauge,
        "Subscriptions running on WebSocket connections, by protocol.",
    ),
    (WEBHOOK_DELIVERIES, Kind::Counter, "Webhook calls by result."),
    (
        CARRIER_CALLS,
        Kind::Counter,
        "Calls to carriers by operation (TOKEN, SESSION, ADD, ACTIVATE, DEACTIVATE, STATUS) and outcome.",
    ),
    (
        DB_POOL_CONNECTIONS,
        Kind::Gauge,
        "Database pool connections by pool and state.",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The WebSocket protocols, as the `protocol` label names them.
pub const PROTOCOLS: [&str; 3] = ["graphql-transport-ws", "graphql-ws", "appsync"];

/// Most distinct operation names labelled; later new names count as `other`, so a client
/// sending random names cannot grow the exposition without bound.
const MAX_OPERATION_NAMES: usize = 200;
/// Longest operation name labelled; longer ones count as `other`.
const MAX_OPERATION_NAME_LEN: usize = 64;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first call. When another recorder was installed
/// first (an embedder's), ours still renders, but records nothing.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Latency buckets from 1 ms to a minute: GraphQL answers in milliseconds, a chunk
        // of 2,000 rows in tens to hundreds, a million-row dispatch in tens of seconds.
        const SECONDS: &[f64] = &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed before fleetload's: /metrics stays empty");
        }
        describe_all();
        register_known_series();
        handle
    })
}

fn describe_all() {
    for &(name, kind, help) in ALL {
        let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
        match (kind, unit) {
            (Kind::Counter, _) => describe_counter!(name, help),
            (Kind::Gauge, Some(unit)) => describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

/// Series whose label values are known up front start at zero, so that `rate()` and
/// absence alerts work before the first event, and every name is exported from the start.
fn register_known_series() {
    for status in ["COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED"] {
        counter!(UPLOADS_FINISHED, "status" => status).absolute(0);
    }
    counter!(ROWS, "outcome" => "SUCCESS", "error_code" => "").absolute(0);
    for result in ["applied", "already_applied", "skipped", "error"] {
        counter!(CHUNKS, "result" => result).absolute(0);
    }
    for kind in JOB_KINDS {
        counter!(JOBS_RETRIED, "kind" => kind).absolute(0);
        counter!(JOBS_DEAD_LETTERED, "kind" => kind).absolute(0);
    }
    for protocol in PROTOCOLS {
        gauge!(WEBSOCKET_CONNECTIONS, "protocol" => protocol).set(0.0);
        gauge!(WEBSOCKET_SUBSCRIPTIONS, "protocol" => protocol).set(0.0);
    }
    for result in ["delivered", "retried", "dropped", "given_up"] {
        counter!(WEBHOOK_DELIVERIES, "result" => result).absolute(0);
    }
    counter!(CARRIER_CALLS, "operation" => "STATUS", "outcome" => "OK").absolute(0);
    let _ = histogram!(CHUNK_DURATION);
    let _ = histogram!(DISPATCH_DURATION);
}

/// The job kinds, as the `kind` label names them.
pub const JOB_KINDS: [&str; 4] = ["dispatch", "continue_dispatch", "chunk", "webhook"];

/// The text exposition, with the database pools' gauges read now (no I/O: the pools'
/// own counts).
pub fn render(pools: &[(&'static str, DatabaseConnection)]) -> String {
    let handle = handle();
    for (name, db) in pools {
        if let Some((size, idle)) = pool_counts(db) {
            gauge!(DB_POOL_CONNECTIONS, "pool" => *name, "state" => "in_use")
                .set((size as usize).saturating_sub(idle) as f64);
            gauge!(DB_POOL_CONNECTIONS, "pool" => *name, "state" => "idle").set(idle as f64);
        }
    }
    // Without the exporter's runtime feature nothing else drains histogram samples.
    handle.run_upkeep();
    handle.render()
}

/// (open, idle) connections of the pool behind `db`.
fn pool_counts(db: &DatabaseConnection) -> Option<(u32, usize)> {
    match db {
        DatabaseConnection::SqlxPostgresPoolConnection(_) => {
            let pool = db.get_postgres_connection_pool();
            Some((pool.size(), pool.num_idle()))
        }
        DatabaseConnection::SqlxSqlitePoolConnection(_) => {
            let pool = db.get_sqlite_connection_pool();
            Some((pool.size(), pool.num_idle()))
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The `operation` label of a GraphQL operation name: `anonymous` without one, `other`
/// past the cap of distinct names or for a name that is not a plain GraphQL name.
pub fn operation_label(name: Option<&str>) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return "anonymous".to_owned();
    };
    let plain = name.len() <= MAX_OPERATION_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !plain {
        return "other".to_owned();
    }
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if seen.contains(name) {
        return name.to_owned();
    }
    if seen.len() >= MAX_OPERATION_NAMES {
        return "other".to_owned();
    }
    seen.insert(name.to_owned());
    name.to_owned()
}

/// One GraphQL query or mutation answered.
pub fn graphql_operation(operation: String, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    counter!(GRAPHQL_OPERATIONS, "operation" => operation.clone(), "outcome" => outcome).increment(1);
    histogram!(GRAPHQL_OPERATION_DURATION, "operation" => operation, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// An upload reached its final `status` (labelled as the API spells it).
pub fn upload_finished(status: entity::upload::UploadStatus) {
    use entity::upload::UploadStatus as S;
    let label = match status {
        S::Completed => "COMPLETED",
        S::CompletedWithErrors => "COMPLETED_WITH_ERRORS",
        S::Failed => "FAILED",
        S::Cancelled => "CANCELLED",
        // Not final: nothing to count.
        S::Prepared | S::Queued | S::Processing => return,
    };
    counter!(UPLOADS_FINISHED, "status" => label).increment(1);
}

/// Rows of one committed chunk, by outcome and error code.
pub fn rows(outcome: &'static str, error_code: &'static str, n: u64) {
    counter!(ROWS, "outcome" => outcome, "error_code" => error_code).increment(n);
}

/// A call to a carrier ended with `outcome` (the audit trail's words).
pub fn carrier_call(operation: &'static str, outcome: &'static str) {
    counter!(CARRIER_CALLS, "operation" => operation, "outcome" => outcome).increment(1);
}

/// A chunk job ended with `result`; `elapsed` is its transaction's time when it ran one.
pub fn chunk(result: &'static str, elapsed: Option<Duration>) {
    counter!(CHUNKS, "result" => result).increment(1);
    if let Some(elapsed) = elapsed {
        histogram!(CHUNK_DURATION).record(elapsed.as_secs_f64());
    }
}

pub fn dispatch_duration(elapsed: Duration) {
    histogram!(DISPATCH_DURATION).record(elapsed.as_secs_f64());
}

pub fn job_retried(kind: &'static str) {
    counter!(JOBS_RETRIED, "kind" => kind).increment(1);
}

pub fn job_dead_lettered(kind: &'static str) {
    counter!(JOBS_DEAD_LETTERED, "kind" => kind).increment(1);
}

pub fn webhook_delivery(result: &'static str) {
    counter!(WEBHOOK_DELIVERIES, "result" => result).increment(1);
}

/// A queue's sampled depths; `None` leaves a gauge as it was (the backend does not say).
pub fn queue_depths(queue: &str, stats: &crate::queue::QueueStats) {
    let queue = queue.to_owned();
    if let Some(ready) = stats.ready {
        gauge!(QUEUE_DEPTH, "queue" => queue.clone()).set(ready as f64);
    }
    if let Some(age) = stats.oldest_ready_age {
        gauge!(QUEUE_OLDEST_READY_AGE, "queue" => queue.clone()).set(age.as_secs_f64());
    }
    if let Some(dead) = stats.dead {
        gauge!(QUEUE_DEAD_LETTER_DEPTH, "queue" => queue).set(dead as f64);
    }
}

/// How often a process reads its queues' depths: a few cheap reads per queue, whatever
/// the number of scrapes.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);
/// Longest a sample of one queue may take; a slow backend leaves its gauges as they were.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Samples the depths of `queues` (by `queue` label) at once and every [`SAMPLE_EVERY`]
/// until `stop`.
pub fn spawn_sampler(
    queues: Vec<(&'static str, std::sync::Arc<dyn crate::queue::Queue>)>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // A sample in flight does not hold up shutdown.
            tokio::select! {
                () = sample_queues(&queues) => {},
                () = stop.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(SAMPLE_EVERY) => {},
                () = stop.cancelled() => return,
            }
        }
    })
}

/// One sample of every queue's depths.
pub async fn sample_queues(queues: &[(&'static str, std::sync::Arc<dyn crate::queue::Queue>)]) {
    for (label, queue) in queues {
        match tokio::time::timeout(SAMPLE_TIMEOUT, queue.stats()).await {
            Ok(Ok(stats)) => queue_depths(label, &stats),
            Ok(Err(e)) => tracing::debug!(queue = label, error = %e, "queue depths unavailable"),
            Err(_) => tracing::debug!(queue = label, "queue depths timed out"),
        }
    }
}

/// Counts one open WebSocket connection (or running subscription) of `protocol` while alive.
pub struct Open {
    name: &'static str,
    protocol: &'static str,
}

impl Open {
    pub fn connection(protocol: &'static str) -> Self {
        Self::new(WEBSOCKET_CONNECTIONS, protocol)
    }

    pub fn subscription(protocol: &'static str) -> Self {
        Self::new(WEBSOCKET_SUBSCRIPTIONS, protocol)
    }

    /// Runs `future`, counted while it runs (and until it is dropped, e.g. aborted).
    pub async fn around<F: std::future::Future>(self, future: F) -> F::Output {
        let _open = self;
        future.await
    }

    fn new(name: &'static str, protocol: &'static str) -> Self {
        gauge!(name, "protocol" => protocol).increment(1.0);
        Self { name, protocol }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        gauge!(self.name, "protocol" => self.protocol).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_labels_are_plain_names_and_bounded() {
        assert_eq!(operation_label(None), "anonymous");
        assert_eq!(operation_label(Some("")), "anonymous");
        assert_eq!(operation_label(Some("Prepare_1")), "Prepare_1");
        assert_eq!(operation_label(Some("bad name")), "other");
        assert_eq!(operation_label(Some(&"a".repeat(65))), "other");
        assert_eq!(operation_label(Some("1abc")), "other");
        for n in 0..MAX_OPERATION_NAMES + 10 {
            let label = operation_label(Some(&format!("op{n}")));
            assert!(label == format!("op{n}") || label == "other");
        }
        // Past the cap, a new name is `other`; a name seen before keeps its label.
        assert_eq!(operation_label(Some("neverSeenBefore")), "other");
        assert_eq!(operation_label(Some("Prepare_1")), "Prepare_1");
    }

    /// Every `fleetload_…` name in `text`, in order of appearance.
    fn metric_names(text: &str) -> Vec<&str> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("fleetload_") {
            let tail = &rest[at..];
            let len = tail
                .bytes()
                .position(|b| !(b.is_ascii_lowercase() || b == b'_'))
                .unwrap_or(tail.len());
            names.push(&tail[..len]);
            rest = &tail[len..];
        }
        names
    }

    /// The name of [`ALL`] that exports the series `name`: itself, or the histogram whose
    /// `_bucket`, `_sum` or `_count` series it is.
    fn exported_as(name: &str) -> Option<&'static str> {
        if let Some(&(n, _, _)) = ALL.iter().find(|&&(n, _, _)| n == name) {
            return Some(n);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            ALL.iter()
                .find(|&&(n, kind, _)| n == base && kind == Kind::Histogram)
                .map(|&(n, _, _)| n)
        })
    }

    fn is_exported(name: &str) -> bool {
        exported_as(name).is_some()
    }

    /// Every query of the dashboard's panels (rows' nested panels included).
    fn dashboard_exprs(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            dashboard_exprs(&panel["panels"], out);
        }
    }

    /// The Grafana dashboard (docs/) queries only names this server exports; the operability
    /// test proves every name of [`ALL`] is really in a `/metrics` scrape.
    #[test]
    fn the_dashboard_references_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../docs/grafana-dashboard.json"))
                .expect("docs/grafana-dashboard.json is JSON");
        let mut exprs = Vec::new();
        dashboard_exprs(&dashboard["panels"], &mut exprs);
        assert!(exprs.len() >= 10, "{exprs:?}");
        let mut used = HashSet::new();
        for (title, expr) in &exprs {
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {title:?} queries no fleetload metric: {expr}"
            );
            for name in names {
                let exported = exported_as(name);
                assert!(
                    exported.is_some(),
                    "panel {title:?} queries {name}, which is not exported"
                );
                used.insert(exported.unwrap());
            }
        }
        // Every metric has a panel: a new metric gets one too.
        let unused: Vec<_> = ALL
            .iter()
            .map(|&(n, _, _)| n)
            .filter(|n| !used.contains(n))
            .collect();
        assert!(unused.is_empty(), "no dashboard panel shows {unused:?}");
    }

    /// The alert rules of docs/deployment.md query only exported names as well.
    #[test]
    fn the_deployment_guide_alerts_reference_only_exported_metrics() {
        let guide = include_str!("../docs/deployment.md");
        let rules = guide
            .split("```yaml")
            .nth(1)
            .and_then(|block| block.split("```").next())
            .expect("docs/deployment.md has its alert rules in a yaml block");
        let names = metric_names(rules);
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            assert!(
                is_exported(name),
                "an alert rule queries {name}, which is not exported"
            );
        }
    }

    #[test]
    fn metric_names_are_found_and_histogram_series_accepted() {
        assert_eq!(
            metric_names("rate(fleetload_rows_total{x=\"1\"}[5m]) / fleetload_chunk_duration_seconds_bucket"),
            ["fleetload_rows_total", "fleetload_chunk_duration_seconds_bucket"]
        );
        assert!(is_exported("fleetload_chunk_duration_seconds_count"));
        assert!(!is_exported("fleetload_rows_total_count"));
        assert!(!is_exported("fleetload_rows"));
    }

    #[test]
    fn every_metric_follows_prometheus_naming() {
        for &(name, kind, _) in ALL {
            assert!(name.starts_with("fleetload_"), "{name}");
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            if kind == Kind::Histogram {
                assert!(name.ends_with("_seconds"), "{name}");
            }
        }
    }
}
