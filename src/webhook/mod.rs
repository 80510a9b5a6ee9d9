//! The completion webhook: when an upload reaches a terminal state, a signed JSON summary is
//! POSTed to the configured URL.
//!
//! The call is written as a job in the same transaction as the terminal state (an outbox),
//! so no crash loses it, and a separate loop delivers it with retries, so a slow or failing
//! receiver never holds up processing. Delivery is at least once: receivers dedupe on
//! `X-Fleetload-Delivery`.

mod deliver;
mod signature;

pub use deliver::{Summary, WebhookDeliverer};
pub use signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify};

use sea_orm::{ConnectionTrait, DbErr};

use crate::queue::{self, JobPayload};

/// Queue of webhook calls on the job table.
pub const WEBHOOK_QUEUE: &str = "webhooks";
/// Calls before one is given up: with the backoff of [`deliver`], about half an hour.
pub const MAX_ATTEMPTS: u32 = 12;

/// Where terminal states queue their webhook call; a no-op when no webhook is configured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outbox {
    enabled: bool,
}

impl Outbox {
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    /// Queues the call for `upload_id`. Run it in the transaction that made the upload
    /// terminal, so the call exists exactly when the state does.
    pub async fn upload_finished(&self, conn: &impl ConnectionTrait, upload_id: i64) -> Result<(), DbErr> {
        if self.enabled {
            queue::enqueue_with(
                conn,
                WEBHOOK_QUEUE,
                &JobPayload::NotifyWebhook { upload_id },
                MAX_ATTEMPTS,
            )
            .await?;
        }
        Ok(())
    }
}
