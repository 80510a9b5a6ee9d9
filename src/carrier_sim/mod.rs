//! A simulated carrier for tests and demos, serving the ThingSpace-style HTTP contract of
//! issue 14: OAuth and session tokens, the device actions with their transition matrix and
//! idempotency keys, activation that completes after a delay, seeded faults, and the counters
//! the tests assert "exactly once per device" and "rate under the limit" with.
//!
//! Started in-process with [`CarrierSim::start`] (port 0 by default), or as
//! `fleetload carrier-simulator`. Besides the carrier API it serves JSON admin routes, without
//! authentication (it binds to loopback unless told otherwise), so another process can drive it:
//!
//! - `GET /_sim/stats`: the [`SimStats`] counters.
//! - `POST /_sim/faults`: replace the [`Faults`] (every field optional, defaults off), e.g.
//!   `{"p_429": 0.05, "retry_after_secs": 1, "p_500": 0.05, "reject_iccids": ["8901…"]}`.
//! - `POST /_sim/devices`: seed devices, `{"devices": [{"iccid": "8901…", "state": "inventory"}]}`
//!   (at most 10,000 a call; states as on the wire).
//! - `GET /_sim/devices/{iccid}`: one device as the carrier holds it, tokens not needed.
//! - `POST /_sim/expire-tokens`: every issued access and session token stops working now.
//! - `POST /_sim/reset-stats`: the counters start again from zero.

mod carrier;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use carrier::Carrier;
pub use routes::MAX_DEVICES_PER_ACTION;

/// How the simulator starts; [`Default`] is one client `demo-client` / `demo-secret`, tokens
/// valid for an hour, activation after 2 s, no rate limit, auto-provisioning off, port 0.
#[derive(Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    /// OAuth clients as `(client_id, client_secret)`.
    pub clients: Vec<(String, String)>,
    pub access_token_ttl: Duration,
    pub session_ttl: Duration,
    /// From "pending activation" to "active".
    pub activation_delay: Duration,
    /// Device-endpoint requests per second and client (sliding 1 s window); over it → 429.
    pub rate_limit_per_sec: Option<u32>,
    /// Seeds the fault dice and the tokens, so a run replays the same faults.
    pub seed: u64,
    /// A GET or activate of an unknown Luhn-valid ICCID first creates it in "inventory".
    pub auto_provision: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            clients: vec![("demo-client".into(), "demo-secret".into())],
            access_token_ttl: Duration::from_secs(3600),
            session_ttl: Duration::from_secs(3600),
            activation_delay: Duration::from_secs(2),
            rate_limit_per_sec: None,
            seed: 0,
            auto_provision: false,
        }
    }
}

/// Without the client secrets: the secret scan of issue 14's tests must not find them in a log.
impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clients: Vec<&str> = self.clients.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SimConfig")
            .field("listen", &self.listen)
            .field("clients", &clients)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("session_ttl", &self.session_ttl)
            .field("activation_delay", &self.activation_delay)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("seed", &self.seed)
            .field("auto_provision", &self.auto_provision)
            .finish()
    }
}

/// Injected faults of the device endpoints (actions and GET), each an independent
/// probability per request, rolled before anything is applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// 429 `RateLimitExceeded` with `Retry-After: retry_after_secs`.
    pub p_429: f64,
    pub retry_after_secs: u64,
    /// 500 `InternalError`.
    pub p_500: f64,
    /// The request is applied, then its answer held `slow_ms`.
    pub p_slow: f64,
    pub slow_ms: u64,
    /// Held `timeout_ms` (meant to be longer than the client waits), then dropped unapplied.
    pub p_timeout: f64,
    pub timeout_ms: u64,
    /// These devices are answered REJECTED `InvalidDevice` by every action.
    pub reject_iccids: HashSet<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            p_429: 0.0,
            retry_after_secs: 1,
            p_500: 0.0,
            p_slow: 0.0,
            slow_ms: 1000,
            p_timeout: 0.0,
            timeout_ms: 60_000,
            reject_iccids: HashSet::new(),
        }
    }
}

/// A device's state at the carrier, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SimState {
    #[serde(rename = "inventory")]
    Inventory,
    #[serde(rename = "pending activation")]
    PendingActivation,
    #[serde(rename = "active")]
    Active,
    #[serde(rename = "deactivated")]
    Deactivated,
}

/// A device as the carrier holds it: the body of `GET /api/m2m/v1/devices/{iccid}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimDevice {
    pub iccid: String,
    pub state: SimState,
    pub msisdn: Option<String>,
    pub ip_address: Option<String>,
    pub last_client_request_id: Option<String>,
}

/// What the simulator saw and did since it started (or since [`CarrierSim::reset_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Per ICCID: action calls that changed something (ACCEPTED, not a replay).
    pub applied_per_device: HashMap<String, u32>,
    /// Per ICCID: ACCEPTED answers, replays included.
    pub accepted_calls_per_device: HashMap<String, u32>,
    /// Devices answered ACCEPTED for a `clientRequestId` already applied to them.
    pub replays: u64,
    pub tokens_issued: u64,
    pub sessions_issued: u64,
    /// Requests to the carrier API (token, session, device endpoints; not `/_sim/`).
    pub requests_total: u64,
    /// 429 answers: injected ones and those of the rate limit.
    pub served_429: u64,
    /// 429 answers of the rate limit alone.
    pub rate_limited: u64,
    pub served_500: u64,
    /// Requests held and dropped by the timeout fault.
    pub timeouts: u64,
    /// 401 answers of any endpoint.
    pub unauthorized: u64,
    /// The most device-endpoint requests that arrived within any 1 s.
    pub max_requests_in_any_second: u32,
    pub get_requests: u64,
}

/// The shared state of the routes and the handle.
struct Shared {
    carrier: Mutex<Carrier>,
    stop: CancellationToken,
}

impl Shared {
    fn carrier(&self) -> MutexGuard<'_, Carrier> {
        // Every critical section is a handful of map updates that cannot panic halfway
        // through an invariant, so a poisoned lock still holds a consistent carrier.
        self.carrier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running simulator; stopped by [`CarrierSim::shutdown`] or on drop.
pub struct CarrierSim {
    addr: SocketAddr,
    url: String,
    shared: Arc<Shared>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl CarrierSim {
    pub async fn start(config: SimConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("carrier simulator: cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            carrier: Mutex::new(Carrier::new(&config)),
            stop: CancellationToken::new(),
        });
        let stop = shared.stop.clone();
        let server = axum::serve(listener, routes::router(shared.clone()))
            .with_graceful_shutdown(stop.cancelled_owned())
            .into_future();
        Ok(Self {
            addr,
            url: format!("http://{addr}"),
            shared,
            server: Some(tokio::spawn(server)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.carrier().set_faults(faults);
    }

    /// Puts the device in `state`, replacing any device of that ICCID and its history.
    pub fn seed_device(&self, iccid: impl Into<String>, state: SimState) {
        self.shared.carrier().seed(&iccid.into(), state, Instant::now());
    }

    pub fn state(&self, iccid: &str) -> Option<SimState> {
        self.device(iccid).map(|d| d.state)
    }

    pub fn device(&self, iccid: &str) -> Option<SimDevice> {
        self.shared.carrier().device(iccid, Instant::now())
    }

    pub fn stats(&self) -> SimStats {
        self.shared.carrier().stats(Instant::now())
    }

    pub fn reset_stats(&self) {
        self.shared.carrier().reset_stats();
    }

    /// Every access and session token issued so far becomes invalid now.
    pub fn expire_tokens(&self) {
        self.shared.carrier().expire_tokens();
    }

    /// Stops accepting, ends held (slow or timeout) requests, and waits for the server.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shared.stop.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .context("carrier simulator did not stop within 10 s")???;
        }
        Ok(())
    }
}

impl Drop for CarrierSim {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}
