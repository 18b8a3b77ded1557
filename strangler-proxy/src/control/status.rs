//! One view of a carve-out: its phase and fence, the traffic this replica saw on each side,
//! shadow comparisons, its data sync (direction, capture, relay, lag, parked keys), its latest
//! contract verification, and the replicas sharing the control database.

use serde::{Deserialize, Serialize};
use strangler_sync::sides::Direction;
use strangler_sync::{capture, parked, verify};

use super::ControlPlane;
use crate::metrics::Traffic;

/// A carve-out's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The carve-out.
    pub name: String,
    /// Its phase (`canary 10.00%` style).
    pub phase: String,
    /// When its writes are held until (RFC 3339), while a fence is up.
    pub fenced_until: Option<String>,
    /// What this replica counted since it started (each replica counts its own).
    pub traffic: Traffic,
    /// Its data sync, when it has one configured.
    pub sync: Option<SyncStatus>,
    /// The latest contract verification: when, green or red, failures of interactions.
    pub contracts: Option<ContractStatus>,
    /// Replicas whose lease holds, of those registered.
    pub replicas: (usize, usize),
    /// Its rollout, if it has one.
    pub rollout: Option<RolloutBrief>,
}

/// The rollout part of a status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutBrief {
    /// running, paused, awaiting_approval, halted, done or aborted.
    pub state: super::rollout::RolloutState,
    /// The current step (1-based) and how many there are.
    pub step: (usize, usize),
    /// The current step as text.
    pub step_text: String,
    /// How much longer it must stay clean (ms).
    pub time_left_ms: i64,
    /// Checks that failed in the latest interval.
    pub failing: Vec<String>,
}

/// The data sync part of a status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The direction that runs in this phase (`forward` while the monolith owns the writes).
    pub direction: String,
    /// Whether that direction's capture is installed.
    pub capture_installed: bool,
    /// Whether a relay holds that direction's lease.
    pub relay_running: bool,
    /// Changes not applied yet, and the age of the oldest in seconds.
    pub lag: (i64, f64),
    /// Keys whose change the target refused.
    pub parked: usize,
    /// The latest verify of that direction (by `strangler sync verify`, a repair, or a move's
    /// guards), if any.
    pub last_verify: Option<strangler_sync::verify::LastVerify>,
    /// What could not be read, if anything (the rest is then partial).
    pub error: Option<String>,
}

/// The contracts part of a status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContractStatus {
    /// When it was reported.
    pub at: String,
    /// Green: something verified, nothing failed.
    pub passed: bool,
    /// Failed interactions.
    pub failures: i64,
    /// Verified interactions.
    pub interactions: i64,
}

impl ControlPlane {
    /// The status of `carveout`; `None` for an unknown one.
    pub async fn status(&self, carveout: &str) -> Result<Option<Status>, sqlx::Error> {
        let routing = self.proxy.routing();
        let Some(live) = routing.carveouts().iter().find(|c| c.spec.name == carveout) else {
            return Ok(None);
        };
        let Some(state) = self.store.state(carveout).await? else {
            return Ok(None);
        };
        let fenced_until = (state.fenced_until_ms > sqlkit::now_ms()).then(|| {
            time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(state.fenced_until_ms) * 1_000_000,
            )
            .map(sqlkit::timestamp)
            .unwrap_or_default()
        });
        let contracts = self
            .store
            .verifications(carveout, 1)
            .await?
            .into_iter()
            .next()
            .map(|v| ContractStatus {
                at: v.at,
                passed: v.passed,
                failures: v.failures,
                interactions: v.interactions,
            });
        let now = sqlkit::now_ms();
        let replicas = self.store.replicas().await?;
        let live_replicas = replicas.iter().filter(|r| r.live(now)).count();
        let sync = match &live.spec.sync {
            None => None,
            Some(spec) => {
                let direction = if state.phase.service_owns_writes() {
                    Direction::Reverse
                } else {
                    Direction::Forward
                };
                Some(sync_status(spec, direction).await)
            }
        };
        let rollout = self.rollout_view(carveout).await?.map(|r| RolloutBrief {
            state: r.state,
            step: (r.step + 1, r.steps.len()),
            step_text: r.steps.get(r.step).cloned().unwrap_or_default(),
            time_left_ms: r.time_left_ms,
            failing: r
                .checks
                .iter()
                .filter(|c| c.passed == Some(false))
                .map(|c| c.name.clone())
                .collect(),
        });
        Ok(Some(Status {
            rollout,
            name: carveout.to_owned(),
            phase: state.phase.to_string(),
            fenced_until,
            traffic: live.traffic(),
            sync,
            contracts,
            replicas: (live_replicas, replicas.len()),
        }))
    }
}

async fn sync_status(spec: &crate::config::SyncSpec, direction: Direction) -> SyncStatus {
    let mut status = SyncStatus {
        direction: direction.name().to_owned(),
        capture_installed: false,
        relay_running: false,
        lag: (0, 0.0),
        parked: 0,
        last_verify: None,
        error: None,
    };
    let read = async {
        let sides = spec.setup.open(direction).await?;
        status.capture_installed = capture::installed(&sides.source, &sides.mapping).await?;
        status.parked = parked::list(&sides.target, Some(&sides.stream()))
            .await?
            .len();
        status.last_verify = verify::last(&sides.target, &sides.stream()).await?;
        let relay = sides.relay().await?;
        status.relay_running = relay.lease_held_by_another().await?;
        if status.capture_installed {
            let (events, age) = relay.lag().await?;
            status.lag = (events, age.as_secs_f64());
        }
        anyhow::Ok(())
    };
    if let Err(err) = read.await {
        status.error = Some(format!("{err:#}"));
    }
    status
}
