//! `finalizeBatchUpload`: flip PREPARED → QUEUED with a compare-and-set and write the dispatch
//! job in the same transaction. Returns in milliseconds whatever the file size.

use chrono::Utc;
use entity::prelude::*;
use entity::upload::{self, UploadStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

use super::{action_in_scope, check_action_workflow, find_visible, workflow_in_scope};
use crate::access;
use crate::auth::{Identity, Permission};
use crate::error::ApiError;
use crate::queue::{self, DISPATCH_QUEUE, JobPayload};
use crate::state::AppState;

/// The arguments of `finalizeBatchUpload`, named as in the AppSync contract.
#[derive(Debug, Clone, Default)]
pub struct FinalizeInput {
    pub tenant_id: String,
    pub upload_id: String,
    pub workflow_id: Option<String>,
    pub sim_control_name: Option<String>,
    pub sim_control_id: Option<String>,
    pub billing_detail: Option<serde_json::Value>,
}

#[tracing::instrument(skip_all, fields(tenant_id = %input.tenant_id, upload_id = %input.upload_id))]
pub async fn finalize(
    state: &AppState,
    identity: &Identity,
    input: FinalizeInput,
) -> Result<UploadStatus, ApiError> {
    let db = &state.db;
    let scope = access::authorize(db, identity, &input.tenant_id, Permission::Update).await?;
    let upload = find_visible(db, &scope, &input.upload_id)
        .await?
        .ok_or(ApiError::UploadNotFound)?;
    // Idempotent: a repeat (or a loser of a concurrent race) answers with the current status.
    if upload.status != UploadStatus::Prepared {
        return Ok(upload.status);
    }

    // The old frontend may name the workflow only now; it must pass the same checks as at
    // prepare, against the upload's action.
    let (workflow_id, workflow_service_type) = match input.workflow_id.as_deref() {
        Some(id) if upload.workflow_id.as_deref() != Some(id) => {
            let action = action_in_scope(db, &scope, &upload.action_id).await?;
            let workflow = workflow_in_scope(db, &scope, id).await?;
            check_action_workflow(&action, Some(&workflow))?;
            (Some(workflow.id), Some(workflow.service_type))
        }
        _ => (upload.workflow_id.clone(), upload.workflow_service_type),
    };

    if state.storage.head(&upload.object_key).await?.is_none() {
        return Err(ApiError::UploadNotUploaded);
    }

    let billing = input.billing_detail.as_ref().map(serde_json::Value::to_string);
    let now = Utc::now();
    let txn = db.begin().await?;
    // The update is the transaction's first statement, so SQLite takes its write lock at
    // once and concurrent finalizes queue on it instead of failing to upgrade a read lock.
    let flipped = Upload::update_many()
        .col_expr(upload::Column::Status, Expr::value(UploadStatus::Queued))
        .col_expr(upload::Column::WorkflowId, Expr::value(workflow_id))
        .col_expr(
            upload::Column::WorkflowServiceType,
            Expr::value(workflow_service_type),
        )
        .col_expr(
            upload::Column::SimControlName,
            Expr::value(input.sim_control_name),
        )
        .col_expr(upload::Column::SimControlId, Expr::value(input.sim_control_id))
        .col_expr(upload::Column::BillingDetail, Expr::value(billing))
        .col_expr(upload::Column::QueuedAt, Expr::value(now))
        .col_expr(upload::Column::UpdatedAt, Expr::value(now))
        .filter(upload::Column::Id.eq(upload.id))
        .filter(upload::Column::Status.eq(UploadStatus::Prepared))
        .exec(&txn)
        .await?;
    if flipped.rows_affected == 1 {
        queue::enqueue(
            &txn,
            DISPATCH_QUEUE,
            &JobPayload::DispatchUpload { upload_id: upload.id },
        )
        .await?;
        txn.commit().await?;
        tracing::info!("upload queued");
        // Subscribers of a PREPARED upload see it move without waiting for the dispatcher.
        state.progress.changed(upload.id).await;
        return Ok(UploadStatus::Queued);
    }
    txn.rollback().await?;
    let current = Upload::find_by_id(upload.id)
        .one(db)
        .await?
        .ok_or(ApiError::UploadNotFound)?;
    Ok(current.status)
}
