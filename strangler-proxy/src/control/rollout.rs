//! Automatic rollouts, the effects of [`crate::rollout`]'s decisions, inside the proxy
//! replicas (no process of its own to deploy):
//!
//! - **Measurements, cluster-wide.** Every replica writes what it counted of each carve-out
//!   into the control database every [`FLUSH_EVERY`] (one row per replica and flush, only when
//!   something was counted). The controller sums every replica's rows for its interval.
//! - **One controller.** Every replica tries to take the controller's lease at each flush; the
//!   holder runs the rollouts. When it dies, its lease lapses after [`CONTROLLER_LEASE_MS`]
//!   and another replica takes over, continuing each rollout from its stored step and from the
//!   measurements after the last interval it counted.
//! - **Effects.** A promotion is a phase change (audited, actor `rollout`); a roll-back is a
//!   forced phase change to the plan's safe phase, after the guarded roll-back of the writes
//!   if they had moved; the cut-over step is the guarded cut-over. Each is in the audit log with
//!   the figures that decided it, and in the rollout's history.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ownership::{Move, MoveRequest};
use super::store::RolloutRow;
use super::{ControlPlane, PhaseChange, TransitionError, MAX_REASON};
use strangler_sync::capture;
use strangler_sync::relay::Relay;
use strangler_sync::sides::Direction;

use crate::analysis::Counts;
use crate::phase::Phase;
use crate::rollout::{checks, decide, Check, Decision, Plan, Progress, Step};

/// How often each replica writes its measurements (and the controller looks at its rollouts).
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How far behind now the controller reads, so every replica's latest flush is in.
const FLUSH_LAG_MS: i64 = 300;
/// How long the controller's lease holds without renewal.
pub const CONTROLLER_LEASE_MS: i64 = 3_000;
/// Where the measurements of a step (or a rollout) that begins at `now_ms` start: after the
/// next flush of every replica, whose window may still hold traffic from before (the previous
/// step's, or a failing service's before a restart).
fn fresh_from(now_ms: i64) -> i64 {
    now_ms + i64::try_from(FLUSH_EVERY.as_millis()).unwrap_or(0) + 50
}

/// How long measurements are kept.
const WINDOWS_KEPT_MS: i64 = 10 * 60 * 1000;
/// The lease's name.
const CONTROLLER: &str = "rollout-controller";
/// The actor of the controller's changes in the audit log.
pub const ACTOR: &str = "rollout";

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Measured and moved at every interval.
    Running,
    /// Held by an operator: neither promoted nor rolled back.
    Paused,
    /// At its cut-over step, waiting for `strangler rollout approve`.
    AwaitingApproval,
    /// Checks failed: on its way back to the safe phase (then halted). A controller that takes
    /// over finishes it.
    RollingBack,
    /// Rolled back (or its cut-over refused); stays so until resumed or started again.
    Halted,
    /// Every step passed.
    Done,
    /// Stopped by an operator, the carve-out back in the safe phase.
    Aborted,
}

impl RolloutState {
    fn name(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::AwaitingApproval => "awaiting_approval",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::Halted => "halted",
            RolloutState::Done => "done",
            RolloutState::Aborted => "aborted",
        }
    }

    fn parse(text: &str) -> Option<RolloutState> {
        [
            RolloutState::Running,
            RolloutState::Paused,
            RolloutState::AwaitingApproval,
            RolloutState::RollingBack,
            RolloutState::Halted,
            RolloutState::Done,
            RolloutState::Aborted,
        ]
        .into_iter()
        .find(|s| s.name() == text)
    }

    /// Whether it still has something to do (a new one cannot start meanwhile).
    fn active(self) -> bool {
        matches!(
            self,
            RolloutState::Running
                | RolloutState::Paused
                | RolloutState::AwaitingApproval
                | RolloutState::RollingBack
        )
    }
}

/// One event of a rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When (RFC 3339).
    pub at: String,
    /// What happened.
    pub event: String,
}

/// A rollout as the admin API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    /// The carve-out.
    pub carveout: String,
    /// Where it is.
    pub state: RolloutState,
    /// The steps, as text.
    pub steps: Vec<String>,
    /// The current step (index into `steps`).
    pub step: usize,
    /// How much longer the step must stay clean (ms; 0 once the dwell is over).
    pub time_left_ms: i64,
    /// Samples seen while clean, and how many the step needs.
    pub samples: (u64, u64),
    /// Failed intervals in the step, and how many it tolerates.
    pub failures: (u32, u32),
    /// The analysis interval (ms).
    pub interval_ms: u64,
    /// The latest interval's checks, with figures and thresholds.
    pub checks: Vec<Check>,
    /// What happened, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The replica running the controller, if one holds its lease.
    pub controller: Option<String>,
    /// The plan.
    pub plan: Plan,
}

/// What an operator does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Hold it where it is.
    Pause,
    /// Go on (a halted one from the step it failed, its dwell from the start).
    Resume,
    /// Stop it and put the carve-out in the safe phase.
    Abort,
    /// Let its cut-over step move the writes.
    Approve,
}

/// Why a rollout command was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No such carve-out.
    #[error("no carve-out named {0}")]
    UnknownCarveOut(String),
    /// Nothing to act on.
    #[error("{0} has no rollout; start one with `strangler rollout start {0}`")]
    NoRollout(String),
    /// No plan in the configuration nor in the request.
    #[error("{0} has no rollout plan: give the carve-out a `rollout` section in the configuration, or send a plan")]
    NoPlan(String),
    /// Not possible in its state.
    #[error("{0}")]
    State(String),
    /// The plan is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A phase change it needed was refused.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The control database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// The relays the controller reads each synced carve-out's lag from, by carve-out, with the
/// direction each reads.
#[derive(Default)]
struct LagReaders(HashMap<String, (Direction, Relay)>);

/// A rollout record, decoded.
#[derive(Debug, Clone)]
struct Rollout {
    carveout: String,
    state: RolloutState,
    plan: Plan,
    progress: Progress,
    evaluated_to_ms: i64,
    last_checks: Vec<Check>,
    history: Vec<HistoryEntry>,
    /// The stored version it was read at (0: not stored yet).
    version: i64,
}

/// At most this many history entries are kept (the oldest go).
const HISTORY_KEPT: usize = 200;

fn corrupt(what: &str, err: &serde_json::Error) -> sqlx::Error {
    sqlx::Error::Decode(format!("a stored rollout's {what} cannot be read: {err}").into())
}

impl Rollout {
    fn decode(row: &RolloutRow) -> Result<Rollout, sqlx::Error> {
        Ok(Rollout {
            carveout: row.carveout.clone(),
            state: RolloutState::parse(&row.state).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown rollout state {:?}", row.state).into())
            })?,
            plan: serde_json::from_str(&row.plan).map_err(|e| corrupt("plan", &e))?,
            progress: serde_json::from_str(&row.progress).map_err(|e| corrupt("progress", &e))?,
            evaluated_to_ms: row.evaluated_to_ms,
            last_checks: serde_json::from_str(&row.last_checks)
                .map_err(|e| corrupt("checks", &e))?,
            history: serde_json::from_str(&row.history).map_err(|e| corrupt("history", &e))?,
            version: row.version,
        })
    }

    fn encode(&self) -> RolloutRow {
        RolloutRow {
            carveout: self.carveout.clone(),
            state: self.state.name().to_owned(),
            plan: json(&self.plan),
            progress: json(&self.progress),
            evaluated_to_ms: self.evaluated_to_ms,
            last_checks: json(&self.last_checks),
            history: json(&self.history),
            updated_at: String::new(),
            version: self.version,
        }
    }

    fn event(&mut self, event: String) {
        tracing::info!(carveout = %self.carveout, "rollout: {event}");
        self.history.push(HistoryEntry {
            at: sqlkit::now(),
            event,
        });
        if self.history.len() > HISTORY_KEPT {
            let extra = self.history.len() - HISTORY_KEPT;
            self.history.drain(..extra);
        }
    }

    /// The history event of a controller finishing the current step's lost phase change.
    fn takeover_event(&self, step: &Step) -> String {
        format!(
            "step {} ({step}) entered by the controller that took over",
            self.progress.step + 1
        )
    }

    /// Whether the current step's phase change may have been lost and may be made now (if the
    /// rollout set `phase` last): `phase` is the previous step's, neither step is a cut-over,
    /// and no controller tried already. A change that failed once is not tried every
    /// interval: the rollout halts instead.
    fn may_finish_lost_change(&self, phase: Phase) -> bool {
        let Some(step) = self.step() else {
            return false;
        };
        let previous = self
            .progress
            .step
            .checked_sub(1)
            .and_then(|i| self.plan.steps.get(i));
        let resumable = !matches!(step, Step::CutOver { .. })
            && previous.is_some_and(|p| !matches!(p, Step::CutOver { .. }) && p.phase() == phase);
        let tried = self
            .history
            .last()
            .is_some_and(|entry| entry.event == self.takeover_event(step));
        resumable && !tried
    }

    fn step(&self) -> Option<&Step> {
        self.plan.steps.get(self.progress.step)
    }

    /// Whether the carve-out's `phase` is its step's: for a cut-over step, the previous
    /// (canary) step's before the move, `extracted` after it.
    fn in_step_phase(&self, phase: Phase) -> bool {
        match self.step() {
            None => true,
            Some(Step::CutOver { .. }) => {
                phase == Phase::Extracted
                    || self
                        .progress
                        .step
                        .checked_sub(1)
                        .and_then(|i| self.plan.steps.get(i))
                        .is_some_and(|s| s.phase() == phase)
            }
            Some(step) => phase == step.phase(),
        }
    }

    fn view(&self, controller: Option<String>, now_ms: i64) -> RolloutView {
        let dwell = self
            .step()
            .map(|s| i64::try_from(s.dwell().as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        RolloutView {
            carveout: self.carveout.clone(),
            state: self.state,
            steps: self.plan.steps.iter().map(ToString::to_string).collect(),
            step: self.progress.step,
            time_left_ms: (dwell - (now_ms - self.progress.clean_since_ms)).max(0),
            samples: (self.progress.samples, self.plan.min_requests),
            failures: (self.progress.failures, self.plan.failure_limit),
            interval_ms: self.plan.interval_ms,
            checks: self.last_checks.clone(),
            history: self.history.clone(),
            controller,
            plan: self.plan.clone(),
        }
    }
}

/// A record's part as JSON (these types always serialise).
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// `text` cut to the audit log's bound.
fn bounded(text: String) -> String {
    if text.chars().count() <= MAX_REASON {
        text
    } else {
        let mut cut: String = text.chars().take(MAX_REASON - 1).collect();
        cut.push('…');
        cut
    }
}

fn failed_text(failed: &[Check]) -> String {
    failed
        .iter()
        .map(|c| format!("{} check failed: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ControlPlane {
    fn rollout_plan(&self, carveout: &str) -> Option<Option<Plan>> {
        self.proxy
            .routing()
            .carveouts()
            .iter()
            .find(|c| c.spec.name == carveout)
            .map(|c| c.spec.rollout.clone())
    }

    async fn load_rollout(&self, carveout: &str) -> Result<Option<Rollout>, sqlx::Error> {
        self.store
            .rollout(carveout)
            .await?
            .as_ref()
            .map(Rollout::decode)
            .transpose()
    }

    async fn controller(&self) -> Result<Option<String>, sqlx::Error> {
        Ok(self
            .store
            .lease(CONTROLLER)
            .await?
            .filter(|(_, until)| *until >= sqlkit::now_ms())
            .map(|(holder, _)| holder))
    }

    /// The rollout of `carveout`, if it has one (`None` for an unknown carve-out too).
    pub async fn rollout_view(&self, carveout: &str) -> Result<Option<RolloutView>, sqlx::Error> {
        let Some(rollout) = self.load_rollout(carveout).await? else {
            return Ok(None);
        };
        Ok(Some(
            rollout.view(self.controller().await?, sqlkit::now_ms()),
        ))
    }

    /// Starts a rollout of `carveout` with `plan` (default: its configuration's), from its
    /// first step: the carve-out goes to that step's phase now.
    pub async fn start_rollout(
        &self,
        carveout: &str,
        plan: Option<Plan>,
        actor: &str,
    ) -> Result<RolloutView, RolloutError> {
        let configured = self
            .rollout_plan(carveout)
            .ok_or_else(|| RolloutError::UnknownCarveOut(carveout.to_owned()))?;
        let plan = plan
            .or(configured)
            .ok_or_else(|| RolloutError::NoPlan(carveout.to_owned()))?;
        let existing = self.load_rollout(carveout).await?;
        if let Some(existing) = &existing {
            if existing.state.active() {
                return Err(RolloutError::State(format!(
                    "{carveout} has a rollout {} at step {} already; abort it first",
                    existing.state.name(),
                    existing.progress.step + 1
                )));
            }
        }
        let first = plan.steps[0];
        if matches!(first, Step::CutOver { .. }) {
            return Err(RolloutError::Invalid(
                "a rollout cannot start with its cut-over".to_owned(),
            ));
        }
        let now = sqlkit::now_ms();
        self.enter_step(
            carveout,
            first.phase(),
            &format!("rollout started by {actor}: step 1 ({first})"),
            false,
        )
        .await?;
        let mut rollout = Rollout {
            carveout: carveout.to_owned(),
            state: RolloutState::Running,
            plan,
            progress: Progress::at(0, now),
            evaluated_to_ms: fresh_from(now),
            last_checks: Vec::new(),
            history: Vec::new(),
            version: existing.map_or(0, |e| e.version),
        };
        rollout.event(format!("started by {actor} at step 1 ({first})"));
        if !self.save(&mut rollout).await? {
            return Err(RolloutError::State(format!(
                "another rollout of {carveout} was started meanwhile"
            )));
        }
        Ok(rollout.view(self.controller().await?, now))
    }

    /// Pauses, resumes, aborts or approves the rollout of `carveout`. The record is written
    /// first (over the version read, again if the controller wrote meanwhile), then the
    /// carve-out's phase follows: an abort puts it in the safe phase, resuming a halted rollout
    /// in the step's phase.
    pub async fn rollout_action(
        &self,
        carveout: &str,
        action: Action,
        actor: &str,
        reason: &str,
    ) -> Result<RolloutView, RolloutError> {
        let said = if reason.trim().is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        let refuse = |what: &str, state: RolloutState| {
            RolloutError::State(format!(
                "cannot {what} the rollout of {carveout}: it is {}",
                state.name()
            ))
        };
        for _ in 0..5 {
            let mut rollout = self
                .load_rollout(carveout)
                .await?
                .ok_or_else(|| RolloutError::NoRollout(carveout.to_owned()))?;
            let now = sqlkit::now_ms();
            // What the phase must become once the record is written.
            let mut then: Option<(Phase, String, bool)> = None;
            match action {
                Action::Pause => {
                    if !matches!(
                        rollout.state,
                        RolloutState::Running | RolloutState::AwaitingApproval
                    ) {
                        return Err(refuse("pause", rollout.state));
                    }
                    rollout.state = RolloutState::Paused;
                    rollout.event(format!("paused by {actor}{said}"));
                }
                Action::Resume => {
                    if !matches!(rollout.state, RolloutState::Paused | RolloutState::Halted) {
                        return Err(refuse("resume", rollout.state));
                    }
                    if rollout.state == RolloutState::Halted {
                        // Back to the step that failed, its dwell from the start.
                        if let Some(step) = rollout.step().copied() {
                            if !matches!(step, Step::CutOver { .. }) {
                                then = Some((
                                    step.phase(),
                                    format!(
                                        "rollout resumed by {actor}: step {} ({step}){said}",
                                        rollout.progress.step + 1
                                    ),
                                    true,
                                ));
                            }
                        }
                    }
                    rollout.progress = Progress {
                        approved: rollout.progress.approved,
                        ..Progress::at(rollout.progress.step, now)
                    };
                    rollout.evaluated_to_ms = fresh_from(now);
                    rollout.state = RolloutState::Running;
                    rollout.event(format!("resumed by {actor}{said}"));
                }
                Action::Abort => {
                    if !rollout.state.active() {
                        return Err(refuse("abort", rollout.state));
                    }
                    rollout.state = RolloutState::Aborted;
                    rollout.event(format!(
                        "aborted by {actor}{said}; {carveout} goes back to {}",
                        rollout.plan.safe_phase
                    ));
                }
                Action::Approve => {
                    let at_cut_over = matches!(rollout.step(), Some(Step::CutOver { .. }));
                    if !at_cut_over || !rollout.state.active() {
                        return Err(RolloutError::State(format!(
                            "nothing to approve: the rollout of {carveout} is {} at step {}, not waiting at its cut-over",
                            rollout.state.name(),
                            rollout.progress.step + 1
                        )));
                    }
                    rollout.progress.approved = true;
                    if rollout.state == RolloutState::AwaitingApproval {
                        rollout.state = RolloutState::Running;
                    }
                    rollout.event(format!("cut-over approved by {actor}{said}"));
                }
            }
            if !self.save(&mut rollout).await? {
                continue;
            }
            if action == Action::Abort {
                let reason = bounded(format!("rollout aborted by {actor}{said}"));
                self.to_safe_phase(carveout, &rollout.plan, &reason).await?;
            }
            if let Some((phase, reason, force)) = then {
                self.enter_step(carveout, phase, &reason, force).await?;
            }
            return Ok(rollout.view(self.controller().await?, now));
        }
        Err(RolloutError::State(format!(
            "the rollout of {carveout} kept changing under this request; try again"
        )))
    }

    /// Writes the rollout's record over the version it was read at; false (nothing written)
    /// when it changed meanwhile.
    async fn save(&self, rollout: &mut Rollout) -> Result<bool, sqlx::Error> {
        let written = self.store.put_rollout(&rollout.encode()).await?;
        if written {
            rollout.version += 1;
        }
        Ok(written)
    }
    /// Puts the carve-out in `phase` (a rollout step's) unless it is there already; `force`:
    /// even when that skips phases (an operator resuming a halted rollout at its step).
    async fn enter_step(
        &self,
        carveout: &str,
        phase: Phase,
        reason: &str,
        force: bool,
    ) -> Result<(), TransitionError> {
        let current = self
            .store
            .state(carveout)
            .await?
            .ok_or_else(|| TransitionError::UnknownCarveOut(carveout.to_owned()))?;
        if current.phase == phase {
            return Ok(());
        }
        self.transition(
            carveout,
            PhaseChange {
                to: phase,
                actor: ACTOR.to_owned(),
                reason: bounded(reason.to_owned()),
                force,
            },
        )
        .await
        .map(|_| ())
    }

    /// Back to the plan's safe phase: the guarded roll-back first if the writes had moved,
    /// then a forced phase change (audited with `reason`).
    async fn to_safe_phase(
        &self,
        carveout: &str,
        plan: &Plan,
        reason: &str,
    ) -> Result<(), RolloutError> {
        let current = self
            .store
            .state(carveout)
            .await?
            .ok_or_else(|| RolloutError::UnknownCarveOut(carveout.to_owned()))?;
        if current.phase == Phase::Extracted {
            let request = MoveRequest {
                actor: ACTOR.to_owned(),
                reason: bounded(reason.to_owned()),
                force: false,
            };
            self.run_move(
                carveout,
                Move::RollBack(Phase::Canary { basis_points: 0 }),
                request,
            )
            .await
            .map_err(|e| RolloutError::State(format!("the guarded roll-back failed: {e}")))?;
        }
        let current = self
            .store
            .state(carveout)
            .await?
            .ok_or_else(|| RolloutError::UnknownCarveOut(carveout.to_owned()))?;
        if current.phase == plan.safe_phase {
            return Ok(());
        }
        self.transition(
            carveout,
            PhaseChange {
                to: plan.safe_phase,
                actor: ACTOR.to_owned(),
                reason: bounded(reason.to_owned()),
                force: true,
            },
        )
        .await?;
        Ok(())
    }

    /// Writes what this replica counted of each carve-out since `last` (updated), and the
    /// shadow mismatches it found.
    async fn flush_windows(&self, last: &mut HashMap<String, Counts>) -> Result<(), sqlx::Error> {
        let now = sqlkit::now_ms();
        let routing = self.proxy.routing();
        let mut compared = Vec::new();
        for carveout in routing.carveouts() {
            let counts = carveout.counts();
            let name = &carveout.spec.name;
            let delta = match last.get(name) {
                Some(before) => counts.since(before),
                None => {
                    // The first look: a baseline, nothing to write.
                    last.insert(name.clone(), counts);
                    continue;
                }
            };
            if delta.shadow_compared > 0 {
                compared.push((name.clone(), delta.shadow_compared, delta.shadow_mismatched));
            }
            if !delta.is_empty() {
                let text = serde_json::to_string(&delta).unwrap_or_default();
                self.store
                    .add_window(&self.replica_id, name, now, &text)
                    .await?;
            }
            last.insert(name.clone(), counts);
        }
        self.flush_mismatches(&compared).await
    }

    /// The sum of every replica's measurements of `carveout` flushed in `[from, to)`.
    async fn measured(&self, carveout: &str, from: i64, to: i64) -> Result<Counts, sqlx::Error> {
        let mut sum = Counts::default();
        for text in self.store.windows(carveout, from, to).await? {
            match serde_json::from_str::<Counts>(&text) {
                Ok(counts) => sum.add(&counts),
                Err(err) => {
                    tracing::warn!(carveout, error = %err, "skipping an unreadable measurement window")
                }
            }
        }
        Ok(sum)
    }

    /// Flushes this replica's measurements every [`FLUSH_EVERY`] and, while it holds the
    /// controller's lease, runs every rollout that is due. Runs until the task is dropped.
    pub async fn rollouts_forever(self) {
        let mut ticker = tokio::time::interval(FLUSH_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = HashMap::new();
        let mut readers = LagReaders::default();
        let mut pruned_at = 0;
        loop {
            ticker.tick().await;
            if let Err(err) = self.flush_windows(&mut last).await {
                // The control loop reports outages; this only says what it cost.
                tracing::debug!(error = %err, "cannot write this replica's measurements");
                continue;
            }
            let now = sqlkit::now_ms();
            match self
                .store
                .take_lease(CONTROLLER, &self.replica_id, now, now + CONTROLLER_LEASE_MS)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot take the rollout controller's lease");
                    continue;
                }
            }
            if now - pruned_at > 60_000 {
                pruned_at = now;
                if let Err(err) = self.store.prune_windows(now - WINDOWS_KEPT_MS).await {
                    tracing::debug!(error = %err, "cannot prune old measurements");
                }
            }
            match self
                .store
                .rollouts_in(&[
                    RolloutState::Running.name(),
                    RolloutState::AwaitingApproval.name(),
                    RolloutState::RollingBack.name(),
                ])
                .await
            {
                Ok(rows) => {
                    for row in rows {
                        if let Err(err) = self.advance(&row, now, &mut readers).await {
                            tracing::warn!(carveout = %row.carveout, error = %err, "the rollout step failed; it is tried again at the next interval");
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot read the rollouts"),
            }
        }
    }

    /// One interval of one rollout, when it is due. The decision is written first (over the
    /// version read: an operator's pause or abort meanwhile wins, and nothing is done); its
    /// effect on the phase follows ([`ControlPlane::apply`]). A phase that is not the step's
    /// (changed by hand, or a step's change that failed) halts the rollout instead of being
    /// fought over.
    async fn advance(
        &self,
        row: &RolloutRow,
        now: i64,
        readers: &mut LagReaders,
    ) -> Result<(), RolloutError> {
        let mut rollout = Rollout::decode(row)?;
        if rollout.state == RolloutState::RollingBack {
            // Its controller died half-way: finish going back.
            let reason = bounded(format!(
                "rollout roll-back finished by another controller at step {}",
                rollout.progress.step + 1
            ));
            return self.finish_roll_back(rollout, &reason).await;
        }
        let to = now - FLUSH_LAG_MS;
        let due = i64::try_from(rollout.plan.interval_ms).unwrap_or(i64::MAX);
        if to - rollout.evaluated_to_ms < due {
            return Ok(());
        }
        let Some(step) = rollout.step().copied() else {
            rollout.state = RolloutState::Done;
            self.save(&mut rollout).await?;
            return Ok(());
        };
        let phase = self
            .store
            .state(&rollout.carveout)
            .await?
            .map(|s| s.phase)
            .ok_or_else(|| RolloutError::UnknownCarveOut(rollout.carveout.clone()))?;
        if !rollout.in_step_phase(phase) && self.step_change_lost(&rollout, phase).await? {
            // The controller that promoted this step died between recording it and changing
            // the phase (the phase is still the previous step's, last set by the rollout):
            // finish its change instead of halting.
            let event = rollout.takeover_event(&step);
            let reason = format!("rollout: {event}");
            rollout.event(event);
            rollout.evaluated_to_ms = fresh_from(now);
            if self.save(&mut rollout).await? {
                self.enter_step(&rollout.carveout, step.phase(), &reason, false)
                    .await?;
            }
            return Ok(());
        }
        if !rollout.in_step_phase(phase) {
            rollout.state = RolloutState::Halted;
            rollout.event(format!(
                "step {} ({step}): {} is {phase}, not the step's phase (changed outside the rollout, or the step's change failed); halted",
                rollout.progress.step + 1,
                rollout.carveout
            ));
            self.save(&mut rollout).await?;
            return Ok(());
        }
        let window = self
            .measured(&rollout.carveout, rollout.evaluated_to_ms, to)
            .await?;
        let found = checks(
            &step,
            &rollout.plan,
            &window,
            self.sync_lag(&rollout.carveout, phase, readers).await,
        );
        let (progress, decision) = decide(
            &rollout.plan,
            &rollout.progress,
            phase,
            &found,
            step.samples(&window),
            to,
        );
        self.proxy
            .metrics()
            .rollout(&rollout.carveout, rollout.progress.step + 1, &found);
        let failures_before = rollout.progress.failures;
        rollout.progress = progress;
        rollout.evaluated_to_ms = to;
        rollout.last_checks = found;
        if rollout.progress.failures > failures_before {
            let failed: Vec<Check> = rollout
                .last_checks
                .iter()
                .filter(|c| c.passed == Some(false))
                .cloned()
                .collect();
            if !matches!(decision, Decision::RollBack { .. }) {
                rollout.event(format!(
                    "step {} ({step}): an interval failed ({} of {} tolerated): {}",
                    rollout.progress.step + 1,
                    rollout.progress.failures,
                    rollout.plan.failure_limit,
                    failed_text(&failed)
                ));
            }
        }
        self.apply(rollout, step, decision, now).await
    }

    /// Whether `phase` is the previous step's, set by the rollout itself: the current step was
    /// recorded but its phase change never happened (its controller died in between). A phase
    /// anyone else set last is an operator's, which halts the rollout instead.
    async fn step_change_lost(
        &self,
        rollout: &Rollout,
        phase: Phase,
    ) -> Result<bool, RolloutError> {
        if !rollout.may_finish_lost_change(phase) {
            return Ok(false);
        }
        let last = self.store.audit(Some(&rollout.carveout), 1).await?;
        Ok(last.first().is_some_and(|entry| entry.actor == ACTOR))
    }

    /// The data sync's lag in seconds (of the direction `phase` runs), for a carve-out with a
    /// sync whose capture is installed and readable. The relay reading it is kept in `readers`
    /// across intervals: opening both databases every interval would be the controller's main
    /// cost.
    async fn sync_lag(
        &self,
        carveout: &str,
        phase: Phase,
        readers: &mut LagReaders,
    ) -> Option<f64> {
        let spec = self.sync_spec(carveout)?;
        let direction = if phase.service_owns_writes() {
            Direction::Reverse
        } else {
            Direction::Forward
        };
        if readers.0.get(carveout).map(|(d, _)| *d) != Some(direction) {
            readers.0.remove(carveout);
            let opened = async {
                let sides = spec.setup.open(direction).await?;
                if !capture::installed(&sides.source, &sides.mapping).await? {
                    return anyhow::Ok(None);
                }
                Ok(Some(sides.relay().await?))
            };
            match opened.await {
                Ok(Some(relay)) => {
                    readers.0.insert(carveout.to_owned(), (direction, relay));
                }
                Ok(None) => return None,
                Err(err) => {
                    tracing::debug!(
                        carveout,
                        error = format!("{err:#}"),
                        "cannot read the sync lag"
                    );
                    return None;
                }
            }
        }
        let (_, relay) = readers.0.get(carveout)?;
        match relay.lag().await {
            Ok((_, age)) => Some(age.as_secs_f64()),
            Err(err) => {
                // Opened again at the next interval.
                tracing::debug!(
                    carveout,
                    error = format!("{err:#}"),
                    "cannot read the sync lag"
                );
                readers.0.remove(carveout);
                None
            }
        }
    }

    /// Writes `decision` into the rollout's record, then has its effect.
    async fn apply(
        &self,
        mut rollout: Rollout,
        step: Step,
        decision: Decision,
        now: i64,
    ) -> Result<(), RolloutError> {
        let at = format!("step {} ({step})", rollout.progress.step + 1);
        match decision {
            Decision::Hold => {
                self.save(&mut rollout).await?;
            }
            Decision::Promote => {
                let next = rollout.progress.step + 1;
                let target = rollout.plan.steps[next];
                let reason = format!(
                    "rollout: step {} ({target}) after {at} clean with {} sample(s)",
                    next + 1,
                    rollout.progress.samples
                );
                rollout.event(reason.trim_start_matches("rollout: ").to_owned());
                rollout.progress = Progress::at(next, now);
                rollout.evaluated_to_ms = fresh_from(now);
                if self.save(&mut rollout).await? && !matches!(target, Step::CutOver { .. }) {
                    // Should this fail, the next interval finds the phase is not the step's
                    // and halts the rollout, saying so.
                    self.enter_step(&rollout.carveout, target.phase(), &reason, false)
                        .await?;
                }
            }
            Decision::Done => {
                rollout.state = RolloutState::Done;
                rollout.event(format!("done: {at} passed"));
                self.save(&mut rollout).await?;
            }
            Decision::AwaitApproval => {
                if rollout.state != RolloutState::AwaitingApproval {
                    rollout.state = RolloutState::AwaitingApproval;
                    rollout.event(format!(
                        "{at}: waiting for approval (strangler rollout approve {})",
                        rollout.carveout
                    ));
                }
                self.save(&mut rollout).await?;
            }
            Decision::CutOver => self.cut_over_step(rollout, &at, now).await?,
            Decision::RollBack { failed } => {
                let reason = bounded(format!(
                    "rollout rolled back at {at}: {}",
                    failed_text(&failed)
                ));
                self.roll_back(rollout, &reason).await?;
            }
        }
        Ok(())
    }

    /// The cut-over step: recorded as under way, the guarded cut-over, then its outcome.
    async fn cut_over_step(
        &self,
        mut rollout: Rollout,
        at: &str,
        now: i64,
    ) -> Result<(), RolloutError> {
        rollout.state = RolloutState::Running;
        rollout.event(format!("{at}: moving the writes to the service"));
        if !self.save(&mut rollout).await? {
            return Ok(());
        }
        let request = MoveRequest {
            actor: ACTOR.to_owned(),
            reason: format!("rollout: {at}"),
            force: false,
        };
        match self
            .run_move(&rollout.carveout, Move::CutOver, request)
            .await
        {
            Ok(_) => {
                rollout.event(format!("{at}: the writes moved to the service"));
                rollout.progress = Progress {
                    approved: true,
                    ..Progress::at(rollout.progress.step, now)
                };
                rollout.evaluated_to_ms = fresh_from(sqlkit::now_ms());
            }
            Err(err) => {
                rollout.state = RolloutState::Halted;
                rollout.event(format!("{at}: the cut-over did not happen: {err}; halted"));
            }
        }
        self.save(&mut rollout).await?;
        Ok(())
    }

    /// Rolling back first (nothing promotes meanwhile, and an operator's change since the read
    /// wins), then back to the safe phase, then halted: a halted rollout's carve-out is in its
    /// safe phase, or the history says why not.
    async fn roll_back(&self, mut rollout: Rollout, reason: &str) -> Result<(), RolloutError> {
        rollout.state = RolloutState::RollingBack;
        rollout.event(format!(
            "{reason}; going back to {}",
            rollout.plan.safe_phase
        ));
        if !self.save(&mut rollout).await? {
            return Ok(());
        }
        self.finish_roll_back(rollout, reason).await
    }

    /// The safe phase for a rolling-back rollout, then halted (with the failure, if any).
    async fn finish_roll_back(
        &self,
        mut rollout: Rollout,
        reason: &str,
    ) -> Result<(), RolloutError> {
        match self
            .to_safe_phase(&rollout.carveout, &rollout.plan, reason)
            .await
        {
            Ok(()) => rollout.event(format!("back in {}, halted", rollout.plan.safe_phase)),
            Err(err) => rollout.event(format!(
                "going back to {} failed: {err} (halted: put it there by hand)",
                rollout.plan.safe_phase
            )),
        }
        rollout.state = RolloutState::Halted;
        self.save(&mut rollout).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::PlanSection;

    fn at_second_step() -> Rollout {
        let section = PlanSection {
            steps: Some(vec!["canary 10% 1m".to_owned(), "canary 50% 1m".to_owned()]),
            ..PlanSection::default()
        };
        Rollout {
            carveout: "catalog".to_owned(),
            state: RolloutState::Running,
            plan: Plan::from_section(&section).unwrap(),
            progress: Progress::at(1, 0),
            evaluated_to_ms: 0,
            last_checks: Vec::new(),
            history: Vec::new(),
            version: 1,
        }
    }

    #[test]
    fn a_lost_step_change_is_finished_once_then_the_rollout_halts() {
        let mut rollout = at_second_step();
        let previous = Phase::Canary { basis_points: 1000 };
        assert!(rollout.may_finish_lost_change(previous));
        // Not the previous step's phase: someone else's change.
        assert!(!rollout.may_finish_lost_change(Phase::Monolith));
        // The controller that took over tried: the next one does not try again.
        let step = *rollout.step().unwrap();
        let event = rollout.takeover_event(&step);
        rollout.event(event);
        assert!(!rollout.may_finish_lost_change(previous));
        // A later event (the step went on) does not count as a try of this step.
        rollout.event("step 2: checks passed".to_owned());
        assert!(rollout.may_finish_lost_change(previous));
    }
}
