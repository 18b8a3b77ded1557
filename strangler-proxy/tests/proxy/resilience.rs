//! Fallback to the monolith in canary, and phase flips under load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strangler_proxy::phase::Phase;

use crate::support::{catalog_config, Mode, Stub, TestProxy};

#[tokio::test]
async fn a_failing_service_in_canary_falls_back_for_reads() {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    let proxy = TestProxy::start(
        &catalog_config("phase = \"canary\"\npercent = 100", ""),
        &monolith,
        &service,
    )
    .await;
    let (_, body) = proxy.get("/catalog/products/1", &[]).await;
    assert_eq!(body["served_by"], "service");

    service.set_mode(Mode::Fail);
    for i in 0..10 {
        let (status, body) = proxy.get(&format!("/catalog/products/{i}"), &[]).await;
        assert_eq!(
            (status, body["served_by"].as_str()),
            (200, Some("monolith"))
        );
    }
    // Recovered: the service answers again.
    service.set_mode(Mode::Ok);
    let (_, body) = proxy.get("/catalog/products/1", &[]).await;
    assert_eq!(body["served_by"], "service");
    service.stop();
    for i in 0..10 {
        let (status, body) = proxy.get(&format!("/catalog/products/{i}"), &[]).await;
        assert_eq!(
            (status, body["served_by"].as_str()),
            (200, Some("monolith"))
        );
    }
    let metrics = proxy.proxy.metrics().render();
    assert!(
        metrics.contains(r#"strangler_fallbacks_total{carveout="catalog"} 20"#),
        "{metrics}"
    );
    // Writes go to the monolith in canary anyway; they never fall back from the service.
    let (status, body) = proxy.send("POST", "/catalog/products", &[]).await;
    assert_eq!(
        (status, body["served_by"].as_str()),
        (200, Some("monolith"))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_phases_under_load_fails_no_request() {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    let proxy = Arc::new(
        TestProxy::start(
            &catalog_config("phase = \"monolith\"", ""),
            &monolith,
            &service,
        )
        .await,
    );
    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (proxy, running, ok, failed) =
                (proxy.clone(), running.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0_u64;
                while running.load(Ordering::Relaxed) {
                    i += 1;
                    let user = format!("u{client}-{i}");
                    let (status, _) = if i % 3 == 0 {
                        proxy
                            .send("PUT", "/catalog/products/1", &[("X-User-Id", &user)])
                            .await
                    } else {
                        proxy
                            .get("/catalog/products/1", &[("X-User-Id", &user)])
                            .await
                    };
                    let counter = if status == 200 { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let phases = [
        Phase::Shadow,
        Phase::Canary {
            basis_points: 1_000,
        },
        Phase::Canary {
            basis_points: 5_000,
        },
        Phase::Extracted,
        Phase::Canary {
            basis_points: 5_000,
        },
        Phase::Monolith,
    ];
    let start = Instant::now();
    let mut flips = 0;
    while start.elapsed() < Duration::from_secs(3) {
        proxy
            .proxy
            .set_phase("catalog", phases[flips % phases.len()]);
        flips += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} requests failed during {flips} flips");
    assert!(
        ok as f64 / start.elapsed().as_secs_f64() >= 200.0,
        "only {ok} requests in {:?}",
        start.elapsed()
    );
    assert!(service.hits() > 0 && monolith.hits() > 0);
}
