//! The catalog an upload names — workspaces, actions, workflows: listed for pickers (READ) and
//! managed by administrators (ADMIN) inside their own tenant tree.

use async_graphql::{Context, Enum, Object, SimpleObject};
use entity::{action, tenant, workflow};

use super::context::{RequestAuth, db_permit};
use super::scalars::AwsDateTime;
use crate::admin::{self, NewAction};
use crate::error::{GqlResult, IntoGql};

/// A tenant or one of its workspaces.
#[derive(SimpleObject)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// The tenant this workspace hangs from; null for a root tenant.
    pub parent_id: Option<String>,
    pub created_at: AwsDateTime,
}

impl From<tenant::Model> for Tenant {
    fn from(t: tenant::Model) -> Self {
        Self {
            id: t.id,
            name: t.name,
            parent_id: t.parent_id,
            created_at: t.created_at.into(),
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::action::ActionKind")]
pub enum ActionKind {
    Register,
    AssignWorkflow,
    ExitWorkflow,
    Deregister,
    /// Changes each device's line status at a carrier (`targetCarrierStatus`, `carrierAccountId`).
    CarrierStatus,
}

/// A line's status at the carrier: NEW → INVENTORY → PENDING_ACTIVATION → ACTIVE ⇄ DEACTIVATED.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "entity::carrier_status::CarrierStatus")]
pub enum CarrierStatus {
    New,
    Inventory,
    PendingActivation,
    Active,
    Deactivated,
}

/// What an upload does to each of its devices (`assignActionId`).
#[derive(SimpleObject)]
pub struct Action {
    pub id: String,
    /// The tenant that owns it; its workspaces inherit it.
    pub tenant_id: String,
    pub name: String,
    pub kind: ActionKind,
    /// The service type REGISTER gives devices; null for the other kinds.
    pub target_service_type: Option<i32>,
    /// The line status CARRIER_STATUS moves devices to; null for the other kinds.
    pub target_carrier_status: Option<CarrierStatus>,
    /// The carrier account CARRIER_STATUS calls; null for the other kinds.
    pub carrier_account_id: Option<String>,
    pub created_at: AwsDateTime,
}

impl From<action::Model> for Action {
    fn from(a: action::Model) -> Self {
        Self {
            id: a.id,
            tenant_id: a.tenant_id,
            name: a.name,
            kind: a.kind.into(),
            target_service_type: a.target_service_type,
            target_carrier_status: a.target_carrier_status.map(Into::into),
            carrier_account_id: a.carrier_account_id,
            created_at: a.created_at.into(),
        }
    }
}

/// A workflow devices can be assigned to.
#[derive(SimpleObject)]
pub struct Workflow {
    /// 24 hexadecimal digits.
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub service_type: i32,
    pub created_at: AwsDateTime,
}

impl From<workflow::Model> for Workflow {
    fn from(w: workflow::Model) -> Self {
        Self {
            id: w.id,
            tenant_id: w.tenant_id,
            name: w.name,
            service_type: w.service_type,
            created_at: w.created_at.into(),
        }
    }
}

fn all<M, T: From<M>>(items: Vec<M>) -> Vec<T> {
    items.into_iter().map(T::from).collect()
}

/// Each query takes one of the request's database permits while it reads, as the upload
/// queries do, so aliases wait in line; mutations need none: a request's mutations run one
/// at a time.
#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// `tenantId` and its workspaces, parents before children.
    async fn tenants(&self, ctx: &Context<'_>, tenant_id: String) -> GqlResult<Vec<Tenant>> {
        async {
            let _permit = db_permit(ctx).await;
            Ok(all(
                admin::tenants(&ctx.app()?.db, ctx.identity()?, &tenant_id).await?
            ))
        }
        .await
        .gql()
    }

    /// Actions usable in `tenantId`: its own and those inherited from its ancestors.
    async fn actions(&self, ctx: &Context<'_>, tenant_id: String) -> GqlResult<Vec<Action>> {
        async {
            let _permit = db_permit(ctx).await;
            Ok(all(
                admin::actions(&ctx.app()?.db, ctx.identity()?, &tenant_id).await?
            ))
        }
        .await
        .gql()
    }

    /// Workflows usable in `tenantId`: its own and those inherited from its ancestors.
    async fn workflows(&self, ctx: &Context<'_>, tenant_id: String) -> GqlResult<Vec<Workflow>> {
        async {
            let _permit = db_permit(ctx).await;
            Ok(all(
                admin::workflows(&ctx.app()?.db, ctx.identity()?, &tenant_id).await?
            ))
        }
        .await
        .gql()
    }
}

#[derive(Default)]
pub struct AdminMutation;

/// Every mutation here needs ADMIN and acts only inside the caller's tenant tree; an id
/// given for a new item must be free (`ALREADY_EXISTS`), one left out is generated.
#[Object]
impl AdminMutation {
    /// A workspace under `parentId`.
    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        parent_id: String,
        id: Option<String>,
        name: String,
    ) -> GqlResult<Tenant> {
        async {
            let created =
                admin::create_tenant(&ctx.app()?.db, ctx.identity()?, &parent_id, id.as_deref(), &name)
                    .await?;
            Ok(created.into())
        }
        .await
        .gql()
    }

    async fn rename_tenant(&self, ctx: &Context<'_>, tenant_id: String, name: String) -> GqlResult<Tenant> {
        async {
            Ok(
                admin::rename_tenant(&ctx.app()?.db, ctx.identity()?, &tenant_id, &name)
                    .await?
                    .into(),
            )
        }
        .await
        .gql()
    }

    /// An action of `tenantId` (inherited by its workspaces). REGISTER needs
    /// `targetServiceType`; CARRIER_STATUS needs `targetCarrierStatus` and the id of a carrier
    /// account of the same customer; the other kinds take none.
    #[allow(clippy::too_many_arguments)]
    async fn create_action(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        id: Option<String>,
        name: String,
        kind: ActionKind,
        target_service_type: Option<i32>,
        target_carrier_status: Option<CarrierStatus>,
        carrier_account_id: Option<String>,
    ) -> GqlResult<Action> {
        async {
            let new = NewAction {
                tenant_id: &tenant_id,
                id: id.as_deref(),
                name: &name,
                kind: kind.into(),
                target_service_type,
                target_carrier_status: target_carrier_status.map(Into::into),
                carrier_account_id: carrier_account_id.as_deref(),
            };
            Ok(admin::create_action(&ctx.app()?.db, ctx.identity()?, new)
                .await?
                .into())
        }
        .await
        .gql()
    }

    /// Renames an action or changes a REGISTER action's target service type (uploads
    /// already prepared keep what they were checked against).
    async fn update_action(
        &self,
        ctx: &Context<'_>,
        id: String,
        name: Option<String>,
        target_service_type: Option<i32>,
    ) -> GqlResult<Action> {
        async {
            let updated = admin::update_action(
                &ctx.app()?.db,
                ctx.identity()?,
                &id,
                name.as_deref(),
                target_service_type,
            )
            .await?;
            Ok(updated.into())
        }
        .await
        .gql()
    }

    /// Deletes an action; `IN_USE` while an unfinished upload names it. Returns its id.
    async fn delete_action(&self, ctx: &Context<'_>, id: String) -> GqlResult<String> {
        async {
            admin::delete_action(&ctx.app()?.db, ctx.identity()?, &id).await?;
            Ok(id)
        }
        .await
        .gql()
    }

    /// A workflow of `tenantId` (inherited by its workspaces).
    async fn create_workflow(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        id: Option<String>,
        name: String,
        service_type: i32,
    ) -> GqlResult<Workflow> {
        async {
            let created = admin::create_workflow(
                &ctx.app()?.db,
                ctx.identity()?,
                &tenant_id,
                id.as_deref(),
                &name,
                service_type,
            )
            .await?;
            Ok(created.into())
        }
        .await
        .gql()
    }

    /// Renames a workflow (its service type is fixed: devices in it were checked against it).
    async fn rename_workflow(&self, ctx: &Context<'_>, id: String, name: String) -> GqlResult<Workflow> {
        async {
            Ok(
                admin::rename_workflow(&ctx.app()?.db, ctx.identity()?, &id, &name)
                    .await?
                    .into(),
            )
        }
        .await
        .gql()
    }

    /// Deletes a workflow; `IN_USE` while a device is in it or an unfinished upload names it.
    /// Returns its id.
    async fn delete_workflow(&self, ctx: &Context<'_>, id: String) -> GqlResult<String> {
        async {
            admin::delete_workflow(&ctx.app()?.db, ctx.identity()?, &id).await?;
            Ok(id)
        }
        .await
        .gql()
    }
}
