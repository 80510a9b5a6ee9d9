//! Reading uploads: one by id, or a tenant's uploads newest first with keyset paging.

use entity::prelude::*;
use entity::upload::{self, UploadStatus};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::access::{self, TenantScope};
use crate::error::ApiError;

/// The upload `public_id` if it belongs to `scope`'s tenant or a workspace below it; any
/// other upload, existing or not, is simply absent (ids of other tenants leak nothing).
pub async fn find_visible(
    db: &impl ConnectionTrait,
    scope: &TenantScope,
    public_id: &str,
) -> Result<Option<upload::Model>, ApiError> {
    let Some(upload) = Upload::find()
        .filter(upload::Column::PublicId.eq(public_id))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    if upload.tenant_id == scope.tenant_id {
        return Ok(Some(upload));
    }
    let ancestry = access::ancestry(db, &upload.tenant_id).await?;
    Ok(crate::domain::tenancy::is_within(&ancestry, &scope.tenant_id).then_some(upload))
}

pub struct UploadPage {
    pub items: Vec<upload::Model>,
    pub has_next: bool,
    pub total_count: u64,
}

/// Uploads of `scope`'s tenant tree, newest first, after the upload with internal id
/// `after` (exclusive), optionally of one status.
pub async fn list(
    db: &impl ConnectionTrait,
    scope: &TenantScope,
    first: u64,
    after: Option<i64>,
    status: Option<UploadStatus>,
) -> Result<UploadPage, ApiError> {
    let tenants = access::subtree(db, &scope.tenant_id).await?;
    let mut base = Upload::find().filter(upload::Column::TenantId.is_in(tenants));
    if let Some(status) = status {
        base = base.filter(upload::Column::Status.eq(status));
    }
    let total_count = base.clone().count(db).await?;
    let mut page = base.order_by_desc(upload::Column::Id).limit(first + 1);
    if let Some(after) = after {
        page = page.filter(upload::Column::Id.lt(after));
    }
    let mut items = page.all(db).await?;
    let has_next = items.len() as u64 > first;
    items.truncate(first as usize);
    Ok(UploadPage {
        items,
        has_next,
        total_count,
    })
}
