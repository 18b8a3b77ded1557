//! `strangler cutover` and `strangler rollback`: moving a carve-out's write ownership between the
//! monolith and its service, guarded.
//!
//! Cut-over (canary → extracted): pre-checks (the service is healthy, sync lag is under its
//! bound, a fresh verify finds no drift, the latest contract verification is green), each
//! failing one named and nothing changed; then a short write fence on the carve-out (new writes
//! wait, none fail), the forward relay drained to zero lag, a re-verify of the keys changed
//! since the pre-check's verify, reverse capture on the
//! service, write ownership flipped in the proxy, and the fence released. Any failing step
//! aborts and leaves everything as it was. Roll-back (extracted → canary) is the mirror image.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Value};
use strangler_proxy::control::admin::CarveOutView;
use strangler_proxy::control::store::Verification;
use strangler_sync::relay::Relay;
use strangler_sync::{capture, verify};

use crate::sync::{open, Direction, SyncArgs};
use crate::Admin;

/// What a cut-over or roll-back needs.
#[derive(Debug, Clone, Args)]
pub struct CutoverArgs {
    /// The mapping file (default: sync/mappings/<carveout>.toml).
    #[arg(long)]
    pub mapping: Option<std::path::PathBuf>,
    /// The monolith's database (SQLite path or postgres:// URL).
    #[arg(long, env = "STRANGLER_MONOLITH_DB")]
    pub monolith_db: String,
    /// The service's database.
    #[arg(long, env = "STRANGLER_SERVICE_DB")]
    pub service_db: String,
    /// The base URL of the side that takes the writes (the service for a cut-over, the
    /// monolith for a roll-back), checked at `/readyz`.
    #[arg(long)]
    pub owner_url: String,
    /// Most changes the relay may be behind before the fence goes up.
    #[arg(long, default_value_t = 1000)]
    pub max_lag_events: i64,
    /// Most seconds the relay may be behind before the fence goes up.
    #[arg(long, default_value_t = 5.0)]
    pub max_lag_seconds: f64,
    /// Longest the writes may be held (ms); past it the step aborts and lets them go.
    #[arg(long, default_value_t = 5000)]
    pub fence_ms: u64,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: String,
    /// Proceed without a green contract verification (recorded as forced).
    #[arg(long)]
    pub force: bool,
    /// Who you are, for an admin API without tokens (with a token, the audit log records the
    /// operator the token belongs to, and another name is refused).
    #[arg(long)]
    pub actor: Option<String>,
    /// For a roll-back: the canary share the carve-out returns to.
    #[arg(long, default_value_t = 0.0)]
    pub percent: f64,
}

struct Out(String);

impl Out {
    fn step(&mut self, text: &str) {
        let line = format!("{text}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        self.0.push_str(&line);
    }
}

async fn healthy(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    match client
        .get(format!("{}/readyz", url.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{url} is not ready ({})", r.status())),
        Err(e) => Err(format!("{url} does not answer ({e})")),
    }
}

/// Waits until every live proxy replica has applied `epoch`, at most until `deadline`.
async fn await_epoch(admin: &Admin, epoch: i64, deadline: Instant) -> anyhow::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout_ms = u64::try_from(left.as_millis())
        .unwrap_or(60_000)
        .clamp(1, 60_000);
    let _: Value = admin
        .call(
            admin
                .request(reqwest::Method::POST, "/control/await")
                .json(&json!({"epoch": epoch, "timeout_ms": timeout_ms})),
        )
        .await?;
    Ok(())
}

/// Runs a cut-over (`to_service`) or a roll-back and returns what to print.
pub async fn run(
    admin: &Admin,
    name: &str,
    args: CutoverArgs,
    to_service: bool,
) -> anyhow::Result<String> {
    let mut out = Out(String::new());
    let (from_phase, what) = if to_service {
        ("canary", "cut-over")
    } else {
        ("extracted", "roll-back")
    };
    // The direction that drains before the flip, and the one that runs after it.
    let (before, after) = if to_service {
        (Direction::Forward, Direction::Reverse)
    } else {
        (Direction::Reverse, Direction::Forward)
    };
    let mut sync_args = SyncArgs {
        carveout: name.to_owned(),
        mapping: args.mapping.clone(),
        monolith_db: args.monolith_db.clone(),
        service_db: args.service_db.clone(),
        direction: before,
    };
    let draining = open(&sync_args).await?;
    sync_args.direction = after;
    let following = open(&sync_args).await?;

    out.step(&format!("{what} of {name}: pre-checks"));
    let view: CarveOutView = admin
        .call(admin.request(reqwest::Method::GET, &format!("/carveouts/{name}")))
        .await?;
    let mut failures = Vec::new();
    if view.phase != from_phase {
        failures.push(format!("{name} is in {}, not {from_phase}", view.phase));
    }
    if let Err(why) = healthy(&args.owner_url).await {
        failures.push(format!("the new owner is not healthy: {why}"));
    }
    if capture::installed(&draining.source, &draining.mapping).await? {
        let relay = Relay::new(
            draining.source.clone(),
            draining.target.clone(),
            draining.mapping.clone(),
            before.name(),
        )
        .await?;
        let (events, age) = relay.lag().await?;
        if events > args.max_lag_events || age.as_secs_f64() > args.max_lag_seconds {
            failures.push(format!(
                "sync lag is {events} change(s) / {:.1} s (bounds: {} / {} s)",
                age.as_secs_f64(),
                args.max_lag_events,
                args.max_lag_seconds
            ));
        }
    } else {
        failures.push(format!("{} capture is not installed", before.name()));
    }
    let stream = format!("{name}:{}", before.name());
    let report = verify::verify_live(
        &draining.source,
        &draining.target,
        &draining.mapping,
        Some(&stream),
    )
    .await?;
    let covered_to = report.covered_to;
    if !report.clean() {
        failures.push(format!(
            "verify: {}",
            report.summary().trim().replace('\n', "; ")
        ));
    }
    if to_service && !args.force {
        let latest: Vec<Verification> = admin
            .call(admin.request(
                reqwest::Method::GET,
                &format!("/carveouts/{name}/verifications?limit=1"),
            ))
            .await?;
        match latest.first() {
            Some(v) if v.passed => {}
            Some(v) => failures.push(format!(
                "the latest contract verification ({}) is red",
                v.at
            )),
            None => failures.push("no contract verification is on record".to_owned()),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{what} of {name} refused, nothing changed: {}",
            failures.join("; ")
        );
    }
    out.step(if to_service {
        "  the service is ready, lag within bounds, no drift, contracts green"
    } else {
        "  the monolith is ready, lag within bounds, no drift"
    });

    out.step(&format!(
        "fence: holding {name}'s writes (at most {} ms)",
        args.fence_ms
    ));
    let fenced_at = Instant::now();
    let fence: Value = admin
        .call(
            admin
                .request(reqwest::Method::POST, &format!("/carveouts/{name}/fence"))
                .json(&json!({"hold_ms": args.fence_ms})),
        )
        .await?;
    // Everything under the fence must be done before it lapses on its own.
    let deadline =
        fenced_at + Duration::from_millis(args.fence_ms).saturating_sub(Duration::from_millis(100));
    // Every live replica must have raised the fence before draining, so no write slips past it
    // to the old owner. A replica that cannot read the control database is not waited for: its
    // routing lease runs out and it takes no carve-out write until it reads again.
    let raised = match fence["epoch"].as_i64() {
        Some(epoch) => await_epoch(admin, epoch, deadline).await,
        None => Err(anyhow::anyhow!(
            "the admin API did not say which epoch the fence is"
        )),
    };
    let settle = fenced_at.elapsed();
    if let Err(err) = raised {
        let _ = admin
            .request(reqwest::Method::DELETE, &format!("/carveouts/{name}/fence"))
            .send()
            .await;
        bail!("{what} of {name} refused, nothing changed (fence lifted): {err:#}");
    }
    let result = fenced_steps(
        deadline, admin, name, &args, &draining, &following, before, after, &mut out, to_service,
        covered_to,
    )
    .await;
    let lifted = admin
        .request(reqwest::Method::DELETE, &format!("/carveouts/{name}/fence"))
        .send()
        .await;
    let held = fenced_at.elapsed();
    let lifted = match lifted {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the admin API answered {}", response.status())),
        Err(e) => Err(e.to_string()),
    };
    match lifted {
        Err(e) => out.step(&format!(
            "fence: could not lift it ({e}); it lapses on its own within {} ms",
            args.fence_ms
        )),
        Ok(()) => out.step(&format!(
            "fence: released after {} ms ({} ms of it waiting for every replica to raise it)",
            held.as_millis(),
            settle.as_millis()
        )),
    }
    result?;
    out.step(&format!(
        "{what} of {name} done: run `strangler sync run {name} --direction {}` to keep the other side current",
        after.name()
    ));
    Ok(out.0)
}

#[allow(clippy::too_many_arguments)]
async fn fenced_steps(
    deadline: Instant,
    admin: &Admin,
    name: &str,
    args: &CutoverArgs,
    draining: &crate::sync::Sides,
    following: &crate::sync::Sides,
    before: Direction,
    after: Direction,
    out: &mut Out,
    to_service: bool,
    covered_to: Option<i64>,
) -> anyhow::Result<()> {
    // Drain: step ourselves when no relay runs; otherwise wait for the running one.
    let mut relay = Relay::new(
        draining.source.clone(),
        draining.target.clone(),
        draining.mapping.clone(),
        before.name(),
    )
    .await?
    .with_lease(Duration::from_millis(args.fence_ms.max(1000)));
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the {} relay did not drain within the fence",
            before.name()
        );
        let step = relay.step().await?;
        if step.standby {
            let (events, _) = relay.lag().await?;
            if events == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else if step.applied == 0 && step.gap.is_none() {
            break;
        }
    }
    relay.release_lease().await?;
    out.step(&format!(
        "drain: the {} relay is at zero lag",
        before.name()
    ));
    // The pre-check compared every row up to `covered_to` in the change log: what can have
    // moved since is the keys logged after it, re-checked strictly now nothing moves.
    let (report, scope) = match covered_to {
        Some(since) => (
            verify::verify_changed(&draining.source, &draining.target, &draining.mapping, since)
                .await?,
            "key(s) changed since the pre-check",
        ),
        None => (
            verify::verify(&draining.source, &draining.target, &draining.mapping).await?,
            "rows",
        ),
    };
    anyhow::ensure!(
        report.drift.is_empty() && (covered_to.is_some() || report.clean()),
        "re-verify under the fence: {}",
        report.summary().trim()
    );
    out.step(&format!(
        "re-verify: {} {scope}, no drift",
        report.rows_compared
    ));

    let installed_here = !capture::installed(&following.source, &following.mapping).await?;
    if installed_here {
        capture::install(&following.source, &following.mapping).await?;
    }
    capture::align_sequences(&following.source, &following.mapping).await?;
    out.step(&format!(
        "sync: {} capture ready on the new owner",
        after.name()
    ));

    anyhow::ensure!(
        Instant::now() < deadline,
        "the fence would lapse before the flip: raise --fence-ms"
    );
    let phase = if to_service {
        json!({"phase": "extracted", "reason": format!("cutover: {}", args.reason), "force": args.force, "actor": args.actor})
    } else {
        json!({"phase": "canary", "percent": args.percent, "reason": format!("rollback: {}", args.reason), "force": args.force, "actor": args.actor})
    };
    let flipped: anyhow::Result<CarveOutView> = admin
        .call(
            admin
                .request(reqwest::Method::POST, &format!("/carveouts/{name}/phase"))
                .json(&phase),
        )
        .await;
    match flipped {
        Ok(view) => {
            out.step(&format!("ownership: {name} is now {}", view.phase));
            // The fence lifts only once every live replica routes by the new owner.
            let epoch = view
                .epoch
                .context("the admin API did not say which epoch the change is")?;
            await_epoch(admin, epoch, deadline)
                .await
                .context("the flip is recorded, but not every replica applied it; the fence is left to lapse")?;
            out.step("ownership: every live replica applied it");
            Ok(())
        }
        Err(err) => {
            if installed_here {
                capture::uninstall(&following.source, &following.mapping)
                    .await
                    .context("undoing the reverse capture")?;
            }
            Err(err.context("the phase change was refused"))
        }
    }
}
