//! The shop with its inventory carve-out, served for real: the monolith, the inventory service,
//! a proxy replica and the data sync, the orders saga over a message transport. Shared by the
//! saga's end-to-end tests and its benchmark (`benches/saga.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use e2e::{eventually, Broker, TestDb};
use monolith::app::Application;
use monolith::config::ServeConfig;
use monolith::payments::FakeProvider;
use serde_json::{json, Value};
use sqlkit::{Db, DbOptions};
use strangler_proxy::app::Replica;
use strangler_proxy::config::{Config, ProxyArgs};
use strangler_sync::backfill::Backfill;
use strangler_sync::sides::{Direction, SyncSetup};
use strangler_sync::{capture, verify};

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
pub(crate) struct Shop {
    pub(crate) monolith_url: String,
    pub(crate) proxy_url: String,
    admin_url: String,
    pub(crate) monolith_db: Db,
    pub(crate) service_db: Db,
    setup: SyncSetup,
    pub(crate) provider: Arc<FakeProvider>,
    pub(crate) http: reqwest::Client,
    pub(crate) customer: i64,
    stoppers: Vec<Stopper>,
    _dbs: Vec<TestDb>,
    /// Held by a shop on PostgreSQL while it runs (see [`POSTGRES_SHOPS`]).
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// One shop on PostgreSQL at a time: each holds some 60 connections at its busiest (the
/// monolith's, the service's and the control database's pools, the relays', the proxy's), and a
/// few at once exhaust a default server's 100 while the other PostgreSQL tests run beside them.
static POSTGRES_SHOPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The monolith's pool in the tests: several shops' pools fit in one PostgreSQL server beside
/// the other tests.
const TEST_POOL: u32 = 8;

impl Shop {
    /// Everything running, the inventory in canary with forward sync, `stock` units of each of
    /// `products` new products.
    pub(crate) async fn start(
        db: TestDb,
        broker: &Broker,
        products: usize,
        stock: i64,
    ) -> (Shop, Vec<i64>) {
        Shop::start_pooled(db, broker, products, stock, TEST_POOL).await
    }

    /// As [`Shop::start`], with `monolith_pool` database connections for the monolith.
    pub(crate) async fn start_pooled(
        db: TestDb,
        broker: &Broker,
        products: usize,
        stock: i64,
        monolith_pool: u32,
    ) -> (Shop, Vec<i64>) {
        let transport = messaging::connect(&broker.url, Duration::from_secs(2))
            .await
            .unwrap();
        Shop::launch(db, transport, products, stock, monolith_pool).await
    }

    /// As [`Shop::start`], over `transport`.
    pub(crate) async fn start_with(
        db: TestDb,
        transport: Arc<dyn messaging::Transport>,
        products: usize,
        stock: i64,
    ) -> (Shop, Vec<i64>) {
        Shop::launch(db, transport, products, stock, TEST_POOL).await
    }

    async fn launch(
        db: TestDb,
        transport: Arc<dyn messaging::Transport>,
        products: usize,
        stock: i64,
        monolith_pool: u32,
    ) -> (Shop, Vec<i64>) {
        let turn = if db.url.starts_with("postgres") {
            Some(POSTGRES_SHOPS.lock().await)
        } else {
            None
        };
        let (service_test_db, control_test_db) = (twin(&db).await, twin(&db).await);
        let mut stoppers = Vec::new();
        let provider = Arc::new(FakeProvider::new());
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: db.url.clone(),
            payment_timeout_ms: 300,
            settle_wait_ms: 10_000,
            recover_interval_ms: 200,
            db_max_connections: monolith_pool,
            ..ServeConfig::defaults()
        };
        let app = Application::build_with_parts(&config, provider.clone(), Some(transport.clone()))
            .await
            .unwrap();
        let monolith_url = format!("http://{}", app.local_addr());
        let (stop, stopped) = stopper();
        tokio::spawn(app.run_until(stopped));
        stoppers.push(stop);
        // A client drops an idle connection before the proxy does (after its 10 s header
        // timeout): else a request sent as the proxy closes it fails half-way, the race every
        // HTTP/1.1 keep-alive client avoids this way.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
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
            _turn: turn,
        };
        shop.settle(Direction::Forward).await;
        (shop, ids)
    }

    /// Waits until the relay of `direction` applied everything.
    pub(crate) async fn settle(&self, direction: Direction) {
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
    pub(crate) async fn cut_over(&mut self) {
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
    pub(crate) async fn order(&self, products: &[i64], token: &str) -> (u16, Value) {
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
    pub(crate) async fn settled_orders(&self) -> Vec<Value> {
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
    pub(crate) async fn confirmed_units(&self) -> BTreeMap<i64, i64> {
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

    /// The owner's (the service's) ledger of `product` once nothing is held: a failed order
    /// settles before its release, sent by message, is applied. A reservation that is never
    /// released fails the wait.
    pub(crate) async fn ledger_at_rest(&self, product: i64) -> (i64, i64, i64) {
        eventually(
            Duration::from_secs(20),
            "every release to be applied",
            || async { self.ledger(true, product).await.1 == 0 },
        )
        .await;
        self.ledger(true, product).await
    }

    /// (available, held, committed units) of a product in `db`'s own schema.
    pub(crate) async fn ledger(&self, service: bool, product: i64) -> (i64, i64, i64) {
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
    pub(crate) async fn assert_both_sides_agree(&self) {
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

pub(crate) async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = http.post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
