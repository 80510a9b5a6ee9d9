//! "Upload N changed": published after every commit that moves an upload, heard by the
//! subscriptions of this process. Carries only the id; listeners read the state themselves.
//!
//! On PostgreSQL the signal goes through `pg_notify` instead, because the process that commits
//! a chunk (a `fleetload worker`, or another API replica) is rarely the one holding the
//! subscriber's WebSocket; every API process keeps one `LISTEN` connection ([`ProgressListener`])
//! and forwards what it hears to its own broadcast. Notifications are best effort: they carry
//! no state, and the hub's once-a-second re-read of a processing upload covers a lost one.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The PostgreSQL channel every replica listens on.
pub const CHANNEL: &str = "fleetload_progress";

/// How many change signals a slow listener may fall behind before it skips to "something
/// changed" (it then re-reads the upload anyway, so nothing is lost).
const BACKLOG: usize = 1024;

/// What a listener hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This upload (internal id) may have moved.
    Upload(i64),
    /// Signals may have been lost (a lagging receiver, a re-established `LISTEN`): any
    /// upload may have moved.
    Unknown,
}

pub struct ProgressBus {
    local: broadcast::Sender<Change>,
    /// Where `changed` notifies, when other processes must hear it.
    postgres: Option<PgPool>,
}

impl ProgressBus {
    /// A bus heard only inside this process (the embedded default runs everything in one).
    pub fn local() -> Self {
        Self {
            local: broadcast::channel(BACKLOG).0,
            postgres: None,
        }
    }

    /// A bus whose signals reach every process on this database: through `pg_notify` on
    /// PostgreSQL, in-process otherwise.
    pub fn for_database(db: &sea_orm::DatabaseConnection) -> Self {
        use sea_orm::ConnectionTrait;
        match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => Self {
                local: broadcast::channel(BACKLOG).0,
                postgres: Some(db.get_postgres_connection_pool().clone()),
            },
            _ => Self::local(),
        }
    }

    /// Tells every listener that `upload_id` changed. Never fails the caller: progress is
    /// advisory, the database stays the truth.
    pub async fn changed(&self, upload_id: i64) {
        match &self.postgres {
            // The local listener hears its own NOTIFY too, so one path serves every replica.
            Some(pool) => {
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(upload_id.to_string())
                    .execute(pool)
                    .await;
                if let Err(err) = sent {
                    tracing::warn!(upload_pk = upload_id, error = %err, "could not notify progress");
                }
            }
            // No receiver is not an error: nobody is watching.
            None => {
                let _ = self.local.send(Change::Upload(upload_id));
            }
        }
    }

    /// Change signals from now on, for all uploads.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.local.subscribe()
    }

    /// Starts this process's one `LISTEN` connection (PostgreSQL only; `None` elsewhere),
    /// forwarding notifications to the local broadcast. Returns once listening, so that a
    /// change committed after this returns is heard.
    pub async fn listen(&self) -> Result<Option<ProgressListener>, sqlx::Error> {
        let Some(pool) = &self.postgres else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        let local = self.local.clone();
        let pool = pool.clone();
        let task = tokio::spawn(async move { forward(listener, pool, local).await });
        Ok(Some(ProgressListener(task)))
    }
}

/// The running `LISTEN` of a process; stops listening when dropped.
pub struct ProgressListener(JoinHandle<()>);

impl Drop for ProgressListener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn forward(mut listener: PgListener, pool: PgPool, local: broadcast::Sender<Change>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.payload().parse() {
                Ok(id) => {
                    let _ = local.send(Change::Upload(id));
                }
                Err(_) => tracing::warn!(payload = notification.payload(), "odd progress notification"),
            },
            // sqlx re-connected and re-issued LISTEN; what was sent meanwhile is gone.
            Ok(None) => {
                tracing::warn!("progress LISTEN connection was lost and re-established");
                let _ = local.send(Change::Unknown);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "progress LISTEN failed; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                // A fresh listener: the old one may hold a broken connection or a closed pool.
                listener = loop {
                    match reconnect(&pool).await {
                        Ok(listener) => break listener,
                        Err(sqlx::Error::PoolClosed) => return,
                        Err(err) => {
                            tracing::warn!(error = %err, "progress LISTEN reconnect failed");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                    }
                };
                let _ = local.send(Change::Unknown);
            }
        }
    }
}

async fn reconnect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
