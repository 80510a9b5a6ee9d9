//! The audit trail: one `carrier_calls` row per call to a carrier (logins included), with
//! the upload and rows it was for, what was asked, the HTTP status, what came back and how
//! long it took. Tokens and secrets never reach it (the client's records leave them out).

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbErr};

use super::client::CallRecord;
use crate::db::stmt;

/// Most row numbers one audit row lists (a batch is at most 100 lines).
const MAX_ROWS_LISTED: usize = 100;

/// Who a call was made for.
pub struct CallFor<'a> {
    pub upload_id: Option<i64>,
    pub root_tenant_id: &'a str,
    pub account_id: &'a str,
    pub rows: &'a [i32],
}

pub async fn record(
    db: &impl ConnectionTrait,
    call_for: &CallFor<'_>,
    records: &[CallRecord],
) -> Result<(), DbErr> {
    let rows: Vec<i32> = call_for.rows.iter().copied().take(MAX_ROWS_LISTED).collect();
    let rows = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
    for r in records {
        db.execute(stmt(
            db.get_database_backend(),
            "INSERT INTO carrier_calls (upload_id, root_tenant_id, carrier_account_id, operation, row_numbers, \
             request, http_status, outcome, response, duration_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            [
                call_for.upload_id.into(),
                call_for.root_tenant_id.into(),
                call_for.account_id.into(),
                r.operation.into(),
                rows.clone().into(),
                r.request.clone().into(),
                r.http_status.map(i32::from).into(),
                r.outcome.into(),
                r.response.clone().into(),
                i32::try_from(r.duration.as_millis()).unwrap_or(i32::MAX).into(),
                Utc::now().into(),
            ],
        ))
        .await?;
        crate::metrics::carrier_call(r.operation, r.outcome);
    }
    Ok(())
}

/// One call as the audit trail shows it.
#[derive(Clone, Debug)]
pub struct CallRow {
    pub id: i64,
    pub operation: String,
    pub row_numbers: Vec<i32>,
    pub request: String,
    pub http_status: Option<i32>,
    pub outcome: String,
    pub response: String,
    pub duration_ms: i32,
    pub created_at: chrono::DateTime<Utc>,
}

/// A page of an upload's calls in the order they were made: `first` after the call `after`;
/// and whether more follow.
pub async fn page(
    db: &impl ConnectionTrait,
    upload_id: i64,
    first: u64,
    after: Option<i64>,
) -> Result<(Vec<CallRow>, bool), DbErr> {
    let rows = db
        .query_all(stmt(
            db.get_database_backend(),
            "SELECT id, operation, row_numbers, request, http_status, outcome, response, duration_ms, created_at \
             FROM carrier_calls WHERE upload_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            [
                upload_id.into(),
                after.unwrap_or(0).into(),
                i64::try_from(first.saturating_add(1)).unwrap_or(i64::MAX).into(),
            ],
        ))
        .await?;
    let mut calls = rows
        .iter()
        .map(|r| {
            let listed: String = r.try_get("", "row_numbers")?;
            Ok(CallRow {
                id: r.try_get("", "id")?,
                operation: r.try_get("", "operation")?,
                row_numbers: serde_json::from_str(&listed).unwrap_or_default(),
                request: r.try_get("", "request")?,
                http_status: r.try_get("", "http_status")?,
                outcome: r.try_get("", "outcome")?,
                response: r.try_get("", "response")?,
                duration_ms: r.try_get("", "duration_ms")?,
                created_at: r.try_get("", "created_at")?,
            })
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    let more = calls.len() as u64 > first;
    calls.truncate(usize::try_from(first).unwrap_or(usize::MAX));
    Ok((calls, more))
}

/// How many calls were made for an upload.
pub async fn count(db: &impl ConnectionTrait, upload_id: i64) -> Result<i64, DbErr> {
    let row = db
        .query_one(stmt(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM carrier_calls WHERE upload_id = $1",
            [upload_id.into()],
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0))
}
