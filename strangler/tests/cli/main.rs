//! The `strangler` binary against a proxy replica served in-process on port 0.

// A panic is how a test reports an unexpected error.
#![allow(clippy::unwrap_used)]

mod dashboard;
mod deploy;
mod guide;
mod observe;
mod readme;
mod saga;

use std::process::Command;

use serde_json::Value;
use strangler_proxy::app::Replica;
use strangler_proxy::config::{Config, ProxyArgs};

const BIN: &str = env!("CARGO_BIN_EXE_strangler");
const TOKEN: &str = "cli-token";

struct Running {
    admin: String,
    proxy: String,
    _db: e2e::TestDb,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn replica() -> Running {
    let text = r#"
        [upstreams.monolith]
        instances = ["http://127.0.0.1:1"]
        [upstreams.catalog]
        instances = ["http://127.0.0.1:2"]
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "monolith"
        routes = [{ methods = ["GET"], path = "/catalog/products/{id}" }]
    "#;
    replica_with(text).await
}

async fn replica_with(text: &str) -> Running {
    let db = e2e::TestDb::sqlite().await;
    let args = ProxyArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(TOKEN.to_owned()),
        admin_tokens: Some("ana=tok-ana,bo=tok-bo".to_owned()),
        control_db: db.url.clone(),
        ..ProxyArgs::defaults()
    };
    let config = Config::from_toml(text, &args).unwrap();
    let replica = Replica::build(&config).await.unwrap();
    let admin = format!("http://{}", replica.admin_addr());
    let proxy = format!("http://{}", replica.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(replica.run_until(async {
        let _ = stopped.await;
    }));
    Running {
        admin,
        proxy,
        _db: db,
        stop: Some(stop),
    }
}

/// A catalog service served in-process on port 0 (its SQLite file in `dir`), until the test
/// ends; its URL.
async fn catalog_service(dir: &std::path::Path) -> String {
    let catalog = catalog_service::Service::build(&catalog_service::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: dir.join("catalog.db").display().to_string(),
        ..catalog_service::config::Config::defaults()
    })
    .await
    .unwrap();
    let url = format!("http://{}", catalog.local_addr());
    tokio::spawn(catalog.run_until(std::future::pending()));
    url
}

/// Runs the CLI; returns (success, stdout, stderr).
async fn cli(admin: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(BIN);
    // The admin flags apply to the commands that call the admin API only: given by their
    // variables here, so that every command takes them.
    command
        .args(args)
        .env("STRANGLER_ADMIN_URL", admin)
        .env("STRANGLER_ADMIN_TOKEN", token)
        .env_remove("STRANGLER_CONFIG");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_inspect_and_flip_carveouts() {
    let running = replica().await;
    let admin = running.admin.as_str();

    let (ok, out, err) = cli(admin, TOKEN, &["carveouts", "list"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("catalog  monolith  catalog"),
        "{out}"
    );

    let (ok, out, err) = cli(
        admin,
        "tok-ana",
        &[
            "phase", "set", "catalog", "shadow", "--reason", "compare", "--actor", "ana",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "catalog is now shadow\n");
    let (ok, out, _) = cli(
        admin,
        TOKEN,
        &[
            "phase",
            "set",
            "catalog",
            "canary",
            "--percent",
            "12.5",
            "--reason",
            "ramp",
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(out, "catalog is now canary 12.5%\n");

    // A skip is refused with the reason, and the exit code says so.
    let (ok, out, err) = cli(
        admin,
        TOKEN,
        &["phase", "set", "catalog", "retired", "--reason", "skip"],
    )
    .await;
    assert!(!ok);
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: catalog cannot go from canary 12.50% to retired in one step"),
        "{err}"
    );
    // A token acts as its own operator only.
    let (ok, _, err) = cli(
        admin,
        "tok-ana",
        &[
            "phase", "set", "catalog", "retired", "--reason", "skip", "--force", "--actor", "bo",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("this token belongs to ana"), "{err}");
    let (ok, _, err) = cli(
        admin,
        "tok-bo",
        &[
            "phase", "set", "catalog", "retired", "--reason", "skip", "--force",
        ],
    )
    .await;
    assert!(ok, "{err}");

    let (ok, out, _) = cli(admin, TOKEN, &["carveouts", "show", "catalog", "--json"]).await;
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["phase"].as_str(), shown["updated_by"].as_str()),
        (Some("retired"), Some("bo"))
    );
    let (ok, out, _) = cli(admin, TOKEN, &["carveouts", "show", "catalog"]).await;
    assert!(ok);
    assert!(
        out.contains("routes:\n  GET /catalog/products/{id}"),
        "{out}"
    );

    let (ok, out, _) = cli(admin, TOKEN, &["audit", "catalog"]).await;
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].contains("canary 12.50%  retired")
            && lines[1].contains("bo")
            && lines[1].contains("yes"),
        "{out}"
    );
    let (ok, out, _) = cli(admin, TOKEN, &["audit", "--json"]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let (ok, out, _) = cli(admin, TOKEN, &["mismatches", "catalog"]).await;
    assert!(ok);
    assert_eq!(
        out,
        "catalog: 0 comparison(s) across the cluster, 0 mismatched\nno shadow mismatches recorded for catalog\n"
    );

    // One view of the carve-out.
    let (ok, out, err) = cli(admin, TOKEN, &["status", "catalog"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("catalog  retired\n"), "{out}");
    assert!(out.contains("sync: none configured"), "{out}");
    assert!(
        out.contains("contracts: no verification on record"),
        "{out}"
    );
    assert!(out.contains("replicas: 1 live of 1 registered"), "{out}");
    let (ok, out, _) = cli(admin, TOKEN, &["status", "--json"]).await;
    assert!(ok);
    let all: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all[0]["phase"], "retired", "{all}");
    let (ok, _, err) = cli(admin, TOKEN, &["status", "nope"]).await;
    assert!(!ok && err.contains("no carve-out named nope"), "{err}");

    // The replica sharing the control database, live, with the epoch it applied.
    let (ok, out, err) = cli(admin, TOKEN, &["replicas"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    let row = out.lines().nth(1).unwrap();
    assert!(
        row.contains(running.proxy.trim_start_matches("http://")),
        "{out}"
    );
    assert!(row.ends_with("yes"), "{out}");
    let (ok, out, _) = cli(admin, TOKEN, &["replicas", "--json"]).await;
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert!(listed[0]["applied_epoch"].as_i64() > Some(1), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_clear_line_and_a_failing_exit() {
    let running = replica().await;
    let (ok, _, err) = cli(&running.admin, "wrong", &["carveouts", "list"]).await;
    assert!(!ok);
    assert!(
        err.starts_with("error: the admin API refused the token"),
        "{err}"
    );
    let (ok, _, err) = cli(&running.admin, TOKEN, &["carveouts", "show", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("no carve-out named nope"), "{err}");
    // Flags only where they apply: the admin flags and --json are refused on commands that
    // do not use them, and accepted on either side of a carve-out command's subcommand.
    for args in [
        &[
            "sync",
            "status",
            "catalog",
            "--admin-url",
            "http://127.0.0.1:9",
        ][..],
        &["completions", "bash", "--json"],
        &[
            "contract",
            "record",
            "--script",
            "x.toml",
            "--out",
            "y.json",
            "--admin-token",
            "t",
        ],
        &["stack", "--json"],
    ] {
        let (ok, _, err) = cli(&running.admin, TOKEN, args).await;
        assert!(!ok, "{args:?}");
        assert!(err.contains("unexpected argument"), "{args:?}: {err}");
    }
    let (ok, out, err) = cli(
        "http://127.0.0.1:9",
        TOKEN,
        &["carveouts", "--admin-url", &running.admin, "list", "--json"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.trim_start().starts_with('['), "{out}");
    let (ok, _, err) = cli(
        &running.admin,
        TOKEN,
        &[
            "phase",
            "set",
            "catalog",
            "canary",
            "--reason",
            "no percent",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("canary needs a percent"), "{err}");
    let (ok, _, err) = cli("http://127.0.0.1:1", TOKEN, &["carveouts", "list"]).await;
    assert!(!ok);
    assert!(
        err.starts_with("error: cannot reach the admin API at http://127.0.0.1:1"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &running.admin,
        TOKEN,
        &["phase", "set", "catalog", "shadow"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("--reason"), "{err}");
    // An unknown carve-out is an error everywhere.
    let (ok, _, err) = cli(&running.admin, TOKEN, &["audit", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("no carve-out named nope"), "{err}");
    // A change to the phase it is in already is refused, and not audited.
    let (ok, _, err) = cli(
        &running.admin,
        TOKEN,
        &["phase", "set", "catalog", "monolith", "--reason", "again"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("catalog is monolith already"), "{err}");
    let (_, audit, _) = cli(&running.admin, TOKEN, &["audit", "catalog", "--json"]).await;
    assert_eq!(audit.trim(), "[]");
    // A skip names the flag that overrides it.
    let (ok, _, err) = cli(
        &running.admin,
        TOKEN,
        &["phase", "set", "catalog", "extracted", "--reason", "skip"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("pass --force"), "{err}");
    // A phase that does not exist is refused before anything is sent, listing the phases.
    let (ok, _, err) = cli(
        &running.admin,
        TOKEN,
        &["phase", "set", "catalog", "live", "--reason", "x"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("possible values: monolith, shadow, canary, extracted, retired"),
        "{err}"
    );
    // Completion scripts for the shells.
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = cli(&running.admin, TOKEN, &["completions", shell]).await;
        assert!(ok, "{err}");
        assert!(
            out.contains("cutover") && out.contains("replicas"),
            "{shell}: {out}"
        );
    }
    let (ok, _, err) = cli(&running.admin, TOKEN, &["completions", "tcsh"]).await;
    assert!(!ok && err.contains("possible values"), "{err}");
    // The admin URL works without its scheme.
    let bare = running.admin.trim_start_matches("http://").to_owned();
    let (ok, out, err) = cli(&bare, TOKEN, &["carveouts", "list"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("NAME"), "{out}");
}

/// A monolith with the provider-state hook, on port 0.
async fn monolith() -> (String, e2e::TestDb, tokio::sync::oneshot::Sender<()>) {
    let db = e2e::TestDb::sqlite().await;
    let config = monolith::config::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        provider_states: true,
        ..monolith::config::ServeConfig::defaults()
    };
    let app = monolith::app::Application::build(&config).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (url, db, stop)
}

#[tokio::test]
async fn contract_verification_gates_the_cut_over() {
    let running = replica().await;
    let (url, _db, _stop) = monolith().await;
    let contracts = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../extracted/catalog/contracts"
    );
    let state_url = format!("{url}/_contracts/provider-states");
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let junit_arg = junit.to_str().unwrap();
    let admin = running.admin.as_str();

    // Green against the monolith; reported for the carve-out; JUnit written.
    let (ok, out, err) = cli(
        admin,
        TOKEN,
        &[
            "contract",
            "verify",
            "--contracts",
            contracts,
            "--provider",
            &url,
            "--state-url",
            &state_url,
            "catalog",
            "--junit",
            junit_arg,
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("12 passed, 0 failed"), "{out}");
    assert!(
        out.contains("reported to the admin API for carve-out catalog (green)"),
        "{out}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"12\"") && xml.contains("failures=\"0\""),
        "{xml}"
    );

    // Red against a provider that is down: the report on stdout, a failing exit, reported red.
    let (ok, out, _) = cli(
        admin,
        TOKEN,
        &[
            "contract",
            "verify",
            "--contracts",
            contracts,
            "--provider",
            "http://127.0.0.1:9",
            "--state-url",
            &state_url,
            "catalog",
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("FAILED") && out.contains("(red)"), "{out}");

    // The latest verification is red: the cut-over is refused, naming it.
    for args in [
        ["phase", "set", "catalog", "shadow", "--reason", "r"].as_slice(),
        [
            "phase",
            "set",
            "catalog",
            "canary",
            "--percent",
            "100",
            "--reason",
            "r",
        ]
        .as_slice(),
    ] {
        let (ok, out, err) = cli(admin, TOKEN, args).await;
        assert!(ok, "{out}{err}");
    }
    let (ok, _, err) = cli(
        admin,
        TOKEN,
        &["phase", "set", "catalog", "extracted", "--reason", "go"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("latest contract verification of catalog") && err.contains("is red"),
        "{err}"
    );

    // Nothing to verify is an error, not a pass.
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = cli(
        admin,
        TOKEN,
        &[
            "contract",
            "verify",
            "--contracts",
            empty.path().to_str().unwrap(),
            "--provider",
            &url,
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("no pact files"), "{err}");
}

#[tokio::test]
async fn captured_traffic_becomes_a_contract() {
    let (url, _db, _stop) = monolith().await;
    let text = format!(
        r#"
        [upstreams.monolith]
        instances = ["{url}"]
        [upstreams.catalog]
        instances = ["http://127.0.0.1:2"]
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "monolith"
        routes = [{{ path = "/catalog/*" }}]
        capture = {{ sample_percent = 100 }}
        "#
    );
    let running = replica_with(&text).await;
    let admin = running.admin.as_str();
    let (ok, out, err) = cli(
        admin,
        TOKEN,
        &[
            "contract",
            "capture",
            "catalog",
            "--script-out",
            "/dev/null",
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(err.contains("captured nothing"), "{err}");

    // Real traffic through the proxy, with a token that must not reach the script.
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/catalog/products", running.proxy))
        .bearer_auth("s3cret")
        .json(&serde_json::json!({"sku": "CAP-1", "name": "Lamp", "price_cents": 999, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for path in [
        "/catalog/products?limit=5",
        "/catalog/products/1",
        "/catalog/products?limit=5",
    ] {
        let response = http
            .get(format!("{}{path}", running.proxy))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("captured.toml");
    let script_arg = script.to_str().unwrap();
    let mut captured = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !captured {
        assert!(
            std::time::Instant::now() < deadline,
            "the captures never arrived"
        );
        let (ok, out, _) = cli(
            admin,
            TOKEN,
            &[
                "contract",
                "capture",
                "catalog",
                "--script-out",
                script_arg,
                "--consumer",
                "shop-web",
            ],
        )
        .await;
        captured = ok && out.contains("wrote 3 distinct request(s) from 4 capture(s)");
    }
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("authorization"),
        "{text}"
    );

    // Recorded from the monolith (replayed, noise learned), the contract verifies it. The
    // replayed POST meets the product the captured one created: a conflict, every time.
    let pact = dir.path().join("captured.json");
    let pact_arg = pact.to_str().unwrap();
    let (ok, out, err) = cli(
        admin,
        TOKEN,
        &[
            "contract",
            "record",
            "--script",
            script_arg,
            "--provider",
            &url,
            "--out",
            pact_arg,
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("recorded 3 interaction(s)"), "{out}");
    let recorded = std::fs::read_to_string(&pact).unwrap();
    assert!(
        recorded.contains("CAP-1") && recorded.contains("\"status\": 409"),
        "{recorded}"
    );
    let (ok, out, err) = cli(
        admin,
        TOKEN,
        &[
            "contract",
            "verify",
            "--contracts",
            pact_arg,
            "--provider",
            &url,
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
}

#[tokio::test]
async fn the_catalog_syncs_from_the_command_line() {
    let shop_db = e2e::TestDb::sqlite().await;
    let config = monolith::config::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: shop_db.url.clone(),
        seed_products: 50,
        ..monolith::config::ServeConfig::defaults()
    };
    let app = monolith::app::Application::build(&config).await.unwrap();
    let shop = format!("http://{}", app.local_addr());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let service_db = e2e::TestDb::sqlite().await;
    let service = catalog_service::Service::build(&catalog_service::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: service_db.url.clone(),
        provider_states: false,
        fault_injection: false,
    })
    .await
    .unwrap();
    let service_pool = service.db().clone();
    drop(service);

    let mapping = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../extracted/catalog/sync.toml"
    );
    let (m, s) = (shop_db.url.as_str(), service_db.url.as_str());
    let (ok, out, err) = sync_cli(m, s, mapping, "status", &[]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("capture NOT installed"), "{out}");
    let (ok, out, err) = sync_cli(m, s, mapping, "install", &[]).await;
    assert!(
        ok && out.contains("capture installed for catalog (forward)"),
        "{out}{err}"
    );
    let (ok, out, err) = sync_cli(m, s, mapping, "backfill", &[]).await;
    assert!(
        ok && out.contains("catalog_products: 50 rows copied"),
        "{out}{err}"
    );

    let created = reqwest::Client::new()
        .post(format!("{shop}/catalog/products"))
        .json(&serde_json::json!({"sku": "CLI-1", "name": "Lamp", "price_cents": 999, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (ok, out, err) = sync_cli(m, s, mapping, "run", &["--once"]).await;
    assert!(
        ok && out.contains("catalog:forward: 1 change(s) applied"),
        "{out}{err}"
    );
    let (ok, out, _) = sync_cli(m, s, mapping, "status", &["--json"]).await;
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            status["capture_installed"].as_bool(),
            status["lag_events"].as_i64()
        ),
        (Some(true), Some(0))
    );

    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("drift.json");
    let report_arg = report.to_str().unwrap();
    let (ok, out, err) = sync_cli(m, s, mapping, "verify", &["--report", report_arg]).await;
    assert!(
        ok && out.contains("51 rows compared, no drift"),
        "{out}{err}"
    );

    // A row changed behind the relay's back: verify fails and names it; repair fixes it.
    sqlx::query("UPDATE products SET title = 'tampered' WHERE product_id = 1")
        .execute(service_pool.pool())
        .await
        .unwrap();
    let (ok, out, _) = sync_cli(m, s, mapping, "verify", &["--report", report_arg]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("1 drifted row(s)"), "{out}");
    let drift: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(drift["drift"][0]["kind"], "different", "{drift}");
    assert_eq!(drift["drift"][0]["actual"]["title"], "tampered", "{drift}");
    // Remembered: sync status shows the latest verify.
    let (_, out, _) = sync_cli(m, s, mapping, "status", &[]).await;
    assert!(
        out.contains("last verify: NOT clean at ") && out.contains("1 drifted"),
        "{out}"
    );
    let (ok, out, err) = sync_cli(m, s, mapping, "repair", &[]).await;
    assert!(
        ok && out.contains("repaired 1 row(s)") && out.contains("no drift"),
        "{out}{err}"
    );
    let (_, out, _) = sync_cli(m, s, mapping, "status", &[]).await;
    assert!(out.contains("last verify: clean at "), "{out}");

    // A carve-out without a mapping file says how to give one.
    let (ok, _, err) = cli(
        "http://127.0.0.1:9",
        "x",
        &[
            "sync",
            "status",
            "orders",
            "--monolith-db",
            &shop_db.url,
            "--service-db",
            &service_db.url,
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("no mapping file for orders") && err.contains("--mapping"),
        "{err}"
    );
    // A mapping that does not fit is refused before anything runs.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(mapping)
            .unwrap()
            .replace("\"summary\"", "\"blurb\""),
    )
    .unwrap();
    let (ok, _, err) = cli(
        "http://127.0.0.1:9",
        "x",
        &[
            "sync",
            "status",
            "catalog",
            "--mapping",
            bad.to_str().unwrap(),
            "--monolith-db",
            &shop_db.url,
            "--service-db",
            &service_db.url,
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("the target table products has no column blurb"),
        "{err}"
    );
}

async fn sync_cli(
    monolith_db: &str,
    service_db: &str,
    mapping: &str,
    command: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec![
        "sync",
        command,
        "catalog",
        "--mapping",
        mapping,
        "--monolith-db",
        monolith_db,
        "--service-db",
        service_db,
    ];
    args.extend_from_slice(extra);
    cli("http://127.0.0.1:9", "x", &args).await
}

e2e::db_test!(a_relay_killed_at_random_points_loses_and_duplicates_nothing);

/// The monolith's and the catalog service's schemas, migrated (nothing served): a pool on the
/// monolith's database, and the service's database.
async fn catalog_databases(shop_db: &e2e::TestDb) -> (sqlx::AnyPool, e2e::TestDb) {
    let config = monolith::config::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: shop_db.url.clone(),
        ..monolith::config::ServeConfig::defaults()
    };
    let shop = monolith::app::Application::build(&config).await.unwrap();
    let shop_pool = shop.db().pool().clone();
    drop(shop);
    let service_db = twin(shop_db).await;
    drop(
        catalog_service::Service::build(&catalog_service::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: service_db.url.clone(),
            provider_states: false,
            fault_injection: false,
        })
        .await
        .unwrap(),
    );
    (shop_pool, service_db)
}

async fn a_relay_killed_at_random_points_loses_and_duplicates_nothing(shop_db: e2e::TestDb) {
    let (shop_pool, service_db) = catalog_databases(&shop_db).await;
    let mapping = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../extracted/catalog/sync.toml"
    );
    let (m, s) = (shop_db.url.as_str(), service_db.url.as_str());
    let (ok, out, err) = sync_cli(m, s, mapping, "install", &[]).await;
    assert!(ok, "{out}{err}");
    // Every write the relay makes to the service is logged: a batch applied twice would log
    // the same row state twice (every change here gives its row a state it never had before).
    let service = sqlkit::Db::connect_unmigrated(s, &sqlkit::DbOptions::default())
        .await
        .unwrap();
    let log = "CREATE TABLE applied_log (product_id BIGINT, price_mills BIGINT)";
    let triggers = if s.starts_with("postgres") {
        vec![
            log.to_owned(),
            "CREATE FUNCTION log_applied() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO applied_log VALUES (NEW.product_id, NEW.price_mills); RETURN NULL; END $$"
                .to_owned(),
            "CREATE TRIGGER log_applied AFTER INSERT OR UPDATE ON products \
             FOR EACH ROW EXECUTE FUNCTION log_applied()"
                .to_owned(),
        ]
    } else {
        let body = "BEGIN INSERT INTO applied_log VALUES (NEW.product_id, NEW.price_mills); END";
        vec![
            log.to_owned(),
            format!("CREATE TRIGGER log_applied_i AFTER INSERT ON products {body}"),
            format!("CREATE TRIGGER log_applied_u AFTER UPDATE ON products {body}"),
        ]
    };
    for sql in triggers {
        sqlx::raw_sql(&sql).execute(service.pool()).await.unwrap();
    }

    // Writes keep coming while relay processes are killed (SIGKILL, no clean stop) at random
    // points, one after another.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (shop_pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                sqlx::query(&format!(
                    "INSERT INTO catalog_products (sku, name, description, price_cents, currency, created_at, updated_at) \
                     VALUES ('K-{i}', 'Kill {i}', '', {i}, 'EUR', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')"
                ))
                .execute(&pool)
                .await
                .unwrap();
                if i % 3 == 0 {
                    sqlx::query(&format!("UPDATE catalog_products SET price_cents = price_cents + 7 WHERE sku = 'K-{}'", i / 2))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                if i % 10 == 0 {
                    sqlx::query(&format!(
                        "DELETE FROM catalog_products WHERE sku = 'K-{}'",
                        i - 5
                    ))
                    .execute(&pool)
                    .await
                    .unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            i
        })
    };
    for round in 0..20u64 {
        let mut child = std::process::Command::new(BIN)
            .args([
                "sync",
                "run",
                "catalog",
                "--mapping",
                mapping,
                "--monolith-db",
                m,
                "--service-db",
                s,
                "--interval-ms",
                "5",
                "--lease-ms",
                "300",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Pseudo-random kill points between 100 and 400 ms.
        let wait = 100 + (round * 7919 + std::process::id() as u64) % 300;
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 50, "{writes} writes");

    let (ok, out, err) = sync_cli(
        m,
        s,
        mapping,
        "run",
        &["--once", "--lease-ms", "300", "--interval-ms", "20"],
    )
    .await;
    assert!(ok, "{out}{err}");
    // The killed relays did part of the work; the last one only what was left.
    let left: i64 = out
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        left < writes,
        "the killed relays applied nothing ({left} of {writes} left)"
    );
    let (ok, out, err) = sync_cli(m, s, mapping, "verify", &[]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("no drift"), "{out}");
    let (_, out, _) = sync_cli(m, s, mapping, "status", &["--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["lag_events"], 0, "{status}");
    let twice: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, price_mills, CAST(COUNT(*) AS BIGINT) FROM applied_log \
         GROUP BY product_id, price_mills HAVING COUNT(*) > 1",
    )
    .fetch_all(service.pool())
    .await
    .unwrap();
    assert!(twice.is_empty(), "changes applied twice: {twice:?}");
    let logged: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM applied_log")
        .fetch_one(service.pool())
        .await
        .unwrap();
    assert!(
        logged >= writes,
        "{logged} applied writes for {writes} inserts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_exports_its_lag_and_progress() {
    let shop_db = e2e::TestDb::sqlite().await;
    let config = monolith::config::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: shop_db.url.clone(),
        ..monolith::config::ServeConfig::defaults()
    };
    let shop = monolith::app::Application::build(&config).await.unwrap();
    let shop_pool = shop.db().pool().clone();
    drop(shop);
    let service_db = e2e::TestDb::sqlite().await;
    drop(
        catalog_service::Service::build(&catalog_service::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: service_db.url.clone(),
            provider_states: false,
            fault_injection: false,
        })
        .await
        .unwrap(),
    );
    let mapping = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../extracted/catalog/sync.toml"
    );
    let (m, s) = (shop_db.url.as_str(), service_db.url.as_str());
    assert!(sync_cli(m, s, mapping, "install", &[]).await.0);

    let mut child = std::process::Command::new(BIN)
        .args([
            "sync",
            "run",
            "catalog",
            "--mapping",
            mapping,
            "--monolith-db",
            m,
            "--service-db",
            s,
        ])
        .args(["--interval-ms", "10", "--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first line names the metrics address; the rest (warnings) is kept read, so the
    // process never writes to a closed pipe.
    let stderr = child.stderr.take().unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel::<String>();
    let rest = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut rest = String::new();
        for (n, line) in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .enumerate()
        {
            if n == 0 {
                let _ = first_tx.send(line);
            } else {
                rest.push_str(&line);
                rest.push('\n');
            }
        }
        rest
    });
    let first = tokio::task::spawn_blocking(move || first_rx.recv().unwrap_or_default())
        .await
        .unwrap();
    let url = first
        .trim()
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    sqlx::query(
        "INSERT INTO catalog_products (sku, name, description, price_cents, currency, created_at, updated_at) \
         VALUES ('M-1', 'Metric', '', 100, 'EUR', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')",
    )
    .execute(&shop_pool)
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(text.contains(r#"strangler_sync_applied_total{stream="catalog:forward"} 1"#)
        && text.contains(r#"strangler_sync_active{stream="catalog:forward"} 1"#))
    {
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        text = http.get(&url).send().await.unwrap().text().await.unwrap();
    }
    assert!(text.contains("strangler_sync_lag_events"), "{text}");
    assert!(text.contains("strangler_sync_lag_seconds"), "{text}");
    assert!(
        text.contains(r#"strangler_sync_errors_total{stream="catalog:forward"} 0"#),
        "{text}"
    );
    // A row the service cannot take is parked, counted, and the relay goes on.
    sqlx::query(&format!(
        "INSERT INTO catalog_products (sku, name, description, price_cents, currency, created_at, updated_at) \
         VALUES ('M-2', 'Too dear', '', {}, 'EUR', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')",
        i64::MAX
    ))
    .execute(&shop_pool)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains(r#"strangler_sync_parked{stream="catalog:forward"} 1"#) {
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        text = http.get(&url).send().await.unwrap().text().await.unwrap();
    }
    assert!(
        text.contains(r#"strangler_sync_errors_total{stream="catalog:forward"} 0"#),
        "a parked change is no failed step: {text}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let warnings = rest.join().unwrap();
    assert!(
        warnings.contains("parked its key"),
        "the parked change is logged: {warnings}"
    );
}

async fn cutover_cli(admin: &str, command: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![command, "catalog", "--reason", "test"];
    args.extend_from_slice(extra);
    cli(admin, TOKEN, &args).await
}

/// Both relays of the catalog running in this process until the returned sender says stop.
fn run_relays(
    m: &str,
    s: &str,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let setup = strangler_sync::sides::SyncSetup {
        carveout: "catalog".to_owned(),
        mapping: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../extracted/catalog/sync.toml"
        )
        .into(),
        monolith_db: m.to_owned(),
        service_db: s.to_owned(),
    };
    let (stop, _) = tokio::sync::watch::channel(false);
    let tasks = [
        strangler_sync::sides::Direction::Forward,
        strangler_sync::sides::Direction::Reverse,
    ]
    .into_iter()
    .map(|direction| {
        let (setup, mut stopped) = (setup.clone(), stop.subscribe());
        tokio::spawn(async move {
            let relay = setup.open(direction).await.unwrap().relay().await.unwrap();
            let until = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            relay
                .run_until(std::time::Duration::from_millis(10), None, until)
                .await
                .unwrap();
        })
    })
    .collect();
    (stop, tasks)
}

e2e::db_test!(cutover_and_rollback_under_load_lose_no_write);

async fn cutover_and_rollback_under_load_lose_no_write(shop_db: e2e::TestDb) {
    let app = monolith::app::Application::build(&monolith::config::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: shop_db.url.clone(),
        seed_products: 20,
        ..monolith::config::ServeConfig::defaults()
    })
    .await
    .unwrap();
    let shop = format!("http://{}", app.local_addr());
    let (_stop_shop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let service_db = if shop_db.url.starts_with("postgres") {
        e2e::TestDb::postgres().await
    } else {
        e2e::TestDb::sqlite().await
    };
    let service = catalog_service::Service::build(&catalog_service::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: service_db.url.clone(),
        provider_states: false,
        fault_injection: false,
    })
    .await
    .unwrap();
    let svc = format!("http://{}", service.local_addr());
    let (_stop_svc, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(service.run_until(async {
        let _ = stopped.await;
    }));
    let mapping = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../extracted/catalog/sync.toml"
    );
    let (m, s) = (shop_db.url.as_str(), service_db.url.as_str());
    let running = replica_with(&format!(
        r#"
        [upstreams.monolith]
        instances = ["{shop}"]
        [upstreams.catalog]
        instances = ["{svc}"]
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "canary"
        percent = 100
        routes = [{{ path = "/catalog/*" }}]
        sync = {{ mapping = "{mapping}", monolith_db = "{m}", service_db = "{s}", max_lag_events = 100000 }}
        "#
    ))
    .await;
    let admin = running.admin.as_str();
    for (command, extra) in [
        ("install", &[][..]),
        ("backfill", &[][..]),
        ("run", &["--once"][..]),
    ] {
        let (ok, out, err) = sync_cli(m, s, mapping, command, extra).await;
        assert!(ok, "{command}: {out}{err}");
    }

    // No relay runs yet, and no contract verification is green: refused, nothing changes.
    let (ok, _, err) = cutover_cli(admin, "cutover", &[]).await;
    assert!(!ok);
    assert!(
        err.contains("refused, nothing changed")
            && err.contains("no contract verification")
            && err.contains("no relay runs for catalog:forward"),
        "{err}"
    );
    let (relays_stop, relays) = run_relays(m, s);
    // A plain phase change cannot move the writes, forced or not.
    let (ok, _, err) = cli(
        admin,
        TOKEN,
        &[
            "phase",
            "set",
            "catalog",
            "extracted",
            "--reason",
            "shortcut",
            "--force",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("writes move only by the guarded procedure"),
        "{err}"
    );
    let (_, view, _) = cli(admin, TOKEN, &["carveouts", "show", "catalog", "--json"]).await;
    assert!(view.contains("\"phase\": \"canary\""), "{view}");
    let http = reqwest::Client::new();
    let green = http
        .post(format!("{admin}/carveouts/catalog/verifications"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"provider": svc, "interactions": 12, "failures": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(green.status(), 201);

    // Writes through the proxy all along: none may fail, wherever they land.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (proxy, stop, http) = (running.proxy.clone(), stop.clone(), http.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let r = http
                    .post(format!("{proxy}/catalog/products"))
                    .json(&serde_json::json!({"sku": format!("LOAD-{i}"), "name": format!("Load {i}"), "price_cents": i, "currency": "EUR"}))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (ok, out, err) = cutover_cli(admin, "cutover", &[]).await;
    assert!(ok, "{out}{err}");
    assert!(err.contains("ownership: catalog is now extracted"), "{err}");
    assert!(err.contains("every live replica applied it"), "{err}");
    assert!(err.contains("fence: released after"), "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // The status says so: the reverse direction runs, with its relay.
    let (ok, out, err) = cli(admin, TOKEN, &["status", "catalog", "--json"]).await;
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    let status = &status[0];
    assert_eq!(status["phase"], "extracted", "{status}");
    assert_eq!(status["sync"]["direction"], "reverse", "{status}");
    assert_eq!(status["sync"]["capture_installed"], true, "{status}");
    assert_eq!(status["sync"]["relay_running"], true, "{status}");
    assert_eq!(status["contracts"]["passed"], true, "{status}");
    assert!(
        status["traffic"]["monolith"][0].as_u64() > Some(0),
        "{status}"
    );

    // The service owns the writes now; the reverse relay keeps the monolith current. A second
    // cut-over is refused (the carve-out is not in canary) and changes nothing.
    let (ok, _, err) = cutover_cli(admin, "cutover", &[]).await;
    assert!(
        !ok && err.contains("refused, nothing changed") && err.contains("not canary"),
        "{err}"
    );
    let (ok, out, err) = cutover_cli(admin, "rollback", &[]).await;
    assert!(ok, "{out}{err}");
    assert!(err.contains("ownership: catalog is now canary"), "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = writer.await.unwrap();
    relays_stop.send_replace(true);
    for relay in relays {
        relay.await.unwrap();
    }
    assert!(statuses.len() > 20, "{} writes", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 201),
        "failed writes: {:?}",
        statuses.iter().filter(|s| **s != 201).collect::<Vec<_>>()
    );

    // Writes after the roll-back went to the monolith: forward sync brings them over, and both
    // sides agree on every write.
    let (ok, out, err) = sync_cli(m, s, mapping, "run", &["--once"]).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = sync_cli(m, s, mapping, "verify", &[]).await;
    assert!(ok, "{out}{err}");
    let (_, audit, _) = cli(admin, TOKEN, &["audit", "catalog", "--json"]).await;
    assert!(
        audit.contains("cutover: test") && audit.contains("rollback: test"),
        "{audit}"
    );
    let count: i64 = {
        let db = sqlkit::Db::connect_unmigrated(m, &sqlkit::DbOptions::default())
            .await
            .unwrap();
        sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM catalog_products WHERE sku LIKE 'LOAD-%'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap()
    };
    assert_eq!(
        count as usize,
        statuses.len(),
        "every write is in the monolith"
    );
}

/// A second database of the same backend as `db`.
async fn twin(db: &e2e::TestDb) -> e2e::TestDb {
    if db.url.starts_with("postgres") {
        e2e::TestDb::postgres().await
    } else {
        e2e::TestDb::sqlite().await
    }
}

e2e::db_test!(the_demo_walks_every_phase_under_traffic_without_a_failed_request);

async fn the_demo_walks_every_phase_under_traffic_without_a_failed_request(shop_db: e2e::TestDb) {
    let mut args: Vec<String> = ["demo", "--seed-products", "30"].map(String::from).to_vec();
    // On SQLite the demo's own temporary files; on PostgreSQL four schemas.
    let mut dbs = Vec::new();
    if shop_db.url.starts_with("postgres") {
        let (service_db, control_db) = (twin(&shop_db).await, twin(&shop_db).await);
        let inventory_db = twin(&shop_db).await;
        for (flag, db) in [
            ("--monolith-db", &shop_db),
            ("--service-db", &service_db),
            ("--control-db", &control_db),
            ("--inventory-db", &inventory_db),
        ] {
            args.extend([flag.to_owned(), db.url.clone()]);
        }
        dbs.extend([service_db, control_db, inventory_db]);
    }
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env_remove("STRANGLER_STACK_MONOLITH_DB")
            .env_remove("STRANGLER_STACK_SERVICE_DB")
            .env_remove("STRANGLER_STACK_CONTROL_DB")
            .env_remove("STRANGLER_STACK_INVENTORY_DB")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    for step in [
        "3. rollout started",
        "4. rollout at step 1 of 4: shadow",
        "4. rollout at step 4 of 4: canary 100.00%",
        "rollout done",
        "5. contracts: 12 interaction(s)",
        "7. phase extracted",
        "8. roll-back",
        ", 0 failed; ",
        "distinct; monolith and service:",
        "no drift",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    assert!(
        stderr.contains("ownership: catalog is now extracted"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ownership: catalog is now canary"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_demo_walks_every_phase_with_live_orders() {
    let output = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args(["demo", "--carveout", "inventory", "--seed-products", "30"])
            .env_remove("STRANGLER_STACK_MONOLITH_DB")
            .env_remove("STRANGLER_STACK_SERVICE_DB")
            .env_remove("STRANGLER_STACK_CONTROL_DB")
            .env_remove("STRANGLER_STACK_INVENTORY_DB")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    for step in [
        "3. rollout of the inventory's reads started",
        "4. rollout at step 4 of 4: canary 100.00%",
        "5. contracts: 6 interaction(s)",
        "green",
        "7. phase extracted",
        "8. roll-back",
        ", 0 failed; no order pending, 0 reservation(s) held; monolith and service:",
        "no drift",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    // Orders went by message while the service owned the stock.
    let by_message = stdout
        .split("the orders saga reaches it by message (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        by_message > 0,
        "no reservation made by the service:\n{stdout}"
    );
    assert!(
        stderr.contains("ownership: inventory is now extracted"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_starts_with_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let stack_dir = dir.path().join(".strangler-stack");
    let (stack, urls) = readme::start_stack(dir.path(), &dir.path().join("stack.log"));
    let (proxy, admin) = (urls["proxy"].clone(), urls["admin API"].clone());
    let page: serde_json::Value = reqwest::get(format!("{proxy}/catalog/products?limit=3"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3, "{page}");
    // A canary you can see from one machine: split by X-User-Id, each answer naming its side.
    let http = reqwest::Client::new();
    for phase in [
        serde_json::json!({"phase": "shadow", "reason": "test"}),
        serde_json::json!({"phase": "canary", "percent": 50, "reason": "test"}),
    ] {
        let changed = http
            .post(format!("{admin}/carveouts/catalog/phase"))
            .json(&phase)
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), 200);
    }
    let mut sides = std::collections::HashSet::new();
    for user in 0..40 {
        let answer = http
            .get(format!("{proxy}/catalog/products?limit=1"))
            .header("x-user-id", format!("user-{user}"))
            .send()
            .await
            .unwrap();
        sides.insert(
            answer.headers()["x-strangler-served-by"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        sides.len(),
        2,
        "40 users from one address, one side: {sides:?}"
    );
    // The sync commands find the stack's databases in the configuration it wrote.
    let config = stack_dir.join("strangler.toml");
    let (ok, out, err) = cli(
        &admin,
        "x",
        &[
            "sync",
            "status",
            "catalog",
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("catalog:forward: capture installed"),
        "{out}"
    );
    // Without flags or a configuration, the error says what to pass.
    let (ok, _, err) = cli(&admin, "x", &["sync", "status", "catalog"]).await;
    assert!(!ok);
    assert!(
        err.contains("no databases for catalog") && err.contains("--config"),
        "{err}"
    );
    drop(stack);
    for db in [
        "shop.db",
        "catalog.db",
        "control.db",
        "catalog-contracts.db",
    ] {
        assert!(stack_dir.join(db).exists(), "{db}");
    }
}

e2e::db_test!(a_row_the_service_cannot_take_is_parked_shown_retried_and_skipped);

/// Legacy rows the service cannot hold (a price whose mills overflow) are parked by key: the
/// relay runs on, status and verify name them, retry applies them once fixed, skip drops them.
async fn a_row_the_service_cannot_take_is_parked_shown_retried_and_skipped(shop_db: e2e::TestDb) {
    let (shop_pool, service_db) = catalog_databases(&shop_db).await;
    let mapping = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../extracted/catalog/sync.toml"
    );
    let (m, s) = (shop_db.url.as_str(), service_db.url.as_str());
    assert!(sync_cli(m, s, mapping, "install", &[]).await.0);
    let insert = |sku: &str, price: i64| {
        format!(
            "INSERT INTO catalog_products (sku, name, description, price_cents, currency, created_at, updated_at) \
             VALUES ('{sku}', '{sku}', '', {price}, 'EUR', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')"
        )
    };
    for (sku, price) in [("OK-1", 100), ("HUGE-1", i64::MAX), ("OK-2", 200)] {
        sqlx::query(&insert(sku, price))
            .execute(&shop_pool)
            .await
            .unwrap();
    }
    // Its warning goes to a stderr nobody reads any more: the relay is not taken down by it.
    let mut relay = std::process::Command::new(BIN)
        .args(["sync", "run", "catalog", "--once", "--mapping", mapping])
        .args(["--monolith-db", m, "--service-db", s])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(relay.stderr.take());
    let status = tokio::task::spawn_blocking(move || relay.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "the relay runs on past a refused change: {status}"
    );
    let (ok, out, _) = sync_cli(m, s, mapping, "status", &[]).await;
    assert!(ok);
    assert!(out.contains("1 parked key(s)"), "{out}");
    assert!(
        out.contains("--table catalog_products --key '[2]'"),
        "{out}"
    );
    assert!(out.contains("overflows"), "{out}");
    let (ok, out, err) = sync_cli(m, s, mapping, "verify", &["--settle-ms", "0"]).await;
    assert!(!ok);
    assert!(
        format!("{out}{err}").contains("parked: catalog:forward catalog_products key [2]"),
        "{out}{err}"
    );
    // Retrying unfixed data fails and says why; fixed at the source, it applies.
    let (ok, out, err) = sync_cli(m, s, mapping, "retry", &[]).await;
    assert!(!ok);
    assert!(format!("{out}{err}").contains("still parked"), "{out}{err}");
    sqlx::query("UPDATE catalog_products SET price_cents = 300 WHERE sku = 'HUGE-1'")
        .execute(&shop_pool)
        .await
        .unwrap();
    assert!(sync_cli(m, s, mapping, "run", &["--once"]).await.0);
    let (ok, out, err) = sync_cli(
        m,
        s,
        mapping,
        "retry",
        &["--table", "catalog_products", "--key", "[2]"],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("1 parked key(s) applied, 0 still parked"),
        "{out}"
    );
    let (ok, out, err) = sync_cli(m, s, mapping, "verify", &["--settle-ms", "0"]).await;
    assert!(ok, "{out}{err}");
    // Another one is skipped: the service keeps what it has.
    sqlx::query(&insert("HUGE-2", i64::MAX))
        .execute(&shop_pool)
        .await
        .unwrap();
    assert!(sync_cli(m, s, mapping, "run", &["--once"]).await.0);
    let skip = ["--table", "catalog_products", "--key", "[4]"];
    let (ok, out, err) = sync_cli(m, s, mapping, "skip", &skip).await;
    assert!(ok, "{out}{err}");
    let (ok, _, err) = sync_cli(m, s, mapping, "skip", &skip).await;
    assert!(!ok);
    assert!(err.contains("has no parked key [4]"), "{err}");
    let (_, out, _) = sync_cli(m, s, mapping, "status", &[]).await;
    assert!(out.contains("0 parked key(s)"), "{out}");
}
