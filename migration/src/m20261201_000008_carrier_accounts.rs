//! Carrier accounts (issue 14): per customer, like actions, keyed by `(root_tenant_id, id)`.
//! The OAuth client secret is only ever stored sealed (`client_secret_sealed`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CarrierAccounts::Table)
                    .col(
                        ColumnDef::new(CarrierAccounts::RootTenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(CarrierAccounts::Id).string_len(64).not_null())
                    .col(
                        ColumnDef::new(CarrierAccounts::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(CarrierAccounts::Name).string().not_null())
                    .col(ColumnDef::new(CarrierAccounts::BaseUrl).text().not_null())
                    .col(ColumnDef::new(CarrierAccounts::ClientId).text().not_null())
                    .col(
                        ColumnDef::new(CarrierAccounts::ClientSecretSealed)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CarrierAccounts::AccountNumber)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CarrierAccounts::RateLimitPerSec)
                            .integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(CarrierAccounts::BatchSize).integer().not_null())
                    .col(
                        ColumnDef::new(CarrierAccounts::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CarrierAccounts::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(CarrierAccounts::RootTenantId)
                            .col(CarrierAccounts::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CarrierAccounts::Table, CarrierAccounts::TenantId)
                            .to(Tenants::Table, Tenants::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CarrierAccounts::Table, CarrierAccounts::RootTenantId)
                            .to(Tenants::Table, Tenants::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // The list of a tenant's accounts (`carrierAccounts(tenantId)`).
        manager
            .create_index(
                Index::create()
                    .name("ix_carrier_accounts_tenant")
                    .table(CarrierAccounts::Table)
                    .col(CarrierAccounts::TenantId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(CarrierAccounts::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum CarrierAccounts {
    Table,
    RootTenantId,
    Id,
    TenantId,
    Name,
    BaseUrl,
    ClientId,
    ClientSecretSealed,
    AccountNumber,
    RateLimitPerSec,
    BatchSize,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}
