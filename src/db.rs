//! Database connection, migrations and demo seeding for SQLite (embedded) and PostgreSQL.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::config::Settings;

/// The API's pool: `FLEETLOAD_DB_MAX_CONNECTIONS` connections, and a short wait for one so that
/// an exhausted pool answers `SERVICE_BUSY` instead of holding the request.
pub async fn connect(settings: &Settings) -> anyhow::Result<DatabaseConnection> {
    let pool = Pool {
        max_connections: settings.db_max_connections,
        acquire_timeout: Duration::from_secs(settings.db_acquire_timeout_secs.max(1)),
        custom_plans: true,
    };
    connect_with(settings, pool).await
}

/// The pipeline's own pool (dispatcher, workers, webhook), apart from the API's so that no
/// amount of API load takes the connections processing needs.
pub async fn connect_workers(settings: &Settings) -> anyhow::Result<DatabaseConnection> {
    let pool = Pool {
        max_connections: settings.worker_db_max_connections,
        acquire_timeout: Duration::from_secs(30),
        // Planning every execution afresh costs the pipeline's short, frequent statements
        // more than they cost to run (and, with foreign keys, it re-planned a check per
        // inserted row). The one statement whose plan matters, the device lookup, fixes its
        // access path itself (`pipeline::worker::load_devices`).
        custom_plans: false,
    };
    connect_with(settings, pool).await
}

#[derive(Clone, Copy)]
struct Pool {
    max_connections: u32,
    acquire_timeout: Duration,
    /// PostgreSQL: plan every execution of a prepared statement for its parameters.
    custom_plans: bool,
}

/// Connects to `DATABASE_URL`, or to the SQLite file in the data dir.
async fn connect_with(settings: &Settings, pool: Pool) -> anyhow::Result<DatabaseConnection> {
    let url = match &settings.database_url {
        Some(url) => url.expose_secret().to_owned(),
        None => {
            std::fs::create_dir_all(&settings.data_dir)
                .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
            format!("sqlite://{}", settings.sqlite_path().display())
        }
    };
    if url.starts_with("sqlite:") {
        connect_sqlite(&url, pool).await
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        connect_postgres(&url, pool).await
    } else {
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            .sqlx_logging(false);
        sea_orm::Database::connect(options)
            .await
            .context("connecting to the database")
    }
}

async fn connect_postgres(url: &str, pool: Pool) -> anyhow::Result<DatabaseConnection> {
    // Statements are prepared once per connection. A generic plan cached while `devices` was
    // small keeps scanning it whole as it grows to millions of rows; planning each execution
    // against the table as it is now costs a fraction of a millisecond.
    let mut options = PgConnectOptions::from_str(url)?;
    if pool.custom_plans {
        options = options.options([("plan_cache_mode", "force_custom_plan")]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(pool.max_connections.max(2))
        .min_connections(1)
        .acquire_timeout(pool.acquire_timeout)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    Ok(sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
}

async fn connect_sqlite(url: &str, pool: Pool) -> anyhow::Result<DatabaseConnection> {
    // WAL lets readers proceed while one writer commits; the busy timeout makes concurrent
    // writers queue instead of failing. NORMAL sync is durable across process crashes in WAL.
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(pool.max_connections.max(2))
        .acquire_timeout(pool.acquire_timeout)
        .connect_with(options)
        .await
        .context("opening the SQLite database")?;
    Ok(sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
}

/// This process's turn to write to a SQLite database file, held by chunk transactions for
/// their length. SQLite has one writer at a time, and a writer that waits for the lock inside
/// SQLite sleeps in its busy handler's steps (up to 100 ms) after the lock is already free;
/// writers that queue here go the moment the previous one is done. `None` on other
/// databases. Other writers (job claims, the API) still meet SQLite's own lock: taking turns
/// here too measured no gain (`docs/performance.md`).
pub async fn sqlite_write_turn(db: &DatabaseConnection) -> Option<tokio::sync::OwnedMutexGuard<()>> {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Mutex;
    static TURNS: Mutex<BTreeMap<PathBuf, Arc<tokio::sync::Mutex<()>>>> = Mutex::new(BTreeMap::new());
    if db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    let file = db
        .get_sqlite_connection_pool()
        .connect_options()
        .get_filename()
        .to_path_buf();
    let turn = {
        let mut turns = TURNS.lock().unwrap_or_else(|e| e.into_inner());
        turns.entry(file).or_default().clone()
    };
    Some(turn.lock_owned().await)
}

/// How many statements a connection (and every clone of it) has run: an operability metric,
/// and how tests prove a page costs a fixed number of queries whatever its size.
#[derive(Clone, Debug, Default)]
pub struct StatementCounter(Arc<AtomicU64>);

impl StatementCounter {
    /// Counts every statement `db` runs from now on. Call it before cloning the connection:
    /// clones made earlier keep running uncounted.
    pub fn attach(db: &mut DatabaseConnection) -> Self {
        let counter = Self::default();
        let count = counter.0.clone();
        db.set_metric_callback(move |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        counter
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Applies pending migrations. On PostgreSQL an advisory lock makes replicas that start
/// together migrate one after another instead of racing.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    if db.get_database_backend() == DbBackend::Postgres {
        let txn = db.begin().await?;
        txn.execute(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock(7262736401)",
        ))
        .await?;
        Migrator::up(&txn, None).await.context("migrating")?;
        txn.commit().await?;
    } else {
        Migrator::up(db, None).await.context("migrating")?;
    }
    Ok(())
}

/// A raw statement written with PostgreSQL's `$1, $2, …` placeholders, for either backend.
///
/// SQLite reads `$1` as a *named* parameter numbered by first appearance, so a statement
/// that uses `$2` before `$1`, or one twice, would bind the wrong values; its `?NNN` form is
/// positional, so the placeholders are rewritten to it.
pub fn stmt(backend: DbBackend, sql: &str, values: impl IntoIterator<Item = sea_orm::Value>) -> Statement {
    let sql = match backend {
        DbBackend::Sqlite => positional_placeholders(sql),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

fn positional_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::positional_placeholders;

    #[test]
    fn placeholders_become_positional_for_sqlite() {
        assert_eq!(
            positional_placeholders("UPDATE t SET a = a + $2, b = $2 WHERE id = $1 AND s = 'x$'"),
            "UPDATE t SET a = a + ?2, b = ?2 WHERE id = ?1 AND s = 'x$'"
        );
    }
}
