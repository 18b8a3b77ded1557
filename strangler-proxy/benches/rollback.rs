//! How fast a rollout takes a failing service out of the reads: two replicas share one control
//! database and route steady reads to a carve-out at canary 50 % under a rollout (a 1 s
//! analysis interval, `failure_limit = 0`); the service starts failing every request; the time
//! is measured from that moment until **both** replicas route the carve-out's reads to the
//! monolith again (its safe phase, `shadow`). Repeated `CYCLES` times, each from a fresh start
//! of the rollout (the service's circuit breaker re-closes within 100 ms, so a cycle never
//! starts on an instance still ejected by the previous one).
//!
//! `cargo bench -p strangler-proxy --bench rollback` (SQLite); with `TEST_DATABASE_URL=...`
//! also on PostgreSQL. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use e2e::TestDb;
use strangler_proxy::app::Replica;
use strangler_proxy::config::{Config, ProxyArgs};
use strangler_proxy::control::ControlPlane;
use strangler_proxy::phase::Phase;
use strangler_proxy::proxy::Proxy;

const CYCLES: usize = 20;

/// An upstream answering 200, or 500 while `failing`.
async fn upstream(failing: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        let failing = failing.clone();
        async move {
            if failing.load(Ordering::Relaxed) {
                (StatusCode::INTERNAL_SERVER_ERROR, "failing")
            } else {
                (StatusCode::OK, "{\"ok\":true}")
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn replica(
    control_db: &str,
    monolith: &str,
    service: &str,
) -> (ControlPlane, Arc<Proxy>, std::net::SocketAddr) {
    let text = format!(
        r#"
        [upstreams.monolith]
        instances = ["{monolith}"]
        [upstreams.catalog]
        instances = ["{service}"]
        # Each cycle starts right after the previous one failed the service: its breaker must
        # not still be open (it would fail the healthy canary, rightly).
        breaker_open_ms = 100
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "shadow"
        sticky = {{ header = "X-User-Id" }}
        routes = [{{ path = "/catalog/*" }}]
        rollout = {{ steps = ["canary 50% 1h"], interval_ms = 1000, failure_limit = 0, min_interval_requests = 5, safe_phase = "shadow" }}
        "#
    );
    let args = ProxyArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        control_db: control_db.to_owned(),
        ..ProxyArgs::defaults()
    };
    let config = Config::from_toml(&text, &args).unwrap();
    let replica = Replica::build(&config).await.unwrap();
    let (control, proxy, addr) = (replica.control(), replica.proxy(), replica.local_addr());
    tokio::spawn(replica.run_until(std::future::pending()));
    (control, proxy, addr)
}

fn phase_of(proxy: &Proxy) -> Phase {
    proxy.routing().carveouts()[0].phase
}

async fn measure(name: &str, db: &TestDb) {
    let failing = Arc::new(AtomicBool::new(false));
    let monolith = upstream(Arc::new(AtomicBool::new(false))).await;
    let service = upstream(failing.clone()).await;
    let (a, pa, addr_a) = replica(&db.url, &monolith, &service).await;
    let (_, pb, addr_b) = replica(&db.url, &monolith, &service).await;
    // Steady reads through both replicas, 100 users.
    let sent = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    for (i, addr) in [addr_a, addr_b].into_iter().enumerate() {
        let (sent, http) = (sent.clone(), http.clone());
        let base = format!("http://{addr}");
        tokio::spawn(async move {
            let mut n: u64 = i as u64;
            loop {
                n += 1;
                let _ = http
                    .get(format!("{base}/catalog/products/{n}"))
                    .header("x-user-id", format!("user-{}", n % 100))
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    let canary = Phase::Canary { basis_points: 5000 };
    let mut delays = Vec::with_capacity(CYCLES);
    for _ in 0..CYCLES {
        failing.store(false, Ordering::Relaxed);
        a.start_rollout("catalog", None, "bench").await.unwrap();
        let started = Instant::now();
        while phase_of(&pa) != canary || phase_of(&pb) != canary {
            assert!(started.elapsed() < Duration::from_secs(5), "never at 50 %");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Let healthy intervals pass first, at a point of the interval that varies.
        tokio::time::sleep(Duration::from_millis(
            1500 + (delays.len() as u64 * 97) % 1000,
        ))
        .await;
        if phase_of(&pa) != canary {
            let view = a.rollout_view("catalog").await.unwrap().unwrap();
            panic!(
                "the healthy canary was rolled back: {:?}",
                view.history.last()
            );
        }
        failing.store(true, Ordering::Relaxed);
        let failed_at = Instant::now();
        while phase_of(&pa) != Phase::Shadow || phase_of(&pb) != Phase::Shadow {
            assert!(
                failed_at.elapsed() < Duration::from_secs(10),
                "never rolled back"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(failed_at.elapsed());
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name}: {CYCLES} roll-backs, service failing → both replicas route reads to the monolith: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} reads sent)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        sent.load(Ordering::Relaxed)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sqlite = TestDb::sqlite().await;
    measure("SQLite (phases polled every 200 ms)", &sqlite).await;
    if std::env::var(e2e::PG_ENV).is_ok() {
        let pg = TestDb::postgres().await;
        measure("PostgreSQL (phases pushed by LISTEN/NOTIFY)", &pg).await;
    } else {
        println!("PostgreSQL: skipped (set {} to measure it)", e2e::PG_ENV);
    }
}
