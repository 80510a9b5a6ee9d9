//! Each carrier account's rate limit, shared by every worker process: a slot schedule kept in
//! the account's `carrier_sessions` row (the next free slot). A caller takes the next slot
//! with a compare-and-set and waits for it, so calls from all processes together start at
//! most at the limit's pace.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};

use crate::db::stmt;

/// Calls are spaced this much wider than the limit alone would need, so that network jitter
/// between our start and the carrier's clock cannot push a second over the limit.
const HEADROOM: f64 = 1.1;

/// The interval between two calls of an account allowed `per_second` calls a second.
pub fn spacing(per_second: u32) -> Duration {
    Duration::from_secs_f64(HEADROOM / f64::from(per_second.max(1)))
}

/// Takes the account's next call slot and waits for it.
pub async fn take_slot(
    db: &DatabaseConnection,
    root_tenant_id: &str,
    account_id: &str,
    per_second: u32,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let step = chrono::Duration::from_std(spacing(per_second)).unwrap_or(chrono::Duration::seconds(1));
    loop {
        let row = db
            .query_one(stmt(
                backend,
                "SELECT next_slot_at FROM carrier_sessions WHERE root_tenant_id = $1 AND carrier_account_id = $2",
                [root_tenant_id.into(), account_id.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("carrier session".into()))?;
        let stored: Option<DateTime<Utc>> = row.try_get("", "next_slot_at")?;
        let now = Utc::now();
        let slot = stored.map_or(now, |at| at.max(now));
        // Microseconds, as PostgreSQL keeps them: the next compare-and-set must see the same value.
        let next = truncate_micros(slot + step);
        let swapped = match stored {
            Some(at) => {
                db.execute(stmt(
                    backend,
                    "UPDATE carrier_sessions SET next_slot_at = $3 \
                     WHERE root_tenant_id = $1 AND carrier_account_id = $2 AND next_slot_at = $4",
                    [root_tenant_id.into(), account_id.into(), next.into(), at.into()],
                ))
                .await?
            }
            None => {
                db.execute(stmt(
                    backend,
                    "UPDATE carrier_sessions SET next_slot_at = $3 \
                     WHERE root_tenant_id = $1 AND carrier_account_id = $2 AND next_slot_at IS NULL",
                    [root_tenant_id.into(), account_id.into(), next.into()],
                ))
                .await?
            }
        };
        if swapped.rows_affected() == 1 {
            if let Ok(wait) = (slot - Utc::now()).to_std() {
                tokio::time::sleep(wait).await;
            }
            return Ok(());
        }
    }
}

fn truncate_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_spaced_a_little_wider_than_the_limit() {
        assert_eq!(spacing(10), Duration::from_millis(110));
        assert_eq!(spacing(0), spacing(1));
    }
}
