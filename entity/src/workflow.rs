//! A workflow devices can be assigned to; ids are 24-hex like the old system's MongoDB ids.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "workflows")]
pub struct Model {
    /// The root of the tenant tree that owns it: ids are unique per customer, not globally.
    #[sea_orm(primary_key, auto_increment = false)]
    pub root_tenant_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub service_type: i32,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
