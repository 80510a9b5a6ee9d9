//! HTTP routes: GraphQL over HTTP, GraphiQL, health probes and (embedded) the object store.

use std::time::Duration;

use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::{FromRequest, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sea_orm::ConnectionTrait;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::graphql::{AppSchema, Auth};
use crate::state::AppState;

#[derive(Clone)]
struct Http {
    app: AppState,
    schema: AppSchema,
}

pub fn router(app: AppState, schema: AppSchema, extra: Option<Router>) -> Router {
    let cors = cors(&app.settings.cors_origins);
    let mut router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql))
        .route("/graphql/realtime", get(realtime))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Http {
            app: app.clone(),
            schema,
        })
        // GraphiQL at `/`, the console at `/ui` and their assets (src/console/).
        .merge(crate::console::routes(&app));
    if let Some(extra) = extra {
        router = router.merge(extra);
    }
    router.layer(cors).layer(TraceLayer::new_for_http())
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

async fn graphql(State(http): State<Http>, headers: HeaderMap, request: GraphQLRequest) -> GraphQLResponse {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let auth = Auth::from_header(&http.app.verifier, header).await;
    http.schema.execute(request.into_inner().data(auth)).await.into()
}

/// GraphQL over HTTP GET, or a WebSocket upgrade to one of the subscription protocols.
async fn graphql_get(State(http): State<Http>, request: axum::extract::Request) -> axum::response::Response {
    if crate::websocket::is_upgrade(request.headers()) {
        return crate::websocket::graphql_ws::accept(http.app, http.schema, request).await;
    }
    let headers = request.headers().clone();
    match GraphQLRequest::from_request(request, &()).await {
        Ok(query) => graphql(State(http), headers, query).await.into_response(),
        Err(rejection) => rejection.into_response(),
    }
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
