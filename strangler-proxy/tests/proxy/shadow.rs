//! Shadow reads: a real mismatch is recorded with its diff; ignored fields are not mismatches.

use std::time::Duration;

use serde_json::json;

use crate::support::{catalog_config, eventually, Stub, TestProxy};

#[tokio::test]
async fn shadow_records_mismatches_and_honours_ignore_rules() {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    // The stubs' `served_by` always differs, so it is ignored like a timestamp would be.
    let shadow = r#"shadow = { ignore = ["/served_by", "/headers", "/updated_at"], headers = ["content-type"] }"#;
    let proxy = TestProxy::start(
        &catalog_config("phase = \"shadow\"", shadow),
        &monolith,
        &service,
    )
    .await;

    monolith.set_extra(json!({"price_cents": 100, "updated_at": "2026-01-01"}));
    service.set_extra(json!({"price_cents": 100, "updated_at": "2026-02-02"}));
    let (status, body) = proxy.get("/catalog/products/1", &[]).await;
    assert_eq!(
        (status, body["served_by"].as_str()),
        (200, Some("monolith")),
        "the monolith answers"
    );
    eventually(Duration::from_secs(5), "the first comparison", || async {
        proxy
            .proxy
            .metrics()
            .render()
            .contains(r#"strangler_proxy_shadow_comparisons_total{carveout="catalog"} 1"#)
    })
    .await;
    assert!(
        proxy.proxy.mismatches().list("catalog").is_empty(),
        "only ignored fields differ"
    );
    assert_eq!(service.hits(), 1, "the service saw the copy");

    service.set_extra(json!({"price_cents": 250, "updated_at": "2026-02-02"}));
    proxy.get("/catalog/products/2", &[]).await;
    eventually(Duration::from_secs(5), "the mismatch", || async {
        !proxy.proxy.mismatches().list("catalog").is_empty()
    })
    .await;
    let mismatch = &proxy.proxy.mismatches().list("catalog")[0];
    assert_eq!(mismatch.path, "/catalog/products/2");
    assert_eq!(mismatch.differences.len(), 1, "{:?}", mismatch.differences);
    assert_eq!(mismatch.differences[0].path, "/price_cents");
    assert_eq!(mismatch.differences[0].expected, json!(100));
    assert_eq!(mismatch.differences[0].actual, json!(250));
    let metrics = proxy.proxy.metrics().render();
    assert!(
        metrics.contains(r#"strangler_proxy_shadow_mismatches_total{carveout="catalog"} 1"#),
        "{metrics}"
    );

    // Writes are never shadowed.
    let before = service.hits();
    proxy.send("POST", "/catalog/products", &[]).await;
    assert_eq!(service.hits(), before);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_slow_service_never_slows_the_primary() {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    service.set_mode(crate::support::Mode::Hang);
    // The service never answers and the proxy would wait a minute for it: a primary that waited
    // on its shadow would trip the test client's 10 s timeout.
    let text = catalog_config("phase = \"shadow\"", "")
        .replace("request_timeout_ms = 1000", "request_timeout_ms = 60000");
    let proxy = TestProxy::start(&text, &monolith, &service).await;
    for i in 0..20 {
        let (status, body) = proxy.get(&format!("/catalog/products/{i}"), &[]).await;
        assert_eq!(
            (status, body["served_by"].as_str()),
            (200, Some("monolith"))
        );
    }
    eventually(
        Duration::from_secs(5),
        "the copies to reach the service",
        || async { service.hits() == 20 },
    )
    .await;
}
