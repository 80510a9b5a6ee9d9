//! A carrier account of a customer: where and as whom the workers call a carrier's
//! line-status API. The OAuth client secret is stored sealed, never in the clear.

use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "carrier_accounts")]
pub struct Model {
    /// The root of the tenant tree that owns it: ids are unique per customer, not globally.
    #[sea_orm(primary_key, auto_increment = false)]
    pub root_tenant_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub base_url: String,
    pub client_id: String,
    /// The client secret sealed with the row's `root_tenant_id/id` as associated data
    /// (`fleetload::carrier::sealed`): copied to another row it no longer opens.
    pub client_secret_sealed: String,
    pub account_number: String,
    pub rate_limit_per_sec: i32,
    pub batch_size: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// Written by hand so that even the sealed secret stays out of logs and panics.
impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("root_tenant_id", &self.root_tenant_id)
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("client_secret_sealed", &"[REDACTED]")
            .field("account_number", &self.account_number)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("batch_size", &self.batch_size)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
