//! Traffic capture for contracts: sampled monolith-served exchanges, redacted before they are
//! kept, never the service's.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{catalog_config, eventually, Stub, TestProxy};

#[tokio::test]
async fn captured_exchanges_are_redacted_and_only_the_monolith_s() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let config = catalog_config(
        "phase = \"canary\"\npercent = 50",
        r#"capture = { sample_percent = 100, redact_headers = ["x-session"], redact_fields = ["/card/number"] }"#,
    );
    let proxy = TestProxy::start(&config, &monolith, &service).await;

    // Pinned to the monolith: captured. Pinned to the service: not.
    let secret_get = proxy
        .http
        .get(proxy.url("/catalog/products?limit=2"))
        .header("authorization", "Bearer s3cret")
        .header("x-session", "abc")
        .header("accept", "application/json")
        .header("x-strangler-target", "monolith")
        .send()
        .await
        .unwrap();
    assert_eq!(secret_get.status(), 200);
    let to_service = proxy
        .get("/catalog/products/9", &[("x-strangler-target", "service")])
        .await;
    assert_eq!(to_service.1["served_by"], "service");
    // Writes go to the monolith in canary: captured with their (redacted) body.
    let write = proxy
        .http
        .post(proxy.url("/catalog/products"))
        .json(&json!({"sku": "A", "email": "ana@example.com", "card": {"number": "4111", "brand": "visa"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 200);

    eventually(Duration::from_secs(2), "two captures", || async {
        proxy.proxy.captures().list("catalog").len() >= 2
    })
    .await;
    let captures = proxy.proxy.captures().list("catalog");
    assert_eq!(captures.len(), 2, "{captures:#?}");
    let get = &captures[0];
    assert_eq!(
        (get.method.as_str(), get.path.as_str()),
        ("GET", "/catalog/products")
    );
    assert_eq!(get.query.as_deref(), Some("limit=2"));
    let header = |name: &str| {
        get.request_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("authorization").as_deref(), Some("[redacted]"));
    assert_eq!(header("x-session").as_deref(), Some("[redacted]"));
    assert_eq!(header("accept").as_deref(), Some("application/json"));
    assert_eq!(
        header("x-forwarded-for"),
        None,
        "the proxy's own headers are not captured"
    );
    assert_eq!(get.status, 200);
    assert_eq!(get.response_body.as_ref().unwrap()["served_by"], "monolith");
    let post = &captures[1];
    assert_eq!(
        post.request_body,
        Some(
            json!({"sku": "A", "email": "[redacted]", "card": {"number": "[redacted]", "brand": "visa"}})
        )
    );
}

#[tokio::test]
async fn capture_is_sampled_and_bounded() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let config = catalog_config(
        "phase = \"monolith\"",
        "capture = { sample_percent = 25, keep = 1000 }",
    );
    let proxy = TestProxy::start(&config, &monolith, &service).await;
    for i in 0..400 {
        let (status, _) = proxy.get(&format!("/catalog/products/{i}"), &[]).await;
        assert_eq!(status, 200);
    }
    // Captures are assembled off the request path: poll until the count settles.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut count = usize::MAX;
    loop {
        let now = proxy.proxy.captures().list("catalog").len();
        if now == count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the capture count did not settle"
        );
        count = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 25 % of 400 is 100; the binomial spread (sd 8.7) stays well inside 50..150.
    assert!(
        (50..150).contains(&count),
        "{count} of 400 captured at 25 %"
    );

    let keep = catalog_config(
        "phase = \"monolith\"",
        "capture = { sample_percent = 100, keep = 5 }",
    );
    let proxy = TestProxy::start(&keep, &monolith, &service).await;
    for i in 0..20 {
        proxy.get(&format!("/catalog/products/{i}"), &[]).await;
    }
    eventually(Duration::from_secs(2), "the last capture", || async {
        let list = proxy.proxy.captures().list("catalog");
        list.last()
            .is_some_and(|c| c.path == "/catalog/products/19")
    })
    .await;
    let kept = proxy.proxy.captures().list("catalog");
    assert_eq!(kept.len(), 5, "only the newest are kept");
}

#[tokio::test]
async fn in_shadow_a_sampled_read_is_compared_and_captured() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let config = catalog_config(
        "phase = \"shadow\"",
        "capture = { sample_percent = 100 }\nshadow = { ignore = [\"/served_by\", \"/headers\"] }",
    );
    let proxy = TestProxy::start(&config, &monolith, &service).await;
    monolith.set_extra(json!({"price_cents": 100}));
    service.set_extra(json!({"price_cents": 250}));
    for i in 1..=3 {
        let (status, body) = proxy.get(&format!("/catalog/products/{i}"), &[]).await;
        assert_eq!(
            (status, body["served_by"].as_str()),
            (200, Some("monolith"))
        );
    }
    // One answer streamed once, copied to both: the comparison sees the monolith's body
    // (the price differs), and the capture keeps it.
    eventually(Duration::from_secs(5), "three comparisons", || async {
        proxy.proxy.mismatches().list("catalog").len() == 3
    })
    .await;
    let mismatch = &proxy.proxy.mismatches().list("catalog")[0];
    assert_eq!(mismatch.differences[0].path, "/price_cents");
    assert_eq!(mismatch.differences[0].expected, json!(100));
    eventually(Duration::from_secs(5), "three captures", || async {
        proxy.proxy.captures().list("catalog").len() == 3
    })
    .await;
    let mut captures = proxy.proxy.captures().list("catalog");
    captures.sort_by(|a, b| a.path.cmp(&b.path));
    for (i, capture) in captures.iter().enumerate() {
        assert_eq!(capture.path, format!("/catalog/products/{}", i + 1));
        let body = capture.response_body.as_ref().unwrap();
        assert_eq!(
            (body["served_by"].as_str(), body["price_cents"].as_i64()),
            (Some("monolith"), Some(100))
        );
    }
    assert_eq!(service.hits(), 3, "the service saw the copies");
}
