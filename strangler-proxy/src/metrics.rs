//! The proxy's Prometheus metrics.
//!
//! Label sets are bounded (carve-out, target, status class, upstream) and their handles are
//! resolved once per configuration, so the request path only increments atomics.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::analysis::{Counts, Latency};
use crate::phase::Target;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    carveout: String,
    target: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    carveout: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CarveOutLabels {
    carveout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    upstream: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOnly {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    carveout: String,
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    carveout: String,
    phase: String,
}

/// The analysis's latency histograms by carve-out and target.
type AnalysisLatencies = std::collections::HashMap<(String, Target), Arc<Latency>>;

/// Every metric family of the proxy.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    fallbacks: Family<CarveOutLabels, Counter>,
    shadow_compared: Family<CarveOutLabels, Counter>,
    shadow_mismatched: Family<CarveOutLabels, Counter>,
    shadow_dropped: Family<CarveOutLabels, Counter>,
    phase: Family<PhaseLabels, Gauge>,
    breaker_open: Family<InstanceLabels, Gauge>,
    retries: Family<UpstreamOnly, Counter>,
    rollout_step: Family<CarveOutLabels, Gauge>,
    rollout_figure: Family<CheckLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    rollout_passed: Family<CheckLabels, Gauge>,
    /// The analysis's latency histograms, by carve-out and target (kept across reloads, as
    /// the families' handles are).
    analysis: Arc<std::sync::Mutex<AnalysisLatencies>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strangler_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
        });
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let fallbacks = Family::<CarveOutLabels, Counter>::default();
        let shadow_compared = Family::<CarveOutLabels, Counter>::default();
        let shadow_mismatched = Family::<CarveOutLabels, Counter>::default();
        let shadow_dropped = Family::<CarveOutLabels, Counter>::default();
        let phase = Family::<PhaseLabels, Gauge>::default();
        let breaker_open = Family::<InstanceLabels, Gauge>::default();
        let retries = Family::<UpstreamOnly, Counter>::default();
        let rollout_step = Family::<CarveOutLabels, Gauge>::default();
        let rollout_figure =
            Family::<CheckLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let rollout_passed = Family::<CheckLabels, Gauge>::default();
        registry.register(
            "rollout_step",
            "The current step of a carve-out's rollout (1-based), on the replica running the controller",
            rollout_step.clone(),
        );
        registry.register(
            "rollout_check_figure",
            "A rollout check's figure in the latest interval (a rate, ms or s), summed over every replica",
            rollout_figure.clone(),
        );
        registry.register(
            "rollout_check_passed",
            "A rollout check's verdict in the latest interval: 1 passed, 0 failed, -1 not enough data",
            rollout_passed.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by carve-out, target and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by carve-out and target",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream calls, by upstream and kind (connect, timeout, protocol)",
            upstream_errors.clone(),
        );
        registry.register(
            "fallbacks",
            "Canary reads the service failed and the monolith answered",
            fallbacks.clone(),
        );
        registry.register(
            "shadow_comparisons",
            "Shadow responses compared with the monolith's",
            shadow_compared.clone(),
        );
        registry.register(
            "shadow_mismatches",
            "Shadow comparisons that found a difference",
            shadow_mismatched.clone(),
        );
        registry.register(
            "shadow_dropped",
            "Shadow copies not sent because the shadow queue was full",
            shadow_dropped.clone(),
        );
        registry.register(
            "carveout_phase",
            "1 for each carve-out's current phase",
            phase.clone(),
        );
        registry.register(
            "breaker_open",
            "1 while an upstream instance's circuit breaker is open",
            breaker_open.clone(),
        );
        registry.register(
            "retries",
            "Requests sent again after a failed attempt, by upstream",
            retries.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            upstream_errors,
            fallbacks,
            shadow_compared,
            shadow_mismatched,
            shadow_dropped,
            phase,
            breaker_open,
            retries,
            rollout_step,
            rollout_figure,
            rollout_passed,
            analysis: Arc::default(),
        }
    }

    /// The breaker-state gauge of one upstream instance.
    pub fn breaker_gauge(&self, upstream: &str, instance: &str) -> Gauge {
        self.breaker_open
            .get_or_create(&InstanceLabels {
                upstream: upstream.to_owned(),
                instance: instance.to_owned(),
            })
            .clone()
    }

    /// The retry counter of one upstream.
    pub fn retries(&self, upstream: &str) -> Counter {
        self.retries
            .get_or_create(&UpstreamOnly {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Resolved handles for one carve-out (`-` for requests no carve-out owns).
    pub fn route(&self, carveout: &str) -> RouteMetrics {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let handles = |target: Target| TargetMetrics {
            requests: classes.map(|class| {
                self.requests
                    .get_or_create(&RequestLabels {
                        carveout: carveout.to_owned(),
                        target: target.as_str().to_owned(),
                        class: class.to_owned(),
                    })
                    .clone()
            }),
            latency: self
                .latency
                .get_or_create(&RouteLabels {
                    carveout: carveout.to_owned(),
                    target: target.as_str().to_owned(),
                })
                .clone(),
            analysis: self
                .analysis
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((carveout.to_owned(), target))
                .or_default()
                .clone(),
        };
        let labels = CarveOutLabels {
            carveout: carveout.to_owned(),
        };
        RouteMetrics {
            monolith: handles(Target::Monolith),
            service: handles(Target::Service),
            fallbacks: self.fallbacks.get_or_create(&labels).clone(),
            shadow_compared: self.shadow_compared.get_or_create(&labels).clone(),
            shadow_mismatched: self.shadow_mismatched.get_or_create(&labels).clone(),
            shadow_dropped: self.shadow_dropped.get_or_create(&labels).clone(),
        }
    }

    /// Counts a failed call to an upstream.
    pub fn upstream_error(&self, upstream: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records a rollout's step (1-based) and its latest checks.
    pub fn rollout(&self, carveout: &str, step: usize, checks: &[crate::rollout::Check]) {
        self.rollout_step
            .get_or_create(&CarveOutLabels {
                carveout: carveout.to_owned(),
            })
            .set(i64::try_from(step).unwrap_or(i64::MAX));
        for check in checks {
            let labels = CheckLabels {
                carveout: carveout.to_owned(),
                check: check.name.clone(),
            };
            if let Some(figure) = check.figure {
                self.rollout_figure.get_or_create(&labels).set(figure);
            }
            self.rollout_passed
                .get_or_create(&labels)
                .set(match check.passed {
                    Some(true) => 1,
                    Some(false) => 0,
                    None => -1,
                });
        }
    }

    /// Records a carve-out's phase (1 for the current one, 0 for the others).
    pub fn set_phase(&self, carveout: &str, phase: &str) {
        for name in ["monolith", "shadow", "canary", "extracted", "retired"] {
            self.phase
                .get_or_create(&PhaseLabels {
                    carveout: carveout.to_owned(),
                    phase: name.to_owned(),
                })
                .set(i64::from(name == phase));
        }
    }
}

/// Metric handles of one carve-out.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    monolith: TargetMetrics,
    service: TargetMetrics,
    /// Fallbacks to the monolith.
    pub fallbacks: Counter,
    /// Shadow comparisons.
    pub shadow_compared: Counter,
    /// Shadow mismatches.
    pub shadow_mismatched: Counter,
    /// Dropped shadow copies.
    pub shadow_dropped: Counter,
}

#[derive(Clone, Debug)]
struct TargetMetrics {
    requests: [Counter; 5],
    latency: Histogram,
    analysis: Arc<Latency>,
}

/// What one replica counted of a carve-out's traffic since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    /// Answered by the monolith: all, and 5xx.
    pub monolith: (u64, u64),
    /// Answered by the service: all, and 5xx.
    pub service: (u64, u64),
    /// Reads the service failed that the monolith answered.
    pub fallbacks: u64,
    /// Shadow comparisons made.
    pub shadow_compared: u64,
    /// Of those, mismatches.
    pub shadow_mismatched: u64,
}

impl RouteMetrics {
    /// The counts so far.
    pub fn traffic(&self) -> Traffic {
        let side = |t: &TargetMetrics| {
            (
                t.requests.iter().map(Counter::get).sum(),
                t.requests[4].get(),
            )
        };
        Traffic {
            monolith: side(&self.monolith),
            service: side(&self.service),
            fallbacks: self.fallbacks.get(),
            shadow_compared: self.shadow_compared.get(),
            shadow_mismatched: self.shadow_mismatched.get(),
        }
    }

    /// Records one answered request.
    pub fn record(&self, target: Target, status: u16, seconds: f64) {
        let handles = match target {
            Target::Monolith => &self.monolith,
            Target::Service => &self.service,
        };
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        handles.requests[class].inc();
        handles.latency.observe(seconds);
        handles.analysis.observe(seconds * 1000.0);
    }

    /// What the rollout analysis reads: the counts so far, with latency histograms.
    pub fn counts(&self) -> Counts {
        let traffic = self.traffic();
        Counts {
            monolith_requests: traffic.monolith.0,
            monolith_errors: traffic.monolith.1,
            service_requests: traffic.service.0,
            service_errors: traffic.service.1,
            fallbacks: traffic.fallbacks,
            shadow_compared: traffic.shadow_compared,
            shadow_mismatched: traffic.shadow_mismatched,
            monolith_latency: self.monolith.analysis.snapshot(),
            service_latency: self.service.analysis.snapshot(),
        }
    }
}
