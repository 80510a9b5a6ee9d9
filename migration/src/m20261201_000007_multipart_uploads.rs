//! The store-side state of resumable multipart uploads (issue 13): which multipart upload of
//! the object store belongs to an upload, how its file is cut into parts, and until when it
//! may be resumed. Which parts exist is never stored here: the store is asked.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(MultipartUploads::Table)
                    .col(
                        ColumnDef::new(MultipartUploads::UploadId)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(MultipartUploads::StoreUploadId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(MultipartUploads::PartSize)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(MultipartUploads::FileSize)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(MultipartUploads::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(MultipartUploads::CompletedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(MultipartUploads::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(MultipartUploads::Table, MultipartUploads::UploadId)
                            .to(Uploads::Table, Uploads::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // The sweeper's look-up of abandoned uploads: unfinished ones by expiry.
        manager
            .create_index(
                Index::create()
                    .name("idx_multipart_uploads_open_expiry")
                    .table(MultipartUploads::Table)
                    .col(MultipartUploads::CompletedAt)
                    .col(MultipartUploads::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(MultipartUploads::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum MultipartUploads {
    Table,
    UploadId,
    StoreUploadId,
    PartSize,
    FileSize,
    ExpiresAt,
    CompletedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Uploads {
    Table,
    Id,
}
