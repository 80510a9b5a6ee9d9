//! The transaction a chunk is applied in. On PostgreSQL it is a `sqlx` transaction on the
//! workers' pool rather than sea-orm's: the chunk's rows go in with `COPY … FROM STDIN`
//! (the heap's multi-insert path, a fraction of a row-by-row `INSERT … SELECT`'s cost), and
//! sea-orm's `DatabaseTransaction` does not lend out its connection. Every other statement
//! still runs through sea-orm's `ConnectionTrait`, implemented here over the same connection,
//! so the queries and the webhook outbox are the same code on both backends.

use std::borrow::Cow;

use sea_orm::sea_query::Values;
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, RuntimeErr, Statement, TransactionTrait,
};
use sea_query_binder::SqlxValues;
use sqlx::Postgres;
use tokio::sync::Mutex;

pub enum ChunkTxn {
    /// SQLite.
    Orm(DatabaseTransaction),
    Postgres(Mutex<sqlx::Transaction<'static, Postgres>>),
}

impl ChunkTxn {
    pub async fn begin(db: &DatabaseConnection) -> Result<Self, DbErr> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(Self::Orm(db.begin().await?));
        }
        // Mapped as sea-orm maps a failed `begin`, so callers see the same errors as before.
        let txn = db
            .get_postgres_connection_pool()
            .begin()
            .await
            .map_err(|e| match e {
                sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
                sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
                e => DbErr::Conn(RuntimeErr::SqlxError(e)),
            })?;
        Ok(Self::Postgres(Mutex::new(txn)))
    }

    pub async fn commit(self) -> Result<(), DbErr> {
        match self {
            Self::Orm(txn) => txn.commit().await,
            Self::Postgres(txn) => txn.into_inner().commit().await.map_err(exec_err),
        }
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        match self {
            Self::Orm(txn) => txn.rollback().await,
            Self::Postgres(txn) => txn.into_inner().rollback().await.map_err(exec_err),
        }
    }

    /// PostgreSQL: runs `statement` (a `COPY … FROM STDIN` in text format) with `data` as its
    /// input; the number of rows copied.
    pub async fn copy_in(&self, statement: &str, data: Vec<u8>) -> Result<u64, DbErr> {
        let Self::Postgres(txn) = self else {
            return Err(DbErr::Custom("COPY needs PostgreSQL".into()));
        };
        let mut txn = txn.lock().await;
        let mut copy = txn.copy_in_raw(statement).await.map_err(exec_err)?;
        if let Err(e) = copy.send(data).await {
            // The connection is unusable now; the transaction fails with it.
            let _ = copy.abort(e.to_string()).await;
            return Err(exec_err(e));
        }
        copy.finish().await.map_err(exec_err)
    }
}

/// Whether `err` is PostgreSQL refusing a duplicate key (SQLSTATE 23505).
pub fn is_unique_violation(err: &DbErr) -> bool {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(e)))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(e))) => {
            e.code() == Some(Cow::Borrowed("23505"))
        }
        _ => false,
    }
}

fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(e))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e))
}

/// A statement bound as sea-orm binds it, so it is prepared and cached the same way.
fn query(stmt: &Statement) -> sqlx::query::Query<'_, Postgres, SqlxValues> {
    let values = stmt.values.clone().unwrap_or(Values(Vec::new()));
    sqlx::query_with(&stmt.sql, SqlxValues(values))
}

#[async_trait::async_trait]
impl ConnectionTrait for ChunkTxn {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Self::Orm(txn) => txn.get_database_backend(),
            Self::Postgres(_) => DbBackend::Postgres,
        }
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Self::Orm(txn) => txn.execute(stmt).await,
            Self::Postgres(txn) => {
                let mut txn = txn.lock().await;
                let done = query(&stmt).execute(&mut **txn).await.map_err(exec_err)?;
                Ok(done.into())
            }
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Self::Orm(txn) => txn.execute_unprepared(sql).await,
            Self::Postgres(txn) => {
                let mut txn = txn.lock().await;
                // No arguments: the simple query protocol, as sea-orm runs it (several
                // statements may share it).
                let done = sqlx::Executor::execute(&mut **txn, sql).await.map_err(exec_err)?;
                Ok(done.into())
            }
        }
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Self::Orm(txn) => txn.query_one(stmt).await,
            Self::Postgres(txn) => {
                let mut txn = txn.lock().await;
                let row = query(&stmt).fetch_optional(&mut **txn).await.map_err(query_err)?;
                Ok(row.map(Into::into))
            }
        }
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Orm(txn) => txn.query_all(stmt).await,
            Self::Postgres(txn) => {
                let mut txn = txn.lock().await;
                let rows = query(&stmt).fetch_all(&mut **txn).await.map_err(query_err)?;
                Ok(rows.into_iter().map(Into::into).collect())
            }
        }
    }
}

/// Appends a value in `COPY`'s text format: `\N` for NULL (and, as the `NULLIF(…, '')` of
/// the statements it replaces, for an empty string when `empty_is_null`), else the text
/// with backslash, tab, newline and carriage return escaped.
pub fn push_copy_text(buf: &mut String, value: Option<&str>, empty_is_null: bool) {
    let Some(value) = value.filter(|v| !(empty_is_null && v.is_empty())) else {
        buf.push_str("\\N");
        return;
    };
    if !value.contains(['\\', '\t', '\n', '\r']) {
        buf.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_copy_text;

    fn text(value: Option<&str>, empty_is_null: bool) -> String {
        let mut buf = String::new();
        push_copy_text(&mut buf, value, empty_is_null);
        buf
    }

    #[test]
    fn copy_text_escapes_what_would_end_a_field_or_row() {
        assert_eq!(text(Some("356938035643809"), false), "356938035643809");
        assert_eq!(text(Some("a\\b\tc\nd\re"), false), "a\\\\b\\tc\\nd\\re");
        assert_eq!(text(Some("\\N"), false), "\\\\N");
        assert_eq!(text(None, false), "\\N");
        assert_eq!(text(Some(""), false), "");
        assert_eq!(text(Some(""), true), "\\N");
        assert_eq!(text(Some("é ✓"), true), "é ✓");
    }
}
