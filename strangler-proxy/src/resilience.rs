//! Circuit breakers (per upstream instance) and the retry budget (per upstream).
//!
//! **Breaker**: after `failures` consecutive failures (connect error, timeout, 5xx) an instance
//! is *open*: round robin skips it (outlier ejection) for `open_for`. Then it is *half-open*:
//! one request probes it; success closes it, failure opens it again. When every instance is
//! open, calls fail fast instead of piling up on a dead service.
//!
//! Only what the upstream did counts: a call is admitted as a [`Permit`] that is settled with
//! the upstream's verdict ([`Permit::success`], [`Permit::failure`]) or released without one
//! ([`Permit::release`]: the client's own fault, such as a malformed or abandoned body). A probe
//! is never lost: a probe permit dropped unsettled (its caller went away) frees the half-open
//! slot at once, and a half-open breaker whose probe has not settled within `probe_timeout`
//! lets a new probe through, so no client behaviour can leave an instance half-open for good.
//!
//! **Retry budget** (as Finagle and Envoy do it): every request deposits `percent`/100 of a
//! token, every retry spends one, and the balance is capped, so retries add at most that share
//! of load on top of a floor of `min_per_second` retries, and a failing upstream cannot be hammered
//! by a retry storm.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
    /// How long a probe may stay unsettled before another is let through.
    pub probe_timeout: Duration,
}

/// One instance's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: AtomicU8,
    consecutive: AtomicU32,
    /// When it opened, or (half-open) when the current probe started; ms since `epoch`.
    since_ms: AtomicU64,
    epoch: Instant,
    gauge: Gauge,
}

/// Whether a call may go to an instance, and in which role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed.
    Normal,
    /// The breaker is half-open and this call is its probe.
    Probe,
}

/// One admitted call; settle it with the upstream's verdict, or release it when the upstream
/// gave none. Dropped unsettled, a probe frees the half-open slot for the next caller.
#[derive(Debug)]
#[must_use = "a permit must be settled with the upstream's verdict"]
pub struct Permit {
    breaker: Arc<Breaker>,
    admission: Admission,
    settled: bool,
}

impl Permit {
    /// The role this call was admitted in.
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// The upstream answered well.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.success(self.admission);
    }

    /// The upstream failed (refused, reset, timed out, 5xx).
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.failure(self.admission);
    }

    /// The call ended without a verdict on the upstream (the client's fault): nothing is
    /// counted, and a probe's slot goes to the next caller.
    pub fn release(self) {
        // Drop does it.
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.admission == Admission::Probe {
            self.breaker.abandon_probe();
        }
    }
}

impl Breaker {
    /// A closed breaker reporting its state (1 open, 0 not) to `gauge`.
    pub fn new(settings: BreakerSettings, gauge: Gauge) -> Self {
        gauge.set(0);
        Breaker {
            settings,
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            gauge,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Asks to send a call; `None` while the breaker is open (or half-open with a probe out).
    pub fn admit(self: &Arc<Self>) -> Option<Permit> {
        let admission = self.admission()?;
        Some(Permit {
            breaker: Arc::clone(self),
            admission,
            settled: false,
        })
    }

    fn admission(&self) -> Option<Admission> {
        let wait = match self.state.load(Ordering::Acquire) {
            CLOSED => return Some(Admission::Normal),
            OPEN => self.settings.open_for,
            // A probe that never settled (it cannot, with permits; this is the bound anyway).
            _ => self.settings.probe_timeout,
        };
        let since = self.since_ms.load(Ordering::Acquire);
        let now = self.now_ms();
        if now.saturating_sub(since) < wait.as_millis() as u64 {
            return None;
        }
        // Time to probe: exactly one caller moves the clock on and wins the half-open slot.
        self.since_ms
            .compare_exchange(since, now, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.state.store(HALF_OPEN, Ordering::Release);
        Some(Admission::Probe)
    }

    fn success(&self, admission: Admission) {
        self.consecutive.store(0, Ordering::Release);
        if admission == Admission::Probe {
            self.state.store(CLOSED, Ordering::Release);
            self.gauge.set(0);
        }
    }

    fn failure(&self, admission: Admission) {
        let failures = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if admission == Admission::Probe || failures >= self.settings.failures {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
            self.gauge.set(1);
        }
    }

    /// A probe ended without a verdict: the next caller may probe at once.
    fn abandon_probe(&self) {
        let ready = self
            .now_ms()
            .saturating_sub(self.settings.open_for.as_millis() as u64);
        if self
            .state
            .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.since_ms.store(ready, Ordering::Release);
        }
    }

    /// Whether the breaker is open (or half-open).
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }
}

/// Retry budget settings.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// Most retries of one request.
    pub attempts: u32,
    /// Retries allowed as a percentage of requests.
    pub percent: u32,
    /// Retries always allowed per second, whatever the traffic.
    pub min_per_second: u32,
}

/// A token bucket of retries, in thousandths of a token.
#[derive(Debug)]
pub struct RetryBudget {
    settings: RetrySettings,
    balance: AtomicI64,
    floor: Mutex<(Instant, u32)>,
}

impl RetryBudget {
    /// A budget starting empty.
    pub fn new(settings: RetrySettings) -> Self {
        RetryBudget {
            settings,
            balance: AtomicI64::new(0),
            floor: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Most retries of one request.
    pub fn attempts(&self) -> u32 {
        self.settings.attempts
    }

    /// Called for every request: earns its share of a retry.
    pub fn deposit(&self) {
        let cap = 1000 * i64::from(self.settings.percent.max(1)) * 10;
        let earned = i64::from(self.settings.percent) * 10;
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + earned).min(cap))
            });
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        if self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
        {
            return true;
        }
        let mut floor = self.floor.lock().unwrap_or_else(|p| p.into_inner());
        if floor.0.elapsed() >= Duration::from_secs(1) {
            *floor = (Instant::now(), 0);
        }
        if floor.1 < self.settings.min_per_second {
            floor.1 += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, open_for_ms: u64) -> Arc<Breaker> {
        breaker_with_probe(failures, open_for_ms, 60_000)
    }

    fn breaker_with_probe(failures: u32, open_for_ms: u64, probe_ms: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            BreakerSettings {
                failures,
                open_for: Duration::from_millis(open_for_ms),
                probe_timeout: Duration::from_millis(probe_ms),
            },
            Gauge::default(),
        ))
    }

    fn admission(b: &Arc<Breaker>) -> Option<Admission> {
        b.admit().map(|p| {
            let a = p.admission();
            // Settle it as a success so the breaker is not left waiting on it.
            p.success();
            a
        })
    }

    #[test]
    fn a_breaker_opens_after_consecutive_failures_and_probes_once() {
        let b = breaker(3, 0);
        for _ in 0..2 {
            b.admit().unwrap().failure();
        }
        b.admit().unwrap().success();
        for _ in 0..2 {
            b.admit().unwrap().failure();
        }
        assert!(!b.is_open(), "a success in between resets the count");
        b.admit().unwrap().failure();
        assert!(b.is_open());
        // open_for is 0: the next caller probes, and only it.
        let probe = b.admit().unwrap();
        assert_eq!(probe.admission(), Admission::Probe);
        assert!(b.admit().is_none());
        probe.failure();
        assert!(b.is_open(), "a failed probe opens it again");
        let probe = b.admit().unwrap();
        probe.success();
        assert!(!b.is_open());
        assert_eq!(admission(&b), Some(Admission::Normal));
    }

    #[test]
    fn an_open_breaker_refuses_until_its_time_is_up() {
        let b = breaker(1, 60_000);
        b.admit().unwrap().failure();
        assert!(b.admit().is_none());
    }

    #[test]
    fn a_released_call_counts_for_nothing() {
        let b = breaker(2, 60_000);
        b.admit().unwrap().failure();
        for _ in 0..10 {
            b.admit().unwrap().release();
        }
        assert!(
            !b.is_open(),
            "client faults are not the upstream's failures"
        );
        b.admit().unwrap().failure();
        assert!(b.is_open());
    }

    #[test]
    fn a_probe_whose_caller_went_away_frees_the_slot() {
        let b = breaker(1, 0);
        b.admit().unwrap().failure();
        let probe = b.admit().unwrap();
        assert_eq!(probe.admission(), Admission::Probe);
        assert!(b.admit().is_none(), "one probe at a time");
        drop(probe);
        let next = b.admit().expect("a new probe once the first was abandoned");
        assert_eq!(next.admission(), Admission::Probe);
        next.success();
        assert!(!b.is_open());
    }

    #[test]
    fn a_half_open_breaker_lets_a_new_probe_through_after_the_bound() {
        let b = breaker_with_probe(1, 0, 0);
        b.admit().unwrap().failure();
        let stuck = b.admit().unwrap();
        // The probe timeout is 0: the next caller probes although the first never settled.
        let again = b.admit().expect("a second probe past the bound");
        assert_eq!(again.admission(), Admission::Probe);
        again.success();
        assert!(!b.is_open());
        // The late verdict of the first probe is still the upstream's word: it counts.
        stuck.failure();
        assert!(b.is_open(), "a failed probe opens it, however late");
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_over_a_floor() {
        let budget = RetryBudget::new(RetrySettings {
            attempts: 2,
            percent: 20,
            min_per_second: 0,
        });
        assert!(!budget.withdraw(), "no requests, no retries");
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw(), "20% of 10 requests is 2 retries");
        let floored = RetryBudget::new(RetrySettings {
            attempts: 1,
            percent: 0,
            min_per_second: 3,
        });
        assert_eq!((0..5).filter(|_| floored.withdraw()).count(), 3);
    }
}
