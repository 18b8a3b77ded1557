//! `PUT /inventory/{product_id}`, `GET /inventory/{product_id}`.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, TestDb};

db_test!(stock_is_set_and_read, invalid_stock_is_refused);

async fn stock_is_set_and_read(db: TestDb) {
    let app = TestApp::new(db).await;
    let id = app.product("STOCK-1", 500, 0).await;
    let created = app
        .post(
            "/catalog/products",
            json!({"sku": "NO-STOCK", "name": "n", "price_cents": 1, "currency": "EUR"}),
        )
        .await;
    let unstocked = created.body["id"].as_i64().unwrap();

    let set = app
        .put(&format!("/inventory/{id}"), json!({"quantity": 42}))
        .await;
    set.assert_status(StatusCode::OK);
    assert_eq!(set.body["product_id"], id);
    assert_eq!(set.body["quantity"], 42);
    assert_eq!(set.body["reserved"], 0);
    assert!(set.body["updated_at"].is_string());
    assert_eq!(app.get(&format!("/inventory/{id}")).await.body, set.body);
    app.put(&format!("/inventory/{id}"), json!({"quantity": 7}))
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(app.stock(id).await, (7, 0));

    let never_set = app.get(&format!("/inventory/{unstocked}")).await;
    never_set.assert_status(StatusCode::OK);
    assert_eq!(never_set.body["quantity"], 0);
    assert_eq!(never_set.body["updated_at"], serde_json::Value::Null);
}

async fn invalid_stock_is_refused(db: TestDb) {
    let app = TestApp::new(db).await;
    let id = app.product("STOCK-2", 500, 5).await;
    app.put(&format!("/inventory/{id}"), json!({"quantity": -1}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");
    app.put(&format!("/inventory/{id}"), json!({"quantity": 1.5}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert_eq!(
        app.stock(id).await,
        (5, 0),
        "refused updates changed nothing"
    );
    app.put("/inventory/987654", json!({"quantity": 1}))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    app.get("/inventory/987654")
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
}
