//! Delivers queued webhook calls: one POST per finished upload, retried with backoff until
//! the receiver answers 2xx or the attempts run out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::prelude::*;
use entity::upload::{self, UploadStatus};
use sea_orm::{DatabaseConnection, EntityTrait};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use super::{MAX_ATTEMPTS, SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_QUEUE, sign};
use crate::pipeline::Step;
use crate::queue::{DbQueue, Delivery, JobPayload, Queue, QueueError};

/// The JSON body of a call: what an upload ended with.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Always `upload.finished`.
    pub event: String,
    pub upload_id: String,
    pub tenant_id: String,
    pub target_workspace_id: String,
    pub status: UploadStatus,
    pub assign_action_id: String,
    pub total_rows: Option<i32>,
    pub processed_rows: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub failure_reason: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<&upload::Model> for Summary {
    fn from(u: &upload::Model) -> Self {
        Self {
            event: "upload.finished".into(),
            upload_id: u.public_id.clone(),
            tenant_id: u.tenant_id.clone(),
            target_workspace_id: u.target_tenant_id.clone(),
            status: u.status,
            assign_action_id: u.action_id.clone(),
            total_rows: u.total_rows,
            processed_rows: u.processed_rows,
            succeeded: u.succeeded,
            failed: u.failed,
            failure_reason: u.failure_reason.clone(),
            created_by: u.created_by.clone(),
            created_at: u.created_at,
            started_at: u.started_at,
            finished_at: u.finished_at,
        }
    }
}

pub struct WebhookDeliverer {
    db: DatabaseConnection,
    queue: DbQueue,
    client: reqwest::Client,
    url: Url,
    secret: SecretString,
    timeout: Duration,
}

/// Why one call did not succeed.
enum CallError {
    /// Worth another attempt later (network, timeout, 5xx, 429, …).
    Retry(String),
    /// Nothing to send any more.
    Drop(String),
}

impl WebhookDeliverer {
    pub fn new(
        db: DatabaseConnection,
        url: Url,
        secret: SecretString,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("fleetload/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            queue: DbQueue::new(db.clone(), WEBHOOK_QUEUE, MAX_ATTEMPTS),
            db,
            client,
            url,
            secret,
            timeout,
        })
    }

    /// Makes one queued call, if any is due.
    pub async fn try_deliver_next(&self) -> Result<Step, QueueError> {
        // The lease outlasts the call's timeout, so a call in flight is never made twice.
        let lease = self.timeout * 2 + Duration::from_secs(5);
        let Some(delivery) = self.queue.receive(1, lease, Duration::ZERO).await?.pop() else {
            return Ok(Step::Empty);
        };
        let span = crate::telemetry::upload_span(
            &self.db,
            "webhook",
            delivery.payload.upload_id(),
            delivery.traceparent.as_deref(),
        )
        .await;
        self.settle(delivery).instrument(span).await?;
        Ok(Step::Done)
    }

    /// Makes the call of `delivery` and settles its job by the answer.
    async fn settle(&self, delivery: Delivery) -> Result<(), QueueError> {
        match self.call(&delivery).await {
            Ok(()) => {
                self.queue.ack(&delivery).await?;
                crate::metrics::webhook_delivery("delivered");
            }
            Err(CallError::Drop(reason)) => {
                tracing::warn!(%reason, "webhook call dropped");
                self.queue.dead_letter(&delivery, &reason).await?;
                crate::metrics::webhook_delivery("dropped");
                crate::metrics::job_dead_lettered("webhook");
            }
            Err(CallError::Retry(reason)) if delivery.attempt < self.queue.max_attempts() => {
                tracing::warn!(attempt = delivery.attempt, %reason, "webhook call failed, will retry");
                self.queue
                    .retry(&delivery, backoff(delivery.attempt), &reason)
                    .await?;
                crate::metrics::webhook_delivery("retried");
                crate::metrics::job_retried("webhook");
            }
            Err(CallError::Retry(reason)) => {
                tracing::error!(attempt = delivery.attempt, %reason, "webhook call given up");
                self.queue.dead_letter(&delivery, &reason).await?;
                crate::metrics::webhook_delivery("given_up");
                crate::metrics::job_dead_lettered("webhook");
            }
        }
        Ok(())
    }

    async fn call(&self, delivery: &Delivery) -> Result<(), CallError> {
        let JobPayload::NotifyWebhook { upload_id } = &delivery.payload else {
            return Err(CallError::Drop("not a webhook job".into()));
        };
        let upload = Upload::find_by_id(*upload_id)
            .one(&self.db)
            .await
            .map_err(|e| CallError::Retry(format!("database: {e}")))?
            .ok_or_else(|| CallError::Drop(format!("upload {upload_id} no longer exists")))?;
        let body = serde_json::to_vec(&Summary::from(&upload)).map_err(|e| CallError::Drop(e.to_string()))?;
        let timestamp = Utc::now().timestamp();
        let signature = sign(self.secret.expose_secret().as_bytes(), timestamp, &body);
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-fleetload-event", "upload.finished")
            .header("x-fleetload-delivery", upload.public_id.as_str())
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| CallError::Retry(format!("sending: {e}")))?;
        let status = response.status();
        if status.is_success() {
            tracing::info!(status = status.as_u16(), "webhook delivered");
            Ok(())
        } else {
            Err(CallError::Retry(format!("receiver answered {status}")))
        }
    }

    /// Delivers until `shutdown`, pausing while nothing is due.
    pub async fn run(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let pause = match self.try_deliver_next().await {
                Ok(Step::Done) => continue,
                Ok(Step::Empty) => Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook queue unavailable");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {},
                () = shutdown.cancelled() => break,
            }
        }
    }
}

/// 1 s, 2 s, 4 s, … up to 10 min between calls.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(10)).min(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(20), Duration::from_secs(600));
    }
}
