//! The `monolith` binary as a process: serving on port 0, graceful shutdown on SIGTERM with a
//! request in flight, seeding, and clear errors for bad configuration.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_monolith");

/// GETs `url` and reads its JSON body.
async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// A `monolith serve` process, killed if the test ends early.
struct Served {
    child: Child,
    base: String,
}

impl Served {
    fn start(db: &str, extra: &[&str]) -> Served {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start monolith");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the listening line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Served { child, base }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "the server did not exit in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn serves_seeded_shop_and_drains_in_flight_requests_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let mut served = Served::start(
        db.to_str().unwrap(),
        &[
            "--seed-products",
            "20",
            "--seed-customers",
            "3",
            "--payment-timeout-ms",
            "1500",
        ],
    );
    let http = reqwest::Client::new();
    let base = served.base.clone();

    // The seeded shop takes the README's order.
    let placed = http
        .post(format!("{base}/orders"))
        .json(&json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}], "card_token": "tok_ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 201);
    let body: Value = placed.json().await.unwrap();
    assert_eq!(body["status"], "confirmed", "{body}");

    // Put stock on product 2 and start an order whose charge takes the full payment timeout.
    let stock = http
        .put(format!("{base}/inventory/2"))
        .json(&json!({"quantity": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(stock.status(), 200);
    let slow = tokio::spawn({
        let http = http.clone();
        let base = base.clone();
        async move {
            http.post(format!("{base}/orders"))
                .json(&json!({"customer_id": 2, "items": [{"product_id": 2, "quantity": 1}], "card_token": "tok_timeout"}))
                .send()
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stock: Value = get_json(&http, &format!("{base}/inventory/2")).await;
        if stock["reserved"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow order never reserved its stock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // SIGTERM with the request in flight: it still completes, then the process exits cleanly.
    served.terminate();
    let response = slow
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(response.status(), 402);
    let status = tokio::task::spawn_blocking(move || served.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn seed_fills_a_database_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("seeded.db");
    let output = Command::new(BIN)
        .args([
            "seed",
            "--products",
            "2500",
            "--customers",
            "30",
            "--quiet",
            "--database-url",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("seeded 2500 products (with stock) and 30 customers"),
        "{stdout}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use monolith::catalog::{CatalogApi, ProductQuery};
        let db = monolith::db::Db::connect(db.to_str().unwrap(), &Default::default())
            .await
            .unwrap();
        let catalog = monolith::catalog::Catalog::new(db.clone());
        let mut count = 0;
        let mut after = None;
        loop {
            let page = catalog
                .list_products(ProductQuery {
                    limit: 100,
                    after,
                    name_contains: None,
                })
                .await
                .unwrap();
            count += page.items.len();
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(count, 2500);
        let services = monolith::app::Services::new(
            &db,
            std::sync::Arc::new(monolith::payments::FakeProvider::new()),
            Duration::from_secs(1),
        );
        let stock = services.inventory.stock(2500).await.unwrap();
        assert!(stock.updated_at.is_some(), "every product has stock");
        assert!(services.accounts.customer(30).await.unwrap().is_some());
        assert!(services.accounts.customer(31).await.unwrap().is_none());
    });
}

#[test]
fn bad_configuration_exits_non_zero_with_a_clear_message() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["serve", "--listen", "not-an-address"],
            "invalid value 'not-an-address'",
        ),
        (
            &["seed", "--database-url", "mysql://localhost/shop"],
            "unsupported database URL",
        ),
        (&["seed", "--products", "-5"], "unexpected argument '-5'"),
    ];
    for (args, message) in cases {
        let output = Command::new(BIN).args(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

db_test!(a_monolith_killed_mid_saga_settles_every_order_when_restarted);

/// Five orders are parked at the charge step (the provider never answers `tok_timeout` and the
/// payment timeout is long) when the process is killed with SIGKILL. Restarted at once, the
/// monolith settles each order, returns all the stock, and every key replays its outcome.
async fn a_monolith_killed_mid_saga_settles_every_order_when_restarted(db: e2e::TestDb) {
    let flags = [
        "--seed-products",
        "5",
        "--seed-customers",
        "1",
        "--payment-timeout-ms",
        "600000",
        "--recover-after",
        "1",
        "--recover-interval-ms",
        "100",
    ];
    let mut served = Served::start(&db.url, &flags);
    let http = reqwest::Client::new();
    let base = served.base.clone();
    let order = |product: i64| json!({"customer_id": 1, "items": [{"product_id": product, "quantity": 2}], "card_token": "tok_timeout"});
    for product in 1..=5 {
        let stocked = http
            .put(format!("{base}/inventory/{product}"))
            .json(&json!({"quantity": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(stocked.status(), 200);
    }
    let mut clients = Vec::new();
    for product in 1..=5_i64 {
        let request = http
            .post(format!("{base}/orders"))
            .header("idempotency-key", format!("crash-{product}"))
            .json(&order(product));
        clients.push(tokio::spawn(request.send()));
    }
    let reserved = |http: reqwest::Client, base: String| async move {
        let mut reserved = Vec::new();
        for product in 1..=5 {
            let stock: Value = get_json(&http, &format!("{base}/inventory/{product}")).await;
            reserved.push(stock["reserved"].as_i64().unwrap());
        }
        reserved
    };
    e2e::eventually(
        Duration::from_secs(20),
        "five sagas at the charge step",
        || {
            let (http, base) = (http.clone(), base.clone());
            async move { reserved(http, base).await == [2; 5] }
        },
    )
    .await;
    // Recovery ran meanwhile (every 100 ms, for orders older than 1 s) and left the running
    // sagas alone.
    let listed: Value = get_json(&http, &format!("{base}/orders?customer_id=1")).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|o| o["status"] == "pending"), "{listed}");

    served.child.kill().unwrap();
    served.child.wait().unwrap();
    for client in clients {
        assert!(
            client.await.unwrap().is_err(),
            "the killed process answered"
        );
    }

    let served = Served::start(&db.url, &flags);
    let base = served.base.clone();
    e2e::eventually(Duration::from_secs(20), "every order to settle", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let listed: Value = get_json(&http, &format!("{base}/orders?customer_id=1")).await;
            listed["items"]
                .as_array()
                .is_some_and(|items| items.iter().all(|o| o["status"] == "payment_failed"))
        }
    })
    .await;
    assert_eq!(
        reserved(http.clone(), base.clone()).await,
        [0; 5],
        "all stock returned"
    );
    for product in 1..=5_i64 {
        let stock: Value = get_json(&http, &format!("{base}/inventory/{product}")).await;
        assert_eq!(stock["quantity"], 10, "{stock}");
        let replay = http
            .post(format!("{base}/orders"))
            .header("idempotency-key", format!("crash-{product}"))
            .json(&order(product))
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 402, "crash-{product}");
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        let problem: Value = replay.json().await.unwrap();
        assert_eq!(problem["order_status"], "payment_failed", "{problem}");
    }
}

#[test]
fn the_database_comes_from_shop_database_url_then_database_url() {
    let dir = tempfile::tempdir().unwrap();
    let (shop, generic) = (
        dir.path().join("shop-var.db"),
        dir.path().join("generic.db"),
    );
    let seed = |envs: &[(&str, &std::path::Path)]| {
        let mut command = Command::new(BIN);
        command
            .args(["seed", "--products", "1", "--customers", "1", "--quiet"])
            .env_remove("SHOP_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .current_dir(dir.path());
        for (name, value) in envs {
            command.env(name, value);
        }
        let output = command.output().expect("run monolith seed");
        assert!(output.status.success(), "{output:?}");
    };
    seed(&[("DATABASE_URL", &generic)]);
    assert!(generic.exists(), "DATABASE_URL is the fallback");
    seed(&[("SHOP_DATABASE_URL", &shop), ("DATABASE_URL", &generic)]);
    assert!(shop.exists(), "SHOP_DATABASE_URL wins");
    seed(&[]);
    assert!(
        dir.path().join("shop.db").exists(),
        "shop.db without either"
    );
}
