//! Counts and times every GraphQL query and mutation, whatever its transport, by operation
//! name (bounded, see [`crate::metrics::operation_label`]) and outcome. Subscriptions are
//! long-lived streams, not operations with a latency: the WebSocket gauges count them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest, NextRequest,
};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument};
use async_graphql::{Request, Response, ServerResult, Variables};

pub struct Observe;

impl ExtensionFactory for Observe {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Operation::default())
    }
}

/// One request's operation name, as far as it is known.
#[derive(Default)]
struct Operation {
    /// `operationName` of the request.
    requested: Mutex<Option<String>>,
    /// The name of the document's only operation, when it has one.
    named: Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl Extension for Operation {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        let name = {
            let requested = self.requested.lock().unwrap_or_else(|e| e.into_inner()).take();
            requested.or_else(|| self.named.lock().unwrap_or_else(|e| e.into_inner()).take())
        };
        crate::metrics::graphql_operation(
            crate::metrics::operation_label(name.as_deref()),
            response.is_ok(),
            started.elapsed(),
        );
        response
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if let Some(name) = &request.operation_name {
            *self.requested.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.clone());
        }
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let named = match &doc.operations {
            DocumentOperations::Single(_) => None,
            DocumentOperations::Multiple(ops) if ops.len() == 1 => ops.keys().next().map(|n| n.to_string()),
            DocumentOperations::Multiple(_) => None,
        };
        *self.named.lock().unwrap_or_else(|e| e.into_inner()) = named;
        Ok(doc)
    }
}
