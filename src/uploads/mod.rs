//! The upload lifecycle as the API drives it: prepare (single POST or multipart), finalize,
//! read and list, results, error report and retry. Checks and state changes live here; the GraphQL layer only translates.

mod cancel;
pub mod failed_rows;
mod finalize;
pub mod multipart;
mod part_plan;
mod prepare;
mod read;
pub mod report;
pub mod results;
mod retry;

pub use cancel::cancel;
pub use finalize::{FinalizeInput, finalize};
pub use prepare::{PrepareInput, Prepared, prepare};
pub use read::{UploadPage, find_visible, list};
pub use report::{Built, ReportBuilder, error_report};
pub use retry::retry_failed_rows;

use entity::prelude::*;
use entity::{action, workflow};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::access::TenantScope;
use crate::error::ApiError;

/// The POST policy a client uploads `object_key` with: the configured size limit and lifetime.
async fn sign_upload(
    state: &crate::state::AppState,
    object_key: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<crate::storage::PresignedPost, ApiError> {
    let expires_at = now + chrono::Duration::seconds(state.settings.upload_url_ttl_secs as i64);
    Ok(state
        .storage
        .presign_post(object_key, state.settings.max_upload_bytes, expires_at)
        .await?)
}

/// An action usable in `scope` (its own or inherited from an ancestor).
async fn action_in_scope(
    db: &impl ConnectionTrait,
    scope: &TenantScope,
    id: &str,
) -> Result<action::Model, ApiError> {
    // Ids are unique per customer; the scope's ancestry lies within one customer's tree.
    Action::find()
        .filter(action::Column::Id.eq(id))
        .filter(action::Column::TenantId.is_in(scope.ancestry.iter().cloned()))
        .one(db)
        .await?
        .filter(|a| scope.inherits_from(&a.tenant_id))
        .ok_or(ApiError::ActionNotFound)
}

/// A workflow usable in `scope`.
async fn workflow_in_scope(
    db: &impl ConnectionTrait,
    scope: &TenantScope,
    id: &str,
) -> Result<workflow::Model, ApiError> {
    Workflow::find()
        .filter(workflow::Column::Id.eq(id))
        .filter(workflow::Column::TenantId.is_in(scope.ancestry.iter().cloned()))
        .one(db)
        .await?
        .filter(|w| scope.inherits_from(&w.tenant_id))
        .ok_or(ApiError::WorkflowNotFound)
}

/// Rows of a carrier action waiting for the carrier. An ended upload (cancelled, or failed
/// by refused credentials) leaves its remaining rows without results: none waits any more.
pub fn awaiting_carrier(upload: &entity::upload::Model) -> i32 {
    if upload.status.is_terminal() {
        0
    } else {
        upload.carrier_pending.max(0)
    }
}

/// The upload-level rules of SPEC §3 about an action and its workflow, checked once at
/// prepare (and again when finalize swaps the workflow), never per row.
fn check_action_workflow(action: &action::Model, workflow: Option<&workflow::Model>) -> Result<(), ApiError> {
    use entity::action::ActionKind;
    match (action.kind, workflow) {
        (ActionKind::AssignWorkflow, None) => Err(ApiError::WorkflowRequired),
        // Compare with the action's *target* service type: the devices' old one (INVENTORY)
        // is exactly what REGISTER changes, and comparing against it failed every row of
        // the old system's INVENTORY → Register Prepaid uploads.
        (ActionKind::Register, Some(wf)) => match action.target_service_type {
            Some(target) if target != wf.service_type => Err(ApiError::WorkflowServiceTypeMismatch {
                workflow: wf.service_type,
                action: target,
            }),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use entity::action::ActionKind;

    fn action(kind: ActionKind, target: Option<i32>) -> action::Model {
        action::Model {
            root_tenant_id: "t".into(),
            id: "a".into(),
            tenant_id: "t".into(),
            name: "a".into(),
            kind,
            target_service_type: target,
            target_carrier_status: None,
            carrier_account_id: None,
            created_at: Utc::now(),
        }
    }

    fn workflow(service_type: i32) -> workflow::Model {
        workflow::Model {
            root_tenant_id: "t".into(),
            id: "w".into(),
            tenant_id: "t".into(),
            name: "w".into(),
            service_type,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn register_compares_the_workflow_with_the_actions_target_service_type() {
        assert!(check_action_workflow(&action(ActionKind::Register, Some(2)), Some(&workflow(2))).is_ok());
        assert!(matches!(
            check_action_workflow(&action(ActionKind::Register, Some(2)), Some(&workflow(6))),
            Err(ApiError::WorkflowServiceTypeMismatch {
                workflow: 6,
                action: 2
            })
        ));
        assert!(check_action_workflow(&action(ActionKind::Register, Some(2)), None).is_ok());
    }

    #[test]
    fn assign_workflow_needs_a_workflow() {
        assert!(matches!(
            check_action_workflow(&action(ActionKind::AssignWorkflow, None), None),
            Err(ApiError::WorkflowRequired)
        ));
        assert!(check_action_workflow(&action(ActionKind::AssignWorkflow, None), Some(&workflow(6))).is_ok());
    }
}
