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
    // A short open period, so the test can watch the breaker close again.
    let text = catalog_config("phase = \"canary\"\npercent = 100", "").replace(
        "request_timeout_ms = 1000",
        "request_timeout_ms = 1000\nbreaker_open_ms = 200",
    );
    let proxy = TestProxy::start(&text, &monolith, &service).await;
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
    // Five failures opened the breaker: the service is not tried again for 200 ms.
    let metrics = proxy.proxy.metrics().render();
    let open = format!(
        r#"strangler_proxy_breaker_open{{upstream="catalog",instance="{}/"}} 1"#,
        service.url()
    );
    assert!(metrics.contains(&open), "{metrics}");
    // Recovered: once the open period is over, a probe succeeds and the service answers again.
    service.set_mode(Mode::Ok);
    crate::support::eventually(
        Duration::from_secs(5),
        "the breaker to close again",
        || async { proxy.get("/catalog/products/1", &[]).await.1["served_by"] == "service" },
    )
    .await;
    service.stop();
    for i in 0..10 {
        let (status, body) = proxy.get(&format!("/catalog/products/{i}"), &[]).await;
        assert_eq!(
            (status, body["served_by"].as_str()),
            (200, Some("monolith"))
        );
    }
    let metrics = proxy.proxy.metrics().render();
    let fallbacks = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"strangler_proxy_fallbacks_total{carveout="catalog"} "#))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    // 20 failed reads, plus those served by the monolith while the breaker was open.
    assert!(fallbacks >= 20, "every failed read fell back: {metrics}");
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

#[tokio::test]
async fn retries_move_to_a_healthy_instance_and_a_dead_one_is_ejected() {
    let monolith = Stub::start("monolith").await;
    let healthy = Stub::start("service").await;
    let dead = Stub::start("service").await;
    dead.stop();
    crate::support::eventually(Duration::from_secs(5), "the dead port to close", || async {
        tokio::net::TcpStream::connect(dead.addr).await.is_err()
    })
    .await;
    let text = catalog_config("phase = \"extracted\"", "").replace(
        "instances = [\"{service}\"]",
        &format!(
            "instances = [\"{}\", \"{}\"]\nbreaker_failures = 3\nbreaker_open_ms = 60000",
            dead.url(),
            healthy.url()
        ),
    );
    let proxy = TestProxy::start(&text, &monolith, &healthy).await;
    for i in 0..30 {
        let (status, body) = proxy.get(&format!("/catalog/products/{i}"), &[]).await;
        assert_eq!(
            (status, body["served_by"].as_str()),
            (200, Some("service")),
            "request {i}"
        );
    }
    let metrics = proxy.proxy.metrics().render();
    // Round robin sent every other request to the dead instance until its breaker opened after
    // 3 failures; each of those was retried on the healthy one, and none after.
    assert!(
        metrics.contains(r#"strangler_proxy_retries_total{upstream="catalog"} 3"#),
        "{metrics}"
    );
    let ejected = format!(
        r#"strangler_proxy_breaker_open{{upstream="catalog",instance="{}/"}} 1"#,
        dead.url()
    );
    assert!(metrics.contains(&ejected), "{metrics}");
    assert_eq!(healthy.hits(), 30);

    // A request with a body is streamed once and never retried.
    healthy.set_mode(Mode::Fail);
    let before = healthy.hits();
    let (status, _) = proxy.send("PUT", "/catalog/products/1", &[]).await;
    assert_eq!(status, 500);
    assert_eq!(healthy.hits(), before + 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    shutdown_lets_in_flight_requests_finish_with(None).await;
}

/// Two data-plane workers, each a thread with its own runtime: requests on many connections
/// are served, and the shutdown drains both workers' requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_serve_and_drain() {
    shutdown_lets_in_flight_requests_finish_with(Some(2)).await;
}

async fn shutdown_lets_in_flight_requests_finish_with(workers: Option<usize>) {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    let proxy = TestProxy::start_with_workers(
        &catalog_config("phase = \"monolith\"", ""),
        &monolith,
        &service,
        workers,
    )
    .await;
    // Every connection its own client: connections land on whichever worker accepts them.
    let clients: Vec<reqwest::Client> = (0..8).map(|_| reqwest::Client::new()).collect();
    for round in 0..3 {
        for client in &clients {
            let response = client
                .get(proxy.url(&format!("/orders/{round}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    #[cfg(target_os = "linux")]
    if let Some(workers) = workers {
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect();
        for index in 1..workers {
            let name = format!("proxy-worker-{index}");
            assert!(names.contains(&name), "no thread {name}: {names:?}");
        }
    }
    monolith.set_mode(Mode::Slow);
    let before = monolith.hits();
    let in_flight: Vec<_> = clients
        .iter()
        .map(|client| {
            let request = client.get(proxy.url("/orders/1")).send();
            tokio::spawn(request)
        })
        .collect();
    crate::support::eventually(
        Duration::from_secs(5),
        "the requests to reach the monolith",
        || async { monolith.hits() == before + 8 },
    )
    .await;
    let addr = proxy.addr;
    proxy.shutdown_and_wait().await.unwrap();
    for request in in_flight {
        let response = request
            .await
            .unwrap()
            .expect("the in-flight request was answered");
        assert_eq!(response.status(), 200);
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
