//! Carrier actions (issue 14): the action and upload columns of a CARRIER_STATUS action, the
//! line columns of a device, the intents that make each row's carrier call happen exactly
//! once, the audit trail of calls, and each account's shared token and rate-limit state.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for (table, mut column) in [
            (
                Alias::new("actions"),
                ColumnDef::new(Alias::new("target_carrier_status"))
                    .string_len(24)
                    .to_owned(),
            ),
            (
                Alias::new("actions"),
                ColumnDef::new(Alias::new("carrier_account_id"))
                    .string()
                    .to_owned(),
            ),
            (
                Alias::new("uploads"),
                ColumnDef::new(Alias::new("action_carrier_status"))
                    .string_len(24)
                    .to_owned(),
            ),
            (
                Alias::new("uploads"),
                ColumnDef::new(Alias::new("carrier_account_id"))
                    .string()
                    .to_owned(),
            ),
            (
                Alias::new("uploads"),
                ColumnDef::new(Alias::new("carrier_root_tenant_id"))
                    .string()
                    .to_owned(),
            ),
            (
                Alias::new("devices"),
                ColumnDef::new(Alias::new("iccid")).string().to_owned(),
            ),
            (
                Alias::new("devices"),
                ColumnDef::new(Alias::new("carrier_status"))
                    .string_len(24)
                    .to_owned(),
            ),
            (
                Alias::new("devices"),
                ColumnDef::new(Alias::new("msisdn")).string().to_owned(),
            ),
            (
                Alias::new("devices"),
                ColumnDef::new(Alias::new("ip_address")).string().to_owned(),
            ),
        ] {
            manager
                .alter_table(Table::alter().table(table).add_column(column.null()).to_owned())
                .await?;
        }
        // Rows of an upload waiting for the carrier: kept with the counters, in the same
        // transactions, so progress shows it without counting intents.
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("uploads"))
                    .add_column(
                        ColumnDef::new(Alias::new("carrier_pending"))
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        // One device per SIM, across tenants. Partial: devices without a SIM (every device a
        // REGISTER creates) add no index entry, so the bulk path pays nothing for it.
        manager
            .create_index(
                Index::create()
                    .name("ux_devices_iccid")
                    .table(Alias::new("devices"))
                    .col(Alias::new("iccid"))
                    .unique()
                    .and_where(Expr::col(Alias::new("iccid")).is_not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(CarrierIntents::Table)
                    .col(
                        ColumnDef::new(CarrierIntents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(CarrierIntents::UploadId).big_integer().not_null())
                    .col(ColumnDef::new(CarrierIntents::RowNumber).integer().not_null())
                    .col(ColumnDef::new(CarrierIntents::DeviceId).big_integer().not_null())
                    .col(ColumnDef::new(CarrierIntents::Iccid).string().not_null())
                    .col(ColumnDef::new(CarrierIntents::Imei).string().null())
                    .col(ColumnDef::new(CarrierIntents::ServicePlan).string().null())
                    .col(ColumnDef::new(CarrierIntents::RootTenantId).string().not_null())
                    .col(
                        ColumnDef::new(CarrierIntents::CarrierAccountId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CarrierIntents::Operation)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CarrierIntents::TargetStatus)
                            .string_len(24)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CarrierIntents::ClientRequestId)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(CarrierIntents::State).string_len(16).not_null())
                    .col(
                        ColumnDef::new(CarrierIntents::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(CarrierIntents::NextAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CarrierIntents::VerifyDeadline)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(CarrierIntents::LastError).string().null())
                    .col(
                        ColumnDef::new(CarrierIntents::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CarrierIntents::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // A row has at most one intent; a redelivered chunk cannot add a second.
        manager
            .create_index(
                Index::create()
                    .name("ux_carrier_intents_row")
                    .table(CarrierIntents::Table)
                    .col(CarrierIntents::UploadId)
                    .col(CarrierIntents::RowNumber)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The executors' claim: due intents of a state, oldest first.
        manager
            .create_index(
                Index::create()
                    .name("ix_carrier_intents_due")
                    .table(CarrierIntents::Table)
                    .col(CarrierIntents::State)
                    .col(CarrierIntents::NextAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(CarrierCalls::Table)
                    .col(
                        ColumnDef::new(CarrierCalls::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(CarrierCalls::UploadId).big_integer().null())
                    .col(ColumnDef::new(CarrierCalls::RootTenantId).string().not_null())
                    .col(ColumnDef::new(CarrierCalls::CarrierAccountId).string().not_null())
                    .col(ColumnDef::new(CarrierCalls::Operation).string_len(16).not_null())
                    .col(ColumnDef::new(CarrierCalls::RowNumbers).text().not_null())
                    .col(ColumnDef::new(CarrierCalls::Request).text().not_null())
                    .col(ColumnDef::new(CarrierCalls::HttpStatus).integer().null())
                    .col(ColumnDef::new(CarrierCalls::Outcome).string_len(24).not_null())
                    .col(ColumnDef::new(CarrierCalls::Response).text().not_null())
                    .col(ColumnDef::new(CarrierCalls::DurationMs).integer().not_null())
                    .col(
                        ColumnDef::new(CarrierCalls::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_carrier_calls_upload")
                    .table(CarrierCalls::Table)
                    .col(CarrierCalls::UploadId)
                    .col(CarrierCalls::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(CarrierSessions::Table)
                    .col(ColumnDef::new(CarrierSessions::RootTenantId).string().not_null())
                    .col(
                        ColumnDef::new(CarrierSessions::CarrierAccountId)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(CarrierSessions::TokensSealed).text().null())
                    .col(
                        ColumnDef::new(CarrierSessions::ExpiresAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(CarrierSessions::Generation)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(CarrierSessions::RefreshingUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(CarrierSessions::NextSlotAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(CarrierSessions::RootTenantId)
                            .col(CarrierSessions::CarrierAccountId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            CarrierSessions::Table.into_iden(),
            CarrierCalls::Table.into_iden(),
            CarrierIntents::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("ux_devices_iccid")
                    .table(Alias::new("devices"))
                    .to_owned(),
            )
            .await?;
        for (table, column) in [
            ("actions", "target_carrier_status"),
            ("actions", "carrier_account_id"),
            ("uploads", "action_carrier_status"),
            ("uploads", "carrier_account_id"),
            ("uploads", "carrier_root_tenant_id"),
            ("uploads", "carrier_pending"),
            ("devices", "iccid"),
            ("devices", "carrier_status"),
            ("devices", "msisdn"),
            ("devices", "ip_address"),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(table))
                        .drop_column(Alias::new(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum CarrierIntents {
    Table,
    Id,
    UploadId,
    RowNumber,
    DeviceId,
    Iccid,
    Imei,
    ServicePlan,
    RootTenantId,
    CarrierAccountId,
    Operation,
    TargetStatus,
    ClientRequestId,
    State,
    Attempts,
    NextAt,
    VerifyDeadline,
    LastError,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum CarrierCalls {
    Table,
    Id,
    UploadId,
    RootTenantId,
    CarrierAccountId,
    Operation,
    RowNumbers,
    Request,
    HttpStatus,
    Outcome,
    Response,
    DurationMs,
    CreatedAt,
}

#[derive(DeriveIden)]
enum CarrierSessions {
    Table,
    RootTenantId,
    CarrierAccountId,
    TokensSealed,
    ExpiresAt,
    Generation,
    RefreshingUntil,
    NextSlotAt,
}
