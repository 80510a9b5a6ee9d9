//! Authorisation against the tenant tree: every resolver that takes a `tenantId` asks here
//! whether the caller may act in it, and which tenants' data it may then see.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbErr, Value};

use crate::auth::{Identity, Permission};
use crate::domain::tenancy;
use crate::error::ApiError;

/// How deep a workspace tree may go; bounds the recursive queries on bad data.
const MAX_DEPTH: i32 = 32;

/// A tenant the caller may act in, with its ancestry (itself first, then up to its root).
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub tenant_id: String,
    pub ancestry: Vec<String>,
}

impl TenantScope {
    /// Whether a record owned by `owner` is usable here: actions and workflows are
    /// inherited down the tree, never across it.
    pub fn inherits_from(&self, owner: &str) -> bool {
        tenancy::is_within(&self.ancestry, owner)
    }
}

/// Checks that `identity` holds `permission` and that `tenant_id` lies in its root tenant's
/// tree. Any tenant outside the tree, existing or not, is `FORBIDDEN` alike.
pub async fn authorize(
    db: &impl ConnectionTrait,
    identity: &Identity,
    tenant_id: &str,
    permission: Permission,
) -> Result<TenantScope, ApiError> {
    if !identity.has(permission) {
        return Err(ApiError::Forbidden);
    }
    let ancestry = ancestry(db, tenant_id).await?;
    if !tenancy::is_within(&ancestry, &identity.root_tenant) {
        return Err(ApiError::Forbidden);
    }
    Ok(TenantScope {
        tenant_id: tenant_id.to_owned(),
        ancestry,
    })
}

/// `tenant_id` and its ancestors, nearest first; empty when the tenant does not exist.
pub async fn ancestry(db: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<String>, DbErr> {
    let sql = format!(
        "WITH RECURSIVE chain(id, parent_id, depth) AS ( \
           SELECT id, parent_id, 0 FROM tenants WHERE id = $1 \
           UNION ALL \
           SELECT t.id, t.parent_id, c.depth + 1 FROM tenants t JOIN chain c ON t.id = c.parent_id \
           WHERE c.depth < {MAX_DEPTH} \
         ) SELECT id, parent_id FROM chain"
    );
    let rows = db
        .query_all(crate::db::stmt(
            db.get_database_backend(),
            &sql,
            [Value::from(tenant_id)],
        ))
        .await?;
    let mut parents = HashMap::with_capacity(rows.len());
    for row in rows {
        parents.insert(
            row.try_get::<String>("", "id")?,
            row.try_get::<Option<String>>("", "parent_id")?,
        );
    }
    Ok(tenancy::ancestry(&parents, tenant_id)
        .into_iter()
        .map(str::to_owned)
        .collect())
}

/// `tenant_id` and all its descendants.
pub async fn subtree(db: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<String>, DbErr> {
    let sql = format!(
        "WITH RECURSIVE sub(id, depth) AS ( \
           SELECT id, 0 FROM tenants WHERE id = $1 \
           UNION ALL \
           SELECT t.id, s.depth + 1 FROM tenants t JOIN sub s ON t.parent_id = s.id \
           WHERE s.depth < {MAX_DEPTH} \
         ) SELECT DISTINCT id FROM sub"
    );
    let rows = db
        .query_all(crate::db::stmt(
            db.get_database_backend(),
            &sql,
            [Value::from(tenant_id)],
        ))
        .await?;
    rows.iter().map(|row| row.try_get::<String>("", "id")).collect()
}
