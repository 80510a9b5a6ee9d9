//! `cancelBatchUpload`: stop an upload that has not finished. Workers skip the chunks of a
//! cancelled upload, and a chunk still running when the cancel commits cannot add its rows
//! (its counter update only applies to a PROCESSING upload), so results stop where they are.

use entity::upload::{self, UploadStatus};

use super::find_visible;
use crate::access;
use crate::auth::{Identity, Permission};
use crate::error::ApiError;
use crate::pipeline::terminate;
use crate::state::AppState;

/// Cancels the upload and returns it. Cancelling a cancelled upload again answers with it
/// unchanged; any other finished upload → `UPLOAD_ALREADY_FINISHED`.
#[tracing::instrument(skip_all, fields(tenant_id = tenant_id, upload_id = public_id))]
pub async fn cancel(
    state: &AppState,
    identity: &Identity,
    tenant_id: &str,
    public_id: &str,
) -> Result<upload::Model, ApiError> {
    let db = &state.db;
    let scope = access::authorize(db, identity, tenant_id, Permission::Update).await?;
    let upload = find_visible(db, &scope, public_id)
        .await?
        .ok_or(ApiError::UploadNotFound)?;
    if terminate(db, &state.outbox, upload.id, UploadStatus::Cancelled, None).await? {
        tracing::info!(upload_pk = upload.id, by = %identity.user, "upload cancelled");
        state.progress.changed(upload.id).await;
    }
    let now = find_visible(db, &scope, public_id)
        .await?
        .ok_or(ApiError::UploadNotFound)?;
    match now.status {
        UploadStatus::Cancelled => Ok(now),
        _ => Err(ApiError::UploadAlreadyFinished),
    }
}
