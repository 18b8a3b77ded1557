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
//! - **Replicas acknowledge**: each replica registers in the control database
//!   ([`store::Replica`]) and, with a heartbeat at every poll, records the control epoch it has
//!   applied (every change bumps it). [`ControlPlane::await_applied`] waits until every live
//!   replica acknowledged an epoch: a fence or a flip is in force only then.
//! - **Leases**: a replica's routing view holds for `routing_lease` after its last successful
//!   read; past it, the replica answers carve-out writes 503 (reads keep going to the owner it
//!   last knew) until it reads the control database again. Another process counts a replica
//!   whose heartbeat is older than its lease (and a clock-skew margin) as gone: it cannot send
//!   a write anywhere by then.
//! - **Outages**: a control database that cannot be read, or (SQLite) whose file was deleted
//!   or replaced under the replica, fails the replica's readiness ([`ControlPlane::ready`]) and
//!   every admin route answers 503 until it is back; nothing is acknowledged that could be lost.
//!   The replica keeps routing with the phases it last applied. The outage is logged when it
//!   starts, every 30 s while it lasts, and when it ends, not at every poll.

pub mod admin;
pub mod dashboard;
pub mod mismatches;
pub mod ownership;
pub mod rollout;
pub mod status;
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
/// latest contract verification reported for it (`strangler contract verify NAME`) is
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
        if !requires_contracts(&self.proxy, carveout) {
            return Ok(());
        }
        let latest = self
            .store
            .verifications(carveout, 1)
            .await
            .map_err(|e| format!("cannot read the contract verifications: {e}"))?;
        match latest.first() {
            None => Err(format!(
                "no contract verification of {carveout} is on record (run `strangler contract verify {carveout}` against the service)"
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

/// Whether going to `extracted` needs a green contract verification (an unknown carve-out:
/// yes).
fn requires_contracts(proxy: &Proxy, carveout: &str) -> bool {
    proxy
        .routing()
        .carveouts()
        .iter()
        .find(|c| c.spec.name == carveout)
        .is_none_or(|c| c.spec.require_contracts)
}

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
    #[error("{carveout} cannot go from {from} to {to} in one step (monolith → shadow → canary → extracted → retired, one step at a time); pass --force (force in the admin API) to override")]
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
    /// The carve-out is in that phase already.
    #[error("{carveout} is {phase} already; nothing to change")]
    NoChange {
        /// The carve-out.
        carveout: String,
        /// Its phase.
        phase: Phase,
    },
    /// Another change landed first.
    #[error("{0} was changed by someone else meanwhile; read it again and retry")]
    Conflict(String),
    /// The control database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// Why waiting for acknowledgements failed.
#[derive(Debug, thiserror::Error)]
pub enum AwaitError {
    /// Live replicas did not apply it in time.
    #[error(transparent)]
    NotApplied(#[from] NotApplied),
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
    /// This replica's id in the control database.
    replica_id: Arc<str>,
    /// How it registers (again, should its row have gone).
    registration: Arc<store::Replica>,
    /// How long this replica's routing view holds without a successful read.
    lease: std::time::Duration,
}

/// Who a replica is, as it registers.
#[derive(Debug, Clone)]
pub struct ReplicaIdentity {
    /// The data plane's address.
    pub address: std::net::SocketAddr,
    /// The admin API's address.
    pub admin_address: std::net::SocketAddr,
    /// How long its routing view holds without a successful read of the control database.
    pub lease: std::time::Duration,
}

/// Replicas that did not acknowledge an epoch in time.
#[derive(Debug, thiserror::Error)]
#[error("{} replica(s) did not apply the change within {within:?}: {}", .laggards.len(), .laggards.iter().map(|r| format!("{} at {} (applied epoch {})", r.id, r.address, r.applied_epoch)).collect::<Vec<_>>().join(", "))]
pub struct NotApplied {
    /// The replicas that are live but behind.
    pub laggards: Vec<store::Replica>,
    /// How long it waited.
    pub within: Duration,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Seeds the store with the proxy's carve-outs, registers this replica and applies the
    /// stored phases.
    pub async fn start(
        store: ControlStore,
        proxy: Arc<Proxy>,
        identity: &ReplicaIdentity,
    ) -> anyhow::Result<ControlPlane> {
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
            replica_id: Arc::from(format!(
                "{}-{:08x}",
                identity.address,
                rand::random::<u32>()
            )),
            lease: identity.lease,
            registration: Arc::new(store::Replica {
                id: String::new(),
                address: identity.address.to_string(),
                admin_address: identity.admin_address.to_string(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: sqlkit::now(),
                heartbeat_ms: 0,
                lease_ms: i64::try_from(identity.lease.as_millis()).unwrap_or(i64::MAX),
                applied_epoch: 0,
            }),
        };
        control.register(0).await?;
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
        // Read before the states: what is applied below covers at least this epoch.
        let epoch = self.store.epoch().await?;
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
        match self.store.heartbeat(&self.replica_id, epoch).await {
            Err(sqlx::Error::RowNotFound) => self.register(epoch).await?,
            other => other?,
        }
        self.proxy.renew_view(self.lease);
        self.synced_at_ms
            .store(sqlkit::now_ms(), std::sync::atomic::Ordering::Relaxed);
        Ok(changed)
    }

    /// Applies and acknowledges everything stored at once, after a change this replica made
    /// (its poll would do it within an interval; a failure here is left to the poll).
    async fn acknowledge(&self) {
        if let Err(err) = self.sync().await {
            tracing::debug!(error = %err, "could not acknowledge a change at once; the next poll will");
        }
    }

    async fn register(&self, applied_epoch: i64) -> Result<(), sqlx::Error> {
        self.store
            .register(&store::Replica {
                id: self.replica_id.to_string(),
                heartbeat_ms: sqlkit::now_ms(),
                applied_epoch,
                ..(*self.registration).clone()
            })
            .await
    }

    /// This replica's id in the control database.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Leaves the control database's list of replicas (a clean stop).
    pub async fn deregister(&self) -> Result<(), sqlx::Error> {
        self.store.deregister(&self.replica_id).await
    }

    /// The current control epoch, after applying everything stored to this replica.
    pub async fn epoch(&self) -> Result<i64, sqlx::Error> {
        self.sync().await?;
        self.store.epoch().await
    }

    /// Waits until every live replica has applied `epoch` (this one applies at once), polling
    /// the control database; gives up after `within`, naming the replicas that did not.
    /// Replicas whose heartbeat is older than their lease are not waited for: they forward no
    /// carve-out write until they have read the control database again.
    pub async fn await_applied(
        &self,
        epoch: i64,
        within: Duration,
    ) -> Result<Vec<store::Replica>, AwaitError> {
        let start = std::time::Instant::now();
        self.sync().await?;
        loop {
            let now = sqlkit::now_ms();
            let replicas = self.store.replicas().await?;
            let laggards: Vec<store::Replica> = replicas
                .iter()
                .filter(|r| r.live(now) && r.applied_epoch < epoch)
                .cloned()
                .collect();
            if laggards.is_empty() {
                return Ok(replicas.into_iter().filter(|r| r.live(now)).collect());
            }
            if start.elapsed() >= within {
                return Err(AwaitError::NotApplied(NotApplied { laggards, within }));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
        self.acknowledge().await;
        Ok(Some(until))
    }

    /// Lifts the carve-out's write fence; false for an unknown carve-out.
    pub async fn unfence(&self, carveout: &str) -> Result<bool, sqlx::Error> {
        let known = self.store.fence(carveout, 0).await?;
        self.proxy.set_fence(carveout, 0);
        tracing::info!(carveout, "write fence down");
        self.acknowledge().await;
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
        // On PostgreSQL a change is pushed (LISTEN/NOTIFY) and applied at once; the poll stays,
        // for a missed notification and on SQLite.
        let mut listener = match self.store.listener().await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for control changes; polling only");
                None
            }
        };
        // (since when it fails, when it was last reported)
        let mut outage: Option<(std::time::Instant, std::time::Instant)> = None;
        loop {
            let notified = async {
                match listener.as_mut() {
                    // A lost connection is re-established by the next recv; the poll covers
                    // what was missed meanwhile.
                    Some(listener) => listener.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => {}
                pushed = notified => {
                    if let Err(err) = pushed {
                        tracing::debug!(error = %err, "the control change listener failed; it reconnects");
                        tokio::time::sleep(interval).await;
                    }
                }
            }
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
    /// and its audit entry, and applies it to this replica. A change that would move the writes
    /// of a carve-out with a data sync is refused: those move only by
    /// [`ControlPlane::move_writes`].
    pub async fn transition(
        &self,
        carveout: &str,
        change: PhaseChange,
    ) -> Result<CarveOutState, TransitionError> {
        self.change_phase(carveout, change, false).await
    }

    /// [`ControlPlane::transition`]; `by_procedure`: the guarded move of writes is the caller.
    async fn change_phase(
        &self,
        carveout: &str,
        change: PhaseChange,
        by_procedure: bool,
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
        if from == to {
            return Err(TransitionError::NoChange {
                carveout: carveout.to_owned(),
                phase: from,
            });
        }
        let skips = from.rank().abs_diff(to.rank()) > 1;
        if skips && !change.force {
            return Err(TransitionError::Skips {
                carveout: carveout.to_owned(),
                from,
                to,
            });
        }
        let synced = self
            .proxy
            .routing()
            .carveouts()
            .iter()
            .any(|c| c.spec.name == carveout && c.spec.sync.is_some());
        if from == Phase::Retired && to != Phase::Retired && !change.force {
            return Err(TransitionError::Guarded {
                carveout: carveout.to_owned(),
                to,
                reasons: format!(
                    "{carveout} is retired; leaving it takes --force (audited){}",
                    if synced {
                        ", and its sync must be installed again first"
                    } else {
                        ""
                    }
                ),
            });
        }
        if synced && !by_procedure && to == Phase::Retired {
            return Err(TransitionError::Guarded {
                carveout: carveout.to_owned(),
                to,
                reasons: format!(
                    "{carveout} has a data sync, so it is retired only by `strangler retire {carveout} --reason ...` (after its dwell in extracted; it drains and removes the reverse sync)"
                ),
            });
        }
        if synced && !by_procedure && ownership::moves_writes(from, to) {
            let command = if to.service_owns_writes() {
                "cutover"
            } else {
                "rollback"
            };
            return Err(TransitionError::Guarded {
                carveout: carveout.to_owned(),
                to,
                reasons: format!(
                    "{carveout} has a data sync, so its writes move only by the guarded procedure: `strangler {command} {carveout} --reason ...` (force does not pass this)"
                ),
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
        // Force overrides the ordering rule, leaving `retired` and the forcible guards; the
        // audit log says which.
        let leaves_retired = from == Phase::Retired && to != Phase::Retired;
        let forced = (skips || leaves_retired || !failures.is_empty()) && change.force;
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
        self.acknowledge().await;
        Ok(state)
    }
}
