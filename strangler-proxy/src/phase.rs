//! Phases of a carve-out and the routing rules they imply.
//!
//! | phase | reads (GET, HEAD) | writes |
//! | --- | --- | --- |
//! | `monolith` | monolith | monolith |
//! | `shadow` | monolith, plus a copy to the service that is compared, never returned | monolith |
//! | `canary` N % | service for N % of callers (sticky), monolith for the rest; an idempotent request the service fails falls back to the monolith | monolith |
//! | `extracted` | service | service |
//! | `retired` | service | service |
//!
//! The canary split is **sticky and monotone**: a caller's key (a header, a cookie or the client
//! IP) hashes with the carve-out's name into one of 10,000 buckets, and the caller goes to the
//! service when its bucket is below the percent (in hundredths). Raising the percent only adds
//! buckets, so a caller only ever moves monolith → service while the percent rises.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Number of canary buckets: percent in hundredths.
pub const BUCKETS: u32 = 10_000;

/// A carve-out's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Everything goes to the monolith.
    Monolith,
    /// The monolith answers; reads are copied to the service and compared.
    Shadow,
    /// Reads of `basis_points` / 10,000 of the callers go to the service.
    Canary {
        /// Share of callers in hundredths of a percent (0 to 10,000).
        basis_points: u32,
    },
    /// The service answers reads and writes.
    Extracted,
    /// The service answers; the monolith no longer serves these routes.
    Retired,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The monolith.
    Monolith,
    /// The carve-out's service.
    Service,
}

impl Target {
    /// The label used in metrics and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Monolith => "monolith",
            Target::Service => "service",
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "monolith" => Ok(Target::Monolith),
            "service" => Ok(Target::Service),
            other => Err(format!("unknown target {other:?} (monolith or service)")),
        }
    }
}

/// The routing decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Who answers.
    pub target: Target,
    /// Also send a copy to the service and compare (shadow reads).
    pub shadow: bool,
    /// If the service fails this request, let the monolith answer it.
    pub fallback: bool,
}

impl Phase {
    /// The phase's name.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Monolith => "monolith",
            Phase::Shadow => "shadow",
            Phase::Canary { .. } => "canary",
            Phase::Extracted => "extracted",
            Phase::Retired => "retired",
        }
    }

    /// Position in the migration order (monolith 0 … retired 4).
    pub fn rank(&self) -> u8 {
        match self {
            Phase::Monolith => 0,
            Phase::Shadow => 1,
            Phase::Canary { .. } => 2,
            Phase::Extracted => 3,
            Phase::Retired => 4,
        }
    }

    /// Whether the service owns the carve-out's writes in this phase (`extracted`, `retired`);
    /// before, the monolith does.
    pub fn service_owns_writes(&self) -> bool {
        matches!(self, Phase::Extracted | Phase::Retired)
    }

    /// Builds a phase from its name and, for `canary`, a percent (0 to 100, 0.01 steps).
    pub fn from_parts(name: &str, percent: Option<f64>) -> Result<Phase, String> {
        let phase = match name {
            "monolith" => Phase::Monolith,
            "shadow" => Phase::Shadow,
            "canary" => {
                let percent = percent.ok_or("canary needs a percent (0 to 100)")?;
                Phase::Canary {
                    basis_points: basis_points(percent)?,
                }
            }
            "extracted" => Phase::Extracted,
            "retired" => Phase::Retired,
            other => {
                return Err(format!(
                    "unknown phase {other:?} (monolith, shadow, canary, extracted or retired)"
                ))
            }
        };
        if percent.is_some() && !matches!(phase, Phase::Canary { .. }) {
            return Err(format!("only canary takes a percent, not {name}"));
        }
        Ok(phase)
    }

    /// Decides where a request goes. `read` is true for GET and HEAD; `bucket` is the caller's
    /// canary bucket (0 to 9,999); `pinned` is an accepted override header's target.
    pub fn decide(
        &self,
        read: bool,
        bucket: u32,
        pinned: Option<Target>,
        shadow_canary: bool,
    ) -> Decision {
        let owner = match self {
            Phase::Monolith | Phase::Shadow | Phase::Canary { .. } => Target::Monolith,
            Phase::Extracted | Phase::Retired => Target::Service,
        };
        if !read {
            // Writes always go to the owner of the data; an override never moves them.
            return Decision {
                target: owner,
                shadow: false,
                fallback: false,
            };
        }
        if let Some(target) = pinned {
            return Decision {
                target,
                shadow: false,
                fallback: false,
            };
        }
        match self {
            Phase::Monolith => Decision {
                target: Target::Monolith,
                shadow: false,
                fallback: false,
            },
            Phase::Shadow => Decision {
                target: Target::Monolith,
                shadow: true,
                fallback: false,
            },
            Phase::Canary { basis_points } if bucket < *basis_points => Decision {
                target: Target::Service,
                shadow: false,
                fallback: true,
            },
            Phase::Canary { .. } => Decision {
                target: Target::Monolith,
                shadow: shadow_canary,
                fallback: false,
            },
            Phase::Extracted | Phase::Retired => Decision {
                target: Target::Service,
                shadow: false,
                fallback: false,
            },
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Canary { basis_points } => {
                write!(
                    f,
                    "canary {}.{:02}%",
                    basis_points / 100,
                    basis_points % 100
                )
            }
            other => f.write_str(other.name()),
        }
    }
}

/// A percent (0 to 100, at most two decimals) in hundredths.
pub fn basis_points(percent: f64) -> Result<u32, String> {
    if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
        return Err(format!("percent must be between 0 and 100 (got {percent})"));
    }
    let hundredths = (percent * 100.0).round();
    if (hundredths - percent * 100.0).abs() > 1e-6 {
        return Err(format!(
            "percent takes at most two decimals (got {percent})"
        ));
    }
    Ok(hundredths as u32)
}

/// The caller's bucket for a carve-out: a stable hash of both, 0 to 9,999. Stable across
/// processes and versions (xxh3 with a fixed seed), so every replica puts a caller in the
/// same bucket.
pub fn bucket(carveout: &str, caller_key: &[u8]) -> u32 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(0x5354_5241_4e47_4c45);
    hasher.update(carveout.as_bytes());
    hasher.update(&[0]);
    hasher.update(caller_key);
    (hasher.digest() % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_ownership_agrees_with_the_routing_decision() {
        for phase in [
            Phase::Monolith,
            Phase::Shadow,
            Phase::Canary {
                basis_points: 10_000,
            },
            Phase::Extracted,
            Phase::Retired,
        ] {
            let write = phase.decide(false, 0, None, false);
            assert_eq!(
                write.target == Target::Service,
                phase.service_owns_writes(),
                "{phase}"
            );
        }
    }

    #[test]
    fn phases_route_reads_and_writes() {
        let canary = Phase::Canary { basis_points: 1000 };
        for (phase, read, bucket, expected) in [
            (Phase::Monolith, true, 0, Target::Monolith),
            (Phase::Monolith, false, 0, Target::Monolith),
            (Phase::Shadow, true, 0, Target::Monolith),
            (Phase::Shadow, false, 0, Target::Monolith),
            (canary, true, 999, Target::Service),
            (canary, true, 1000, Target::Monolith),
            (canary, false, 0, Target::Monolith),
            (Phase::Extracted, true, 0, Target::Service),
            (Phase::Extracted, false, 0, Target::Service),
            (Phase::Retired, false, 0, Target::Service),
        ] {
            assert_eq!(
                phase.decide(read, bucket, None, false).target,
                expected,
                "{phase} read={read} bucket={bucket}"
            );
        }
        assert!(Phase::Shadow.decide(true, 0, None, false).shadow);
        assert!(
            !Phase::Shadow.decide(false, 0, None, false).shadow,
            "writes are never shadowed"
        );
        assert!(canary.decide(true, 0, None, false).fallback);
        assert!(canary.decide(true, 5000, None, true).shadow);
        // An override pins reads only.
        assert_eq!(
            Phase::Monolith
                .decide(true, 0, Some(Target::Service), false)
                .target,
            Target::Service
        );
        assert_eq!(
            Phase::Monolith
                .decide(false, 0, Some(Target::Service), false)
                .target,
            Target::Monolith
        );
        assert_eq!(
            Phase::Extracted
                .decide(false, 0, Some(Target::Monolith), false)
                .target,
            Target::Service
        );
    }

    #[test]
    fn percents_are_hundredths() {
        assert_eq!(basis_points(10.0), Ok(1000));
        assert_eq!(basis_points(0.01), Ok(1));
        assert_eq!(basis_points(100.0), Ok(10_000));
        assert!(basis_points(100.5).is_err());
        assert!(basis_points(-1.0).is_err());
        assert!(basis_points(1.234).is_err());
        assert!(basis_points(f64::NAN).is_err());
        assert_eq!(
            Phase::from_parts("canary", Some(12.5)).unwrap().to_string(),
            "canary 12.50%"
        );
        assert!(Phase::from_parts("canary", None).is_err());
        assert!(Phase::from_parts("shadow", Some(5.0)).is_err());
        assert!(Phase::from_parts("live", None).is_err());
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("catalog", b"user-1"), bucket("catalog", b"user-1"));
        assert_ne!(bucket("catalog", b"user-1"), bucket("orders", b"user-1"));
        let below_10_percent = (0..10_000)
            .filter(|i| bucket("catalog", format!("user-{i}").as_bytes()) < 1000)
            .count();
        assert!(
            (800..=1200).contains(&below_10_percent),
            "{below_10_percent}"
        );
    }
}
