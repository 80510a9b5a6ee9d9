//! What every request handler shares; cheap to clone, no per-replica state inside.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::auth::Verifier;
use crate::carrier::SecretBox;
use crate::config::Settings;
use crate::progress::{ProgressBus, ProgressHub};
use crate::storage::ObjectStore;
use crate::webhook::Outbox;

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub storage: Arc<dyn ObjectStore>,
    pub verifier: Arc<Verifier>,
    pub settings: Arc<Settings>,
    /// Where this process hears that an upload changed.
    pub progress: Arc<ProgressBus>,
    /// Where terminal states queue their webhook call.
    pub outbox: Outbox,
    /// Statements run on `db` so far.
    pub statements: crate::db::StatementCounter,
    /// The one reader per watched upload that subscriptions of this process share.
    pub hub: Arc<ProgressHub>,
    /// This process's WebSocket connections: their caps and the shutdown signal.
    pub websockets: Arc<crate::websocket::registry::Registry>,
    /// Seals and opens carrier accounts' client secrets; `None` on a shared database started
    /// without `--carrier-secret-key`, where carrier account writes are refused.
    pub carrier_secrets: Option<Arc<SecretBox>>,
}
