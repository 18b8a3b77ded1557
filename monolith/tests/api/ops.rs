//! `/livez`, `/readyz`, `/metrics`, `/openapi.json`.

use axum::http::{header, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, TestDb};

db_test!(
    health_endpoints,
    metrics_count_requests_per_route_and_status
);

async fn health_endpoints(db: TestDb) {
    let app = TestApp::new(db).await;
    app.get("/livez").await.assert_status(StatusCode::OK);
    let ready = app.get("/readyz").await;
    ready.assert_status(StatusCode::OK);
    assert_eq!(ready.body["status"], "ok");
    app.db.close().await;
    app.get("/readyz")
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE, "not-ready");
    app.get("/livez").await.assert_status(StatusCode::OK);
}

async fn metrics_count_requests_per_route_and_status(db: TestDb) {
    let app = TestApp::new(db).await;
    for _ in 0..3 {
        app.get("/catalog/products/4242")
            .await
            .assert_status(StatusCode::NOT_FOUND);
    }
    app.get("/catalog/products")
        .await
        .assert_status(StatusCode::OK);
    let metrics = app.get("/metrics").await;
    metrics.assert_status(StatusCode::OK);
    assert!(metrics.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .contains("text"));
    let text = metrics.text;
    assert!(
        text.contains(
            r#"strangler_http_requests_total{method="GET",route="/catalog/products/{id}",status="404"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"strangler_http_requests_total{method="GET",route="/catalog/products",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"strangler_http_request_duration_seconds_count{method="GET",route="/catalog/products/{id}",status="404"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("strangler_http_request_duration_seconds_bucket{"),
        "{text}"
    );
}

#[tokio::test]
async fn openapi_document_matches_snapshot() {
    let app = TestApp::new(TestDb::sqlite().await).await;
    let response = app.get("/openapi.json").await;
    response.assert_status(StatusCode::OK);
    let doc: Value = response.body;
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/accounts", "post"),
        ("/accounts/{id}", "get"),
        ("/catalog/products", "get"),
        ("/catalog/products", "post"),
        ("/catalog/products/{id}", "get"),
        ("/catalog/products/{id}", "put"),
        ("/catalog/products/{id}", "delete"),
        ("/inventory/{product_id}", "get"),
        ("/inventory/{product_id}", "put"),
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{id}", "get"),
        ("/livez", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    // Any change to the API shows up here; accept it deliberately with INSTA_UPDATE=always.
    insta::assert_json_snapshot!("openapi", doc);
}
