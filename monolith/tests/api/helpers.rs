//! Test support: a database per test, an in-process shop, and request helpers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use monolith::app::{self, Services};
use monolith::db::{Db, DbOptions};
use monolith::payments::FakeProvider;
use serde_json::{json, Value};
use telemetry::metrics::Metrics;
use tower::ServiceExt;

pub use e2e::{eventually, TestDb};

/// A shop served in-process.
pub struct TestApp {
    pub router: Router,
    pub db: Db,
    pub services: Services,
    pub provider: Arc<FakeProvider>,
    _test_db: TestDb,
}

/// The payment timeout of test shops: `tok_timeout` fails after this long.
pub const PAYMENT_TIMEOUT: Duration = Duration::from_millis(200);

/// The body limit of test shops.
pub const BODY_LIMIT: usize = 16 * 1024;

impl TestApp {
    pub async fn new(test_db: TestDb) -> TestApp {
        Self::with_payment_timeout(test_db, PAYMENT_TIMEOUT).await
    }

    pub async fn with_payment_timeout(test_db: TestDb, timeout: Duration) -> TestApp {
        let options = DbOptions {
            max_connections: 8,
            ..DbOptions::default()
        };
        let db = Db::connect(&test_db.url, &options)
            .await
            .expect("connect and migrate");
        let provider = Arc::new(FakeProvider::new());
        let services = Services::new(&db, provider.clone(), timeout);
        let router = app::router(&services, &db, Metrics::new(), BODY_LIMIT);
        TestApp {
            router,
            db,
            services,
            provider,
            _test_db: test_db,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible router");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        TestResponse {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> TestResponse {
        self.request_with(method, path, body, &[]).await
    }

    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        };
        self.send(request.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> TestResponse {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> TestResponse {
        self.request(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> TestResponse {
        self.request(Method::DELETE, path, None).await
    }

    /// Registers a customer and returns its id.
    pub async fn customer(&self, email: &str) -> i64 {
        let r = self
            .post(
                "/accounts",
                json!({"email": email, "name": "Test Customer"}),
            )
            .await;
        r.assert_status(StatusCode::CREATED);
        r.body["id"].as_i64().expect("customer id")
    }

    /// Adds a product priced `price_cents` EUR with `stock` units and returns its id.
    pub async fn product(&self, sku: &str, price_cents: i64, stock: i64) -> i64 {
        let r = self
            .post(
                "/catalog/products",
                json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "currency": "EUR"}),
            )
            .await;
        r.assert_status(StatusCode::CREATED);
        let id = r.body["id"].as_i64().expect("product id");
        self.put(&format!("/inventory/{id}"), json!({"quantity": stock}))
            .await
            .assert_status(StatusCode::OK);
        id
    }

    /// Units of a product available, and units reserved.
    pub async fn stock(&self, product_id: i64) -> (i64, i64) {
        let r = self.get(&format!("/inventory/{product_id}")).await;
        r.assert_status(StatusCode::OK);
        (
            r.body["quantity"].as_i64().expect("quantity"),
            r.body["reserved"].as_i64().expect("reserved"),
        )
    }
}

/// A buffered response.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestResponse {
    #[track_caller]
    pub fn assert_status(&self, status: StatusCode) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts an RFC 9457 problem with this status and type slug.
    #[track_caller]
    pub fn assert_problem(&self, status: StatusCode, slug: &str) -> &Self {
        self.assert_status(status);
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "content type of {}",
            self.text
        );
        assert_eq!(
            self.body["type"],
            format!("/problems/{slug}"),
            "problem type of {}",
            self.text
        );
        assert_eq!(
            self.body["status"],
            status.as_u16(),
            "problem status of {}",
            self.text
        );
        assert!(
            self.body["title"].is_string() && self.body["detail"].is_string(),
            "{}",
            self.text
        );
        self
    }
}
