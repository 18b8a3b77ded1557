//! The inventory carve-out with its saga across services: the real monolith, the real inventory
//! service, the real proxy and data sync, and the orders saga over the message transport
//! (embedded by default, NATS JetStream in the `--ignored` variants).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use e2e::{eventually, Broker, TestDb};
use monolith::payments::FakeCharge;
use serde_json::{json, Value};

use crate::inventory_shop::{post, Shop};

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
    // Every order settled within the request's wait (10 s, on two cores shared with the other
    // tests): none was answered 202.
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
        let (available, held, committed) = shop.ledger_at_rest(*product).await;
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
    let (available, held, committed) = shop.ledger_at_rest(product).await;
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
