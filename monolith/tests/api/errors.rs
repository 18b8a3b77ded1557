//! Every bad-input class answers with RFC 9457 problem+json, never a panic or a plain body.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};

use crate::helpers::{TestApp, TestDb, BODY_LIMIT};

db_test!(malformed_requests_get_problems);

fn raw(
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(body.into()).unwrap()
}

async fn malformed_requests_get_problems(db: TestDb) {
    let app = TestApp::new(db).await;
    let json = Some("application/json");
    let cases = [
        (
            raw(Method::POST, "/accounts", json, "{not json"),
            StatusCode::BAD_REQUEST,
            "malformed-body",
        ),
        (
            raw(Method::POST, "/catalog/products", json, "[1, 2]"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            raw(
                Method::POST,
                "/accounts",
                json,
                r#"{"email":"a@b.co","name":"n","extra":1}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            raw(
                Method::POST,
                "/accounts",
                Some("text/plain"),
                r#"{"email":"a@b.co","name":"n"}"#,
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            raw(Method::POST, "/orders", None, "{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            raw(
                Method::POST,
                "/catalog/products",
                json,
                vec![b' '; BODY_LIMIT + 1],
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        ),
        (
            raw(
                Method::POST,
                "/accounts",
                json,
                r#"{"email":"nul@b.co","name":"a\u0000b"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            raw(
                Method::POST,
                "/catalog/products",
                json,
                r#"{"sku":"NUL-1","name":"n","description":"\u0000","price_cents":1,"currency":"EUR"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            raw(Method::GET, "/catalog/products?q=a%00b", None, ""),
            StatusCode::BAD_REQUEST,
            "invalid-query",
        ),
        (
            raw(Method::GET, "/catalog/products/1.5", None, ""),
            StatusCode::BAD_REQUEST,
            "invalid-path-parameter",
        ),
        (
            raw(Method::GET, "/no/such/route", None, ""),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            raw(Method::PATCH, "/catalog/products/1", json, "{}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
    ];
    for (request, status, slug) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let response = app.send(request).await;
        assert_eq!(response.status, status, "{what}: {}", response.text);
        response.assert_problem(status, slug);
    }
    // An oversized body and text with NUL are refused before anything is stored.
    let list = app.get("/catalog/products").await;
    assert_eq!(list.body["items"], serde_json::json!([]));
}
