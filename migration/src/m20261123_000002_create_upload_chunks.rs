//! One row per applied chunk: the idempotency guard of the workers. A chunk's transaction
//! inserts its row first; a redelivered or re-run chunk finds it and changes nothing.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UploadChunks::Table)
                    .col(ColumnDef::new(UploadChunks::UploadId).big_integer().not_null())
                    .col(ColumnDef::new(UploadChunks::Chunk).integer().not_null())
                    .col(ColumnDef::new(UploadChunks::Rows).integer().not_null())
                    .col(
                        ColumnDef::new(UploadChunks::AppliedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(UploadChunks::UploadId)
                            .col(UploadChunks::Chunk),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(UploadChunks::Table, UploadChunks::UploadId)
                            .to(Uploads::Table, Uploads::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UploadChunks::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum UploadChunks {
    Table,
    UploadId,
    Chunk,
    Rows,
    AppliedAt,
}

#[derive(DeriveIden)]
enum Uploads {
    Table,
    Id,
}
