//! The SQS queue: a job is a message, its lease the visibility timeout, its attempt
//! SQS's receive count. The queue's redrive policy decides when SQS gives up on a message
//! and where it goes (the dead-letter queue, which `rescue` drains).

use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};

use super::{DEFAULT_MAX_ATTEMPTS, DeadJob, Delivery, JobPayload, MAX_LEASE, Queue, QueueError, QueueStats};
use crate::telemetry::TRACEPARENT;

/// Largest message body sent, and the largest sum of bodies in one batch: SQS's classic
/// limit (queues may be configured lower, which [`SqsQueue::new`] reads; AWS now allows up
/// to 1 MiB on queues configured for it, which fleetload does not rely on).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Entries per SendMessageBatch / DeleteMessageBatch and messages per ReceiveMessage.
const BATCH_ENTRIES: usize = 10;
/// Longest long poll SQS allows.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// Sends of a batch whose entries failed (throttling, internal errors), first pause after.
const SEND_ATTEMPTS: u32 = 4;
const SEND_BACKOFF: Duration = Duration::from_millis(100);
/// How long a message `rescue` took from the dead-letter queue stays hidden: if the process
/// dies before deleting it, it is rescued again after this.
const RESCUE_VISIBILITY_SECS: i32 = 30;
/// ReceiveMessage calls per `rescue`, so one call stays short however full the DLQ is.
const RESCUE_ROUNDS: usize = 10;

/// A standard SQS queue and, when its redrive policy names one, its dead-letter queue.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dlq_url: Option<String>,
    max_attempts: u32,
    /// Largest body this queue takes: its `MaximumMessageSize`, at most [`MAX_MESSAGE_BYTES`].
    max_bytes: usize,
}

impl SqsQueue {
    /// Connects to `queue_url` (through `endpoint` when set, e.g. a local SQS-compatible
    /// server) and reads its redrive policy: `maxReceiveCount` becomes [`Queue::max_attempts`]
    /// and the policy's dead-letter queue the one `dead_letter` and `rescue` use. The
    /// queue's `MaximumMessageSize` lowers the size limit of `send` if it is below 256 KiB.
    pub async fn new(
        sdk: &aws_config::SdkConfig,
        queue_url: String,
        endpoint: Option<&url::Url>,
    ) -> Result<Self, QueueError> {
        let mut builder = aws_sdk_sqs::config::Builder::from(sdk);
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        let client = aws_sdk_sqs::Client::from_conf(builder.build());

        let attributes = client
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .send()
            .await
            .map_err(sqs_error)?;
        let attributes = attributes.attributes();
        let max_bytes = attributes
            .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
            .and_then(|n| n.parse::<usize>().ok())
            .map_or(MAX_MESSAGE_BYTES, |n| n.min(MAX_MESSAGE_BYTES));
        let policy = attributes
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .filter(|p| !p.trim().is_empty());
        let Some(policy) = policy else {
            tracing::warn!(
                queue_url,
                "SQS queue has no redrive policy: jobs are retried {DEFAULT_MAX_ATTEMPTS} times, \
                 then deleted with an error log instead of kept in a dead-letter queue"
            );
            return Ok(Self {
                client,
                queue_url,
                dlq_url: None,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                max_bytes,
            });
        };
        let policy = RedrivePolicy::parse(policy)
            .map_err(|why| QueueError::Sqs(format!("redrive policy of {queue_url}: {why}")))?;
        let mut lookup = client.get_queue_url().queue_name(&policy.dlq_name);
        if let Some(account) = &policy.dlq_account {
            lookup = lookup.queue_owner_aws_account_id(account);
        }
        let dlq_url = lookup
            .send()
            .await
            .map_err(sqs_error)?
            .queue_url()
            .map(str::to_owned)
            .ok_or_else(|| QueueError::Sqs(format!("no URL for dead-letter queue {}", policy.dlq_name)))?;
        Ok(Self {
            client,
            queue_url,
            dlq_url: Some(dlq_url),
            max_attempts: policy.max_receive_count,
            max_bytes,
        })
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The redrive policy's dead-letter queue, if there is one.
    pub fn dead_letter_queue_url(&self) -> Option<&str> {
        self.dlq_url.as_deref()
    }

    /// Sends one batch, re-sending the entries SQS failed (they carry their index in
    /// `bodies` as id) a few times before giving up. Each message carries the sender's
    /// trace context as a message attribute, where SQS consumers look for it.
    async fn send_batch(
        &self,
        bodies: &[String],
        traceparent: Option<&MessageAttributeValue>,
        mut pending: Vec<usize>,
    ) -> Result<(), QueueError> {
        let mut pause = SEND_BACKOFF;
        for attempt in 1..=SEND_ATTEMPTS {
            let entries = pending
                .iter()
                .map(|&i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&bodies[i])
                        .set_message_attributes(
                            traceparent.map(|t| [(TRACEPARENT.to_owned(), t.clone())].into()),
                        )
                        .build()
                        .map_err(|e| QueueError::Sqs(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(sqs_error)?;
            let failed = out.failed();
            if failed.is_empty() {
                return Ok(());
            }
            let first = &failed[0];
            let why = format!(
                "{} of {} messages not sent, e.g. {}: {}",
                failed.len(),
                pending.len(),
                first.code(),
                first.message().unwrap_or_default()
            );
            // The request itself was wrong: sending it again cannot help.
            if failed.iter().any(|f| f.sender_fault()) || attempt == SEND_ATTEMPTS {
                return Err(QueueError::Sqs(why));
            }
            tracing::warn!(attempt, "SendMessageBatch: {why}; sending those again");
            pending = failed.iter().filter_map(|f| f.id().parse().ok()).collect();
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        Ok(())
    }

    /// A message of `queue_url` as a delivery; one whose body is not a job is moved to the
    /// dead-letter queue (or deleted, without one), since no consumer will ever read it.
    async fn delivery(&self, message: &Message) -> Result<Option<Delivery>, QueueError> {
        let Some(receipt) = message.receipt_handle() else {
            tracing::error!(message_id = ?message.message_id(), "SQS message without a receipt handle");
            return Ok(None);
        };
        let body = message.body().unwrap_or_default();
        match serde_json::from_str::<JobPayload>(body) {
            Ok(payload) => Ok(Some(Delivery {
                handle: receipt.to_owned(),
                payload,
                attempt: receive_count(message),
                traceparent: message
                    .message_attributes()
                    .and_then(|attributes| attributes.get(TRACEPARENT))
                    .and_then(MessageAttributeValue::string_value)
                    .map(str::to_owned),
            })),
            Err(err) => {
                let error = format!("undecodable message body: {err}");
                tracing::error!(message_id = ?message.message_id(), %error, "dead-lettering an SQS message");
                // On failure it comes back after the visibility timeout and is tried again;
                // the messages received with it are still handed out.
                if let Err(bury) = self.bury(receipt, body, &error).await {
                    tracing::error!(message_id = ?message.message_id(), error = %bury, "could not dead-letter an undecodable message");
                }
                Ok(None)
            }
        }
    }

    /// Moves a received message's `body` to the dead-letter queue, or deletes it.
    async fn bury(&self, receipt: &str, body: &str, error: &str) -> Result<(), QueueError> {
        match &self.dlq_url {
            Some(dlq) => {
                // Sent before the delete: a crash in between leaves a copy, not nothing.
                self.client
                    .send_message()
                    .queue_url(dlq)
                    .message_body(body)
                    .send()
                    .await
                    .map_err(sqs_error)?;
            }
            None => tracing::error!(
                queue_url = self.queue_url,
                error,
                body = preview(body),
                "no dead-letter queue: job deleted"
            ),
        }
        self.delete(receipt).await
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.delete_from(&self.queue_url, receipt).await
    }

    async fn delete_from(&self, queue_url: &str, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(())
    }

    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(whole_seconds_up(timeout))
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(())
    }

    /// One round of `rescue`: up to ten dead letters, deleted; the decodable ones whose
    /// delete succeeded are returned. `None` when the DLQ answered with nothing.
    async fn rescue_round(&self, dlq: &str) -> Result<Option<Vec<JobPayload>>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(BATCH_ENTRIES as i32)
            .visibility_timeout(RESCUE_VISIBILITY_SECS)
            .wait_time_seconds(0)
            .send()
            .await
            .map_err(sqs_error)?;
        let messages = out.messages();
        if messages.is_empty() {
            return Ok(None);
        }
        let mut decoded = Vec::with_capacity(messages.len());
        let mut entries = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            let Some(receipt) = message.receipt_handle() else {
                continue;
            };
            let body = message.body().unwrap_or_default();
            match serde_json::from_str::<JobPayload>(body) {
                Ok(payload) => decoded.push((i.to_string(), payload)),
                // Nothing to fail for it; the log keeps the body for an operator.
                Err(err) => {
                    tracing::error!(body = preview(body), error = %err, "undecodable dead letter; deleted")
                }
            }
            entries.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .map_err(|e| QueueError::Sqs(e.to_string()))?,
            );
        }
        let deleted = self
            .client
            .delete_message_batch()
            .queue_url(dlq)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_error)?;
        // A dead letter whose delete failed comes back after the visibility timeout; it is
        // returned then, so that each is returned once.
        for failed in deleted.failed() {
            tracing::warn!(code = failed.code(), message = ?failed.message(), "dead letter not deleted; rescued later");
        }
        let failed: Vec<&str> = deleted.failed().iter().map(|f| f.id()).collect();
        Ok(Some(
            decoded
                .into_iter()
                .filter(|(id, _)| !failed.contains(&id.as_str()))
                .map(|(_, payload)| payload)
                .collect(),
        ))
    }
}

#[async_trait::async_trait]
impl Queue for SqsQueue {
    async fn send(&self, jobs: &[JobPayload]) -> Result<(), QueueError> {
        let traceparent = crate::telemetry::traceparent();
        // SQS counts an attribute's name, type and value in the message's size.
        let attribute_bytes = traceparent
            .as_ref()
            .map_or(0, |t| TRACEPARENT.len() + "String".len() + t.len());
        let traceparent = traceparent
            .map(|t| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(t)
                    .build()
                    .map_err(|e| QueueError::Sqs(e.to_string()))
            })
            .transpose()?;
        // Every body is checked before any is sent, so a refused send sends nothing.
        let bodies = jobs
            .iter()
            .map(|job| {
                let body = serde_json::to_string(job)?;
                if body.len() + attribute_bytes > self.max_bytes {
                    return Err(QueueError::TooLarge {
                        key: job.dedupe_key(),
                        bytes: body.len() + attribute_bytes,
                        limit: self.max_bytes,
                    });
                }
                Ok(body)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A batch holds at most ten messages and at most 256 KiB of them all together (the
        // batch limit stays at SQS's even on a queue that takes less per message).
        let mut batch = Vec::with_capacity(BATCH_ENTRIES);
        let mut bytes = 0;
        for (i, body) in bodies.iter().enumerate() {
            let size = body.len() + attribute_bytes;
            if !batch.is_empty() && (batch.len() == BATCH_ENTRIES || bytes + size > MAX_MESSAGE_BYTES) {
                self.send_batch(&bodies, traceparent.as_ref(), std::mem::take(&mut batch))
                    .await?;
                bytes = 0;
            }
            bytes += size;
            batch.push(i);
        }
        if !batch.is_empty() {
            self.send_batch(&bodies, traceparent.as_ref(), batch).await?;
        }
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let visibility = whole_seconds_up(lease);
        // Rounded down: never waits longer than asked; under a second is a short poll.
        let mut wait_secs = wait.min(MAX_WAIT).as_secs() as i32;
        let mut deliveries = Vec::new();
        while deliveries.len() < max {
            let n = (max - deliveries.len()).min(BATCH_ENTRIES);
            let out = self
                .client
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(n as i32)
                .visibility_timeout(visibility)
                .wait_time_seconds(wait_secs)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_attribute_names(TRACEPARENT)
                .send()
                .await
                .map_err(sqs_error)?;
            let messages = out.messages();
            for message in messages {
                if let Some(delivery) = self.delivery(message).await? {
                    deliveries.push(delivery);
                }
            }
            // Fewer than asked: the queue has no more at hand. Otherwise top up without
            // waiting, so the first messages are not held back.
            if messages.len() < n {
                break;
            }
            wait_secs = 0;
        }
        Ok(deliveries)
    }

    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<(), QueueError> {
        self.set_visibility(&delivery.handle, lease).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.delete(&delivery.handle).await
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration, error: &str) -> Result<(), QueueError> {
        // With a DLQ, SQS moves the message there itself once maxReceiveCount is used up;
        // without one it would come back forever.
        if self.dlq_url.is_none() && delivery.attempt >= self.max_attempts {
            return self.dead_letter(delivery, error).await;
        }
        tracing::debug!(attempt = delivery.attempt, error, "job retried after {delay:?}");
        self.set_visibility(&delivery.handle, delay).await
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<(), QueueError> {
        let body = serde_json::to_string(&delivery.payload)?;
        self.bury(&delivery.handle, &body, error).await
    }

    async fn rescue(&self) -> Result<Vec<JobPayload>, QueueError> {
        let Some(dlq) = &self.dlq_url else {
            return Ok(Vec::new());
        };
        let mut rescued = Vec::new();
        for _ in 0..RESCUE_ROUNDS {
            match self.rescue_round(dlq).await? {
                Some(payloads) => rescued.extend(payloads),
                None => break,
            }
        }
        Ok(rescued)
    }

    fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Visible again at once. SQS cannot take back the receive it counted.
    async fn release(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.set_visibility(&delivery.handle, Duration::ZERO).await
    }

    async fn dead_jobs(&self) -> Result<Vec<DeadJob>, QueueError> {
        let Some(dlq) = &self.dlq_url else {
            return Ok(Vec::new());
        };
        let mut dead = Vec::new();
        for _ in 0..RESCUE_ROUNDS {
            let out = self
                .client
                .receive_message()
                .queue_url(dlq)
                .max_number_of_messages(BATCH_ENTRIES as i32)
                .visibility_timeout(RESCUE_VISIBILITY_SECS)
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(sqs_error)?;
            let messages = out.messages();
            for message in messages {
                let Some(receipt) = message.receipt_handle() else {
                    continue;
                };
                let body = message.body().unwrap_or_default();
                match serde_json::from_str::<JobPayload>(body) {
                    // Kept (hidden) until `forget`: if failing the upload does not happen, the
                    // dead letter comes back after the visibility timeout.
                    Ok(payload) => dead.push(DeadJob {
                        payload,
                        handle: Some(receipt.to_owned()),
                    }),
                    Err(err) => {
                        tracing::error!(body = preview(body), error = %err, "undecodable dead letter; deleted");
                        self.delete_from(dlq, receipt).await?;
                    }
                }
            }
            if messages.len() < BATCH_ENTRIES {
                break;
            }
        }
        Ok(dead)
    }

    async fn backlog(&self) -> Result<Option<u64>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(sqs_error)?;
        let Some(attributes) = out.attributes() else {
            return Ok(None);
        };
        let mut total = 0u64;
        for name in [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ] {
            match attributes.get(&name).and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => total += n,
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    }

    /// Visible messages of the queue and of its dead-letter queue: two attribute reads.
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let ready = self.visible(&self.queue_url).await?;
        let dead = match &self.dlq_url {
            Some(dlq) => self.visible(dlq).await?,
            None => None,
        };
        Ok(QueueStats {
            ready,
            oldest_ready_age: None,
            dead,
        })
    }

    async fn forget(&self, dead: &DeadJob) -> Result<(), QueueError> {
        match (&self.dlq_url, &dead.handle) {
            (Some(dlq), Some(receipt)) => self.delete_from(dlq, receipt).await,
            _ => Ok(()),
        }
    }
}

/// What fleetload needs of a queue's `RedrivePolicy` attribute.
#[derive(Debug, PartialEq, Eq)]
struct RedrivePolicy {
    dlq_name: String,
    dlq_account: Option<String>,
    max_receive_count: u32,
}

impl RedrivePolicy {
    /// `{"deadLetterTargetArn":"arn:aws:sqs:<region>:<account>:<name>","maxReceiveCount":3}`;
    /// the count comes as a number or as a string, depending on who wrote the policy.
    fn parse(text: &str) -> Result<Self, String> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("{e} in {text}"))?;
        let arn = json["deadLetterTargetArn"]
            .as_str()
            .ok_or_else(|| format!("no deadLetterTargetArn in {text}"))?;
        let count = match &json["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("no usable maxReceiveCount in {text}"))?;
        // arn:partition:sqs:region:account:name
        let parts: Vec<&str> = arn.split(':').collect();
        let (account, name) = match parts.as_slice() {
            ["arn", _, "sqs", _, account, name] if !name.is_empty() => (*account, *name),
            _ => return Err(format!("deadLetterTargetArn {arn:?} is not an SQS queue ARN")),
        };
        Ok(Self {
            dlq_name: name.to_owned(),
            dlq_account: Some(account.to_owned()).filter(|a| !a.is_empty()),
            max_receive_count: count,
        })
    }
}

/// SQS's count of receives of `message`, 1 on the first; 1 if SQS did not say.
fn receive_count(message: &Message) -> u32 {
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// The start of a message body, for a log line (bodies run to 256 KiB).
fn preview(body: &str) -> &str {
    let mut end = body.len().min(1024);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    &body[..end]
}

/// A visibility timeout in SQS's whole seconds, rounded up so a lease is never shortened.
fn whole_seconds_up(d: Duration) -> i32 {
    let d = d.min(MAX_LEASE);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

impl SqsQueue {
    /// `ApproximateNumberOfMessages` of `queue_url`.
    async fn visible(&self, queue_url: &str) -> Result<Option<u64>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|n| n.parse().ok()))
    }
}

fn sqs_error<E, R>(err: SdkError<E, R>) -> QueueError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    QueueError::Sqs(DisplayErrorContext(err).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policy_reads_the_dlq_and_the_count_as_number_or_string() {
        let policy = RedrivePolicy::parse(
            r#"{"deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:chunks-dlq","maxReceiveCount":3}"#,
        )
        .unwrap();
        assert_eq!(
            policy,
            RedrivePolicy {
                dlq_name: "chunks-dlq".into(),
                dlq_account: Some("123456789012".into()),
                max_receive_count: 3
            }
        );
        let policy = RedrivePolicy::parse(
            r#"{"maxReceiveCount":"7","deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:x"}"#,
        )
        .unwrap();
        assert_eq!(policy.max_receive_count, 7);
    }

    #[test]
    fn redrive_policy_without_a_queue_arn_or_count_is_refused() {
        for text in [
            "not json",
            r#"{"maxReceiveCount":3}"#,
            r#"{"deadLetterTargetArn":"arn:aws:s3:::bucket","maxReceiveCount":3}"#,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q","maxReceiveCount":0}"#,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q","maxReceiveCount":"many"}"#,
        ] {
            assert!(RedrivePolicy::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn visibility_is_rounded_up_to_whole_seconds_and_capped() {
        assert_eq!(whole_seconds_up(Duration::ZERO), 0);
        assert_eq!(whole_seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds_up(Duration::from_secs(60)), 60);
        assert_eq!(whole_seconds_up(Duration::MAX), 43_200);
    }
}
