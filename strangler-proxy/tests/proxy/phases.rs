//! Every phase routes reads and writes as specified; the override header pins reads only.

use strangler_proxy::phase::Phase;

use crate::support::{catalog_config, catalog_proxy, TestProxy};

async fn served_by(
    proxy: &TestProxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let (status, body) = if method == "GET" {
        proxy.get(path, headers).await
    } else {
        proxy.send(method, path, headers).await
    };
    assert_eq!(status, 200, "{method} {path}: {body}");
    body["served_by"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_phase_routes_reads_and_writes() {
    let (_monolith, _service, proxy) = catalog_proxy("phase = \"monolith\"").await;
    let cases = [
        (Phase::Monolith, "monolith", "monolith"),
        (Phase::Shadow, "monolith", "monolith"),
        (
            Phase::Canary {
                basis_points: 10_000,
            },
            "service",
            "monolith",
        ),
        (Phase::Canary { basis_points: 0 }, "monolith", "monolith"),
        (Phase::Extracted, "service", "service"),
        (Phase::Retired, "service", "service"),
    ];
    for (phase, reads, writes) in cases {
        assert!(proxy.proxy.set_phase("catalog", phase));
        for method in ["GET"] {
            assert_eq!(
                served_by(&proxy, method, "/catalog/products/1", &[]).await,
                reads,
                "{phase} {method}"
            );
        }
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            assert_eq!(
                served_by(&proxy, method, "/catalog/products/1", &[]).await,
                writes,
                "{phase} {method}"
            );
        }
        // Routes no carve-out owns always go to the monolith.
        assert_eq!(
            served_by(&proxy, "GET", "/orders/1", &[]).await,
            "monolith",
            "{phase}"
        );
        assert_eq!(
            served_by(&proxy, "POST", "/orders", &[]).await,
            "monolith",
            "{phase}"
        );
    }
    assert!(!proxy.proxy.set_phase("no-such-carveout", Phase::Extracted));
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_override_header_pins_reads_only() {
    let (monolith, service, proxy) = catalog_proxy("phase = \"monolith\"").await;
    let to_service = [("X-Strangler-Target", "service")];
    assert_eq!(
        served_by(&proxy, "GET", "/catalog/products/1", &to_service).await,
        "service"
    );
    assert_eq!(
        served_by(&proxy, "POST", "/catalog/products", &to_service).await,
        "monolith"
    );
    proxy.proxy.set_phase("catalog", Phase::Extracted);
    let to_monolith = [("X-Strangler-Target", "monolith")];
    assert_eq!(
        served_by(&proxy, "GET", "/catalog/products/1", &to_monolith).await,
        "monolith"
    );
    assert_eq!(
        served_by(&proxy, "PUT", "/catalog/products/1", &to_monolith).await,
        "service"
    );
    proxy.shutdown().await;

    // Without `override_header = true` the header is ignored.
    let text = catalog_config("phase = \"monolith\"", "").replace("override_header = true", "");
    let proxy = TestProxy::start(&text, &monolith, &service).await;
    assert_eq!(
        served_by(&proxy, "GET", "/catalog/products/1", &to_service).await,
        "monolith"
    );
    proxy.shutdown().await;
}
