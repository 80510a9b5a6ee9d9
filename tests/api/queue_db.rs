//! The job-table queue on SQLite and PostgreSQL: leases, redelivery, retries, the dead
//! letter and the rescuer, and exactly-once claims under concurrent consumers.

use std::time::Duration;

use chrono::Utc;
use entity::job::{self, JobState};
use entity::prelude::Job;
use fleetload::queue::{ChunkJob, ChunkRow, ChunkRows, DbQueue, Delivery, JobPayload, Queue};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};

use crate::helpers::*;
use crate::on_both_backends;

const LEASE: Duration = Duration::from_secs(30);
const SHORT_LEASE: Duration = Duration::from_secs(1);
/// Long enough for any lease or delay of these tests to run out, however slow the machine.
const PATIENCE: Duration = Duration::from_secs(10);

fn chunk(upload_id: i64, chunk: i32) -> JobPayload {
    JobPayload::ProcessChunk(ChunkJob {
        upload_id,
        chunk,
        rows: ChunkRows::Listed {
            rows: vec![ChunkRow {
                row_number: chunk * 10 + 1,
                uid: format!("49015420323751{}", chunk % 10),
                uid2: None,
                plan: None,
                duplicate: false,
            }],
        },
    })
}

fn queue(app: &TestApp, max_attempts: u32) -> DbQueue {
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    DbQueue::new(app.state.db.clone(), name, max_attempts)
}

/// A new handle on the same queue, with the default consumer id.
fn queue_named(app: &TestApp, q: &DbQueue) -> DbQueue {
    DbQueue::new(app.state.db.clone(), q.queue_name(), q.max_attempts())
}

/// Another process's handle on the same queue.
fn other_consumer(app: &TestApp, q: &DbQueue) -> DbQueue {
    DbQueue::new(app.state.db.clone(), q.queue_name(), q.max_attempts())
}

async fn jobs_of(app: &TestApp, q: &DbQueue) -> Vec<job::Model> {
    Job::find()
        .filter(job::Column::Queue.eq(q.queue_name()))
        .all(&app.state.db)
        .await
        .unwrap()
}

async fn receive_one(q: &DbQueue, lease: Duration, wait: Duration) -> Delivery {
    let mut got = q.receive(1, lease, wait).await.unwrap();
    assert_eq!(got.len(), 1, "expected one delivery, got {got:?}");
    got.remove(0)
}

async fn nothing_now(q: &DbQueue) {
    let got = q.receive(10, LEASE, Duration::ZERO).await.unwrap();
    assert!(got.is_empty(), "expected nothing, got {got:?}");
}

on_both_backends! {
    async fn a_sent_job_is_received_once_and_gone_after_ack(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(1, 0)]).await.unwrap();

        let delivery = receive_one(&q, LEASE, Duration::ZERO).await;
        assert_eq!(delivery.payload, chunk(1, 0));
        assert_eq!(delivery.attempt, 1);
        nothing_now(&q).await;
        q.ack(&delivery).await.unwrap();

        assert!(jobs_of(&app, &q).await.is_empty());
        nothing_now(&q).await;
    }

    async fn sending_the_same_job_twice_queues_it_once(app: TestApp) {
        let q = queue(&app, 5);

        q.send(&[chunk(2, 0), chunk(2, 1)]).await.unwrap();
        q.send(&[chunk(2, 0), chunk(2, 1), chunk(2, 1)]).await.unwrap();

        assert_eq!(jobs_of(&app, &q).await.len(), 2);
        let got = q.receive(10, LEASE, Duration::ZERO).await.unwrap();
        let mut payloads: Vec<_> = got.into_iter().map(|d| d.payload).collect();
        payloads.sort_by_key(|p| format!("{p:?}"));
        assert_eq!(payloads, vec![chunk(2, 0), chunk(2, 1)]);
    }

    async fn many_large_jobs_are_sent_in_several_statements(app: TestApp) {
        let q = queue(&app, 5);
        // ~60 KB each, as a 2000-row chunk is: more than one INSERT's byte budget in all.
        let jobs: Vec<JobPayload> = (0..150)
            .map(|c| {
                JobPayload::ProcessChunk(ChunkJob {
                    upload_id: 3,
                    chunk: c,
                    rows: ChunkRows::Listed {
                        rows: (0..2000)
                            .map(|n| ChunkRow { row_number: n, uid: "490154203237518".into(), uid2: None, plan: None, duplicate: false })
                            .collect(),
                    },
                })
            })
            .collect();

        q.send(&jobs).await.unwrap();

        let stored = jobs_of(&app, &q).await;
        assert_eq!(stored.len(), 150);
        assert!(stored.iter().all(|j| j.payload.len() > 50_000));
    }

    async fn a_waiting_receive_gets_a_job_sent_meanwhile(app: TestApp) {
        let q = queue(&app, 5);
        let sender = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sender.send(&[chunk(4, 0)]).await.unwrap();
        });

        let delivery = receive_one(&q, LEASE, PATIENCE).await;

        assert_eq!(delivery.payload, chunk(4, 0));
    }

    async fn a_received_job_is_hidden_until_its_lease_runs_out_then_delivered_again(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(5, 0)]).await.unwrap();
        let first = receive_one(&q, SHORT_LEASE, Duration::ZERO).await;

        nothing_now(&q).await;
        nothing_now(&other_consumer(&app, &q)).await;
        let again = receive_one(&other_consumer(&app, &q), LEASE, PATIENCE).await;

        assert_eq!(first.attempt, 1);
        assert_eq!(again.attempt, 2);
        assert_eq!(again.payload, chunk(5, 0));
        assert_eq!(again.handle, first.handle);
    }

    async fn an_extended_lease_keeps_the_job_hidden(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(6, 0)]).await.unwrap();
        let delivery = receive_one(&q, SHORT_LEASE, Duration::ZERO).await;

        q.extend(&delivery, LEASE).await.unwrap();
        tokio::time::sleep(SHORT_LEASE + Duration::from_millis(500)).await;

        nothing_now(&other_consumer(&app, &q)).await;
        let row = &jobs_of(&app, &q).await[0];
        assert_eq!(row.state, JobState::Running);
        assert!(row.locked_until.unwrap() > Utc::now() + chrono::TimeDelta::seconds(20));
    }

    async fn a_stale_consumer_cannot_ack_or_extend_a_reclaimed_job(app: TestApp) {
        let stale = queue(&app, 5);
        let fresh = other_consumer(&app, &stale);
        stale.send(&[chunk(7, 0)]).await.unwrap();
        let old = receive_one(&stale, SHORT_LEASE, Duration::ZERO).await;
        let current = receive_one(&fresh, SHORT_LEASE, PATIENCE).await;

        stale.extend(&old, LEASE).await.unwrap();
        stale.ack(&old).await.unwrap();
        stale.retry(&old, Duration::ZERO, "stale").await.unwrap();
        stale.dead_letter(&old, "stale").await.unwrap();

        let row = &jobs_of(&app, &stale).await[0];
        assert_eq!(row.state, JobState::Running);
        assert_eq!(row.locked_by.as_deref(), Some(fresh.consumer_id()));
        // The fresh lease was not extended by the stale consumer.
        assert!(row.locked_until.unwrap() < Utc::now() + chrono::TimeDelta::seconds(5));
        fresh.ack(&current).await.unwrap();
        assert!(jobs_of(&app, &stale).await.is_empty());
    }

    async fn an_old_delivery_of_the_same_consumer_cannot_ack_its_new_claim(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(8, 0)]).await.unwrap();
        let old = receive_one(&q, SHORT_LEASE, Duration::ZERO).await;
        let current = receive_one(&q, LEASE, PATIENCE).await;

        q.ack(&old).await.unwrap();

        assert_eq!(jobs_of(&app, &q).await.len(), 1);
        q.ack(&current).await.unwrap();
        assert!(jobs_of(&app, &q).await.is_empty());
    }

    async fn a_retried_job_is_hidden_for_the_delay_then_delivered_again(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(9, 0)]).await.unwrap();
        let delivery = receive_one(&q, LEASE, Duration::ZERO).await;

        q.retry(&delivery, Duration::from_secs(1), "device service timed out").await.unwrap();

        nothing_now(&q).await;
        let row = &jobs_of(&app, &q).await[0];
        assert_eq!(row.state, JobState::Available);
        assert_eq!(row.last_error.as_deref(), Some("device service timed out"));
        assert_eq!(row.locked_by, None);
        let again = receive_one(&q, LEASE, PATIENCE).await;
        assert_eq!(again.attempt, 2);
    }

    async fn a_retry_of_the_last_attempt_dead_letters_the_job(app: TestApp) {
        let q = queue(&app, 2);
        q.send(&[chunk(10, 0)]).await.unwrap();
        let first = receive_one(&q, LEASE, Duration::ZERO).await;
        q.retry(&first, Duration::ZERO, "boom 1").await.unwrap();
        let second = receive_one(&q, LEASE, PATIENCE).await;

        q.retry(&second, Duration::ZERO, "boom 2").await.unwrap();

        let row = &jobs_of(&app, &q).await[0];
        assert_eq!(row.state, JobState::Dead);
        assert_eq!(row.attempts, 2);
        assert_eq!(row.last_error.as_deref(), Some("boom 2"));
        nothing_now(&q).await;
        assert!(q.rescue().await.unwrap().is_empty());
    }

    async fn a_dead_lettered_job_is_kept_and_never_delivered(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(11, 0)]).await.unwrap();
        let delivery = receive_one(&q, LEASE, Duration::ZERO).await;

        q.dead_letter(&delivery, "upload was deleted").await.unwrap();

        let row = &jobs_of(&app, &q).await[0];
        assert_eq!(row.state, JobState::Dead);
        assert_eq!(row.last_error.as_deref(), Some("upload was deleted"));
        nothing_now(&q).await;
    }

    async fn rescue_returns_a_job_whose_consumer_died_on_its_last_attempt_once(app: TestApp) {
        let q = queue(&app, 2);
        q.send(&[chunk(12, 0), chunk(12, 1)]).await.unwrap();
        // chunk 1's consumer is healthy and holds a long lease throughout.
        let mut both = q.receive(2, SHORT_LEASE, Duration::ZERO).await.unwrap();
        both.sort_by_key(|d| format!("{:?}", d.payload));
        q.extend(&both[1], LEASE).await.unwrap();
        // chunk 0's consumers die: the first attempt's lease, then the last one's, run out.
        let last = receive_one(&q, SHORT_LEASE, PATIENCE).await;
        assert_eq!((last.payload.clone(), last.attempt), (chunk(12, 0), 2));
        assert!(q.rescue().await.unwrap().is_empty(), "lease still running");

        let mut rescued = Vec::new();
        for _ in 0..40 {
            rescued.extend(q.rescue().await.unwrap());
            if !rescued.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        assert_eq!(rescued, vec![chunk(12, 0)]);
        assert!(q.rescue().await.unwrap().is_empty());
        nothing_now(&q).await;
        let rows = jobs_of(&app, &q).await;
        let dead: Vec<_> = rows.iter().filter(|r| r.state == JobState::Dead).collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].dedupe_key.as_deref(), Some("chunk:12:0"));
    }

    async fn concurrent_consumers_get_each_job_exactly_once(app: TestApp) {
        let q = queue(&app, 5);
        let jobs: Vec<JobPayload> = (0..200).map(|c| chunk(13, c)).collect();
        q.send(&jobs).await.unwrap();

        let consumers: Vec<_> = (0..8)
            .map(|_| {
                let q = other_consumer(&app, &q);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let batch = q.receive(7, LEASE, Duration::ZERO).await.unwrap();
                        if batch.is_empty() {
                            return got;
                        }
                        for delivery in batch {
                            q.ack(&delivery).await.unwrap();
                            got.push(delivery.payload);
                        }
                    }
                })
            })
            .collect();
        let mut received = Vec::new();
        for consumer in consumers {
            received.extend(consumer.await.unwrap());
        }

        let key = |p: &JobPayload| p.dedupe_key();
        let mut expected = jobs.clone();
        expected.sort_by_key(key);
        received.sort_by_key(key);
        assert_eq!(received, expected);
        assert!(jobs_of(&app, &q).await.is_empty());
    }

    async fn a_job_whose_payload_does_not_decode_is_dead_lettered_not_delivered(app: TestApp) {
        let q = queue(&app, 5);
        let now = Utc::now();
        Job::insert(job::ActiveModel {
            queue: Set(q.queue_name().to_owned()),
            payload: Set(r#"{"kind":"no_such_job"}"#.into()),
            dedupe_key: Set(Some("corrupt:1".into())),
            state: Set(JobState::Available),
            attempts: Set(0),
            max_attempts: Set(5),
            run_at: Set(now - chrono::TimeDelta::seconds(1)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
        .exec(&app.state.db)
        .await
        .unwrap();
        q.send(&[chunk(14, 0)]).await.unwrap();

        let got = q.receive(10, LEASE, Duration::ZERO).await.unwrap();

        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, chunk(14, 0));
        let corrupt = Job::find()
            .filter(job::Column::DedupeKey.eq("corrupt:1"))
            .one(&app.state.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(corrupt.state, JobState::Dead);
        assert!(corrupt.last_error.unwrap().contains("undecodable payload"));
        nothing_now(&q).await;
    }

    async fn a_job_due_later_is_not_claimed_before_its_time(app: TestApp) {
        let q = queue(&app, 5);
        let now = Utc::now();
        // Whole and fractional seconds on either side of now: SQLite compares them as text.
        let ms = chrono::TimeDelta::milliseconds;
        for (upload_id, run_at) in [(1, now + ms(60_000)), (2, now + ms(30_001)), (3, now - ms(1)), (4, now - ms(60_000))] {
            Job::insert(job::ActiveModel {
                queue: Set(q.queue_name().to_owned()),
                payload: Set(serde_json::to_string(&JobPayload::DispatchUpload { upload_id }).unwrap()),
                dedupe_key: Set(Some(format!("due:{upload_id}"))),
                state: Set(JobState::Available),
                attempts: Set(0),
                max_attempts: Set(5),
                run_at: Set(run_at),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            })
            .exec(&app.state.db)
            .await
            .unwrap();
        }

        let got = q.receive(10, LEASE, Duration::ZERO).await.unwrap();

        let mut ids: Vec<i64> = got.iter().map(|d| d.payload.upload_id()).collect();
        ids.sort();
        assert_eq!(ids, vec![3, 4]);
    }

    async fn chunks_are_claimed_by_their_first_row_across_uploads(app: TestApp) {
        let q = queue(&app, 5);
        // A large upload queued first, then a small one: first come, first served would
        // run all of the large one's chunks before the small one's.
        let large: Vec<JobPayload> = (0..5).map(|c| chunk(15, c)).collect();
        q.send(&large).await.unwrap();
        q.send(&[chunk(16, 0), chunk(16, 1)]).await.unwrap();
        q.send(&[JobPayload::DispatchUpload { upload_id: 17 }]).await.unwrap();

        let mut order = Vec::new();
        for _ in 0..8 {
            let delivery = receive_one(&q, LEASE, Duration::ZERO).await;
            q.ack(&delivery).await.unwrap();
            order.push(delivery.payload.dedupe_key());
        }

        assert_eq!(
            order,
            [
                "dispatch:17", "chunk:15:0", "chunk:16:0", "chunk:15:1", "chunk:16:1", "chunk:15:2",
                "chunk:15:3", "chunk:15:4"
            ]
        );
        let rows = jobs_of(&app, &q).await;
        assert!(rows.is_empty());
    }

    async fn a_job_records_its_upload_and_rank(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(18, 3), JobPayload::DispatchUpload { upload_id: 19 }]).await.unwrap();

        let mut rows = jobs_of(&app, &q).await;
        rows.sort_by_key(|r| r.seq);
        assert_eq!(
            rows.iter().map(|r| (r.upload_id, r.seq)).collect::<Vec<_>>(),
            vec![(Some(19), 0), (Some(18), 31)]
        );
    }

    async fn a_released_job_is_claimable_at_once_and_its_attempt_not_counted(app: TestApp) {
        let q = queue(&app, 2);
        q.send(&[chunk(20, 0)]).await.unwrap();
        let first = receive_one(&q, LEASE, Duration::ZERO).await;

        q.release(&first).await.unwrap();

        let row = &jobs_of(&app, &q).await[0];
        assert_eq!((row.state, row.attempts, row.locked_by.clone()), (JobState::Available, 0, None));
        // With two attempts allowed, released jobs never run out of them.
        for _ in 0..3 {
            let consumer = other_consumer(&app, &q);
            let again = receive_one(&consumer, LEASE, Duration::ZERO).await;
            assert_eq!(again.attempt, 1);
            consumer.release(&again).await.unwrap();
        }
        // A stale consumer's release changes nothing.
        let current = receive_one(&other_consumer(&app, &q), LEASE, Duration::ZERO).await;
        queue_named(&app, &q).release(&current).await.unwrap();
        assert_eq!(jobs_of(&app, &q).await[0].state, JobState::Running);
    }

    async fn a_restarted_owner_ends_its_dead_incarnations_leases_and_no_one_elses(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(21, 0), chunk(21, 1)]).await.unwrap();
        let dead = queue_named(&app, &q).with_owner("worker-a");
        let alive = queue_named(&app, &q).with_owner("worker-ab");
        let held_dead = receive_one(&dead, LEASE, Duration::ZERO).await;
        let held_alive = receive_one(&alive, LEASE, Duration::ZERO).await;
        assert!(dead.consumer_id().starts_with("worker-a/"));
        nothing_now(&q).await;

        let restarted = queue_named(&app, &q).with_owner("worker-a");
        assert_eq!(restarted.expire_leases(Some("worker-a")).await.unwrap(), 1);

        let again = receive_one(&restarted, LEASE, Duration::ZERO).await;
        assert_eq!(again.payload, held_dead.payload);
        assert_eq!(again.attempt, 2);
        nothing_now(&q).await;
        alive.ack(&held_alive).await.unwrap();
        assert_eq!(jobs_of(&app, &q).await.len(), 1);
    }

    async fn the_only_process_ends_every_lease_at_once(app: TestApp) {
        let q = queue(&app, 5);
        q.send(&[chunk(22, 0), chunk(22, 1)]).await.unwrap();
        q.receive(2, LEASE, Duration::ZERO).await.unwrap();
        nothing_now(&q).await;

        assert_eq!(other_consumer(&app, &q).expire_leases(None).await.unwrap(), 2);

        assert_eq!(q.receive(10, LEASE, Duration::ZERO).await.unwrap().len(), 2);
    }

    async fn jobs_queued_before_the_settlement_migration_get_their_upload_and_rank(app: TestApp) {
        use migration::MigrationTrait;
        // Running this one migration's down and up by hand works on PostgreSQL only: on SQLite
        // the up then finds `upload_id` still there (not yet understood; the upgrade of a real
        // SQLite database with data is covered by `migration_04`).
        if app.backend == Backend::Sqlite {
            return;
        }
        let q = queue(&app, 5);
        q.send(&[chunk(23, 4), JobPayload::DispatchUpload { upload_id: 24 }]).await.unwrap();
        let now = Utc::now();
        Job::insert(job::ActiveModel {
            queue: Set(q.queue_name().to_owned()),
            payload: Set("not json".into()),
            dedupe_key: Set(Some("corrupt:2".into())),
            state: Set(JobState::Available),
            attempts: Set(0),
            max_attempts: Set(5),
            run_at: Set(now),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
        .exec(&app.state.db)
        .await
        .unwrap();

        // Only this migration, down and up: the one after it cannot be reverted.
        let manager = migration::SchemaManager::new(&app.state.db);
        let settlement = migration::m20261201_000003_job_settlement::Migration;
        settlement.down(&manager).await.unwrap();
        settlement.up(&manager).await.unwrap();

        let mut rows: Vec<_> = jobs_of(&app, &q)
            .await
            .into_iter()
            .map(|r| (r.dedupe_key.unwrap(), r.upload_id, r.seq))
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            vec![
                ("chunk:23:4".to_owned(), Some(23), 41),
                ("corrupt:2".to_owned(), None, 0),
                ("dispatch:24".to_owned(), Some(24), 0),
            ]
        );
    }

    /// The metrics sampler's view: ready jobs (due now), the oldest one's age, dead jobs.
    async fn stats_count_ready_and_dead_jobs_and_age_the_oldest_ready_one(app: TestApp) {
        let q = queue(&app, 5);
        let empty = q.stats().await.unwrap();
        assert_eq!(empty.ready, Some(0));
        assert_eq!(empty.oldest_ready_age, Some(Duration::ZERO));
        assert_eq!(empty.dead, Some(0));

        q.send(&[chunk(31, 0), chunk(31, 1), chunk(31, 2)]).await.unwrap();
        let delivery = receive_one(&q, LEASE, Duration::ZERO).await;
        q.dead_letter(&delivery, "given up").await.unwrap();
        let running = receive_one(&q, LEASE, Duration::ZERO).await;
        tokio::time::sleep(Duration::from_millis(50)).await;

        let stats = q.stats().await.unwrap();
        assert_eq!(stats.ready, Some(1), "{stats:?}");
        assert_eq!(stats.dead, Some(1), "{stats:?}");
        let age = stats.oldest_ready_age.unwrap();
        assert!(age >= Duration::from_millis(50) && age < PATIENCE, "{age:?}");
        q.check().await.unwrap();
        q.ack(&running).await.unwrap();
    }
}
