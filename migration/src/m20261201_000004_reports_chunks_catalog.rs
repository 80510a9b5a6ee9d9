//! Hardening of the pipeline's bookkeeping:
//! - `uploads.chunk_size`: the chunk size an upload's rows were first fanned out with, so a
//!   redelivered dispatch cuts the same chunks whatever the process's setting;
//! - `uploads.report_*`: the error report is queued with the terminal state and built by a
//!   background loop (`report_due_at` doubles as the builder's lease);
//! - actions and workflows keyed by `(root_tenant_id, id)`: catalog ids are per customer, so
//!   one customer's ids neither block nor reveal another's.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, TransactionTrait};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Depth bound of the recursive root lookup (bad data must not loop).
const MAX_DEPTH: u32 = 32;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in [
            ColumnDef::new(Uploads::ChunkSize).integer().null().to_owned(),
            ColumnDef::new(Uploads::ReportStatus)
                .string_len(16)
                .null()
                .to_owned(),
            ColumnDef::new(Uploads::ReportDueAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            ColumnDef::new(Uploads::ReportAttempts)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
        ] {
            manager
                .alter_table(Table::alter().table(Uploads::Table).add_column(column).to_owned())
                .await?;
        }
        let db = manager.get_connection();
        // The builder's claim: reports that are due, oldest first. Partial, so the millions
        // of uploads without a pending report cost nothing.
        db.execute_unprepared(
            "CREATE INDEX ix_uploads_report_due ON uploads (report_due_at) WHERE report_due_at IS NOT NULL",
        )
        .await?;
        // Uploads that ended with failures before this release: built in the background too.
        db.execute_unprepared(
            "UPDATE uploads SET report_status = 'READY' WHERE error_report_key IS NOT NULL",
        )
        .await?;
        db.execute_unprepared(
            "UPDATE uploads SET report_status = 'PENDING', report_due_at = '1970-01-01T00:00:00+00:00' \
             WHERE error_report_key IS NULL AND failed > 0 \
             AND status IN ('COMPLETED_WITH_ERRORS', 'FAILED', 'CANCELLED')",
        )
        .await?;

        for table in [Catalog::Actions, Catalog::Workflows] {
            rekey_by_root(manager, table).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Per-customer ids cannot be folded back into one global key space safely.
        Err(DbErr::Migration(
            "m20261201_000004 cannot be reverted: catalog ids may repeat across customers".into(),
        ))
    }
}

#[derive(Clone, Copy)]
enum Catalog {
    Actions,
    Workflows,
}

impl Catalog {
    fn name(self) -> &'static str {
        match self {
            Self::Actions => "actions",
            Self::Workflows => "workflows",
        }
    }

    /// The columns besides the keys, as created by the first migration.
    fn columns(self) -> &'static str {
        match self {
            Self::Actions => "tenant_id, name, kind, target_service_type, created_at",
            Self::Workflows => "tenant_id, name, service_type, created_at",
        }
    }

    fn create(self, name: &str) -> TableCreateStatement {
        let mut table = Table::create();
        table
            .table(Alias::new(name))
            .col(
                ColumnDef::new(Alias::new("root_tenant_id"))
                    .string_len(64)
                    .not_null(),
            )
            .col(ColumnDef::new(Alias::new("id")).string_len(64).not_null())
            .col(ColumnDef::new(Alias::new("tenant_id")).string_len(64).not_null())
            .col(ColumnDef::new(Alias::new("name")).string().not_null());
        match self {
            Self::Actions => {
                table
                    .col(ColumnDef::new(Alias::new("kind")).string_len(24).not_null())
                    .col(ColumnDef::new(Alias::new("target_service_type")).integer().null());
            }
            Self::Workflows => {
                table.col(ColumnDef::new(Alias::new("service_type")).integer().not_null());
            }
        }
        table
            .col(
                ColumnDef::new(Alias::new("created_at"))
                    .timestamp_with_time_zone()
                    .not_null(),
            )
            .primary_key(
                Index::create()
                    .col(Alias::new("root_tenant_id"))
                    .col(Alias::new("id")),
            )
            .foreign_key(
                ForeignKey::create()
                    .from(Alias::new(name), Alias::new("tenant_id"))
                    .to(Alias::new("tenants"), Alias::new("id")),
            )
            .foreign_key(
                ForeignKey::create()
                    .from(Alias::new(name), Alias::new("root_tenant_id"))
                    .to(Alias::new("tenants"), Alias::new("id")),
            )
            .to_owned()
    }
}

/// Rebuilds `table` with the primary key `(root_tenant_id, id)` (neither database can swap
/// a primary key in place), filling the root from the tenant tree. One transaction, so the
/// steps run on one connection (on SQLite the migrator works on the pool) and either all
/// apply or none.
async fn rekey_by_root(manager: &SchemaManager<'_>, table: Catalog) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    let txn = manager.get_connection().begin().await?;
    let name = table.name();
    let staging = format!("{name}_by_root");
    txn.execute(backend.build(&table.create(&staging))).await?;
    let columns = table.columns();
    txn.execute_unprepared(&format!(
        "INSERT INTO {staging} (root_tenant_id, id, {columns}) \
         WITH RECURSIVE up(tenant_id, id, parent_id, depth) AS ( \
           SELECT id, id, parent_id, 0 FROM tenants \
           UNION ALL \
           SELECT up.tenant_id, t.id, t.parent_id, up.depth + 1 FROM up JOIN tenants t ON t.id = up.parent_id \
           WHERE up.depth < {MAX_DEPTH} \
         ) \
         SELECT COALESCE((SELECT up.id FROM up WHERE up.tenant_id = c.tenant_id AND up.parent_id IS NULL LIMIT 1), c.tenant_id), \
                c.id, {prefixed} FROM {name} c",
        prefixed = columns
            .split(", ")
            .map(|c| format!("c.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
    ))
    .await?;
    txn.execute(backend.build(&Table::drop().table(Alias::new(name)).to_owned()))
        .await?;
    txn.execute(
        backend.build(
            &Table::rename()
                .table(Alias::new(staging.as_str()), Alias::new(name))
                .to_owned(),
        ),
    )
    .await?;
    // Pickers list a tenant's (and its ancestors') entries.
    txn.execute(
        backend.build(
            &Index::create()
                .name(format!("ix_{name}_tenant"))
                .table(Alias::new(name))
                .col(Alias::new("tenant_id"))
                .to_owned(),
        ),
    )
    .await?;
    txn.commit().await
}

#[derive(DeriveIden)]
enum Uploads {
    Table,
    ChunkSize,
    ReportStatus,
    ReportDueAt,
    ReportAttempts,
}
