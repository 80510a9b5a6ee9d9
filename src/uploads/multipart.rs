//! Resumable multipart uploads (SPEC §10): prepare one with a part URL per part, list what
//! the store really holds with fresh URLs for the rest, assemble it, or abort it. After
//! `complete`, finalize works exactly as for a single POST (the object is at the key).

use chrono::{DateTime, Utc};
use entity::multipart_upload;
use entity::prelude::*;
use entity::upload::{self, UploadStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};

use super::part_plan::{PartPlan, Sorted};
use super::prepare::{check, new_ids};
use super::{PrepareInput, cancel, find_visible};
use crate::access;
use crate::auth::{Identity, Permission};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::{StorageError, StoredPart};

/// The arguments of `prepareMultipartUpload`.
#[derive(Debug, Clone)]
pub struct MultipartInput {
    pub tenant_id: String,
    pub assign_action_id: String,
    pub row_count: i32,
    pub device_type: i32,
    pub workflow_id: Option<String>,
    pub target_workspace_id: Option<String>,
    pub file_size: i64,
    pub part_size: Option<i64>,
}

/// Where to PUT one part, until when.
#[derive(Debug, Clone)]
pub struct PartUrl {
    pub part_number: u32,
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

pub struct MultipartPrepared {
    pub upload_id: String,
    pub part_size: u64,
    pub parts: Vec<PartUrl>,
}

/// The parts the store holds and URLs for the ones it does not.
pub struct PartsState {
    pub upload_id: String,
    pub part_size: u64,
    pub completed: Vec<StoredPart>,
    pub missing: Vec<PartUrl>,
}

/// An upload and its multipart state, both visible to the caller.
struct Found {
    upload: upload::Model,
    multipart: multipart_upload::Model,
}

impl Found {
    fn plan(&self) -> PartPlan {
        PartPlan {
            file_size: self.multipart.file_size as u64,
            part_size: self.multipart.part_size as u64,
        }
    }
}

#[tracing::instrument(skip_all, fields(tenant_id = %input.tenant_id, action_id = %input.assign_action_id, upload_id = tracing::field::Empty))]
pub async fn prepare_multipart(
    state: &AppState,
    identity: &Identity,
    input: MultipartInput,
) -> Result<MultipartPrepared, ApiError> {
    let prepare = PrepareInput {
        tenant_id: input.tenant_id,
        assign_action_id: input.assign_action_id,
        row_count: input.row_count,
        device_type: input.device_type,
        workflow_id: input.workflow_id,
        brand_id: None,
        provision_type: None,
        target_workspace_id: input.target_workspace_id,
    };
    let checked = check(state, identity, &prepare).await?;
    let settings = &state.settings;
    let plan = PartPlan::new(
        input.file_size,
        input.part_size,
        settings.multipart_min_part_bytes,
        settings.max_upload_bytes,
    )?;
    let now = Utc::now();
    let (public_id, object_key) = new_ids(now);
    // The store's upload first: a row without one could never receive its file. One left
    // behind by a failed insert below is dropped by the bucket's lifecycle rule.
    let store_upload_id = state.storage.create_multipart(&object_key).await?;
    let expires_at = now + chrono::Duration::seconds(settings.multipart_ttl_secs as i64);

    let txn = state.db.begin().await?;
    let upload = checked
        .new_upload(identity, prepare, public_id, object_key, now)
        .insert(&txn)
        .await?;
    let multipart = multipart_upload::ActiveModel {
        upload_id: Set(upload.id),
        store_upload_id: Set(store_upload_id),
        part_size: Set(plan.part_size as i64),
        file_size: Set(plan.file_size as i64),
        expires_at: Set(expires_at),
        completed_at: Set(None),
        created_at: Set(now),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    tracing::info!(
        rows = upload.declared_row_count,
        parts = plan.part_count(),
        "multipart upload prepared"
    );
    let found = Found { upload, multipart };
    let parts = sign_parts(state, &found, 1..=plan.part_count(), now).await?;
    Ok(MultipartPrepared {
        upload_id: found.upload.public_id,
        part_size: plan.part_size,
        parts,
    })
}

/// What the store holds of the upload, and fresh URLs for every part it lacks.
#[tracing::instrument(skip_all, fields(tenant_id = tenant_id, upload_id = public_id))]
pub async fn parts(
    state: &AppState,
    identity: &Identity,
    tenant_id: &str,
    public_id: &str,
) -> Result<PartsState, ApiError> {
    let found = find(state, identity, tenant_id, public_id).await?;
    let now = Utc::now();
    resumable(&found, now)?;
    let Some(Sorted { complete, missing }) = stored_parts(state, &found).await? else {
        return Err(gone(state, &found).await?);
    };
    let missing = sign_parts(state, &found, missing, now).await?;
    Ok(PartsState {
        upload_id: found.upload.public_id,
        part_size: found.multipart.part_size as u64,
        completed: complete,
        missing,
    })
}

/// Assembles the object from the parts the store holds; the upload stays PREPARED for
/// finalize. Idempotent: once assembled, a repeat answers the upload's status.
#[tracing::instrument(skip_all, fields(tenant_id = tenant_id, upload_id = public_id))]
pub async fn complete(
    state: &AppState,
    identity: &Identity,
    tenant_id: &str,
    public_id: &str,
) -> Result<UploadStatus, ApiError> {
    let found = find(state, identity, tenant_id, public_id).await?;
    if found.multipart.completed_at.is_some() {
        return Ok(found.upload.status);
    }
    let now = Utc::now();
    resumable(&found, now)?;
    // `None`: the store no longer has the multipart upload (a concurrent complete took it).
    let assembled_here = match stored_parts(state, &found).await? {
        Some(Sorted { complete, missing }) => {
            if !missing.is_empty() {
                return Err(ApiError::UploadPartsMissing { parts: missing });
            }
            match state
                .storage
                .complete_multipart(
                    &found.upload.object_key,
                    &found.multipart.store_upload_id,
                    &complete,
                )
                .await
            {
                Ok(()) => Some(complete.len()),
                Err(StorageError::NoSuchUpload(_)) => None,
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    // Whoever assembled it, the object itself must have the declared size: the parts' sum
    // alone is never trusted.
    if !assembled(state, &found).await? {
        return Err(match assembled_here {
            Some(_) => ApiError::internal(anyhow::anyhow!(
                "the assembled object of upload {} does not have its declared size",
                found.upload.public_id
            )),
            None => gone(state, &found).await?,
        });
    }
    MultipartUpload::update_many()
        .col_expr(multipart_upload::Column::CompletedAt, Expr::value(now))
        .filter(multipart_upload::Column::UploadId.eq(found.upload.id))
        .filter(multipart_upload::Column::CompletedAt.is_null())
        .exec(&state.db)
        .await?;
    if let Some(parts) = assembled_here {
        tracing::info!(parts, "multipart upload assembled");
    }
    let current = Upload::find_by_id(found.upload.id)
        .one(&state.db)
        .await?
        .ok_or(ApiError::UploadNotFound)?;
    Ok(current.status)
}

/// Drops the parts in the store and cancels the upload (as `cancelBatchUpload`, whose
/// answers it shares: CANCELLED, again on a repeat; `UPLOAD_ALREADY_FINISHED` when the
/// upload had finished otherwise).
#[tracing::instrument(skip_all, fields(tenant_id = tenant_id, upload_id = public_id))]
pub async fn abort(
    state: &AppState,
    identity: &Identity,
    tenant_id: &str,
    public_id: &str,
) -> Result<UploadStatus, ApiError> {
    let found = find(state, identity, tenant_id, public_id).await?;
    // The store first: should it fail, the upload is not yet cancelled and a retry does both.
    state
        .storage
        .abort_multipart(&found.upload.object_key, &found.multipart.store_upload_id)
        .await?;
    Ok(cancel(state, identity, tenant_id, public_id).await?.status)
}

async fn find(
    state: &AppState,
    identity: &Identity,
    tenant_id: &str,
    public_id: &str,
) -> Result<Found, ApiError> {
    let scope = access::authorize(&state.db, identity, tenant_id, Permission::Update).await?;
    let upload = find_visible(&state.db, &scope, public_id)
        .await?
        .ok_or(ApiError::UploadNotFound)?;
    let multipart = MultipartUpload::find_by_id(upload.id)
        .one(&state.db)
        .await?
        .ok_or(ApiError::UploadNotMultipart)?;
    Ok(Found { upload, multipart })
}

/// Parts may still be uploaded: not assembled, not finished, not expired.
fn resumable(found: &Found, now: DateTime<Utc>) -> Result<(), ApiError> {
    if found.multipart.completed_at.is_some() {
        Err(ApiError::MultipartAlreadyCompleted)
    } else if found.upload.status != UploadStatus::Prepared {
        Err(ApiError::UploadAlreadyFinished)
    } else if found.multipart.expires_at <= now {
        Err(ApiError::UploadExpired)
    } else {
        Ok(())
    }
}

/// The store's parts sorted against the plan; `None` when the store no longer has the
/// multipart upload (completed or aborted).
async fn stored_parts(state: &AppState, found: &Found) -> Result<Option<Sorted>, ApiError> {
    match state
        .storage
        .list_parts(&found.upload.object_key, &found.multipart.store_upload_id)
        .await
    {
        Ok(stored) => Ok(Some(found.plan().sort(&stored))),
        Err(StorageError::NoSuchUpload(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Why the store no longer has the multipart upload, as the upload's state now says.
async fn gone(state: &AppState, found: &Found) -> Result<ApiError, ApiError> {
    let now = Found {
        upload: Upload::find_by_id(found.upload.id)
            .one(&state.db)
            .await?
            .ok_or(ApiError::UploadNotFound)?,
        multipart: MultipartUpload::find_by_id(found.upload.id)
            .one(&state.db)
            .await?
            .ok_or(ApiError::UploadNotMultipart)?,
    };
    Ok(match resumable(&now, Utc::now()) {
        Err(e) => e,
        // A concurrent complete assembled it and has not recorded it yet.
        Ok(()) if assembled(state, &now).await? => ApiError::MultipartAlreadyCompleted,
        // Aborted in the store by hand while the database says it may go on.
        Ok(()) => ApiError::internal(anyhow::anyhow!(
            "the store has no multipart upload {} for upload {}",
            now.multipart.store_upload_id,
            now.upload.public_id
        )),
    })
}

/// Whether the object is in the store with the declared size.
async fn assembled(state: &AppState, found: &Found) -> Result<bool, ApiError> {
    let size = state.storage.head(&found.upload.object_key).await?;
    Ok(size == Some(found.multipart.file_size as u64))
}

/// Part URLs that live the configured URL lifetime, never past the upload's expiry.
async fn sign_parts(
    state: &AppState,
    found: &Found,
    numbers: impl IntoIterator<Item = u32>,
    now: DateTime<Utc>,
) -> Result<Vec<PartUrl>, ApiError> {
    let ttl = chrono::Duration::seconds(state.settings.upload_url_ttl_secs as i64);
    let expires_at = (now + ttl).min(found.multipart.expires_at);
    let plan = found.plan();
    let mut urls = Vec::new();
    for part_number in numbers {
        let signed = state
            .storage
            .presign_part(
                &found.upload.object_key,
                &found.multipart.store_upload_id,
                part_number,
                plan.part_len(part_number),
                expires_at,
            )
            .await?;
        urls.push(PartUrl {
            part_number,
            url: signed.url,
            expires_at: signed.expires_at,
        });
    }
    Ok(urls)
}
