//! The canary split: its share on many callers, stickiness, and monotonicity as it rises.

use std::collections::HashSet;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use strangler_proxy::phase::Phase;

use crate::support::{catalog_config, Stub, TestProxy};

/// Which of `callers` the proxy sends to the service.
async fn service_callers(proxy: &Arc<TestProxy>, callers: std::ops::Range<u32>) -> HashSet<u32> {
    stream::iter(callers)
        .map(|caller| {
            let proxy = Arc::clone(proxy);
            async move {
                let id = format!("user-{caller}");
                let (status, body) = proxy
                    .get("/catalog/products/1", &[("X-User-Id", &id)])
                    .await;
                assert_eq!(status, 200);
                (caller, body["served_by"] == "service")
            }
        })
        .buffer_unordered(16)
        .filter_map(|(caller, to_service)| async move { to_service.then_some(caller) })
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_of_ten_thousand_callers_within_two_points() {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    let proxy = Arc::new(
        TestProxy::start(
            &catalog_config("phase = \"canary\"\npercent = 10", ""),
            &monolith,
            &service,
        )
        .await,
    );
    let chosen = service_callers(&proxy, 0..10_000).await;
    let share = chosen.len() as f64 / 100.0;
    assert!(
        (8.0..=12.0).contains(&share),
        "{share}% of callers went to the service"
    );
    // Sticky: the same callers again land where they landed.
    let again = service_callers(&proxy, 0..2_000).await;
    assert_eq!(
        again,
        chosen.iter().copied().filter(|c| *c < 2_000).collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_percent_never_moves_a_caller_back() {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    let proxy = Arc::new(
        TestProxy::start(
            &catalog_config("phase = \"canary\"\npercent = 1", ""),
            &monolith,
            &service,
        )
        .await,
    );
    let mut previous = HashSet::new();
    for basis_points in [100, 500, 1_000, 2_500, 5_000, 10_000] {
        proxy
            .proxy
            .set_phase("catalog", Phase::Canary { basis_points });
        let now = service_callers(&proxy, 0..2_000).await;
        assert!(
            previous.is_subset(&now),
            "a caller went back to the monolith at {basis_points} bp"
        );
        assert!(now.len() >= previous.len());
        previous = now;
    }
    assert_eq!(previous.len(), 2_000, "at 100% everyone is on the service");
}

#[tokio::test]
async fn every_proxied_answer_names_the_side_that_served_it() {
    let (_monolith, _service, proxy) =
        crate::support::catalog_proxy("phase = \"canary\"\npercent = 50").await;
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let response = proxy
            .http
            .get(proxy.url("/catalog/products/1"))
            .header("x-user-id", format!("user-{user}"))
            .send()
            .await
            .unwrap();
        let named = response.headers()["x-strangler-served-by"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: serde_json::Value = response.json().await.unwrap();
        let expected = match body["served_by"].as_str().unwrap() {
            "service" => "catalog",
            other => other,
        };
        assert_eq!(named, expected);
        seen.insert(named);
    }
    assert_eq!(seen.len(), 2, "a 50 % canary splits 40 callers: {seen:?}");
    proxy.shutdown().await;

    // Off when the setting is empty.
    let monolith = crate::support::Stub::start("monolith").await;
    let service = crate::support::Stub::start("service").await;
    let text = crate::support::catalog_config("phase = \"monolith\"", "")
        .replace("override_header = true", "served_by_header = \"\"");
    let quiet = crate::support::TestProxy::start(&text, &monolith, &service).await;
    let response = quiet.http.get(quiet.url("/orders/1")).send().await.unwrap();
    assert!(response.headers().get("x-strangler-served-by").is_none());
    quiet.shutdown().await;
}
