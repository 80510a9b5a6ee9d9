//! PostgreSQL: the two tables every processed row is written to, `devices` and
//! `batch_results`, lose their foreign keys. A foreign key is checked by a trigger per
//! inserted row; measured on the pipeline's chunk transaction, those checks cost about a third
//! of the inserts (`docs/performance.md`). What they guarded is guarded where the rows are
//! written: a chunk's transaction reads its upload (which must exist and be PROCESSING)
//! before it inserts results, and devices are created only for the upload's target tenant,
//! checked when the upload is prepared; neither uploads nor tenants are ever deleted.
//!
//! SQLite keeps them: its check is an in-process index probe that costs little, and
//! dropping a constraint there means rebuilding the table.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The foreign keys dropped, and how `down` puts them back.
const KEYS: [(&str, &str, &str); 2] = [
    ("devices", "tenant_id", "REFERENCES tenants (id)"),
    (
        "batch_results",
        "upload_id",
        "REFERENCES uploads (id) ON DELETE CASCADE",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for (table, column, _) in KEYS {
            // Named by PostgreSQL when the table was created; found rather than assumed.
            let rows = db
                .query_all(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT c.conname FROM pg_constraint c \
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) \
                     WHERE c.conrelid = $1::regclass AND c.contype = 'f' AND a.attname = $2",
                    [table.into(), column.into()],
                ))
                .await?;
            for row in rows {
                let name: String = row.try_get("", "conname")?;
                db.execute_unprepared(&format!("ALTER TABLE {table} DROP CONSTRAINT \"{name}\""))
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for (table, column, target) in KEYS {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} ADD FOREIGN KEY ({column}) {target}"
            ))
            .await?;
        }
        Ok(())
    }
}
