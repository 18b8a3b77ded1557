//! `POST /accounts`, `GET /accounts/{id}`.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, TestDb};

db_test!(
    register_and_read_customer,
    duplicate_email_conflicts,
    invalid_customers_are_refused
);

async fn register_and_read_customer(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app
        .post(
            "/accounts",
            json!({"email": " Ada@Example.com ", "name": "Ada"}),
        )
        .await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["email"], "ada@example.com");
    assert_eq!(created.body["name"], "Ada");
    let id = created.body["id"].as_i64().unwrap();
    let read = app.get(&format!("/accounts/{id}")).await;
    read.assert_status(StatusCode::OK);
    assert_eq!(read.body, created.body);
    app.get("/accounts/999999")
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    app.get("/accounts/abc")
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-path-parameter");
}

async fn duplicate_email_conflicts(db: TestDb) {
    let app = TestApp::new(db).await;
    app.customer("grace@example.com").await;
    app.post(
        "/accounts",
        json!({"email": "GRACE@example.com", "name": "Grace again"}),
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "conflict");
}

async fn invalid_customers_are_refused(db: TestDb) {
    let app = TestApp::new(db).await;
    for body in [
        json!({"email": "not-an-email", "name": "X"}),
        json!({"email": "x@example.com", "name": "  "}),
    ] {
        app.post("/accounts", body)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");
    }
    app.post("/accounts", json!({"email": "x@example.com"}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
}
