//! The limits every GraphQL request meets, whatever its transport: the document's shape
//! (see [`super::limits`]) before async-graphql walks it, the length of variable values,
//! introspection for anonymous callers, a per-request share of the database pool, and a few
//! slots for heavy queries so that a flood of them leaves CPU to everything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Request, Response, ServerError, ServerResult, ValidationResult, Variables};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::context::Auth;
use super::limits::{self, ShapeLimits};
use crate::config::IntrospectionPolicy;

pub struct RequestGuard {
    pub shape: ShapeLimits,
    pub max_query_bytes: usize,
    pub introspection: IntrospectionPolicy,
    /// Complexity from which a request waits for a slot of `heavy`.
    pub heavy_complexity: usize,
    pub heavy: Arc<Semaphore>,
}

impl ExtensionFactory for RequestGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Guard {
            shape: self.shape,
            max_query_bytes: self.max_query_bytes,
            introspection: self.introspection,
            heavy_complexity: self.heavy_complexity,
            heavy: self.heavy.clone(),
            complexity: AtomicUsize::new(0),
        })
    }
}

/// One request's guard.
struct Guard {
    shape: ShapeLimits,
    max_query_bytes: usize,
    introspection: IntrospectionPolicy,
    heavy_complexity: usize,
    heavy: Arc<Semaphore>,
    /// The validated complexity, for `execute`.
    complexity: AtomicUsize,
}

/// Set once a request passed parsing and validation and started executing, so HTTP can tell
/// a request error (no `data`, 400 under `application/graphql-response+json`) from a result.
#[derive(Clone, Default)]
pub struct Executed(Arc<AtomicBool>);

impl Executed {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How many database connections one request may hold at once; resolvers that query take a
/// permit for the duration of their statements (not of their children), so 10,000 aliases
/// wait in line instead of taking the whole pool.
#[derive(Clone)]
pub struct DbPermits(Arc<Semaphore>);

impl DbPermits {
    pub fn new(permits: usize) -> Self {
        Self(Arc::new(Semaphore::new(permits.max(1))))
    }

    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().acquire_owned().await.ok()
    }
}

pub fn coded(message: impl Into<String>, code: &str) -> ServerError {
    let mut error = ServerError::new(message, None);
    let ext = error.extensions.get_or_insert_with(Default::default);
    ext.set("code", code);
    ext.set("errorType", code);
    error
}

fn check_variables(variables: &Variables, max: usize) -> ServerResult<()> {
    for value in variables.values() {
        limits::check_const_strings(value, max).map_err(|e| coded(e.to_string(), e.code()))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Extension for Guard {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // Parsing costs about a microsecond a byte: a 600 KB document of aliases is refused
        // before it is parsed.
        if request.query.len() > self.max_query_bytes {
            let message = format!("the query is longer than {} bytes", self.max_query_bytes);
            return Err(coded(message, "QUERY_TOO_LARGE"));
        }
        check_variables(&request.variables, self.shape.max_string_bytes)?;
        // A document that does not parse is left to async-graphql to report.
        if let Ok(doc) = request.parsed_query() {
            limits::check_document(doc, self.shape).map_err(|e| coded(e.to_string(), e.code()))?;
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
        let refusal = match self.introspection {
            IntrospectionPolicy::On => None,
            IntrospectionPolicy::Token if matches!(ctx.data_opt::<Auth>(), Some(Auth::User(_))) => None,
            IntrospectionPolicy::Token => Some(("introspection requires a valid token", "UNAUTHENTICATED")),
            IntrospectionPolicy::Off => Some((
                "introspection is disabled on this server",
                "INTROSPECTION_DISABLED",
            )),
        };
        match refusal {
            Some((message, code)) if limits::introspects(&doc) => Err(coded(message, code)),
            _ => Ok(doc),
        }
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        self.complexity.store(result.complexity, Ordering::Relaxed);
        Ok(result)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        if let Some(executed) = ctx.data_opt::<Executed>() {
            executed.0.store(true, Ordering::Relaxed);
        }
        // Queries and mutations only: a subscription never calls `execute`, so a long-lived
        // one cannot keep a slot.
        let _slot = if self.complexity.load(Ordering::Relaxed) >= self.heavy_complexity {
            self.heavy.acquire().await.ok()
        } else {
            None
        };
        next.run(ctx, operation_name).await
    }
}
