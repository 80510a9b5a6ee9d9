//! HTTP routes: GraphQL over HTTP, GraphiQL, health probes, metrics and (embedded) the
//! object store; every request with a request id.

mod graphql_http;
pub mod media;
pub mod ops;
pub mod rate_limit;
pub mod request_id;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, header};
use axum::routing::get;
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

pub fn router(app: AppState, schema: AppSchema, extra: Option<Router>, ops: Arc<ops::Ops>) -> Router {
    let cors = cors(&app.settings.cors_origins);
    let limiter =
        rate_limit::RateLimiter::new(app.settings.rate_limit_per_sec, app.settings.rate_limit_burst);
    let mut router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_http::post))
        .route("/graphql/realtime", get(realtime))
        .with_state(Http {
            app: app.clone(),
            schema,
            limiter: limiter.map(Arc::new),
        })
        // GraphiQL at `/`, the console at `/ui` and their assets (src/console/).
        .merge(crate::console::routes(&app))
        // `/healthz`, `/readyz`, `/metrics`.
        .merge(ops::routes(ops));
    if let Some(extra) = extra {
        router = router.merge(extra);
    }
    // The request id is taken first (outermost), so the trace span and every handler see it.
    router
        .layer(cors)
        .layer(TraceLayer::new_for_http().make_span_with(request_id::span))
        .layer(axum::middleware::from_fn(request_id::layer))
}

fn cors(origins: &[String]) -> CorsLayer {
    // `allow-headers: *` does not cover `Authorization` (Fetch standard), so the preflight's
    // own list is answered: Apollo and AppSync clients send headers of their own
    // (`x-api-key`, `x-amz-*`, `apollo-require-preflight`, …) besides it.
    let layer = CorsLayer::new()
        // PUT: the parts of a multipart upload on the embedded store.
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        // A browser client may read the id to quote it in a report, and must read a part's
        // ETag (S3 answers it the same way) to know what it uploaded.
        .expose_headers([request_id::X_REQUEST_ID.clone(), header::ETAG])
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
