//! What a rollout's analysis measures of a carve-out, per side: requests, errors, latency,
//! fallbacks and shadow comparisons. The request path only increments atomics; each replica
//! writes what it counted into the control database in short windows
//! ([`crate::control::store::ControlStore::add_window`]), where the rollout controller sums
//! every replica's windows, so one analysis sees the whole cluster.
//!
//! Latencies go into fixed buckets (the same everywhere), so histograms of several replicas
//! add up and a p99 can be read from their sum.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in milliseconds; a last bucket holds the rest.
pub const LATENCY_BOUNDS_MS: [f64; 24] = [
    0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0,
    500.0, 750.0, 1_000.0, 2_000.0, 3_000.0, 5_000.0, 10_000.0, 30_000.0,
];

const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// A latency histogram with the fixed buckets.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
}

impl Latency {
    /// Counts one latency.
    pub fn observe(&self, millis: f64) {
        // On the request path: a binary search over the sorted bounds (the last bucket holds
        // the rest).
        let bucket = LATENCY_BOUNDS_MS.partition_point(|bound| *bound < millis);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, bucket by bucket.
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

/// What was counted of a carve-out: since a replica started (cumulative), or in a window
/// (the difference of two snapshots, or the sum of windows of several replicas).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests the monolith answered.
    pub monolith_requests: u64,
    /// Of those, 5xx (its own, or the proxy's 502/504 for a failed call).
    pub monolith_errors: u64,
    /// Requests the service answered (a failed read answered by the monolith is not one:
    /// see `fallbacks`).
    pub service_requests: u64,
    /// Of those, 5xx.
    pub service_errors: u64,
    /// Reads the service failed (5xx, timeout, refused) that the monolith answered.
    pub fallbacks: u64,
    /// Shadow comparisons made.
    pub shadow_compared: u64,
    /// Of those, mismatches.
    pub shadow_mismatched: u64,
    /// The monolith's latencies, bucket by bucket ([`LATENCY_BOUNDS_MS`]).
    pub monolith_latency: Vec<u64>,
    /// The service's latencies.
    pub service_latency: Vec<u64>,
}

fn minus(a: &[u64], b: &[u64]) -> Vec<u64> {
    (0..a.len().max(b.len()))
        .map(|i| {
            a.get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(b.get(i).copied().unwrap_or(0))
        })
        .collect()
}

fn plus(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

impl Counts {
    /// What was counted after `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            monolith_requests: self
                .monolith_requests
                .saturating_sub(earlier.monolith_requests),
            monolith_errors: self.monolith_errors.saturating_sub(earlier.monolith_errors),
            service_requests: self
                .service_requests
                .saturating_sub(earlier.service_requests),
            service_errors: self.service_errors.saturating_sub(earlier.service_errors),
            fallbacks: self.fallbacks.saturating_sub(earlier.fallbacks),
            shadow_compared: self.shadow_compared.saturating_sub(earlier.shadow_compared),
            shadow_mismatched: self
                .shadow_mismatched
                .saturating_sub(earlier.shadow_mismatched),
            monolith_latency: minus(&self.monolith_latency, &earlier.monolith_latency),
            service_latency: minus(&self.service_latency, &earlier.service_latency),
        }
    }

    /// Adds `other` (another window, or another replica's).
    pub fn add(&mut self, other: &Counts) {
        self.monolith_requests += other.monolith_requests;
        self.monolith_errors += other.monolith_errors;
        self.service_requests += other.service_requests;
        self.service_errors += other.service_errors;
        self.fallbacks += other.fallbacks;
        self.shadow_compared += other.shadow_compared;
        self.shadow_mismatched += other.shadow_mismatched;
        plus(&mut self.monolith_latency, &other.monolith_latency);
        plus(&mut self.service_latency, &other.service_latency);
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.monolith_requests == 0
            && self.service_requests == 0
            && self.fallbacks == 0
            && self.shadow_compared == 0
    }

    /// Calls made to the service: the requests it answered and those it failed into a
    /// fallback.
    pub fn service_calls(&self) -> u64 {
        self.service_requests + self.fallbacks
    }

    /// The service's error rate over its calls (a fallback is a failed call).
    pub fn service_error_rate(&self) -> Option<f64> {
        rate(self.service_errors + self.fallbacks, self.service_calls())
    }

    /// The monolith's error rate.
    pub fn monolith_error_rate(&self) -> Option<f64> {
        rate(self.monolith_errors, self.monolith_requests)
    }
}

/// `part / all`, `None` when nothing was counted.
pub fn rate(part: u64, all: u64) -> Option<f64> {
    (all > 0).then(|| part as f64 / all as f64)
}

/// The 99th percentile of a histogram, in milliseconds: the upper bound of the bucket that
/// holds it (the last bucket's lower bound for the rest); `None` when it is empty.
pub fn p99_ms(latency: &[u64]) -> Option<f64> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    // The smallest count that covers 99 % (rounded up).
    let wanted = (total * 99).div_ceil(100);
    let mut seen = 0;
    for (i, count) in latency.iter().enumerate() {
        seen += count;
        if seen >= wanted {
            return Some(
                LATENCY_BOUNDS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]),
            );
        }
    }
    LATENCY_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_bucket_and_give_a_p99() {
        let latency = Latency::default();
        for _ in 0..98 {
            latency.observe(4.0);
        }
        latency.observe(40.0);
        latency.observe(400.0);
        let buckets = latency.snapshot();
        assert_eq!(buckets[4], 98, "4 ms is in the 5 ms bucket");
        assert_eq!(buckets[10], 1);
        assert_eq!(buckets[16], 1);
        // 99 of 100 are at or under 50 ms.
        assert_eq!(p99_ms(&buckets), Some(50.0));
        assert_eq!(p99_ms(&[]), None);
        latency.observe(1e9);
        assert_eq!(latency.snapshot()[BUCKETS - 1], 1, "beyond the last bound");
    }

    #[test]
    fn windows_subtract_and_add_up() {
        let later = Counts {
            service_requests: 10,
            service_errors: 2,
            fallbacks: 2,
            service_latency: vec![5, 5],
            ..Counts::default()
        };
        let earlier = Counts {
            service_requests: 4,
            service_latency: vec![4],
            ..Counts::default()
        };
        let mut window = later.since(&earlier);
        assert_eq!(window.service_requests, 6);
        assert_eq!(window.service_latency, vec![1, 5]);
        assert_eq!(window.service_calls(), 8);
        assert_eq!(window.service_error_rate(), Some(0.5));
        window.add(&earlier);
        assert_eq!(window.service_requests, 10);
        assert_eq!(window.service_latency, vec![5, 5]);
        assert_eq!(Counts::default().service_error_rate(), None);
    }
}
