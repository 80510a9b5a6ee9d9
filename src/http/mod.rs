//! HTTP routes: GraphQL over HTTP, GraphiQL, health probes and (embedded) the object store.

mod graphql_http;
pub mod media;
pub mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use sea_orm::ConnectionTrait;
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::graphql::AppSchema;
use crate::state::AppState;

#[derive(Clone)]
struct Http {
    app: AppState,
    schema: AppSchema,
    limiter: Option<Arc<rate_limit::RateLimiter>>,
}

pub fn router(app: AppState, schema: AppSchema, extra: Option<Router>) -> Router {
    let cors = cors(&app.settings.cors_origins);
    let limiter =
        rate_limit::RateLimiter::new(app.settings.rate_limit_per_sec, app.settings.rate_limit_burst);
    let mut router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_http::post))
        .route("/graphql/realtime", get(realtime))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Http {
            app: app.clone(),
            schema,
            limiter: limiter.map(Arc::new),
        })
        // GraphiQL at `/`, the console at `/ui` and their assets (src/console/).
        .merge(crate::console::routes(&app));
    if let Some(extra) = extra {
        router = router.merge(extra);
    }
    router.layer(cors).layer(TraceLayer::new_for_http())
}

fn cors(origins: &[String]) -> CorsLayer {
    // `allow-headers: *` does not cover `Authorization` (Fetch standard), so the preflight's
    // own list is answered: Apollo and AppSync clients send headers of their own
    // (`x-api-key`, `x-amz-*`, `apollo-require-preflight`, …) besides it.
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// GraphQL over HTTP GET, or a WebSocket upgrade to one of the subscription protocols.
async fn graphql_get(State(http): State<Http>, request: axum::extract::Request) -> axum::response::Response {
    if crate::websocket::is_upgrade(request.headers()) {
        return crate::websocket::graphql_ws::accept(http.app, http.schema, request).await;
    }
    graphql_http::get(http, request).await
}

/// AppSync's real-time WebSocket flavour.
async fn realtime(State(http): State<Http>, request: axum::extract::Request) -> axum::response::Response {
    crate::websocket::appsync::accept(http.app, http.schema, request).await
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok"
}

/// The process can serve: its database answers.
async fn readyz(State(http): State<Http>) -> impl IntoResponse {
    let db = &http.app.db;
    match db.execute_unprepared("SELECT 1").await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}
