//! The per-client rate limit of `/graphql` (token subject, else IP address): `rate` requests
//! per second with bursts of `burst`, by `governor`'s keyed GCRA limiter. Off unless
//! configured; in memory, per process. Its key state is kept bounded: keys back at a full
//! bucket are dropped regularly, and past a cap everything is forgotten.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};

/// Clients tracked at most; past it, after stale keys are dropped, the state starts afresh.
const MAX_TRACKED: usize = 100_000;

/// How often stale keys are dropped even below the cap, so idle clients are not kept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

type Keyed<C> = Gcra<String, HashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct RateLimiter<C: Clock = DefaultClock> {
    quota: Quota,
    clock: C,
    max_tracked: usize,
    limiter: Mutex<std::sync::Arc<Keyed<C>>>,
    last_sweep: Mutex<C::Instant>,
}

impl RateLimiter {
    /// `None` when `rate` is 0 (no limit).
    pub fn new(rate: u32, burst: u32) -> Option<Self> {
        Self::with_clock(rate, burst, DefaultClock::default(), MAX_TRACKED)
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    pub fn with_clock(rate: u32, burst: u32, clock: C, max_tracked: usize) -> Option<Self> {
        let rate = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        let now = clock.now();
        Some(Self {
            limiter: Mutex::new(std::sync::Arc::new(Gcra::hashmap_with_clock(
                quota,
                clock.clone(),
            ))),
            quota,
            clock,
            max_tracked: max_tracked.max(1),
            last_sweep: Mutex::new(now),
        })
    }

    /// Takes a request from `client`'s allowance, or says how long until there is one.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        self.sweep();
        let limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner()).clone();
        limiter
            .check_key(&client.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Clients whose state is kept now.
    pub fn tracked(&self) -> usize {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drops the keys whose bucket is full again (the same as no key), at the cap or once
    /// in a while; if that is not enough (more clients than the cap within one refill time),
    /// starts afresh: forgetting is the safe side of a limit whose memory must stay bounded.
    fn sweep(&self) {
        let now = self.clock.now();
        let mut current = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let due = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            let due = now.duration_since(*last) >= SWEEP_EVERY.into();
            if due {
                *last = now;
            }
            due
        };
        if !due && current.len() < self.max_tracked {
            return;
        }
        current.retain_recent();
        current.shrink_to_fit();
        if current.len() >= self.max_tracked {
            tracing::warn!(
                clients = current.len(),
                "rate limiter tracks too many clients; starting afresh"
            );
            *current = std::sync::Arc::new(Gcra::hashmap_with_clock(self.quota, self.clock.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(
        rate: u32,
        burst: u32,
        max_tracked: usize,
    ) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            RateLimiter::with_clock(rate, burst, clock.clone(), max_tracked).unwrap(),
            clock,
        )
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let (limiter, clock) = limiter(2, 3, 1000);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(limiter.check("b").is_ok());
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
        assert!(RateLimiter::new(0, 10).is_none());
    }

    #[test]
    fn clients_back_at_a_full_bucket_are_forgotten() {
        let (limiter, clock) = limiter(10, 5, 1000);
        for n in 0..500 {
            assert!(limiter.check(&format!("ip:{n}")).is_ok());
        }
        assert_eq!(limiter.tracked(), 500);
        // Once every bucket has refilled, the next sweep drops them all.
        clock.advance(SWEEP_EVERY);
        assert!(limiter.check("ip:new").is_ok());
        assert_eq!(limiter.tracked(), 1);
        // A client still limited is kept, with its limit.
        for _ in 0..5 {
            assert!(limiter.check("busy").is_ok());
        }
        assert!(limiter.check("busy").is_err());
        clock.advance(SWEEP_EVERY / 2);
        assert!(limiter.check("busy").is_ok());
    }

    #[test]
    fn the_tracked_clients_never_exceed_the_cap_even_when_all_are_recent() {
        let (limiter, _clock) = limiter(1, 100, 64);
        for n in 0..10_000 {
            let _ = limiter.check(&format!("ip:{n}"));
            assert!(limiter.tracked() <= 64, "{} at {n}", limiter.tracked());
        }
    }
}
