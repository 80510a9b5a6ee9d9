//! The initial schema: tenants, actions, workflows, devices, uploads, batch results, jobs.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .col(text_pk(Tenants::Id))
                    .col(ColumnDef::new(Tenants::Name).string().not_null())
                    .col(ColumnDef::new(Tenants::ParentId).string_len(64).null())
                    .col(timestamp(Tenants::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Tenants::Table, Tenants::ParentId)
                            .to(Tenants::Table, Tenants::Id),
                    )
                    .to_owned(),
            )
            .await?;
        index(manager, "ix_tenants_parent", Tenants::Table, &[Tenants::ParentId]).await?;

        manager
            .create_table(
                Table::create()
                    .table(Actions::Table)
                    .col(text_pk(Actions::Id))
                    .col(tenant_ref(Actions::TenantId))
                    .col(ColumnDef::new(Actions::Name).string().not_null())
                    .col(ColumnDef::new(Actions::Kind).string_len(24).not_null())
                    .col(ColumnDef::new(Actions::TargetServiceType).integer().null())
                    .col(timestamp(Actions::CreatedAt))
                    .foreign_key(&mut fk_tenant(Actions::Table, Actions::TenantId))
                    .to_owned(),
            )
            .await?;
        index(manager, "ix_actions_tenant", Actions::Table, &[Actions::TenantId]).await?;

        manager
            .create_table(
                Table::create()
                    .table(Workflows::Table)
                    .col(text_pk(Workflows::Id))
                    .col(tenant_ref(Workflows::TenantId))
                    .col(ColumnDef::new(Workflows::Name).string().not_null())
                    .col(ColumnDef::new(Workflows::ServiceType).integer().not_null())
                    .col(timestamp(Workflows::CreatedAt))
                    .foreign_key(&mut fk_tenant(Workflows::Table, Workflows::TenantId))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_workflows_tenant",
            Workflows::Table,
            &[Workflows::TenantId],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Devices::Table)
                    .col(big_pk(Devices::Id))
                    .col(tenant_ref(Devices::TenantId))
                    .col(ColumnDef::new(Devices::DeviceType).small_integer().not_null())
                    .col(ColumnDef::new(Devices::Uid).string_len(32).not_null())
                    .col(ColumnDef::new(Devices::Uid2).string_len(32).null())
                    .col(ColumnDef::new(Devices::State).small_integer().not_null())
                    .col(ColumnDef::new(Devices::ServiceType).integer().not_null())
                    .col(ColumnDef::new(Devices::BrandId).integer().null())
                    .col(ColumnDef::new(Devices::WorkflowId).string_len(64).null())
                    .col(timestamp(Devices::CreatedAt))
                    .col(timestamp(Devices::UpdatedAt))
                    .foreign_key(&mut fk_tenant(Devices::Table, Devices::TenantId))
                    .to_owned(),
            )
            .await?;
        // The per-row lookup of the workers: `WHERE device_type = ? AND uid IN (...)`. Unique,
        // so two uploads racing to REGISTER the same device cannot both create it.
        unique_index(
            manager,
            "ux_devices_type_uid",
            Devices::Table,
            &[Devices::DeviceType, Devices::Uid],
        )
        .await?;
        // Few devices have a second IMEI; only those pay for this index.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX ix_devices_type_uid2 ON devices (device_type, uid2) WHERE uid2 IS NOT NULL",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Uploads::Table)
                    .col(big_pk(Uploads::Id))
                    .col(
                        ColumnDef::new(Uploads::PublicId)
                            .string_len(36)
                            .not_null()
                            .unique_key(),
                    )
                    .col(tenant_ref(Uploads::TenantId))
                    .col(tenant_ref(Uploads::TargetTenantId))
                    .col(ColumnDef::new(Uploads::CreatedBy).string().not_null())
                    .col(ColumnDef::new(Uploads::DeviceType).small_integer().not_null())
                    .col(ColumnDef::new(Uploads::ActionId).string_len(64).not_null())
                    .col(ColumnDef::new(Uploads::ActionKind).string_len(24).not_null())
                    .col(ColumnDef::new(Uploads::ActionServiceType).integer().null())
                    .col(ColumnDef::new(Uploads::WorkflowId).string_len(64).null())
                    .col(ColumnDef::new(Uploads::WorkflowServiceType).integer().null())
                    .col(ColumnDef::new(Uploads::BrandId).integer().null())
                    .col(ColumnDef::new(Uploads::ProvisionType).string().null())
                    .col(ColumnDef::new(Uploads::SimControlName).string().null())
                    .col(ColumnDef::new(Uploads::SimControlId).string().null())
                    .col(ColumnDef::new(Uploads::BillingDetail).text().null())
                    .col(ColumnDef::new(Uploads::DeclaredRowCount).integer().not_null())
                    .col(ColumnDef::new(Uploads::ObjectKey).string().not_null())
                    .col(ColumnDef::new(Uploads::Status).string_len(24).not_null())
                    .col(ColumnDef::new(Uploads::TotalRows).integer().null())
                    .col(
                        ColumnDef::new(Uploads::ProcessedRows)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Uploads::Succeeded).integer().not_null().default(0))
                    .col(ColumnDef::new(Uploads::Failed).integer().not_null().default(0))
                    .col(ColumnDef::new(Uploads::FailureReason).text().null())
                    .col(timestamp(Uploads::CreatedAt))
                    .col(
                        ColumnDef::new(Uploads::QueuedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Uploads::StartedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Uploads::FinishedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(timestamp(Uploads::UpdatedAt))
                    .foreign_key(&mut fk_tenant(Uploads::Table, Uploads::TenantId))
                    .foreign_key(&mut fk_tenant(Uploads::Table, Uploads::TargetTenantId))
                    .to_owned(),
            )
            .await?;
        // `uploads(tenantId, status)` pages newest first by id within a tenant.
        index(
            manager,
            "ix_uploads_tenant_id",
            Uploads::Table,
            &[Uploads::TenantId, Uploads::Id],
        )
        .await?;
        index(
            manager,
            "ix_uploads_tenant_status_id",
            Uploads::Table,
            &[Uploads::TenantId, Uploads::Status, Uploads::Id],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(BatchResults::Table)
                    .col(ColumnDef::new(BatchResults::UploadId).big_integer().not_null())
                    .col(ColumnDef::new(BatchResults::RowNumber).integer().not_null())
                    .col(ColumnDef::new(BatchResults::DeviceUid).string().not_null())
                    .col(ColumnDef::new(BatchResults::Outcome).string_len(8).not_null())
                    .col(ColumnDef::new(BatchResults::ErrorCode).string_len(40).null())
                    .col(ColumnDef::new(BatchResults::Message).text().null())
                    // The invariant of SPEC §5 lives here: one result per data row, whatever
                    // the queue or the workers do.
                    .primary_key(
                        Index::create()
                            .col(BatchResults::UploadId)
                            .col(BatchResults::RowNumber),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(BatchResults::Table, BatchResults::UploadId)
                            .to(Uploads::Table, Uploads::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Keyset pages of the failures, all or of one error code. Partial: a successful row
        // (most of a million) pays for the primary key only.
        for sql in [
            "CREATE INDEX ix_results_failed ON batch_results (upload_id, row_number) WHERE outcome = 'FAIL'",
            "CREATE INDEX ix_results_failed_code ON batch_results (upload_id, error_code, row_number) WHERE outcome = 'FAIL'",
        ] {
            manager.get_connection().execute_unprepared(sql).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(big_pk(Jobs::Id))
                    .col(ColumnDef::new(Jobs::Queue).string_len(32).not_null())
                    .col(ColumnDef::new(Jobs::Payload).text().not_null())
                    .col(ColumnDef::new(Jobs::DedupeKey).string().null().unique_key())
                    .col(ColumnDef::new(Jobs::State).string_len(16).not_null())
                    .col(ColumnDef::new(Jobs::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(Jobs::MaxAttempts).integer().not_null())
                    .col(timestamp(Jobs::RunAt))
                    .col(
                        ColumnDef::new(Jobs::LockedUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(Jobs::LockedBy).string().null())
                    .col(ColumnDef::new(Jobs::LastError).text().null())
                    .col(timestamp(Jobs::CreatedAt))
                    .col(timestamp(Jobs::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // Claim: the oldest available job of a queue; rescue: running jobs past their lease.
        index(
            manager,
            "ix_jobs_claim",
            Jobs::Table,
            &[Jobs::Queue, Jobs::State, Jobs::RunAt],
        )
        .await?;
        index(
            manager,
            "ix_jobs_lease",
            Jobs::Table,
            &[Jobs::State, Jobs::LockedUntil],
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Jobs::Table.into_iden(),
            BatchResults::Table.into_iden(),
            Uploads::Table.into_iden(),
            Devices::Table.into_iden(),
            Workflows::Table.into_iden(),
            Actions::Table.into_iden(),
            Tenants::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

fn text_pk(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .string_len(64)
        .not_null()
        .primary_key()
        .to_owned()
}

fn big_pk(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

fn tenant_ref(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).string_len(64).not_null().to_owned()
}

fn timestamp(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn fk_tenant(table: impl IntoIden + 'static, col: impl IntoIden + 'static) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table, col)
        .to(Tenants::Table, Tenants::Id)
        .to_owned()
}

async fn index<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    cols: &[T],
) -> Result<(), DbErr> {
    create_index(manager, name, table, cols, false).await
}

async fn unique_index<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    cols: &[T],
) -> Result<(), DbErr> {
    create_index(manager, name, table, cols, true).await
}

async fn create_index<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    cols: &[T],
    unique: bool,
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(*col);
    }
    if unique {
        stmt.unique();
    }
    manager.create_index(stmt).await
}

#[derive(DeriveIden, Clone, Copy)]
enum Tenants {
    Table,
    Id,
    Name,
    ParentId,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Actions {
    Table,
    Id,
    TenantId,
    Name,
    Kind,
    TargetServiceType,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Workflows {
    Table,
    Id,
    TenantId,
    Name,
    ServiceType,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Devices {
    Table,
    Id,
    TenantId,
    DeviceType,
    Uid,
    Uid2,
    State,
    ServiceType,
    BrandId,
    WorkflowId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Uploads {
    Table,
    Id,
    PublicId,
    TenantId,
    TargetTenantId,
    CreatedBy,
    DeviceType,
    ActionId,
    ActionKind,
    ActionServiceType,
    WorkflowId,
    WorkflowServiceType,
    BrandId,
    ProvisionType,
    SimControlName,
    SimControlId,
    BillingDetail,
    DeclaredRowCount,
    ObjectKey,
    Status,
    TotalRows,
    ProcessedRows,
    Succeeded,
    Failed,
    FailureReason,
    CreatedAt,
    QueuedAt,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum BatchResults {
    Table,
    UploadId,
    RowNumber,
    DeviceUid,
    Outcome,
    ErrorCode,
    Message,
}

#[derive(DeriveIden, Clone, Copy)]
enum Jobs {
    Table,
    Id,
    Queue,
    Payload,
    DedupeKey,
    State,
    Attempts,
    MaxAttempts,
    RunAt,
    LockedUntil,
    LockedBy,
    LastError,
    CreatedAt,
    UpdatedAt,
}
