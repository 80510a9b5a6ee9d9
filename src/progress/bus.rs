//! "Upload N changed": published after every commit that moves an upload, heard by the
//! subscriptions of this process. Carries only the id; listeners read the state themselves.

use tokio::sync::broadcast;

/// How many change signals a slow listener may fall behind before it skips to "something
/// changed" (it then re-reads the upload anyway, so nothing is lost).
const BACKLOG: usize = 1024;

pub struct ProgressBus {
    local: broadcast::Sender<i64>,
}

impl ProgressBus {
    /// A bus heard only inside this process (the embedded default runs everything in one).
    pub fn local() -> Self {
        Self {
            local: broadcast::channel(BACKLOG).0,
        }
    }

    /// Tells every listener that `upload_id` changed. Never fails the caller: progress is
    /// advisory, the database stays the truth.
    pub async fn changed(&self, upload_id: i64) {
        // No receiver is not an error: nobody is watching.
        let _ = self.local.send(upload_id);
    }

    /// Change signals from now on, for all uploads.
    pub fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.local.subscribe()
    }
}
