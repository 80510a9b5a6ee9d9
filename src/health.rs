//! Health probes, the same on the API's listener and on a worker's metrics listener:
//! `/healthz` says the process is up; `/readyz` says it can work — the database answers and
//! has every migration this binary knows, and the object store and queues answer. Each part
//! is checked with a short timeout, so a probe never hangs on a backend that does not answer.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::queue::Queue;
use crate::storage::ObjectStore;

/// How long one part may take to answer before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/readyz` checks.
pub struct Readiness {
    pub db: DatabaseConnection,
    pub storage: Arc<dyn ObjectStore>,
    /// The queues this process sends to or takes from.
    pub queues: Vec<Arc<dyn Queue>>,
}

/// The parts of `/readyz`, in its JSON body's order.
pub const PARTS: [&str; 4] = ["database", "migrations", "object_store", "queue"];

/// `/readyz`'s answer: each part `ok` or `failed` (`skipped` for migrations when the
/// database itself failed); the causes go to the log, not to the unauthenticated caller.
#[derive(Debug, Serialize)]
pub struct Report {
    pub status: &'static str,
    pub parts: Map<String, Value>,
    pub failed: Vec<&'static str>,
}

impl Readiness {
    pub async fn check(&self) -> Report {
        let database = timed("database", async {
            self.db
                .execute_unprepared("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        });
        let storage = timed("object_store", async {
            self.storage.check().await.map_err(|e| e.to_string())
        });
        let queue = timed("queue", async {
            for queue in &self.queues {
                queue.check().await.map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        let (database, storage, queue) = tokio::join!(database, storage, queue);
        let migrations = if database {
            Some(
                timed("migrations", async {
                    match Migrator::get_pending_migrations(&self.db).await {
                        Ok(pending) if pending.is_empty() => Ok(()),
                        Ok(pending) => Err(format!("{} migration(s) not applied", pending.len())),
                        Err(e) => Err(e.to_string()),
                    }
                })
                .await,
            )
        } else {
            None
        };
        let mut parts = Map::new();
        let mut failed = Vec::new();
        for (name, ok) in [
            ("database", Some(database)),
            ("migrations", migrations),
            ("object_store", Some(storage)),
            ("queue", Some(queue)),
        ] {
            let state = match ok {
                Some(true) => "ok",
                Some(false) => "failed",
                None => "skipped",
            };
            if ok != Some(true) {
                failed.push(name);
            }
            parts.insert(name.to_owned(), state.into());
        }
        Report {
            status: if failed.is_empty() { "ready" } else { "unavailable" },
            parts,
            failed,
        }
    }
}

/// Runs one check within [`CHECK_TIMEOUT`]; a failure is logged with its cause.
async fn timed(part: &'static str, check: impl Future<Output = Result<(), String>>) -> bool {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(part, %error, "readiness check failed");
            false
        }
        Err(_) => {
            tracing::warn!(
                part,
                timeout_secs = CHECK_TIMEOUT.as_secs(),
                "readiness check timed out"
            );
            false
        }
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when every part is ready, else 503; the same JSON either way.
pub async fn readyz(readiness: &Readiness) -> Response {
    let report = readiness.check().await;
    let status = if report.failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}
