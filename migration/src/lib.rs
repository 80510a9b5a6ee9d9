//! Database migrations of fleetload; the same files run on SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_tables;
mod m20261123_000002_create_upload_chunks;
mod m20261124_000001_add_error_report_key;
/// Public so a test can run its backfill again on jobs queued in the old shape: the migration
/// after it cannot be reverted, so `Migrator::down` no longer reaches it.
pub mod m20261201_000003_job_settlement;
mod m20261201_000004_reports_chunks_catalog;
mod m20261201_000005_hot_tables_without_foreign_keys;
mod m20261201_000006_job_trace_context;
mod m20261201_000007_multipart_uploads;
mod m20261201_000008_carrier_accounts;
mod m20261201_000009_carrier_actions;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_tables::Migration),
            Box::new(m20261123_000002_create_upload_chunks::Migration),
            Box::new(m20261124_000001_add_error_report_key::Migration),
            Box::new(m20261201_000003_job_settlement::Migration),
            Box::new(m20261201_000004_reports_chunks_catalog::Migration),
            Box::new(m20261201_000005_hot_tables_without_foreign_keys::Migration),
            Box::new(m20261201_000006_job_trace_context::Migration),
            Box::new(m20261201_000007_multipart_uploads::Migration),
            Box::new(m20261201_000008_carrier_accounts::Migration),
            Box::new(m20261201_000009_carrier_actions::Migration),
        ]
    }
}
