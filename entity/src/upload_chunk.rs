//! A chunk of an upload that a worker has applied; its presence makes a repeat a no-op.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "upload_chunks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub upload_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub chunk: i32,
    /// Data rows the chunk held (and results it wrote).
    pub rows: i32,
    pub applied_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
