//! An action a tenant offers for bulk uploads (`assignActionId`).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What an action does to each device of an upload (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(24))")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionKind {
    #[sea_orm(string_value = "REGISTER")]
    Register,
    #[sea_orm(string_value = "ASSIGN_WORKFLOW")]
    AssignWorkflow,
    #[sea_orm(string_value = "EXIT_WORKFLOW")]
    ExitWorkflow,
    #[sea_orm(string_value = "DEREGISTER")]
    Deregister,
    /// Changes each device's line status at a carrier (SPEC §11).
    #[sea_orm(string_value = "CARRIER_STATUS")]
    CarrierStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "actions")]
pub struct Model {
    /// The root of the tenant tree that owns it: ids are unique per customer, not globally.
    #[sea_orm(primary_key, auto_increment = false)]
    pub root_tenant_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub kind: ActionKind,
    /// The service type a REGISTER gives the device; `None` for the other kinds.
    pub target_service_type: Option<i32>,
    /// CARRIER_STATUS: the line status each device is moved to, and the carrier account
    /// (of the same root tenant) the calls go to; `None` for the other kinds.
    pub target_carrier_status: Option<crate::carrier_status::CarrierStatus>,
    pub carrier_account_id: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
