//! Carrier actions after the chunk: each row the rules sent to the carrier has an intent
//! (`carrier_intents`), committed with its chunk. Executors in every worker process claim due
//! intents, call the carrier in batches, verify by polling, and write each row's one result
//! with the upload's counters in one transaction.
//!
//! Exactly once at the carrier: an intent is marked SENDING (committed) before its call.
//! Whoever finds it SENDING past its lease, or after a call whose answer was lost, does not
//! call again: it asks the carrier for the line first (UNSURE), and sends again only when the
//! carrier shows no trace of the row's idempotency key.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::upload::UploadStatus;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use tokio_util::sync::CancellationToken;

use super::rules::RowError;
use crate::carrier::accounts::{self, CarrierCredentials, CredentialsError};
use crate::carrier::audit::{self, CallFor};
use crate::carrier::client::{CallError, CallRecord, CarrierClient, DeviceAnswer, Line, LineState, Tokens};
use crate::carrier::rate;
use crate::carrier::sealed::SecretBox;
use crate::carrier::session::{self, Login, SessionError};
use crate::db::stmt;
use crate::domain::carrier_line::{self, CarrierStatus, Operation};
use crate::progress::ProgressBus;
use crate::webhook::Outbox;

/// Intent states, as stored.
pub mod intent_state {
    /// To be sent when due.
    pub const PENDING: &str = "PENDING";
    /// Claimed for a call (committed before it); `next_at` is the claim's lease, after which
    /// the intent is checked as UNSURE.
    pub const SENDING: &str = "SENDING";
    /// A call whose outcome is not known: ask the carrier before sending again.
    pub const UNSURE: &str = "UNSURE";
    /// Accepted by the carrier; polled until confirmed or its deadline.
    pub const VERIFYING: &str = "VERIFYING";
    /// Its row has its result.
    pub const DONE: &str = "DONE";
}
use intent_state::*;

/// How carrier work is paced (configuration: `FLEETLOAD_CARRIER_*`).
#[derive(Clone, Debug)]
pub struct CarrierSettings {
    /// Wait after an accepted call before the first status poll.
    pub verify_delay: Duration,
    /// Between two polls of a line not yet confirmed.
    pub verify_interval: Duration,
    /// From acceptance to giving up on confirmation (`CARRIER_VERIFICATION_TIMEOUT`).
    pub verify_timeout: Duration,
    /// Calls per row before `CARRIER_UNAVAILABLE` (429, 5xx, no answer).
    pub max_attempts: u32,
    /// One call's time limit.
    pub call_timeout: Duration,
    /// Sleep of an executor that found nothing due.
    pub idle: Duration,
}

impl Default for CarrierSettings {
    fn default() -> Self {
        Self {
            verify_delay: Duration::from_secs(60),
            verify_interval: Duration::from_secs(60),
            verify_timeout: Duration::from_secs(30 * 60),
            max_attempts: 8,
            call_timeout: Duration::from_secs(30),
            idle: Duration::from_millis(250),
        }
    }
}

impl CarrierSettings {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            verify_delay: Duration::from_millis(settings.carrier_verify_delay_ms),
            verify_interval: Duration::from_millis(settings.carrier_verify_interval_ms),
            verify_timeout: Duration::from_secs(settings.carrier_verify_timeout_secs),
            max_attempts: settings.carrier_max_attempts,
            call_timeout: Duration::from_millis(settings.carrier_call_timeout_ms),
            ..Self::default()
        }
    }

    /// A claim outlives any call made under it, so an expired one means its holder is gone.
    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.call_timeout * 2 + Duration::from_secs(5))
            .unwrap_or(chrono::Duration::minutes(2))
    }
}

/// What happens to a row after an action call, decided from the answer alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterCall {
    /// Poll from `verify_delay` on.
    Verify,
    /// The row's result: FAIL with this code and message.
    Fail(RowError, String),
    /// Nothing was applied: send again after the delay.
    Retry(Duration),
    /// It may have been applied: ask the carrier after the delay before sending again.
    Check(Duration),
}

/// The next step of a row whose call (its `attempt`-th, from 1) got `answer`. Pure, so the
/// retry policy is tested apart from any carrier. Refused tokens never reach it: the batch
/// goes back unsent-as-far-as-the-carrier-knows and the tokens are refreshed.
pub fn after_call(
    answer: &Result<DeviceAnswer, CallError>,
    attempt: u32,
    max_attempts: u32,
    jitter: f64,
) -> AfterCall {
    let exhausted = attempt >= max_attempts;
    match answer {
        Ok(DeviceAnswer::Accepted) => AfterCall::Verify,
        Ok(DeviceAnswer::Rejected { code, message }) => {
            AfterCall::Fail(RowError::CarrierRejected, format!("{code}: {message}"))
        }
        Err(CallError::Refused(status, body)) => {
            AfterCall::Fail(RowError::CarrierRejected, format!("HTTP {status}: {body}"))
        }
        Err(e) if exhausted => {
            AfterCall::Fail(RowError::CarrierUnavailable, gave_up(attempt, &e.to_string()))
        }
        Err(CallError::RateLimited { retry_after }) => AfterCall::Retry(
            retry_after
                .unwrap_or_else(|| backoff(attempt, jitter))
                .max(backoff(0, jitter)),
        ),
        Err(
            CallError::Server(..)
            | CallError::NoAnswer(_)
            | CallError::BadAnswer(_)
            | CallError::Unauthorized(_),
        ) => AfterCall::Check(backoff(attempt, jitter)),
    }
}

/// Exponential backoff from 200 ms, doubled per attempt up to a minute, with `jitter` (0..1)
/// adding up to half again so that rows refused together do not come back together.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1 << attempt.min(9));
    base.min(Duration::from_secs(60))
        .mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// Why a row ends `CARRIER_UNAVAILABLE` after `attempt` calls, the last one's trouble `why`.
fn gave_up(attempt: u32, why: &str) -> String {
    format!("the carrier did not take the call after {attempt} attempts: {why}")
}

/// What asking the carrier about an UNSURE row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterCheck {
    /// The line shows the row's key: the carrier applied the call; verify it.
    Verify,
    /// No trace of the row's key: the call was never applied, so sending it now is its
    /// first application.
    Resend,
    /// No trace, and the row has had all its calls.
    Fail(RowError, String),
}

/// Whether the carrier applied an UNSURE row's call, from the line as it reports it
/// (`None`: it does not know the line) and the row's idempotency key.
pub fn after_check(
    line: Option<&LineState>,
    client_request_id: &str,
    attempt: u32,
    max_attempts: u32,
) -> AfterCheck {
    let ours = line.and_then(|l| l.last_client_request_id.as_deref()) == Some(client_request_id);
    match (ours, attempt >= max_attempts) {
        (true, _) => AfterCheck::Verify,
        (false, false) => AfterCheck::Resend,
        (false, true) => AfterCheck::Fail(
            RowError::CarrierUnavailable,
            gave_up(
                attempt,
                "its outcome was not known and the carrier shows no trace of it",
            ),
        ),
    }
}

/// What a status poll of a VERIFYING row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterPoll {
    /// The carrier reports the target: the line as it reports it (MSISDN, IP address).
    Confirmed(LineState),
    Fail(RowError, String),
    PollAgain,
}

pub fn after_poll(line: Option<LineState>, target: CarrierStatus, past_deadline: bool) -> AfterPoll {
    let Some(line) = line else {
        return AfterPoll::Fail(
            RowError::CarrierRejected,
            "the carrier does not know the line".into(),
        );
    };
    match carrier_line::from_wire(&line.state) {
        Some(status) if carrier_line::confirms(target, status) => AfterPoll::Confirmed(line),
        _ if past_deadline => AfterPoll::Fail(
            RowError::CarrierVerificationTimeout,
            format!(
                "the carrier still reports the line {:?}, not {}",
                line.state,
                carrier_line::name(target)
            ),
        ),
        _ => AfterPoll::PollAgain,
    }
}

/// The stored states a round in `state` takes its intents from. A SENDING intent that is due
/// is past its claim's lease: its sender died or lost the answer, so it is checked as UNSURE.
fn taken_from(state: &str) -> &'static str {
    match state {
        UNSURE => "('UNSURE', 'SENDING')",
        PENDING => "('PENDING')",
        _ => "('VERIFYING')",
    }
}

/// What a round works on: the oldest due intent's upload, operation and service plan.
struct Due {
    upload_id: i64,
    operation: String,
    service_plan: Option<String>,
}

/// One claimed intent.
#[derive(Clone, Debug)]
struct Intent {
    id: i64,
    row_number: i32,
    device_id: i64,
    iccid: String,
    imei: Option<String>,
    root_tenant_id: String,
    account_id: String,
    operation: Operation,
    target: CarrierStatus,
    client_request_id: String,
    attempts: i32,
    verify_deadline: Option<DateTime<Utc>>,
}

const INTENT_COLUMNS: &str = "id, row_number, device_id, iccid, imei, root_tenant_id, carrier_account_id, \
                              operation, target_status, client_request_id, attempts, verify_deadline";

fn intent(row: &sea_orm::QueryResult) -> Result<Intent, DbErr> {
    let op: String = row.try_get("", "operation")?;
    Ok(Intent {
        id: row.try_get("", "id")?,
        row_number: row.try_get("", "row_number")?,
        device_id: row.try_get("", "device_id")?,
        iccid: row.try_get("", "iccid")?,
        imei: row.try_get("", "imei")?,
        root_tenant_id: row.try_get("", "root_tenant_id")?,
        account_id: row.try_get("", "carrier_account_id")?,
        operation: Operation::parse(&op).ok_or_else(|| DbErr::Type(format!("operation {op}")))?,
        target: row.try_get("", "target_status")?,
        client_request_id: row.try_get("", "client_request_id")?,
        attempts: row.try_get("", "attempts")?,
        verify_deadline: row.try_get("", "verify_deadline")?,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// The carrier side of the pipeline, run by every worker process.
pub struct CarrierExecutor {
    db: DatabaseConnection,
    secrets: Option<Arc<SecretBox>>,
    client: CarrierClient,
    settings: CarrierSettings,
    outbox: Outbox,
    progress: Arc<ProgressBus>,
}

impl CarrierExecutor {
    pub fn new(
        db: DatabaseConnection,
        secrets: Option<Arc<SecretBox>>,
        settings: CarrierSettings,
        outbox: Outbox,
        progress: Arc<ProgressBus>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: CarrierClient::new(settings.call_timeout)?,
            db,
            secrets,
            settings,
            outbox,
            progress,
        })
    }

    /// Runs until `shutdown`: a step whenever one may be due.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let busy = match self.step().await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e, "carrier step failed");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.settings.idle) => {}
                }
            }
        }
    }

    /// One round: expired claims made UNSURE, then one batch of each kind of due work.
    /// Whether anything was done.
    pub async fn step(&self) -> Result<bool, CarrierError> {
        let sent = self.send_batch().await?;
        let checked = self.poll_lines(UNSURE).await?;
        let verified = self.poll_lines(VERIFYING).await?;
        Ok(sent || checked || verified)
    }

    /// The oldest due intent in `state` of an upload still processing: which upload,
    /// operation and service plan a round works on.
    async fn due(&self, state: &str) -> Result<Option<Due>, DbErr> {
        let row = self
            .db
            .query_one(stmt(
                self.db.get_database_backend(),
                &format!(
                    "SELECT i.upload_id, i.operation, i.service_plan FROM carrier_intents i \
                     JOIN uploads u ON u.id = i.upload_id \
                     WHERE i.state IN {} AND i.next_at <= $1 AND u.status = 'PROCESSING' \
                     ORDER BY i.next_at LIMIT 1",
                    taken_from(state)
                ),
                [Utc::now().into()],
            ))
            .await?;
        row.map(|r| {
            Ok(Due {
                upload_id: r.try_get("", "upload_id")?,
                operation: r.try_get("", "operation")?,
                service_plan: r.try_get("", "service_plan")?,
            })
        })
        .transpose()
    }

    /// Claims up to `limit` due intents of `due`'s upload and operation in `from`, moving
    /// them to `to` with their lease. Claimed to be sent, they are counted a call and share
    /// the service plan too: one call carries one plan.
    async fn claim(&self, from: &str, to: &str, due: &Due, limit: u32) -> Result<Vec<Intent>, DbErr> {
        let backend = self.db.get_database_backend();
        let now = Utc::now();
        let lock = if backend == DbBackend::Postgres {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let mut values: Vec<sea_orm::Value> = vec![
            to.into(),
            (now + self.settings.lease()).into(),
            now.into(),
            due.upload_id.into(),
            due.operation.clone().into(),
            i64::from(limit).into(),
        ];
        let (count, same_plan) = match (to == SENDING, backend) {
            (false, _) => ("attempts", ""),
            (true, DbBackend::Postgres) => ("attempts + 1", "AND service_plan IS NOT DISTINCT FROM $7"),
            (true, _) => ("attempts + 1", "AND service_plan IS $7"),
        };
        if to == SENDING {
            values.push(due.service_plan.clone().into());
        }
        let taken = taken_from(from);
        // The pick is materialized: as a plain `IN (subquery)`, PostgreSQL may scan it again
        // per row, and with SKIP LOCKED each scan picks other rows, so the LIMIT would not hold.
        let sql = format!(
            "WITH picked AS MATERIALIZED (SELECT id FROM carrier_intents WHERE upload_id = $4 AND operation = $5 \
             AND state IN {taken} AND next_at <= $3 {same_plan} ORDER BY id LIMIT $6 {lock}) \
             UPDATE carrier_intents SET state = $1, next_at = $2, attempts = {count}, updated_at = $3 \
             WHERE state IN {taken} AND id IN (SELECT id FROM picked) RETURNING {INTENT_COLUMNS}"
        );
        let rows = self.db.query_all(stmt(backend, &sql, values)).await?;
        let mut claimed = rows.iter().map(intent).collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|i| i.id);
        Ok(claimed)
    }

    /// The account's tokens (logging in when needed, or when `refused` names the generation
    /// the carrier turned down), the logins recorded in the audit trail. `None` when the
    /// login did not complete: the upload is failed when the carrier refused the credentials,
    /// else a later round tries again.
    async fn logged_in(
        &self,
        upload_id: i64,
        creds: &CarrierCredentials,
        refused: Option<i64>,
    ) -> Result<Option<session::Session>, DbErr> {
        let Some(secrets) = &self.secrets else {
            return Ok(None);
        };
        let login = Login {
            root_tenant_id: &creds.root_tenant_id,
            account_id: &creds.id,
            base_url: &creds.base_url,
            client_id: &creds.client_id,
            client_secret: &creds.client_secret,
            account_number: &creds.account_number,
        };
        let mut records = Vec::new();
        let session = session::current(&self.db, secrets, &self.client, &login, refused, &mut records).await;
        self.record(upload_id, creds, &[], &records).await?;
        match session {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                self.login_failed(upload_id, e).await?;
                Ok(None)
            }
        }
    }

    /// Sends one batch of due PENDING intents. Everything that may wait (a login, another
    /// process's login, the rate limit's slot) happens before the batch is claimed: a claim
    /// is held only for the call itself, far shorter than its lease, so no claim expires while
    /// its call may still be sent.
    async fn send_batch(&self) -> Result<bool, CarrierError> {
        let Some(due) = self.due(PENDING).await? else {
            return Ok(false);
        };
        let upload_id = due.upload_id;
        let Some(creds) = self.upload_account(upload_id, &due.operation, PENDING).await? else {
            return Ok(true);
        };
        let Some(session) = self.logged_in(upload_id, &creds, None).await? else {
            return Ok(true);
        };
        self.slot(&creds).await?;
        let batch = self
            .claim(PENDING, SENDING, &due, creds.batch_size.clamp(1, 100))
            .await?;
        if batch.is_empty() {
            return Ok(true);
        }
        let lines: Vec<Line> = batch
            .iter()
            .map(|i| Line {
                iccid: &i.iccid,
                imei: i.imei.as_deref(),
                client_request_id: &i.client_request_id,
            })
            .collect();
        let (answer, record) = self
            .client
            .act(
                &creds.base_url,
                &session.tokens,
                batch[0].operation,
                &creds.account_number,
                due.service_plan.as_deref(),
                &lines,
            )
            .await;
        let rows: Vec<i32> = batch.iter().map(|i| i.row_number).collect();
        self.record(upload_id, &creds, &rows, &[record]).await?;
        if let Err(CallError::Unauthorized(_)) = &answer {
            // Nothing was applied. The batch goes back (its attempt counted, so tokens the
            // carrier keeps refusing end in CARRIER_UNAVAILABLE), then the tokens are
            // refreshed once, outside any claim; the next round sends with the new ones.
            self.release(&batch, PENDING).await?;
            self.logged_in(upload_id, &creds, Some(session.generation))
                .await?;
            return Ok(true);
        }
        let answers: Vec<Result<DeviceAnswer, CallError>> = match answer {
            Ok(per_device) => per_device.into_iter().map(Ok).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        };
        let now = Utc::now();
        let mut settled = Settle::default();
        for (intent, answer) in batch.iter().zip(&answers) {
            let attempt = u32::try_from(intent.attempts).unwrap_or(u32::MAX);
            match after_call(answer, attempt, self.settings.max_attempts, rand::random()) {
                AfterCall::Verify => settled.verify.push(intent.id),
                AfterCall::Fail(code, message) => {
                    settled.results.push((intent.clone(), Err((code, message))))
                }
                AfterCall::Retry(after) => settled.back.push((intent.id, PENDING, now + after)),
                // A call that got no answer may still be applied late: ask only after it
                // would have timed out at the carrier too.
                AfterCall::Check(after) => {
                    settled
                        .back
                        .push((intent.id, UNSURE, now + after.max(self.settings.call_timeout)))
                }
            }
        }
        self.settle(upload_id, settled).await?;
        Ok(true)
    }

    /// The account of an upload's due intents, or `None` when there is none to call with
    /// (the upload is then failed with the reason).
    async fn upload_account(
        &self,
        upload_id: i64,
        operation: &str,
        state: &str,
    ) -> Result<Option<CarrierCredentials>, CarrierError> {
        let Some(first) = self.peek(upload_id, operation, state).await? else {
            return Ok(None);
        };
        let Some(secrets) = &self.secrets else {
            self.fail_upload(
                upload_id,
                "this worker has no carrier secret key to open the account's secret with",
            )
            .await?;
            return Ok(None);
        };
        match accounts::credentials(&self.db, secrets, &first.root_tenant_id, &first.account_id).await {
            Ok(Some(creds)) => Ok(Some(creds)),
            Ok(None) => {
                self.fail_upload(upload_id, "the upload's carrier account no longer exists")
                    .await?;
                Ok(None)
            }
            Err(CredentialsError::Db(e)) => Err(e.into()),
            Err(e) => {
                self.fail_upload(upload_id, &format!("the carrier account cannot be used: {e}"))
                    .await?;
                Ok(None)
            }
        }
    }

    /// A login that did not complete: refused credentials end the upload; anything else is
    /// tried again by a later round.
    async fn login_failed(&self, upload_id: i64, e: SessionError) -> Result<(), DbErr> {
        match e {
            SessionError::Refused(why) => {
                self.fail_upload(
                    upload_id,
                    &format!("the carrier refused the account's credentials: {why}"),
                )
                .await
            }
            SessionError::Sealed(why) => {
                self.fail_upload(
                    upload_id,
                    &format!("the carrier account's tokens cannot be opened: {why}"),
                )
                .await
            }
            SessionError::Db(e) => Err(e),
            SessionError::Unavailable(why) => {
                tracing::warn!(
                    upload_pk = upload_id,
                    why,
                    "carrier login did not complete; trying again later"
                );
                tokio::time::sleep(backoff(3, rand::random())).await;
                Ok(())
            }
        }
    }

    async fn peek(&self, upload_id: i64, operation: &str, state: &str) -> Result<Option<Intent>, DbErr> {
        let row = self
            .db
            .query_one(stmt(
                self.db.get_database_backend(),
                &format!(
                    "SELECT {INTENT_COLUMNS} FROM carrier_intents WHERE upload_id = $1 AND operation = $2 \
                     AND state IN {} LIMIT 1",
                    taken_from(state)
                ),
                [upload_id.into(), operation.into()],
            ))
            .await?;
        row.as_ref().map(intent).transpose()
    }

    /// Asks the carrier about lines whose call may or may not have been applied.
    /// Polls the due lines of one upload in `state` (UNSURE or VERIFYING): one status call
    /// each, within the account's rate limit.
    async fn poll_lines(&self, state: &'static str) -> Result<bool, CarrierError> {
        let Some(due) = self.due(state).await? else {
            return Ok(false);
        };
        let upload_id = due.upload_id;
        let Some(creds) = self.upload_account(upload_id, &due.operation, state).await? else {
            return Ok(true);
        };
        let Some(mut session) = self.logged_in(upload_id, &creds, None).await? else {
            return Ok(true);
        };
        // The claim keeps the state; its lease is `next_at`. Status calls may be repeated
        // harmlessly, so a claim outlived by its polls costs at most a second poll.
        let batch = self
            .claim(state, state, &due, creds.batch_size.clamp(1, 100))
            .await?;
        if batch.is_empty() {
            return Ok(true);
        }
        let now = Utc::now();
        let mut settled = Settle::default();
        for intent in &batch {
            let mut answer = self.poll(upload_id, &creds, &session.tokens, intent).await?;
            if matches!(answer, Err(CallError::Unauthorized(_))) {
                // Once per batch: refreshed tokens the carrier refuses too wait for a later round.
                match self
                    .logged_in(upload_id, &creds, Some(session.generation))
                    .await?
                {
                    Some(fresh) => {
                        session = fresh;
                        answer = self.poll(upload_id, &creds, &session.tokens, intent).await?;
                    }
                    None => return Ok(true),
                }
            }
            let retry_at = now + backoff(3, rand::random());
            match (state, answer) {
                (UNSURE, Ok(line)) => {
                    let attempt = u32::try_from(intent.attempts).unwrap_or(u32::MAX);
                    match after_check(
                        line.as_ref(),
                        &intent.client_request_id,
                        attempt,
                        self.settings.max_attempts,
                    ) {
                        AfterCheck::Verify => settled.verify.push(intent.id),
                        AfterCheck::Resend => settled.back.push((intent.id, PENDING, now)),
                        AfterCheck::Fail(code, message) => {
                            settled.results.push((intent.clone(), Err((code, message))))
                        }
                    }
                }
                (_, Ok(line)) => {
                    let past = intent.verify_deadline.is_none_or(|d| d <= now);
                    match after_poll(line, intent.target, past) {
                        AfterPoll::Confirmed(line) => settled.results.push((intent.clone(), Ok(line))),
                        AfterPoll::Fail(code, message) => {
                            settled.results.push((intent.clone(), Err((code, message))))
                        }
                        AfterPoll::PollAgain => {
                            settled
                                .back
                                .push((intent.id, VERIFYING, now + self.settings.verify_interval))
                        }
                    }
                }
                (_, Err(e)) => {
                    let past = intent.verify_deadline.is_some_and(|d| d <= now);
                    if state == VERIFYING && past {
                        settled.results.push((
                            intent.clone(),
                            Err((
                                RowError::CarrierVerificationTimeout,
                                format!("the line's status could not be read: {e}"),
                            )),
                        ));
                    } else {
                        let delay = match e {
                            CallError::RateLimited { retry_after: Some(d) } => now + d,
                            _ => retry_at,
                        };
                        settled.back.push((intent.id, state, delay));
                    }
                }
            }
        }
        self.settle(upload_id, settled).await?;
        Ok(true)
    }

    /// Waits for the account's next call slot (shared by every process).
    async fn slot(&self, creds: &CarrierCredentials) -> Result<(), DbErr> {
        rate::take_slot(
            &self.db,
            &creds.root_tenant_id,
            &creds.id,
            creds.rate_limit_per_sec,
        )
        .await
    }

    /// One status call for `intent`'s line, in the account's rate and the audit trail.
    async fn poll(
        &self,
        upload_id: i64,
        creds: &CarrierCredentials,
        tokens: &Tokens,
        intent: &Intent,
    ) -> Result<Result<Option<LineState>, CallError>, DbErr> {
        self.slot(creds).await?;
        let (answer, record) = self.client.line(&creds.base_url, tokens, &intent.iccid).await;
        self.record(upload_id, creds, &[intent.row_number], &[record])
            .await?;
        Ok(answer)
    }

    async fn record(
        &self,
        upload_id: i64,
        creds: &CarrierCredentials,
        rows: &[i32],
        records: &[CallRecord],
    ) -> Result<(), DbErr> {
        audit::record(
            &self.db,
            &CallFor {
                upload_id: Some(upload_id),
                root_tenant_id: &creds.root_tenant_id,
                account_id: &creds.id,
                rows,
            },
            records,
        )
        .await
    }

    /// Gives claimed intents back in `state`, due now; the attempt their claim counted stays.
    async fn release(&self, batch: &[Intent], state: &str) -> Result<(), DbErr> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        for i in batch {
            txn.execute(stmt(
                txn.get_database_backend(),
                "UPDATE carrier_intents SET state = $2, next_at = $3, updated_at = $3 WHERE id = $1 AND state <> 'DONE'",
                [i.id.into(), state.into(), now.into()],
            ))
            .await?;
        }
        txn.commit().await
    }

    async fn fail_upload(&self, upload_id: i64, reason: &str) -> Result<(), DbErr> {
        tracing::warn!(upload_pk = upload_id, reason, "carrier upload failed");
        super::terminate(
            &self.db,
            &self.outbox,
            upload_id,
            UploadStatus::Failed,
            Some(reason),
        )
        .await?;
        Ok(())
    }

    /// Writes what one round decided, in one transaction: results (with the device's new
    /// line status on success), the counters (completing the upload at its last row), and
    /// the intents' next states.
    async fn settle(&self, upload_id: i64, settled: Settle) -> Result<(), DbErr> {
        let _writer = crate::db::sqlite_write_turn(&self.db).await;
        let txn = self.db.begin().await?;
        let backend = txn.get_database_backend();
        let now = Utc::now();
        let verify_at = now + self.settings.verify_delay;
        let deadline = now + self.settings.verify_timeout;
        for id in &settled.verify {
            txn.execute(stmt(
                backend,
                "UPDATE carrier_intents SET state = 'VERIFYING', next_at = $2, verify_deadline = $3, updated_at = $4 \
                 WHERE id = $1 AND state <> 'DONE'",
                [(*id).into(), verify_at.into(), deadline.into(), now.into()],
            ))
            .await?;
        }
        for (id, state, at) in &settled.back {
            txn.execute(stmt(
                backend,
                "UPDATE carrier_intents SET state = $2, next_at = $3, updated_at = $4 WHERE id = $1 AND state <> 'DONE'",
                [(*id).into(), (*state).into(), (*at).into(), now.into()],
            ))
            .await?;
        }
        let (mut succeeded, mut failed) = (0, 0);
        let mut codes: Vec<&'static str> = Vec::new();
        for (intent, result) in &settled.results {
            // The intent is closed first: a row whose intent was closed by another round
            // already has its result.
            let closed = txn
                .execute(stmt(
                    backend,
                    "UPDATE carrier_intents SET state = 'DONE', updated_at = $2 WHERE id = $1 AND state <> 'DONE'",
                    [intent.id.into(), now.into()],
                ))
                .await?
                .rows_affected();
            if closed == 0 {
                continue;
            }
            let (outcome, code, message) = match result {
                Ok(line) => {
                    txn.execute(stmt(
                        backend,
                        "UPDATE devices SET carrier_status = $2, msisdn = COALESCE($3, msisdn), \
                         ip_address = COALESCE($4, ip_address), iccid = $5, updated_at = $6 WHERE id = $1",
                        [
                            intent.device_id.into(),
                            intent.target.into(),
                            line.msisdn.clone().into(),
                            line.ip_address.clone().into(),
                            intent.iccid.clone().into(),
                            now.into(),
                        ],
                    ))
                    .await?;
                    succeeded += 1;
                    ("SUCCESS", None, None)
                }
                Err((code, message)) => {
                    failed += 1;
                    codes.push(code.code());
                    ("FAIL", Some(code.code()), Some(message.clone()))
                }
            };
            txn.execute(stmt(
                backend,
                "INSERT INTO batch_results (upload_id, row_number, device_uid, outcome, error_code, message) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    upload_id.into(),
                    intent.row_number.into(),
                    intent.iccid.clone().into(),
                    outcome.into(),
                    code.into(),
                    message.into(),
                ],
            ))
            .await?;
        }
        if succeeded + failed > 0 {
            txn.execute(stmt(
                backend,
                "UPDATE uploads SET carrier_pending = carrier_pending - $2 WHERE id = $1",
                [upload_id.into(), (succeeded + failed).into()],
            ))
            .await?;
            let status = super::worker::add_to_counters(&txn, upload_id, succeeded, failed, now).await?;
            match status {
                None => {
                    // The upload left PROCESSING (cancelled, failed): its rows stay without results.
                    txn.rollback().await?;
                    return Ok(());
                }
                Some(status) if status.is_terminal() => {
                    self.outbox.upload_finished(&txn, upload_id).await?;
                    txn.commit().await?;
                    count_rows(succeeded, &codes);
                    crate::metrics::upload_finished(status);
                    tracing::info!(upload_pk = upload_id, ?status, "upload finished");
                    self.progress.changed(upload_id).await;
                    return Ok(());
                }
                Some(_) => {}
            }
            txn.commit().await?;
            count_rows(succeeded, &codes);
            self.progress.changed(upload_id).await;
            return Ok(());
        }
        txn.commit().await
    }
}

/// Adds committed results to the row counters, as the chunk workers do for theirs.
fn count_rows(succeeded: i32, failed_codes: &[&'static str]) {
    if succeeded > 0 {
        crate::metrics::rows("SUCCESS", "", u64::try_from(succeeded).unwrap_or(0));
    }
    for code in failed_codes {
        crate::metrics::rows("FAIL", code, 1);
    }
}

/// A row's result: confirmed with the line as the carrier reports it, or failed.
type RowResult = Result<LineState, (RowError, String)>;

/// What one round decided for its intents.
#[derive(Default)]
struct Settle {
    verify: Vec<i64>,
    back: Vec<(i64, &'static str, DateTime<Utc>)>,
    results: Vec<(Intent, RowResult)>,
}

/// A row the rules sent to the carrier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRow<'a> {
    pub row_number: i32,
    pub device_id: i64,
    pub iccid: &'a str,
    pub imei: Option<&'a str>,
    pub service_plan: Option<&'a str>,
    pub operation: Operation,
}

/// Records, in the chunk's transaction, the intents of the rows the rules sent to the
/// carrier; the unique `(upload_id, row_number)` keeps a row to one.
pub async fn record_intents(
    txn: &impl ConnectionTrait,
    upload: &entity::upload::Model,
    rows: &[LineRow<'_>],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let (Some(root), Some(account), Some(target)) = (
        upload.carrier_root_tenant_id.as_deref(),
        upload.carrier_account_id.as_deref(),
        upload.action_carrier_status,
    ) else {
        return Err(DbErr::Custom(format!(
            "upload {} has no carrier account",
            upload.id
        )));
    };
    txn.execute(stmt(
        txn.get_database_backend(),
        "UPDATE uploads SET carrier_pending = carrier_pending + $2 WHERE id = $1",
        [
            upload.id.into(),
            i32::try_from(rows.len()).unwrap_or(i32::MAX).into(),
        ],
    ))
    .await?;
    for row in rows {
        txn.execute(stmt(
            txn.get_database_backend(),
            "INSERT INTO carrier_intents (upload_id, row_number, device_id, iccid, imei, service_plan, \
             root_tenant_id, carrier_account_id, operation, target_status, client_request_id, state, attempts, \
             next_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'PENDING', 0, $12, $12, $12)",
            [
                upload.id.into(),
                row.row_number.into(),
                row.device_id.into(),
                row.iccid.into(),
                row.imei.map(str::to_owned).into(),
                row.service_plan.map(str::to_owned).into(),
                root.into(),
                account.into(),
                row.operation.as_str().into(),
                target.into(),
                format!("{}-{}", upload.public_id, row.row_number).into(),
                now.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_rows_are_verified_and_rejected_ones_fail_with_the_carriers_words() {
        assert_eq!(
            after_call(&Ok(DeviceAnswer::Accepted), 1, 3, 0.0),
            AfterCall::Verify
        );
        let rejected = DeviceAnswer::Rejected {
            code: "InvalidDevice".into(),
            message: "no".into(),
        };
        assert_eq!(
            after_call(&Ok(rejected), 1, 3, 0.0),
            AfterCall::Fail(RowError::CarrierRejected, "InvalidDevice: no".into())
        );
    }

    #[test]
    fn rate_limits_wait_for_retry_after_and_unknown_outcomes_are_checked_first() {
        let limited = Err(CallError::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        });
        assert_eq!(
            after_call(&limited, 1, 3, 0.0),
            AfterCall::Retry(Duration::from_secs(2))
        );
        for e in [
            CallError::Server(500, String::new()),
            CallError::NoAnswer("timed out".into()),
        ] {
            assert!(matches!(after_call(&Err(e), 1, 3, 0.0), AfterCall::Check(_)));
        }
        assert!(matches!(
            after_call(&limited, 3, 3, 0.0),
            AfterCall::Fail(RowError::CarrierUnavailable, _)
        ));
    }

    #[test]
    fn an_unsure_row_is_verified_only_when_the_line_shows_its_key_and_resent_otherwise() {
        let line = |key: Option<&str>| LineState {
            iccid: "1".into(),
            state: "active".into(),
            msisdn: None,
            ip_address: None,
            last_client_request_id: key.map(str::to_owned),
        };
        assert_eq!(
            after_check(Some(&line(Some("u-7"))), "u-7", 3, 3),
            AfterCheck::Verify
        );
        assert_eq!(
            after_check(Some(&line(Some("u-8"))), "u-7", 1, 3),
            AfterCheck::Resend
        );
        assert_eq!(after_check(Some(&line(None)), "u-7", 1, 3), AfterCheck::Resend);
        assert_eq!(after_check(None, "u-7", 2, 3), AfterCheck::Resend);
        assert!(matches!(
            after_check(None, "u-7", 3, 3),
            AfterCheck::Fail(RowError::CarrierUnavailable, _)
        ));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert!(backoff(1, 0.0) < backoff(2, 0.0));
        assert_eq!(backoff(30, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(30, 1.0), Duration::from_secs(90));
    }

    #[test]
    fn a_poll_confirms_the_target_or_times_out_at_the_deadline() {
        let line = |state: &str| LineState {
            iccid: "1".into(),
            state: state.into(),
            msisdn: None,
            ip_address: None,
            last_client_request_id: None,
        };
        assert_eq!(
            after_poll(Some(line("active")), CarrierStatus::Active, false),
            AfterPoll::Confirmed(line("active"))
        );
        assert_eq!(
            after_poll(Some(line("pending activation")), CarrierStatus::Active, false),
            AfterPoll::PollAgain
        );
        assert!(matches!(
            after_poll(Some(line("pending activation")), CarrierStatus::Active, true),
            AfterPoll::Fail(RowError::CarrierVerificationTimeout, _)
        ));
        assert!(matches!(
            after_poll(None, CarrierStatus::Active, false),
            AfterPoll::Fail(RowError::CarrierRejected, _)
        ));
    }
}
