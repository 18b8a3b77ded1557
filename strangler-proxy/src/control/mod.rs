//! The control plane: carve-out phases live in a control database shared by every proxy
//! replica; changes go through [`ControlPlane::transition`], are audited, and reach every replica.
//!
//! - **Ordering**: monolith → shadow → canary → extracted → retired, and back, one step at a
//!   time (changing a canary's percent is always one step). Skipping is refused unless forced;
//!   a forced change is marked in the audit log.
//! - **Guards**: [`PhaseGuard`]s run before a change is written and can refuse it, naming why
//!   (the data-sync cut-over plugs its pre-checks in here). The built-in contract gate lets a
//!   carve-out go to `extracted` only when its latest contract verification is green; force
//!   overrides it (audited), but not guards that protect data.
//! - **Consistency**: a change is written with the version it was decided on; a concurrent
//!   change makes it fail with a conflict instead of silently overwriting.
//! - **Propagation**: the replica that made a change applies it at once; every replica also
//!   polls the database ([`ControlPlane::sync`], every 200 ms by default), so all apply a change
//!   well within a second. Applying swaps the routing snapshot: in-flight requests finish on
//!   the snapshot they started with.
//! - **Outages**: a control database that cannot be read, or (SQLite) whose file was deleted
//!   or replaced under the replica, fails the replica's readiness ([`ControlPlane::ready`]) and
//!   every admin route answers 503 until it is back; nothing is acknowledged that could be lost.
//!   The replica keeps routing with the phases it last applied. The outage is logged when it
//!   starts, every 30 s while it lasts, and when it ends, not at every poll.

pub mod admin;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::phase::Phase;
use crate::proxy::Proxy;
use store::{CarveOutState, ControlStore};

/// A check that must pass before a carve-out changes phase.
#[async_trait]
pub trait PhaseGuard: Send + Sync {
    /// `Ok` lets the change through; `Err` names what failed.
    async fn check(&self, carveout: &str, from: Phase, to: Phase) -> Result<(), String>;

    /// Whether a forced change may pass this guard when it fails (recorded in the audit log).
    /// Guards that protect data say no.
    fn forcible(&self) -> bool {
        false
    }
}

/// The contract gate: a carve-out that requires contracts goes to `extracted` only when the
/// latest contract verification reported for it (`strangler contract verify --carveout`) is
/// green: something was verified and nothing failed.
struct ContractGate {
    store: ControlStore,
    proxy: Arc<Proxy>,
}

#[async_trait]
impl PhaseGuard for ContractGate {
    async fn check(&self, carveout: &str, _from: Phase, to: Phase) -> Result<(), String> {
        if to != Phase::Extracted {
            return Ok(());
        }
        let required = self
            .proxy
            .routing()
            .carveouts()
            .iter()
            .find(|c| c.spec.name == carveout)
            .is_none_or(|c| c.spec.require_contracts);
        if !required {
            return Ok(());
        }
        let latest = self
            .store
            .verifications(carveout, 1)
            .await
            .map_err(|e| format!("cannot read the contract verifications: {e}"))?;
        match latest.first() {
            None => Err(format!(
                "no contract verification of {carveout} is on record (run `strangler contract verify --carveout {carveout} ...` against the service)"
            )),
            Some(v) if !v.passed => Err(format!(
                "the latest contract verification of {carveout} ({}, against {}) is red: {} of {} interactions failed",
                v.at, v.provider, v.failures, v.interactions
            )),
            Some(_) => Ok(()),
        }
    }

    fn forcible(&self) -> bool {
        true
    }
}

/// The longest reason a change may give, in characters.
pub const MAX_REASON: usize = 500;

/// A requested phase change.
#[derive(Debug, Clone)]
pub struct PhaseChange {
    /// The new phase.
    pub to: Phase,
    /// Who asks.
    pub actor: String,
    /// Why (required).
    pub reason: String,
    /// Override the one-step rule.
    pub force: bool,
}

/// Why a phase change was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// No such carve-out.
    #[error("no carve-out named {0}")]
    UnknownCarveOut(String),
    /// The request is incomplete (no reason, no actor).
    #[error("{0}")]
    Invalid(String),
    /// The change skips phases and was not forced.
    #[error("{carveout} cannot go from {from} to {to} in one step (monolith → shadow → canary → extracted → retired, one step at a time); pass force to override")]
    Skips {
        /// The carve-out.
        carveout: String,
        /// Its phase.
        from: Phase,
        /// The requested phase.
        to: Phase,
    },
    /// A guard refused.
    #[error("{carveout} cannot go to {to}: {reasons}")]
    Guarded {
        /// The carve-out.
        carveout: String,
        /// The requested phase.
        to: Phase,
        /// What failed, `; `-separated.
        reasons: String,
    },
    /// Another change landed first.
    #[error("{0} was changed by someone else meanwhile; read it again and retry")]
    Conflict(String),
    /// The control database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// The control plane of one replica.
#[derive(Clone)]
pub struct ControlPlane {
    store: ControlStore,
    proxy: Arc<Proxy>,
    guards: Arc<Vec<Arc<dyn PhaseGuard>>>,
    interval_ms: Arc<std::sync::atomic::AtomicU64>,
    /// When this replica last read the control database successfully (Unix ms).
    synced_at_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Seeds the store with the proxy's carve-outs and applies the stored phases.
    pub async fn start(store: ControlStore, proxy: Arc<Proxy>) -> anyhow::Result<ControlPlane> {
        let specs: Vec<_> = proxy
            .routing()
            .carveouts()
            .iter()
            .map(|c| c.spec.clone())
            .collect();
        store.seed(&specs).await?;
        let gate: Arc<dyn PhaseGuard> = Arc::new(ContractGate {
            store: store.clone(),
            proxy: proxy.clone(),
        });
        let control = ControlPlane {
            store,
            proxy,
            guards: Arc::new(vec![gate]),
            interval_ms: Arc::new(std::sync::atomic::AtomicU64::new(200)),
            synced_at_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        };
        control.sync().await?;
        Ok(control)
    }

    /// Adds a guard run before every change.
    pub fn with_guard(mut self, guard: Arc<dyn PhaseGuard>) -> Self {
        let mut guards = (*self.guards).clone();
        guards.push(guard);
        self.guards = Arc::new(guards);
        self
    }

    /// The store.
    pub fn store(&self) -> &ControlStore {
        &self.store
    }

    /// The data plane this control plane drives.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Applies a reloaded configuration: new routes and upstreams in the data plane, carve-outs
    /// new to the file seeded in the store, and the stored phases applied.
    pub async fn reload(&self, config: &crate::config::Config) -> Result<(), sqlx::Error> {
        self.proxy.reload(config);
        self.store.seed(&config.carveouts).await?;
        self.sync().await.map(|_| ())
    }

    /// Applies the stored phases to this replica's data plane; returns how many changed.
    pub async fn sync(&self) -> Result<usize, sqlx::Error> {
        // A deleted SQLite file can still be read through open connections: check it is there.
        self.store.health().await?;
        let routing = self.proxy.routing();
        let mut changed = 0;
        for state in self.store.states().await? {
            let live = routing
                .carveouts()
                .iter()
                .find(|c| c.spec.name == state.name);
            if live.is_some_and(|c| c.phase != state.phase)
                && self.proxy.set_phase(&state.name, state.phase)
            {
                tracing::info!(carveout = %state.name, phase = %state.phase, by = %state.updated_by, "applied a phase change");
                changed += 1;
            }
            // After the phase: writes a lifted fence lets go must see the new owner.
            if self.proxy.fenced(&state.name) != (state.fenced_until_ms > sqlkit::now_ms()) {
                self.proxy.set_fence(&state.name, state.fenced_until_ms);
            }
        }
        self.synced_at_ms
            .store(sqlkit::now_ms(), std::sync::atomic::Ordering::Relaxed);
        Ok(changed)
    }

    /// Whether this replica is ready to serve: the control database answers (and is the file
    /// it opened), and the replica read it within the last three polls. `Err` says why not.
    pub async fn ready(&self) -> Result<(), String> {
        self.store.health().await.map_err(|e| e.to_string())?;
        let interval = self.interval_ms.load(std::sync::atomic::Ordering::Relaxed);
        let synced = self.synced_at_ms.load(std::sync::atomic::Ordering::Relaxed);
        let age = sqlkit::now_ms() - synced;
        let bound = i64::try_from(3 * interval).unwrap_or(i64::MAX).max(1_000);
        if age > bound {
            return Err(format!(
                "this replica last read the control database {age} ms ago (more than {bound} ms)"
            ));
        }
        Ok(())
    }

    /// Holds the carve-out's writes on every replica for at most `hold` (each replica applies
    /// it at its next poll; this one at once). Returns when the fence lapses (Unix ms), or
    /// `None` for an unknown carve-out.
    pub async fn fence(&self, carveout: &str, hold: Duration) -> Result<Option<i64>, sqlx::Error> {
        let until = sqlkit::now_ms() + i64::try_from(hold.as_millis()).unwrap_or(i64::MAX / 2);
        if !self.store.fence(carveout, until).await? {
            return Ok(None);
        }
        self.proxy.set_fence(carveout, until);
        tracing::info!(
            carveout,
            hold_ms = hold.as_millis() as u64,
            "write fence up"
        );
        Ok(Some(until))
    }

    /// Lifts the carve-out's write fence; false for an unknown carve-out.
    pub async fn unfence(&self, carveout: &str) -> Result<bool, sqlx::Error> {
        let known = self.store.fence(carveout, 0).await?;
        self.proxy.set_fence(carveout, 0);
        tracing::info!(carveout, "write fence down");
        Ok(known)
    }

    /// How long every replica may take to apply a change (two polls of the slowest interval
    /// seen here; replicas are expected to share one setting).
    pub fn applies_within(&self) -> Duration {
        Duration::from_millis(2 * self.interval_ms.load(std::sync::atomic::Ordering::Relaxed) + 50)
    }

    /// Polls the store every `interval` until the task is dropped.
    pub async fn sync_forever(self, interval: Duration) {
        self.interval_ms.store(
            u64::try_from(interval.as_millis()).unwrap_or(u64::MAX / 4),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // (since when it fails, when it was last reported)
        let mut outage: Option<(std::time::Instant, std::time::Instant)> = None;
        loop {
            ticker.tick().await;
            match (self.sync().await, &mut outage) {
                (Ok(_), None) => {}
                (Ok(_), Some((since, _))) => {
                    tracing::info!(
                        lasted_ms = since.elapsed().as_millis() as u64,
                        "the control database is back"
                    );
                    outage = None;
                }
                (Err(err), None) => {
                    tracing::warn!(error = %err, "cannot read the control database; keeping the current phases, refusing admin changes");
                    let now = std::time::Instant::now();
                    outage = Some((now, now));
                }
                (Err(err), Some((since, reported))) => {
                    if reported.elapsed() >= std::time::Duration::from_secs(30) {
                        tracing::warn!(error = %err, lasted_ms = since.elapsed().as_millis() as u64, "the control database is still unavailable");
                        *reported = std::time::Instant::now();
                    }
                }
            }
        }
    }

    /// Changes a carve-out's phase: checks the ordering rule and the guards, writes the change
    /// and its audit entry, and applies it to this replica.
    pub async fn transition(
        &self,
        carveout: &str,
        change: PhaseChange,
    ) -> Result<CarveOutState, TransitionError> {
        if change.reason.trim().is_empty() {
            return Err(TransitionError::Invalid("a reason is required".to_owned()));
        }
        if change.reason.chars().count() > MAX_REASON {
            return Err(TransitionError::Invalid(format!(
                "a reason is at most {MAX_REASON} characters"
            )));
        }
        if change.actor.trim().is_empty() {
            return Err(TransitionError::Invalid("an actor is required".to_owned()));
        }
        let current = self
            .store
            .state(carveout)
            .await?
            .ok_or_else(|| TransitionError::UnknownCarveOut(carveout.to_owned()))?;
        let from = current.phase;
        let to = change.to;
        let skips = from.rank().abs_diff(to.rank()) > 1;
        if skips && !change.force {
            return Err(TransitionError::Skips {
                carveout: carveout.to_owned(),
                from,
                to,
            });
        }
        let mut failures = Vec::new();
        let mut hard = false;
        for guard in self.guards.iter() {
            if let Err(reason) = guard.check(carveout, from, to).await {
                hard |= !guard.forcible();
                failures.push(reason);
            }
        }
        if !failures.is_empty() && (hard || !change.force) {
            return Err(TransitionError::Guarded {
                carveout: carveout.to_owned(),
                to,
                reasons: failures.join("; "),
            });
        }
        // Force overrides the ordering rule and the forcible guards; the audit log says which.
        let forced = (skips || !failures.is_empty()) && change.force;
        let mut reason = change.reason.trim().to_owned();
        if !failures.is_empty() {
            reason.push_str(&format!(" [forced past: {}]", failures.join("; ")));
        }
        let state = self
            .store
            .change(&current, to, change.actor.trim(), &reason, forced)
            .await?
            .ok_or_else(|| TransitionError::Conflict(carveout.to_owned()))?;
        self.proxy.set_phase(carveout, state.phase);
        tracing::info!(carveout, from = %from, to = %to, actor = %change.actor, forced, "phase changed");
        Ok(state)
    }
}
