//! A customer's journey through the shop, served for real (TCP, the server's own start-up and
//! graceful shutdown), on SQLite and on PostgreSQL.

use monolith::app::Application;
use monolith::config::ServeConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

use e2e::TestDb;

db_test!(shopping_journey);

async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn post_json(http: &reqwest::Client, url: impl reqwest::IntoUrl, body: &Value) -> Value {
    http.post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn shopping_journey(db: TestDb) {
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        payment_timeout_ms: 200,
        seed_products: 30,
        seed_customers: 5,
        ..ServeConfig::defaults()
    };
    let app = Application::build(&config).await.expect("the shop starts");
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();

    // The seeded catalog pages through all 30 products.
    let mut seen = 0;
    let mut url = format!("{base}/catalog/products?limit=7");
    loop {
        let page = get_json(&http, url.as_str()).await;
        seen += page["items"].as_array().unwrap().len();
        match page["next"].as_str() {
            Some(next) => url = format!("{base}/catalog/products?limit=7&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, 30);

    let customer = post_json(
        &http,
        format!("{base}/accounts"),
        &json!({"email": "journey@example.com", "name": "Journey"}),
    )
    .await;
    let customer = customer["id"].as_i64().unwrap();
    let product = post_json(
        &http,
        format!("{base}/catalog/products"),
        &json!({"sku": "JOURNEY-1", "name": "Travel Mug", "price_cents": 1800, "currency": "EUR"}),
    )
    .await;
    let product = product["id"].as_i64().unwrap();
    let put = http
        .put(format!("{base}/inventory/{product}"))
        .json(&json!({"quantity": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);

    let order = json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 2}], "card_token": "tok_ok"});
    let first = http
        .post(format!("{base}/orders"))
        .header("Idempotency-Key", "journey-1")
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let retry = http
        .post(format!("{base}/orders"))
        .header("Idempotency-Key", "journey-1")
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);

    let declined = http
        .post(format!("{base}/orders"))
        .json(&json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}], "card_token": "tok_decline"}))
        .send()
        .await
        .unwrap();
    assert_eq!(declined.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        declined.headers()["content-type"],
        "application/problem+json"
    );

    let stock = get_json(&http, format!("{base}/inventory/{product}")).await;
    assert_eq!(
        (stock["quantity"].as_i64(), stock["reserved"].as_i64()),
        (Some(1), Some(0))
    );
    let orders = get_json(&http, format!("{base}/orders?customer_id={customer}")).await;
    let statuses: Vec<&str> = orders["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["payment_failed", "confirmed"]);

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"strangler_http_requests_total{method="POST",route="/orders",status="201"} 2"#
        ),
        "{metrics}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().expect("clean shutdown");
    assert!(
        http.get(format!("{base}/livez")).send().await.is_err(),
        "the listener is closed"
    );
}
