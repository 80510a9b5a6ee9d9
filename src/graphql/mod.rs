//! The GraphQL API: schema assembly from per-domain roots, AppSync scalars, auth context.

mod admin;
mod context;
mod error_codes;
mod results_mutation;
mod scalars;
mod subscription;
mod types;
mod upload_mutation;
mod upload_query;
mod upload_results;

use async_graphql::{MergedObject, MergedSubscription, Schema, SchemaBuilder};

pub use context::{Auth, PresentedToken, RequestAuth};
pub use scalars::{AwsDateTime, AwsJson};
pub use types::{BatchResult, FileDownload, Outcome, UploadProgress};

#[derive(MergedObject, Default)]
pub struct Query(upload_query::UploadQuery, admin::AdminQuery);

#[derive(MergedObject, Default)]
pub struct Mutation(
    upload_mutation::UploadMutation,
    results_mutation::ResultsMutation,
    admin::AdminMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(subscription::ProgressSubscription);

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// The schema without runtime data: enough for its SDL.
pub fn schema_builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query::default(), Mutation::default(), Subscription::default())
        .extension(error_codes::ErrorCodes)
}

/// The schema of a running server.
pub fn build_schema(state: crate::state::AppState) -> AppSchema {
    let recent_errors = upload_results::RecentErrors::loader(state.db.clone());
    schema_builder().data(state).data(recent_errors).finish()
}

/// The SDL that `schema.graphql` holds and `fleetload schema` prints.
pub fn sdl() -> String {
    schema_builder().finish().sdl()
}
