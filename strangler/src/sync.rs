//! `strangler sync ...`: the data sync of a carve-out, driven by its mapping file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use strangler_sync::backfill::Backfill;
use strangler_sync::metrics::RelayMetrics;
use strangler_sync::{capture, parked, verify};

use crate::Failed;

pub use strangler_sync::sides::{Direction, Sides};

/// Where a carve-out's data lives.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The carve-out.
    pub carveout: String,
    /// The mapping file (default: the configuration's, else the toolkit's
    /// extracted/<carveout>/sync.toml).
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// The monolith's database (SQLite path or postgres:// URL); default: the configuration's.
    #[arg(long, env = "STRANGLER_MONOLITH_DB")]
    pub monolith_db: Option<String>,
    /// The service's database; default: the configuration's.
    #[arg(long, env = "STRANGLER_SERVICE_DB")]
    pub service_db: Option<String>,
    /// The proxy's configuration file, whose carve-out `sync` names the databases and the
    /// mapping (default: ./strangler.toml, else the stack's .strangler-stack/strangler.toml).
    #[arg(long, env = "STRANGLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Which way: forward (monolith → service) or reverse.
    #[arg(long, default_value = "forward")]
    pub direction: Direction,
}

/// `strangler sync ...`.
#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Install capture (change log and triggers) on the source side.
    Install(SyncArgs),
    /// Remove capture from the source side.
    Uninstall(SyncArgs),
    /// Copy the rows that existed before capture (resumable).
    Backfill {
        /// The carve-out and its databases.
        #[command(flatten)]
        args: SyncArgs,
        /// Rows per chunk (each chunk is one transaction on the target).
        #[arg(long, default_value_t = 5000)]
        chunk: i64,
    },
    /// Relay changes to the target: until stopped, or until caught up with --once.
    Run {
        /// The carve-out and its databases.
        #[command(flatten)]
        args: SyncArgs,
        /// Drain what is there and exit.
        #[arg(long)]
        once: bool,
        /// Pause between polls when caught up (ms).
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        /// The relay's lease: one relay per carve-out and direction applies changes; a standby
        /// takes over this long after the active one died (ms).
        #[arg(long, default_value_t = 5000)]
        lease_ms: u64,
        /// Serve Prometheus metrics (lag, applied, errors, active) at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Capture, cursor, lag, and the changes the target refused (parked by key).
    Status(SyncArgs),
    /// Try the parked changes again (all, or one key), after fixing their data or the mapping.
    Retry {
        /// The carve-out and its databases.
        #[command(flatten)]
        args: SyncArgs,
        /// Only this source table's key ...
        #[arg(long, requires = "key")]
        table: Option<String>,
        /// ... this key (as `strangler sync status` shows it, e.g. `[42]`).
        #[arg(long, requires = "table")]
        key: Option<String>,
    },
    /// Drop a parked key's changes: the target keeps its row as it is (verify shows the
    /// difference until a repair or a later change mends it).
    Skip {
        /// The carve-out and its databases.
        #[command(flatten)]
        args: SyncArgs,
        /// The source table of the parked key.
        #[arg(long)]
        table: String,
        /// The parked key, as `strangler sync status` shows it (e.g. `[42]`).
        #[arg(long)]
        key: String,
    },
    /// Compare both sides; exits non-zero on drift and when nothing was compared.
    Verify {
        /// The carve-out and its databases.
        #[command(flatten)]
        args: SyncArgs,
        /// Write the JSON drift report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// How long to wait for the relay to apply the changes in flight during the comparison
        /// before their keys are compared again (ms); what is still in flight then is
        /// reported as such.
        #[arg(long, default_value_t = 3000)]
        settle_ms: u64,
    },
    /// Re-copy every drifted key from the source, then verify again.
    Repair(SyncArgs),
}

impl SyncArgs {
    /// The carve-out's sync as these arguments name it: each flag given wins; what is missing
    /// comes from the proxy configuration's `sync` of the carve-out.
    pub fn setup(&self) -> anyhow::Result<strangler_sync::sides::SyncSetup> {
        let configured = match (&self.monolith_db, &self.service_db, &self.mapping) {
            (Some(_), Some(_), Some(_)) => None,
            // Both databases given: a configuration only fills in the mapping, if it can.
            (Some(_), Some(_), None) => configured_sync(self.config.as_deref(), &self.carveout)
                .ok()
                .flatten(),
            _ => configured_sync(self.config.as_deref(), &self.carveout)?,
        };
        let from_config =
            |pick: fn(&strangler_sync::sides::SyncSetup) -> String| configured.as_ref().map(pick);
        let missing = || {
            anyhow::anyhow!(
                "no databases for {}: pass --monolith-db and --service-db, or --config FILE (STRANGLER_CONFIG) whose carve-out {} has a sync section (the stack writes .strangler-stack/strangler.toml)",
                self.carveout,
                self.carveout
            )
        };
        Ok(strangler_sync::sides::SyncSetup {
            carveout: self.carveout.clone(),
            mapping: self
                .mapping
                .clone()
                .or_else(|| configured.as_ref().map(|c| c.mapping.clone()))
                .unwrap_or_else(|| crate::project::default_mapping(&self.carveout)),
            monolith_db: self
                .monolith_db
                .clone()
                .or_else(|| from_config(|c| c.monolith_db.clone()))
                .ok_or_else(missing)?,
            service_db: self
                .service_db
                .clone()
                .or_else(|| from_config(|c| c.service_db.clone()))
                .ok_or_else(missing)?,
        })
    }
}

/// The `sync` of `carveout` in the project's configuration ([`crate::project`]). `None` when
/// there is no such file; an error when the named file cannot be read or has no sync for the
/// carve-out.
fn configured_sync(
    file: Option<&std::path::Path>,
    carveout: &str,
) -> anyhow::Result<Option<strangler_sync::sides::SyncSetup>> {
    let Some((path, spec)) = crate::project::carveout(file, carveout)? else {
        return Ok(None);
    };
    let sync = spec.sync.with_context(|| {
        format!(
            "carve-out {carveout} in {} has no sync section (mapping, monolith_db, service_db)",
            path.display()
        )
    })?;
    Ok(Some(sync.setup))
}

/// A remembered verify in one line (`clean at ...: N row(s) compared, ...`).
pub fn last_verify_text(last: Option<&verify::LastVerify>) -> String {
    match last {
        None => "none yet (strangler sync verify NAME)".to_owned(),
        Some(v) => format!(
            "{} at {}: {} row(s) compared, {} drifted, {} parked",
            if v.clean { "clean" } else { "NOT clean" },
            v.at,
            v.rows_compared,
            v.drifted,
            v.parked
        ),
    }
}

/// Opens both databases and checks the mapping against them.
pub async fn open(args: &SyncArgs) -> anyhow::Result<Sides> {
    let setup = args.setup()?;
    anyhow::ensure!(
        setup.mapping.exists(),
        "no mapping file for {} at {} (pass --mapping FILE, or write that file: see extracted/catalog/sync.toml in the toolkit)",
        args.carveout,
        setup.mapping.display()
    );
    setup.open(args.direction).await
}

/// Runs a sync command and returns what to print.
pub async fn run(command: SyncCommand, json: bool) -> anyhow::Result<String> {
    match command {
        SyncCommand::Install(args) => {
            let sides = open(&args).await?;
            if capture::installed(&sides.source, &sides.mapping).await? {
                return Ok(format!(
                    "capture is already installed for {} ({})\n",
                    args.carveout,
                    sides.direction.name()
                ));
            }
            capture::install(&sides.source, &sides.mapping).await?;
            Ok(format!(
                "capture installed for {} ({}): {} table(s)\n",
                args.carveout,
                sides.direction.name(),
                sides.mapping.tables.len()
            ))
        }
        SyncCommand::Uninstall(args) => {
            let sides = open(&args).await?;
            capture::uninstall(&sides.source, &sides.mapping).await?;
            Ok(format!(
                "capture removed for {} ({})\n",
                args.carveout,
                sides.direction.name()
            ))
        }
        SyncCommand::Backfill { args, chunk } => {
            let sides = open(&args).await?;
            let backfill = Backfill::new(
                sides.source,
                sides.target,
                sides.mapping,
                sides.direction.name(),
            )
            .await?
            .with_chunk(chunk);
            let bar = indicatif::ProgressBar::new(0);
            if json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} rows ({per_sec})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let done = backfill
                .run(|p| {
                    bar.set_message(p.table.clone());
                    bar.set_length(p.total.max(p.read));
                    bar.set_position(p.read);
                })
                .await?;
            bar.finish_and_clear();
            Ok(if json {
                serde_json::to_string_pretty(&json!(done
                    .iter()
                    .map(|p| json!({"table": p.table, "read": p.read, "skipped": p.skipped, "done": p.done}))
                    .collect::<Vec<_>>()))?
                    + "\n"
            } else {
                done.iter()
                    .map(|p| {
                        format!(
                            "{}: {} rows copied ({} left to the relay: changed during the copy)\n",
                            p.table,
                            p.read - p.skipped,
                            p.skipped
                        )
                    })
                    .collect()
            })
        }
        SyncCommand::Run {
            args,
            once,
            interval_ms,
            lease_ms,
            metrics_listen,
        } => {
            let mut relay = open(&args)
                .await?
                .relay()
                .await?
                .with_lease(Duration::from_millis(lease_ms));
            if once {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let mut applied = 0;
                loop {
                    let step = relay.step().await?;
                    applied += step.applied;
                    if step.standby {
                        anyhow::ensure!(
                            tokio::time::Instant::now() < deadline,
                            "another relay holds {} and did not let go within 30 s",
                            relay.stream()
                        );
                        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
                    } else if step.applied == 0 {
                        break;
                    }
                }
                relay.release_lease().await?;
                return Ok(format!("{}: {applied} change(s) applied\n", relay.stream()));
            }
            let metrics = std::sync::Arc::new(RelayMetrics::new(relay.stream()));
            if let Some(addr) = metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (metrics)"))?;
                eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
                let metrics = metrics.clone();
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move || {
                        let metrics = metrics.clone();
                        async move { metrics.encode() }
                    }),
                );
                tokio::spawn(async move { axum::serve(listener, app).await });
            }
            let stream = relay.stream().to_owned();
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let total = relay
                .run_until(Duration::from_millis(interval_ms), Some(metrics), stop)
                .await?;
            Ok(format!(
                "{stream}: stopped after applying {total} change(s)\n"
            ))
        }
        SyncCommand::Status(args) => {
            let sides = open(&args).await?;
            let installed = capture::installed(&sides.source, &sides.mapping).await?;
            let target = sides.target.clone();
            let relay = sides.relay().await?;
            let cursor = relay.cursor().await?;
            let (events, age) = if installed {
                relay.lag().await?
            } else {
                (0, Duration::ZERO)
            };
            let parked = parked::list(&target, Some(relay.stream())).await?;
            let last_verify = verify::last(&target, relay.stream()).await?;
            Ok(if json {
                serde_json::to_string_pretty(&json!({
                    "stream": relay.stream(),
                    "capture_installed": installed,
                    "cursor": cursor,
                    "lag_events": events,
                    "lag_seconds": age.as_secs_f64(),
                    "parked": parked,
                    "last_verify": last_verify,
                }))? + "\n"
            } else {
                let mut out = format!(
                    "{}: capture {}, cursor {cursor}, lag {events} change(s) / {:.3} s, {} parked key(s)\n",
                    relay.stream(),
                    if installed {
                        "installed"
                    } else {
                        "NOT installed"
                    },
                    age.as_secs_f64(),
                    parked.len()
                );
                out.push_str(&format!(
                    "  last verify: {}\n",
                    last_verify_text(last_verify.as_ref())
                ));
                for p in &parked {
                    out.push_str(&format!(
                        "  parked: --table {} --key '{}' (change {}, latest {}, since {}, {} attempt(s)): {}\n",
                        p.table, p.key, p.first_seq, p.seq, p.parked_at, p.attempts, p.error
                    ));
                }
                out
            })
        }
        SyncCommand::Verify {
            args,
            report,
            settle_ms,
        } => {
            let sides = open(&args).await?;
            let stream = format!("{}:{}", sides.mapping.carveout, sides.direction.name());
            let mut result =
                verify::verify_live(&sides.source, &sides.target, &sides.mapping, Some(&stream))
                    .await?;
            verify::settle(
                &sides.source,
                &sides.target,
                &sides.mapping,
                &stream,
                &mut result,
                std::time::Duration::from_millis(settle_ms),
            )
            .await?;
            // For `strangler status` and the record.
            verify::remember(&sides.target, &stream, &result).await?;
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&result)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let output = if json {
                serde_json::to_string_pretty(&result)? + "\n"
            } else {
                result.summary()
            };
            if result.clean() {
                Ok(output)
            } else {
                Err(Failed(output).into())
            }
        }
        SyncCommand::Retry { args, table, key } => {
            let relay = open(&args).await?.relay().await?;
            let only = table.as_deref().zip(key.as_deref());
            let report = relay.retry_parked(only).await?;
            let output = if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                let mut out = format!(
                    "{}: {} parked key(s) applied, {} still parked\n",
                    relay.stream(),
                    report.applied,
                    report.still_parked.len()
                );
                for (table, key, error) in &report.still_parked {
                    out.push_str(&format!(
                        "  still parked: --table {table} --key '{key}': {error}\n"
                    ));
                }
                out
            };
            if report.still_parked.is_empty() {
                Ok(output)
            } else {
                Err(Failed(output).into())
            }
        }
        SyncCommand::Skip { args, table, key } => {
            let sides = open(&args).await?;
            let stream = format!("{}:{}", sides.mapping.carveout, sides.direction.name());
            if !parked::skip(&sides.target, &stream, &table, &key).await? {
                anyhow::bail!(
                    "{stream} has no parked key {key} of {table} (see `strangler sync status {}`)",
                    args.carveout
                );
            }
            Ok(format!(
                "{stream}: skipped the parked changes of {table} {key}; the target keeps its row as it was\n"
            ))
        }
        SyncCommand::Repair(args) => {
            let sides = open(&args).await?;
            let before = verify::verify(&sides.source, &sides.target, &sides.mapping).await?;
            let fixed = verify::repair(&sides.target, &sides.mapping, &before).await?;
            let after = verify::verify(&sides.source, &sides.target, &sides.mapping).await?;
            verify::remember(&sides.target, &sides.stream(), &after).await?;
            let output = format!("repaired {fixed} row(s)\n{}", after.summary());
            if after.clean() {
                Ok(output)
            } else {
                Err(Failed(output).into())
            }
        }
    }
}
