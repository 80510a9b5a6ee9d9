//! `prepareBatchUpload`: every upload-level check, then a PREPARED upload and a signed POST.

use chrono::Utc;
use entity::prelude::CarrierAccount;
use entity::upload::{self, UploadStatus};
use sea_orm::{ActiveModelTrait, EntityTrait, Set};

use super::{action_in_scope, check_action_workflow, sign_upload, workflow_in_scope};
use crate::access::{self, TenantScope};
use crate::auth::{Identity, Permission};
use crate::domain::DeviceType;
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::{PresignedPost, upload_key};

/// The arguments of `prepareBatchUpload`, named as in the AppSync contract.
#[derive(Debug, Clone)]
pub struct PrepareInput {
    pub tenant_id: String,
    pub assign_action_id: String,
    pub row_count: i32,
    pub device_type: i32,
    pub workflow_id: Option<String>,
    pub brand_id: Option<i32>,
    pub provision_type: Option<String>,
    pub target_workspace_id: Option<String>,
}

pub struct Prepared {
    pub upload: upload::Model,
    pub post: PresignedPost,
}

#[tracing::instrument(skip_all, fields(tenant_id = %input.tenant_id, action_id = %input.assign_action_id, upload_id = tracing::field::Empty))]
pub async fn prepare(
    state: &AppState,
    identity: &Identity,
    input: PrepareInput,
) -> Result<Prepared, ApiError> {
    let checked = check(state, identity, &input).await?;
    let now = Utc::now();
    let (public_id, object_key) = new_ids(now);
    // Sign first: an upload row without a way to upload its file would be useless.
    let post = sign_upload(state, &object_key, now).await?;
    let upload = checked
        .new_upload(identity, input, public_id, object_key, now)
        .insert(&state.db)
        .await?;
    tracing::info!(rows = upload.declared_row_count, "upload prepared");
    Ok(Prepared { upload, post })
}

/// A new upload's public id and object key, the id recorded on the current span.
pub(super) fn new_ids(now: chrono::DateTime<Utc>) -> (String, String) {
    let public_id = uuid::Uuid::now_v7().to_string();
    tracing::Span::current().record("upload_id", public_id.as_str());
    let object_key = upload_key(&public_id, now);
    (public_id, object_key)
}

/// What passed the upload-level checks of prepare (single POST or multipart alike).
pub(super) struct Checked {
    scope: TenantScope,
    target: String,
    device_type: DeviceType,
    action: entity::action::Model,
    workflow: Option<entity::workflow::Model>,
}

/// Every upload-level check of SPEC §3: permission, target workspace, device type, row
/// count, action and workflow.
pub(super) async fn check(
    state: &AppState,
    identity: &Identity,
    input: &PrepareInput,
) -> Result<Checked, ApiError> {
    let db = &state.db;
    let scope = access::authorize(db, identity, &input.tenant_id, Permission::Update).await?;
    let target = target_workspace(db, &scope, input.target_workspace_id.as_deref()).await?;
    let device_type = DeviceType::from_code(input.device_type).ok_or(ApiError::InvalidDeviceType)?;
    let max_rows = state.settings.max_rows;
    if input.row_count < 1 || input.row_count as u32 > max_rows {
        return Err(ApiError::InvalidRowCount { max: max_rows });
    }
    let action = action_in_scope(db, &scope, &input.assign_action_id).await?;
    let workflow = match input.workflow_id.as_deref() {
        Some(id) => Some(workflow_in_scope(db, &scope, id).await?),
        None => None,
    };
    check_action_workflow(&action, workflow.as_ref())?;
    if let Some(account) = &action.carrier_account_id {
        // The account may have been deleted since the action was made.
        CarrierAccount::find_by_id((action.root_tenant_id.clone(), account.clone()))
            .one(db)
            .await?
            .ok_or(ApiError::CarrierAccountNotFound)?;
    }
    Ok(Checked {
        scope,
        target,
        device_type,
        action,
        workflow,
    })
}

impl Checked {
    /// The PREPARED upload row, not yet inserted.
    pub(super) fn new_upload(
        self,
        identity: &Identity,
        input: PrepareInput,
        public_id: String,
        object_key: String,
        now: chrono::DateTime<Utc>,
    ) -> upload::ActiveModel {
        let Self {
            scope,
            target,
            device_type,
            action,
            workflow,
        } = self;
        upload::ActiveModel {
            public_id: Set(public_id),
            tenant_id: Set(scope.tenant_id),
            target_tenant_id: Set(target),
            created_by: Set(identity.user.clone()),
            device_type: Set(device_type.code()),
            action_id: Set(action.id),
            action_kind: Set(action.kind),
            action_service_type: Set(action.target_service_type),
            action_carrier_status: Set(action.target_carrier_status),
            carrier_root_tenant_id: Set(action
                .carrier_account_id
                .is_some()
                .then(|| action.root_tenant_id.clone())),
            carrier_account_id: Set(action.carrier_account_id),
            workflow_service_type: Set(workflow.as_ref().map(|w| w.service_type)),
            workflow_id: Set(workflow.map(|w| w.id)),
            brand_id: Set(input.brand_id),
            provision_type: Set(input.provision_type),
            declared_row_count: Set(input.row_count),
            object_key: Set(object_key),
            status: Set(UploadStatus::Prepared),
            processed_rows: Set(0),
            succeeded: Set(0),
            failed: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
    }
}

/// `targetWorkspaceId` must be the tenant itself or one of its descendants.
async fn target_workspace(
    db: &impl sea_orm::ConnectionTrait,
    scope: &TenantScope,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let Some(target) = requested.filter(|t| *t != scope.tenant_id) else {
        return Ok(scope.tenant_id.clone());
    };
    let ancestry = access::ancestry(db, target).await?;
    if crate::domain::tenancy::is_within(&ancestry, &scope.tenant_id) {
        Ok(target.to_owned())
    } else {
        Err(ApiError::InvalidTenant)
    }
}
