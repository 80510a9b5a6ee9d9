//! The GraphQL API: schema assembly from per-domain roots, AppSync scalars, auth context.

mod admin;
mod carrier_accounts;
mod carrier_calls;
mod context;
mod cursor;
mod error_codes;
pub mod limits;
mod multipart;
mod observe;
mod request_guard;
mod results_mutation;
mod scalars;
mod subscription;
mod types;
mod upload_mutation;
mod upload_object;
mod upload_query;
mod upload_results;

use async_graphql::{MergedObject, MergedSubscription, Schema, SchemaBuilder};

pub use context::{Auth, PresentedToken, RequestAuth};
pub use request_guard::{DbPermits, Executed};
pub use scalars::{AwsDateTime, AwsJson};
pub use types::{BatchResult, FileDownload, Outcome, UploadProgress};

#[derive(MergedObject, Default)]
pub struct Query(
    upload_query::UploadQuery,
    multipart::MultipartQuery,
    admin::AdminQuery,
    carrier_accounts::CarrierAccountQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    upload_mutation::UploadMutation,
    multipart::MultipartMutation,
    results_mutation::ResultsMutation,
    admin::AdminMutation,
    carrier_accounts::CarrierAccountMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(subscription::ProgressSubscription);

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// The schema without runtime data: enough for its SDL.
pub fn schema_builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query::default(), Mutation::default(), Subscription::default())
        .extension(error_codes::ErrorCodes)
}

/// The schema of a running server, with the limits of its settings.
pub fn build_schema(state: crate::state::AppState) -> AppSchema {
    let settings = state.settings.clone();
    let recent_errors = upload_results::RecentErrors::loader(state.db.clone());
    let mut builder = schema_builder()
        // First, so its time covers the guard's checks and its outcome their refusals.
        .extension(observe::Observe)
        .extension(request_guard::RequestGuard {
            shape: limits::ShapeLimits {
                max_nodes: settings.max_query_nodes as u64,
                max_aliases: settings.max_aliases as u64,
                max_string_bytes: settings.max_string_bytes,
            },
            max_query_bytes: settings.max_query_bytes,
            introspection: settings.introspection,
            heavy_complexity: settings.heavy_query_complexity,
            heavy: std::sync::Arc::new(tokio::sync::Semaphore::new(settings.heavy_queries_at_once.max(1))),
        })
        .limit_depth(settings.max_query_depth)
        .limit_complexity(settings.max_query_complexity)
        // The parser's own nesting bound, a little above the depth limit so that the depth
        // limit is what a client meets.
        .limit_recursive_depth(settings.max_query_depth.saturating_mul(2).max(32))
        .limit_directives(16)
        .data(state)
        .data(recent_errors);
    if settings.introspection == crate::config::IntrospectionPolicy::Off {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The SDL that `schema.graphql` holds and `fleetload schema` prints.
pub fn sdl() -> String {
    schema_builder().finish().sdl()
}
