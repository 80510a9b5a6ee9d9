//! The result fields of `Upload`: `results` (a keyset connection), `progress` (its recent
//! errors batched for a whole page through a DataLoader) and `errorReport`.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, Object};
use entity::upload;
use sea_orm::DatabaseConnection;

use super::context::{RequestAuth, db_permit};
use super::types::{BatchResult, FileDownload, Outcome, UploadProgress};
use super::upload_query::page_size;
use crate::error::{ApiError, GqlResult, IntoGql};
use crate::uploads::{self, results::ResultFilter};

/// Failures shown in `UploadProgress.recentErrors`.
const RECENT_ERRORS: u32 = 5;

/// The connection's own fields, resolved only when asked for.
pub struct ResultTotals {
    upload: upload::Model,
    filter: ResultFilter,
}

#[Object]
impl ResultTotals {
    /// How many results match the filters, across all pages.
    async fn total_count(&self, ctx: &Context<'_>) -> GqlResult<i64> {
        async {
            let _permit = db_permit(ctx).await;
            uploads::results::count(&ctx.app()?.db, &self.upload, &self.filter).await
        }
        .await
        .gql()
    }
}

pub type BatchResultConnection = Connection<String, BatchResult, ResultTotals, EmptyFields>;

/// `Upload.results`.
pub async fn results(
    ctx: &Context<'_>,
    upload: &upload::Model,
    first: Option<i32>,
    after: Option<String>,
    outcome: Option<Outcome>,
    error_code: Option<String>,
) -> GqlResult<BatchResultConnection> {
    async {
        let first = page_size(first)?;
        let after = after.as_deref().map(decode_cursor).transpose()?;
        let filter = ResultFilter {
            outcome: outcome.map(Into::into),
            error_code,
        };
        let page = {
            let _permit = db_permit(ctx).await;
            uploads::results::page(&ctx.app()?.db, upload.id, &filter, first, after).await?
        };
        let mut connection = BatchResultConnection::with_additional_fields(
            after.is_some(),
            page.has_next,
            ResultTotals {
                upload: upload.clone(),
                filter,
            },
        );
        connection.edges.extend(
            page.items
                .into_iter()
                .map(|r| Edge::new(encode_cursor(r.row_number), BatchResult::from(r))),
        );
        Ok(connection)
    }
    .await
    .gql()
}

/// `Upload.progress`; the recent errors are loaded only when selected.
pub async fn progress(ctx: &Context<'_>, upload: &upload::Model) -> GqlResult<UploadProgress> {
    async {
        let recent = if ctx.look_ahead().field("recentErrors").exists() {
            ctx.data::<DataLoader<RecentErrors>>()
                .map_err(|e| ApiError::internal(anyhow::anyhow!(e.message)))?
                .load_one(upload.id)
                .await
                .map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(UploadProgress::of(upload, recent, chrono::Utc::now()))
    }
    .await
    .gql()
}

/// `Upload.errorReport`.
pub async fn error_report(ctx: &Context<'_>, upload: &upload::Model) -> GqlResult<Option<FileDownload>> {
    async {
        let _permit = db_permit(ctx).await;
        let link = uploads::error_report(ctx.app()?, upload).await?;
        Ok(link.map(|l| FileDownload {
            url: l.url,
            expires_at: l.expires_at.into(),
        }))
    }
    .await
    .gql()
}

/// Loads the recent errors of every upload a response shows with one statement.
pub struct RecentErrors {
    db: DatabaseConnection,
}

impl RecentErrors {
    /// The loader as the schema holds it; uncached, since progress changes between requests.
    pub fn loader(db: DatabaseConnection) -> DataLoader<Self> {
        DataLoader::new(Self { db }, tokio::spawn).max_batch_size(uploads::results::RECENT_FAILURES_BATCH)
    }
}

impl Loader<i64> for RecentErrors {
    type Value = Vec<BatchResult>;
    type Error = Arc<String>;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Self::Value>, Self::Error> {
        let rows = uploads::results::recent_failures(&self.db, keys, RECENT_ERRORS)
            .await
            .map_err(|e| Arc::new(format!("{e:?}")))?;
        Ok(rows
            .into_iter()
            .map(|(id, rows)| (id, rows.into_iter().map(BatchResult::from).collect()))
            .collect())
    }
}

/// Result cursors are the row number.
fn encode_cursor(row_number: i32) -> String {
    super::cursor::encode("r", row_number)
}

fn decode_cursor(cursor: &str) -> Result<i32, ApiError> {
    super::cursor::decode("r", cursor)
        .filter(|n: &i32| *n >= 0)
        .ok_or_else(|| ApiError::BadUserInput("after is not a cursor of these results".into()))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(decode_cursor(&encode_cursor(123_456)).unwrap(), 123_456);
        for bad in [
            "",
            "!!",
            &URL_SAFE_NO_PAD.encode("c:5"),
            &URL_SAFE_NO_PAD.encode("r:-1"),
            &URL_SAFE_NO_PAD.encode("r:x"),
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(ApiError::BadUserInput(_))),
                "{bad}"
            );
        }
    }
}
