//! Applies one chunk of an upload in ONE transaction: load the chunk's devices with one
//! set-based query, decide every row with the pure rules, apply the effects with set-based
//! statements, insert the result rows, and add to the counters what this transaction
//! inserted. A marker row claimed first makes a redelivered or re-run chunk a no-op.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use chrono::{DateTime, Utc};
use entity::action::ActionKind;
use entity::device::{self, state};
use entity::prelude::*;
use entity::upload::{self, UploadStatus};
use entity::upload_chunk;
use sea_orm::sea_query::{ArrayType, Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, Set, Value,
};

use super::carrier_calls::LineRow;
use super::chunk_rows;
use super::chunk_txn::{ChunkTxn, is_unique_violation, push_copy_text};
use super::csv_file::FileError;
use super::rules::{ActionContext, Decision, DeviceView, Effect, RowInput, decide};
use crate::domain::{DeviceType, KeyKind};
use crate::queue::{ChunkJob, ChunkRow};
use crate::storage::{ObjectStore, StorageError};
use crate::webhook::Outbox;

/// Rows per statement: keeps every statement under SQLite's and PostgreSQL's bind limits
/// whatever the configured chunk size.
const ROWS_PER_STATEMENT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The chunk's effects and results committed; `finished` is set when it was the last.
    Applied {
        succeeded: i32,
        failed: i32,
        finished: Option<UploadStatus>,
    },
    /// An earlier delivery already applied this chunk.
    AlreadyApplied,
    /// The upload is no longer processing (cancelled or failed): nothing was written.
    Skipped(UploadStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("upload {0} does not exist")]
    UploadMissing(i64),
    #[error("upload {0} is inconsistent: {1}")]
    Inconsistent(i64, &'static str),
    #[error("reading the chunk's rows: {0}")]
    Storage(#[from] StorageError),
    #[error("reading the chunk's rows: {0}")]
    File(#[from] FileError),
}

impl ChunkError {
    /// Database or storage trouble (busy, connection lost, deadlock) may pass; the rest
    /// (a snapshot gone, rows that do not match their job) will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Db(_) => true,
            Self::Storage(e) => !matches!(e, StorageError::NotFound(_) | StorageError::InvalidKey(_)),
            Self::File(e) => e.is_transient(),
            Self::UploadMissing(_) | Self::Inconsistent(..) => false,
        }
    }
}

/// Reads the chunk's rows ([`chunk_rows::load`]), then applies them in one transaction.
#[tracing::instrument(skip_all, fields(upload_pk = job.upload_id, chunk = job.chunk, rows = tracing::field::Empty))]
pub async fn apply_chunk(
    db: &DatabaseConnection,
    storage: &dyn ObjectStore,
    job: &ChunkJob,
    outbox: &Outbox,
) -> Result<ChunkOutcome, ChunkError> {
    let started = Instant::now();
    let rows = chunk_rows::load(storage, job).await?;
    let read = started.elapsed();
    let rows = rows.as_ref();
    tracing::Span::current().record("rows", rows.len());
    // SQLite: one writer at a time, taking turns in this process (see `sqlite_write_turn`).
    let _writer = crate::db::sqlite_write_turn(db).await;
    let txn = ChunkTxn::begin(db).await?;
    let now = Utc::now();
    // First statement: on SQLite it takes the write lock, so nothing read below can be
    // changed by another writer before this transaction commits.
    let claimed = UploadChunk::insert(upload_chunk::ActiveModel {
        upload_id: Set(job.upload_id),
        chunk: Set(job.chunk),
        rows: Set(rows.len() as i32),
        applied_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([upload_chunk::Column::UploadId, upload_chunk::Column::Chunk])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    if claimed == 0 {
        txn.rollback().await?;
        return Ok(ChunkOutcome::AlreadyApplied);
    }

    let upload = Upload::find_by_id(job.upload_id)
        .one(&txn)
        .await?
        .ok_or(ChunkError::UploadMissing(job.upload_id))?;
    if upload.status != UploadStatus::Processing {
        txn.rollback().await?;
        return Ok(ChunkOutcome::Skipped(upload.status));
    }
    let ctx = action_context(&upload)?;

    let inputs: Vec<RowInput> = rows
        .iter()
        .map(|r| {
            RowInput::new(ctx.key_kind(), &r.uid, r.uid2.as_deref(), r.duplicate).with_plan(r.plan.as_deref())
        })
        .collect();
    let keys: Vec<&str> = inputs.iter().filter_map(RowInput::lookup_key).collect();
    let mark = Instant::now();
    // PostgreSQL, when the action creates the devices it does not find (REGISTER, the bulk
    // case of new devices): no lookup first. Every keyed row is decided as if its device did
    // not exist, the devices go in by `COPY`, and only rows whose device turns out to exist
    // are looked up and decided again below, as for a device another upload created
    // meanwhile. A chunk of new devices saves the lookup; one of existing devices pays a
    // failed `COPY` on top of it.
    let create_first = txn.get_database_backend() == DbBackend::Postgres && ctx.creates_missing_devices();
    let devices = if create_first {
        HashMap::new()
    } else {
        load_devices(&txn, ctx.key_kind(), &keys).await?
    };
    // A carrier row whose SIM no device has yet names the smartphone of its IMEI, if that
    // has no SIM: the line is attached to it with the row's carrier call.
    let phones = if ctx.kind == ActionKind::CarrierStatus {
        let imeis: Vec<&str> = inputs
            .iter()
            .filter(|r| r.lookup_key().is_some_and(|k| !devices.contains_key(k)))
            .filter_map(|r| r.key2.as_deref())
            .collect();
        phones_without_sim(&txn, &imeis).await?
    } else {
        HashMap::new()
    };
    let lookup = mark.elapsed();
    let mut attach: Vec<(i64, &str)> = Vec::new();
    let mut decisions: Vec<Decision> = inputs
        .iter()
        .map(|row| {
            let key = row.lookup_key();
            if let Some(device) = key.and_then(|k| devices.get(k)) {
                return decide(row, Some(device), &ctx);
            }
            let phone = row
                .key2
                .as_deref()
                .and_then(|imei| phones.get(imei))
                .filter(|phone| attach.iter().all(|(id, _)| *id != phone.id));
            let decision = decide(row, phone, &ctx);
            if let (Decision::Success(Effect::CarrierCall { device_id, .. }), Some(iccid)) = (&decision, key)
            {
                attach.push((*device_id, iccid));
            }
            decision
        })
        .collect();
    attach_sims(&txn, &attach, now).await?;

    let mark = Instant::now();
    let to_create: Vec<usize> = (0..decisions.len())
        .filter(|&i| decisions[i] == Decision::Success(Effect::Create))
        .collect();
    if !to_create.is_empty() {
        let created = create_devices(&txn, &ctx, &inputs, &to_create, now).await?;
        // Some of these keys exist (created by another upload since they were looked up, or
        // not looked up at all): decide those rows again against the device that exists
        // (never a unique-key failure).
        let raced: Vec<usize> = to_create
            .into_iter()
            .filter(|&i| inputs[i].lookup_key().is_some_and(|k| !created.contains(k)))
            .collect();
        if !raced.is_empty() {
            let keys: Vec<&str> = raced.iter().filter_map(|&i| inputs[i].lookup_key()).collect();
            let now_there = load_devices(&txn, ctx.key_kind(), &keys).await?;
            for i in raced {
                decisions[i] = decide(
                    &inputs[i],
                    inputs[i].lookup_key().and_then(|k| now_there.get(k)),
                    &ctx,
                );
            }
        }
    }
    apply_updates(&txn, &ctx, &decisions, now).await?;
    // Rows for the carrier get their result when the carrier has answered and confirmed.
    let carrier_rows = carrier_intents(rows, &inputs, &decisions);
    let (rows, decisions) = if carrier_rows.is_empty() {
        (std::borrow::Cow::Borrowed(rows), decisions)
    } else {
        super::carrier_calls::record_intents(&txn, &upload, &carrier_rows, now).await?;
        let (kept_rows, kept): (Vec<ChunkRow>, Vec<Decision>) = rows
            .iter()
            .cloned()
            .zip(decisions)
            .filter(|(_, d)| !matches!(d, Decision::Success(Effect::CarrierCall { .. })))
            .unzip();
        (std::borrow::Cow::Owned(kept_rows), kept)
    };
    let rows = rows.as_ref();
    let effects = mark.elapsed();

    let mark = Instant::now();
    let (succeeded, failed) = insert_results(&txn, job.upload_id, rows, &decisions).await?;
    let results = mark.elapsed();
    let finished = add_to_counters(&txn, upload.id, succeeded, failed, now).await?;
    let Some(status) = finished else {
        // The upload left PROCESSING while this chunk ran (e.g. cancelled): write nothing.
        txn.rollback().await?;
        let current = Upload::find_by_id(job.upload_id)
            .one(db)
            .await?
            .map_or(UploadStatus::Failed, |u| u.status);
        return Ok(ChunkOutcome::Skipped(current));
    };
    if status.is_terminal() {
        outbox.upload_finished(&txn, upload.id).await?;
    }
    let mark = Instant::now();
    txn.commit().await?;
    count_rows(&decisions);
    crate::metrics::chunk("applied", Some(started.elapsed()));
    // Where a chunk's time goes, for profiling throughput (the bench sums these).
    tracing::debug!(
        read_us = read.as_micros() as u64,
        lookup_us = lookup.as_micros() as u64,
        effects_us = effects.as_micros() as u64,
        results_us = results.as_micros() as u64,
        commit_us = mark.elapsed().as_micros() as u64,
        total_us = started.elapsed().as_micros() as u64,
        "chunk timings"
    );
    tracing::info!(succeeded, failed, "chunk applied");
    let finished = status.is_terminal().then_some(status);
    if let Some(status) = finished {
        crate::metrics::upload_finished(status);
        tracing::info!(?status, "upload finished");
    }
    Ok(ChunkOutcome::Applied {
        succeeded,
        failed,
        finished,
    })
}

/// Gives each device its new SIM (rows of a carrier action that found the device by its IMEI).
/// Only a device still without one: an earlier chunk that attached another SIM meanwhile
/// holds the row lock, so this chunk sees its SIM, or the unique index refuses a SIM taken
/// by another device and the chunk runs again, finding it by that SIM.
async fn attach_sims(txn: &ChunkTxn, attach: &[(i64, &str)], now: DateTime<Utc>) -> Result<(), DbErr> {
    for (device_id, iccid) in attach {
        let attached = txn
            .execute(crate::db::stmt(
                txn.get_database_backend(),
                "UPDATE devices SET iccid = $2, updated_at = $3 WHERE id = $1 AND iccid IS NULL",
                [(*device_id).into(), (*iccid).into(), now.into()],
            ))
            .await?
            .rows_affected();
        if attached != 1 {
            return Err(DbErr::Custom(format!(
                "device {device_id} took another SIM meanwhile"
            )));
        }
    }
    Ok(())
}

/// The rows the rules sent to the carrier.
fn carrier_intents<'a>(
    rows: &[ChunkRow],
    inputs: &'a [RowInput],
    decisions: &[Decision],
) -> Vec<LineRow<'a>> {
    rows.iter()
        .zip(inputs)
        .zip(decisions)
        .filter_map(|((row, input), decision)| match decision {
            Decision::Success(Effect::CarrierCall { device_id, operation }) => Some(LineRow {
                row_number: row.row_number,
                device_id: *device_id,
                iccid: input.lookup_key()?,
                imei: input.key2.as_deref(),
                service_plan: input.plan.as_deref(),
                operation: *operation,
            }),
            _ => None,
        })
        .collect()
}

/// Adds a committed chunk's rows to the row counters, one increment per outcome and code.
fn count_rows(decisions: &[Decision]) {
    let mut by_code: HashMap<&'static str, u64> = HashMap::new();
    for decision in decisions {
        let code = match decision {
            Decision::Success(_) => "",
            Decision::Fail(error, _) => error.code(),
        };
        *by_code.entry(code).or_default() += 1;
    }
    for (code, n) in by_code {
        let outcome = if code.is_empty() { "SUCCESS" } else { "FAIL" };
        crate::metrics::rows(outcome, code, n);
    }
}

fn action_context(upload: &upload::Model) -> Result<ActionContext, ChunkError> {
    let device_type = DeviceType::from_code(upload.device_type.into())
        .ok_or(ChunkError::Inconsistent(upload.id, "unknown device type"))?;
    Ok(ActionContext {
        kind: upload.action_kind,
        device_type,
        target_tenant: upload.target_tenant_id.clone(),
        target_service_type: upload.action_service_type.unwrap_or_default(),
        workflow: upload
            .workflow_id
            .clone()
            .map(|id| (id, upload.workflow_service_type.unwrap_or_default())),
        brand_id: upload.brand_id,
        target_carrier_status: upload.action_carrier_status,
    })
}

/// The stored devices of `keys`, locked for this transaction on PostgreSQL (on SQLite the
/// transaction already holds the database's write lock).
async fn load_devices(
    txn: &ChunkTxn,
    key_kind: KeyKind,
    keys: &[&str],
) -> Result<HashMap<String, DeviceView>, DbErr> {
    lookup(txn, key_kind, keys, false).await
}

/// The smartphones of these IMEIs that have no SIM yet, locked as [`load_devices`] does.
async fn phones_without_sim(txn: &ChunkTxn, imeis: &[&str]) -> Result<HashMap<String, DeviceView>, DbErr> {
    lookup(txn, KeyKind::Device(DeviceType::Smartphone), imeis, true).await
}

async fn lookup(
    txn: &ChunkTxn,
    key_kind: KeyKind,
    keys: &[&str],
    without_sim: bool,
) -> Result<HashMap<String, DeviceView>, DbErr> {
    let mut found = HashMap::with_capacity(keys.len());
    if keys.is_empty() {
        return Ok(found);
    }
    // Lines are found by their SIM, whatever the device type; devices by type and key.
    let (device_type, key_column) = match key_kind {
        KeyKind::Device(device_type) => (device_type.code(), "uid"),
        KeyKind::Iccid => (0, "iccid"),
    };
    let type_filter = match (key_kind, without_sim) {
        (KeyKind::Iccid, _) => "$1 = 0",
        (_, false) => "device_type = $1",
        (_, true) => "device_type = $1 AND iccid IS NULL",
    };
    if txn.get_database_backend() == DbBackend::Postgres {
        // One array parameter instead of thousands of placeholders.
        // Locked in key order: two chunks over the same devices (two uploads, the rows in
        // any order) take their locks in the same sequence, so one waits and none deadlocks.
        let sql = format!(
            "SELECT id, tenant_id, {key_column} AS uid, state, service_type, workflow_id, carrier_status \
             FROM devices WHERE {type_filter} AND {key_column} = ANY($2) ORDER BY {key_column} FOR UPDATE"
        );
        let values = [
            device_type.into(),
            text_array(keys.iter().map(|k| Some((*k).to_owned()))),
        ];
        // Always by the unique index: at most a chunk's keys of probes, whatever the table's
        // size. Left to itself the planner scans the whole table for a couple of thousand
        // keys once it holds a hundred thousand rows (20 ms against 3 ms by index), or keeps
        // a plan made while the table was small. Only for this statement.
        txn.execute_unprepared("SET LOCAL enable_seqscan = off").await?;
        let rows = txn
            .query_all(crate::db::stmt(DbBackend::Postgres, &sql, values))
            .await?;
        txn.execute_unprepared("SET LOCAL enable_seqscan TO DEFAULT")
            .await?;
        for row in rows {
            found.insert(row.try_get("", "uid")?, device_view(&row)?);
        }
        return Ok(found);
    }
    // SQLite: the keys as one JSON parameter; each is a probe of the unique index.
    let sql = format!(
        "SELECT id, tenant_id, {key_column} AS uid, state, service_type, workflow_id, carrier_status FROM devices \
         WHERE {type_filter} AND {key_column} IN (SELECT value FROM json_each($2))"
    );
    let values = [device_type.into(), json_text(&keys)?.into()];
    for row in txn
        .query_all(crate::db::stmt(DbBackend::Sqlite, &sql, values))
        .await?
    {
        found.insert(row.try_get("", "uid")?, device_view(&row)?);
    }
    Ok(found)
}

fn device_view(row: &sea_orm::QueryResult) -> Result<DeviceView, DbErr> {
    Ok(DeviceView {
        id: row.try_get("", "id")?,
        tenant_id: row.try_get("", "tenant_id")?,
        state: row.try_get("", "state")?,
        service_type: row.try_get("", "service_type")?,
        workflow_id: row.try_get("", "workflow_id")?,
        carrier_status: row.try_get("", "carrier_status")?,
    })
}

/// The SQL around it turns `''` back into NULL with `NULLIF`: sea-query's PostgreSQL binder
/// cannot bind a NULL element inside a text array.
fn text_array(items: impl IntoIterator<Item = Option<String>>) -> Value {
    Value::Array(
        ArrayType::String,
        Some(Box::new(
            items
                .into_iter()
                .map(|s| Value::String(Some(Box::new(s.unwrap_or_default()))))
                .collect(),
        )),
    )
}

/// Inserts the devices REGISTER creates; returns the keys this transaction inserted.
async fn create_devices(
    txn: &ChunkTxn,
    ctx: &ActionContext,
    inputs: &[RowInput],
    rows: &[usize],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, DbErr> {
    // In key order, like the locks: an insert waits on another transaction's uncommitted
    // row with the same key, and two transactions inserting the same keys in opposite
    // orders would each wait for the other.
    let mut rows = rows.to_vec();
    rows.sort_unstable_by(|&a, &b| inputs[a].lookup_key().cmp(&inputs[b].lookup_key()));
    let rows = rows.as_slice();
    let backend = txn.get_database_backend();
    let mut created = HashSet::with_capacity(rows.len());
    if backend == DbBackend::Postgres {
        // COPY under a savepoint: a key that exists (not looked up, or created by another
        // upload since the lookup, committed or committing while this waits on it) fails the
        // whole COPY. Rolled back to the
        // savepoint, the chunk's devices go in by the insert that skips such keys instead,
        // and their rows are decided again by the caller.
        txn.execute_unprepared("SAVEPOINT create_devices").await?;
        match txn
            .copy_in(COPY_DEVICES, device_rows(ctx, inputs, rows, now))
            .await
        {
            Ok(_) => {
                txn.execute_unprepared("RELEASE SAVEPOINT create_devices").await?;
                created.extend(
                    rows.iter()
                        .filter_map(|&i| inputs[i].lookup_key().map(str::to_owned)),
                );
                return Ok(created);
            }
            Err(e) if is_unique_violation(&e) => {
                tracing::debug!("a device of the chunk exists; inserting around it");
                txn.execute_unprepared(
                    "ROLLBACK TO SAVEPOINT create_devices; RELEASE SAVEPOINT create_devices",
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        const SQL: &str = "INSERT INTO devices (tenant_id, device_type, uid, uid2, state, service_type, brand_id, \
                             workflow_id, created_at, updated_at) \
                           SELECT $1, $2, u.uid, NULLIF(u.uid2, ''), $3, $4, $5, $6, $7, $7 FROM UNNEST($8::text[], $9::text[]) AS u(uid, uid2) \
                           ORDER BY u.uid ON CONFLICT (device_type, uid) DO NOTHING RETURNING uid";
        let mut values = shared_device_values(ctx, now);
        values.extend([
            text_array(rows.iter().map(|&i| inputs[i].lookup_key().map(str::to_owned))),
            text_array(rows.iter().map(|&i| inputs[i].key2.clone())),
        ]);
        for row in txn.query_all(crate::db::stmt(backend, SQL, values)).await? {
            created.insert(row.try_get::<String>("", "uid")?);
        }
        return Ok(created);
    }
    // SQLite: this transaction has held the database's write lock since its first statement,
    // so no key looked up as missing can have been created since: plain inserts, every key
    // created (a unique-key failure would roll the chunk back and retry it). The keys go in
    // as one JSON array, the columns every device shares as parameters once: a statement
    // with ten bound values a row spent more time binding than inserting.
    const SQL: &str = "INSERT INTO devices (tenant_id, device_type, uid, uid2, state, service_type, brand_id, \
                         workflow_id, created_at, updated_at) \
                       SELECT $1, $2, j.value ->> 0, j.value ->> 1, $3, $4, $5, $6, $7, $7 FROM json_each($8) AS j";
    let keys: Vec<(&str, Option<&str>)> = rows
        .iter()
        .filter_map(|&i| Some((inputs[i].lookup_key()?, inputs[i].key2.as_deref())))
        .collect();
    let mut values = shared_device_values(ctx, now);
    values.push(json_text(&keys)?.into());
    txn.execute(crate::db::stmt(backend, SQL, values)).await?;
    created.extend(keys.into_iter().map(|(key, _)| key.to_owned()));
    Ok(created)
}

/// `$1` to `$7` of the device inserts: what every device a chunk creates shares.
fn shared_device_values(ctx: &ActionContext, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        ctx.target_tenant.clone().into(),
        ctx.device_type.code().into(),
        state::READY_FOR_USE.into(),
        ctx.target_service_type.into(),
        ctx.brand_id.into(),
        ctx.workflow.as_ref().map(|(id, _)| id.clone()).into(),
        now.into(),
    ]
}

/// A statement's rows as one JSON parameter, for SQLite's `json_each`.
fn json_text(rows: &impl serde::Serialize) -> Result<String, DbErr> {
    serde_json::to_string(rows).map_err(|e| DbErr::Custom(format!("encoding a statement's rows: {e}")))
}

/// One UPDATE per kind of effect for the whole chunk.
async fn apply_updates(
    txn: &ChunkTxn,
    ctx: &ActionContext,
    decisions: &[Decision],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut ids: Vec<i64> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Success(
                Effect::Register { device_id }
                | Effect::AssignWorkflow { device_id }
                | Effect::ExitWorkflow { device_id }
                | Effect::Deregister { device_id },
            ) => Some(*device_id),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    // The rows are locked already (PostgreSQL) or the database is (SQLite); in id order
    // anyway, so no statement here can take locks in a conflicting order.
    ids.sort_unstable();
    let workflow = ctx.workflow.as_ref().map(|(id, _)| id.clone());
    for slice in ids.chunks(ROWS_PER_STATEMENT) {
        let mut update = Device::update_many().col_expr(device::Column::UpdatedAt, Expr::value(now));
        update = match ctx.kind {
            entity::action::ActionKind::Register => {
                let mut u = update
                    .col_expr(device::Column::State, Expr::value(state::READY_FOR_USE))
                    .col_expr(device::Column::ServiceType, Expr::value(ctx.target_service_type));
                if let Some(brand) = ctx.brand_id {
                    u = u.col_expr(device::Column::BrandId, Expr::value(brand));
                }
                if let Some(wf) = &workflow {
                    u = u.col_expr(device::Column::WorkflowId, Expr::value(wf.clone()));
                }
                u
            }
            entity::action::ActionKind::AssignWorkflow => {
                update.col_expr(device::Column::WorkflowId, Expr::value(workflow.clone()))
            }
            entity::action::ActionKind::ExitWorkflow => {
                update.col_expr(device::Column::WorkflowId, Expr::value(Value::String(None)))
            }
            entity::action::ActionKind::Deregister => {
                update.col_expr(device::Column::State, Expr::value(state::IDLE))
            }
            // A line changes when the carrier confirms it (`carrier_calls`), not here.
            entity::action::ActionKind::CarrierStatus => return Ok(()),
        };
        update
            .filter(device::Column::Id.is_in(slice.iter().copied()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Inserts one result per row; returns how many succeeded and failed. No row of the chunk
/// can have a result yet: only this chunk's transaction writes them, and its marker row
/// (claimed first) makes every other delivery of the chunk a no-op. So the rows go in without
/// conflict handling (on PostgreSQL by `COPY`, which has none); the primary key still refuses
/// a second result.
async fn insert_results(
    txn: &ChunkTxn,
    upload_id: i64,
    rows: &[ChunkRow],
    decisions: &[Decision],
) -> Result<(i32, i32), DbErr> {
    let succeeded = decisions
        .iter()
        .filter(|d| matches!(d, Decision::Success(_)))
        .count() as i32;
    let counts = (succeeded, decisions.len() as i32 - succeeded);
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.copy_in(COPY_RESULTS, result_rows(upload_id, rows, decisions))
            .await?;
        return Ok(counts);
    }
    // SQLite: every row in one JSON parameter (see `create_devices`).
    const SQL: &str = "INSERT INTO batch_results (upload_id, row_number, device_uid, outcome, error_code, message) \
                       SELECT $1, j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4 \
                       FROM json_each($2) AS j";
    // (row number, key, outcome, error code, message): the columns after `upload_id`.
    type ResultRow<'a> = (i32, &'a str, &'static str, Option<&'static str>, Option<&'a str>);
    let results: Vec<ResultRow> = rows
        .iter()
        .zip(decisions)
        .map(|(row, decision)| match decision {
            Decision::Success(_) => (row.row_number, row.uid.trim(), "SUCCESS", None, None),
            Decision::Fail(e, m) => (
                row.row_number,
                row.uid.trim(),
                "FAIL",
                Some(e.code()),
                Some(m.as_str()),
            ),
        })
        .collect();
    let values = [upload_id.into(), json_text(&results)?.into()];
    txn.execute(crate::db::stmt(DbBackend::Sqlite, SQL, values))
        .await?;
    Ok(counts)
}

/// PostgreSQL's bulk path for new devices and results, fed by `device_rows` and `result_rows`.
const COPY_DEVICES: &str = "COPY devices (tenant_id, device_type, uid, uid2, state, service_type, brand_id, \
                            workflow_id, created_at, updated_at) FROM STDIN";
const COPY_RESULTS: &str =
    "COPY batch_results (upload_id, row_number, device_uid, outcome, error_code, message) FROM STDIN";

/// The `COPY` text of the devices REGISTER creates at `rows` (in their order): the columns
/// and values of the insert it replaces, an empty second IMEI as NULL.
fn device_rows(ctx: &ActionContext, inputs: &[RowInput], rows: &[usize], now: DateTime<Utc>) -> Vec<u8> {
    let mut before = String::new();
    push_copy_text(&mut before, Some(&ctx.target_tenant), false);
    let _ = write!(before, "\t{}\t", ctx.device_type.code());
    let mut after = format!("\t{}\t{}\t", state::READY_FOR_USE, ctx.target_service_type);
    match ctx.brand_id {
        Some(brand) => {
            let _ = write!(after, "{brand}");
        }
        None => after.push_str("\\N"),
    }
    after.push('\t');
    push_copy_text(
        &mut after,
        ctx.workflow.as_ref().map(|(id, _)| id.as_str()),
        false,
    );
    // Microseconds, as PostgreSQL stores them (and as a bound value is truncated to).
    let now = now.format("%Y-%m-%d %H:%M:%S%.6f+00");
    let _ = writeln!(after, "\t{now}\t{now}");
    let mut buf = String::with_capacity(rows.len() * (before.len() + after.len() + 40));
    for &i in rows {
        let Some(key) = inputs[i].lookup_key() else {
            continue;
        };
        buf.push_str(&before);
        push_copy_text(&mut buf, Some(key), false);
        buf.push('\t');
        push_copy_text(&mut buf, inputs[i].key2.as_deref(), true);
        buf.push_str(&after);
    }
    buf.into_bytes()
}

/// The `COPY` text of a chunk's results: empty error codes and messages as NULL, as the
/// insert it replaces stored them.
fn result_rows(upload_id: i64, rows: &[ChunkRow], decisions: &[Decision]) -> Vec<u8> {
    let mut buf = String::with_capacity(rows.len() * 48);
    for (row, decision) in rows.iter().zip(decisions) {
        let (outcome, code, message) = match decision {
            Decision::Success(_) => ("SUCCESS", None, None),
            Decision::Fail(e, m) => ("FAIL", Some(e.code()), Some(m.as_str())),
        };
        let _ = write!(buf, "{upload_id}\t{}\t", row.row_number);
        push_copy_text(&mut buf, Some(row.uid.trim()), false);
        buf.push('\t');
        buf.push_str(outcome);
        buf.push('\t');
        push_copy_text(&mut buf, code, true);
        buf.push('\t');
        push_copy_text(&mut buf, message, true);
        buf.push('\n');
    }
    buf.into_bytes()
}

/// Adds this chunk's counts and, when they reach the total, completes the upload in the same
/// statement, queuing its error report when a row failed (so the report is due exactly when
/// the terminal state exists). Concurrent chunks serialise on the upload's row, so each sees
/// the others' committed counts and exactly one of them completes it. `None` when the upload
/// left PROCESSING meanwhile.
pub(super) async fn add_to_counters(
    txn: &impl ConnectionTrait,
    upload_id: i64,
    succeeded: i32,
    failed: i32,
    now: DateTime<Utc>,
) -> Result<Option<UploadStatus>, DbErr> {
    const SQL: &str = "UPDATE uploads SET \
           processed_rows = processed_rows + $2, \
           succeeded = succeeded + $3, \
           failed = failed + $4, \
           status = CASE WHEN total_rows IS NOT NULL AND processed_rows + $2 >= total_rows \
                         THEN CASE WHEN failed + $4 > 0 THEN 'COMPLETED_WITH_ERRORS' ELSE 'COMPLETED' END \
                         ELSE status END, \
           finished_at = CASE WHEN total_rows IS NOT NULL AND processed_rows + $2 >= total_rows \
                              THEN $5 ELSE finished_at END, \
           report_status = CASE WHEN total_rows IS NOT NULL AND processed_rows + $2 >= total_rows \
                                 AND failed + $4 > 0 THEN 'PENDING' ELSE report_status END, \
           report_due_at = CASE WHEN total_rows IS NOT NULL AND processed_rows + $2 >= total_rows \
                                 AND failed + $4 > 0 THEN $5 ELSE report_due_at END, \
           updated_at = $5 \
         WHERE id = $1 AND status = 'PROCESSING' \
         RETURNING status";
    let values = [
        upload_id.into(),
        (succeeded + failed).into(),
        succeeded.into(),
        failed.into(),
        now.into(),
    ];
    let row = txn
        .query_one(crate::db::stmt(txn.get_database_backend(), SQL, values))
        .await?;
    row.map(|r| r.try_get::<UploadStatus>("", "status")).transpose()
}
