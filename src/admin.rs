//! Managing the catalog an upload names: workspaces (tenants), actions and workflows
//! (SPEC §7: `ADMIN` permission, inside the administrator's own tenant tree). The checks of
//! the inputs are pure functions; the writes are single statements.

use std::collections::HashMap;

use chrono::Utc;
use entity::action::{self, ActionKind};
use entity::carrier_status::CarrierStatus;
use entity::prelude::*;
use entity::upload::{self, UploadStatus};
use entity::{device, tenant, workflow};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
};

use crate::access;
use crate::auth::{Identity, Permission};
use crate::error::ApiError;

const MAX_NAME: usize = 200;
const MAX_ID: usize = 64;

/// A name as stored: trimmed, 1–200 characters.
pub fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(ApiError::BadUserInput(format!(
            "name must be 1 to {MAX_NAME} characters"
        )));
    }
    Ok(name.to_owned())
}

/// A tenant or action id: 1–64 of `A–Z a–z 0–9 - _`, so it is safe in URLs, logs and CSVs.
pub fn check_id(id: &str) -> Result<String, ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| id.to_owned()).ok_or_else(|| {
        ApiError::BadUserInput(format!("id must be 1 to {MAX_ID} letters, digits, '-' or '_'"))
    })
}

/// A workflow id: 24 hex digits like the old system's MongoDB ids, stored lower-case.
pub fn check_workflow_id(id: &str) -> Result<String, ApiError> {
    (id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| id.to_ascii_lowercase())
        .ok_or_else(|| ApiError::BadUserInput("a workflow id is 24 hexadecimal digits".into()))
}

/// A new workflow id in the MongoDB ObjectId layout: seconds since the epoch, then random.
pub fn new_workflow_id() -> String {
    let seconds = Utc::now().timestamp().clamp(0, i64::from(u32::MAX)) as u32;
    let random: [u8; 8] = rand::random();
    format!("{seconds:08x}{}", hex::encode(random))
}

pub fn check_service_type(service_type: i32) -> Result<i32, ApiError> {
    (1..=i32::from(i16::MAX))
        .contains(&service_type)
        .then_some(service_type)
        .ok_or_else(|| ApiError::BadUserInput("a service type is a positive number".into()))
}

/// REGISTER gives devices a service type, so it needs one; no other kind has one.
pub fn check_action_shape(
    kind: ActionKind,
    target_service_type: Option<i32>,
) -> Result<Option<i32>, ApiError> {
    match (kind, target_service_type) {
        (ActionKind::Register, Some(st)) => check_service_type(st).map(Some),
        (ActionKind::Register, None) => Err(ApiError::BadUserInput(
            "a REGISTER action needs a targetServiceType".into(),
        )),
        (_, Some(_)) => Err(ApiError::BadUserInput(
            "only a REGISTER action has a targetServiceType".into(),
        )),
        (_, None) => Ok(None),
    }
}

/// A CARRIER_STATUS action moves lines to a status the matrix can reach (not NEW) through an
/// account; no other kind has either.
pub fn check_carrier_shape(
    kind: ActionKind,
    target: Option<CarrierStatus>,
    account: Option<&str>,
) -> Result<Option<(CarrierStatus, String)>, ApiError> {
    match (kind, target, account) {
        (ActionKind::CarrierStatus, Some(CarrierStatus::New), _) => Err(ApiError::BadUserInput(
            "a line cannot be moved back to NEW".into(),
        )),
        (ActionKind::CarrierStatus, Some(target), Some(account)) => Ok(Some((target, check_id(account)?))),
        (ActionKind::CarrierStatus, _, _) => Err(ApiError::BadUserInput(
            "a CARRIER_STATUS action needs a targetCarrierStatus and a carrierAccountId".into(),
        )),
        (_, None, None) => Ok(None),
        _ => Err(ApiError::BadUserInput(
            "only a CARRIER_STATUS action has a targetCarrierStatus and a carrierAccountId".into(),
        )),
    }
}

/// Inserts `model` unless its key is taken; a taken key → `ALREADY_EXISTS`. Catalog keys
/// include the customer's root tenant, so the answer only ever speaks of the caller's own ids.
pub(crate) async fn insert_new<A, C>(
    db: &impl ConnectionTrait,
    model: A,
    key_columns: impl IntoIterator<Item = C>,
) -> Result<(), ApiError>
where
    A: ActiveModelTrait + Send,
    <A::Entity as EntityTrait>::Model: sea_orm::IntoActiveModel<A>,
    C: sea_orm::sea_query::IntoIden,
{
    let inserted = <A::Entity as EntityTrait>::insert(model)
        .on_conflict(OnConflict::columns(key_columns).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    if inserted == 0 {
        return Err(ApiError::AlreadyExists);
    }
    Ok(())
}

/// A workspace under `parent_id` (which must be in the administrator's tree).
pub async fn create_tenant(
    db: &impl ConnectionTrait,
    identity: &Identity,
    parent_id: &str,
    id: Option<&str>,
    name: &str,
) -> Result<tenant::Model, ApiError> {
    access::authorize(db, identity, parent_id, Permission::Admin).await?;
    let id = match id {
        Some(id) => check_id(id)?,
        None => uuid::Uuid::now_v7().to_string(),
    };
    let model = tenant::Model {
        id,
        name: check_name(name)?,
        parent_id: Some(parent_id.to_owned()),
        created_at: Utc::now(),
    };
    insert_new(db, tenant::ActiveModel::from(model.clone()), [tenant::Column::Id]).await?;
    Ok(model)
}

pub async fn rename_tenant(
    db: &impl ConnectionTrait,
    identity: &Identity,
    tenant_id: &str,
    name: &str,
) -> Result<tenant::Model, ApiError> {
    access::authorize(db, identity, tenant_id, Permission::Admin).await?;
    let mut model: tenant::ActiveModel = Tenant::find_by_id(tenant_id)
        .one(db)
        .await?
        .ok_or(ApiError::Forbidden)?
        .into();
    model.name = Set(check_name(name)?);
    Ok(model.update(db).await?)
}

/// `tenant_id` and its workspaces, parents before children.
pub async fn tenants(
    db: &impl ConnectionTrait,
    identity: &Identity,
    tenant_id: &str,
) -> Result<Vec<tenant::Model>, ApiError> {
    access::authorize(db, identity, tenant_id, Permission::Read).await?;
    let ids = access::subtree(db, tenant_id).await?;
    let mut all = Tenant::find()
        .filter(tenant::Column::Id.is_in(ids))
        .order_by_asc(tenant::Column::Id)
        .all(db)
        .await?;
    // Parents first: by depth below `tenant_id`, then by id.
    let parents: HashMap<String, Option<String>> =
        all.iter().map(|t| (t.id.clone(), t.parent_id.clone())).collect();
    all.sort_by_cached_key(|t| {
        (
            crate::domain::tenancy::ancestry(&parents, &t.id).len(),
            t.id.clone(),
        )
    });
    Ok(all)
}

pub struct NewAction<'a> {
    pub tenant_id: &'a str,
    pub id: Option<&'a str>,
    pub name: &'a str,
    pub kind: ActionKind,
    pub target_service_type: Option<i32>,
    pub target_carrier_status: Option<CarrierStatus>,
    pub carrier_account_id: Option<&'a str>,
}

pub async fn create_action(
    db: &impl ConnectionTrait,
    identity: &Identity,
    new: NewAction<'_>,
) -> Result<action::Model, ApiError> {
    let scope = access::authorize(db, identity, new.tenant_id, Permission::Admin).await?;
    let root_tenant_id = root_of(&scope);
    let carrier = check_carrier_shape(new.kind, new.target_carrier_status, new.carrier_account_id)?;
    if let Some((_, account)) = &carrier {
        // Only an account the action's tenant has (its own or inherited): another customer's
        // id is simply not found.
        crate::carrier::accounts::in_scope(db, &scope, account).await?;
    }
    let (target_carrier_status, carrier_account_id) = carrier.unzip();
    let model = action::Model {
        root_tenant_id,
        id: match new.id {
            Some(id) => check_id(id)?,
            None => uuid::Uuid::now_v7().to_string(),
        },
        tenant_id: new.tenant_id.to_owned(),
        name: check_name(new.name)?,
        kind: new.kind,
        target_service_type: check_action_shape(new.kind, new.target_service_type)?,
        target_carrier_status,
        carrier_account_id,
        created_at: Utc::now(),
    };
    insert_new(
        db,
        action::ActiveModel::from(model.clone()),
        [action::Column::RootTenantId, action::Column::Id],
    )
    .await?;
    Ok(model)
}

/// The action `id` if the administrator's tree owns it; anything else is not found.
async fn owned_action(
    db: &impl ConnectionTrait,
    identity: &Identity,
    id: &str,
) -> Result<action::Model, ApiError> {
    let Some(root) = tree_root(db, identity).await? else {
        return Err(ApiError::ActionNotFound);
    };
    let action = Action::find_by_id((root, id.to_owned()))
        .one(db)
        .await?
        .ok_or(ApiError::ActionNotFound)?;
    match access::authorize(db, identity, &action.tenant_id, Permission::Admin).await {
        Ok(_) => Ok(action),
        Err(ApiError::Forbidden) if !identity.has(Permission::Admin) => Err(ApiError::Forbidden),
        Err(_) => Err(ApiError::ActionNotFound),
    }
}

pub async fn update_action(
    db: &impl ConnectionTrait,
    identity: &Identity,
    id: &str,
    name: Option<&str>,
    target_service_type: Option<i32>,
) -> Result<action::Model, ApiError> {
    let action = owned_action(db, identity, id).await?;
    let kind = action.kind;
    let mut model: action::ActiveModel = action.into();
    if let Some(name) = name {
        model.name = Set(check_name(name)?);
    }
    if target_service_type.is_some() {
        model.target_service_type = Set(check_action_shape(kind, target_service_type)?);
    }
    Ok(model.update(db).await?)
}

/// Deletes an action no unfinished upload names (those were checked against it).
pub async fn delete_action(db: &impl ConnectionTrait, identity: &Identity, id: &str) -> Result<(), ApiError> {
    let action = owned_action(db, identity, id).await?;
    let in_use = Upload::find()
        .filter(upload::Column::ActionId.eq(action.id.as_str()))
        .filter(upload::Column::TenantId.is_in(access::subtree(db, &action.root_tenant_id).await?))
        .filter(upload::Column::Status.is_in(UNFINISHED))
        .count(db)
        .await?;
    if in_use > 0 {
        return Err(ApiError::InUse(format!(
            "{in_use} unfinished upload(s) use this action"
        )));
    }
    Action::delete_by_id((action.root_tenant_id, action.id))
        .exec(db)
        .await?;
    Ok(())
}

/// Actions usable in `tenant_id`: its own and those inherited from its ancestors.
pub async fn actions(
    db: &impl ConnectionTrait,
    identity: &Identity,
    tenant_id: &str,
) -> Result<Vec<action::Model>, ApiError> {
    let scope = access::authorize(db, identity, tenant_id, Permission::Read).await?;
    Ok(Action::find()
        .filter(action::Column::TenantId.is_in(scope.ancestry))
        .order_by_asc(action::Column::Id)
        .all(db)
        .await?)
}

pub async fn create_workflow(
    db: &impl ConnectionTrait,
    identity: &Identity,
    tenant_id: &str,
    id: Option<&str>,
    name: &str,
    service_type: i32,
) -> Result<workflow::Model, ApiError> {
    let scope = access::authorize(db, identity, tenant_id, Permission::Admin).await?;
    let model = workflow::Model {
        root_tenant_id: root_of(&scope),
        id: match id {
            Some(id) => check_workflow_id(id)?,
            None => new_workflow_id(),
        },
        tenant_id: tenant_id.to_owned(),
        name: check_name(name)?,
        service_type: check_service_type(service_type)?,
        created_at: Utc::now(),
    };
    insert_new(
        db,
        workflow::ActiveModel::from(model.clone()),
        [workflow::Column::RootTenantId, workflow::Column::Id],
    )
    .await?;
    Ok(model)
}

async fn owned_workflow(
    db: &impl ConnectionTrait,
    identity: &Identity,
    id: &str,
) -> Result<workflow::Model, ApiError> {
    let Some(root) = tree_root(db, identity).await? else {
        return Err(ApiError::WorkflowNotFound);
    };
    let workflow = Workflow::find_by_id((root, id.to_owned()))
        .one(db)
        .await?
        .ok_or(ApiError::WorkflowNotFound)?;
    match access::authorize(db, identity, &workflow.tenant_id, Permission::Admin).await {
        Ok(_) => Ok(workflow),
        Err(ApiError::Forbidden) if !identity.has(Permission::Admin) => Err(ApiError::Forbidden),
        Err(_) => Err(ApiError::WorkflowNotFound),
    }
}

/// Renames a workflow. Its service type stays: devices already in it were checked against it.
pub async fn rename_workflow(
    db: &impl ConnectionTrait,
    identity: &Identity,
    id: &str,
    name: &str,
) -> Result<workflow::Model, ApiError> {
    let mut model: workflow::ActiveModel = owned_workflow(db, identity, id).await?.into();
    model.name = Set(check_name(name)?);
    Ok(model.update(db).await?)
}

/// Deletes a workflow no device is in and no unfinished upload names.
pub async fn delete_workflow(
    db: &impl ConnectionTrait,
    identity: &Identity,
    id: &str,
) -> Result<(), ApiError> {
    let workflow = owned_workflow(db, identity, id).await?;
    // Another customer may use the same workflow id for a workflow of its own.
    let customer = access::subtree(db, &workflow.root_tenant_id).await?;
    let devices = Device::find()
        .filter(device::Column::WorkflowId.eq(workflow.id.as_str()))
        .filter(device::Column::TenantId.is_in(customer.clone()))
        .count(db)
        .await?;
    if devices > 0 {
        return Err(ApiError::InUse(format!(
            "{devices} device(s) are in this workflow"
        )));
    }
    let uploads = Upload::find()
        .filter(upload::Column::WorkflowId.eq(workflow.id.as_str()))
        .filter(upload::Column::TenantId.is_in(customer))
        .filter(upload::Column::Status.is_in(UNFINISHED))
        .count(db)
        .await?;
    if uploads > 0 {
        return Err(ApiError::InUse(format!(
            "{uploads} unfinished upload(s) use this workflow"
        )));
    }
    Workflow::delete_by_id((workflow.root_tenant_id, workflow.id))
        .exec(db)
        .await?;
    Ok(())
}

/// Workflows usable in `tenant_id`: its own and those inherited from its ancestors.
pub async fn workflows(
    db: &impl ConnectionTrait,
    identity: &Identity,
    tenant_id: &str,
) -> Result<Vec<workflow::Model>, ApiError> {
    let scope = access::authorize(db, identity, tenant_id, Permission::Read).await?;
    Ok(Workflow::find()
        .filter(workflow::Column::TenantId.is_in(scope.ancestry))
        .order_by_asc(workflow::Column::Id)
        .all(db)
        .await?)
}

/// The root of the tree `scope` lies in: the customer its catalog entries belong to.
pub(crate) fn root_of(scope: &access::TenantScope) -> String {
    scope
        .ancestry
        .last()
        .cloned()
        .unwrap_or_else(|| scope.tenant_id.clone())
}

/// The root of the caller's tenant tree; `None` when the caller's tenant does not exist.
pub(crate) async fn tree_root(
    db: &impl ConnectionTrait,
    identity: &Identity,
) -> Result<Option<String>, ApiError> {
    Ok(access::ancestry(db, &identity.root_tenant).await?.pop())
}

const UNFINISHED: [UploadStatus; 3] = [
    UploadStatus::Prepared,
    UploadStatus::Queued,
    UploadStatus::Processing,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_service_types_are_checked() {
        assert_eq!(check_id("demo-west_2").unwrap(), "demo-west_2");
        for bad in ["", "a b", "ä", "x/y", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_name("  East  ").unwrap(), "East");
        assert!(check_name("   ").is_err());
        assert!(check_name(&"n".repeat(201)).is_err());
        assert_eq!(
            check_workflow_id("68A5AE7A4CB9E87B88B7D344").unwrap(),
            "68a5ae7a4cb9e87b88b7d344"
        );
        assert!(check_workflow_id("68a5ae7a4cb9e87b88b7d34").is_err());
        assert!(check_workflow_id("68a5ae7a4cb9e87b88b7d34g").is_err());
        assert!(check_service_type(0).is_err());
        assert!(check_service_type(2).is_ok());
    }

    #[test]
    fn generated_workflow_ids_are_valid_and_distinct() {
        let (a, b) = (new_workflow_id(), new_workflow_id());
        assert_eq!(check_workflow_id(&a).unwrap(), a);
        assert_ne!(a, b);
    }

    #[test]
    fn only_a_carrier_action_has_a_target_line_status_and_an_account() {
        assert_eq!(
            check_carrier_shape(
                ActionKind::CarrierStatus,
                Some(CarrierStatus::Active),
                Some("att")
            )
            .unwrap(),
            Some((CarrierStatus::Active, "att".to_owned()))
        );
        for (kind, target, account) in [
            (ActionKind::CarrierStatus, None, Some("att")),
            (ActionKind::CarrierStatus, Some(CarrierStatus::Active), None),
            (ActionKind::CarrierStatus, Some(CarrierStatus::New), Some("att")),
            (
                ActionKind::CarrierStatus,
                Some(CarrierStatus::Active),
                Some("a b"),
            ),
            (ActionKind::Register, Some(CarrierStatus::Active), None),
            (ActionKind::Deregister, None, Some("att")),
        ] {
            assert!(
                check_carrier_shape(kind, target, account).is_err(),
                "{kind:?} {target:?} {account:?}"
            );
        }
        assert_eq!(
            check_carrier_shape(ActionKind::ExitWorkflow, None, None).unwrap(),
            None
        );
    }

    #[test]
    fn only_register_has_a_target_service_type() {
        assert_eq!(
            check_action_shape(ActionKind::Register, Some(2)).unwrap(),
            Some(2)
        );
        assert!(check_action_shape(ActionKind::Register, None).is_err());
        assert!(check_action_shape(ActionKind::Register, Some(0)).is_err());
        assert!(check_action_shape(ActionKind::Deregister, Some(2)).is_err());
        assert_eq!(check_action_shape(ActionKind::ExitWorkflow, None).unwrap(), None);
    }
}
