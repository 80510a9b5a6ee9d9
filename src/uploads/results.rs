//! Reading an upload's result rows: keyset pages by row number, their counts, and the latest
//! failures of many uploads at once. Every query walks an index from where it starts, so the
//! thousandth page of a million rows costs what the first does.

use std::collections::HashMap;

use entity::batch_result::{self, Outcome};
use entity::prelude::*;
use entity::upload;
use sea_orm::{ConnectionTrait, EntityTrait, Value};

use crate::db::stmt;
use crate::error::ApiError;

/// Exact filters of `Upload.results`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultFilter {
    pub outcome: Option<Outcome>,
    pub error_code: Option<String>,
}

impl ResultFilter {
    /// The SQL condition after `upload_id = $1 AND row_number > $2`, binding the error code
    /// as `$3`; `None` when nothing can match (error codes belong to FAIL rows only).
    ///
    /// Outcomes are literals, not parameters: SQLite uses the partial indexes on
    /// `outcome = 'FAIL'` only when the query states that very condition.
    fn condition(&self) -> Option<&'static str> {
        match (self.outcome, self.error_code.is_some()) {
            (Some(Outcome::Success), true) => None,
            (_, true) => Some(" AND outcome = 'FAIL' AND error_code = $3"),
            (Some(Outcome::Fail), false) => Some(" AND outcome = 'FAIL'"),
            (Some(Outcome::Success), false) => Some(" AND outcome = 'SUCCESS'"),
            (None, false) => Some(""),
        }
    }
}

pub struct ResultPage {
    pub items: Vec<batch_result::Model>,
    pub has_next: bool,
}

const COLUMNS: &str = "upload_id, row_number, device_uid, outcome, error_code, message";

/// Up to `first` results of upload `upload_id` after row `after` (exclusive), by row number.
pub async fn page(
    db: &impl ConnectionTrait,
    upload_id: i64,
    filter: &ResultFilter,
    first: u64,
    after: Option<i32>,
) -> Result<ResultPage, ApiError> {
    let Some(condition) = filter.condition() else {
        return Ok(ResultPage {
            items: Vec::new(),
            has_next: false,
        });
    };
    let after = after.unwrap_or(0);
    let mut values: Vec<Value> = vec![upload_id.into(), after.into()];
    if let Some(code) = &filter.error_code {
        values.push(code.clone().into());
    }
    // Unfiltered, a page is the next `first` row numbers (every processed row has a result),
    // so bound it: PostgreSQL's estimate for an upload newer than its statistics is a few
    // rows, and an open range then plans as a bitmap scan and sort of the whole upload.
    // Holes (chunks still running) or the last page fall back to the open range.
    if condition.is_empty() {
        let bound = i64::from(after) + first as i64 + 1;
        let page = fetch(db, &format!(" AND row_number <= {bound}"), values.clone(), first).await?;
        if page.has_next {
            return Ok(page);
        }
    }
    fetch(db, condition, values, first).await
}

async fn fetch(
    db: &impl ConnectionTrait,
    condition: &str,
    values: Vec<Value>,
    first: u64,
) -> Result<ResultPage, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM batch_results WHERE upload_id = $1 AND row_number > $2{condition} \
         ORDER BY row_number LIMIT {}",
        first + 1
    );
    let mut items = BatchResult::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .all(db)
        .await?;
    let has_next = items.len() as u64 > first;
    items.truncate(first as usize);
    Ok(ResultPage { items, has_next })
}

/// How many results of `upload` match `filter`: its counters where they answer, else one
/// count over the partial index of failures by error code.
pub async fn count(
    db: &impl ConnectionTrait,
    upload: &upload::Model,
    filter: &ResultFilter,
) -> Result<i64, ApiError> {
    let Some(code) = &filter.error_code else {
        return Ok(i64::from(match filter.outcome {
            None => upload.processed_rows,
            Some(Outcome::Success) => upload.succeeded,
            Some(Outcome::Fail) => upload.failed,
        }));
    };
    if filter.outcome == Some(Outcome::Success) {
        return Ok(0);
    }
    let sql = "SELECT COUNT(*) AS n FROM batch_results WHERE upload_id = $1 AND outcome = 'FAIL' AND error_code = $2";
    let row = db
        .query_one(stmt(
            db.get_database_backend(),
            sql,
            [upload.id.into(), code.clone().into()],
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0))
}

/// Most uploads one statement asks for: SQLite allows 500 parts in a compound SELECT.
pub const RECENT_FAILURES_BATCH: usize = 100;

/// The latest `per_upload` failures (highest row numbers first) of each upload in
/// `upload_ids`, one statement per [`RECENT_FAILURES_BATCH`] uploads.
///
/// One `UNION ALL` part per upload, each reading the partial index backwards from its end:
/// a window function over the failures would read every failure of every upload first.
pub async fn recent_failures(
    db: &impl ConnectionTrait,
    upload_ids: &[i64],
    per_upload: u32,
) -> Result<HashMap<i64, Vec<batch_result::Model>>, ApiError> {
    let mut by_upload: HashMap<i64, Vec<batch_result::Model>> = HashMap::with_capacity(upload_ids.len());
    for ids in upload_ids.chunks(RECENT_FAILURES_BATCH) {
        let sql = ids
            .iter()
            .enumerate()
            .map(|(i, _)| {
                format!(
                    "SELECT * FROM (SELECT {COLUMNS} FROM batch_results WHERE upload_id = ${} AND outcome = 'FAIL' \
                     ORDER BY row_number DESC LIMIT {per_upload}) AS r{i}",
                    i + 1
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let values = ids.iter().map(|&id| Value::from(id));
        let rows = BatchResult::find()
            .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
            .all(db)
            .await?;
        for row in rows {
            by_upload.entry(row.upload_id).or_default().push(row);
        }
    }
    // UNION ALL promises no order across its parts.
    for rows in by_upload.values_mut() {
        rows.sort_by_key(|r| std::cmp::Reverse(r.row_number));
    }
    Ok(by_upload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(outcome: Option<Outcome>, code: Option<&str>) -> ResultFilter {
        ResultFilter {
            outcome,
            error_code: code.map(str::to_owned),
        }
    }

    #[test]
    fn an_error_code_implies_failures_and_excludes_successes() {
        assert_eq!(
            filter(None, Some("X")).condition(),
            Some(" AND outcome = 'FAIL' AND error_code = $3")
        );
        assert_eq!(
            filter(Some(Outcome::Fail), Some("X")).condition(),
            filter(None, Some("X")).condition()
        );
        assert_eq!(filter(Some(Outcome::Success), Some("X")).condition(), None);
    }

    #[test]
    fn outcome_filters_name_the_outcome_literally() {
        assert_eq!(filter(None, None).condition(), Some(""));
        assert_eq!(
            filter(Some(Outcome::Fail), None).condition(),
            Some(" AND outcome = 'FAIL'")
        );
        assert_eq!(
            filter(Some(Outcome::Success), None).condition(),
            Some(" AND outcome = 'SUCCESS'")
        );
    }
}
