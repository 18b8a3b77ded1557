//! Circuit breakers (per upstream instance) and the retry budget (per upstream).
//!
//! **Breaker**: after `failures` consecutive failures (connect error, timeout, 5xx) an instance
//! is *open*: round robin skips it (outlier ejection) for `open_for`. Then it is *half-open*:
//! one request probes it; success closes it, failure opens it again. When every instance is
//! open, calls fail fast instead of piling up on a dead service.
//!
//! **Retry budget** (as Finagle and Envoy do it): every request deposits `percent`/100 of a
//! token, every retry spends one, and the balance is capped, so retries add at most that share
//! of load on top of a floor of `min_per_second` retries, and a failing upstream cannot be hammered
//! by a retry storm.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
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
}

/// One instance's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: AtomicU8,
    consecutive: AtomicU32,
    opened_at_ms: AtomicU64,
    probing: AtomicBool,
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

impl Breaker {
    /// A closed breaker reporting its state (1 open, 0 not) to `gauge`.
    pub fn new(settings: BreakerSettings, gauge: Gauge) -> Self {
        gauge.set(0);
        Breaker {
            settings,
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
            gauge,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Asks to send a call; `None` while the breaker is open.
    pub fn admit(&self) -> Option<Admission> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Admission::Normal),
            OPEN => {
                let open_for = self.settings.open_for.as_millis() as u64;
                if self
                    .now_ms()
                    .saturating_sub(self.opened_at_ms.load(Ordering::Acquire))
                    < open_for
                {
                    return None;
                }
                // Time to probe: exactly one caller wins the half-open slot.
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.probing.store(true, Ordering::Release);
                    Some(Admission::Probe)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Records a successful call.
    pub fn success(&self, admission: Admission) {
        self.consecutive.store(0, Ordering::Release);
        if admission == Admission::Probe {
            self.probing.store(false, Ordering::Release);
            self.state.store(CLOSED, Ordering::Release);
            self.gauge.set(0);
        }
    }

    /// Records a failed call.
    pub fn failure(&self, admission: Admission) {
        let failures = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if admission == Admission::Probe || failures >= self.settings.failures {
            self.opened_at_ms.store(self.now_ms(), Ordering::Release);
            self.probing.store(false, Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
            self.gauge.set(1);
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

    fn breaker(failures: u32, open_for_ms: u64) -> Breaker {
        Breaker::new(
            BreakerSettings {
                failures,
                open_for: Duration::from_millis(open_for_ms),
            },
            Gauge::default(),
        )
    }

    #[test]
    fn a_breaker_opens_after_consecutive_failures_and_probes_once() {
        let b = breaker(3, 0);
        for _ in 0..2 {
            b.failure(b.admit().unwrap());
        }
        b.success(b.admit().unwrap());
        for _ in 0..2 {
            b.failure(b.admit().unwrap());
        }
        assert!(!b.is_open(), "a success in between resets the count");
        b.failure(b.admit().unwrap());
        assert!(b.is_open());
        // open_for is 0: the next caller probes, and only it.
        assert_eq!(b.admit(), Some(Admission::Probe));
        assert_eq!(b.admit(), None);
        b.failure(Admission::Probe);
        assert!(b.is_open(), "a failed probe opens it again");
        let probe = b.admit().unwrap();
        b.success(probe);
        assert!(!b.is_open());
        assert_eq!(b.admit(), Some(Admission::Normal));
    }

    #[test]
    fn an_open_breaker_refuses_until_its_time_is_up() {
        let b = breaker(1, 60_000);
        b.failure(b.admit().unwrap());
        assert_eq!(b.admit(), None);
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
