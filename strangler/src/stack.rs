//! `strangler stack` and `strangler demo`: both carve-outs on SQLite in one process — the
//! monolith, the catalog service, the inventory service (the orders saga reaching it by message
//! once it owns its writes: the embedded transport, or NATS JetStream with `--transport`), the
//! proxy with its admin API, and the data sync relays — and a walk of one carve-out through
//! every phase with live traffic.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::{json, Value};
use sqlkit::{Db, DbOptions};
use sqlx::Row as _;
use strangler_sync::backfill::Backfill;
use strangler_sync::mapping::Mapping;
use strangler_sync::relay::Relay;
use strangler_sync::{capture, verify};

use crate::cutover::CutoverArgs;
use crate::{Admin, AdminArgs};

/// Where the stack keeps its databases and listens.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// Folder of the SQLite databases (created if missing).
    #[arg(long, default_value = ".strangler-stack")]
    pub dir: PathBuf,
    /// The proxy's address (the one clients use).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// The proxy's admin API.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub admin_listen: SocketAddr,
    /// The monolith's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub monolith_listen: SocketAddr,
    /// The catalog service's address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub service_listen: SocketAddr,
    /// A second catalog service, on its own database with its provider-state hook, for
    /// verifying contracts (the hook rewrites data, so not the instance serving traffic).
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub contracts_listen: SocketAddr,
    /// The inventory service's address.
    #[arg(long, default_value = "127.0.0.1:8084")]
    pub inventory_listen: SocketAddr,
    /// A second inventory service for verifying contracts (its own database and messages).
    #[arg(long, default_value = "127.0.0.1:8085")]
    pub inventory_contracts_listen: SocketAddr,
    /// The orders saga's message transport once the inventory is carved out: `embedded` (in
    /// this process) or NATS JetStream (`nats://127.0.0.1:4222`).
    #[arg(long, default_value = "embedded")]
    pub transport: String,
    /// Products to seed the monolith with, when its catalog is empty.
    #[arg(long, default_value_t = 200)]
    pub seed_products: u64,
    /// The databases, when not SQLite files in `--dir`.
    #[command(flatten)]
    pub dbs: StackDbs,
}

/// The stack's databases, each a SQLite file in the stack's folder unless named (a
/// postgres:// URL, say).
#[derive(Debug, Clone, Default, Args)]
pub struct StackDbs {
    /// The monolith's database (default: `shop.db` in the stack's folder).
    #[arg(long = "monolith-db", env = "STRANGLER_STACK_MONOLITH_DB")]
    pub monolith: Option<String>,
    /// The catalog service's database (default: `catalog.db`).
    #[arg(long = "service-db", env = "STRANGLER_STACK_SERVICE_DB")]
    pub service: Option<String>,
    /// The proxy's control database (default: `control.db`).
    #[arg(long = "control-db", env = "STRANGLER_STACK_CONTROL_DB")]
    pub control: Option<String>,
    /// The inventory service's database (default: `inventory.db`).
    #[arg(long = "inventory-db", env = "STRANGLER_STACK_INVENTORY_DB")]
    pub inventory: Option<String>,
}

/// A carve-out of the stack with its data sync.
#[derive(Debug, Clone)]
struct Synced {
    name: &'static str,
    service_db: String,
    mapping: PathBuf,
}

/// `url` with its `?namespace=` replaced by `namespace`.
fn in_namespace(url: &str, namespace: &str) -> String {
    let base = url.split_once("?namespace=").map_or(url, |(base, _)| base);
    format!("{base}?namespace={namespace}")
}

/// The running stack.
pub struct Stack {
    /// The proxy's base URL.
    pub proxy: String,
    /// The admin API's base URL.
    pub admin: String,
    /// The monolith's base URL.
    pub monolith: String,
    /// The catalog service's base URL.
    pub service: String,
    /// The base URL of the catalog service that contracts are verified on.
    pub contracts: String,
    /// The inventory service's base URL.
    pub inventory: String,
    /// The base URL of the inventory service that contracts are verified on.
    pub inventory_contracts: String,
    monolith_db: String,
    synced: Vec<Synced>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Set to true to stop the relays.
    relays_stop: tokio::sync::watch::Sender<bool>,
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn serve<F>(
    stop: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    run: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> F,
) where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    stop.push(tx);
    let task = run(rx);
    tokio::spawn(async move {
        if let Err(err) = task.await {
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
        }
    });
}

impl Stack {
    /// Starts everything; the catalog carve-out begins in `monolith` with forward sync running.
    pub async fn start(args: &StackArgs) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("cannot create {}", args.dir.display()))?;
        // Absolute, so the configuration the stack writes works from any folder.
        let dir = std::path::absolute(&args.dir)
            .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
        let path = |name: &str| dir.join(name).display().to_string();
        let pick = |url: &Option<String>, file: &str| url.clone().unwrap_or_else(|| path(file));
        let (monolith_db, service_db, control_db, inventory_db) = (
            pick(&args.dbs.monolith, "shop.db"),
            pick(&args.dbs.service, "catalog.db"),
            pick(&args.dbs.control, "control.db"),
            pick(&args.dbs.inventory, "inventory.db"),
        );
        let mut stop = Vec::new();

        let transport = in_namespace(&args.transport, "stack");
        let shop = monolith::app::Application::build(&monolith::config::ServeConfig {
            listen: args.monolith_listen,
            database_url: monolith_db.clone(),
            seed_products: args.seed_products,
            seed_customers: 20,
            inventory_transport: Some(transport.clone()),
            reservation_ttl_s: 60,
            ..monolith::config::ServeConfig::defaults()
        })
        .await
        .context("the monolith")?;
        let monolith = url(shop.local_addr());
        serve(&mut stop, |rx| {
            shop.run_until(async move {
                let _ = rx.await;
            })
        });

        // The service serving traffic (with the fault-injection hook, to watch a rollout roll
        // itself back), and one whose provider-state hook may rewrite its data.
        let mut catalogs = Vec::new();
        for (listen, database_url, provider_states) in [
            (args.service_listen, service_db.clone(), false),
            (args.contracts_listen, path("catalog-contracts.db"), true),
        ] {
            let catalog = catalog_service::Service::build(&catalog_service::config::Config {
                listen,
                database_url,
                provider_states,
                fault_injection: !provider_states,
            })
            .await
            .context("the catalog service")?;
            catalogs.push(url(catalog.local_addr()));
            serve(&mut stop, |rx| {
                catalog.run_until(async move {
                    let _ = rx.await;
                })
            });
        }
        let (service, contracts) = (catalogs[0].clone(), catalogs[1].clone());

        // The inventory service serving traffic, and one for contracts (its own database and
        // its own message namespace: it must not take the saga's commands).
        let mut inventories = Vec::new();
        for (listen, database_url, provider_states, namespace) in [
            (args.inventory_listen, inventory_db.clone(), false, "stack"),
            (
                args.inventory_contracts_listen,
                path("inventory-contracts.db"),
                true,
                "stack-contracts",
            ),
        ] {
            let inventory = inventory_service::Service::build(&inventory_service::config::Config {
                listen,
                database_url,
                transport: in_namespace(&args.transport, namespace),
                catalog_url: Some(monolith.clone()),
                provider_states,
                ..inventory_service::config::Config::defaults()
            })
            .await
            .context("the inventory service")?;
            inventories.push(url(inventory.local_addr()));
            serve(&mut stop, |rx| {
                inventory.run_until(async move {
                    let _ = rx.await;
                })
            });
        }
        let (inventory, inventory_contracts) = (inventories[0].clone(), inventories[1].clone());

        let synced = vec![
            Synced {
                name: "catalog",
                service_db: service_db.clone(),
                mapping: crate::project::toolkit_file("extracted/catalog/sync.toml"),
            },
            Synced {
                name: "inventory",
                service_db: inventory_db.clone(),
                mapping: crate::project::toolkit_file("extracted/inventory/sync.toml"),
            },
        ];
        let quoted = |text: &str| toml::Value::String(text.to_owned()).to_string();
        // Each carve-out's data sync, so the control plane can move its writes (guarded), and
        // its contracts, verified on the service instance kept for them.
        let sync = |carveout: &Synced| {
            format!(
                "sync = {{ mapping = {}, monolith_db = {}, service_db = {}, max_lag_events = 10000, max_lag_seconds = 10.0, fence_ms = 5000 }}",
                quoted(&carveout.mapping.display().to_string()),
                quoted(&monolith_db),
                quoted(&carveout.service_db),
            )
        };
        let contracts_section = |name: &str, provider: &str, hook: &str| {
            format!(
                "contracts = {{ dir = {}, provider = {}, state_url = {} }}",
                quoted(
                    &crate::project::toolkit_file(&format!("extracted/{name}/contracts"))
                        .display()
                        .to_string()
                ),
                quoted(provider),
                quoted(&format!("{provider}{hook}")),
            )
        };
        let (catalog_sync, inventory_sync) = (sync(&synced[0]), sync(&synced[1]));
        let catalog_contracts =
            contracts_section("catalog", &contracts, catalog_service::states::PATH);
        let inventory_contracts_section = contracts_section(
            "inventory",
            &inventory_contracts,
            inventory_service::states::PATH,
        );
        let text = format!(
            r#"
            [upstreams.monolith]
            instances = ["{monolith}"]
            [upstreams.catalog]
            instances = ["{service}"]
            [[carveouts]]
            name = "catalog"
            upstream = "catalog"
            phase = "monolith"
            sticky = {{ header = "X-User-Id" }}
            routes = [{{ path = "/catalog/*" }}]
            shadow = {{ ignore = ["/created_at", "/updated_at", "/items/*/created_at", "/items/*/updated_at"], headers = ["content-type"] }}
            capture = {{ sample_percent = 100 }}
            rollout = {{ steps = ["shadow 3s", "canary 10% 3s", "50% 3s", "100% 3s"], interval_ms = 1000, min_requests = 20, min_interval_requests = 5, failure_limit = 1, p99_floor_ms = 50 }}
            {catalog_sync}
            {catalog_contracts}
            [upstreams.inventory]
            instances = ["{inventory}"]
            [[carveouts]]
            name = "inventory"
            upstream = "inventory"
            phase = "monolith"
            sticky = {{ header = "X-User-Id" }}
            routes = [{{ methods = ["GET", "HEAD", "PUT"], path = "/inventory/{{product_id}}" }}]
            shadow = {{ ignore = ["/updated_at"], headers = ["content-type"] }}
            rollout = {{ steps = ["shadow 3s", "canary 10% 3s", "50% 3s", "100% 3s"], interval_ms = 1000, min_requests = 20, min_interval_requests = 5, failure_limit = 1, p99_floor_ms = 50 }}
            {inventory_sync}
            {inventory_contracts_section}
            "#
        );
        let proxy_args = strangler_proxy::config::ProxyArgs {
            listen: args.listen,
            admin_listen: args.admin_listen,
            control_db,
            ..strangler_proxy::config::ProxyArgs::defaults()
        };
        let config = strangler_proxy::config::Config::from_toml(&text, &proxy_args)?;
        // Written down, so `strangler sync ...` finds the carve-out's databases and mapping
        // without repeating them (it reads .strangler-stack/strangler.toml by default).
        let file = args.dir.join("strangler.toml");
        std::fs::write(
            &file,
            text.lines().map(str::trim).collect::<Vec<_>>().join("\n"),
        )
        .with_context(|| format!("cannot write {}", file.display()))?;
        let replica = strangler_proxy::app::Replica::build(&config)
            .await
            .context("the proxy")?;
        let (proxy, admin) = (url(replica.local_addr()), url(replica.admin_addr()));
        serve(&mut stop, |rx| {
            replica.run_until(async move {
                let _ = rx.await;
            })
        });

        let stack = Stack {
            proxy,
            admin,
            monolith,
            service,
            contracts,
            inventory,
            inventory_contracts,
            monolith_db,
            synced,
            stop,
            relays_stop: tokio::sync::watch::Sender::new(false),
        };
        stack.start_sync().await?;
        Ok(stack)
    }

    /// The monolith's and `carveout`'s service's databases, and its checked mapping.
    pub(crate) async fn dbs(&self, carveout: &str) -> anyhow::Result<(Db, Db, Mapping)> {
        let synced = self
            .synced
            .iter()
            .find(|s| s.name == carveout)
            .with_context(|| format!("the stack has no carve-out {carveout}"))?;
        let options = DbOptions::default();
        let m = Db::connect_unmigrated(&self.monolith_db, &options).await?;
        let s = Db::connect_unmigrated(&synced.service_db, &options).await?;
        let mut mapping = Mapping::load(&synced.mapping)?;
        mapping.check(&m, &s).await?;
        Ok((m, s, mapping))
    }

    /// For every carve-out: forward capture, backfill, and both relays running in the
    /// background (the reverse one idles until the service takes writes).
    async fn start_sync(&self) -> anyhow::Result<()> {
        for carveout in &self.synced {
            self.start_sync_of(carveout.name).await?;
        }
        Ok(())
    }

    async fn start_sync_of(&self, carveout: &str) -> anyhow::Result<()> {
        let (m, s, mapping) = self.dbs(carveout).await?;
        if !capture::installed(&m, &mapping).await? {
            capture::install(&m, &mapping).await?;
        }
        Backfill::new(m.clone(), s.clone(), mapping.clone(), "forward")
            .await?
            .run(|_| {})
            .await?;
        let mut reverse = mapping.reversed();
        reverse.check(&s, &m).await?;
        if !capture::installed(&s, &reverse).await? {
            capture::install(&s, &reverse).await?;
        }
        for (source, target, mapping, direction) in [
            (m.clone(), s.clone(), mapping.clone(), "forward"),
            (s, m, reverse, "reverse"),
        ] {
            let relay = Relay::new(source, target, mapping, direction)
                .await?
                .with_lease(Duration::from_secs(2));
            let mut stopped = self.relays_stop.subscribe();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(err) = relay.run_until(Duration::from_millis(20), None, stop).await {
                    let _ = writeln!(std::io::stderr(), "error: the relay stopped: {err:#}");
                }
            });
        }
        Ok(())
    }

    /// Stops everything.
    pub fn stop(self) {
        self.relays_stop.send_replace(true);
        for stop in self.stop {
            let _ = stop.send(());
        }
    }

    /// A client of the stack's admin API.
    pub fn admin_client(&self) -> anyhow::Result<Admin> {
        Admin::new(&AdminArgs {
            admin_url: self.admin.clone(),
            admin_token: None,
        })
    }

    /// What a cut-over (`owner` = the service) or roll-back (the monolith) of the stack's
    /// catalog needs.
    pub fn cutover_args(&self, reason: &str) -> CutoverArgs {
        CutoverArgs {
            reason: reason.to_owned(),
            force: false,
            actor: Some("demo".to_owned()),
            percent: None,
        }
    }
}

/// `strangler stack`: serves until Ctrl-C.
pub async fn stack(args: StackArgs) -> anyhow::Result<String> {
    let stack = Stack::start(&args).await?;
    let _ = writeln!(
        std::io::stderr(),
        "the stack is up (databases and its strangler.toml in {}):\n  proxy          {}   <- send traffic here\n  admin API      {}   (strangler ... --admin-url {})\n  monolith       {}\n  catalog        {}\n  contracts      {}   (a catalog service to verify contracts on)\n  inventory      {}   (the saga's messages: {})\n  inventory-contracts {}   (an inventory service to verify contracts on)\n  sync relays    forward and reverse of both carve-outs, running\nCtrl-C stops it.",
        args.dir.display(),
        stack.proxy,
        stack.admin,
        stack.admin,
        stack.monolith,
        stack.service,
        stack.contracts,
        stack.inventory,
        args.transport,
        stack.inventory_contracts
    );
    tokio::signal::ctrl_c().await?;
    stack.stop();
    Ok("stopped\n".to_owned())
}

#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    failed: AtomicU64,
    writes: AtomicU64,
}

pub(crate) fn say(text: &str) {
    println!("{text}");
}

/// Starts `carveout`'s rollout and says each step it reaches until it is done (an error if it
/// halts or takes more than 90 s).
pub(crate) async fn run_rollout(
    admin: &Admin,
    carveout: &str,
    started: &str,
    note: &str,
) -> anyhow::Result<()> {
    let path = format!("/carveouts/{carveout}/rollout");
    let _: Value = admin
        .call(
            admin
                .request(reqwest::Method::POST, &path)
                .json(&json!({"actor": "demo"})),
        )
        .await?;
    say(started);
    let mut seen_step = usize::MAX;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let view: Value = admin
            .call(admin.request(reqwest::Method::GET, &path))
            .await?;
        let step = view["step"].as_u64().unwrap_or(0) as usize;
        if step != seen_step {
            seen_step = step;
            say(&format!(
                "4. rollout at step {} of {}: {} ({note})",
                step + 1,
                view["steps"].as_array().map_or(0, Vec::len),
                view["steps"][step].as_str().unwrap_or("?")
            ));
        }
        match view["state"].as_str() {
            Some("done") => return Ok(()),
            Some("running") => {}
            other => anyhow::bail!("the demo's rollout is {other:?}: {view}"),
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the demo's rollout did not finish in 90 s: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Verifies `carveout`'s committed contracts against the service at `provider` (its
/// provider-state hook at `hook`), records the result with the control plane, and says it.
pub(crate) async fn verify_contracts(
    admin: &Admin,
    carveout: &str,
    provider: &str,
    hook: &str,
) -> anyhow::Result<()> {
    let report = contracts::verify::verify_path(
        &crate::project::toolkit_file(&format!("extracted/{carveout}/contracts")),
        &contracts::verify::VerifyOptions {
            state_url: Some(format!("{provider}{hook}")),
            ..contracts::verify::VerifyOptions::new(provider.to_owned())
        },
    )
    .await?;
    let _: Value = admin
        .call(
            admin
                .request(reqwest::Method::POST, &format!("/carveouts/{carveout}/verifications"))
                .json(&json!({"provider": provider, "interactions": report.outcomes.len(), "failures": report.failures(), "actor": "demo"})),
        )
        .await?;
    say(&format!(
        "5. contracts: {} interaction(s) recorded from the monolith verified against the service: {}",
        report.outcomes.len(),
        if report.passed() { "green" } else { "RED" }
    ));
    Ok(())
}

/// `strangler demo`: the stack in a temporary folder, and `carveout` (`catalog` or
/// `inventory`) walked through every phase with live traffic.
pub async fn demo(
    seed_products: u64,
    dbs: StackDbs,
    carveout: &str,
    transport: String,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        ["catalog", "inventory"].contains(&carveout),
        "the demo walks the catalog or the inventory, not {carveout:?}"
    );
    let dir = std::env::temp_dir().join(format!("strangler-demo-{}", std::process::id()));
    let any = "127.0.0.1:0".parse()?;
    let args = StackArgs {
        dir: dir.clone(),
        listen: any,
        admin_listen: any,
        monolith_listen: any,
        service_listen: any,
        contracts_listen: any,
        inventory_listen: any,
        inventory_contracts_listen: any,
        transport,
        seed_products,
        dbs,
    };
    let stack = Stack::start(&args).await?;
    if carveout == "inventory" {
        let walked = crate::demo_inventory::walk(&stack, seed_products).await;
        stack.stop();
        let _ = std::fs::remove_dir_all(&dir);
        return walked.map(|()| String::new());
    }
    say(&format!(
        "1. the stack is up: proxy {}, monolith {}, catalog service {}",
        stack.proxy, stack.monolith, stack.service
    ));
    say("   the catalog's rows were copied to the service; forward sync follows every change");

    // Live traffic: reads of products and writes of new ones, through the proxy.
    let traffic = Arc::new(Traffic::default());
    let running = Arc::new(AtomicBool::new(true));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let load = {
        let (traffic, running, http, proxy) = (
            traffic.clone(),
            running.clone(),
            http.clone(),
            stack.proxy.clone(),
        );
        tokio::spawn(async move {
            let mut i: u64 = 0;
            while running.load(Ordering::Relaxed) {
                i += 1;
                let request = if i % 4 == 0 {
                    traffic.writes.fetch_add(1, Ordering::Relaxed);
                    http.post(format!("{proxy}/catalog/products")).json(&json!({
                        "sku": format!("DEMO-{}-{i}", std::process::id()), "name": format!("Demo item {i}"),
                        "price_cents": 100 + i, "currency": "EUR"}))
                } else {
                    http.get(format!(
                        "{proxy}/catalog/products/{}",
                        1 + i % seed_products.max(1)
                    ))
                    .header("x-user-id", format!("user-{}", i % 97))
                };
                traffic.sent.fetch_add(1, Ordering::Relaxed);
                match request.send().await {
                    Ok(r) if r.status().is_success() => {}
                    _ => {
                        traffic.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let admin = stack.admin_client()?;
    let pause = || tokio::time::sleep(Duration::from_millis(1500));
    pause().await;
    say(&format!(
        "2. phase monolith: {} requests so far, all served by the monolith",
        traffic.sent.load(Ordering::Relaxed)
    ));

    // An automatic rollout: each step promoted by the controller once clean for its dwell
    // with enough traffic.
    run_rollout(
        &admin,
        "catalog",
        "3. rollout started: shadow 3s, canary 10% 3s, 50% 3s, 100% 3s; the controller promotes each step once its checks (error rate against the monolith's, p99, fallbacks, shadow mismatches, sync lag) pass for its dwell with enough traffic, and rolls back by itself when they fail",
        "sticky by X-User-Id; writes stay with the monolith",
    )
    .await?;
    let mismatches: Value = admin
        .call(admin.request(reqwest::Method::GET, "/carveouts/catalog/mismatches"))
        .await?;
    say(&format!(
        "   rollout done: every read goes to the service now; {} of {} shadow comparison(s) mismatched on the way",
        mismatches["mismatched"], mismatches["compared"]
    ));

    // Contracts: verified on the stack's second catalog service (the hook rewrites its data).
    verify_contracts(
        &admin,
        "catalog",
        &stack.contracts,
        catalog_service::states::PATH,
    )
    .await?;

    say("6. cut-over: pre-checks, write fence, relay drained, re-verify, writes flipped to the service");
    crate::cutover::run(&admin, "catalog", stack.cutover_args("demo cut-over"), true).await?;
    pause().await;
    say(&format!("7. phase extracted: the service takes reads and writes; reverse sync keeps the monolith current ({} writes so far)", traffic.writes.load(Ordering::Relaxed)));

    say("8. roll-back: the mirror image, writes back to the monolith");
    crate::cutover::run(
        &admin,
        "catalog",
        stack.cutover_args("demo roll-back"),
        false,
    )
    .await?;
    pause().await;
    running.store(false, Ordering::Relaxed);
    load.await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (m, s, mapping) = stack.dbs("catalog").await?;
    // The stack's own forward relay catches up with the last writes.
    let watcher = Relay::new(m.clone(), s.clone(), mapping.clone(), "forward").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while watcher.lag().await?.0 > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the forward relay did not settle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = verify::verify_live(&m, &s, &mapping, Some("catalog:forward")).await?;
    let (sent, failed, writes) = (
        traffic.sent.load(Ordering::Relaxed),
        traffic.failed.load(Ordering::Relaxed),
        traffic.writes.load(Ordering::Relaxed),
    );
    // Every acknowledged write is a row of the monolith (the system of record again), once.
    let mut count = m.statement(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COUNT(DISTINCT sku) AS BIGINT) \
         FROM catalog_products WHERE sku LIKE ",
    );
    count.bind(format!("DEMO-{}-%", std::process::id()));
    let row = count.query()?.fetch_one(m.pool()).await?;
    let (rows, distinct): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    say(&format!(
        "9. done: {sent} requests ({writes} writes), {failed} failed; {rows} written row(s) in the monolith, {distinct} distinct; monolith and service: {}",
        check.summary().trim().replace('\n', "; ")
    ));
    stack.stop();
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(failed == 0, "{failed} request(s) failed during the demo");
    anyhow::ensure!(check.clean(), "the two sides do not agree after the demo");
    anyhow::ensure!(
        u64::try_from(rows).ok() == Some(writes) && rows == distinct,
        "{writes} write(s) were acknowledged, the monolith holds {rows} ({distinct} distinct)"
    );
    Ok(String::new())
}
