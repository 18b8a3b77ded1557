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
