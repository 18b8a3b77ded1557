//! Moving a carve-out's writes between the monolith and its service: the cut-over (canary →
//! extracted) and the roll-back (extracted → canary), guarded, run by the control plane.
//!
//! A carve-out with a data sync ([`crate::config::SyncSpec`]) changes write ownership only this
//! way: [`super::ControlPlane::transition`] refuses a plain phase change that would move its
//! writes, whoever asks and whether forced or not.
//!
//! 1. **Guards** (nothing changes when one fails; all failures are named): the carve-out is in
//!    the phase the move starts from; the new owner answers `/readyz` on every instance; the
//!    draining direction's capture is installed and a relay holds its lease; its lag is within
//!    the configured bounds; a verification of both sides finds no drift; for a cut-over, the
//!    latest contract verification is green (the only guard `force` passes, audited).
//! 2. **Fence**: the carve-out's writes are held on every replica (they wait, none fail) and
//!    every live replica acknowledges it; one that does not lifts the fence and refuses the move.
//!    The data sync's write guard ([`strangler_sync::guard`]) then holds the old owner's other
//!    writers (a module of the monolith writing the tables in process): their writes fail with
//!    a `fenced` error they wait out.
//! 3. **Drain** the draining relay to zero lag, **re-verify** the keys changed since the
//!    guards' verification, install the other direction's capture and align key sequences.
//! 4. **Flip** the phase (audited), wait until every live replica applied it, turn the old
//!    owner's write guard to `owned-elsewhere` and lift the new owner's, lift the fence.
//!
//! Any failure after the fence is raised undoes what was done (capture installed here is
//! removed, the phase is not flipped) and lifts the fence: the carve-out is as it was.
//!
//! **Retiring** ([`ControlPlane::retire`]): a carve-out `extracted` for at least its dwell (no
//! roll-back since: a roll-back and a new cut-over start the dwell again), whose reverse sync
//! verifies clean, has the reverse relay drained, the phase set to `retired` with the final
//! state in the audit log, and the reverse capture removed (running reverse relays stop by
//! themselves). The monolith's copy of the tables is no longer kept current. Leaving `retired`
//! takes `force` (audited).

use std::time::{Duration, Instant};

use serde::Serialize;
use strangler_sync::guard::{self, Guard};
use strangler_sync::sides::{Direction, Sides};
use strangler_sync::{capture, verify};

use super::{ControlPlane, PhaseChange};
use crate::config::SyncSpec;
use crate::phase::Phase;

/// Which way the writes move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Move {
    /// To the service: canary → extracted.
    CutOver,
    /// Back to the monolith: extracted → canary at this phase (a canary percent).
    RollBack(Phase),
}

impl Move {
    fn name(self) -> &'static str {
        match self {
            Move::CutOver => "cut-over",
            Move::RollBack(_) => "roll-back",
        }
    }

    /// The direction that drains before the flip.
    fn draining(self) -> Direction {
        match self {
            Move::CutOver => Direction::Forward,
            Move::RollBack(_) => Direction::Reverse,
        }
    }

    fn target(self) -> Phase {
        match self {
            Move::CutOver => Phase::Extracted,
            Move::RollBack(phase) => phase,
        }
    }
}

/// Who moves the writes, and why.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    /// Who asks (recorded in the audit log).
    pub actor: String,
    /// Why (required).
    pub reason: String,
    /// Proceed without a green contract verification (audited); passes no other guard.
    pub force: bool,
}

/// Why a move did not happen; `steps` says what was done and undone.
#[derive(Debug, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct MoveError {
    /// Whether the guards refused it (nothing was touched) rather than a later step.
    pub refused: bool,
    /// What went wrong.
    pub message: String,
    /// Each step, as reported.
    pub steps: Vec<String>,
}

/// How a step under the fence failed.
enum Failure {
    /// Before the flip: what was done is undone, the fence can be lifted.
    Undone(String),
    /// After the flip: ownership moved, but a live replica did not apply it in time; the fence
    /// is left to lapse rather than let that replica's writes go.
    AfterFlip(String),
}

/// The steps of a move, reported as they happen.
struct Steps<'a> {
    done: Vec<String>,
    progress: &'a mut (dyn FnMut(&str) + Send),
}

impl Steps<'_> {
    fn step(&mut self, text: String) {
        (self.progress)(&text);
        self.done.push(text);
    }

    fn fail(self, refused: bool, message: String) -> MoveError {
        MoveError {
            refused,
            message,
            steps: self.done,
        }
    }
}

impl ControlPlane {
    /// [`ControlPlane::move_writes`] on a blocking thread, driven by the runtime's handle: the
    /// procedure's database work is not `Send` (sqlx's higher-ranked executor futures), so
    /// this is how a task (an admin request, the rollout controller) runs it. Its steps are
    /// logged as they happen.
    pub async fn run_move(
        &self,
        carveout: &str,
        movement: Move,
        request: MoveRequest,
    ) -> Result<Vec<String>, MoveError> {
        self.run_procedure(carveout, Some(movement), request).await
    }

    /// [`ControlPlane::retire`] as [`ControlPlane::run_move`] runs a move.
    pub async fn run_retire(
        &self,
        carveout: &str,
        request: MoveRequest,
    ) -> Result<Vec<String>, MoveError> {
        self.run_procedure(carveout, None, request).await
    }

    async fn run_procedure(
        &self,
        carveout: &str,
        movement: Option<Move>,
        request: MoveRequest,
    ) -> Result<Vec<String>, MoveError> {
        let control = self.clone();
        let name = carveout.to_owned();
        let handle = tokio::runtime::Handle::current();
        let ran = tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                let mut progress = |step: &str| tracing::info!(carveout = %name, "{step}");
                match movement {
                    None => control.retire(&name, request, &mut progress).await,
                    Some(movement) => {
                        control
                            .move_writes(&name, movement, request, &mut progress)
                            .await
                    }
                }
            })
        })
        .await;
        ran.unwrap_or_else(|err| {
            tracing::error!(error = %err, "the procedure's task failed");
            Err(MoveError {
                refused: false,
                message: "the procedure failed unexpectedly; see the proxy's log (the fence lapses on its own)".to_owned(),
                steps: Vec::new(),
            })
        })
    }

    /// Moves `carveout`'s writes (see the module doc), reporting each step to `progress`.
    /// Returns the steps.
    pub async fn move_writes(
        &self,
        carveout: &str,
        movement: Move,
        request: MoveRequest,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Vec<String>, MoveError> {
        let mut steps = Steps {
            done: Vec::new(),
            progress,
        };
        let what = movement.name();
        let Some(spec) = self.sync_spec(carveout) else {
            let message = match self.known(carveout) {
                true => format!("{carveout} has no data sync configured: change its phase instead"),
                false => format!("no carve-out named {carveout}"),
            };
            return Err(steps.fail(true, message));
        };
        steps.step(format!("{what} of {carveout}: guards"));
        let draining = match spec.setup.open(movement.draining()).await {
            Ok(sides) => sides,
            Err(err) => {
                return Err(steps.fail(
                    true,
                    format!("{what} of {carveout} refused, nothing changed: {err:#}"),
                ))
            }
        };
        let following = match spec.setup.open(movement.draining().opposite()).await {
            Ok(sides) => sides,
            Err(err) => {
                return Err(steps.fail(
                    true,
                    format!("{what} of {carveout} refused, nothing changed: {err:#}"),
                ))
            }
        };
        let (failures, covered_to, forced_past) = match self
            .guards_of_move(carveout, movement, &spec, &draining, &request)
            .await
        {
            Ok(checked) => checked,
            Err(err) => {
                return Err(steps.fail(
                    true,
                    format!("{what} of {carveout} refused, nothing changed: {err:#}"),
                ))
            }
        };
        if !failures.is_empty() {
            let message = format!(
                "{what} of {carveout} refused, nothing changed: {}",
                failures.join("; ")
            );
            return Err(steps.fail(true, message));
        }
        steps.step(format!(
            "  the new owner is ready, a relay runs within its lag bounds, no drift{}",
            match (movement, forced_past.is_empty()) {
                (Move::CutOver, true) => ", contracts green",
                (Move::CutOver, false) => ", contracts NOT green (forced)",
                (Move::RollBack(_), _) => "",
            }
        ));

        // The fence, acknowledged by every live replica.
        let fenced_at = Instant::now();
        let deadline = fenced_at + spec.fence.saturating_sub(Duration::from_millis(100));
        steps.step(format!(
            "fence: holding {carveout}'s writes (at most {} ms)",
            spec.fence.as_millis()
        ));
        let raised = match self.fence(carveout, spec.fence).await {
            Ok(_) => self.await_now(deadline).await,
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = raised {
            let lifted = self.unfence(carveout).await;
            let message = format!(
                "{what} of {carveout} refused, nothing changed (fence lifted{}): {err}",
                if lifted.is_ok() {
                    ""
                } else {
                    " as far as possible"
                }
            );
            self.audit_give_up(carveout, &request, &message).await;
            return Err(steps.fail(false, message));
        }
        steps.step(format!(
            "fence: every live replica holds the writes ({} ms)",
            fenced_at.elapsed().as_millis()
        ));
        let result = self
            .fenced_steps(
                carveout,
                movement,
                &request,
                &draining,
                &following,
                covered_to,
                &forced_past,
                deadline,
                &mut steps,
            )
            .await;
        if let Err(Failure::AfterFlip(message)) = result {
            steps.step(format!(
                "fence: left to lapse within {} ms",
                spec.fence.as_millis()
            ));
            let message = format!("{what} of {carveout}: {message}");
            self.audit_give_up(carveout, &request, &message).await;
            return Err(steps.fail(false, message));
        }
        let lifted = self.unfence(carveout).await;
        match &lifted {
            Ok(_) => steps.step(format!(
                "fence: released after {} ms",
                fenced_at.elapsed().as_millis()
            )),
            Err(err) => steps.step(format!(
                "fence: could not lift it ({err}); it lapses on its own within {} ms",
                spec.fence.as_millis()
            )),
        }
        match result {
            Ok(()) => {
                steps.step(format!(
                    "{what} of {carveout} done: the {} relay keeps the other side current",
                    movement.draining().opposite().name()
                ));
                Ok(steps.done)
            }
            Err(Failure::Undone(message) | Failure::AfterFlip(message)) => {
                let message = format!("{what} of {carveout} aborted, nothing changed: {message}");
                self.audit_give_up(carveout, &request, &message).await;
                Err(steps.fail(false, message))
            }
        }
    }

    /// Audits a move that held the writes and gave up (its phase, unchanged).
    async fn audit_give_up(&self, carveout: &str, request: &MoveRequest, message: &str) {
        let phase = match self.store.state(carveout).await {
            Ok(Some(state)) => state.phase,
            _ => return,
        };
        let reason = format!("{} [gave up: {message}]", request.reason.trim());
        if let Err(err) = self
            .store
            .audit_event(carveout, &request.actor, phase, &reason)
            .await
        {
            tracing::error!(error = %err, "could not audit a move that gave up");
        }
    }

    pub(super) fn sync_spec(&self, carveout: &str) -> Option<SyncSpec> {
        self.proxy
            .routing()
            .carveouts()
            .iter()
            .find(|c| c.spec.name == carveout)
            .and_then(|c| c.spec.sync.clone())
    }

    fn known(&self, carveout: &str) -> bool {
        self.proxy
            .routing()
            .carveouts()
            .iter()
            .any(|c| c.spec.name == carveout)
    }

    /// Waits until every live replica has applied everything stored now.
    async fn await_now(&self, deadline: Instant) -> Result<(), String> {
        let epoch = self.store.epoch().await.map_err(|e| e.to_string())?;
        let within = deadline.saturating_duration_since(Instant::now());
        self.await_applied(epoch, within)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The guards of a move: what fails (empty: all pass), how far the verification covered
    /// the change log, and the contract failure forced past (empty when none).
    async fn guards_of_move(
        &self,
        carveout: &str,
        movement: Move,
        spec: &SyncSpec,
        draining: &Sides,
        request: &MoveRequest,
    ) -> anyhow::Result<(Vec<String>, Option<i64>, String)> {
        let mut failures = Vec::new();
        let state = self
            .store
            .state(carveout)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no carve-out named {carveout}"))?;
        let from_ok = match movement {
            Move::CutOver => matches!(state.phase, Phase::Canary { .. }),
            Move::RollBack(_) => state.phase == Phase::Extracted,
        };
        if !from_ok {
            failures.push(format!(
                "{carveout} is in {}, not {}",
                state.phase,
                match movement {
                    Move::CutOver => "canary",
                    Move::RollBack(_) => "extracted",
                }
            ));
        }
        if let Err(why) = self.owner_ready(carveout, movement).await {
            failures.push(format!("the new owner is not ready: {why}"));
        }
        let stream = draining.stream();
        if capture::installed(&draining.source, &draining.mapping).await? {
            let relay = strangler_sync::relay::Relay::new(
                draining.source.clone(),
                draining.target.clone(),
                draining.mapping.clone(),
                draining.direction.name(),
            )
            .await?;
            if !relay.lease_held_by_another().await? {
                failures.push(format!(
                    "no relay runs for {stream} (start `strangler sync run {carveout} --direction {}`)",
                    draining.direction.name()
                ));
            }
            let (events, age) = relay.lag().await?;
            if events > spec.max_lag_events || age.as_secs_f64() > spec.max_lag_seconds {
                failures.push(format!(
                    "sync lag is {events} change(s) / {:.1} s (bounds: {} / {} s)",
                    age.as_secs_f64(),
                    spec.max_lag_events,
                    spec.max_lag_seconds
                ));
            }
        } else {
            failures.push(format!("{stream}: capture is not installed"));
        }
        let report = verify::verify_live(
            &draining.source,
            &draining.target,
            &draining.mapping,
            Some(&stream),
        )
        .await?;
        verify::remember(&draining.target, &stream, &report).await?;
        if !report.clean() {
            failures.push(format!(
                "verify: {}",
                report.summary().trim().replace('\n', "; ")
            ));
        }
        let mut forced_past = String::new();
        if movement == Move::CutOver && super::requires_contracts(&self.proxy, carveout) {
            let contracts = match self.store.verifications(carveout, 1).await?.first() {
                Some(v) if v.passed => None,
                Some(v) => Some(format!(
                    "the latest contract verification ({}) is red",
                    v.at
                )),
                None => Some("no contract verification is on record".to_owned()),
            };
            match (contracts, request.force) {
                (None, _) => {}
                (Some(why), true) => forced_past = why,
                (Some(why), false) => failures.push(why),
            }
        }
        Ok((failures, report.covered_to, forced_past))
    }

    /// Whether every instance of the new owner answers `/readyz`.
    async fn owner_ready(&self, carveout: &str, movement: Move) -> Result<(), String> {
        let routing = self.proxy.routing();
        let live = routing
            .carveouts()
            .iter()
            .find(|c| c.spec.name == carveout)
            .ok_or_else(|| format!("no carve-out named {carveout}"))?;
        let owner = match movement {
            Move::CutOver => live.service(),
            Move::RollBack(_) => routing.monolith(),
        };
        owner.ready().await
    }

    #[allow(clippy::too_many_arguments)]
    async fn fenced_steps(
        &self,
        carveout: &str,
        movement: Move,
        request: &MoveRequest,
        draining: &Sides,
        following: &Sides,
        covered_to: Option<i64>,
        forced_past: &str,
        deadline: Instant,
        steps: &mut Steps<'_>,
    ) -> Result<(), Failure> {
        let fail = |e: anyhow::Error| Failure::Undone(format!("{e:#}"));
        // The writers the replicas' fence cannot see (a module of the monolith writing the
        // tables in process) are held by the write guard in the old owner's database.
        let old_tables = tables(draining);
        let new_tables = tables(following);
        let guarded = async {
            guard::install(&draining.source, &old_tables).await?;
            guard::install(&following.source, &new_tables).await?;
            guard::set(&draining.source, &old_tables, Guard::Fenced).await
        };
        if let Err(err) = guarded.await {
            self.lift_guard(draining).await;
            return Err(fail(err));
        }
        steps.step(format!(
            "fence: the write guard holds the old owner's other writers ({})",
            old_tables.join(", ")
        ));
        let result = self
            .drain_verify_flip(
                carveout,
                movement,
                request,
                draining,
                following,
                covered_to,
                forced_past,
                deadline,
                steps,
            )
            .await;
        match &result {
            Err(Failure::Undone(_)) => self.lift_guard(draining).await,
            Err(Failure::AfterFlip(_)) => {}
            Ok(()) => {
                let flipped = async {
                    guard::set(&draining.source, &old_tables, Guard::OwnedElsewhere).await?;
                    guard::lift(&following.source, &new_tables).await
                };
                match flipped.await {
                    Ok(()) => steps.step(format!(
                        "ownership: the write guard refuses writes on the old owner, none on the new ({})",
                        new_tables.join(", ")
                    )),
                    Err(err) => {
                        return Err(Failure::AfterFlip(format!(
                            "the flip is recorded, but the write guard could not follow it (writes on both sides wait): {err:#}"
                        )))
                    }
                }
            }
        }
        result
    }

    /// Lifts the write guard a move raised on the old owner (it owns the writes again).
    async fn lift_guard(&self, draining: &Sides) {
        if let Err(err) = guard::lift(&draining.source, &tables(draining)).await {
            tracing::error!(error = %err, "could not lift the write guard this move raised");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn drain_verify_flip(
        &self,
        carveout: &str,
        movement: Move,
        request: &MoveRequest,
        draining: &Sides,
        following: &Sides,
        covered_to: Option<i64>,
        forced_past: &str,
        deadline: Instant,
        steps: &mut Steps<'_>,
    ) -> Result<(), Failure> {
        let fail = |e: anyhow::Error| Failure::Undone(format!("{e:#}"));
        let direction = draining.direction.name();
        // Drain: step ourselves when the running relay lets go; otherwise wait for it.
        let mut relay = strangler_sync::relay::Relay::new(
            draining.source.clone(),
            draining.target.clone(),
            draining.mapping.clone(),
            direction,
        )
        .await
        .map_err(fail)?
        .with_lease(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        );
        loop {
            if Instant::now() >= deadline {
                return Err(Failure::Undone(format!(
                    "the {direction} relay did not drain within the fence"
                )));
            }
            let step = relay.step().await.map_err(fail)?;
            if step.standby {
                if relay.lag().await.map_err(fail)?.0 == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            } else if step.applied == 0 && step.gap.is_none() {
                let _ = relay.release_lease().await;
                break;
            }
        }
        steps.step(format!("drain: the {direction} relay is at zero lag"));
        // What can have moved since the guards' verification is the keys logged after it.
        let (report, scope) = match covered_to {
            Some(since) => (
                verify::verify_changed(
                    &draining.source,
                    &draining.target,
                    &draining.mapping,
                    since,
                )
                .await
                .map_err(fail)?,
                "key(s) changed since the guards",
            ),
            None => (
                verify::verify(&draining.source, &draining.target, &draining.mapping)
                    .await
                    .map_err(fail)?,
                "rows",
            ),
        };
        if !report.drift.is_empty() || (covered_to.is_none() && !report.clean()) {
            return Err(Failure::Undone(format!(
                "re-verify under the fence: {}",
                report.summary().trim()
            )));
        }
        steps.step(format!(
            "re-verify: {} {scope}, no drift",
            report.rows_compared
        ));
        let installed_here = !capture::installed(&following.source, &following.mapping)
            .await
            .map_err(|e| fail(e.into()))?;
        if installed_here {
            capture::install(&following.source, &following.mapping)
                .await
                .map_err(fail)?;
        }
        let undo = || async {
            if installed_here {
                if let Err(err) = capture::uninstall(&following.source, &following.mapping).await {
                    tracing::error!(error = %err, "could not remove the capture this move installed");
                }
            }
        };
        if let Err(err) = capture::align_sequences(&following.source, &following.mapping).await {
            undo().await;
            return Err(fail(err));
        }
        steps.step(format!(
            "sync: {} capture ready on the new owner",
            following.direction.name()
        ));
        if Instant::now() >= deadline {
            undo().await;
            return Err(Failure::Undone(
                "the fence would lapse before the flip: raise the carve-out's sync.fence_ms"
                    .to_owned(),
            ));
        }
        // A contract guard forced past is appended to the reason by the control plane's gate.
        let change = PhaseChange {
            to: movement.target(),
            actor: request.actor.clone(),
            reason: format!(
                "{}: {}",
                movement.name().replace('-', ""),
                request.reason.trim()
            ),
            force: !forced_past.is_empty(),
        };
        let flipped = self.change_phase(carveout, change, true).await;
        let state = match flipped {
            Ok(state) => state,
            Err(err) => {
                undo().await;
                return Err(Failure::Undone(format!("the flip was refused: {err}")));
            }
        };
        steps.step(format!("ownership: {carveout} is now {}", state.phase));
        // The fence lifts only once every live replica routes by the new owner.
        self.await_now(deadline).await.map_err(|e| {
            Failure::AfterFlip(format!(
                "the flip is recorded, but not every replica applied it in time: {e}"
            ))
        })?;
        steps.step("ownership: every live replica applied it".to_owned());
        Ok(())
    }
}

/// The tables of the side `sides` reads from (its source).
fn tables(sides: &Sides) -> Vec<String> {
    sides
        .mapping
        .tables
        .iter()
        .map(|t| t.source.clone())
        .collect()
}

impl ControlPlane {
    /// Retires `carveout` (see the module doc), reporting each step to `progress`.
    pub async fn retire(
        &self,
        carveout: &str,
        request: MoveRequest,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Vec<String>, MoveError> {
        let mut steps = Steps {
            done: Vec::new(),
            progress,
        };
        let refused = |steps: Steps<'_>, why: String| {
            steps.fail(
                true,
                format!("retiring {carveout} refused, nothing changed: {why}"),
            )
        };
        let Some(spec) = self.sync_spec(carveout) else {
            return Err(refused(
                steps,
                format!("{carveout} has no data sync configured: change its phase instead"),
            ));
        };
        steps.step(format!("retiring {carveout}: guards"));
        let reverse = match spec.setup.open(Direction::Reverse).await {
            Ok(sides) => sides,
            Err(err) => return Err(refused(steps, format!("{err:#}"))),
        };
        let state = match self.store.state(carveout).await {
            Ok(Some(state)) => state,
            Ok(None) => return Err(refused(steps, format!("no carve-out named {carveout}"))),
            Err(err) => return Err(refused(steps, err.to_string())),
        };
        let mut failures = Vec::new();
        if state.phase != Phase::Extracted {
            failures.push(format!("{carveout} is in {}, not extracted", state.phase));
        } else {
            let since = time::OffsetDateTime::parse(
                &state.updated_at,
                &time::format_description::well_known::Rfc3339,
            )
            .map(|at| (time::OffsetDateTime::now_utc() - at).unsigned_abs())
            .unwrap_or_default();
            if since < spec.retire_dwell {
                failures.push(format!(
                    "{carveout} has been extracted for {} s, less than its dwell of {} s (sync.retire_dwell_s)",
                    since.as_secs(),
                    spec.retire_dwell.as_secs()
                ));
            }
        }
        let stream = reverse.stream();
        let verified = match verify::verify_live(
            &reverse.source,
            &reverse.target,
            &reverse.mapping,
            Some(&stream),
        )
        .await
        {
            Ok(report) => verify::remember(&reverse.target, &stream, &report)
                .await
                .map(|()| report)
                .map_err(anyhow::Error::from),
            Err(err) => Err(err),
        };
        match verified {
            Ok(report) if report.clean() => {}
            Ok(report) => failures.push(format!(
                "verify of {stream}: {}",
                report.summary().trim().replace('\n', "; ")
            )),
            Err(err) => failures.push(format!("verify of {stream}: {err:#}")),
        }
        if !failures.is_empty() {
            return Err(refused(steps, failures.join("; ")));
        }
        steps.step(format!(
            "  extracted for longer than {} s, {stream} verifies clean",
            spec.retire_dwell.as_secs()
        ));
        // Drain what the reverse relay has not applied yet: the monolith's last copy is whole.
        let drained = async {
            let mut relay = strangler_sync::relay::Relay::new(
                reverse.source.clone(),
                reverse.target.clone(),
                reverse.mapping.clone(),
                "reverse",
            )
            .await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the reverse relay did not drain within 60 s"
                );
                let step = relay.step().await?;
                if step.standby {
                    if relay.lag().await?.0 == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else if step.applied == 0 && step.gap.is_none() {
                    relay.release_lease().await?;
                    break;
                }
            }
            relay.cursor().await.map_err(anyhow::Error::from)
        }
        .await;
        let cursor = match drained {
            Ok(cursor) => cursor,
            Err(err) => {
                return Err(steps.fail(
                    false,
                    format!("retiring {carveout} aborted, nothing changed: {err:#}"),
                ))
            }
        };
        steps.step(format!(
            "drain: the reverse relay applied every change (up to {cursor})"
        ));
        let change = PhaseChange {
            to: Phase::Retired,
            actor: request.actor.clone(),
            reason: format!(
                "retire: {} [final: the monolith's copy is current up to change {cursor} of {stream}; reverse sync removed]",
                request.reason.trim()
            ),
            force: false,
        };
        let state = match self.change_phase(carveout, change, true).await {
            Ok(state) => state,
            Err(err) => return Err(steps.fail(false, format!("retiring {carveout} aborted, nothing changed: the phase change was refused: {err}"))),
        };
        steps.step(format!("phase: {carveout} is now {}", state.phase));
        if let Err(err) = capture::uninstall(&reverse.source, &reverse.mapping).await {
            return Err(steps.fail(
                false,
                format!("{carveout} is retired, but its reverse capture could not be removed: {err:#} (run `strangler sync uninstall {carveout} --direction reverse`)"),
            ));
        }
        steps.step(format!(
            "sync: {stream} capture removed; its relays stop by themselves"
        ));
        Ok(steps.done)
    }
}

/// Whether a change between these phases moves a carve-out's writes.
pub(crate) fn moves_writes(from: Phase, to: Phase) -> bool {
    from.service_owns_writes() != to.service_owns_writes()
}
