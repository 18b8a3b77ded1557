//! The catalog carve-out's data sync between the real monolith and the real catalog service:
//! what the monolith's API writes, the service's API serves identically, and back.

use std::path::Path;

use e2e::TestDb;
use monolith::app::Application;
use monolith::config::ServeConfig;
use serde_json::{json, Value};
use sqlkit::{Db, DbOptions};
use strangler_sync::mapping::Mapping;
use strangler_sync::relay::Relay;
use strangler_sync::{capture, verify};

struct Running {
    url: String,
    db: Db,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), String>>,
}

impl Running {
    /// Stops the server and waits until it has closed its listener and connections.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}

async fn monolith(db: &TestDb) -> Running {
    monolith_with(db, None).await
}

async fn monolith_with(db: &TestDb, catalog_url: Option<String>) -> Running {
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        catalog_url,
        ..ServeConfig::defaults()
    };
    let app = Application::build(&config).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .map_err(|e| format!("{e:#}"))
    });
    let db = Db::connect_unmigrated(&db.url, &DbOptions::default())
        .await
        .unwrap();
    Running {
        url,
        db,
        stop,
        server,
    }
}

async fn service(db: &TestDb) -> Running {
    let config = catalog_service::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        provider_states: false,
        fault_injection: false,
    };
    let service = catalog_service::Service::build(&config).await.unwrap();
    let url = format!("http://{}", service.local_addr());
    let db = service.db().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        service
            .run_until(async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| format!("{e:#}"))
    });
    Running {
        url,
        db,
        stop,
        server,
    }
}

async fn twin(db: &TestDb) -> TestDb {
    if db.url.starts_with("postgres") {
        TestDb::postgres().await
    } else {
        TestDb::sqlite().await
    }
}

async fn json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

db_test!(
    both_sides_refuse_the_same_bad_input,
    the_service_serves_what_the_monolith_wrote_and_back,
    orders_keep_working_with_the_catalog_outside
);

async fn orders_keep_working_with_the_catalog_outside(db: TestDb) {
    let other = twin(&db).await;
    let (m, s) = (monolith(&db).await, service(&other).await);
    let http = reqwest::Client::new();
    let post = |url: String, body: Value| {
        let http = http.clone();
        async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (_, customer) = post(
        format!("{}/accounts", m.url),
        json!({"email": "out@example.com", "name": "Out"}),
    )
    .await;
    let (_, product) = post(
        format!("{}/catalog/products", m.url),
        json!({"sku": "OUT-1", "name": "Teapot", "price_cents": 1800, "currency": "EUR"}),
    )
    .await;
    let product = product["id"].as_i64().unwrap();
    let stock = http
        .put(format!("{}/inventory/{product}", m.url))
        .json(&json!({"quantity": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(stock.status(), 200);

    // The catalog's rows move to the service, which then owns the price.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extracted/catalog/sync.toml");
    let mut mapping = Mapping::load(&path).unwrap();
    mapping.check(&m.db, &s.db).await.unwrap();
    capture::install(&m.db, &mapping).await.unwrap();
    strangler_sync::backfill::Backfill::new(m.db.clone(), s.db.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .run(|_| {})
        .await
        .unwrap();
    let repriced = http
        .put(format!("{}/catalog/products/{product}", s.url))
        .json(&json!({"sku": "OUT-1", "name": "Teapot", "price_cents": 2000, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(repriced.status(), 200);

    // A monolith whose catalog is the service: its orders price from there.
    let outside = monolith_with(&db, Some(s.url.clone())).await;
    let (status, order) = post(
        format!("{}/orders", outside.url),
        json!({"customer_id": customer["id"], "items": [{"product_id": product, "quantity": 2}], "card_token": "tok_ok"}),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["total_cents"], 4000, "priced by the service");
    let (status, missing) = post(
        format!("{}/orders", outside.url),
        json!({"customer_id": customer["id"], "items": [{"product_id": 999_999, "quantity": 1}], "card_token": "tok_ok"}),
    )
    .await;
    assert!((400..500).contains(&status), "{status} {missing}");
    // Its catalog routes answer from the service too.
    let (status, read) = json(
        &http,
        &format!("{}/catalog/products/{product}", outside.url),
    )
    .await;
    assert_eq!((status, read["price_cents"].as_i64()), (200, Some(2000)));

    // The catalog down: a clear error, not a hang.
    s.stop().await;
    let (status, down) = post(
        format!("{}/orders", outside.url),
        json!({"customer_id": customer["id"], "items": [{"product_id": product, "quantity": 1}], "card_token": "tok_ok"}),
    )
    .await;
    assert_eq!(status, 503, "{down}");
    assert_eq!(down["type"], "/problems/catalog-unavailable");
}

async fn the_service_serves_what_the_monolith_wrote_and_back(db: TestDb) {
    let other = twin(&db).await;
    let (m, s) = (monolith(&db).await, service(&other).await);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extracted/catalog/sync.toml");
    let mut mapping = Mapping::load(&path).unwrap();
    mapping.check(&m.db, &s.db).await.unwrap();
    capture::install(&m.db, &mapping).await.unwrap();
    let reverse = mapping.reversed();
    capture::install(&s.db, &reverse).await.unwrap();
    let mut forward = Relay::new(m.db.clone(), s.db.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    let mut backward = Relay::new(s.db.clone(), m.db.clone(), reverse.clone(), "reverse")
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (sku, name, price) in [
        ("LAMP-1", "Desk Lamp", 1999),
        ("MUG-1", "Coffee Mug", 850),
        ("KET-1", "Kettle", 3200),
    ] {
        let created: Value = http
            .post(format!("{}/catalog/products", m.url))
            .json(&json!({"sku": sku, "name": name, "price_cents": price, "currency": "EUR"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_i64().unwrap());
    }
    let updated = http
        .put(format!("{}/catalog/products/{}", m.url, ids[1]))
        .json(&json!({"sku": "MUG-1", "name": "Big Coffee Mug", "description": "Holds more.", "price_cents": 990, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let deleted = http
        .delete(format!("{}/catalog/products/{}", m.url, ids[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    forward.drain().await.unwrap();

    // Same answers from both, for one product, a page and a search.
    for path in [
        format!("/catalog/products/{}", ids[1]),
        format!("/catalog/products/{}", ids[2]),
        "/catalog/products?limit=1".to_owned(),
        "/catalog/products?q=coffee".to_owned(),
    ] {
        let from_monolith = json(&http, &format!("{}{path}", m.url)).await;
        let from_service = json(&http, &format!("{}{path}", s.url)).await;
        assert_eq!(from_monolith, from_service, "{path}");
    }
    let report = verify::verify(&m.db, &s.db, &mapping).await.unwrap();
    assert!(report.clean(), "{}", report.summary());

    // After a cut-over the service takes the writes; reverse sync keeps the monolith current.
    let renamed = http
        .put(format!("{}/catalog/products/{}", s.url, ids[0]))
        .json(&json!({"sku": "LAMP-1", "name": "Desk Lamp Pro", "price_cents": 2499, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    backward.drain().await.unwrap();
    forward.drain().await.unwrap();
    let path = format!("/catalog/products/{}", ids[0]);
    let (status, from_monolith) = json(&http, &format!("{}{path}", m.url)).await;
    assert_eq!(status, 200);
    assert_eq!(from_monolith["name"], "Desk Lamp Pro");
    assert_eq!(from_monolith["price_cents"], 2499);
    assert_eq!(
        from_monolith,
        json(&http, &format!("{}{path}", s.url)).await.1
    );
    assert!(verify::verify(&m.db, &s.db, &mapping)
        .await
        .unwrap()
        .clean());
}

/// The monolith and the service accept one domain: what one refuses the other refuses the same
/// way (so no row the monolith takes can stop the relay), on both backends.
async fn both_sides_refuse_the_same_bad_input(db: TestDb) {
    assert_eq!(
        monolith::catalog::MAX_PRICE_CENTS,
        catalog_service::store::MAX_PRICE_CENTS,
        "the two sides must share the price bound"
    );
    let other = twin(&db).await;
    let (m, s) = (monolith(&db).await, service(&other).await);
    let http = reqwest::Client::new();
    let product = |sku: &str, name: &str, price: i64| json!({"sku": sku, "name": name, "price_cents": price, "currency": "EUR"});
    let max = monolith::catalog::MAX_PRICE_CENTS;
    for (body, status) in [
        (product("NUL-1", "a\u{0}b", 100), 422),
        (product("BIG-1", "Big", max + 1), 422),
        (product("BIG-2", "Bigger", i64::MAX), 422),
        (product("TOP-1", "Dearest", max), 201),
    ] {
        let mut answers = Vec::new();
        for base in [&m.url, &s.url] {
            let response = http
                .post(format!("{base}/catalog/products"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap();
            answers.push((status, answer["type"].clone()));
        }
        assert_eq!(answers[0].0, status, "{body}: {answers:?}");
        assert_eq!(answers[0], answers[1], "{body}");
    }
    for base in [&m.url, &s.url] {
        let (status, answer) = json(&http, &format!("{base}/catalog/products?q=a%00b")).await;
        assert_eq!(
            (status, answer["type"].as_str()),
            (400, Some("/problems/invalid-query"))
        );
    }
}
