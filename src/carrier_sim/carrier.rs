//! The simulated carrier's memory: devices and their transition matrix, tokens, the fault
//! dice and the counters. No I/O and no clock of its own (every call is given `now`), so the
//! routes lock it, decide, and only then sleep or answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Faults, SimConfig, SimDevice, SimState, SimStats};
use crate::domain::device_uid::luhn_valid;

const WINDOW: Duration = Duration::from_secs(1);
/// Devices the simulator holds at most; `add` and auto-provisioning refuse beyond it.
pub const MAX_DEVICES: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Add,
    Activate,
    Deactivate,
}

impl Action {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "add" => Some(Self::Add),
            "activate" => Some(Self::Activate),
            "deactivate" => Some(Self::Deactivate),
            _ => None,
        }
    }
}

/// One device's answer in an action call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected {
        code: &'static str,
        message: &'static str,
    },
}

/// A whole-request fault, rolled before anything is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with this `Retry-After` (seconds).
    RateLimited(u64),
    ServerError,
    /// Held this long, then dropped without an answer.
    Timeout(Duration),
}

/// What the routes do with an authorised device-endpoint request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Fault(Fault),
    /// Serve it, after this delay when the slow fault was rolled.
    Serve {
        delay: Option<Duration>,
    },
}

struct Device {
    state: SimState,
    msisdn: Option<String>,
    ip_address: Option<String>,
    last_client_request_id: Option<String>,
    /// When a pending activation completes.
    active_at: Option<Instant>,
    /// Every `clientRequestId` applied to this device: a call naming one again is a replay.
    applied: HashSet<String>,
}

struct Token {
    client_id: String,
    expires: Instant,
}

pub struct Carrier {
    clients: Vec<(String, String)>,
    access_token_ttl: Duration,
    session_ttl: Duration,
    activation_delay: Duration,
    rate_limit_per_sec: Option<u32>,
    auto_provision: bool,
    faults: Faults,
    rng: StdRng,
    access_tokens: HashMap<String, Token>,
    sessions: HashMap<String, Token>,
    devices: HashMap<String, Device>,
    /// Lines handed out so far: each activation gets the next MSISDN and IP, never reused.
    lines: u32,
    stats: SimStats,
    /// Device-endpoint arrivals of the last second, to measure the peak rate.
    arrivals: VecDeque<Instant>,
    /// Admitted device-endpoint requests of the last second per client, for the rate limit.
    admitted: HashMap<String, VecDeque<Instant>>,
}

impl Carrier {
    pub fn new(config: &SimConfig) -> Self {
        Self {
            clients: config.clients.clone(),
            access_token_ttl: config.access_token_ttl,
            session_ttl: config.session_ttl,
            activation_delay: config.activation_delay,
            rate_limit_per_sec: config.rate_limit_per_sec,
            auto_provision: config.auto_provision,
            faults: Faults::default(),
            rng: StdRng::seed_from_u64(config.seed),
            access_tokens: HashMap::new(),
            sessions: HashMap::new(),
            devices: HashMap::new(),
            lines: 0,
            stats: SimStats::default(),
            arrivals: VecDeque::new(),
            admitted: HashMap::new(),
        }
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn stats(&mut self, now: Instant) -> SimStats {
        self.settle_all(now);
        self.stats.clone()
    }

    pub fn reset_stats(&mut self) {
        self.stats = SimStats::default();
        self.arrivals.clear();
    }

    pub fn count_request(&mut self) {
        self.stats.requests_total += 1;
    }

    pub fn count_get(&mut self) {
        self.stats.get_requests += 1;
    }

    /// Every issued token stops working now; clients must get new ones.
    pub fn expire_tokens(&mut self) -> usize {
        let n = self.access_tokens.len() + self.sessions.len();
        self.access_tokens.clear();
        self.sessions.clear();
        n
    }

    /// A new access token for valid client credentials (OAuth client_credentials).
    pub fn issue_access_token(
        &mut self,
        client_id: &str,
        secret: &str,
        now: Instant,
    ) -> Option<(String, Duration)> {
        if !self.clients.iter().any(|(id, s)| id == client_id && s == secret) {
            return None;
        }
        let token = self.new_token();
        self.access_tokens.retain(|_, t| t.expires > now);
        self.access_tokens.insert(
            token.clone(),
            Token {
                client_id: client_id.to_owned(),
                expires: now + self.access_token_ttl,
            },
        );
        self.stats.tokens_issued += 1;
        Some((token, self.access_token_ttl))
    }

    pub fn count_unauthorized(&mut self) {
        self.stats.unauthorized += 1;
    }

    pub fn access_valid(&self, access_token: Option<&str>, now: Instant) -> bool {
        self.access_client(access_token, now).is_some()
    }

    /// A session token for a valid access token.
    pub fn login(&mut self, access_token: Option<&str>, now: Instant) -> Option<(String, Duration)> {
        let client_id = self.access_client(access_token, now)?;
        let token = self.new_token();
        self.sessions.retain(|_, t| t.expires > now);
        self.sessions.insert(
            token.clone(),
            Token {
                client_id,
                expires: now + self.session_ttl,
            },
        );
        self.stats.sessions_issued += 1;
        Some((token, self.session_ttl))
    }

    /// The client both tokens of a device-endpoint request belong to, or `None` (a 401).
    pub fn authorize(
        &mut self,
        access_token: Option<&str>,
        session: Option<&str>,
        now: Instant,
    ) -> Option<String> {
        let client = self.access_client(access_token, now).filter(|client| {
            session
                .and_then(|s| self.sessions.get(s))
                .is_some_and(|t| t.expires > now && &t.client_id == client)
        });
        if client.is_none() {
            self.stats.unauthorized += 1;
        }
        client
    }

    fn access_client(&self, token: Option<&str>, now: Instant) -> Option<String> {
        token
            .and_then(|t| self.access_tokens.get(t))
            .filter(|t| t.expires > now)
            .map(|t| t.client_id.clone())
    }

    /// Counts a device-endpoint arrival into the peak-rate measurement.
    pub fn arrive(&mut self, now: Instant) {
        push_window(&mut self.arrivals, now);
        let n = self.arrivals.len() as u32;
        self.stats.max_requests_in_any_second = self.stats.max_requests_in_any_second.max(n);
    }

    /// The rate limit, then the fault dice: all decided before anything is applied.
    pub fn admit(&mut self, client_id: &str, now: Instant) -> Admission {
        if let Some(limit) = self.rate_limit_per_sec {
            let window = self.admitted.entry(client_id.to_owned()).or_default();
            trim_window(window, now);
            if window.len() >= limit as usize {
                self.stats.served_429 += 1;
                self.stats.rate_limited += 1;
                return Admission::Fault(Fault::RateLimited(1));
            }
            window.push_back(now);
        }
        // Every die is rolled on every request, so one fault's probability does not shift
        // the sequence the others see.
        let f = &self.faults;
        let (p_timeout, p_429, p_500, p_slow) = (f.p_timeout, f.p_429, f.p_500, f.p_slow);
        let timeout = self.roll(p_timeout);
        let too_many = self.roll(p_429);
        let server_error = self.roll(p_500);
        let slow = self.roll(p_slow);
        let fault = if timeout {
            self.stats.timeouts += 1;
            Some(Fault::Timeout(Duration::from_millis(self.faults.timeout_ms)))
        } else if too_many {
            self.stats.served_429 += 1;
            Some(Fault::RateLimited(self.faults.retry_after_secs))
        } else if server_error {
            self.stats.served_500 += 1;
            Some(Fault::ServerError)
        } else {
            None
        };
        match fault {
            Some(fault) => Admission::Fault(fault),
            None => Admission::Serve {
                delay: slow.then(|| Duration::from_millis(self.faults.slow_ms)),
            },
        }
    }

    fn roll(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    fn new_token(&mut self) -> String {
        format!("{:032x}", self.rng.random::<u128>())
    }

    pub fn new_request_id(&mut self) -> uuid::Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    /// Applies `action` to one device (already admitted): the transition matrix, the reject
    /// list and idempotency by `client_request_id`.
    pub fn apply(&mut self, action: Action, iccid: &str, client_request_id: &str, now: Instant) -> Outcome {
        if let Some(device) = self.devices.get(iccid)
            && device.applied.contains(client_request_id)
        {
            self.stats.replays += 1;
            *self
                .stats
                .accepted_calls_per_device
                .entry(iccid.to_owned())
                .or_default() += 1;
            return Outcome::Accepted;
        }
        if self.faults.reject_iccids.contains(iccid) {
            return rejected("InvalidDevice", "device rejected by carrier policy");
        }
        if action == Action::Activate {
            self.auto_provision(iccid);
        }
        self.settle(iccid, now);
        let outcome = match (action, self.devices.get_mut(iccid)) {
            (Action::Add, Some(_)) => rejected("DeviceExists", "device already exists"),
            (Action::Add, None) => self.create(iccid),
            (_, None) => rejected("DeviceNotFound", "device not found"),
            (Action::Activate, Some(device)) => match device.state {
                SimState::Inventory | SimState::Deactivated => {
                    device.state = SimState::PendingActivation;
                    device.active_at = Some(now + self.activation_delay);
                    Outcome::Accepted
                }
                // Already on its way: the running activation stands.
                SimState::PendingActivation => Outcome::Accepted,
                SimState::Active => invalid_transition(),
            },
            (Action::Deactivate, Some(device)) => match device.state {
                SimState::Active => {
                    device.state = SimState::Deactivated;
                    device.msisdn = None;
                    device.ip_address = None;
                    Outcome::Accepted
                }
                _ => invalid_transition(),
            },
        };
        if outcome == Outcome::Accepted {
            let device = self.devices.get_mut(iccid).expect("an accepted device exists");
            device.applied.insert(client_request_id.to_owned());
            device.last_client_request_id = Some(client_request_id.to_owned());
            *self.stats.applied_per_device.entry(iccid.to_owned()).or_default() += 1;
            *self
                .stats
                .accepted_calls_per_device
                .entry(iccid.to_owned())
                .or_default() += 1;
        }
        outcome
    }

    /// The device as the carrier's GET shows it (auto-provisioned first when configured).
    pub fn lookup(&mut self, iccid: &str, now: Instant) -> Option<SimDevice> {
        self.auto_provision(iccid);
        self.device(iccid, now)
    }

    pub fn device(&mut self, iccid: &str, now: Instant) -> Option<SimDevice> {
        self.settle(iccid, now);
        self.devices.get(iccid).map(|d| SimDevice {
            iccid: iccid.to_owned(),
            state: d.state,
            msisdn: d.msisdn.clone(),
            ip_address: d.ip_address.clone(),
            last_client_request_id: d.last_client_request_id.clone(),
        })
    }

    /// Puts a device in `state` as if it had always been there: no history, no applied keys.
    /// An active one gets a line; a pending one completes after the activation delay.
    pub fn seed(&mut self, iccid: &str, state: SimState, now: Instant) {
        let mut device = Device::new(state);
        match state {
            SimState::Active => {
                let (msisdn, ip) = self.next_line();
                device.msisdn = Some(msisdn);
                device.ip_address = Some(ip);
            }
            SimState::PendingActivation => device.active_at = Some(now + self.activation_delay),
            SimState::Inventory | SimState::Deactivated => {}
        }
        self.devices.insert(iccid.to_owned(), device);
    }

    fn create(&mut self, iccid: &str) -> Outcome {
        if self.devices.len() >= MAX_DEVICES {
            return rejected("DeviceLimitReached", "the simulator holds no more devices");
        }
        self.devices
            .insert(iccid.to_owned(), Device::new(SimState::Inventory));
        Outcome::Accepted
    }

    fn auto_provision(&mut self, iccid: &str) {
        if self.auto_provision
            && luhn_valid(iccid)
            && !self.devices.contains_key(iccid)
            && self.devices.len() < MAX_DEVICES
        {
            self.devices
                .insert(iccid.to_owned(), Device::new(SimState::Inventory));
        }
    }

    /// Completes the device's activation if its time has come; the line is assigned then.
    fn settle(&mut self, iccid: &str, now: Instant) {
        let due = self.devices.get(iccid).is_some_and(|d| {
            d.state == SimState::PendingActivation && d.active_at.is_some_and(|at| at <= now)
        });
        if due {
            let (msisdn, ip) = self.next_line();
            let device = self.devices.get_mut(iccid).expect("checked above");
            device.state = SimState::Active;
            device.active_at = None;
            device.msisdn = Some(msisdn);
            device.ip_address = Some(ip);
        }
    }

    fn settle_all(&mut self, now: Instant) {
        let due: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.active_at.is_some_and(|at| at <= now))
            .map(|(iccid, _)| iccid.clone())
            .collect();
        for iccid in due {
            self.settle(&iccid, now);
        }
    }

    /// The next MSISDN (10 digits) and IPv4 address, unique for the simulator's lifetime.
    fn next_line(&mut self) -> (String, String) {
        self.lines += 1;
        let n = self.lines;
        let msisdn = format!("555{:07}", n % 10_000_000);
        let ip = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
        (msisdn, ip)
    }
}

impl Device {
    fn new(state: SimState) -> Self {
        Self {
            state,
            msisdn: None,
            ip_address: None,
            last_client_request_id: None,
            active_at: None,
            applied: HashSet::new(),
        }
    }
}

fn rejected(code: &'static str, message: &'static str) -> Outcome {
    Outcome::Rejected { code, message }
}

fn invalid_transition() -> Outcome {
    rejected(
        "InvalidStateTransition",
        "the device's state does not allow this action",
    )
}

/// The window holds the instants of the last second, `now` included.
fn push_window(window: &mut VecDeque<Instant>, now: Instant) {
    trim_window(window, now);
    window.push_back(now);
}

fn trim_window(window: &mut VecDeque<Instant>, now: Instant) {
    while window.front().is_some_and(|&t| now.duration_since(t) >= WINDOW) {
        window.pop_front();
    }
}
