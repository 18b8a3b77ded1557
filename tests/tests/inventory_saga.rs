//! The inventory carve-out with its saga across services: the real monolith, the real inventory
//! service, the real proxy and data sync, and the orders saga over the message transport
//! (embedded by default, NATS JetStream in the `--ignored` variants).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use e2e::{eventually, Broker, TestDb};
use monolith::app::Application;
use monolith::config::ServeConfig;
use monolith::payments::{FakeCharge, FakeProvider};
use serde_json::{json, Value};
use sqlkit::{Db, DbOptions};
use strangler_proxy::app::Replica;
use strangler_proxy::config::{Config, ProxyArgs};
use strangler_sync::backfill::Backfill;
use strangler_sync::sides::{Direction, SyncSetup};
use strangler_sync::{capture, verify};

saga_test!(
    two_hundred_orders_against_fifty_units_through_the_extracted_inventory,
    the_cut_over_of_the_inventory_under_order_load,
    a_payment_timeout_voids_the_charge_and_releases_the_stock,
);

db_jetstream_test!(
    every_message_delivered_twice_is_applied_once,
    the_saga_resumes_after_the_broker_restarts,
);

/// Declares the SQLite and PostgreSQL variants of a test that needs NATS JetStream (both
/// `#[ignore]`d with the reason: `.ci/run` runs them with `TEST_NATS_URL` set).
macro_rules! db_jetstream_test {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "NATS JetStream: set TEST_NATS_URL and run with --ignored"]
            async fn sqlite_jetstream() {
                super::$name(e2e::TestDb::sqlite().await, e2e::Broker::jetstream()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "PostgreSQL and NATS JetStream: set TEST_DATABASE_URL and TEST_NATS_URL and run with --ignored"]
            async fn postgres_jetstream() {
                super::$name(e2e::TestDb::postgres().await, e2e::Broker::jetstream()).await
            }
        }
    )*};
}
use db_jetstream_test;

/// A second database of the same backend as `db`.
async fn twin(db: &TestDb) -> TestDb {
    if db.url.starts_with("postgres") {
        TestDb::postgres().await
    } else {
        TestDb::sqlite().await
    }
}

fn mapping() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../extracted/inventory/sync.toml")
}

/// Stops a task running until its sender is dropped or sent to.
struct Stopper(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

fn stopper() -> (
    Stopper,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    (Stopper(Some(stop)), async move {
        let _ = stopped.await;
    })
}

/// The shop with its inventory carve-out: monolith, inventory service, proxy, sync.
struct Shop {
    monolith_url: String,
    proxy_url: String,
    admin_url: String,
    monolith_db: Db,
    service_db: Db,
    setup: SyncSetup,
    provider: Arc<FakeProvider>,
    http: reqwest::Client,
    customer: i64,
    stoppers: Vec<Stopper>,
    _dbs: Vec<TestDb>,
}

impl Shop {
    /// Everything running, the inventory in canary with forward sync, `stock` units of each of
    /// `products` new products.
    async fn start(db: TestDb, broker: &Broker, products: usize, stock: i64) -> (Shop, Vec<i64>) {
        let transport = messaging::connect(&broker.url, Duration::from_secs(2))
            .await
            .unwrap();
        Shop::start_with(db, transport, products, stock).await
    }

    async fn start_with(
        db: TestDb,
        transport: Arc<dyn messaging::Transport>,
        products: usize,
        stock: i64,
    ) -> (Shop, Vec<i64>) {
        let (service_test_db, control_test_db) = (twin(&db).await, twin(&db).await);
        let mut stoppers = Vec::new();
        let provider = Arc::new(FakeProvider::new());
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: db.url.clone(),
            payment_timeout_ms: 300,
            settle_wait_ms: 5000,
            recover_interval_ms: 200,
            ..ServeConfig::defaults()
        };
        let app = Application::build_with_parts(&config, provider.clone(), Some(transport.clone()))
            .await
            .unwrap();
        let monolith_url = format!("http://{}", app.local_addr());
        let (stop, stopped) = stopper();
        tokio::spawn(app.run_until(stopped));
        stoppers.push(stop);
        let http = reqwest::Client::new();
        let customer = post(
            &http,
            &format!("{monolith_url}/accounts"),
            json!({"email": "saga@example.com", "name": "Saga"}),
        )
        .await
        .1["id"]
            .as_i64()
            .unwrap();
        let mut ids = Vec::new();
        for n in 0..products {
            let (_, product) = post(
                &http,
                &format!("{monolith_url}/catalog/products"),
                json!({"sku": format!("INV-{n}"), "name": format!("Item {n}"), "price_cents": 500, "currency": "EUR"}),
            )
            .await;
            let id = product["id"].as_i64().unwrap();
            let set = http
                .put(format!("{monolith_url}/inventory/{id}"))
                .json(&json!({"quantity": stock}))
                .send()
                .await
                .unwrap();
            assert_eq!(set.status(), 200);
            ids.push(id);
        }

        let service_config = inventory_service::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: service_test_db.url.clone(),
            catalog_url: Some(monolith_url.clone()),
            expire_every_ms: 100,
            ..inventory_service::config::Config::defaults()
        };
        let service = inventory_service::Service::build_with(&service_config, transport)
            .await
            .unwrap();
        let service_url = format!("http://{}", service.local_addr());
        let service_db = service.db().clone();
        let (stop, stopped) = stopper();
        tokio::spawn(service.run_until(stopped));
        stoppers.push(stop);

        let setup = SyncSetup {
            carveout: "inventory".to_owned(),
            mapping: mapping(),
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
        stoppers.push(relay(&setup, Direction::Forward));

        let text = format!(
            r#"
            [upstreams.monolith]
            instances = ["{monolith_url}"]
            [upstreams.inventory]
            instances = ["{service_url}"]
            [[carveouts]]
            name = "inventory"
            upstream = "inventory"
            phase = "canary"
            percent = 100
            require_contracts = false
            routes = [{{ methods = ["GET", "HEAD", "PUT"], path = "/inventory/{{product_id}}" }}]
            sync = {{ mapping = {}, monolith_db = {}, service_db = {}, fence_ms = 8000 }}
            "#,
            toml::Value::String(mapping().display().to_string()),
            toml::Value::String(db.url.clone()),
            toml::Value::String(service_test_db.url.clone()),
        );
        let args = ProxyArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            control_db: control_test_db.url.clone(),
            sync_interval_ms: 50,
            ..ProxyArgs::defaults()
        };
        let replica = Replica::build(&Config::from_toml(&text, &args).unwrap())
            .await
            .unwrap();
        let proxy_url = format!("http://{}", replica.local_addr());
        let admin_url = format!("http://{}", replica.admin_addr());
        let (stop, stopped) = stopper();
        tokio::spawn(replica.run_until(stopped));
        stoppers.push(stop);
        let options = DbOptions::default();
        let monolith_db = Db::connect_unmigrated(&db.url, &options).await.unwrap();
        let shop = Shop {
            monolith_url,
            proxy_url,
            admin_url,
            monolith_db,
            service_db,
            setup,
            provider,
            http,
            customer,
            stoppers,
            _dbs: vec![db, service_test_db, control_test_db],
        };
        shop.settle(Direction::Forward).await;
        (shop, ids)
    }

    /// Waits until the relay of `direction` applied everything.
    async fn settle(&self, direction: Direction) {
        let relay = self
            .setup
            .open(direction)
            .await
            .unwrap()
            .relay()
            .await
            .unwrap();
        eventually(Duration::from_secs(20), "the relay to catch up", || async {
            relay.lag().await.unwrap().0 == 0
        })
        .await;
    }

    /// The guarded cut-over, then the reverse relay.
    async fn cut_over(&mut self) {
        let response = self
            .http
            .post(format!("{}/carveouts/inventory/cutover", self.admin_url))
            .json(&json!({"reason": "the inventory service takes the writes"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "the cut-over: {body}");
        self.stoppers.push(relay(&self.setup, Direction::Reverse));
    }

    /// Places an order of one unit of each of `products` through the proxy.
    async fn order(&self, products: &[i64], token: &str) -> (u16, Value) {
        let items: Vec<Value> = products
            .iter()
            .map(|p| json!({"product_id": p, "quantity": 1}))
            .collect();
        post(
            &self.http,
            &format!("{}/orders", self.proxy_url),
            json!({"customer_id": self.customer, "items": items, "card_token": token}),
        )
        .await
    }

    /// Every order of the customer, once none is pending.
    async fn settled_orders(&self) -> Vec<Value> {
        let mut orders = Vec::new();
        eventually(Duration::from_secs(20), "every order to settle", || async {
            let pending: i64 = sqlx::query_scalar(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM orders_orders WHERE status = 'pending'",
            )
            .fetch_one(self.monolith_db.pool())
            .await
            .unwrap();
            pending == 0
        })
        .await;
        let rows: Vec<String> = sqlx::query_scalar("SELECT status FROM orders_orders ORDER BY id")
            .fetch_all(self.monolith_db.pool())
            .await
            .unwrap();
        orders.extend(rows.into_iter().map(Value::String));
        orders
    }

    /// Units per product in confirmed orders.
    async fn confirmed_units(&self) -> BTreeMap<i64, i64> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT items FROM orders_orders WHERE status = 'confirmed'")
                .fetch_all(self.monolith_db.pool())
                .await
                .unwrap();
        let mut units = BTreeMap::new();
        for items in rows {
            let items: Vec<Value> = serde_json::from_str(&items).unwrap();
            for item in items {
                *units
                    .entry(item["product_id"].as_i64().unwrap())
                    .or_default() += item["quantity"].as_i64().unwrap();
            }
        }
        units
    }

    /// (available, held, committed units) of a product in `db`'s own schema.
    async fn ledger(&self, service: bool, product: i64) -> (i64, i64, i64) {
        let (db, stock, held, committed) = if service {
            (
                &self.service_db,
                "SELECT available FROM stock_levels WHERE product_id = $1",
                "SELECT CAST(COALESCE(SUM(units), 0) AS BIGINT) FROM reservations WHERE product_id = $1 AND state = 'held'",
                "SELECT CAST(COALESCE(SUM(units), 0) AS BIGINT) FROM reservations WHERE product_id = $1 AND state = 'committed'",
            )
        } else {
            (
                &self.monolith_db,
                "SELECT quantity FROM inventory_stock WHERE product_id = $1",
                "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM inventory_reservations WHERE product_id = $1 AND status = 'held'",
                "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM inventory_reservations WHERE product_id = $1 AND status = 'committed'",
            )
        };
        let mut figures = Vec::new();
        for sql in [stock, held, committed] {
            figures.push(
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(product)
                    .fetch_one(db.pool())
                    .await
                    .unwrap(),
            );
        }
        (figures[0], figures[1], figures[2])
    }

    /// Both databases agree: the reverse relay caught up and a verification finds no drift.
    async fn assert_both_sides_agree(&self) {
        self.settle(Direction::Reverse).await;
        let sides = self.setup.open(Direction::Forward).await.unwrap();
        let report = verify::verify(&sides.source, &sides.target, &sides.mapping)
            .await
            .unwrap();
        assert!(report.clean(), "{}", report.summary());
    }
}

/// A relay of `direction` running until the stopper is dropped.
fn relay(setup: &SyncSetup, direction: Direction) -> Stopper {
    let (stop, stopped) = stopper();
    let setup = setup.clone();
    tokio::spawn(async move {
        let relay = setup.open(direction).await.unwrap().relay().await.unwrap();
        // A failure shows in the checks (lag, verify); at the end the databases go first.
        let _ = relay
            .run_until(Duration::from_millis(10), None, stopped)
            .await;
    });
    stop
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = http.post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn two_hundred_orders_against_fifty_units_through_the_extracted_inventory(
    db: TestDb,
    broker: Broker,
) {
    let (mut shop, products) = Shop::start(db, &broker, 1, 50).await;
    shop.cut_over().await;
    let product = products[0];
    let shop = Arc::new(shop);
    let orders = (0..200).map(|_| {
        let shop = shop.clone();
        tokio::spawn(async move { shop.order(&[product], "tok_ok").await })
    });
    let mut statuses = BTreeMap::<u16, usize>::new();
    for order in futures::future::join_all(orders).await {
        let (status, body) = order.unwrap();
        if status == 409 {
            assert_eq!(body["type"], "/problems/out-of-stock", "{body}");
        }
        assert!([201, 409].contains(&status), "{status}: {body}");
        *statuses.entry(status).or_default() += 1;
    }
    // Every order settled within the request's wait (5 s): none was answered 202.
    assert_eq!(statuses, BTreeMap::from([(201, 50), (409, 150)]));
    let orders = shop.settled_orders().await;
    assert_eq!(orders.len(), 200);
    // The service owns the stock: 0 left, nothing held, 50 committed; through the proxy too.
    assert_eq!(shop.ledger(true, product).await, (0, 0, 50));
    let (status, stock) = get(
        &shop.http,
        &format!("{}/inventory/{product}", shop.proxy_url),
    )
    .await;
    assert_eq!(
        (
            status,
            stock["quantity"].as_i64(),
            stock["reserved"].as_i64()
        ),
        (200, Some(0), Some(0))
    );
    assert_eq!(
        shop.confirmed_units().await,
        BTreeMap::from([(product, 50)])
    );
    // Each order reserved at most once: one movement per reserving order in the ledger.
    let reserves: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM stock_movements WHERE reason = 'reserve'",
    )
    .fetch_one(shop.service_db.pool())
    .await
    .unwrap();
    assert_eq!(reserves, 50);
    shop.assert_both_sides_agree().await;
    assert_eq!(
        shop.ledger(false, product).await,
        (0, 0, 50),
        "the monolith's copy"
    );
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn the_cut_over_of_the_inventory_under_order_load(db: TestDb, broker: Broker) {
    let (mut shop, products) = Shop::start(db, &broker, 2, 400).await;
    let (load_stop, mut load_stopped) = tokio::sync::watch::channel(false);
    let proxy = shop.proxy_url.clone();
    let customer = shop.customer;
    // Eight clients order without pause before, during and after the cut-over; every fifth
    // order's card is declined (a compensation: its reservation is released).
    let mut clients = Vec::new();
    for client in 0..8 {
        let http = shop.http.clone();
        let proxy = proxy.clone();
        let products = products.clone();
        let mut stopped = load_stopped.clone();
        clients.push(tokio::spawn(async move {
            let mut answers = BTreeMap::<u16, usize>::new();
            let mut n = client;
            while !*stopped.borrow_and_update() {
                let token = if n % 5 == 0 { "tok_decline" } else { "tok_ok" };
                let wanted = [products[n % 2]];
                let items: Vec<Value> = wanted
                    .iter()
                    .map(|p| json!({"product_id": p, "quantity": 1 + (n % 3) as i64}))
                    .collect();
                let (status, _) = post(
                    &http,
                    &format!("{proxy}/orders"),
                    json!({"customer_id": customer, "items": items, "card_token": token}),
                )
                .await;
                *answers.entry(status).or_default() += 1;
                n += 8;
            }
            answers
        }));
    }
    // Orders flow in process first.
    let placed = |shop: &Shop| {
        let db = shop.monolith_db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT CAST(COUNT(*) AS BIGINT) FROM orders_orders")
                .fetch_one(db.pool())
                .await
                .unwrap()
        }
    };
    eventually(
        Duration::from_secs(20),
        "orders before the cut-over",
        || async { placed(&shop).await >= 40 },
    )
    .await;
    shop.cut_over().await;
    let at_cut_over = placed(&shop).await;
    eventually(
        Duration::from_secs(20),
        "orders after the cut-over",
        || async { placed(&shop).await >= at_cut_over + 40 },
    )
    .await;
    load_stop.send_replace(true);
    let _ = load_stopped.borrow_and_update();
    let mut answers = BTreeMap::<u16, usize>::new();
    for client in clients {
        for (status, n) in client.await.unwrap() {
            *answers.entry(status).or_default() += n;
        }
    }
    // Every request was answered with the order's outcome: confirmed, declined (402) or, once
    // stock ran short, out of stock (409); none failed, none left pending (202).
    assert!(
        answers.keys().all(|s| [201, 402, 409].contains(s)),
        "{answers:?}"
    );
    assert!(answers.get(&201).copied().unwrap_or(0) > 0, "{answers:?}");
    let orders = shop.settled_orders().await;
    assert_eq!(orders.len(), answers.values().sum::<usize>());
    // No oversell, no lost or doubled reservation: per product, what the owner has left plus
    // what confirmed orders took is what there was, and nothing is held.
    let confirmed = shop.confirmed_units().await;
    for product in &products {
        let (available, held, committed) = shop.ledger(true, *product).await;
        let sold = confirmed.get(product).copied().unwrap_or(0);
        assert_eq!((held, committed), (0, sold), "product {product}");
        assert_eq!(available + sold, 400, "product {product}");
    }
    // After the cut-over the saga went by message: the service reserved (its own ledger).
    let by_message: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM stock_movements WHERE reason = 'reserve'",
    )
    .fetch_one(shop.service_db.pool())
    .await
    .unwrap();
    assert!(by_message > 0, "no order reached the service by message");
    shop.assert_both_sides_agree().await;
}

async fn a_payment_timeout_voids_the_charge_and_releases_the_stock(db: TestDb, broker: Broker) {
    let (mut shop, products) = Shop::start(db, &broker, 1, 5).await;
    shop.cut_over().await;
    let product = products[0];
    let (status, body) = shop.order(&[product], "tok_timeout").await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["order_status"], "payment_failed");
    let order_id = body["order_id"].as_i64().unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("voided"),
        "{body}"
    );
    // The provider took the money before its answer was lost: the charge is voided there.
    assert_eq!(
        shop.provider.charge_state(&format!("order-{order_id}")),
        Some(FakeCharge::Voided)
    );
    // The reservation was released by the service (the owner) and the stock is whole again.
    eventually(Duration::from_secs(10), "the release", || async {
        shop.ledger(true, product).await == (5, 0, 0)
    })
    .await;
    let voided: Option<String> = sqlx::query_scalar(
        "SELECT voided_at FROM payments_payments WHERE order_id = $1 AND status = 'timed_out'",
    )
    .bind(order_id)
    .fetch_one(shop.monolith_db.pool())
    .await
    .unwrap();
    assert!(voided.is_some(), "the payment record says voided");
    let _ = &shop.monolith_url;
    shop.assert_both_sides_agree().await;
}

/// (namespace, base URL) of a JetStream broker URL.
fn split(broker: &Broker) -> (String, String) {
    let (base, namespace) = broker.url.split_once("?namespace=").unwrap();
    (base.to_owned(), namespace.to_owned())
}

/// Orders placed by `clients` concurrent clients, `each` orders each, one unit of `product`;
/// returns the answers' statuses.
async fn place_concurrently(
    shop: &Arc<Shop>,
    product: i64,
    clients: usize,
    each: usize,
) -> Vec<u16> {
    let tasks = (0..clients).map(|_| {
        let shop = shop.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..each {
                statuses.push(shop.order(&[product], "tok_ok").await.0);
            }
            statuses
        })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect()
}

/// After a run: every order settled, confirmed orders took exactly what the owner's stock lost,
/// nothing is held, each reserving order reserved once, and both databases agree.
async fn assert_settled_and_consistent(shop: &Shop, product: i64, stock: i64) {
    shop.settled_orders().await;
    let sold = shop
        .confirmed_units()
        .await
        .get(&product)
        .copied()
        .unwrap_or(0);
    let (available, held, committed) = shop.ledger(true, product).await;
    assert_eq!((held, committed, available + sold), (0, sold, stock));
    let reserves: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT order_id, CAST(COUNT(*) AS BIGINT) FROM stock_movements WHERE reason = 'reserve' GROUP BY order_id",
    )
    .fetch_all(shop.service_db.pool())
    .await
    .unwrap();
    assert!(
        reserves.iter().all(|(_, n)| *n == 1),
        "an order reserved twice: {reserves:?}"
    );
    shop.assert_both_sides_agree().await;
}

async fn every_message_delivered_twice_is_applied_once(db: TestDb, broker: Broker) {
    let (base, namespace) = split(&broker);
    // Both sides publish every message twice, each copy under its own broker id: the broker
    // delivers both, and only the inboxes stand between them and a double effect.
    let transport =
        messaging::jetstream::JetStream::connect(&base, &namespace, Duration::from_secs(2))
            .await
            .unwrap()
            .publishing_twice();
    let (mut shop, products) = Shop::start_with(db, Arc::new(transport), 1, 30).await;
    shop.cut_over().await;
    let shop = Arc::new(shop);
    let statuses = place_concurrently(&shop, products[0], 10, 5).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        30,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [201, 409].contains(s)),
        "{statuses:?}"
    );
    assert_settled_and_consistent(&shop, products[0], 30).await;
    // The duplicates did arrive: the inboxes hold one id per message, and turned the copies away.
    let received: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM inbox")
        .fetch_one(shop.service_db.pool())
        .await
        .unwrap();
    assert!(
        received >= 50,
        "the service's inbox saw {received} command(s)"
    );
}

/// A NATS server of this test's own (JetStream on, its store in a folder of its own), which it
/// can stop and start again on the same port.
struct OwnNats {
    port: u16,
    store: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn binary() -> String {
        std::env::var("NATS_SERVER").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server".to_owned()
            } else {
                "nats-server".to_owned()
            }
        })
    }

    async fn start() -> OwnNats {
        // A free port: bound, then handed to the server (which binds 127.0.0.1 only).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = OwnNats {
            port,
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        nats.run().await;
        nats
    }

    async fn run(&mut self) {
        let child = std::process::Command::new(Self::binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (set NATS_SERVER): {e}", Self::binary()));
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "nats-server to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// Stops it the way a restart does (SIGTERM: it stores what it holds), and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn url(&self, namespace: &str) -> String {
        format!("nats://127.0.0.1:{}?namespace={namespace}", self.port)
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn the_saga_resumes_after_the_broker_restarts(db: TestDb, broker: Broker) {
    let (_, namespace) = split(&broker);
    let mut nats = OwnNats::start().await;
    let transport = messaging::connect(&nats.url(&namespace), Duration::from_secs(2))
        .await
        .unwrap();
    let (mut shop, products) = Shop::start_with(db, transport, 1, 100).await;
    shop.cut_over().await;
    let shop = Arc::new(shop);
    let product = products[0];
    let load = {
        let shop = shop.clone();
        tokio::spawn(async move { place_concurrently(&shop, product, 6, 10).await })
    };
    // Mid-run (some orders placed, not all), the broker goes away and comes back.
    let placed = || async {
        sqlx::query_scalar::<_, i64>("SELECT CAST(COUNT(*) AS BIGINT) FROM orders_orders")
            .fetch_one(shop.monolith_db.pool())
            .await
            .unwrap()
    };
    eventually(
        Duration::from_secs(20),
        "orders before the restart",
        || async { placed().await >= 10 },
    )
    .await;
    nats.stop();
    nats.run().await;
    let statuses = load.await.unwrap();
    // Orders that waited out the outage may have been answered 202 (still pending): they
    // settle once the broker is back, like every other.
    assert!(
        statuses.iter().all(|s| [201, 202, 409].contains(s)),
        "{statuses:?}"
    );
    assert_settled_and_consistent(&shop, product, 100).await;
    assert_eq!(
        shop.confirmed_units().await.get(&product).copied(),
        Some(60),
        "every order had stock: each is confirmed"
    );
}
