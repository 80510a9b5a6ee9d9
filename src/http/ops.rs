//! The operator's endpoints: `/healthz`, `/readyz` and `/metrics`. The API serves them on
//! its own listener; `fleetload worker` (and `serve`, when asked) on a small listener of
//! their own at `FLEETLOAD_METRICS_LISTEN`, apart from client traffic.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use crate::health::{self, Readiness};

/// What the operator's endpoints read.
pub struct Ops {
    pub readiness: Readiness,
    /// The process's database pools, by the `pool` label of their gauges.
    pub pools: Vec<(&'static str, DatabaseConnection)>,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn routes(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    health::readyz(&ops.readiness).await
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let body = crate::metrics::render(&ops.pools);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Serves [`routes`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    ops: Arc<Ops>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, routes(ops))
        .with_graceful_shutdown(shutdown)
        .await
}
