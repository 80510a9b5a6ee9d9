//! `retryFailedRows`: a new PREPARED upload of a finished upload's failed rows, its file
//! already written (the original header and lines), so the client only finalizes it.

use chrono::Utc;
use entity::upload::{self, UploadStatus};
use sea_orm::{ActiveModelTrait, Set};

use super::failed_rows::{Layout, store};
use super::{Prepared, find_visible, sign_upload};
use crate::access;
use crate::auth::{Identity, Permission};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::upload_key;

#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, upload_id = %upload_id))]
pub async fn retry_failed_rows(
    state: &AppState,
    identity: &Identity,
    tenant_id: &str,
    upload_id: &str,
) -> Result<Prepared, ApiError> {
    let db = &state.db;
    let scope = access::authorize(db, identity, tenant_id, Permission::Update).await?;
    let original = find_visible(db, &scope, upload_id)
        .await?
        .ok_or(ApiError::UploadNotFound)?;
    if !original.status.is_terminal() {
        return Err(ApiError::UploadNotFinished);
    }
    if original.failed == 0 {
        return Err(ApiError::NothingToRetry);
    }

    let now = Utc::now();
    let public_id = uuid::Uuid::now_v7().to_string();
    let object_key = upload_key(&public_id, now);
    // The file first: a PREPARED retry upload always has its file, so finalize just works.
    let rows = store(state, &original, Layout::RetryFile, &object_key).await?;
    let rows = i32::try_from(rows).map_err(ApiError::internal)?;
    if rows == 0 {
        return Err(ApiError::NothingToRetry);
    }
    // As prepare does: the client may still replace the file before finalizing.
    let post = sign_upload(state, &object_key, now).await?;

    let upload = upload::ActiveModel {
        public_id: Set(public_id),
        tenant_id: Set(original.tenant_id.clone()),
        target_tenant_id: Set(original.target_tenant_id.clone()),
        created_by: Set(identity.user.clone()),
        device_type: Set(original.device_type),
        action_id: Set(original.action_id.clone()),
        action_kind: Set(original.action_kind),
        action_service_type: Set(original.action_service_type),
        workflow_id: Set(original.workflow_id.clone()),
        workflow_service_type: Set(original.workflow_service_type),
        brand_id: Set(original.brand_id),
        provision_type: Set(original.provision_type.clone()),
        declared_row_count: Set(rows),
        object_key: Set(object_key),
        status: Set(UploadStatus::Prepared),
        processed_rows: Set(0),
        succeeded: Set(0),
        failed: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    tracing::info!(retry_of = %original.public_id, new_upload_id = %upload.public_id, rows, "failed rows prepared for retry");
    Ok(Prepared { upload, post })
}
