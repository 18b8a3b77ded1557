//! Configuration: command-line flags (each also an env var) and the TOML file.
//!
//! Quick start needs no file: `--monolith URL` sends everything to the monolith. The file
//! declares the upstreams (each with one or more instances) and the carve-outs:
//!
//! ```toml
//! [proxy]
//! override_header = true          # accept X-Strangler-Target: monolith|service on reads
//! served_by_header = "x-strangler-served-by"  # names the side that answered ("" for none)
//! header_timeout_ms = 10000       # a request head must arrive within this (idle keep-alive too)
//! body_idle_timeout_ms = 30000    # a body (either way) may pause this long between bytes
//! max_connections = 10000         # client connections at once; past it, accepting waits
//! trusted_proxies = ["10.0.0.0/8"] # whose X-Forwarded-*/Forwarded headers are kept
//!
//! [upstreams.monolith]
//! instances = ["http://127.0.0.1:8080"]
//!
//! [upstreams.catalog]
//! instances = ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
//! request_timeout_ms = 5000       # connect_timeout_ms = 1000 by default
//! retries = 1                     # bodiless idempotent requests; budget: 20 % of requests
//! breaker_failures = 5            # consecutive failures that eject an instance ...
//! breaker_open_ms = 5000          # ... for this long, then one probe
//!
//! [[carveouts]]
//! name = "catalog"
//! upstream = "catalog"
//! phase = "canary"
//! percent = 10
//! sticky = { header = "X-User-Id" }   # or { cookie = "session" }, or "client-ip" (default)
//! routes = [
//!   { methods = ["GET", "HEAD", "POST"], path = "/catalog/products" },
//!   { methods = ["GET", "HEAD", "PUT", "DELETE"], path = "/catalog/products/{id}" },
//! ]
//! shadow = { ignore = ["/updated_at"], headers = ["content-type"], in_canary = false }
//! # Its data sync: with one, its writes move only by `strangler cutover` / `rollback`.
//! sync = { mapping = "extracted/catalog/sync.toml", monolith_db = "shop.db", service_db = "catalog.db" }
//! # Its automatic rollout (`strangler rollout start catalog`): steps, each held until its checks
//! # pass for its dwell with enough traffic; back to the safe phase when they fail.
//! rollout = { steps = ["shadow 10m", "canary 1% 5m", "5%", "25%", "50%", "100%"], interval_ms = 1000 }
//! # Its contracts and the service instance to verify them on (`strangler contract verify catalog`).
//! contracts = { dir = "extracted/catalog/contracts", provider = "http://127.0.0.1:8082", state_url = "http://127.0.0.1:8082/_contracts/provider-states" }
//! ```
//!
//! Everything is validated before use ([`Config::load`]): unknown keys, malformed URLs,
//! unknown upstreams, bad phases and ambiguous routes are errors that name the culprit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use http::{Method, Uri};
use serde::Deserialize;

use crate::phase::Phase;
use crate::routes::{Pattern, Route, RouteTable};

/// The `strangler-proxy` command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "strangler-proxy", version, about = "The strangler-fig proxy")]
pub struct ProxyArgs {
    /// Address to serve on.
    #[arg(long, env = "STRANGLER_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// The monolith's URL (overrides `[upstreams.monolith]` of the file).
    #[arg(long, env = "STRANGLER_MONOLITH")]
    pub monolith: Option<String>,
    /// The TOML configuration file (reloaded on SIGHUP).
    #[arg(long, env = "STRANGLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// How long shutdown waits for in-flight requests (seconds).
    #[arg(long, env = "STRANGLER_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Worker threads (default: the CPUs this process may use).
    #[arg(long, env = "STRANGLER_WORKERS")]
    pub workers: Option<usize>,
    /// Address of the admin API (its own listener).
    #[arg(long, env = "STRANGLER_ADMIN_LISTEN", default_value = "127.0.0.1:9001")]
    pub admin_listen: SocketAddr,
    /// A bearer token of the admin API, for an operator named `admin` (a token is required on
    /// a non-loopback address).
    #[arg(long, env = "STRANGLER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Named operator tokens, `name=token` separated by commas; the audit log records the name
    /// of the token used, whatever a request says.
    #[arg(long, env = "STRANGLER_ADMIN_TOKENS", hide_env_values = true)]
    pub admin_tokens: Option<String>,
    /// A file of named operator tokens, one `name=token` a line (`#` starts a comment).
    #[arg(long, env = "STRANGLER_ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<PathBuf>,
    /// The control database: an SQLite path or a postgres:// URL shared by every replica.
    #[arg(
        long,
        env = "STRANGLER_CONTROL_DB",
        default_value = "strangler-control.db"
    )]
    pub control_db: String,
    /// How often each replica reads the control database for changes (ms).
    #[arg(long, env = "STRANGLER_SYNC_INTERVAL_MS", default_value_t = 200)]
    pub sync_interval_ms: u64,
    /// How long a replica's routing view holds without a successful read of the control
    /// database (ms); past it the replica answers carve-out writes 503 until it reads again.
    #[arg(long, env = "STRANGLER_ROUTING_LEASE_MS", default_value_t = 2000)]
    pub routing_lease_ms: u64,
}

impl ProxyArgs {
    /// The defaults, as if no flag or variable were given.
    pub fn defaults() -> ProxyArgs {
        ProxyArgs::parse_from(["strangler-proxy"])
    }
}

/// The TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    proxy: ProxySection,
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    carveouts: Vec<CarveOutSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ProxySection {
    override_header: bool,
    served_by_header: String,
    header_timeout_ms: u64,
    body_idle_timeout_ms: u64,
    max_connections: usize,
    trusted_proxies: Vec<String>,
    max_body_bytes: u64,
    max_header_bytes: usize,
    shadow_concurrency: usize,
    shadow_max_body_bytes: usize,
    mismatch_samples: usize,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            override_header: false,
            served_by_header: "x-strangler-served-by".to_owned(),
            header_timeout_ms: 10_000,
            body_idle_timeout_ms: 30_000,
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            shadow_concurrency: 64,
            shadow_max_body_bytes: 1024 * 1024,
            mismatch_samples: 100,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamSection {
    instances: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout")]
    request_timeout_ms: u64,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_retry_budget")]
    retry_budget_percent: u32,
    #[serde(default = "default_retry_floor")]
    retry_min_per_second: u32,
    #[serde(default = "default_breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "default_breaker_open")]
    breaker_open_ms: u64,
}

fn default_retries() -> u32 {
    1
}

fn default_retry_budget() -> u32 {
    20
}

fn default_retry_floor() -> u32 {
    10
}

fn default_breaker_failures() -> u32 {
    5
}

fn default_breaker_open() -> u64 {
    5_000
}

fn default_connect_timeout() -> u64 {
    1_000
}

fn default_request_timeout() -> u64 {
    30_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CarveOutSection {
    name: String,
    upstream: String,
    phase: String,
    percent: Option<f64>,
    #[serde(default)]
    sticky: StickySection,
    routes: Vec<RouteSection>,
    #[serde(default)]
    shadow: ShadowSection,
    #[serde(default = "yes")]
    require_contracts: bool,
    capture: Option<CaptureSection>,
    sync: Option<SyncSection>,
    contracts: Option<ContractsSection>,
    rollout: Option<crate::rollout::PlanSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractsSection {
    dir: PathBuf,
    provider: String,
    state_url: Option<String>,
}

/// Where a carve-out's contracts are and which instance of its service verifies them (one
/// whose provider-state hook may rewrite its data: not the one serving traffic). The proxy
/// itself does not use it; `strangler contract verify NAME` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractsSpec {
    /// The pact files (a folder or one file).
    pub dir: PathBuf,
    /// The base URL of the instance to verify.
    pub provider: String,
    /// Its provider-state hook, if the contracts name states.
    pub state_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncSection {
    mapping: PathBuf,
    monolith_db: String,
    service_db: String,
    #[serde(default = "default_max_lag_events")]
    max_lag_events: i64,
    #[serde(default = "default_max_lag_seconds")]
    max_lag_seconds: f64,
    #[serde(default = "default_fence_ms")]
    fence_ms: u64,
    #[serde(default = "default_retire_dwell_s")]
    retire_dwell_s: u64,
}

fn default_retire_dwell_s() -> u64 {
    86_400
}

fn default_max_lag_events() -> i64 {
    1000
}

fn default_max_lag_seconds() -> f64 {
    5.0
}

fn default_fence_ms() -> u64 {
    5000
}

/// A carve-out's data sync, as the control plane needs it to move the carve-out's writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncSpec {
    /// The mapping file and both databases.
    pub setup: strangler_sync::sides::SyncSetup,
    /// Most changes the relay may be behind for a move to start.
    pub max_lag_events: i64,
    /// Most seconds the relay may be behind for a move to start.
    pub max_lag_seconds: f64,
    /// Longest the writes may be held during a move.
    pub fence: Duration,
    /// How long the carve-out must have been `extracted`, with no roll-back, to be retired.
    pub retire_dwell: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureSection {
    sample_percent: f64,
    #[serde(default = "default_capture_body")]
    max_body_bytes: usize,
    #[serde(default = "default_capture_keep")]
    keep: usize,
    #[serde(default)]
    redact_headers: Vec<String>,
    #[serde(default)]
    redact_fields: Vec<String>,
}

fn default_capture_body() -> usize {
    64 * 1024
}

fn default_capture_keep() -> usize {
    200
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StickySection {
    #[default]
    ClientIp,
    #[serde(untagged)]
    Keyed(StickyKey),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum StickyKey {
    Header(String),
    Cookie(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSection {
    #[serde(default)]
    methods: Vec<String>,
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowSection {
    #[serde(default)]
    ignore: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    in_canary: bool,
}

/// Who a caller is, for the sticky canary split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The value of this request header (lower-cased name); the client IP when absent.
    Header(http::HeaderName),
    /// The value of this cookie; the client IP when absent.
    Cookie(String),
    /// The client IP.
    ClientIp,
}

/// An upstream and its instances.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// Its name in the file (`monolith` for the monolith).
    pub name: String,
    /// Base URLs of its instances (`http://host:port`).
    pub instances: Vec<Uri>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to receiving the response head.
    pub request_timeout: Duration,
    /// Retry policy and budget.
    pub retry: crate::resilience::RetrySettings,
    /// Circuit breaker of each instance.
    pub breaker: crate::resilience::BreakerSettings,
}

/// What to compare between the monolith's and the service's response to a shadowed read.
#[derive(Debug, Clone, Default)]
pub struct ShadowSpec {
    /// JSON pointers whose values may differ (e.g. `/updated_at`).
    pub ignore: Vec<String>,
    /// Headers that must be equal (lower-cased).
    pub headers: Vec<String>,
    /// Also shadow the monolith-served reads of a canary.
    pub in_canary: bool,
}

/// A carve-out as configured.
#[derive(Debug, Clone)]
pub struct CarveOutSpec {
    /// Its name.
    pub name: String,
    /// Index of its service in [`Config::upstreams`].
    pub upstream: usize,
    /// Its phase at start-up (the control plane may change it).
    pub phase: Phase,
    /// How callers are told apart for the canary split.
    pub sticky: Sticky,
    /// Shadow comparison settings.
    pub shadow: ShadowSpec,
    /// Whether going to `extracted` needs a green contract verification on record.
    pub require_contracts: bool,
    /// Traffic capture for contracts (opt-in).
    pub capture: Option<crate::capture::CaptureSpec>,
    /// Its data sync, if it has one: then its writes move only by the guarded procedure.
    pub sync: Option<SyncSpec>,
    /// Its contracts, for `strangler contract verify NAME`.
    pub contracts: Option<ContractsSpec>,
    /// Its rollout plan, for `strangler rollout start NAME`.
    pub rollout: Option<crate::rollout::Plan>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Every upstream; index 0 is the monolith.
    pub upstreams: Vec<UpstreamSpec>,
    /// Every carve-out.
    pub carveouts: Vec<CarveOutSpec>,
    /// The routes of every carve-out.
    pub routes: RouteTable,
    /// Whether `X-Strangler-Target` is honoured.
    pub override_header: bool,
    /// The response header naming the upstream that served a request (`None`: not added).
    pub served_by_header: Option<http::HeaderName>,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time for a request head to arrive, from the connection's start or the previous response.
    pub header_timeout: Duration,
    /// Longest pause between two parts of a body, in either direction.
    pub body_idle_timeout: Duration,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// Peers whose forwarding headers are kept (a client's own are replaced).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Most shadow comparisons in flight; more are dropped (and counted).
    pub shadow_concurrency: usize,
    /// Largest response body a shadow comparison buffers.
    pub shadow_max_body_bytes: usize,
    /// How many mismatch samples are kept per carve-out.
    pub mismatch_samples: usize,
    /// Shutdown drain bound.
    pub shutdown_timeout: Duration,
    /// Worker threads.
    pub workers: Option<usize>,
    /// Admin API address.
    pub admin_listen: SocketAddr,
    /// The admin API's operators and their tokens (none: an open API, allowed on loopback only).
    pub admin_tokens: Vec<OperatorToken>,
    /// Control database URL.
    pub control_db: String,
    /// Control database poll interval.
    pub sync_interval: Duration,
    /// The routing view's lease.
    pub routing_lease: Duration,
}

impl Config {
    /// Reads the file named by the arguments (if any) and validates everything.
    pub fn load(args: &ProxyArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut config = Self::from_file(file, args).with_context(|| match &args.config {
            Some(path) => format!("invalid configuration in {}", path.display()),
            None => "invalid configuration".to_owned(),
        })?;
        if let Some(folder) = args.config.as_deref().and_then(Path::parent) {
            config.resolve_paths(folder);
        }
        Ok(config)
    }

    /// Makes the relative paths the file names (mapping files, SQLite databases, contract
    /// folders) relative to `folder`, the file's own, so the file means the same from any
    /// working folder.
    fn resolve_paths(&mut self, folder: &Path) {
        let join = |path: &Path| {
            if path.is_relative() {
                folder.join(path)
            } else {
                path.to_path_buf()
            }
        };
        let join_db = |db: &str| {
            if db.contains("://") || db.starts_with("sqlite:") || db == ":memory:" {
                db.to_owned()
            } else {
                join(Path::new(db)).display().to_string()
            }
        };
        for carveout in &mut self.carveouts {
            if let Some(sync) = &mut carveout.sync {
                sync.setup.mapping = join(&sync.setup.mapping);
                sync.setup.monolith_db = join_db(&sync.setup.monolith_db);
                sync.setup.service_db = join_db(&sync.setup.service_db);
            }
            if let Some(contracts) = &mut carveout.contracts {
                contracts.dir = join(&contracts.dir);
            }
        }
    }

    /// Parses and validates TOML text (as [`Config::load`] would read it from a file).
    pub fn from_toml(text: &str, args: &ProxyArgs) -> anyhow::Result<Config> {
        let file: FileConfig = toml::from_str(text)?;
        Self::from_file(file, args)
    }

    fn from_file(mut file: FileConfig, args: &ProxyArgs) -> anyhow::Result<Config> {
        if let Some(monolith) = &args.monolith {
            file.upstreams.insert(
                "monolith".to_owned(),
                UpstreamSection {
                    instances: vec![monolith.clone()],
                    connect_timeout_ms: default_connect_timeout(),
                    request_timeout_ms: default_request_timeout(),
                    retries: default_retries(),
                    retry_budget_percent: default_retry_budget(),
                    retry_min_per_second: default_retry_floor(),
                    breaker_failures: default_breaker_failures(),
                    breaker_open_ms: default_breaker_open(),
                },
            );
        }
        let Some(monolith) = file.upstreams.remove("monolith") else {
            bail!("no monolith: pass --monolith URL or declare [upstreams.monolith]");
        };
        let mut upstreams = vec![upstream("monolith", &monolith)?];
        for (name, section) in file.upstreams {
            upstreams.push(upstream(&name, &section)?);
        }

        let mut carveouts = Vec::new();
        let mut routes = Vec::new();
        for (index, section) in file.carveouts.into_iter().enumerate() {
            let name = section.name.clone();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("carve-out name {name:?}: use letters, digits, - and _");
            }
            if carveouts.iter().any(|c: &CarveOutSpec| c.name == name) {
                bail!("carve-out {name} is declared twice");
            }
            let upstream = upstreams
                .iter()
                .position(|u| u.name == section.upstream)
                .with_context(|| {
                    format!("carve-out {name}: unknown upstream {:?}", section.upstream)
                })?;
            if upstream == 0 {
                bail!("carve-out {name}: its upstream must be a service, not the monolith");
            }
            let phase = Phase::from_parts(&section.phase, section.percent)
                .map_err(|e| anyhow::anyhow!("carve-out {name}: {e}"))?;
            if section.routes.is_empty() {
                bail!("carve-out {name} has no routes");
            }
            for route in section.routes {
                let methods = route
                    .methods
                    .iter()
                    .map(|m| {
                        Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                            .with_context(|| format!("carve-out {name}: invalid method {m:?}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let pattern =
                    Pattern::parse(&route.path).with_context(|| format!("carve-out {name}"))?;
                routes.push(Route {
                    methods,
                    pattern,
                    carveout: index,
                    carveout_name: name.clone(),
                });
            }
            let sticky = match section.sticky {
                StickySection::ClientIp => Sticky::ClientIp,
                StickySection::Keyed(StickyKey::Header(header)) => Sticky::Header(
                    http::HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                        .with_context(|| {
                            format!("carve-out {name}: invalid sticky header {header:?}")
                        })?,
                ),
                StickySection::Keyed(StickyKey::Cookie(cookie)) => Sticky::Cookie(cookie),
            };
            for pointer in &section.shadow.ignore {
                if !pointer.is_empty() && !pointer.starts_with('/') {
                    bail!(
                        "carve-out {name}: shadow ignore {pointer:?} is not a JSON pointer (/a/b)"
                    );
                }
            }
            let capture = match section.capture {
                None => None,
                Some(c) => Some(crate::capture::CaptureSpec {
                    sample_basis_points: crate::phase::basis_points(c.sample_percent)
                        .map_err(|e| anyhow::anyhow!("carve-out {name}: capture: {e}"))?,
                    max_body_bytes: c.max_body_bytes,
                    keep: c.keep.max(1),
                    redact_headers: c.redact_headers,
                    redact_fields: c.redact_fields,
                }),
            };
            let sync = match section.sync {
                None => None,
                Some(sync) => {
                    if sync.fence_ms == 0 || sync.fence_ms > 30_000 {
                        bail!("carve-out {name}: sync.fence_ms must be between 1 and 30000");
                    }
                    Some(SyncSpec {
                        setup: strangler_sync::sides::SyncSetup {
                            carveout: name.clone(),
                            mapping: sync.mapping,
                            monolith_db: sync.monolith_db,
                            service_db: sync.service_db,
                        },
                        max_lag_events: sync.max_lag_events,
                        max_lag_seconds: sync.max_lag_seconds,
                        fence: Duration::from_millis(sync.fence_ms),
                        retire_dwell: Duration::from_secs(sync.retire_dwell_s),
                    })
                }
            };
            let contracts = match section.contracts {
                None => None,
                Some(c) => {
                    for url in std::iter::once(&c.provider).chain(&c.state_url) {
                        let uri: Uri = url.parse().map_err(|e| {
                            anyhow::anyhow!(
                                "carve-out {name}: contracts: {url:?} is not a URL: {e}"
                            )
                        })?;
                        if uri.scheme().is_none() || uri.host().is_none() {
                            bail!("carve-out {name}: contracts: {url:?} is not an http:// URL");
                        }
                    }
                    Some(ContractsSpec {
                        dir: c.dir,
                        provider: c.provider,
                        state_url: c.state_url,
                    })
                }
            };
            let rollout = section
                .rollout
                .as_ref()
                .map(crate::rollout::Plan::from_section)
                .transpose()
                .map_err(|e| anyhow::anyhow!("carve-out {name}: rollout: {e}"))?;
            carveouts.push(CarveOutSpec {
                sync,
                contracts,
                rollout,
                name,
                upstream,
                phase,
                sticky,
                require_contracts: section.require_contracts,
                capture,
                shadow: ShadowSpec {
                    ignore: section.shadow.ignore,
                    headers: section
                        .shadow
                        .headers
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    in_canary: section.shadow.in_canary,
                },
            });
        }
        let routes = RouteTable::new(routes)?;
        let proxy = file.proxy;
        let admin_tokens = operator_tokens(args)?;
        if admin_tokens.is_empty() && !args.admin_listen.ip().is_loopback() {
            bail!(
                "the admin API on {} is not loopback: set --admin-token (STRANGLER_ADMIN_TOKEN) or named operator tokens (--admin-tokens, --admin-tokens-file)",
                args.admin_listen
            );
        }
        if proxy.max_header_bytes < 8192 {
            bail!("max_header_bytes must be at least 8192");
        }
        let served_by_header = match proxy.served_by_header.trim() {
            "" => None,
            name => Some(
                http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(
                    |_| anyhow::anyhow!("served_by_header {name:?} is not a header name"),
                )?,
            ),
        };
        if proxy.header_timeout_ms == 0 || proxy.body_idle_timeout_ms == 0 {
            bail!("header_timeout_ms and body_idle_timeout_ms must be at least 1");
        }
        if args.routing_lease_ms < 2 * args.sync_interval_ms.max(10) {
            bail!(
                "--routing-lease-ms ({}) must be at least two polls (--sync-interval-ms {})",
                args.routing_lease_ms,
                args.sync_interval_ms
            );
        }
        if proxy.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        let trusted_proxies = proxy
            .trusted_proxies
            .iter()
            .map(|net| {
                net.parse::<ipnet::IpNet>()
                    .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "trusted_proxies: {net:?} is not an address or a CIDR block (10.0.0.0/8)"
                        )
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Config {
            listen: args.listen,
            upstreams,
            carveouts,
            routes,
            override_header: proxy.override_header,
            served_by_header,
            max_body_bytes: proxy.max_body_bytes,
            max_header_bytes: proxy.max_header_bytes,
            header_timeout: Duration::from_millis(proxy.header_timeout_ms),
            body_idle_timeout: Duration::from_millis(proxy.body_idle_timeout_ms),
            max_connections: proxy.max_connections,
            trusted_proxies,
            shadow_concurrency: proxy.shadow_concurrency,
            shadow_max_body_bytes: proxy.shadow_max_body_bytes,
            mismatch_samples: proxy.mismatch_samples.max(1),
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
            workers: args.workers,
            admin_listen: args.admin_listen,
            admin_tokens,
            control_db: args.control_db.clone(),
            sync_interval: Duration::from_millis(args.sync_interval_ms.max(10)),
            routing_lease: Duration::from_millis(args.routing_lease_ms),
        })
    }
}

/// An admin API operator: the name the audit log records, and the bearer token that proves it.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken {
    /// The operator's name.
    pub name: String,
    /// The token.
    pub token: String,
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A token is never printed.
        f.debug_struct("OperatorToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The operators of `--admin-token`, `--admin-tokens` and `--admin-tokens-file`, checked: no
/// blank or spaced token, names of letters, digits, `.`, `-` and `_`, no name or token twice.
fn operator_tokens(args: &ProxyArgs) -> anyhow::Result<Vec<OperatorToken>> {
    let mut pairs: Vec<(String, String, String)> = Vec::new();
    if let Some(token) = &args.admin_token {
        pairs.push((
            "admin".to_owned(),
            token.clone(),
            "--admin-token".to_owned(),
        ));
    }
    if let Some(list) = &args.admin_tokens {
        for entry in list.split(',').filter(|e| !e.trim().is_empty()) {
            let (name, token) = entry.split_once('=').with_context(|| {
                "--admin-tokens: each entry is name=token (alice=s3cret,bob=t0ken)".to_owned()
            })?;
            pairs.push((
                name.trim().to_owned(),
                token.trim().to_owned(),
                "--admin-tokens".to_owned(),
            ));
        }
    }
    if let Some(path) = &args.admin_tokens_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the admin tokens file {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let place = format!("{} line {}", path.display(), n + 1);
            let (name, token) = line
                .split_once('=')
                .with_context(|| format!("{place}: expected name=token"))?;
            pairs.push((name.trim().to_owned(), token.trim().to_owned(), place));
        }
    }
    let mut tokens: Vec<OperatorToken> = Vec::new();
    for (name, token, place) in pairs {
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            bail!("{place}: the token of {name:?} is blank or has spaces; refusing an admin API anyone could use");
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
            bail!("{place}: operator name {name:?}: use 1 to 64 letters, digits, '.', '-' or '_'");
        }
        if tokens.iter().any(|t| t.name == name) {
            bail!("{place}: operator {name} has two tokens");
        }
        if tokens.iter().any(|t| t.token == token) {
            bail!("{place}: two operators share a token; each needs its own");
        }
        tokens.push(OperatorToken { name, token });
    }
    Ok(tokens)
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
}

fn upstream(name: &str, section: &UpstreamSection) -> anyhow::Result<UpstreamSpec> {
    if section.instances.is_empty() {
        bail!("upstream {name} has no instances");
    }
    let instances = section
        .instances
        .iter()
        .map(|url| {
            let uri: Uri = url
                .trim_end_matches('/')
                .parse()
                .with_context(|| format!("upstream {name}: invalid URL {url:?}"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                bail!("upstream {name}: {url:?} must be an http://host:port URL");
            }
            if uri.path() != "/" && !uri.path().is_empty() {
                bail!("upstream {name}: {url:?} must not have a path");
            }
            Ok(uri)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if section.breaker_failures == 0 {
        bail!("upstream {name}: breaker_failures must be at least 1");
    }
    Ok(UpstreamSpec {
        name: name.to_owned(),
        instances,
        connect_timeout: Duration::from_millis(section.connect_timeout_ms),
        request_timeout: Duration::from_millis(section.request_timeout_ms),
        retry: crate::resilience::RetrySettings {
            attempts: section.retries,
            percent: section.retry_budget_percent,
            min_per_second: section.retry_min_per_second,
        },
        breaker: crate::resilience::BreakerSettings {
            failures: section.breaker_failures,
            open_for: Duration::from_millis(section.breaker_open_ms),
            // A probe settles within its call's own bounds; past them, something is wrong.
            probe_timeout: Duration::from_millis(
                section
                    .connect_timeout_ms
                    .saturating_add(section.request_timeout_ms)
                    .saturating_add(1_000),
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ProxyArgs {
        ProxyArgs::parse_from(["strangler-proxy"])
    }

    const FULL: &str = r#"
        [proxy]
        override_header = true
        [upstreams.monolith]
        instances = ["http://127.0.0.1:8080"]
        [upstreams.catalog]
        instances = ["http://127.0.0.1:8081", "http://127.0.0.1:8082/"]
        request_timeout_ms = 500
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "canary"
        percent = 12.5
        sticky = { header = "X-User-Id" }
        routes = [{ methods = ["get", "HEAD"], path = "/catalog/products/{id}" }]
        shadow = { ignore = ["/updated_at"], headers = ["Content-Type"] }
        capture = { sample_percent = 2.5, redact_fields = ["/card/number"] }
        require_contracts = false
    "#;

    #[test]
    fn a_full_file_is_read() {
        let config = Config::from_toml(FULL, &args()).unwrap();
        assert_eq!(config.upstreams[0].name, "monolith");
        assert_eq!(config.upstreams[1].instances.len(), 2);
        assert_eq!(
            config.upstreams[1].request_timeout,
            Duration::from_millis(500)
        );
        let catalog = &config.carveouts[0];
        assert_eq!(catalog.phase, Phase::Canary { basis_points: 1250 });
        assert_eq!(
            catalog.sticky,
            Sticky::Header(http::HeaderName::from_static("x-user-id"))
        );
        assert_eq!(catalog.shadow.headers, ["content-type"]);
        let capture = catalog.capture.as_ref().unwrap();
        assert_eq!(capture.sample_basis_points, 250);
        assert_eq!((capture.keep, capture.max_body_bytes), (200, 64 * 1024));
        assert!(!catalog.require_contracts);
        assert!(config.override_header);
        let route = config
            .routes
            .find(&Method::GET, "/catalog/products/3")
            .unwrap();
        assert_eq!(route.carveout, 0);
        assert!(config
            .routes
            .find(&Method::PUT, "/catalog/products/3")
            .is_none());
    }

    #[test]
    fn a_sync_section_is_read_with_its_defaults() {
        let text = FULL.replace(
            "require_contracts = false",
            "require_contracts = false\nsync = { mapping = \"m.toml\", monolith_db = \"shop.db\", service_db = \"c.db\" }",
        );
        let config = Config::from_toml(&text, &args()).unwrap();
        let sync = config.carveouts[0].sync.as_ref().unwrap();
        assert_eq!(sync.setup.carveout, "catalog");
        assert_eq!(sync.setup.monolith_db, "shop.db");
        assert_eq!(
            (sync.max_lag_events, sync.fence),
            (1000, Duration::from_millis(5000))
        );
        assert_eq!(sync.retire_dwell, Duration::from_secs(86_400));
        let bad = text.replace(
            "service_db = \"c.db\"",
            "service_db = \"c.db\", fence_ms = 0",
        );
        let err = format!("{:#}", Config::from_toml(&bad, &args()).unwrap_err());
        assert!(
            err.contains("fence_ms must be between 1 and 30000"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_in_a_file_are_read_from_its_folder() {
        let text = FULL.replace(
            "require_contracts = false",
            "require_contracts = false\nsync = { mapping = \"extracted/catalog/sync.toml\", monolith_db = \"shop.db\", service_db = \"postgres://db/catalog\" }\ncontracts = { dir = \"pacts\", provider = \"http://127.0.0.1:1\" }",
        );
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("strangler.toml");
        std::fs::write(&file, text).unwrap();
        let config = Config::load(&ProxyArgs {
            config: Some(file),
            ..args()
        })
        .unwrap();
        let sync = config.carveouts[0].sync.as_ref().unwrap();
        assert_eq!(
            sync.setup.mapping,
            folder.path().join("extracted/catalog/sync.toml")
        );
        assert_eq!(
            sync.setup.monolith_db,
            folder.path().join("shop.db").display().to_string()
        );
        assert_eq!(sync.setup.service_db, "postgres://db/catalog");
        let contracts = config.carveouts[0].contracts.as_ref().unwrap();
        assert_eq!(contracts.dir, folder.path().join("pacts"));
    }

    #[test]
    fn the_example_file_is_valid() {
        let example = ProxyArgs {
            config: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("strangler.example.toml")),
            ..args()
        };
        let config = Config::load(&example).unwrap();
        assert_eq!(config.carveouts[0].name, "catalog");
        assert!(
            config.carveouts[0].require_contracts,
            "contracts are required by default"
        );
        assert!(config.carveouts[0].capture.is_none(), "capture is opt-in");
        assert_eq!(config.routes.routes().len(), 2);
    }

    #[test]
    fn the_example_s_rollout_line_shows_the_defaults() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("strangler.example.toml"),
        )
        .unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("# rollout = "))
            .expect("the example shows a rollout");
        let shown: crate::rollout::PlanSection = toml::from_str(&format!("x = {line}"))
            .map(
                |t: std::collections::BTreeMap<String, crate::rollout::PlanSection>| t["x"].clone(),
            )
            .unwrap();
        assert_eq!(
            crate::rollout::Plan::from_section(&shown),
            crate::rollout::Plan::from_section(&crate::rollout::PlanSection::default())
        );
    }

    #[test]
    fn quick_start_needs_only_the_monolith() {
        let quick =
            ProxyArgs::parse_from(["strangler-proxy", "--monolith", "http://127.0.0.1:8080"]);
        let config = Config::load(&quick).unwrap();
        assert_eq!(config.upstreams.len(), 1);
        assert!(config.carveouts.is_empty());
        assert!(format!("{:#}", Config::load(&args()).unwrap_err()).contains("no monolith"));
    }

    #[test]
    fn the_admin_api_needs_a_token_off_loopback() {
        let open = ProxyArgs::parse_from([
            "strangler-proxy",
            "--monolith",
            "http://127.0.0.1:1",
            "--admin-listen",
            "0.0.0.0:9001",
        ]);
        assert!(format!("{:#}", Config::load(&open).unwrap_err()).contains("--admin-token"));
        let guarded = ProxyArgs {
            admin_token: Some("s3cret".to_owned()),
            ..open
        };
        let tokens = Config::load(&guarded).unwrap().admin_tokens;
        assert_eq!(
            (tokens[0].name.as_str(), tokens[0].token.as_str()),
            ("admin", "s3cret")
        );
        assert!(
            !format!("{tokens:?}").contains("s3cret"),
            "tokens are never printed"
        );
    }

    #[test]
    fn operator_tokens_come_named_and_blank_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# operators\ncarol = t0k-carol\n\n").unwrap();
        let named = ProxyArgs {
            monolith: Some("http://127.0.0.1:1".to_owned()),
            admin_tokens: Some("alice=t0k-alice, bob=t0k-bob".to_owned()),
            admin_tokens_file: Some(file.clone()),
            ..args()
        };
        let names: Vec<String> = Config::load(&named)
            .unwrap()
            .admin_tokens
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        for (bad, message) in [
            (
                ProxyArgs {
                    admin_token: Some(String::new()),
                    ..named.clone()
                },
                "blank",
            ),
            (
                ProxyArgs {
                    admin_token: Some("   ".to_owned()),
                    ..named.clone()
                },
                "blank",
            ),
            (
                ProxyArgs {
                    admin_tokens: Some("alice=".to_owned()),
                    ..named.clone()
                },
                "blank",
            ),
            (
                ProxyArgs {
                    admin_tokens: Some("alice".to_owned()),
                    ..named.clone()
                },
                "name=token",
            ),
            (
                ProxyArgs {
                    admin_tokens: Some("alice=a,alice=b".to_owned()),
                    ..named.clone()
                },
                "two tokens",
            ),
            (
                ProxyArgs {
                    admin_tokens: Some("alice=same,bob=same".to_owned()),
                    ..named.clone()
                },
                "share a token",
            ),
            (
                ProxyArgs {
                    admin_tokens: Some("al ice=x".to_owned()),
                    ..named.clone()
                },
                "operator name",
            ),
            (
                ProxyArgs {
                    admin_tokens_file: Some(dir.path().join("missing")),
                    ..named.clone()
                },
                "cannot read",
            ),
        ] {
            let err = format!("{:#}", Config::load(&bad).unwrap_err());
            assert!(err.contains(message), "expected {message:?} in {err:?}");
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            (
                FULL.replace("percent = 12.5", "percent = 120"),
                "percent must be between 0 and 100",
            ),
            (
                FULL.replace("upstream = \"catalog\"", "upstream = \"nope\""),
                "unknown upstream",
            ),
            (
                FULL.replace("phase = \"canary\"", "phase = \"live\""),
                "unknown phase",
            ),
            (
                FULL.replace("http://127.0.0.1:8081", "ftp://x"),
                "must be an http://host:port URL",
            ),
            (
                FULL.replace("/catalog/products/{id}", "catalog"),
                "must start with /",
            ),
            (
                FULL.replace("override_header", "overide_header"),
                "unknown field",
            ),
            (
                FULL.replace("\"/updated_at\"", "\"updated_at\""),
                "not a JSON pointer",
            ),
            (
                FULL.replace("sample_percent = 2.5", "sample_percent = 101"),
                "capture: percent must be between 0 and 100",
            ),
            (
                FULL.replace(
                    "routes = [{",
                    "routes = [{ methods = [\"GET\"], path = \"/catalog/products/{sku}\" }, {",
                ),
                "ambiguous routes",
            ),
        ];
        for (text, message) in cases {
            let err = format!("{:#}", Config::from_toml(&text, &args()).unwrap_err());
            assert!(err.contains(message), "expected {message:?} in {err:?}");
        }
    }
}
