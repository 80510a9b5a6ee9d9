//! Gives the errors async-graphql raises itself (unparsable documents, failed validation,
//! argument values of the wrong type) the Apollo codes clients branch on, so that every error
//! the API returns carries `extensions.code` and `extensions.errorType`.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Variables};

pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        // Whatever is still uncoded was raised while coercing input values.
        for error in &mut response.errors {
            set_code_if_missing(error, "BAD_USER_INPUT");
        }
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables).await.map_err(|mut e| {
            if e.message.starts_with("The recursion depth of the query") {
                set_code_if_missing(&mut e, "QUERY_TOO_DEEP");
            }
            set_code_if_missing(&mut e, "GRAPHQL_PARSE_FAILED");
            e
        })
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|mut errors| {
            for e in &mut errors {
                // async-graphql's own limits, told apart by their fixed messages.
                match e.message.as_str() {
                    "Query is too complex." => set_code_if_missing(e, "QUERY_TOO_COMPLEX"),
                    "Query is nested too deep." => set_code_if_missing(e, "QUERY_TOO_DEEP"),
                    _ => {}
                }
                set_code_if_missing(e, "GRAPHQL_VALIDATION_FAILED");
            }
            errors
        })
    }
}

fn set_code_if_missing(error: &mut ServerError, code: &str) {
    let ext = error.extensions.get_or_insert_with(Default::default);
    if ext.get("code").is_none() {
        ext.set("code", code);
        ext.set("errorType", code);
    }
}
