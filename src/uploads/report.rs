//! The error report of a finished upload: generated once, on first request, by the streaming
//! merge of its file and its failures, stored next to it, then offered as a signed link.

use std::time::Duration;

use chrono::Utc;
use entity::prelude::*;
use entity::upload;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::failed_rows::{Layout, store};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::{SignedDownload, error_report_key};

/// A download link of `upload`'s error report; `None` until the upload has finished and when
/// no row failed.
pub async fn error_report(
    state: &AppState,
    upload: &upload::Model,
) -> Result<Option<SignedDownload>, ApiError> {
    // A terminal upload's results never change again, so the report never goes stale.
    if !upload.status.is_terminal() || upload.failed == 0 {
        return Ok(None);
    }
    let key = match &upload.error_report_key {
        Some(key) => key.clone(),
        None => generate(state, upload).await?,
    };
    let ttl = Duration::from_secs(state.settings.download_url_ttl_secs.max(1));
    Ok(Some(state.storage.presign_get(&key, ttl).await?))
}

/// Writes the report and records its key. Two first requests at once both write the same
/// bytes to the same key and record the same key: harmless, so no lock is taken.
#[tracing::instrument(skip_all, fields(upload_id = upload.id))]
async fn generate(state: &AppState, upload: &upload::Model) -> Result<String, ApiError> {
    let started = std::time::Instant::now();
    let key = error_report_key(&upload.object_key);
    let rows = store(state, upload, Layout::ErrorReport, &key).await?;
    Upload::update_many()
        .col_expr(upload::Column::ErrorReportKey, Expr::value(key.clone()))
        .col_expr(upload::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(upload::Column::Id.eq(upload.id))
        .exec(&state.db)
        .await?;
    tracing::info!(
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "error report generated"
    );
    Ok(key)
}
