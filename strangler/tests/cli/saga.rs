//! The inventory service as a process of its own (`strangler inventory-service`), killed with
//! SIGKILL in the middle of the orders saga and started again: every order settles, and no
//! reservation is applied twice.

use std::sync::Arc;
use std::time::Duration;

use e2e::{eventually, Broker, TestDb};
use monolith::app::Application;
use monolith::config::ServeConfig;
use monolith::payments::FakeProvider;
use serde_json::{json, Value};
use sqlkit::{Db, DbOptions};
use strangler_sync::backfill::Backfill;
use strangler_sync::guard::{self, Guard};
use strangler_sync::sides::{Direction, SyncSetup};
use strangler_sync::{capture, verify};

mod sigkill {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "NATS JetStream: set TEST_NATS_URL and run with --ignored"]
    async fn sqlite_jetstream() {
        super::the_inventory_service_killed_mid_saga_loses_nothing(
            e2e::TestDb::sqlite().await,
            e2e::Broker::jetstream(),
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "PostgreSQL and NATS JetStream: set TEST_DATABASE_URL and TEST_NATS_URL and run with --ignored"]
    async fn postgres_jetstream() {
        super::the_inventory_service_killed_mid_saga_loses_nothing(
            e2e::TestDb::postgres().await,
            e2e::Broker::jetstream(),
        )
        .await
    }
}

/// `strangler inventory-service` as a child process, killed when dropped.
struct ServiceProcess(std::process::Child);

impl ServiceProcess {
    fn start(database_url: &str, transport: &str, catalog: &str) -> ServiceProcess {
        let child = std::process::Command::new(super::BIN)
            .args(["inventory-service", "--listen", "127.0.0.1:0"])
            .args(["--database-url", database_url, "--transport", transport])
            .args(["--catalog-url", catalog, "--ack-wait-ms", "1000"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        ServiceProcess(child)
    }

    /// SIGKILL: no shutdown, no acknowledgement, whatever it was doing cut short.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = http.post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db.pool()).await.unwrap()
}

async fn the_inventory_service_killed_mid_saga_loses_nothing(db: TestDb, broker: Broker) {
    let service_test_db = if db.url.starts_with("postgres") {
        TestDb::postgres().await
    } else {
        TestDb::sqlite().await
    };
    let transport = messaging::connect(&broker.url, Duration::from_secs(1))
        .await
        .unwrap();
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        payment_timeout_ms: 300,
        settle_wait_ms: 1000,
        recover_interval_ms: 200,
        ..ServeConfig::defaults()
    };
    let app =
        Application::build_with_parts(&config, Arc::new(FakeProvider::new()), Some(transport))
            .await
            .unwrap();
    let shop = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let (_, customer) = post(
        &http,
        &format!("{shop}/accounts"),
        json!({"email": "kill@example.com", "name": "K"}),
    )
    .await;
    let (_, product) = post(
        &http,
        &format!("{shop}/catalog/products"),
        json!({"sku": "KILL-1", "name": "Anvil", "price_cents": 900, "currency": "EUR"}),
    )
    .await;
    let (customer, product) = (
        customer["id"].as_i64().unwrap(),
        product["id"].as_i64().unwrap(),
    );
    let set = http
        .put(format!("{shop}/inventory/{product}"))
        .json(&json!({"quantity": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);

    // The service, its schema made by its own start-up.
    let mut service = Some(ServiceProcess::start(
        &service_test_db.url,
        &broker.url,
        &shop,
    ));
    let options = DbOptions::default();
    eventually(Duration::from_secs(30), "the service's schema", || async {
        match Db::connect_unmigrated(&service_test_db.url, &options).await {
            Ok(db) => sqlx::query("SELECT 1 FROM outbox LIMIT 1")
                .fetch_optional(db.pool())
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await;
    // The state a cut-over leaves (the cut-over itself is tested with the proxy): the stock
    // copied to the service, the monolith's tables guarded as owned elsewhere, the reverse
    // sync capturing the service's writes.
    let setup = SyncSetup {
        carveout: "inventory".to_owned(),
        mapping: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../extracted/inventory/sync.toml"),
        monolith_db: db.url.clone(),
        service_db: service_test_db.url.clone(),
    };
    let forward = setup.open(Direction::Forward).await.unwrap();
    capture::install(&forward.source, &forward.mapping)
        .await
        .unwrap();
    Backfill::new(
        forward.source.clone(),
        forward.target.clone(),
        forward.mapping.clone(),
        "forward",
    )
    .await
    .unwrap()
    .run(|_| {})
    .await
    .unwrap();
    let reverse = setup.open(Direction::Reverse).await.unwrap();
    capture::install(&reverse.source, &reverse.mapping)
        .await
        .unwrap();
    let tables: Vec<String> = forward
        .mapping
        .tables
        .iter()
        .map(|t| t.source.clone())
        .collect();
    guard::install(&forward.source, &tables).await.unwrap();
    guard::set(&forward.source, &tables, Guard::OwnedElsewhere)
        .await
        .unwrap();
    let service_db = reverse.source.clone();

    // Orders flow by message; mid-run, the service is killed and started again.
    let order = {
        let http = http.clone();
        let url = format!("{shop}/orders");
        move || {
            let http = http.clone();
            let url = url.clone();
            async move {
                post(
                    &http,
                    &url,
                    json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}], "card_token": "tok_ok"}),
                )
                .await
                .0
            }
        }
    };
    let load = tokio::spawn({
        let order = order.clone();
        async move {
            let clients = (0..4).map(|_| {
                let order = order.clone();
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    for _ in 0..15 {
                        statuses.push(order().await);
                    }
                    statuses
                })
            });
            futures::future::join_all(clients)
                .await
                .into_iter()
                .flat_map(Result::unwrap)
                .collect::<Vec<u16>>()
        }
    });
    eventually(
        Duration::from_secs(30),
        "reservations before the kill",
        || async {
            count(
                &service_db,
                "SELECT CAST(COUNT(*) AS BIGINT) FROM reservations",
            )
            .await
                >= 8
        },
    )
    .await;
    service.take().unwrap().kill();
    let _restarted = ServiceProcess::start(&service_test_db.url, &broker.url, &shop);
    let statuses = load.await.unwrap();
    // Orders caught by the kill waited past the request's wait (202); all settle.
    assert!(
        statuses.iter().all(|s| [201, 202].contains(s)),
        "{statuses:?}"
    );
    let monolith_db = Db::connect_unmigrated(&db.url, &options).await.unwrap();
    eventually(Duration::from_secs(30), "every order to settle", || async {
        count(
            &monolith_db,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM orders_orders WHERE status = 'pending'",
        )
        .await
            == 0
    })
    .await;
    let confirmed = count(
        &monolith_db,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM orders_orders WHERE status = 'confirmed'",
    )
    .await;
    assert_eq!(confirmed, 60, "every order had stock");
    // The service's ledger: one reserve per order, 60 units committed, 40 left, none held.
    let reserves = count(
        &service_db,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM stock_movements WHERE reason = 'reserve'",
    )
    .await;
    assert_eq!(reserves, 60, "a reservation applied twice, or one lost");
    let available = count(&service_db, "SELECT available FROM stock_levels").await;
    let held = count(
        &service_db,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM reservations WHERE state = 'held'",
    )
    .await;
    assert_eq!((available, held), (40, 0));
    // And the monolith's copy agrees once the reverse sync applied the service's writes.
    let relay = setup
        .open(Direction::Reverse)
        .await
        .unwrap()
        .relay()
        .await
        .unwrap();
    let mut relay = relay;
    while relay.step().await.unwrap().applied > 0 {}
    let report = verify::verify(&forward.source, &forward.target, &forward.mapping)
        .await
        .unwrap();
    assert!(report.clean(), "{}", report.summary());
    let _ = stop.send(());
}
