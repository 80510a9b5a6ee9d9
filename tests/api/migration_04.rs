//! Migration m20261201_000004 on a database that already has data: catalog entries get the
//! root of their owner's tree (a workspace's action belongs to its customer), uploads that
//! ended with failures before it get their error report queued (and the builder builds it),
//! and one already generated is READY.

use chrono::Utc;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait, Statement};

use crate::helpers::*;

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn upgrade_with_data(db: DatabaseConnection, storage_dir: &std::path::Path) {
    // Everything up to the migration before this one.
    Migrator::up(&db, Some(3)).await.unwrap();
    let now = Utc::now().to_rfc3339();
    exec(&db, &format!("INSERT INTO tenants (id, name, parent_id, created_at) VALUES ('demo', 'Demo', NULL, '{now}'), ('demo-east', 'East', 'demo', '{now}'), ('acme', 'Acme', NULL, '{now}')")).await;
    exec(&db, &format!("INSERT INTO actions (id, tenant_id, name, kind, target_service_type, created_at) VALUES ('register-prepaid', 'demo', 'R', 'REGISTER', 2, '{now}'), ('east-exit', 'demo-east', 'E', 'EXIT_WORKFLOW', NULL, '{now}'), ('acme-deregister', 'acme', 'D', 'DEREGISTER', NULL, '{now}')")).await;
    exec(&db, &format!("INSERT INTO workflows (id, tenant_id, name, service_type, created_at) VALUES ('68a5ae7a4cb9e87b88b7d344', 'demo-east', 'W', 2, '{now}')")).await;
    for (public, status, failed, key) in [
        ("u-failed", "COMPLETED_WITH_ERRORS", 1, "NULL"),
        ("u-cancelled", "CANCELLED", 2, "NULL"),
        ("u-built", "COMPLETED_WITH_ERRORS", 1, "'reports/x-errors.csv'"),
        ("u-clean", "COMPLETED", 0, "NULL"),
        ("u-running", "PROCESSING", 1, "NULL"),
    ] {
        exec(&db, &format!(
            "INSERT INTO uploads (public_id, tenant_id, target_tenant_id, created_by, device_type, action_id, action_kind, \
             declared_row_count, object_key, status, total_rows, processed_rows, succeeded, failed, created_at, updated_at, error_report_key) \
             VALUES ('{public}', 'demo', 'demo', 'alice', 1, 'register-prepaid', 'REGISTER', 2, 'uploads/{public}.csv', '{status}', 2, 2, {ok}, {failed}, '{now}', '{now}', {key})",
            ok = 2 - failed,
        )).await;
    }

    Migrator::up(&db, None).await.unwrap();

    let actions = entity::prelude::Action::find().all(&db).await.unwrap();
    let mut roots: Vec<(String, String)> = actions.into_iter().map(|a| (a.id, a.root_tenant_id)).collect();
    roots.sort();
    assert_eq!(
        roots,
        [
            ("acme-deregister", "acme"),
            ("east-exit", "demo"),
            ("register-prepaid", "demo")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let workflows = entity::prelude::Workflow::find().all(&db).await.unwrap();
    assert_eq!(
        workflows
            .iter()
            .map(|w| (w.root_tenant_id.as_str(), w.tenant_id.as_str()))
            .collect::<Vec<_>>(),
        [("demo", "demo-east")]
    );

    let mut uploads = entity::prelude::Upload::find().all(&db).await.unwrap();
    uploads.sort_by(|a, b| a.public_id.cmp(&b.public_id));
    let states: Vec<(&str, Option<entity::upload::ReportStatus>, bool)> = uploads
        .iter()
        .map(|u| (u.public_id.as_str(), u.report_status, u.report_due_at.is_some()))
        .collect();
    use entity::upload::ReportStatus::*;
    assert_eq!(
        states,
        [
            ("u-built", Some(Ready), false),
            ("u-cancelled", Some(Pending), true),
            ("u-clean", None, false),
            ("u-failed", Some(Pending), true),
            ("u-running", None, false),
        ]
    );

    // The queued ones are due now: a builder takes them (oldest due first), one at a time.
    let storage = std::sync::Arc::new(
        fleetload::storage::LocalStore::new(
            storage_dir.to_path_buf(),
            &url::Url::parse("http://127.0.0.1:1/").unwrap(),
            secrecy::SecretString::from("s".repeat(32)),
        )
        .unwrap(),
    );
    let builder = fleetload::uploads::ReportBuilder::new(db.clone(), storage);
    let mut claimed = Vec::new();
    while let Some((id, attempt)) = builder.claim().await.unwrap() {
        assert_eq!(attempt, 1);
        claimed.push(id);
    }
    claimed.sort();
    let mut want: Vec<i64> = uploads
        .iter()
        .filter(|u| u.report_status == Some(Pending))
        .map(|u| u.id)
        .collect();
    want.sort();
    assert_eq!(claimed, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_a_sqlite_database_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("db.sqlite").display());
    let db = Database::connect(url).await.unwrap();
    upgrade_with_data(db, &dir.path().join("objects")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_a_postgres_database_with_data() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(pg.url.clone()).await.unwrap();
    upgrade_with_data(db.clone(), dir.path()).await;
    db.close().await.unwrap();
}
