//! The operator CLI: carve-out commands call a proxy replica's admin API and print a readable
//! table (or JSON with `--json`); `contract` commands record and verify contracts. Errors
//! (unreachable admin, refused transition, bad token) are one clear line on stderr and a
//! non-zero exit; a red verification prints its report and exits non-zero.

pub mod cutover;
mod demo_inventory;
pub mod project;
pub mod stack;
pub mod sync;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use contracts::record::{script_from_captures, CapturedRequest, RecordOptions, Script};
use contracts::verify::VerifyOptions;
use serde::de::DeserializeOwned;
use serde_json::Value;
use strangler_proxy::capture::Capture;
use strangler_proxy::control::admin::{
    CarveOutView, PhaseRequest, ReplicaView, VerificationReport,
};
use strangler_proxy::control::mismatches::MismatchReport;
use strangler_proxy::control::rollout::{RolloutState, RolloutView};
use strangler_proxy::control::status::Status;
use strangler_proxy::control::store::{AuditEntry, Verification};

/// Operate a strangler-fig migration: run the stack, inspect carve-outs and move them through
/// their phases, sync their data, record and verify their contracts. One binary for all of it:
/// `strangler monolith`, `strangler proxy`, `strangler catalog-service` and `strangler
/// inventory-service` serve the parts.
#[derive(Debug, Parser)]
#[command(name = "strangler", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How to write log lines.
    #[command(flatten)]
    pub log: telemetry::LogArgs,
}

/// How to reach the admin API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The admin API of any proxy replica.
    #[arg(
        long,
        global = true,
        env = "STRANGLER_ADMIN_URL",
        default_value = "http://127.0.0.1:9001"
    )]
    pub admin_url: String,
    /// The admin API's bearer token.
    #[arg(
        long,
        global = true,
        env = "STRANGLER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

/// How to print.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct Output {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Carve-outs and their phases.
    Carveouts {
        /// list or show.
        #[command(subcommand)]
        command: CarveoutsCommand,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
        /// How to print.
        #[command(flatten)]
        out: Output,
    },
    /// Change a carve-out's phase.
    Phase {
        /// set.
        #[command(subcommand)]
        command: PhaseCommand,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
        /// How to print.
        #[command(flatten)]
        out: Output,
    },
    /// The audit log of phase changes, newest first.
    Audit {
        /// Only this carve-out's changes.
        name: Option<String>,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
        /// How to print.
        #[command(flatten)]
        out: Output,
    },
    /// One view of a carve-out (all of them without a name): phase and fence, traffic per side,
    /// shadow comparisons, data sync, contracts, replicas.
    Status {
        /// The carve-out (default: every one).
        name: Option<String>,
        /// Show it again every 2 s until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
        /// How to print.
        #[command(flatten)]
        out: Output,
    },
    /// The proxy replicas sharing the control database: address, version, heartbeat, the
    /// control epoch each has applied, and whether it is live (its lease holds).
    Replicas {
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
        /// How to print.
        #[command(flatten)]
        out: Output,
    },
    /// The latest shadow mismatches of a carve-out.
    Mismatches {
        /// The carve-out.
        name: String,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
        /// How to print.
        #[command(flatten)]
        out: Output,
    },
    /// Move a carve-out's writes to its service (canary → extracted), guarded: pre-checks, a
    /// write fence, the relay drained, a re-verify, ownership and sync direction flipped.
    Cutover {
        /// The carve-out.
        name: String,
        /// Reason, actor.
        #[command(flatten)]
        args: cutover::CutoverArgs,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The mirror of a cut-over: writes back to the monolith (extracted → canary).
    Rollback {
        /// The carve-out.
        name: String,
        /// Reason, actor, the canary share to return to.
        #[command(flatten)]
        args: cutover::CutoverArgs,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Retire a carve-out that has been `extracted` for its dwell: its reverse sync drained,
    /// the phase set to `retired` (its final state audited), the reverse sync removed.
    Retire {
        /// The carve-out.
        name: String,
        /// Reason and actor.
        #[command(flatten)]
        args: cutover::RetireArgs,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The whole carve-out on SQLite in one process: monolith, catalog service, proxy with its
    /// admin API, and the sync relays. Serves until Ctrl-C.
    Stack(stack::StackArgs),
    /// The stack in a temporary folder, and a carve-out (the catalog, or the inventory with
    /// live orders) walked through every phase with live traffic, saying what happens at each
    /// step.
    Demo {
        /// Products to seed the monolith with.
        #[arg(long, default_value_t = 200)]
        seed_products: u64,
        /// The carve-out to walk: `catalog` (reads and writes of products) or `inventory`
        /// (stock, with live orders whose saga moves to messages at the cut-over).
        #[arg(long, default_value = "catalog")]
        carveout: String,
        /// The orders saga's message transport: `embedded`, or `nats://127.0.0.1:4222`.
        #[arg(long, default_value = "embedded")]
        transport: String,
        /// The databases, when not SQLite files in a temporary folder.
        #[command(flatten)]
        dbs: stack::StackDbs,
    },
    /// Print a completion script for a shell (`strangler completions bash > ~/.local/share/bash-completion/completions/strangler`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Automatic rollouts: a carve-out moved step by step on evidence, and back by itself.
    Rollout {
        /// start, status, pause, resume, abort or approve.
        #[command(subcommand)]
        command: RolloutCommand,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
        /// How to print.
        #[command(flatten)]
        out: Output,
    },
    /// The data sync of a carve-out: install, backfill, run, status, verify, repair.
    Sync {
        /// What to do.
        #[command(subcommand)]
        command: sync::SyncCommand,
        /// How to print.
        #[command(flatten)]
        out: Output,
    },
    /// Contract tests: record contracts from the monolith, verify a provider against them.
    Contract {
        /// record or verify.
        #[command(subcommand)]
        command: ContractCommand,
    },
    /// Serve the shop monolith (what the `monolith` binary does): `strangler monolith serve`,
    /// `strangler monolith seed`.
    Monolith(monolith::config::Cli),
    /// Serve the strangler-fig proxy (what the `strangler-proxy` binary does).
    Proxy(strangler_proxy::config::ProxyArgs),
    /// Serve the extracted catalog service (what the `catalog-service` binary does).
    CatalogService(catalog_service::config::Config),
    /// Serve the extracted inventory service (what the `inventory-service` binary does): its
    /// HTTP routes, and the orders saga's commands over the message transport.
    InventoryService(inventory_service::config::Config),
}

impl Command {
    /// Whether the command serves until stopped (its logs are a server's: info and up).
    /// The service name of what this command serves, in traces.
    pub fn service_name(&self) -> &'static str {
        match self {
            Command::Monolith(_) => "monolith",
            Command::Proxy(_) => "strangler-proxy",
            Command::CatalogService(_) => "catalog-service",
            Command::InventoryService(_) => "inventory-service",
            _ => "strangler",
        }
    }

    /// Whether this command serves until stopped (as opposed to an operator command).
    pub fn serves(&self) -> bool {
        matches!(
            self,
            Command::Monolith(_)
                | Command::Proxy(_)
                | Command::CatalogService(_)
                | Command::InventoryService(_)
                | Command::Stack(_)
        )
    }
}

/// `strangler contract ...`.
#[derive(Debug, Subcommand)]
pub enum ContractCommand {
    /// Replay each interaction of the contracts against a provider and match its responses.
    /// Exits non-zero on any failure, and when there was nothing to verify.
    ///
    /// Examples:
    ///   strangler contract verify catalog
    ///   strangler contract verify --contracts extracted/catalog/contracts --provider http://127.0.0.1:8082
    ///
    /// With a carve-out, its `contracts` section in the proxy configuration names the pact
    /// files and the instance to verify (flags override it), and the outcome is reported to
    /// the admin API: going to `extracted` needs the latest verification green.
    #[command(verbatim_doc_comment)]
    Verify {
        /// The carve-out whose contracts to verify and report.
        carveout: Option<String>,
        /// A directory of pact files (or one file); default: the carve-out's.
        #[arg(long)]
        contracts: Option<PathBuf>,
        /// The provider's base URL; default: the carve-out's.
        #[arg(long)]
        provider: Option<String>,
        /// The provider-state hook: POSTed {state, params, action} before each interaction;
        /// default: the carve-out's.
        #[arg(long)]
        state_url: Option<String>,
        /// Also call the hook with action "teardown" after each interaction.
        #[arg(long)]
        teardown: bool,
        /// Write a JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Timeout of each request (ms).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Do not report the outcome to the admin API.
        #[arg(long)]
        no_report: bool,
        /// The proxy configuration naming the carve-out's contracts (default: ./strangler.toml,
        /// else the stack's .strangler-stack/strangler.toml).
        #[arg(long, env = "STRANGLER_CONFIG")]
        config: Option<PathBuf>,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
        /// How to print.
        #[command(flatten)]
        out: Output,
        /// Who you are, for an admin API without tokens (with a token, the audit log records the
        /// operator the token belongs to, and another name is refused).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Turn the exchanges a proxy captured for a carve-out (opt-in per carve-out, sampled,
    /// redacted) into a recording script; `contract record` then replays it and learns the noise.
    Capture {
        /// The carve-out.
        name: String,
        /// Where to write the script (TOML).
        #[arg(long)]
        script_out: PathBuf,
        /// The consumer's name in the contract.
        #[arg(long, default_value = "consumer")]
        consumer: String,
        /// The provider's name in the contract (default: the carve-out's).
        #[arg(long)]
        provider_name: Option<String>,
        /// Where to reach the proxy.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Record contracts from a provider (the monolith) with a script of requests, learning
    /// which fields are noise by replaying them.
    ///
    /// Examples:
    ///   strangler contract record --script extracted/catalog/contracts/catalog.script.toml --out catalog.json
    ///   strangler contract record --script my.script.toml --out my.json \
    ///     --provider http://127.0.0.1:8080 --second http://127.0.0.1:8180 \
    ///     --state-url http://127.0.0.1:8080/_contracts/provider-states
    ///
    /// Without --provider, it records from this repository's shop: two monoliths started in
    /// process on fresh databases, with their provider-state hooks.
    #[command(verbatim_doc_comment)]
    Record {
        /// The script (TOML): consumer, provider and the requests.
        #[arg(long)]
        script: PathBuf,
        /// The provider to record from (default: two fresh in-process shop monoliths).
        #[arg(long)]
        provider: Option<String>,
        /// A second, independent instance to replay against once (finds per-instance noise
        /// such as creation times).
        #[arg(long, requires = "provider")]
        second: Option<String>,
        /// The provider-state hook.
        #[arg(long, requires = "provider")]
        state_url: Option<String>,
        /// Wait this long before replaying (ms), so second-resolution timestamps move.
        #[arg(long)]
        time_step_ms: Option<u64>,
        /// Where to write the pact file.
        #[arg(long)]
        out: PathBuf,
        /// Timeout of each request (ms).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

/// A command that ran but failed (a red verification): its output goes to stdout and the
/// exit code is non-zero.
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

/// `strangler rollout ...`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start the carve-out's rollout (its plan: the `rollout` section of its configuration),
    /// from its first step.
    ///
    /// Example:
    ///   strangler rollout start catalog
    #[command(verbatim_doc_comment)]
    Start {
        /// The carve-out.
        name: String,
        /// Who you are, for an admin API without tokens.
        #[arg(long)]
        actor: Option<String>,
    },
    /// The step, the time left in it, every check with its figure and threshold, the history.
    Status {
        /// The carve-out.
        name: String,
        /// Wait until the rollout stops moving (done, halted, aborted, paused, or waiting for
        /// approval), then show it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits at most (seconds); past it, an error.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Hold the rollout where it is: nothing promotes, nothing rolls back.
    Pause(RolloutAct),
    /// Go on: a paused rollout, or a halted one from the step that failed (its dwell anew).
    Resume(RolloutAct),
    /// Stop the rollout and put the carve-out back in the plan's safe phase.
    Abort(RolloutAct),
    /// Let the rollout's cut-over step move the writes (guarded).
    Approve(RolloutAct),
}

/// A rollout and why it is acted on.
#[derive(Debug, Args)]
pub struct RolloutAct {
    /// The carve-out.
    pub name: String,
    /// Why (in the rollout's history; in the audit log for an abort).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Who you are, for an admin API without tokens.
    #[arg(long)]
    pub actor: Option<String>,
}

/// `strangler carveouts ...`.
#[derive(Debug, Subcommand)]
pub enum CarveoutsCommand {
    /// Every carve-out.
    List,
    /// One carve-out.
    Show {
        /// The carve-out.
        name: String,
    },
}

/// `strangler phase ...`.
#[derive(Debug, Subcommand)]
pub enum PhaseCommand {
    /// Move a carve-out to a phase, one step at a time.
    ///
    /// Examples:
    ///   strangler phase set catalog shadow --reason "compare before the canary"
    ///   strangler phase set catalog canary --percent 10 --reason "first 10 %"
    ///
    /// A carve-out with a data sync moves into and out of `extracted` only by `strangler
    /// cutover` / `strangler rollback`, and to `retired` only by `strangler retire`.
    #[command(verbatim_doc_comment)]
    Set {
        /// The carve-out.
        name: String,
        /// The new phase.
        #[arg(value_parser = ["monolith", "shadow", "canary", "extracted", "retired"])]
        phase: String,
        /// The canary share, 0 to 100 (0.01 steps).
        #[arg(long)]
        percent: Option<f64>,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Allow skipping phases (recorded as forced).
        #[arg(long)]
        force: bool,
        /// Who you are, for an admin API without tokens (with a token, the audit log records the
        /// operator the token belongs to, and another name is refused).
        #[arg(long)]
        actor: Option<String>,
    },
}

/// A client of the admin API.
pub struct Admin {
    pub(crate) http: reqwest::Client,
    pub(crate) args: AdminArgs,
}

impl Admin {
    /// A request to `path` of the admin API, with the token. An admin URL without a scheme
    /// (`127.0.0.1:9001`) is taken as `http://`.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let base = self.args.admin_url.trim_end_matches('/');
        let url = if base.contains("://") {
            format!("{base}{path}")
        } else {
            format!("http://{base}{path}")
        };
        let request = self.http.request(method, url);
        match &self.args.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// GETs `path` and reads its JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(self.request(reqwest::Method::GET, path)).await
    }

    /// Sends a request and reads its JSON answer; an error answer becomes an error with the
    /// problem's detail.
    pub async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.args.admin_url))?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| {
            format!(
                "the admin API at {} answered {status} with no JSON",
                self.args.admin_url
            )
        })?;
        if !status.is_success() {
            let detail = body["detail"].as_str().unwrap_or("no detail");
            match status.as_u16() {
                401 => bail!("the admin API refused the token: {detail} (set --admin-token or STRANGLER_ADMIN_TOKEN)"),
                _ => bail!("{detail} ({status})"),
            }
        }
        serde_json::from_value(body).context("the admin API answered in an unexpected shape")
    }
}

impl Admin {
    /// A client of the admin API these arguments name.
    pub fn new(args: &AdminArgs) -> anyhow::Result<Admin> {
        Ok(Admin {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            args: args.clone(),
        })
    }
}

/// Runs a parsed command and returns what to print.
pub async fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.command {
        Command::Carveouts {
            command: CarveoutsCommand::List,
            admin,
            out,
        } => {
            let list: Vec<CarveOutView> = Admin::new(&admin)?.get("/carveouts").await?;
            print_as(out, &list, |l| carveout_table(l))
        }
        Command::Carveouts {
            command: CarveoutsCommand::Show { name },
            admin,
            out,
        } => {
            let one: CarveOutView = Admin::new(&admin)?
                .get(&format!("/carveouts/{name}"))
                .await?;
            print_as(out, &one, carveout_details)
        }
        Command::Phase {
            command:
                PhaseCommand::Set {
                    name,
                    phase,
                    percent,
                    reason,
                    force,
                    actor,
                },
            admin,
            out,
        } => {
            let body = PhaseRequest {
                phase,
                percent,
                reason,
                force,
                actor,
            };
            let admin = Admin::new(&admin)?;
            let request = admin
                .request(reqwest::Method::POST, &format!("/carveouts/{name}/phase"))
                .json(&body);
            let changed: CarveOutView = admin.call(request).await?;
            print_as(out, &changed, |c| {
                format!("{} is now {}\n", c.name, phase_text(c))
            })
        }
        Command::Audit {
            name,
            limit,
            admin,
            out,
        } => {
            let mut path = format!("/audit?limit={limit}");
            if let Some(name) = &name {
                path.push_str("&carveout=");
                path.push_str(name);
            }
            let entries: Vec<AuditEntry> = Admin::new(&admin)?.get(&path).await?;
            print_as(out, &entries, |e| audit_table(e))
        }
        Command::Status {
            name,
            watch,
            admin,
            out,
        } => status(&Admin::new(&admin)?, name, watch, out).await,
        Command::Replicas { admin, out } => {
            let replicas: Vec<ReplicaView> = Admin::new(&admin)?.get("/replicas").await?;
            print_as(out, &replicas, |r| replica_table(r))
        }
        Command::Mismatches { name, admin, out } => {
            let path = format!("/carveouts/{name}/mismatches");
            let report: MismatchReport = Admin::new(&admin)?.get(&path).await?;
            print_as(out, &report, mismatch_text)
        }
        Command::Contract { command } => contract(command).await,
        Command::Rollout {
            command,
            admin,
            out,
        } => rollout(&Admin::new(&admin)?, command, out).await,
        Command::Sync { command, out } => sync::run(command, out.json).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "strangler",
                &mut script,
            );
            Ok(String::from_utf8_lossy(&script).into_owned())
        }
        Command::Stack(args) => stack::stack(args).await,
        Command::Demo {
            seed_products,
            dbs,
            carveout,
            transport,
        } => stack::demo(seed_products, dbs, &carveout, transport).await,
        Command::Cutover { name, args, admin } => {
            cutover::run(&Admin::new(&admin)?, &name, args, true).await
        }
        Command::Rollback { name, args, admin } => {
            cutover::run(&Admin::new(&admin)?, &name, args, false).await
        }
        Command::Retire { name, args, admin } => {
            cutover::retire(&Admin::new(&admin)?, &name, args).await
        }
        Command::Monolith(cli) => monolith::cli::run(cli).await.map(|()| String::new()),
        Command::Proxy(args) => strangler_proxy::cli::serve(&args)
            .await
            .map(|()| String::new()),
        Command::CatalogService(config) => catalog_service::cli::run(config)
            .await
            .map(|()| String::new()),
        Command::InventoryService(config) => inventory_service::cli::run(config)
            .await
            .map(|()| String::new()),
    }
}

/// `strangler rollout ...`.
async fn rollout(admin: &Admin, command: RolloutCommand, out: Output) -> anyhow::Result<String> {
    let (name, path, body) = match command {
        RolloutCommand::Status {
            name,
            wait,
            timeout_s,
        } => {
            let path = format!("/carveouts/{name}/rollout");
            let deadline = std::time::Instant::now() + Duration::from_secs(timeout_s);
            loop {
                let view: RolloutView = admin.get(&path).await?;
                // Awaiting approval waits for an operator: that is where --wait returns too.
                let moving = matches!(
                    view.state,
                    RolloutState::Running | RolloutState::RollingBack
                );
                if !wait || !moving {
                    return print_as(out, &view, rollout_text);
                }
                if std::time::Instant::now() >= deadline {
                    bail!(
                        "the rollout of {name} is still moving after {timeout_s} s (--timeout-s)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        RolloutCommand::Start { name, actor } => {
            let path = format!("/carveouts/{name}/rollout");
            (name, path, serde_json::json!({ "actor": actor }))
        }
        RolloutCommand::Pause(act) => act.request("pause"),
        RolloutCommand::Resume(act) => act.request("resume"),
        RolloutCommand::Abort(act) => act.request("abort"),
        RolloutCommand::Approve(act) => act.request("approve"),
    };
    let view: RolloutView = admin
        .call(admin.request(reqwest::Method::POST, &path).json(&body))
        .await
        .with_context(|| format!("the rollout of {name}"))?;
    print_as(out, &view, rollout_text)
}

impl RolloutAct {
    fn request(self, action: &str) -> (String, String, Value) {
        let path = format!("/carveouts/{}/rollout/{action}", self.name);
        let body = serde_json::json!({ "reason": self.reason, "actor": self.actor });
        (self.name, path, body)
    }
}

fn rollout_text(view: &RolloutView) -> String {
    let mut out = String::new();
    let state = serde_json::to_value(view.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let _ = writeln!(out, "{}  rollout {state}", view.carveout);
    for (i, step) in view.steps.iter().enumerate() {
        let mark = match i.cmp(&view.step) {
            std::cmp::Ordering::Less => "done",
            std::cmp::Ordering::Equal => "<- now",
            std::cmp::Ordering::Greater => "",
        };
        let _ = writeln!(out, "  {}. {step:<22} {mark}", i + 1);
    }
    let _ = writeln!(
        out,
        "  step {}: {:.1} s of its dwell left, {} of {} sample(s), {} of {} failure(s) tolerated; analysis every {} ms{}",
        view.step + 1,
        view.time_left_ms as f64 / 1000.0,
        view.samples.0,
        view.samples.1,
        view.failures.0,
        view.failures.1,
        view.interval_ms,
        view.controller
            .as_ref()
            .map(|c| format!(", controller {c}"))
            .unwrap_or_else(|| ", NO controller (no replica holds its lease)".to_owned())
    );
    if view.checks.is_empty() {
        out.push_str("  checks: none measured yet\n");
    } else {
        let rows: Vec<Vec<String>> = view
            .checks
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.name),
                    match c.passed {
                        Some(true) => "pass".to_owned(),
                        Some(false) => "FAIL".to_owned(),
                        None => "no data".to_owned(),
                    },
                    c.figure
                        .map(|f| format!("{f:.4}"))
                        .unwrap_or_else(|| "-".to_owned()),
                    format!("{:.4}", c.threshold),
                    c.detail.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["  CHECK", "RESULT", "FIGURE", "THRESHOLD", "DETAIL"],
            &rows,
        ));
    }
    out.push_str("  history:\n");
    for h in &view.history {
        let _ = writeln!(out, "    {}  {}", h.at, h.event);
    }
    out
}

/// JSON with `--json`, else the text `show` makes of it.
fn print_as<T: serde::Serialize>(
    out: Output,
    value: &T,
    show: impl FnOnce(&T) -> String,
) -> anyhow::Result<String> {
    if out.json {
        to_json(value)
    } else {
        Ok(show(value))
    }
}

/// `strangler status`: one carve-out, or every one; again every 2 s with `--watch`.
async fn status(
    admin: &Admin,
    name: Option<String>,
    watch: bool,
    out: Output,
) -> anyhow::Result<String> {
    loop {
        let names = match &name {
            Some(name) => vec![name.clone()],
            None => admin
                .get::<Vec<CarveOutView>>("/carveouts")
                .await?
                .into_iter()
                .map(|c| c.name)
                .collect(),
        };
        let mut statuses = Vec::new();
        for name in &names {
            statuses.push(
                admin
                    .get::<Status>(&format!("/carveouts/{name}/status"))
                    .await?,
            );
        }
        let shown = print_as(out, &statuses, |s| s.iter().map(status_text).collect())?;
        if !watch {
            return Ok(shown);
        }
        println!("{shown}");
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(String::new()),
        }
    }
}

async fn contract(command: ContractCommand) -> anyhow::Result<String> {
    match command {
        ContractCommand::Verify {
            carveout,
            contracts,
            provider,
            state_url,
            teardown,
            junit,
            timeout_ms,
            no_report,
            config,
            admin,
            out,
            actor,
        } => {
            let configured = match &carveout {
                // Both given: the configuration is not needed.
                Some(_) if contracts.is_some() && provider.is_some() => None,
                Some(name) => {
                    project::carveout(config.as_deref(), name)?.and_then(|(_, spec)| spec.contracts)
                }
                None => None,
            };
            let missing = |what: &str| {
                match &carveout {
                Some(name) => anyhow::anyhow!(
                    "no {what} for {name}: pass --{what}, or give the carve-out a contracts section in the proxy configuration (--config FILE; the stack writes .strangler-stack/strangler.toml)"
                ),
                None => anyhow::anyhow!(
                    "pass --{what} (or a carve-out whose contracts section in the proxy configuration names it)"
                ),
            }
            };
            let contracts = contracts
                .or_else(|| configured.as_ref().map(|c| c.dir.clone()))
                .ok_or_else(|| missing("contracts"))?;
            let options = VerifyOptions {
                provider: provider
                    .or_else(|| configured.as_ref().map(|c| c.provider.clone()))
                    .ok_or_else(|| missing("provider"))?,
                state_url: state_url.or_else(|| configured.and_then(|c| c.state_url)),
                teardown,
                timeout: Duration::from_millis(timeout_ms),
            };
            let report = contracts::verify::verify_path(&contracts, &options).await?;
            if let Some(path) = junit {
                std::fs::write(&path, report.junit())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let mut output = print_as(out, &report, contracts::verify::Report::render)?;
            if let Some(name) = carveout.filter(|_| !no_report) {
                let body = VerificationReport {
                    provider: report.provider.clone(),
                    interactions: i64::try_from(report.outcomes.len())?,
                    failures: i64::try_from(report.failures())?,
                    actor,
                };
                let admin = Admin::new(&admin)?;
                let path = format!("/carveouts/{name}/verifications");
                let recorded: Verification = admin
                    .call(admin.request(reqwest::Method::POST, &path).json(&body))
                    .await
                    .context("the verification ran but could not be reported (--no-report to skip reporting)")?;
                if !out.json {
                    let _ = writeln!(
                        output,
                        "reported to the admin API for carve-out {name} ({})",
                        if recorded.passed { "green" } else { "red" }
                    );
                }
            }
            if report.passed() {
                Ok(output)
            } else {
                Err(Failed(output).into())
            }
        }
        ContractCommand::Capture {
            name,
            script_out,
            consumer,
            provider_name,
            admin,
        } => {
            let captures: Vec<Capture> = Admin::new(&admin)?
                .get(&format!("/carveouts/{name}/captures"))
                .await?;
            if captures.is_empty() {
                bail!(
                    "the proxy has captured nothing for {name}: give the carve-out a capture \
                     section (capture = {{ sample_percent = 10 }}) and let traffic flow"
                );
            }
            let requests: Vec<CapturedRequest> = captures
                .into_iter()
                .map(|c| CapturedRequest {
                    method: c.method,
                    path: c.path,
                    query: c.query,
                    headers: c.request_headers,
                    body: c.request_body,
                })
                .collect();
            let provider = provider_name.unwrap_or_else(|| name.clone());
            let script = script_from_captures(&consumer, &provider, &requests);
            let text = toml::to_string(&script).context("cannot write the script as TOML")?;
            std::fs::write(&script_out, text)
                .with_context(|| format!("cannot write {}", script_out.display()))?;
            Ok(format!(
                "wrote {} distinct request(s) from {} capture(s) to {}; add provider states \
                 where a request needs data, then run `strangler contract record --script {}`\n",
                script.interactions.len(),
                requests.len(),
                script_out.display(),
                script_out.display()
            ))
        }
        ContractCommand::Record {
            script,
            provider,
            second,
            state_url,
            time_step_ms,
            out,
            timeout_ms,
        } => {
            let script = Script::load(&script)?;
            let timeout = Duration::from_millis(timeout_ms);
            let time_step = time_step_ms.map(Duration::from_millis);
            let (pact, noise) = match provider {
                Some(provider) => {
                    let options = RecordOptions {
                        provider,
                        second,
                        state_url,
                        second_state_url: None,
                        time_step,
                        timeout,
                    };
                    contracts::record::record(&script, &options).await?
                }
                None => record_from_the_shop(&script, time_step, timeout).await?,
            };
            pact.save(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let mut text = format!(
                "recorded {} interaction(s) into {}\n",
                pact.interactions.len(),
                out.display()
            );
            if noise.is_empty() {
                text.push_str("no noise found: every field is matched exactly\n");
            } else {
                text.push_str("learned noise (matched by rule instead of value):\n");
                for n in &noise {
                    let _ = writeln!(text, "  {}: {}", n.location, n.rule);
                }
            }
            Ok(text)
        }
    }
}

/// Records `script` from two monoliths of this repository's shop, started in process on fresh
/// SQLite files with their provider-state hooks, and stopped afterwards.
async fn record_from_the_shop(
    script: &Script,
    time_step: Option<Duration>,
    timeout: Duration,
) -> anyhow::Result<(contracts::pact::Pact, Vec<contracts::record::Noise>)> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let mut urls = Vec::new();
    let mut stops = Vec::new();
    for name in ["first.db", "second.db"] {
        let shop = monolith::app::Application::build(&monolith::config::ServeConfig {
            listen: "127.0.0.1:0".parse()?,
            database_url: dir.path().join(name).display().to_string(),
            provider_states: true,
            ..monolith::config::ServeConfig::defaults()
        })
        .await
        .context("cannot start a monolith to record from")?;
        urls.push(format!("http://{}", shop.local_addr()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        tokio::spawn(shop.run_until(async move {
            let _ = stopped.await;
        }));
    }
    let options = RecordOptions {
        provider: urls[0].clone(),
        second: Some(urls[1].clone()),
        state_url: Some(format!("{}{}", urls[0], monolith::http::states::PATH)),
        second_state_url: Some(format!("{}{}", urls[1], monolith::http::states::PATH)),
        time_step,
        timeout,
    };
    let recorded = contracts::record::record(script, &options).await;
    for stop in stops {
        let _ = stop.send(());
    }
    recorded
}

fn to_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

fn phase_text(c: &CarveOutView) -> String {
    match c.percent {
        Some(percent) => format!("{} {percent}%", c.phase),
        None => c.phase.clone(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn carveout_table(list: &[CarveOutView]) -> String {
    if list.is_empty() {
        return "no carve-outs\n".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                phase_text(c),
                c.upstream.clone(),
                c.updated_at.clone(),
                c.updated_by.clone(),
                c.reason.clone(),
            ]
        })
        .collect();
    table(
        &["NAME", "PHASE", "SERVICE", "CHANGED", "BY", "REASON"],
        &rows,
    )
}

fn carveout_details(c: &CarveOutView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "name:     {}", c.name);
    let _ = writeln!(out, "phase:    {}", phase_text(c));
    let _ = writeln!(out, "service:  {}", c.upstream);
    let _ = writeln!(
        out,
        "changed:  {} by {} ({})",
        c.updated_at, c.updated_by, c.reason
    );
    let _ = writeln!(out, "version:  {}", c.version);
    let _ = writeln!(out, "routes:");
    for route in &c.routes {
        let _ = writeln!(out, "  {route}");
    }
    out
}

fn audit_table(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no changes recorded\n".to_owned();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.carveout.clone(),
                e.from.clone(),
                e.to.clone(),
                e.actor.clone(),
                if e.forced {
                    "yes".to_owned()
                } else {
                    String::new()
                },
                e.reason.clone(),
            ]
        })
        .collect();
    table(
        &["WHEN", "CARVE-OUT", "FROM", "TO", "BY", "FORCED", "REASON"],
        &rows,
    )
}

fn status_text(status: &Status) -> String {
    let rate = |part: u64, all: u64| {
        if all == 0 {
            "-".to_owned()
        } else {
            format!("{:.1} %", part as f64 * 100.0 / all as f64)
        }
    };
    let t = &status.traffic;
    let mut out = format!(
        "{}  {}{}\n",
        status.name,
        status.phase,
        status
            .fenced_until
            .as_ref()
            .map(|until| format!("  (writes held until {until})"))
            .unwrap_or_default()
    );
    out.push_str(&format!(
        "  traffic (this replica): monolith {} request(s), {} 5xx ({}); service {} request(s), {} 5xx ({}); {} fallback(s)\n",
        t.monolith.0,
        t.monolith.1,
        rate(t.monolith.1, t.monolith.0),
        t.service.0,
        t.service.1,
        rate(t.service.1, t.service.0),
        t.fallbacks
    ));
    out.push_str(&format!(
        "  shadow: {} compared, {} mismatched ({})\n",
        t.shadow_compared,
        t.shadow_mismatched,
        rate(t.shadow_mismatched, t.shadow_compared)
    ));
    match &status.sync {
        None => out.push_str("  sync: none configured\n"),
        Some(sync) => {
            out.push_str(&format!(
                "  sync: {}, capture {}, relay {}, lag {} change(s) / {:.1} s, {} parked key(s)\n",
                sync.direction,
                if sync.capture_installed {
                    "installed"
                } else {
                    "NOT installed"
                },
                if sync.relay_running {
                    "running"
                } else {
                    "NOT running"
                },
                sync.lag.0,
                sync.lag.1,
                sync.parked
            ));
            out.push_str(&format!(
                "    last verify: {}\n",
                sync::last_verify_text(sync.last_verify.as_ref())
            ));
            if let Some(error) = &sync.error {
                out.push_str(&format!("    (could not read all of it: {error})\n"));
            }
        }
    }
    if let Some(r) = &status.rollout {
        let state = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        out.push_str(&format!(
            "  rollout: {state}, step {} of {} ({}), {:.1} s of its dwell left{}\n",
            r.step.0,
            r.step.1,
            r.step_text,
            r.time_left_ms as f64 / 1000.0,
            if r.failing.is_empty() {
                String::new()
            } else {
                format!(", failing: {}", r.failing.join(", "))
            }
        ));
    }
    match &status.contracts {
        None => out.push_str("  contracts: no verification on record\n"),
        Some(c) => out.push_str(&format!(
            "  contracts: {} at {} ({} of {} interaction(s) failed)\n",
            if c.passed { "green" } else { "RED" },
            c.at,
            c.failures,
            c.interactions
        )),
    }
    out.push_str(&format!(
        "  replicas: {} live of {} registered\n",
        status.replicas.0, status.replicas.1
    ));
    out
}

fn replica_table(replicas: &[ReplicaView]) -> String {
    if replicas.is_empty() {
        return "no replica is registered\n".to_owned();
    }
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(i64::MAX);
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            vec![
                r.replica.id.clone(),
                r.replica.address.clone(),
                r.replica.version.clone(),
                format!("{} ms ago", now - r.replica.heartbeat_ms),
                r.replica.applied_epoch.to_string(),
                if r.live { "yes" } else { "NO (lease ran out)" }.to_owned(),
            ]
        })
        .collect();
    table(
        &["ID", "ADDRESS", "VERSION", "HEARTBEAT", "EPOCH", "LIVE"],
        &rows,
    )
}

fn mismatch_text(report: &MismatchReport) -> String {
    let name = &report.carveout;
    let mut out = format!(
        "{name}: {} comparison(s) across the cluster, {} mismatched{}\n",
        report.compared,
        report.mismatched,
        report
            .rate
            .map(|r| format!(" ({:.2} %)", r * 100.0))
            .unwrap_or_default()
    );
    if report.samples.is_empty() && report.by_field.is_empty() {
        out.push_str(&format!("no shadow mismatches recorded for {name}\n"));
        return out;
    }
    let share = |n: i64| match report.mismatched {
        0 => String::new(),
        all => format!("{:.0} % of mismatches", n as f64 * 100.0 / all as f64),
    };
    let group = |title: &str, rows: &[(String, i64)]| {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|(key, n)| vec![format!("  {key}"), n.to_string(), share(*n)])
            .collect();
        table(&[title, "COUNT", "SHARE"], &rows)
    };
    out.push_str(&group("  BY FIELD", &report.by_field));
    out.push_str(&group("  BY ROUTE", &report.by_route));
    out.push_str("  latest samples:\n");
    for m in &report.samples {
        let _ = writeln!(
            out,
            "  {} {} (at {}, {})",
            m.method, m.path, m.at, m.replica
        );
        for d in &m.differences {
            let _ = writeln!(
                out,
                "    {}: monolith {} / service {}",
                d.path, d.expected, d.actual
            );
        }
    }
    out
}
