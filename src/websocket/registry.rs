//! The WebSocket connections of this process: how many are open (capped per process and per
//! peer address, checked before the upgrade) and the signal that tells every one of them the
//! server is stopping, so that shutdown need not wait for clients to leave on their own.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;

use crate::config::Settings;

/// Why an upgrade is refused before it happens (HTTP 503, typed code in the JSON body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The process, or the peer address, has as many connections open as it may.
    TooManyConnections,
    /// The server is stopping.
    ShuttingDown,
}

impl Refused {
    pub fn code(self) -> &'static str {
        match self {
            Self::TooManyConnections => "TOO_MANY_CONNECTIONS",
            Self::ShuttingDown => "SHUTTING_DOWN",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::TooManyConnections => "too many WebSocket connections are open; try again later",
            Self::ShuttingDown => "the server is shutting down; connect again",
        }
    }
}

pub struct Registry {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    max_total: usize,
    /// 0: no cap per address.
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// Only addresses with a connection open: the map is bounded by `max_total`.
    per_ip: HashMap<IpAddr, usize>,
}

impl Registry {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            max_total,
            max_per_ip,
            open: Mutex::new(Open::default()),
        })
    }

    pub fn from_settings(settings: &Settings) -> Arc<Self> {
        Self::new(settings.ws_max_connections, settings.ws_max_connections_per_ip)
    }

    /// Takes a connection slot for a client at `ip`; the slot is given back when dropped
    /// (the connection ended, or the upgrade never completed).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Refused> {
        if self.shutdown.is_cancelled() {
            return Err(Refused::ShuttingDown);
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err(Refused::TooManyConnections);
        }
        if let Some(ip) = ip {
            let count = open.per_ip.get(&ip).copied().unwrap_or(0);
            if self.max_per_ip > 0 && count >= self.max_per_ip {
                return Err(Refused::TooManyConnections);
            }
            open.per_ip.insert(ip, count + 1);
        }
        open.total += 1;
        Ok(Slot {
            registry: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Cancelled when the server stops: every connection closes with 1001 "Going away".
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs a connection so that [`Registry::shut_down`] can wait for its close frame.
    pub fn track<F: Future>(&self, connection: F) -> TrackedFuture<F> {
        self.tracker.track_future(connection)
    }

    /// Tells every connection to close, and waits up to `limit` for them to have done so.
    /// True when all of them did.
    pub async fn shut_down(&self, limit: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait()).await.is_ok()
    }
}

/// One open connection's place in the counts.
pub struct Slot {
    registry: Arc<Registry>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(count) = open.per_ip.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_process_and_per_address_and_given_back() {
        let registry = Registry::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = registry.admit(Some(a)).unwrap();
        let _a2 = registry.admit(Some(a)).unwrap();
        assert_eq!(registry.admit(Some(a)).err(), Some(Refused::TooManyConnections));
        let _b1 = registry.admit(Some(b)).unwrap();
        assert_eq!(registry.admit(Some(b)).err(), Some(Refused::TooManyConnections));
        assert_eq!(registry.open(), 3);
        drop(a1);
        assert_eq!(registry.open(), 2);
        let _b2 = registry.admit(Some(b)).unwrap();
        registry.shutdown.cancel();
        assert_eq!(registry.admit(None).err(), Some(Refused::ShuttingDown));
    }

    #[test]
    fn addresses_without_connections_are_forgotten() {
        let registry = Registry::new(10, 0);
        for n in 0..5u8 {
            drop(registry.admit(Some(IpAddr::from([10, 0, 0, n]))).unwrap());
        }
        assert!(registry.open.lock().unwrap().per_ip.is_empty());
        assert_eq!(registry.open(), 0);
    }
}
