//! The SQS queue against a real SQS API (moto): batched sends, visibility timeouts and
//! redelivery, the redrive to the dead-letter queue and `rescue`.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use fleetload::queue::{ChunkJob, ChunkRow, ChunkRows, Delivery, JobPayload, Queue, QueueError, SqsQueue};

use crate::moto::{self, MotoServer};

const LEASE: Duration = Duration::from_secs(30);
const SHORT_LEASE: Duration = Duration::from_secs(1);
/// Long polls of this many seconds, repeated, are the bound on every wait of these tests.
const POLL: Duration = Duration::from_secs(1);
const POLLS: usize = 10;

/// A queue with a redrive policy (maxReceiveCount 3) to its own dead-letter queue.
struct Sqs {
    queue: SqsQueue,
    client: aws_sdk_sqs::Client,
    dlq_url: String,
    // Last: the endpoint outlives the clients.
    _moto: MotoServer,
}

async fn sqs_with_redrive(max_receive_count: Option<u32>) -> Sqs {
    sqs_with(max_receive_count, None).await
}

async fn sqs_with(max_receive_count: Option<u32>, max_message_size: Option<u32>) -> Sqs {
    let moto = moto::s3_endpoint().await;
    let sdk = moto::sdk_config(&moto.url);
    let client = aws_sdk_sqs::Client::new(&sdk);
    let attributes: Vec<_> = max_message_size
        .map(|size| (QueueAttributeName::MaximumMessageSize, size.to_string()))
        .into_iter()
        .collect();
    let (queue_url, dlq_url) =
        moto::create_queue_with_dead_letter(&client, max_receive_count, &attributes).await;
    let queue = SqsQueue::new(&sdk, queue_url, None).await.unwrap();
    Sqs {
        queue,
        client,
        dlq_url,
        _moto: moto,
    }
}

fn chunk(upload_id: i64, chunk: i32, rows: i32) -> JobPayload {
    JobPayload::ProcessChunk(ChunkJob {
        upload_id,
        chunk,
        rows: ChunkRows::Listed {
            rows: (0..rows)
                .map(|n| ChunkRow {
                    row_number: n + 1,
                    uid: "490154203237518".into(),
                    uid2: None,
                    plan: None,
                    duplicate: false,
                })
                .collect(),
        },
    })
}

/// The next delivery, waiting through up to [`POLLS`] long polls.
async fn next(q: &SqsQueue, lease: Duration) -> Delivery {
    for _ in 0..POLLS {
        if let Some(delivery) = q.receive(1, lease, POLL).await.unwrap().pop() {
            return delivery;
        }
    }
    panic!("no message within {POLLS} polls");
}

async fn nothing_now(q: &SqsQueue) {
    let got = q.receive(10, LEASE, Duration::ZERO).await.unwrap();
    assert!(got.is_empty(), "expected nothing, got {got:?}");
}

/// Receives until `n` deliveries arrived (acking them) or the polls ran out.
async fn drain(q: &SqsQueue, n: usize) -> Vec<JobPayload> {
    let mut got = Vec::new();
    for _ in 0..POLLS {
        for delivery in q.receive(n - got.len(), LEASE, POLL).await.unwrap() {
            q.ack(&delivery).await.unwrap();
            got.push(delivery.payload);
        }
        if got.len() >= n {
            break;
        }
    }
    got.sort_by_key(JobPayload::dedupe_key);
    got
}

/// `rescue`, until it returns something or the polls ran out.
async fn rescue_some(q: &SqsQueue) -> Vec<JobPayload> {
    for _ in 0..POLLS {
        let rescued = q.rescue().await.unwrap();
        if !rescued.is_empty() {
            return rescued;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Vec::new()
}

#[tokio::test]
async fn the_redrive_policy_sets_max_attempts_and_the_dead_letter_queue() {
    let sqs = sqs_with_redrive(Some(3)).await;

    assert_eq!(sqs.queue.max_attempts(), 3);
    assert_eq!(sqs.queue.dead_letter_queue_url(), Some(sqs.dlq_url.as_str()));
}

#[tokio::test]
async fn without_a_redrive_policy_the_default_applies_and_nothing_is_rescued() {
    let sqs = sqs_with_redrive(None).await;

    assert_eq!(sqs.queue.max_attempts(), fleetload::queue::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(sqs.queue.dead_letter_queue_url(), None);
    assert!(sqs.queue.rescue().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_batched_send_of_25_jobs_arrives_complete() {
    let sqs = sqs_with_redrive(Some(3)).await;
    let jobs: Vec<JobPayload> = (0..25).map(|c| chunk(1, c, 3)).collect();

    sqs.queue.send(&jobs).await.unwrap();

    let mut expected = jobs;
    expected.sort_by_key(JobPayload::dedupe_key);
    assert_eq!(drain(&sqs.queue, 25).await, expected);
}

#[tokio::test]
async fn large_jobs_are_split_into_batches_under_the_size_limit() {
    let sqs = sqs_with_redrive(Some(3)).await;
    // ~120 KB each: ten would make a 1.2 MB batch, which SQS (and moto) refuse.
    let jobs: Vec<JobPayload> = (0..12).map(|c| chunk(2, c, 4000)).collect();
    let size = serde_json::to_string(&jobs[0]).unwrap().len();
    assert!((110_000..256 * 1024).contains(&size), "{size}");

    sqs.queue.send(&jobs).await.unwrap();

    let mut expected = jobs;
    expected.sort_by_key(JobPayload::dedupe_key);
    assert_eq!(drain(&sqs.queue, 12).await, expected);
}

#[tokio::test]
async fn a_received_message_is_invisible_until_its_timeout_then_redelivered_as_attempt_2() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.queue.send(&[chunk(3, 0, 1)]).await.unwrap();
    let first = next(&sqs.queue, SHORT_LEASE).await;

    nothing_now(&sqs.queue).await;
    let again = next(&sqs.queue, LEASE).await;

    assert_eq!(first.attempt, 1);
    assert_eq!(again.attempt, 2);
    assert_eq!(again.payload, chunk(3, 0, 1));
}

#[tokio::test]
async fn an_extended_message_stays_hidden() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.queue.send(&[chunk(4, 0, 1)]).await.unwrap();
    let delivery = next(&sqs.queue, SHORT_LEASE).await;

    sqs.queue.extend(&delivery, LEASE).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    nothing_now(&sqs.queue).await;
}

#[tokio::test]
async fn an_acked_message_is_never_delivered_again() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.queue.send(&[chunk(5, 0, 1)]).await.unwrap();
    let delivery = next(&sqs.queue, SHORT_LEASE).await;

    sqs.queue.ack(&delivery).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let got = sqs.queue.receive(10, LEASE, POLL).await.unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn a_retried_message_comes_back_after_the_delay() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.queue.send(&[chunk(6, 0, 1)]).await.unwrap();
    let delivery = next(&sqs.queue, LEASE).await;

    sqs.queue
        .retry(&delivery, Duration::from_secs(1), "device service timed out")
        .await
        .unwrap();

    nothing_now(&sqs.queue).await;
    let again = next(&sqs.queue, LEASE).await;
    assert_eq!(again.attempt, 2);
    assert_eq!(again.payload, chunk(6, 0, 1));
}

#[tokio::test]
async fn after_max_receive_count_the_message_is_redriven_and_rescued_once() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.queue.send(&[chunk(7, 0, 1)]).await.unwrap();
    // Three consumers take the message and die (their visibility timeouts run out).
    for attempt in 1..=3 {
        let delivery = next(&sqs.queue, SHORT_LEASE).await;
        assert_eq!(delivery.attempt, attempt);
    }

    // The next receive finds the count used up: SQS moves the message to the DLQ.
    let mut rescued = Vec::new();
    for _ in 0..POLLS {
        let got = sqs.queue.receive(10, LEASE, POLL).await.unwrap();
        assert!(got.is_empty(), "delivered beyond maxReceiveCount: {got:?}");
        rescued = sqs.queue.rescue().await.unwrap();
        if !rescued.is_empty() {
            break;
        }
    }

    assert_eq!(rescued, vec![chunk(7, 0, 1)]);
    assert!(sqs.queue.rescue().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dead_lettered_message_moves_to_the_dead_letter_queue() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.queue.send(&[chunk(8, 0, 1)]).await.unwrap();
    let delivery = next(&sqs.queue, SHORT_LEASE).await;

    sqs.queue
        .dead_letter(&delivery, "upload was deleted")
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(2)).await;
    nothing_now(&sqs.queue).await;
    assert_eq!(rescue_some(&sqs.queue).await, vec![chunk(8, 0, 1)]);
    assert!(sqs.queue.rescue().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_undecodable_message_goes_to_the_dead_letter_queue_and_is_not_delivered() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.client
        .send_message()
        .queue_url(sqs.queue.queue_url())
        .message_body("not a job")
        .send()
        .await
        .unwrap();
    sqs.queue.send(&[chunk(9, 0, 1)]).await.unwrap();

    let got = drain(&sqs.queue, 1).await;

    assert_eq!(got, vec![chunk(9, 0, 1)]);
    let mut dead = Vec::new();
    for _ in 0..POLLS {
        let out = sqs
            .client
            .receive_message()
            .queue_url(&sqs.dlq_url)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        dead.extend(out.messages().iter().filter_map(|m| m.body().map(str::to_owned)));
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(dead, vec!["not a job".to_owned()]);
}

#[tokio::test]
async fn an_oversize_job_is_refused_and_nothing_is_sent() {
    let sqs = sqs_with_redrive(Some(3)).await;
    let huge = chunk(10, 1, 10_000);
    let size = serde_json::to_string(&huge).unwrap().len();

    let err = sqs.queue.send(&[chunk(10, 0, 1), huge]).await.unwrap_err();

    match &err {
        QueueError::TooLarge { key, bytes, limit } => {
            assert_eq!((key.as_str(), *bytes, *limit), ("chunk:10:1", size, 256 * 1024));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains(&size.to_string()), "{err}");
    let got = sqs.queue.receive(10, LEASE, POLL).await.unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn a_queue_configured_for_smaller_messages_lowers_the_limit() {
    let sqs = sqs_with(Some(3), Some(1024)).await;
    let job = chunk(11, 0, 100);
    let size = serde_json::to_string(&job).unwrap().len();
    assert!(size > 1024);

    let err = sqs.queue.send(&[job]).await.unwrap_err();

    assert!(
        matches!(err, QueueError::TooLarge { bytes, limit: 1024, .. } if bytes == size),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_released_message_is_delivered_again_at_once() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.queue.send(&[chunk(20, 0, 1)]).await.unwrap();
    let first = next(&sqs.queue, LEASE).await;
    nothing_now(&sqs.queue).await;

    sqs.queue.release(&first).await.unwrap();

    // Long before the 30 s lease would have run out.
    let again = next(&sqs.queue, LEASE).await;
    assert_eq!(again.payload, chunk(20, 0, 1));
    assert_eq!(again.attempt, 2, "SQS cannot take back a receive");
}

#[tokio::test]
async fn a_dead_job_stays_in_the_dead_letter_queue_until_forgotten() {
    let sqs = sqs_with_redrive(Some(3)).await;
    sqs.queue.send(&[chunk(21, 0, 1), chunk(21, 1, 1)]).await.unwrap();
    for _ in 0..2 {
        let delivery = next(&sqs.queue, LEASE).await;
        sqs.queue.dead_letter(&delivery, "given up").await.unwrap();
    }

    let mut dead = Vec::new();
    for _ in 0..POLLS {
        dead.extend(sqs.queue.dead_jobs().await.unwrap());
        if dead.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().all(|d| d.handle.is_some()));
    // Handed out, not removed: hidden for now, still in the dead-letter queue.
    assert!(sqs.queue.dead_jobs().await.unwrap().is_empty());
    let in_dlq = |attributes: Option<&std::collections::HashMap<QueueAttributeName, String>>| {
        let a = attributes.unwrap();
        let n = |name| a[&name].parse::<u32>().unwrap();
        n(QueueAttributeName::ApproximateNumberOfMessages)
            + n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
    };
    let count = || async {
        let out = sqs
            .client
            .get_queue_attributes()
            .queue_url(&sqs.dlq_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        in_dlq(out.attributes())
    };
    assert_eq!(count().await, 2);

    sqs.queue.forget(&dead[0]).await.unwrap();
    assert_eq!(count().await, 1);
    sqs.queue.forget(&dead[1]).await.unwrap();
    assert_eq!(count().await, 0);
}

#[tokio::test]
async fn the_backlog_counts_waiting_and_in_flight_messages() {
    let sqs = sqs_with_redrive(Some(3)).await;
    assert_eq!(sqs.queue.backlog().await.unwrap(), Some(0));
    sqs.queue
        .send(&[chunk(22, 0, 1), chunk(22, 1, 1), chunk(22, 2, 1)])
        .await
        .unwrap();
    let delivery = next(&sqs.queue, LEASE).await;
    assert_eq!(sqs.queue.backlog().await.unwrap(), Some(3));

    sqs.queue.ack(&delivery).await.unwrap();
    assert_eq!(sqs.queue.backlog().await.unwrap(), Some(2));
}

/// The metrics sampler's view: visible messages of the queue and of its dead-letter queue.
#[tokio::test]
async fn stats_count_the_visible_messages_and_the_dead_letters() {
    let sqs = sqs_with_redrive(Some(3)).await;
    let empty = sqs.queue.stats().await.unwrap();
    assert_eq!((empty.ready, empty.dead), (Some(0), Some(0)));
    sqs.queue
        .send(&[chunk(9, 0, 1), chunk(9, 1, 1), chunk(9, 2, 1)])
        .await
        .unwrap();
    let delivery = next(&sqs.queue, LEASE).await;
    sqs.queue.dead_letter(&delivery, "given up").await.unwrap();

    let stats = sqs.queue.stats().await.unwrap();
    assert_eq!(stats.ready, Some(2), "{stats:?}");
    assert_eq!(stats.dead, Some(1), "{stats:?}");
    assert_eq!(stats.oldest_ready_age, None);
    sqs.queue.check().await.unwrap();
}
