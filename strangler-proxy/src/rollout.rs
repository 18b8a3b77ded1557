//! A carve-out's automatic rollout: a plan of steps (`shadow 10m`, `canary 1% 5m`, `5%`, ...,
//! optionally `cutover`), each with a dwell and analysis checks, and the pure decision of what
//! the controller does at each analysis interval ([`decide`]). The effects (phase changes, the
//! guarded cut-over and roll-back, the rollout's record) are the control plane's
//! ([`crate::control::rollout`]).
//!
//! At every interval the controller measures the carve-out over that interval, summed over
//! every replica, and checks it ([`checks`]); then:
//!
//! | the interval's checks | the step | decision |
//! | --- | --- | --- |
//! | one failed, the step's failures now > `failure_limit` | any | **roll back** to the safe phase (the guarded roll-back first if writes had moved); the rollout halts |
//! | one failed, within `failure_limit` | any | **hold**; the dwell starts again |
//! | none failed | a `cutover` not done yet, not approved (`approve_cutover`, the default) | **await approval** |
//! | none failed | a `cutover` not done yet, approved (or approval off) | **cut over** (guarded) |
//! | none failed | clean for its dwell **and** `min_requests` seen while clean | **promote** to the next step (**done** after the last) |
//! | none failed | otherwise | **hold**: silence never promotes |
//!
//! A check without enough data in the interval (fewer than `min_interval_requests`) neither
//! passes nor fails. The samples counted towards `min_requests` are what the step exercises:
//! shadow comparisons in `shadow`, calls to the service in `canary` and after a cut-over.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::{p99_ms, rate, Counts};
use crate::phase::{basis_points, Phase};

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Step {
    /// Reads copied to the service and compared.
    Shadow {
        /// How long it must stay clean (ms).
        dwell_ms: u64,
    },
    /// That share of callers read from the service.
    Canary {
        /// Hundredths of a percent.
        basis_points: u32,
        /// How long it must stay clean (ms).
        dwell_ms: u64,
    },
    /// The guarded cut-over of the writes, then a dwell in `extracted`.
    CutOver {
        /// How long `extracted` must stay clean (ms).
        dwell_ms: u64,
    },
}

impl Step {
    /// The phase the step puts the carve-out in.
    pub fn phase(&self) -> Phase {
        match self {
            Step::Shadow { .. } => Phase::Shadow,
            Step::Canary { basis_points, .. } => Phase::Canary {
                basis_points: *basis_points,
            },
            Step::CutOver { .. } => Phase::Extracted,
        }
    }

    /// How long it must stay clean.
    pub fn dwell(&self) -> Duration {
        match self {
            Step::Shadow { dwell_ms }
            | Step::Canary { dwell_ms, .. }
            | Step::CutOver { dwell_ms } => Duration::from_millis(*dwell_ms),
        }
    }

    /// The samples of a window that count towards the step's `min_requests`.
    pub fn samples(&self, window: &Counts) -> u64 {
        match self {
            Step::Shadow { .. } => window.shadow_compared,
            Step::Canary { .. } | Step::CutOver { .. } => window.service_calls(),
        }
    }

    /// Parses `shadow 10m`, `canary 5% 30s`, `5%` (a canary), `cutover`, `cutover 10m`; a
    /// step without a dwell gets `default_dwell`.
    pub fn parse(text: &str, default_dwell: Duration) -> Result<Step, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let dwell = |word: Option<&&str>| -> Result<u64, String> {
            match word {
                None => Ok(millis(default_dwell)),
                Some(w) => parse_duration(w).map(millis),
            }
        };
        let percent = |w: &str| -> Result<u32, String> {
            let number = w
                .strip_suffix('%')
                .ok_or_else(|| format!("{w:?} is not a percentage like 5%"))?;
            let value: f64 = number
                .parse()
                .map_err(|_| format!("{w:?} is not a percentage like 5%"))?;
            basis_points(value)
        };
        let step = match words.as_slice() {
            ["shadow", rest @ ..] if rest.len() <= 1 => Step::Shadow {
                dwell_ms: dwell(rest.first())?,
            },
            ["canary", share, rest @ ..] if rest.len() <= 1 => Step::Canary {
                basis_points: percent(share)?,
                dwell_ms: dwell(rest.first())?,
            },
            ["cutover", rest @ ..] if rest.len() <= 1 => Step::CutOver {
                dwell_ms: dwell(rest.first())?,
            },
            [share, rest @ ..] if share.ends_with('%') && rest.len() <= 1 => Step::Canary {
                basis_points: percent(share)?,
                dwell_ms: dwell(rest.first())?,
            },
            _ => {
                return Err(format!(
                    "step {text:?}: expected `shadow [DWELL]`, `canary N% [DWELL]`, `N% [DWELL]` or `cutover [DWELL]` (DWELL like 30s, 5m, 1h)"
                ))
            }
        };
        Ok(step)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dwell = humane(self.dwell());
        match self {
            Step::Shadow { .. } => write!(f, "shadow {dwell}"),
            Step::Canary { .. } => write!(f, "{} {dwell}", self.phase()),
            Step::CutOver { .. } => write!(f, "cutover {dwell}"),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `250ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 5m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: the unit is ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

fn humane(d: Duration) -> String {
    let ms = millis(d);
    match ms {
        ms if ms % 3_600_000 == 0 && ms > 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The analysis checks' bounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// The service's error rate may exceed the monolith's by at most this (0.01: one point).
    pub max_error_rate_increase: f64,
    /// The service's p99 may be at most this many times the monolith's ...
    pub max_p99_ratio: f64,
    /// ... or the monolith's plus this many ms, whichever is larger (small latencies are
    /// noisy).
    pub p99_floor_ms: f64,
    /// Most fallbacks per call to the service.
    pub max_fallback_rate: f64,
    /// Most shadow mismatches per comparison.
    pub max_mismatch_rate: f64,
    /// Most seconds the data sync may lag (when the carve-out has one).
    pub max_sync_lag_seconds: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_error_rate_increase: 0.01,
            max_p99_ratio: 2.0,
            p99_floor_ms: 10.0,
            max_fallback_rate: 0.05,
            max_mismatch_rate: 0.01,
            max_sync_lag_seconds: 10.0,
        }
    }
}

/// A rollout plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// How often the controller measures and decides (ms).
    pub interval_ms: u64,
    /// Failed intervals a step tolerates; one more rolls back.
    pub failure_limit: u32,
    /// Samples a step must see while clean before it promotes.
    pub min_requests: u64,
    /// Samples an interval needs for a check to count.
    pub min_interval_requests: u64,
    /// Where a roll-back takes the carve-out: `monolith` or `shadow`.
    pub safe_phase: Phase,
    /// Whether the cut-over step waits for `strangler rollout approve`.
    pub approve_cutover: bool,
    /// The checks' bounds.
    pub thresholds: Thresholds,
}

/// A plan as written in the configuration (`rollout = { ... }` of a carve-out) or sent to the
/// admin API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    /// Steps (default: `shadow 10m`, `canary 1% 5m`, `5%`, `25%`, `50%`, `100%`).
    pub steps: Option<Vec<String>>,
    /// The dwell of a step that names none (default 5m).
    pub dwell: Option<String>,
    /// Default 1000.
    pub interval_ms: Option<u64>,
    /// Default 1.
    pub failure_limit: Option<u32>,
    /// Default 100.
    pub min_requests: Option<u64>,
    /// Default 10.
    pub min_interval_requests: Option<u64>,
    /// `monolith` (default) or `shadow`.
    pub safe_phase: Option<String>,
    /// Default true.
    pub approve_cutover: Option<bool>,
    /// Default 0.01.
    pub max_error_rate_increase: Option<f64>,
    /// Default 2.0.
    pub max_p99_ratio: Option<f64>,
    /// Default 10.
    pub p99_floor_ms: Option<f64>,
    /// Default 0.05.
    pub max_fallback_rate: Option<f64>,
    /// Default 0.01.
    pub max_mismatch_rate: Option<f64>,
    /// Default 10.
    pub max_sync_lag_seconds: Option<f64>,
}

impl Plan {
    /// The plan a section describes, defaults filled in; an error names what is wrong.
    pub fn from_section(section: &PlanSection) -> Result<Plan, String> {
        let dwell = match &section.dwell {
            Some(text) => parse_duration(text)?,
            None => Duration::from_secs(300),
        };
        let texts = section.steps.clone().unwrap_or_else(|| {
            ["shadow 10m", "canary 1% 5m", "5%", "25%", "50%", "100%"]
                .map(str::to_owned)
                .to_vec()
        });
        let steps = texts
            .iter()
            .map(|t| Step::parse(t, dwell))
            .collect::<Result<Vec<_>, _>>()?;
        if steps.is_empty() {
            return Err("a rollout needs at least one step".to_owned());
        }
        if let Some(i) = steps.iter().position(|s| matches!(s, Step::CutOver { .. })) {
            if i + 1 != steps.len() {
                return Err("`cutover` can only be the last step".to_owned());
            }
            if i == 0 || !matches!(steps[i - 1], Step::Canary { .. }) {
                return Err("`cutover` must follow a canary step".to_owned());
            }
        }
        let safe_phase = match section.safe_phase.as_deref().unwrap_or("monolith") {
            "monolith" => Phase::Monolith,
            "shadow" => Phase::Shadow,
            other => return Err(format!("safe_phase is monolith or shadow (got {other:?})")),
        };
        let defaults = Thresholds::default();
        let thresholds = Thresholds {
            max_error_rate_increase: section
                .max_error_rate_increase
                .unwrap_or(defaults.max_error_rate_increase),
            max_p99_ratio: section.max_p99_ratio.unwrap_or(defaults.max_p99_ratio),
            p99_floor_ms: section.p99_floor_ms.unwrap_or(defaults.p99_floor_ms),
            max_fallback_rate: section
                .max_fallback_rate
                .unwrap_or(defaults.max_fallback_rate),
            max_mismatch_rate: section
                .max_mismatch_rate
                .unwrap_or(defaults.max_mismatch_rate),
            max_sync_lag_seconds: section
                .max_sync_lag_seconds
                .unwrap_or(defaults.max_sync_lag_seconds),
        };
        for (name, value) in [
            (
                "max_error_rate_increase",
                thresholds.max_error_rate_increase,
            ),
            ("max_p99_ratio", thresholds.max_p99_ratio),
            ("p99_floor_ms", thresholds.p99_floor_ms),
            ("max_fallback_rate", thresholds.max_fallback_rate),
            ("max_mismatch_rate", thresholds.max_mismatch_rate),
            ("max_sync_lag_seconds", thresholds.max_sync_lag_seconds),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(format!("{name} must be a number ≥ 0 (got {value})"));
            }
        }
        let interval_ms = section.interval_ms.unwrap_or(1000);
        if !(100..=60_000).contains(&interval_ms) {
            return Err(format!(
                "interval_ms must be between 100 and 60000 (got {interval_ms})"
            ));
        }
        Ok(Plan {
            steps,
            interval_ms,
            failure_limit: section.failure_limit.unwrap_or(1),
            min_requests: section.min_requests.unwrap_or(100),
            min_interval_requests: section.min_interval_requests.unwrap_or(10).max(1),
            safe_phase,
            approve_cutover: section.approve_cutover.unwrap_or(true),
            thresholds,
        })
    }

    /// The analysis interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// One check of one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `error_rate`, `latency_p99`, `fallback_rate`, `mismatch_rate`, `sync_lag`.
    pub name: String,
    /// The measured figure (a rate, ms, or s), when there was enough data.
    pub figure: Option<f64>,
    /// The bound it was held to.
    pub threshold: f64,
    /// `Some(true)` passed, `Some(false)` failed, `None` not enough data.
    pub passed: Option<bool>,
    /// In words, with the figures.
    pub detail: String,
}

impl Check {
    fn judged(name: &str, figure: f64, threshold: f64, detail: String) -> Check {
        Check {
            name: name.to_owned(),
            figure: Some(figure),
            threshold,
            passed: Some(figure <= threshold),
            detail,
        }
    }

    fn no_data(name: &str, threshold: f64, detail: String) -> Check {
        Check {
            name: name.to_owned(),
            figure: None,
            threshold,
            passed: None,
            detail,
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

/// The checks of one interval's measurements in `step` (`sync_lag_s`: the data sync's lag,
/// when the carve-out has one).
pub fn checks(step: &Step, plan: &Plan, window: &Counts, sync_lag_s: Option<f64>) -> Vec<Check> {
    let t = &plan.thresholds;
    let enough = |n: u64| n >= plan.min_interval_requests;
    let mut out = Vec::new();
    if !matches!(step, Step::Shadow { .. }) {
        let calls = window.service_calls();
        let baseline = if enough(window.monolith_requests) {
            window.monolith_error_rate().unwrap_or(0.0)
        } else {
            0.0
        };
        let bound = baseline + t.max_error_rate_increase;
        out.push(
            match window.service_error_rate().filter(|_| enough(calls)) {
                Some(r) => Check::judged(
                    "error_rate",
                    r,
                    bound,
                    format!(
                        "service {} of {calls} call(s) vs monolith {} (bound {})",
                        pct(r),
                        pct(baseline),
                        pct(bound)
                    ),
                ),
                None => Check::no_data(
                    "error_rate",
                    bound,
                    format!(
                        "{calls} call(s) to the service, fewer than {}",
                        plan.min_interval_requests
                    ),
                ),
            },
        );
        let service_p99 =
            p99_ms(&window.service_latency).filter(|_| enough(window.service_latency.iter().sum()));
        let monolith_p99 = p99_ms(&window.monolith_latency)
            .filter(|_| enough(window.monolith_latency.iter().sum()));
        out.push(match (service_p99, monolith_p99) {
            (Some(s), Some(m)) => {
                let bound = (m * t.max_p99_ratio).max(m + t.p99_floor_ms);
                Check::judged(
                    "latency_p99",
                    s,
                    bound,
                    format!("service p99 ≤ {s} ms vs monolith ≤ {m} ms (bound {bound} ms)"),
                )
            }
            _ => Check::no_data(
                "latency_p99",
                t.max_p99_ratio,
                "not enough answers from both sides in the interval".to_owned(),
            ),
        });
        out.push(
            match rate(window.fallbacks, calls).filter(|_| enough(calls)) {
                Some(r) => Check::judged(
                    "fallback_rate",
                    r,
                    t.max_fallback_rate,
                    format!(
                        "{} fallback(s) of {calls} call(s): {} (bound {})",
                        window.fallbacks,
                        pct(r),
                        pct(t.max_fallback_rate)
                    ),
                ),
                None => Check::no_data(
                    "fallback_rate",
                    t.max_fallback_rate,
                    format!("{calls} call(s) to the service"),
                ),
            },
        );
    }
    if matches!(step, Step::Shadow { .. }) || window.shadow_compared > 0 {
        let compared = window.shadow_compared;
        out.push(
            match rate(window.shadow_mismatched, compared).filter(|_| enough(compared)) {
                Some(r) => Check::judged(
                    "mismatch_rate",
                    r,
                    t.max_mismatch_rate,
                    format!(
                        "{} mismatch(es) of {compared} comparison(s): {} (bound {})",
                        window.shadow_mismatched,
                        pct(r),
                        pct(t.max_mismatch_rate)
                    ),
                ),
                None => Check::no_data(
                    "mismatch_rate",
                    t.max_mismatch_rate,
                    format!("{compared} comparison(s)"),
                ),
            },
        );
    }
    if let Some(lag) = sync_lag_s {
        out.push(Check::judged(
            "sync_lag",
            lag,
            t.max_sync_lag_seconds,
            format!(
                "the data sync is {lag:.1} s behind (bound {} s)",
                t.max_sync_lag_seconds
            ),
        ));
    }
    out
}

/// Where a rollout stands in its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The step (index into the plan).
    pub step: usize,
    /// When the step began (Unix ms).
    pub step_started_ms: i64,
    /// Since when every check has passed (Unix ms): the step's start, or its last failure.
    pub clean_since_ms: i64,
    /// Failed intervals in this step.
    pub failures: u32,
    /// Samples seen since `clean_since_ms`.
    pub samples: u64,
    /// Whether an operator approved the cut-over step.
    pub approved: bool,
}

impl Progress {
    /// At the start of `step`.
    pub fn at(step: usize, now_ms: i64) -> Progress {
        Progress {
            step,
            step_started_ms: now_ms,
            clean_since_ms: now_ms,
            failures: 0,
            samples: 0,
            approved: false,
        }
    }
}

/// What the controller does.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing yet (waiting for time or traffic, or a failure within the limit).
    Hold,
    /// Move to the next step.
    Promote,
    /// The last step passed.
    Done,
    /// Run the guarded cut-over (approved, or approval is off).
    CutOver,
    /// The cut-over step waits for an operator.
    AwaitApproval,
    /// Checks failed past the limit: back to the safe phase, halted.
    RollBack {
        /// The failed checks.
        failed: Vec<Check>,
    },
}

/// The decision for one interval: `progress` in `plan`, the carve-out in `phase`, the
/// interval's `checks` and its `samples` (of the step's kind). Returns the progress after it.
pub fn decide(
    plan: &Plan,
    progress: &Progress,
    phase: Phase,
    checks: &[Check],
    samples: u64,
    now_ms: i64,
) -> (Progress, Decision) {
    let mut next = *progress;
    let Some(step) = plan.steps.get(progress.step) else {
        return (next, Decision::Done);
    };
    let failed: Vec<Check> = checks
        .iter()
        .filter(|c| c.passed == Some(false))
        .cloned()
        .collect();
    if !failed.is_empty() {
        next.failures += 1;
        next.clean_since_ms = now_ms;
        next.samples = 0;
        if next.failures > plan.failure_limit {
            return (next, Decision::RollBack { failed });
        }
        return (next, Decision::Hold);
    }
    if matches!(step, Step::CutOver { .. }) && phase != Phase::Extracted {
        let decision = if plan.approve_cutover && !progress.approved {
            Decision::AwaitApproval
        } else {
            Decision::CutOver
        };
        return (next, decision);
    }
    next.samples += samples;
    let clean_for = now_ms - next.clean_since_ms;
    let dwell = i64::try_from(step.dwell().as_millis()).unwrap_or(i64::MAX);
    if clean_for >= dwell && next.samples >= plan.min_requests {
        let decision = if progress.step + 1 == plan.steps.len() {
            Decision::Done
        } else {
            Decision::Promote
        };
        return (next, decision);
    }
    (next, Decision::Hold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(steps: &[&str]) -> Plan {
        Plan::from_section(&PlanSection {
            steps: Some(steps.iter().map(|s| (*s).to_owned()).collect()),
            min_requests: Some(20),
            ..PlanSection::default()
        })
        .unwrap()
    }

    fn healthy(calls: u64) -> Counts {
        Counts {
            monolith_requests: calls,
            service_requests: calls,
            monolith_latency: vec![0, 0, 0, 0, calls],
            service_latency: vec![0, 0, 0, 0, calls],
            ..Counts::default()
        }
    }

    #[test]
    fn steps_parse_as_written_and_bad_ones_are_named() {
        let d = Duration::from_secs(300);
        assert_eq!(
            Step::parse("shadow 10m", d),
            Ok(Step::Shadow { dwell_ms: 600_000 })
        );
        assert_eq!(
            Step::parse("canary 1% 30s", d),
            Ok(Step::Canary {
                basis_points: 100,
                dwell_ms: 30_000
            })
        );
        assert_eq!(
            Step::parse("25%", d),
            Ok(Step::Canary {
                basis_points: 2500,
                dwell_ms: 300_000
            })
        );
        assert_eq!(
            Step::parse("cutover", d),
            Ok(Step::CutOver { dwell_ms: 300_000 })
        );
        assert_eq!(
            Step::parse("canary 5% 250ms", d).unwrap().to_string(),
            "canary 5.00% 250ms"
        );
        for bad in [
            "",
            "canary",
            "canary 101%",
            "shadow 5x",
            "ramp 5%",
            "5% 1m extra",
        ] {
            assert!(Step::parse(bad, d).is_err(), "{bad:?}");
        }
        let section = |steps: &[&str]| PlanSection {
            steps: Some(steps.iter().map(|s| (*s).to_owned()).collect()),
            ..PlanSection::default()
        };
        assert!(Plan::from_section(&section(&["cutover", "5%"])).is_err());
        assert!(Plan::from_section(&section(&["shadow", "cutover"])).is_err());
        assert!(Plan::from_section(&section(&[])).is_err());
        assert!(Plan::from_section(&section(&["5%", "100%", "cutover"])).is_ok());
    }

    #[test]
    fn a_step_promotes_only_after_its_dwell_with_enough_traffic() {
        let plan = plan(&["canary 10% 1s", "canary 50% 1s"]);
        let phase = Phase::Canary { basis_points: 1000 };
        let start = Progress::at(0, 0);
        let window = healthy(15);
        let passed = checks(&plan.steps[0], &plan, &window, None);
        assert!(passed.iter().all(|c| c.passed == Some(true)), "{passed:?}");
        // Before the dwell: hold, samples accumulate.
        let (p, d) = decide(&plan, &start, phase, &passed, 15, 500);
        assert_eq!((d, p.samples), (Decision::Hold, 15));
        // After the dwell with enough samples: promote.
        let (_, d) = decide(&plan, &p, phase, &passed, 15, 1000);
        assert_eq!(d, Decision::Promote);
        // Silence never promotes, however long.
        let quiet = checks(&plan.steps[0], &plan, &Counts::default(), None);
        assert!(quiet.iter().all(|c| c.passed.is_none()), "{quiet:?}");
        let (p, d) = decide(&plan, &start, phase, &quiet, 0, 1_000_000);
        assert_eq!((d, p.samples), (Decision::Hold, 0));
        // The last step: done.
        let last = Progress::at(1, 0);
        let (_, d) = decide(&plan, &last, phase, &passed, 30, 1000);
        assert_eq!(d, Decision::Done);
    }

    #[test]
    fn failures_past_the_limit_roll_back_naming_the_check() {
        let plan = plan(&["canary 25% 1m"]);
        let phase = Phase::Canary { basis_points: 2500 };
        let mut window = healthy(100);
        window.service_requests = 80;
        window.service_errors = 0;
        window.fallbacks = 20;
        let found = checks(&plan.steps[0], &plan, &window, None);
        let error = found.iter().find(|c| c.name == "error_rate").unwrap();
        assert_eq!(error.passed, Some(false), "{error:?}");
        assert!(error.detail.contains("20.0 %"), "{}", error.detail);
        // failure_limit 1: the first failure holds and restarts the dwell, the second rolls back.
        let (p, d) = decide(&plan, &Progress::at(0, 0), phase, &found, 100, 10);
        assert_eq!((d, p.failures, p.clean_since_ms), (Decision::Hold, 1, 10));
        let (_, d) = decide(&plan, &p, phase, &found, 100, 20);
        match d {
            Decision::RollBack { failed } => {
                assert!(failed.iter().any(|c| c.name == "error_rate"), "{failed:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_slow_service_fails_the_latency_check() {
        let plan = plan(&["canary 25% 1m"]);
        let mut window = healthy(50);
        // Monolith ≤ 5 ms, service ≤ 50 ms (bound: max(2 × 5, 5 + 10) = 15 ms).
        window.service_latency = vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50];
        let found = checks(&plan.steps[0], &plan, &window, None);
        let latency = found.iter().find(|c| c.name == "latency_p99").unwrap();
        assert_eq!(
            (latency.passed, latency.figure, latency.threshold),
            (Some(false), Some(50.0), 15.0)
        );
    }

    #[test]
    fn the_cut_over_waits_for_approval_unless_it_is_off() {
        let mut plan = plan(&["100% 1s", "cutover 1s"]);
        let phase = Phase::Canary {
            basis_points: 10_000,
        };
        let at = Progress::at(1, 0);
        let (_, d) = decide(&plan, &at, phase, &[], 0, 5);
        assert_eq!(d, Decision::AwaitApproval);
        let approved = Progress {
            approved: true,
            ..at
        };
        assert_eq!(
            decide(&plan, &approved, phase, &[], 0, 5).1,
            Decision::CutOver
        );
        plan.approve_cutover = false;
        assert_eq!(decide(&plan, &at, phase, &[], 0, 5).1, Decision::CutOver);
        // Once extracted, the step is a dwell like the others.
        let (_, d) = decide(&plan, &approved, Phase::Extracted, &[], 30, 2000);
        assert_eq!(d, Decision::Done);
    }
}
