//! The job-table queue: jobs are rows of `jobs`, claimed with a lease by one atomic UPDATE,
//! on the embedded SQLite database and on PostgreSQL alike. Claims go by fairness rank
//! (`seq`, a chunk's first row), then age; a lease that ran out is first put back (`reap`),
//! so the job is claimed again in rank order.
//!
//! A claim is `(id, locked_by, attempts)`: every claim bumps `attempts`, so a consumer whose
//! lease ran out and was claimed again (even by another task of the same process) no longer
//! matches and its `ack` / `extend` / `retry` change nothing. Times are the app's clock, bound
//! as parameters: on SQLite, sea-orm stores `DateTimeUtc` as RFC 3339 text with a `+00:00`
//! offset and as few fractional digits as needed, which sorts like the instants it names, so
//! comparing against bound values of the same kind is correct (and uses `ix_jobs_claim`);
//! SQLite's own `datetime('now')` is written differently and must not be mixed in.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use entity::job::{self, JobState};
use entity::prelude::Job;
use sea_orm::sea_query::{Expr, LockBehavior, LockType, OnConflict, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryResult,
    QuerySelect, Set,
};

use super::{Delivery, JobPayload, MAX_LEASE, Queue, QueueError, QueueStats};

/// Rows per INSERT of [`DbQueue::send`]: well under SQLite's and PostgreSQL's bind limits.
const SEND_ROWS_PER_STATEMENT: usize = 100;
/// Payload bytes per INSERT, so a batch of large chunk jobs stays a reasonable statement.
const SEND_BYTES_PER_STATEMENT: usize = 4 * 1024 * 1024;

/// First and longest pause between claims while `receive` waits for a job.
const POLL_FIRST: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_millis(200);

/// A named queue on the job table.
#[derive(Clone)]
pub struct DbQueue {
    db: DatabaseConnection,
    queue: String,
    max_attempts: u32,
    consumer: String,
}

impl DbQueue {
    /// The queue `queue_name` of the job table; jobs sent through it get `max_attempts`.
    pub fn new(db: DatabaseConnection, queue_name: impl Into<String>, max_attempts: u32) -> Self {
        Self {
            db,
            queue: queue_name.into(),
            max_attempts: max_attempts.max(1),
            consumer: consumer_id(),
        }
    }

    /// Claims as `<owner>/<pid>-<random>`: a process that restarts under the same `owner`
    /// (a stable worker id, unique among live processes) can expire its previous
    /// incarnation's leases at once with [`DbQueue::expire_leases`].
    pub fn with_owner(mut self, owner: &str) -> Self {
        self.consumer = format!("{owner}/{}", consumer_id());
        self
    }

    /// Written to `locked_by` of the jobs this queue claims, so an operator can tell which
    /// process holds a job.
    pub fn consumer_id(&self) -> &str {
        &self.consumer
    }

    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// Running jobs whose consumer let the lease run out, with attempts left, become
    /// available again (those on their last attempt are `rescue`'s). A conditional UPDATE:
    /// concurrent reapers change each row once.
    async fn reap(&self, now: DateTime<Utc>) -> Result<u64, QueueError> {
        let result = Job::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Available))
            .col_expr(
                job::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(job::Column::LockedBy, Expr::value(Option::<String>::None))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Queue.eq(self.queue.as_str()))
            .filter(job::Column::State.eq(JobState::Running))
            .filter(job::Column::LockedUntil.lt(now))
            .filter(Expr::col(job::Column::Attempts).lt(Expr::col(job::Column::MaxAttempts)))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// One claim of up to `max` jobs, without waiting.
    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Delivery>, QueueError> {
        let now = Utc::now();
        self.reap(now).await?;
        let locked_until = after(now, lease);
        let limit = u64::try_from(max).unwrap_or(u64::MAX);
        // Due available jobs, lowest fairness rank first (a chunk's first row: every
        // upload's first chunks before anyone's later ones), then oldest first.
        let mut claimable = Query::select();
        claimable
            .column(job::Column::Id)
            .from(Job)
            .and_where(job::Column::Queue.eq(self.queue.as_str()))
            .and_where(job::Column::State.eq(JobState::Available))
            .and_where(job::Column::RunAt.lte(now))
            .and_where(Expr::col(job::Column::Attempts).lt(Expr::col(job::Column::MaxAttempts)))
            .order_by(job::Column::Seq, sea_orm::Order::Asc)
            .order_by(job::Column::Id, sea_orm::Order::Asc)
            .limit(limit)
            // PostgreSQL: concurrent claimers pass over each other's rows instead of waiting.
            // SQLite has no row locks (the builder omits the clause): it runs one writer at a
            // time, so the UPDATE below is atomic there as it stands.
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        let mut claim = Query::update();
        claim
            .table(Job)
            .values([
                (job::Column::State, JobState::Running.into()),
                (job::Column::Attempts, Expr::col(job::Column::Attempts).add(1)),
                (job::Column::LockedUntil, locked_until.into()),
                (job::Column::LockedBy, self.consumer.as_str().into()),
                (job::Column::UpdatedAt, now.into()),
            ])
            .and_where(job::Column::Id.in_subquery(claimable))
            .returning(Query::returning().columns([
                job::Column::Id,
                job::Column::Payload,
                job::Column::Attempts,
                job::Column::Seq,
                job::Column::Traceparent,
            ]));
        let backend = self.db.get_database_backend();
        let rows = self.db.query_all(backend.build(&claim)).await?;

        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, body, attempts) = claimed_row(&row)?;
            let seq: i32 = row.try_get("", "seq")?;
            match serde_json::from_str::<JobPayload>(&body) {
                Ok(payload) => deliveries.push((
                    seq,
                    Delivery {
                        handle: id.to_string(),
                        payload,
                        attempt: u32::try_from(attempts).unwrap_or(0),
                        traceparent: row.try_get("", "traceparent")?,
                    },
                )),
                // A row no consumer can read would otherwise come back at every lease. If
                // burying it fails, it comes back after the lease and is buried then; the
                // jobs claimed with it are still handed out.
                Err(err) => {
                    tracing::error!(job_id = id, queue = %self.queue, error = %err, "undecodable job payload; dead-lettered");
                    if let Err(bury) = self
                        .bury(id, attempts, &format!("undecodable payload: {err}"))
                        .await
                    {
                        tracing::error!(job_id = id, error = %bury, "could not dead-letter an undecodable job");
                    }
                }
            }
        }
        // RETURNING gives no order; hand jobs out in the order they were claimed.
        deliveries.sort_by_key(|(seq, d)| (*seq, d.handle.parse::<i64>().unwrap_or(i64::MAX)));
        Ok(deliveries.into_iter().map(|(_, d)| d).collect())
    }

    /// Dead-letters the claim `(id, attempts)` of this consumer; whether it still held it.
    async fn bury(&self, id: i64, attempts: i32, error: &str) -> Result<bool, QueueError> {
        self.bury_on(&self.db, id, attempts, error).await
    }

    /// Dead-letters `delivery` on `conn` (a transaction that also fails its upload);
    /// whether this consumer still held it. Nothing changes when it did not.
    pub async fn bury_in(
        &self,
        conn: &impl ConnectionTrait,
        delivery: &Delivery,
        error: &str,
    ) -> Result<bool, QueueError> {
        let (id, attempts) = Self::claim_of(delivery)?;
        self.bury_on(conn, id, attempts, error).await
    }

    async fn bury_on(
        &self,
        conn: &impl ConnectionTrait,
        id: i64,
        attempts: i32,
        error: &str,
    ) -> Result<bool, QueueError> {
        let result = Job::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Dead))
            .col_expr(job::Column::LastError, Expr::value(error))
            .col_expr(
                job::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(job::Column::LockedBy, Expr::value(Option::<String>::None))
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(self.held(id, attempts))
            .exec(conn)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Ends the leases of running jobs at once, so they are claimed again without waiting
    /// for them to run out: all of this queue's (`owner` None: the caller is the only
    /// process using the database), or those of an earlier incarnation of `owner` (see
    /// [`DbQueue::with_owner`]). Call it before this process claims anything. Returns how
    /// many leases ended.
    pub async fn expire_leases(&self, owner: Option<&str>) -> Result<u64, QueueError> {
        let mut update = Job::update_many()
            .col_expr(job::Column::LockedUntil, Expr::value(DateTime::<Utc>::UNIX_EPOCH))
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(job::Column::Queue.eq(self.queue.as_str()))
            .filter(job::Column::State.eq(JobState::Running));
        if let Some(owner) = owner {
            update = update.filter(job::Column::LockedBy.starts_with(format!("{owner}/")));
        }
        Ok(update.exec(&self.db).await?.rows_affected)
    }

    /// Turns a job in hand into its next step: the row's payload becomes `next` (and its
    /// rank `next.seq()`; its dedupe key and upload stay, so `next` must be a step of the
    /// same job), due after `delay`, with a fresh count of attempts (each step is new work;
    /// a failing step still runs out of them). Whether this consumer still held the job.
    pub async fn postpone(
        &self,
        delivery: &Delivery,
        next: &JobPayload,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let (id, attempts) = Self::claim_of(delivery)?;
        let now = Utc::now();
        let result = Job::update_many()
            .col_expr(job::Column::Payload, Expr::value(serde_json::to_string(next)?))
            .col_expr(job::Column::Seq, Expr::value(next.seq()))
            .col_expr(job::Column::State, Expr::value(JobState::Available))
            .col_expr(job::Column::Attempts, Expr::value(0))
            .col_expr(job::Column::RunAt, Expr::value(after(now, delay)))
            .col_expr(
                job::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(job::Column::LockedBy, Expr::value(Option::<String>::None))
            .col_expr(job::Column::LastError, Expr::value(Option::<String>::None))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(self.held(id, attempts))
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            tracing::warn!(job_id = id, queue = %self.queue, "postpone ignored: the job is no longer ours");
        }
        Ok(result.rows_affected == 1)
    }

    /// Matches the row of a claim only while this consumer still holds it.
    fn held(&self, id: i64, attempts: i32) -> sea_orm::Condition {
        sea_orm::Condition::all()
            .add(job::Column::Id.eq(id))
            .add(job::Column::State.eq(JobState::Running))
            .add(job::Column::LockedBy.eq(self.consumer.as_str()))
            .add(job::Column::Attempts.eq(attempts))
    }

    /// The claim a delivery stands for.
    fn claim_of(delivery: &Delivery) -> Result<(i64, i32), QueueError> {
        let id = delivery
            .handle
            .parse::<i64>()
            .map_err(|_| QueueError::ForeignHandle(delivery.handle.clone()))?;
        let attempts = i32::try_from(delivery.attempt)
            .map_err(|_| QueueError::ForeignHandle(delivery.handle.clone()))?;
        Ok((id, attempts))
    }
}

#[async_trait::async_trait]
impl Queue for DbQueue {
    async fn send(&self, jobs: &[JobPayload]) -> Result<(), QueueError> {
        let now = Utc::now();
        let traceparent = crate::telemetry::traceparent();
        let mut rows = Vec::with_capacity(jobs.len().min(SEND_ROWS_PER_STATEMENT));
        let mut bytes = 0;
        for payload in jobs {
            let body = serde_json::to_string(payload)?;
            if !rows.is_empty()
                && (rows.len() == SEND_ROWS_PER_STATEMENT || bytes + body.len() > SEND_BYTES_PER_STATEMENT)
            {
                self.insert(std::mem::take(&mut rows)).await?;
                bytes = 0;
            }
            bytes += body.len();
            rows.push(job::ActiveModel {
                queue: Set(self.queue.clone()),
                payload: Set(body),
                dedupe_key: Set(Some(payload.dedupe_key())),
                upload_id: Set(Some(payload.upload_id())),
                seq: Set(payload.seq()),
                traceparent: Set(traceparent.clone()),
                state: Set(JobState::Available),
                attempts: Set(0),
                max_attempts: Set(i32::try_from(self.max_attempts).unwrap_or(i32::MAX)),
                run_at: Set(now),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            });
        }
        if !rows.is_empty() {
            self.insert(rows).await?;
        }
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = POLL_FIRST;
        loop {
            let deliveries = self.claim(max, lease).await?;
            let now = tokio::time::Instant::now();
            if !deliveries.is_empty() || now >= deadline {
                return Ok(deliveries);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<(), QueueError> {
        let (id, attempts) = Self::claim_of(delivery)?;
        let now = Utc::now();
        let result = Job::update_many()
            .col_expr(job::Column::LockedUntil, Expr::value(after(now, lease)))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(self.held(id, attempts))
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            tracing::warn!(job_id = id, queue = %self.queue, "lease not extended: the job is no longer ours");
        }
        Ok(())
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let (id, attempts) = Self::claim_of(delivery)?;
        // Deleted, not kept as `done`: chunk payloads are large and the results are the record.
        let result = Job::delete_many()
            .filter(self.held(id, attempts))
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            tracing::warn!(job_id = id, queue = %self.queue, "ack ignored: the job is no longer ours");
        }
        Ok(())
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration, error: &str) -> Result<(), QueueError> {
        let (id, attempts) = Self::claim_of(delivery)?;
        let now = Utc::now();
        // Out of attempts: the job would never be claimed again, so it is dead right away.
        let state = Expr::case(
            Expr::col(job::Column::Attempts).gte(Expr::col(job::Column::MaxAttempts)),
            Expr::value(JobState::Dead),
        )
        .finally(Expr::value(JobState::Available));
        let result = Job::update_many()
            .col_expr(job::Column::State, Into::<SimpleExpr>::into(state))
            .col_expr(job::Column::RunAt, Expr::value(after(now, delay)))
            .col_expr(job::Column::LastError, Expr::value(error))
            .col_expr(
                job::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(job::Column::LockedBy, Expr::value(Option::<String>::None))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(self.held(id, attempts))
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            tracing::warn!(job_id = id, queue = %self.queue, "retry ignored: the job is no longer ours");
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<(), QueueError> {
        let (id, attempts) = Self::claim_of(delivery)?;
        if !self.bury(id, attempts, error).await? {
            tracing::warn!(job_id = id, queue = %self.queue, "dead letter ignored: the job is no longer ours");
        }
        Ok(())
    }

    async fn rescue(&self) -> Result<Vec<JobPayload>, QueueError> {
        self.rescue_in(&self.db).await
    }

    fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let (id, attempts) = Self::claim_of(delivery)?;
        let now = Utc::now();
        // The claim counted an attempt that never ran to its end: give it back.
        let result = Job::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Available))
            .col_expr(job::Column::Attempts, Expr::col(job::Column::Attempts).sub(1))
            .col_expr(job::Column::RunAt, Expr::value(now))
            .col_expr(
                job::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(job::Column::LockedBy, Expr::value(Option::<String>::None))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(self.held(id, attempts))
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            tracing::warn!(job_id = id, queue = %self.queue, "release ignored: the job is no longer ours");
        }
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = Utc::now();
        let this_queue = || Job::find().filter(job::Column::Queue.eq(self.queue.as_str()));
        let ready = this_queue()
            .filter(job::Column::State.eq(JobState::Available))
            .filter(job::Column::RunAt.lte(now));
        let count = ready.clone().count(&self.db).await?;
        let oldest: Option<DateTime<Utc>> = ready
            .select_only()
            .column_as(job::Column::RunAt.min(), "oldest")
            .into_tuple()
            .one(&self.db)
            .await?
            .flatten();
        let dead = this_queue()
            .filter(job::Column::State.eq(JobState::Dead))
            .count(&self.db)
            .await?;
        Ok(QueueStats {
            ready: Some(count),
            // Zero when nothing waits, so an age alert clears.
            oldest_ready_age: Some(oldest.map_or(Duration::ZERO, |t| (now - t).to_std().unwrap_or_default())),
            dead: Some(dead),
        })
    }

    async fn check(&self) -> Result<(), QueueError> {
        Job::find()
            .select_only()
            .column(job::Column::Id)
            .limit(1)
            .into_tuple::<i64>()
            .one(&self.db)
            .await?;
        Ok(())
    }

    fn job_table(&self) -> Option<&DbQueue> {
        Some(self)
    }
}

impl DbQueue {
    /// [`Queue::rescue`] on `conn`: in a transaction that also fails the jobs' uploads, a
    /// job is dead exactly when its upload is failed.
    pub async fn rescue_in(&self, conn: &impl ConnectionTrait) -> Result<Vec<JobPayload>, QueueError> {
        let now = Utc::now();
        // One UPDATE … RETURNING: two rescuers never both return a job, since only one of
        // them moves it out of `running`.
        let mut rescue = Query::update();
        rescue
            .table(Job)
            .values([
                (job::Column::State, JobState::Dead.into()),
                (
                    job::Column::LastError,
                    "lease ran out on the last attempt (consumer died or hung)".into(),
                ),
                (job::Column::LockedUntil, Option::<DateTime<Utc>>::None.into()),
                (job::Column::LockedBy, Option::<String>::None.into()),
                (job::Column::UpdatedAt, now.into()),
            ])
            .and_where(job::Column::Queue.eq(self.queue.as_str()))
            .and_where(job::Column::State.eq(JobState::Running))
            .and_where(job::Column::LockedUntil.lt(now))
            .and_where(Expr::col(job::Column::Attempts).gte(Expr::col(job::Column::MaxAttempts)))
            .returning(Query::returning().columns([job::Column::Id, job::Column::Payload]));
        let backend = conn.get_database_backend();
        let rows = conn.query_all(backend.build(&rescue)).await?;
        let mut payloads = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let body: String = row.try_get("", "payload")?;
            match serde_json::from_str(&body) {
                Ok(payload) => payloads.push(payload),
                Err(err) => {
                    tracing::error!(job_id = id, queue = %self.queue, error = %err, "undecodable payload of a rescued job")
                }
            }
        }
        Ok(payloads)
    }

    async fn insert(&self, rows: Vec<job::ActiveModel>) -> Result<(), QueueError> {
        // A job with the same dedupe key is already queued (a repeated dispatch): keep it.
        Job::insert_many(rows)
            .on_conflict(OnConflict::column(job::Column::DedupeKey).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }
}

fn claimed_row(row: &QueryResult) -> Result<(i64, String, i32), QueueError> {
    Ok((
        row.try_get("", "id")?,
        row.try_get("", "payload")?,
        row.try_get("", "attempts")?,
    ))
}

/// `now + d`, with `d` capped at [`MAX_LEASE`] so no timestamp leaves the range both
/// databases store (and SQLite's text timestamps keep sorting by instant).
fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let d = TimeDelta::from_std(d.min(MAX_LEASE)).unwrap_or(TimeDelta::zero());
    now.checked_add_signed(d).unwrap_or(now)
}

/// `<pid>-<random>`: unique per queue handle, readable enough to find the process.
fn consumer_id() -> String {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{Database, DbBackend, Statement};

    /// The claim and lease comparisons rely on SQLite's text timestamps sorting by instant,
    /// whatever number of fractional digits sea-orm wrote.
    #[tokio::test]
    async fn sqlite_timestamps_compare_by_instant() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        let base = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        let instants: Vec<DateTime<Utc>> = [0, 1_000_000, 100_000_000, 100_001_000, 100_000_001, 999_999_999]
            .into_iter()
            .map(|ns| base + TimeDelta::nanoseconds(ns))
            .chain([base + TimeDelta::seconds(1), base - TimeDelta::nanoseconds(1)])
            .collect();
        for a in &instants {
            for b in &instants {
                let row = db
                    .query_one(Statement::from_sql_and_values(
                        DbBackend::Sqlite,
                        "SELECT ? < ? AS lt, ? = ? AS eq",
                        [(*a).into(), (*b).into(), (*a).into(), (*b).into()],
                    ))
                    .await
                    .unwrap()
                    .unwrap();
                let lt: bool = row.try_get("", "lt").unwrap();
                let eq: bool = row.try_get("", "eq").unwrap();
                assert_eq!((lt, eq), (a < b, a == b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn leases_are_capped() {
        let now = Utc::now();
        assert_eq!(
            after(now, Duration::from_secs(u64::MAX)),
            now + TimeDelta::hours(12)
        );
        assert_eq!(after(now, Duration::from_secs(5)), now + TimeDelta::seconds(5));
    }

    #[test]
    fn consumer_ids_differ_per_handle() {
        assert_ne!(consumer_id(), consumer_id());
    }
}
