//! The relay's Prometheus metrics: lag in changes and seconds (computed from the change log, so
//! it stays visible when the source is idle), applied changes, errors, and whether this relay
//! is the active one.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::relay::Step;

/// The metrics of one relay.
#[derive(Debug)]
pub struct RelayMetrics {
    registry: Registry,
    lag_events: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    applied: Counter,
    errors: Counter,
    active: Gauge,
    gap_seconds: Gauge<f64, AtomicU64>,
    parked: Gauge,
    batch_seconds: Histogram,
}

impl RelayMetrics {
    /// Metrics labelled with the relay's stream (`catalog:forward`).
    pub fn new(stream: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "strangler_sync",
            [(
                std::borrow::Cow::Borrowed("stream"),
                std::borrow::Cow::Owned(stream.to_owned()),
            )]
            .into_iter(),
        );
        let metrics = RelayMetrics {
            lag_events: Gauge::default(),
            lag_seconds: Gauge::default(),
            applied: Counter::default(),
            errors: Counter::default(),
            active: Gauge::default(),
            gap_seconds: Gauge::default(),
            parked: Gauge::default(),
            batch_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            registry: Registry::default(),
        };
        registry.register(
            "lag_events",
            "Changes in the log not applied yet",
            metrics.lag_events.clone(),
        );
        registry.register(
            "lag_seconds",
            "Age of the oldest change not applied yet",
            metrics.lag_seconds.clone(),
        );
        registry.register("applied", "Changes applied", metrics.applied.clone());
        registry.register(
            "errors",
            "Failed relay steps (retried)",
            metrics.errors.clone(),
        );
        registry.register(
            "active",
            "1 while this relay holds the lease, 0 on standby",
            metrics.active.clone(),
        );
        registry.register(
            "gap_seconds",
            "How long the relay has waited on a missing change number (0 when none)",
            metrics.gap_seconds.clone(),
        );
        registry.register(
            "parked",
            "Keys whose change the target refused, waiting for a retry or a skip",
            metrics.parked.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time to read and apply one batch of changes (passes that applied some)",
            metrics.batch_seconds.clone(),
        );
        RelayMetrics {
            registry,
            ..metrics
        }
    }

    /// Records a step and how long it took.
    pub fn step(&self, step: &Step, took: Duration) {
        if step.applied > 0 {
            self.batch_seconds.observe(took.as_secs_f64());
        }
        self.applied.inc_by(step.applied as u64);
        self.active.set(i64::from(!step.standby));
        self.gap_seconds
            .set(step.gap.map_or(0.0, |(_, waited)| waited.as_secs_f64()));
    }

    /// Records the lag.
    pub fn lag(&self, events: i64, age: Duration) {
        self.lag_events.set(events);
        self.lag_seconds.set(age.as_secs_f64());
    }

    /// Records how many keys are parked.
    pub fn parked(&self, keys: usize) {
        self.parked.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// Records a failed step.
    pub fn error(&self) {
        self.errors.inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
