//! Job settlement: every job names its upload (so a sweeper can tell an upload with no live
//! job) and carries a fairness rank (`seq`: a chunk's first row), so chunk jobs are claimed
//! row 1 of every upload before row 100,001 of any.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per ALTER: SQLite adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(ColumnDef::new(Jobs::UploadId).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(ColumnDef::new(Jobs::Seq).integer().not_null().default(0))
                    .to_owned(),
            )
            .await?;
        // Jobs queued before this migration: their upload and first row from the payload,
        // read without parsing it as JSON (a corrupt payload must not stop the migration).
        let backfill = match manager.get_database_backend() {
            sea_orm_migration::sea_orm::DatabaseBackend::Postgres => {
                "UPDATE jobs SET \
                   upload_id = CAST(substring(payload from '\"upload_id\":([0-9]{1,18})') AS BIGINT), \
                   seq = COALESCE(CAST(substring(payload from '\"n\":([0-9]{1,9})') AS INTEGER), 0) \
                 WHERE upload_id IS NULL"
            }
            _ => {
                "UPDATE jobs SET \
                   upload_id = CASE WHEN json_valid(payload) THEN json_extract(payload, '$.upload_id') END, \
                   seq = COALESCE(CASE WHEN json_valid(payload) THEN json_extract(payload, '$.rows[0].n') END, 0) \
                 WHERE upload_id IS NULL"
            }
        };
        manager.get_connection().execute_unprepared(backfill).await?;
        // Claim: the due jobs of a queue in fairness order.
        manager
            .create_index(
                Index::create()
                    .name("ix_jobs_fair")
                    .table(Jobs::Table)
                    .col(Jobs::Queue)
                    .col(Jobs::State)
                    .col(Jobs::Seq)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        // Sweeper: does an upload still have a live job?
        manager
            .create_index(
                Index::create()
                    .name("ix_jobs_upload")
                    .table(Jobs::Table)
                    .col(Jobs::UploadId)
                    .col(Jobs::State)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in ["ix_jobs_upload", "ix_jobs_fair"] {
            manager
                .drop_index(Index::drop().name(name).table(Jobs::Table).to_owned())
                .await?;
        }
        for col in [Jobs::Seq, Jobs::UploadId] {
            manager
                .alter_table(Table::alter().table(Jobs::Table).drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Jobs {
    Table,
    Id,
    Queue,
    State,
    UploadId,
    Seq,
}
