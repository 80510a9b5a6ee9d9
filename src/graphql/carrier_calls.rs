//! The carrier fields of `Upload`: its audit trail of carrier calls (a keyset connection)
//! and how many rows still wait for the carrier.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Object, SimpleObject};
use entity::upload;

use super::context::{RequestAuth, db_permit};
use super::scalars::AwsDateTime;
use super::upload_query::page_size;
use crate::carrier::audit::{self, CallRow};
use crate::error::{ApiError, GqlResult, IntoGql};

/// One call to the carrier made for an upload: a login, an action for a batch of rows, or a
/// line's status. Tokens and secrets are never part of it.
#[derive(SimpleObject)]
pub struct CarrierCall {
    pub id: String,
    /// `TOKEN`, `SESSION`, `ADD`, `ACTIVATE`, `DEACTIVATE` or `STATUS`.
    pub operation: String,
    /// The upload rows the call was for (at most 100).
    pub row_numbers: Vec<i32>,
    /// What was asked, in short.
    pub request: String,
    /// Null when no answer came.
    pub http_status: Option<i32>,
    /// `OK`, `UNAUTHORIZED`, `RATE_LIMITED`, `SERVER_ERROR`, `NO_ANSWER`, `REFUSED` or `BAD_ANSWER`.
    pub outcome: String,
    /// What came back, in short.
    pub response: String,
    pub duration_ms: i32,
    pub created_at: AwsDateTime,
}

impl From<CallRow> for CarrierCall {
    fn from(c: CallRow) -> Self {
        Self {
            id: c.id.to_string(),
            operation: c.operation,
            row_numbers: c.row_numbers,
            request: c.request,
            http_status: c.http_status,
            outcome: c.outcome,
            response: c.response,
            duration_ms: c.duration_ms,
            created_at: c.created_at.into(),
        }
    }
}

/// The connection's own fields.
pub struct CallTotals {
    upload_id: i64,
}

#[Object]
impl CallTotals {
    /// How many calls were made for the upload, across all pages.
    async fn total_count(&self, ctx: &Context<'_>) -> GqlResult<i64> {
        async {
            let _permit = db_permit(ctx).await;
            Ok(audit::count(&ctx.app()?.db, self.upload_id).await?)
        }
        .await
        .gql()
    }
}

pub type CarrierCallConnection = Connection<String, CarrierCall, CallTotals, EmptyFields>;

/// `Upload.carrierCalls`.
pub async fn carrier_calls(
    ctx: &Context<'_>,
    upload: &upload::Model,
    first: Option<i32>,
    after: Option<String>,
) -> GqlResult<CarrierCallConnection> {
    async {
        let first = page_size(first)?;
        let after = after.as_deref().map(decode_cursor).transpose()?;
        let (calls, more) = {
            let _permit = db_permit(ctx).await;
            audit::page(&ctx.app()?.db, upload.id, first, after).await?
        };
        let mut connection = CarrierCallConnection::with_additional_fields(
            after.is_some(),
            more,
            CallTotals { upload_id: upload.id },
        );
        connection.edges.extend(
            calls
                .into_iter()
                .map(|c| Edge::new(encode_cursor(c.id), CarrierCall::from(c))),
        );
        Ok(connection)
    }
    .await
    .gql()
}

/// Call cursors are the call's id.
fn encode_cursor(id: i64) -> String {
    super::cursor::encode("k", id)
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    super::cursor::decode("k", cursor)
        .filter(|n: &i64| *n >= 0)
        .ok_or_else(|| ApiError::BadUserInput("after is not a cursor of these calls".into()))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("r:42")).is_err());
        assert!(decode_cursor("%%").is_err());
    }
}
