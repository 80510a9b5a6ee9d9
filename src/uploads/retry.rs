//! `retryFailedRows`: a new PREPARED upload of a finished upload's rows that did not succeed,
//! its file already written (the original header and lines), so the client only finalizes it.
//! A completed upload retries its failed rows; one that stopped early (cancelled, or failed
//! part way) also retries every row it never processed.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use chrono::Utc;
use entity::upload::{self, UploadStatus};
use sea_orm::{ActiveModelTrait, Set};

use super::failed_rows::{Layout, store};
use super::{Prepared, find_visible, sign_upload};
use crate::access;
use crate::auth::{Identity, Permission};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::upload_key;

/// Which rows of `original` a retry holds, or `None` when there is nothing to retry. A file
/// that was never read (`total_rows` unknown) has no rows to offer: it failed as a whole or
/// was cancelled before it started, and uploading it again is the client's move.
pub fn retry_layout(original: &upload::Model) -> Option<Layout> {
    let unprocessed = match original.status {
        UploadStatus::Cancelled | UploadStatus::Failed => original
            .total_rows
            .is_some_and(|total| original.processed_rows < total),
        _ => false,
    };
    if unprocessed {
        Some(Layout::RetryUnfinished)
    } else if original.failed > 0 {
        Some(Layout::RetryFile)
    } else {
        None
    }
}

/// Uploads whose retry file this process is writing: a second request for the same upload
/// while one runs is refused instead of starting a second full read of its file.
fn in_flight() -> &'static Mutex<HashSet<i64>> {
    static IN_FLIGHT: OnceLock<Mutex<HashSet<i64>>> = OnceLock::new();
    IN_FLIGHT.get_or_init(Default::default)
}

/// Most retry files this process writes at once; more requests wait their turn.
fn merges() -> &'static tokio::sync::Semaphore {
    static MERGES: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    MERGES.get_or_init(|| tokio::sync::Semaphore::new(2))
}

/// Holds an upload's place in [`in_flight`] until dropped.
struct InFlight(i64);

impl InFlight {
    fn take(upload_id: i64) -> Result<Self, ApiError> {
        let mut set = in_flight().lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(upload_id) {
            Ok(Self(upload_id))
        } else {
            Err(ApiError::RetryInProgress)
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        in_flight()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, upload_id = %upload_id))]
pub async fn retry_failed_rows(
    state: &AppState,
    identity: &Identity,
    tenant_id: &str,
    upload_id: &str,
) -> Result<Prepared, ApiError> {
    let db = &state.db;
    let scope = access::authorize(db, identity, tenant_id, Permission::Update).await?;
    let original = find_visible(db, &scope, upload_id)
        .await?
        .ok_or(ApiError::UploadNotFound)?;
    if !original.status.is_terminal() {
        return Err(ApiError::UploadNotFinished);
    }
    let layout = retry_layout(&original).ok_or(ApiError::NothingToRetry)?;
    let _flight = InFlight::take(original.id)?;
    let _turn = merges().acquire().await.map_err(ApiError::internal)?;

    let now = Utc::now();
    let public_id = uuid::Uuid::now_v7().to_string();
    let object_key = upload_key(&public_id, now);
    // The file first: a PREPARED retry upload always has its file, so finalize just works.
    let rows = store(db, state.storage.as_ref(), &original, layout, &object_key).await?;
    let rows = i32::try_from(rows).map_err(ApiError::internal)?;
    if rows == 0 {
        return Err(ApiError::NothingToRetry);
    }
    // As prepare does: the client may still replace the file before finalizing.
    let post = sign_upload(state, &object_key, now).await?;

    let upload = upload::ActiveModel {
        public_id: Set(public_id),
        tenant_id: Set(original.tenant_id.clone()),
        target_tenant_id: Set(original.target_tenant_id.clone()),
        created_by: Set(identity.user.clone()),
        device_type: Set(original.device_type),
        action_id: Set(original.action_id.clone()),
        action_kind: Set(original.action_kind),
        action_service_type: Set(original.action_service_type),
        action_carrier_status: Set(original.action_carrier_status),
        carrier_account_id: Set(original.carrier_account_id.clone()),
        carrier_root_tenant_id: Set(original.carrier_root_tenant_id.clone()),
        workflow_id: Set(original.workflow_id.clone()),
        workflow_service_type: Set(original.workflow_service_type),
        brand_id: Set(original.brand_id),
        provision_type: Set(original.provision_type.clone()),
        declared_row_count: Set(rows),
        object_key: Set(object_key),
        status: Set(UploadStatus::Prepared),
        processed_rows: Set(0),
        succeeded: Set(0),
        failed: Set(0),
        report_attempts: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    tracing::info!(retry_of = %original.public_id, new_upload_id = %upload.public_id, rows, ?layout, "rows prepared for retry");
    Ok(Prepared { upload, post })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(status: UploadStatus, total: Option<i32>, processed: i32, failed: i32) -> upload::Model {
        let now = Utc::now();
        upload::Model {
            id: 1,
            public_id: "p".into(),
            tenant_id: "t".into(),
            target_tenant_id: "t".into(),
            created_by: "a".into(),
            device_type: 1,
            action_id: "a".into(),
            action_kind: entity::action::ActionKind::Register,
            action_service_type: Some(2),
            action_carrier_status: None,
            carrier_account_id: None,
            carrier_root_tenant_id: None,
            carrier_pending: 0,
            workflow_id: None,
            workflow_service_type: None,
            brand_id: None,
            provision_type: None,
            sim_control_name: None,
            sim_control_id: None,
            billing_detail: None,
            declared_row_count: 10,
            object_key: "k".into(),
            status,
            total_rows: total,
            processed_rows: processed,
            succeeded: processed - failed,
            failed,
            failure_reason: None,
            created_at: now,
            queued_at: None,
            started_at: None,
            finished_at: None,
            updated_at: now,
            error_report_key: None,
            chunk_size: None,
            report_status: None,
            report_due_at: None,
            report_attempts: 0,
        }
    }

    #[test]
    fn an_upload_that_stopped_early_retries_its_unprocessed_rows_too() {
        use UploadStatus::*;
        let cases = [
            (
                upload(CompletedWithErrors, Some(10), 10, 3),
                Some(Layout::RetryFile),
            ),
            (upload(Completed, Some(10), 10, 0), None),
            (upload(Cancelled, Some(10), 4, 0), Some(Layout::RetryUnfinished)),
            (upload(Cancelled, Some(10), 4, 1), Some(Layout::RetryUnfinished)),
            (upload(Failed, Some(10), 6, 2), Some(Layout::RetryUnfinished)),
            (upload(Cancelled, Some(10), 10, 1), Some(Layout::RetryFile)),
            // Never read (cancelled before dispatch, or a file rejected whole).
            (upload(Cancelled, None, 0, 0), None),
            (upload(Failed, None, 0, 0), None),
        ];
        for (upload, want) in cases {
            assert_eq!(
                retry_layout(&upload),
                want,
                "{:?} {:?}",
                upload.status,
                upload.total_rows
            );
        }
    }

    #[test]
    fn a_second_retry_of_the_same_upload_is_refused_while_the_first_runs() {
        let first = InFlight::take(-7).unwrap();
        assert!(matches!(InFlight::take(-7), Err(ApiError::RetryInProgress)));
        assert!(InFlight::take(-8).is_ok());
        drop(first);
        assert!(InFlight::take(-7).is_ok());
    }
}
