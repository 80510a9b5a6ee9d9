//! An upload whose file arrives as an object-store multipart upload, resumable until
//! `expires_at`. The parts themselves are only ever listed from the store.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "multipart_uploads")]
pub struct Model {
    /// The upload's internal id (`uploads.id`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub upload_id: i64,
    /// The store's id of the multipart upload (S3 `UploadId`).
    pub store_upload_id: String,
    /// Bytes of every part but the last.
    pub part_size: i64,
    /// Bytes of the whole file, declared at prepare; the parts must add up to it.
    pub file_size: i64,
    /// After this the upload cannot be resumed and the server aborts it in the store.
    pub expires_at: DateTimeUtc,
    /// When the store assembled the object; null while parts may still be uploaded.
    pub completed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
