//! A line's status at the carrier (seed 003): New → Inventory → Pending Activation →
//! Active ⇄ Deactivated. `NEW` is a line the carrier has not been told about yet.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(24))")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CarrierStatus {
    #[sea_orm(string_value = "NEW")]
    New,
    #[sea_orm(string_value = "INVENTORY")]
    Inventory,
    #[sea_orm(string_value = "PENDING_ACTIVATION")]
    PendingActivation,
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    #[sea_orm(string_value = "DEACTIVATED")]
    Deactivated,
}
