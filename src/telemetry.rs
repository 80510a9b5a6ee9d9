//! Logging setup: `RUST_LOG`-style filtering, text or JSON lines, always on stderr so
//! commands like `schema` and `token` keep stdout clean; and the span every pipeline step
//! runs in, so that `grep <uploadId>` over the logs of every process follows one upload.

use entity::prelude::Upload;
use entity::upload;
use sea_orm::{ConnectionTrait, EntityTrait, QuerySelect};
use tracing::Span;
use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,aws_config=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests start many apps in one process) is not an error.
    let _ = if json {
        // The fields of every enclosing span (request id, upload id, tenant) on each line.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// The span of one pipeline `step` (dispatch, chunk, webhook, report, sweep) of the upload
/// whose database key is `upload_pk`: its public id (`upload_id`, the UUID clients know)
/// and tenant are looked up by key, one small read; a failed read leaves them empty rather
/// than holding up the step.
pub async fn upload_span(db: &impl ConnectionTrait, step: &'static str, upload_pk: i64) -> Span {
    let ids: Option<(String, String)> = Upload::find_by_id(upload_pk)
        .select_only()
        .column(upload::Column::PublicId)
        .column(upload::Column::TenantId)
        .into_tuple()
        .one(db)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(upload_pk, error = %e, "no public id for the log span");
            None
        });
    let span = tracing::info_span!(
        "upload",
        step,
        upload_pk,
        upload_id = tracing::field::Empty,
        tenant_id = tracing::field::Empty
    );
    if let Some((public_id, tenant_id)) = ids {
        span.record("upload_id", public_id.as_str());
        span.record("tenant_id", tenant_id.as_str());
    }
    span
}
