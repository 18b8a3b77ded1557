//! The order saga: confirmation, compensation, idempotency, no oversell, recovery.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use monolith::orders::{OrderLine, PlaceOrder};
use serde_json::{json, Value};

use crate::helpers::{eventually, TestApp, TestDb};

db_test!(
    confirmed_order_takes_stock,
    declined_payment_is_compensated,
    payment_timeout_is_compensated,
    out_of_stock_rejects_without_touching_stock,
    invalid_orders_are_refused,
    idempotency_key_replays_and_charges_once,
    concurrent_retries_place_one_order,
    no_oversell_under_concurrency,
    recovery_settles_an_abandoned_order,
    a_client_that_hangs_up_cannot_stop_the_saga,
    a_refused_request_does_not_use_up_its_key,
);

fn order(customer: i64, items: &[(i64, i64)], token: &str) -> Value {
    json!({
        "customer_id": customer,
        "items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
        "card_token": token,
    })
}

async fn confirmed_order_takes_stock(db: TestDb) {
    let app = TestApp::new(db).await;
    let customer = app.customer("buyer@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;
    let pot = app.product("POT", 3000, 1).await;

    let placed = app
        .post(
            "/orders",
            order(customer, &[(mug, 2), (pot, 1), (mug, 1)], "tok_ok"),
        )
        .await;
    placed.assert_status(StatusCode::CREATED);
    assert_eq!(placed.body["status"], "confirmed");
    assert_eq!(placed.body["total_cents"], 3 * 1250 + 3000);
    assert_eq!(placed.body["currency"], "EUR");
    assert_eq!(
        placed.body["items"],
        json!([
            {"product_id": mug, "quantity": 3, "unit_price_cents": 1250},
            {"product_id": pot, "quantity": 1, "unit_price_cents": 3000},
        ])
    );
    let id = placed.body["id"].as_i64().unwrap();
    assert_eq!(
        placed.headers.get("location").unwrap(),
        &format!("/orders/{id}")
    );
    assert_eq!(app.stock(mug).await, (2, 0));
    assert_eq!(app.stock(pot).await, (0, 0));
    assert_eq!(app.provider.approved_charges(), 1);

    let read = app.get(&format!("/orders/{id}")).await;
    read.assert_status(StatusCode::OK);
    assert_eq!(read.body, placed.body);
    let listed = app.get(&format!("/orders?customer_id={customer}")).await;
    listed.assert_status(StatusCode::OK);
    assert_eq!(listed.body["items"], json!([placed.body]));
    assert_eq!(
        app.get("/orders?customer_id=424242").await.body["items"],
        json!([])
    );
    app.get("/orders/424242")
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    app.get("/orders")
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-query");
}

async fn declined_payment_is_compensated(db: TestDb) {
    let app = TestApp::new(db).await;
    let customer = app.customer("declined@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;

    let placed = app
        .post("/orders", order(customer, &[(mug, 3)], "tok_decline"))
        .await;
    placed.assert_problem(StatusCode::PAYMENT_REQUIRED, "payment-failed");
    assert_eq!(placed.body["order_status"], "payment_failed");
    let id = placed.body["order_id"]
        .as_i64()
        .expect("the failed order's id");
    assert_eq!(app.stock(mug).await, (5, 0), "the reservation was released");
    assert_eq!(app.provider.approved_charges(), 0);
    let read = app.get(&format!("/orders/{id}")).await;
    assert_eq!(read.body["status"], "payment_failed");
    assert!(read.body["failure_reason"]
        .as_str()
        .unwrap()
        .contains("declined"));
}

async fn payment_timeout_is_compensated(db: TestDb) {
    let app = TestApp::new(db).await;
    let customer = app.customer("slow@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;

    let placed = app
        .post("/orders", order(customer, &[(mug, 2)], "tok_timeout"))
        .await;
    placed.assert_problem(StatusCode::PAYMENT_REQUIRED, "payment-failed");
    assert!(
        placed.body["detail"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{}",
        placed.text
    );
    assert_eq!(app.stock(mug).await, (5, 0));
    let id = placed.body["order_id"].as_i64().unwrap();
    assert_eq!(
        app.get(&format!("/orders/{id}")).await.body["status"],
        "payment_failed"
    );
}

async fn out_of_stock_rejects_without_touching_stock(db: TestDb) {
    let app = TestApp::new(db).await;
    let customer = app.customer("greedy@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;
    let pot = app.product("POT", 3000, 1).await;

    // The mug line fits, the pot line does not: nothing at all is reserved.
    let placed = app
        .post("/orders", order(customer, &[(mug, 2), (pot, 2)], "tok_ok"))
        .await;
    placed.assert_problem(StatusCode::CONFLICT, "out-of-stock");
    assert_eq!(placed.body["order_status"], "rejected");
    let detail = placed.body["detail"].as_str().unwrap();
    assert_eq!(
        detail,
        format!("out of stock: product {pot} has 1 units, 2 requested"),
        "the short product is named"
    );
    assert_eq!(app.stock(mug).await, (5, 0));
    assert_eq!(app.stock(pot).await, (1, 0));
    assert_eq!(
        app.provider.approved_charges(),
        0,
        "a rejected order is never charged"
    );
}

async fn invalid_orders_are_refused(db: TestDb) {
    let app = TestApp::new(db).await;
    let customer = app.customer("careless@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;
    let usd = app
        .post(
            "/catalog/products",
            json!({"sku": "USD", "name": "Dollar item", "price_cents": 5, "currency": "USD"}),
        )
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    for body in [
        order(customer, &[], "tok_ok"),
        order(customer, &[(mug, 0)], "tok_ok"),
        order(customer, &[(mug, -2)], "tok_ok"),
        order(customer, &[(mug, 1001)], "tok_ok"),
        order(customer, &[(mug, 1)], ""),
        order(999_999, &[(mug, 1)], "tok_ok"),
        order(customer, &[(888_888, 1)], "tok_ok"),
        order(customer, &[(mug, 1), (usd, 1)], "tok_ok"),
    ] {
        app.post("/orders", body)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");
    }
    app.post(
        "/orders",
        json!({"customer_id": customer, "card_token": "tok_ok"}),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert_eq!(app.stock(mug).await, (5, 0));
    assert_eq!(
        app.get(&format!("/orders?customer_id={customer}"))
            .await
            .body["items"],
        json!([]),
        "no order was written"
    );
}

async fn idempotency_key_replays_and_charges_once(db: TestDb) {
    let app = TestApp::new(db).await;
    let customer = app.customer("retry@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;
    let body = order(customer, &[(mug, 2)], "tok_ok");
    let key = [("idempotency-key", "order-attempt-1")];

    let first = app
        .request_with(Method::POST, "/orders", Some(body.clone()), &key)
        .await;
    first.assert_status(StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = app
        .request_with(Method::POST, "/orders", Some(body.clone()), &key)
        .await;
    again.assert_status(StatusCode::CREATED);
    assert_eq!(again.body, first.body, "the retry returns the first result");
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.provider.approved_charges(), 1, "charged once");
    assert_eq!(app.stock(mug).await, (3, 0), "stock taken once");

    let other = order(customer, &[(mug, 1)], "tok_ok");
    app.request_with(Method::POST, "/orders", Some(other), &key)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");

    // A failure is replayed as well: the declined order is not retried behind the client's back.
    let declined = order(customer, &[(mug, 1)], "tok_decline");
    let dkey = [("idempotency-key", "order-attempt-2")];
    let d1 = app
        .request_with(Method::POST, "/orders", Some(declined.clone()), &dkey)
        .await;
    d1.assert_problem(StatusCode::PAYMENT_REQUIRED, "payment-failed");
    let d2 = app
        .request_with(Method::POST, "/orders", Some(declined), &dkey)
        .await;
    d2.assert_problem(StatusCode::PAYMENT_REQUIRED, "payment-failed");
    assert_eq!(d2.body, d1.body);
    let orders = app.get(&format!("/orders?customer_id={customer}")).await;
    assert_eq!(
        orders.body["items"].as_array().unwrap().len(),
        2,
        "one order per key"
    );

    app.request_with(
        Method::POST,
        "/orders",
        Some(order(customer, &[(mug, 1)], "tok_ok")),
        &[("idempotency-key", "")],
    )
    .await
    .assert_problem(StatusCode::BAD_REQUEST, "bad-request");
}

async fn concurrent_retries_place_one_order(db: TestDb) {
    let app = Arc::new(TestApp::new(db).await);
    let customer = app.customer("impatient@example.com").await;
    let mug = app.product("MUG", 1250, 50).await;
    let body = order(customer, &[(mug, 1)], "tok_ok");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            let body = body.clone();
            tokio::spawn(async move {
                app.request_with(
                    Method::POST,
                    "/orders",
                    Some(body),
                    &[("idempotency-key", "same-key")],
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        let r = task.await.unwrap();
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert_eq!(r.body["type"], "/problems/conflict", "{}", r.text),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert!(created >= 1);
    assert_eq!(app.provider.approved_charges(), 1);
    assert_eq!(app.stock(mug).await, (49, 0));
    let orders = app.get(&format!("/orders?customer_id={customer}")).await;
    assert_eq!(orders.body["items"].as_array().unwrap().len(), 1);
}

async fn no_oversell_under_concurrency(db: TestDb) {
    let app = Arc::new(TestApp::new(db).await);
    let mug = app.product("LAST-MUGS", 1250, 10).await;
    let mut customers = Vec::new();
    for i in 0..50 {
        customers.push(app.customer(&format!("racer{i}@example.com")).await);
    }
    let tasks: Vec<_> = customers
        .into_iter()
        .map(|customer| {
            let app = app.clone();
            tokio::spawn(async move {
                app.post("/orders", order(customer, &[(mug, 1)], "tok_ok"))
                    .await
            })
        })
        .collect();
    let (mut confirmed, mut rejected) = (0, 0);
    for task in tasks {
        let r = task.await.unwrap();
        match r.status {
            StatusCode::CREATED => confirmed += 1,
            StatusCode::CONFLICT => {
                assert_eq!(r.body["type"], "/problems/out-of-stock", "{}", r.text);
                rejected += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!((confirmed, rejected), (10, 40));
    assert_eq!(app.stock(mug).await, (0, 0));
    assert_eq!(app.provider.approved_charges(), 10);
}

async fn recovery_settles_an_abandoned_order(db: TestDb) {
    // A long provider timeout keeps the saga parked at the charge step, reservation held.
    let app = TestApp::with_payment_timeout(db, Duration::from_secs(600)).await;
    let customer = app.customer("crash@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;
    let orders = app.services.orders.clone();
    let saga = tokio::spawn(async move {
        use monolith::orders::OrdersApi;
        orders
            .place_order(
                PlaceOrder {
                    customer_id: customer,
                    items: vec![OrderLine {
                        product_id: mug,
                        quantity: 2,
                    }],
                    card_token: "tok_timeout".to_owned(),
                },
                None,
            )
            .await
    });
    eventually(
        Duration::from_secs(10),
        "the reservation to be held",
        || async { app.stock(mug).await == (3, 2) },
    )
    .await;
    // The process "dies" mid-saga: the order stays pending, the units stay reserved.
    saga.abort();
    let _ = saga.await;
    let listed = app.get(&format!("/orders?customer_id={customer}")).await;
    assert_eq!(listed.body["items"][0]["status"], "pending");
    assert_eq!(app.stock(mug).await, (3, 2));

    assert_eq!(
        app.services
            .orders
            .recover_pending(Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "too recent"
    );
    assert_eq!(
        app.services
            .orders
            .recover_pending(Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(app.stock(mug).await, (5, 0), "the units are back");
    let listed = app.get(&format!("/orders?customer_id={customer}")).await;
    assert_eq!(listed.body["items"][0]["status"], "payment_failed");
    assert_eq!(
        app.services
            .orders
            .recover_pending(Duration::ZERO)
            .await
            .unwrap(),
        0,
        "settled once"
    );
}

async fn a_client_that_hangs_up_cannot_stop_the_saga(db: TestDb) {
    // The charge takes the whole payment timeout (tok_timeout): the client gives up long before.
    let app = TestApp::with_payment_timeout(db, Duration::from_millis(500)).await;
    let customer = app.customer("gone@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;
    let body = order(customer, &[(mug, 2)], "tok_timeout");
    let key = [("idempotency-key", "hung-up")];
    let hung_up = tokio::time::timeout(
        Duration::from_millis(100),
        app.request_with(Method::POST, "/orders", Some(body.clone()), &key),
    )
    .await;
    assert!(hung_up.is_err(), "the client was meant to hang up mid-saga");
    // The saga runs on: the order settles, its stock comes back, and the key replays the end.
    eventually(Duration::from_secs(10), "the order to settle", || async {
        let listed = app.get(&format!("/orders?customer_id={customer}")).await;
        listed.body["items"][0]["status"] == "payment_failed"
    })
    .await;
    assert_eq!(app.stock(mug).await, (5, 0), "the reservation was released");
    // The key is completed right after the order settles: until then a retry hears 409.
    eventually(
        Duration::from_secs(10),
        "the key to hold the outcome",
        || async {
            let replay = app
                .request_with(Method::POST, "/orders", Some(body.clone()), &key)
                .await;
            replay.status != StatusCode::CONFLICT
        },
    )
    .await;
    let replay = app
        .request_with(Method::POST, "/orders", Some(body), &key)
        .await;
    replay.assert_problem(StatusCode::PAYMENT_REQUIRED, "payment-failed");
    assert_eq!(replay.headers.get("idempotent-replayed").unwrap(), "true");
}

async fn a_refused_request_does_not_use_up_its_key(db: TestDb) {
    let app = TestApp::new(db).await;
    let customer = app.customer("typo@example.com").await;
    let mug = app.product("MUG", 1250, 5).await;
    let key = [("idempotency-key", "first-try")];
    // A product that does not exist: refused before anything is recorded.
    app.request_with(
        Method::POST,
        "/orders",
        Some(order(customer, &[(mug + 1000, 1)], "tok_ok")),
        &key,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");
    // The corrected request under the same key is placed, not refused as a different request.
    let placed = app
        .request_with(
            Method::POST,
            "/orders",
            Some(order(customer, &[(mug, 1)], "tok_ok")),
            &key,
        )
        .await;
    placed.assert_status(StatusCode::CREATED);
    assert!(placed.headers.get("idempotent-replayed").is_none());
    assert_eq!(app.provider.approved_charges(), 1);
}
