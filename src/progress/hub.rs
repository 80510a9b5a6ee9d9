//! Fan-out of upload progress: every upload being watched in this process has ONE reader task
//! that re-reads it when the bus says it changed (coalesced) or once a second while it is
//! processing, and publishes the snapshot through a `watch` channel to all its subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::prelude::{BatchResult, Upload};
use entity::upload::UploadStatus;
use entity::{batch_result, upload};
use futures::Stream;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

use super::bus::{Change, ProgressBus};

/// How many of the latest failed rows a snapshot carries.
pub const RECENT_ERRORS: u64 = 5;

/// One read of an upload, shared by all its subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub upload: upload::Model,
    /// The latest failed rows, highest row number first.
    pub recent_errors: Vec<batch_result::Model>,
    pub read_at: DateTime<Utc>,
}

impl Snapshot {
    /// The last snapshot there will be.
    pub fn is_final(&self) -> bool {
        self.upload.status.is_terminal()
    }
}

/// How often a reader may read and publish, and re-reads while nothing is signalled.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Least time between two reads of one upload: signals in between are coalesced.
    pub min_read_gap: Duration,
    /// Least time between two published snapshots, except the final one, which goes out as
    /// soon as it is read (reading more often than publishing keeps that latency low).
    pub min_publish_gap: Duration,
    /// Re-read period of a processing upload, so rate and ETA move (and a lost signal is
    /// made up for) without any signal.
    pub tick: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            min_read_gap: Duration::from_millis(100),
            min_publish_gap: Duration::from_millis(250),
            tick: Duration::from_secs(1),
        }
    }
}

type Slot = watch::Sender<Option<Arc<Snapshot>>>;

struct Watched {
    slot: Slot,
    /// A stored permit means "re-read": signals arriving mid-read are not lost, and any
    /// number of them make one read.
    dirty: Notify,
}

struct Inner {
    db: DatabaseConnection,
    pace: Pace,
    watched: Mutex<HashMap<i64, Arc<Watched>>>,
    readers_started: AtomicU64,
    reads: AtomicU64,
}

pub struct ProgressHub {
    inner: Arc<Inner>,
}

impl ProgressHub {
    /// A hub reading from `db` and hearing `bus`; starts the task routing bus signals to the
    /// readers of the uploads concerned.
    pub fn new(db: DatabaseConnection, bus: &ProgressBus, pace: Pace) -> Self {
        let inner = Arc::new(Inner {
            db,
            pace,
            watched: Mutex::new(HashMap::new()),
            readers_started: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        });
        tokio::spawn(route(bus.subscribe(), Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Snapshots of upload `upload_id` (internal id): the current one at once, then each
    /// change, ending after the final one. The caller checked that it may see the upload.
    pub fn watch(&self, upload_id: i64) -> impl Stream<Item = Arc<Snapshot>> + Send + 'static {
        let receiver = {
            let mut watched = self.inner.lock();
            match watched.get(&upload_id) {
                Some(entry) => entry.slot.subscribe(),
                None => {
                    let entry = Arc::new(Watched {
                        slot: watch::channel(None).0,
                        dirty: Notify::new(),
                    });
                    let receiver = entry.slot.subscribe();
                    watched.insert(upload_id, entry.clone());
                    self.inner.readers_started.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(read_while_watched(self.inner.clone(), upload_id, entry));
                    receiver
                }
            }
        };
        snapshots(receiver)
    }

    /// Reader tasks started since the hub was made (one per upload per watching period).
    pub fn readers_started(&self) -> u64 {
        self.inner.readers_started.load(Ordering::Relaxed)
    }

    /// Reads of uploads done by all readers.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    /// Uploads with a live reader right now.
    pub fn watched(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Watched>>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unregisters a reader, unless someone subscribed since it decided to stop (checked
    /// under the lock `watch` subscribes under, so no subscriber is left without a reader).
    fn retire(&self, upload_id: i64, entry: &Arc<Watched>, only_if_unwatched: bool) -> bool {
        let mut watched = self.lock();
        if only_if_unwatched && entry.slot.receiver_count() > 0 {
            return false;
        }
        if watched.get(&upload_id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            watched.remove(&upload_id);
        }
        true
    }
}

/// Wakes the readers of the uploads the bus names.
async fn route(mut changes: broadcast::Receiver<Change>, hub: Weak<Inner>) {
    loop {
        let change = changes.recv().await;
        let Some(hub) = hub.upgrade() else { return };
        match change {
            Ok(Change::Upload(id)) => {
                if let Some(entry) = hub.lock().get(&id) {
                    entry.dirty.notify_one();
                }
            }
            Ok(Change::Unknown) | Err(broadcast::error::RecvError::Lagged(_)) => {
                for entry in hub.lock().values() {
                    entry.dirty.notify_one();
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The one reader of an upload: runs until the upload is final or nobody watches it.
async fn read_while_watched(hub: Arc<Inner>, upload_id: i64, entry: Arc<Watched>) {
    let pace = hub.pace;
    let mut last: Option<Arc<Snapshot>> = None;
    let mut published_at: Option<Instant> = None;
    // A newer state was read but held back by the publish gap.
    let mut held = false;
    loop {
        let read_started = Instant::now();
        hub.reads.fetch_add(1, Ordering::Relaxed);
        let healthy = match read(&hub.db, upload_id).await {
            Ok(Some(snapshot)) => {
                held = false;
                if worth_publishing(last.as_deref(), &snapshot) {
                    let due = published_at.is_none_or(|at| at.elapsed() >= pace.min_publish_gap);
                    let done = snapshot.is_final();
                    if done || due {
                        let snapshot = Arc::new(snapshot);
                        entry.slot.send_replace(Some(snapshot.clone()));
                        last = Some(snapshot);
                        published_at = Some(Instant::now());
                        if done {
                            hub.retire(upload_id, &entry, false);
                            return;
                        }
                    } else {
                        held = true;
                    }
                }
                true
            }
            // Gone (it never is today): nothing more will come; subscribers see the end.
            Ok(None) => {
                hub.retire(upload_id, &entry, false);
                return;
            }
            Err(err) => {
                tracing::warn!(upload_pk = upload_id, error = %err, "could not read upload progress");
                false
            }
        };
        let processing = last
            .as_ref()
            .is_some_and(|s| s.upload.status == UploadStatus::Processing);
        let publish_due = published_at.map_or(read_started, |at| at + pace.min_publish_gap);
        loop {
            tokio::select! {
                () = entry.dirty.notified() => break,
                () = tokio::time::sleep(pace.tick), if processing || !healthy => break,
                () = tokio::time::sleep_until(publish_due), if held => break,
                () = entry.slot.closed() => {
                    if hub.retire(upload_id, &entry, true) {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep_until(read_started + pace.min_read_gap).await;
    }
}

/// Whether subscribers should get `next` after `last`: the first read, any change, and every
/// tick while processing (rate and ETA move). Never a step back: a read that sees fewer
/// processed rows than already published is dropped.
fn worth_publishing(last: Option<&Snapshot>, next: &Snapshot) -> bool {
    let Some(last) = last else { return true };
    if next.upload.processed_rows < last.upload.processed_rows {
        return false;
    }
    next.upload.status == UploadStatus::Processing
        || next.upload != last.upload
        || next.recent_errors != last.recent_errors
}

async fn read(db: &DatabaseConnection, upload_id: i64) -> Result<Option<Snapshot>, DbErr> {
    let Some(upload) = Upload::find_by_id(upload_id).one(db).await? else {
        return Ok(None);
    };
    let recent_errors = if upload.failed > 0 {
        // Served by the partial index on FAIL rows.
        BatchResult::find()
            .filter(batch_result::Column::UploadId.eq(upload_id))
            .filter(batch_result::Column::Outcome.eq(batch_result::Outcome::Fail))
            .order_by_desc(batch_result::Column::RowNumber)
            .limit(RECENT_ERRORS)
            .all(db)
            .await?
    } else {
        Vec::new()
    };
    Ok(Some(Snapshot {
        upload,
        recent_errors,
        read_at: Utc::now(),
    }))
}

/// A subscriber's view of a slot: the current snapshot (once there is one), then each newer
/// one; ends after a final snapshot, or when the reader is gone.
fn snapshots(receiver: watch::Receiver<Option<Arc<Snapshot>>>) -> impl Stream<Item = Arc<Snapshot>> {
    futures::stream::unfold((receiver, true, false), |(mut rx, first, done)| async move {
        if done {
            return None;
        }
        let mut wait = !first;
        loop {
            // `changed` still reports a value sent just before the reader dropped the slot.
            if wait && rx.changed().await.is_err() {
                return None;
            }
            wait = true;
            let current = rx.borrow_and_update().clone();
            if let Some(snapshot) = current {
                let done = snapshot.is_final();
                return Some((snapshot, (rx, false, done)));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(status: UploadStatus, processed: i32) -> Snapshot {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        Snapshot {
            upload: upload::Model {
                id: 1,
                public_id: "u".into(),
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
                total_rows: Some(10),
                processed_rows: processed,
                succeeded: processed,
                failed: 0,
                failure_reason: None,
                error_report_key: None,
                chunk_size: None,
                report_status: None,
                report_due_at: None,
                report_attempts: 0,
                created_at: now,
                queued_at: None,
                started_at: None,
                finished_at: None,
                updated_at: now,
            },
            recent_errors: Vec::new(),
            read_at: now,
        }
    }

    #[test]
    fn unchanged_reads_are_published_only_while_processing() {
        let queued = snapshot(UploadStatus::Queued, 0);
        assert!(worth_publishing(None, &queued));
        assert!(!worth_publishing(
            Some(&queued),
            &snapshot(UploadStatus::Queued, 0)
        ));
        let processing = snapshot(UploadStatus::Processing, 4);
        assert!(worth_publishing(
            Some(&processing),
            &snapshot(UploadStatus::Processing, 4)
        ));
    }

    #[test]
    fn a_read_behind_the_last_published_one_is_dropped() {
        let ahead = snapshot(UploadStatus::Processing, 6);
        assert!(!worth_publishing(
            Some(&ahead),
            &snapshot(UploadStatus::Processing, 4)
        ));
        assert!(worth_publishing(
            Some(&ahead),
            &snapshot(UploadStatus::Completed, 10)
        ));
    }
}
