//! How long a phase change takes to reach every replica: three replicas share one control
//! database; one changes a carve-out's phase 100 times; for each change, the time from asking
//! for it (its commit is within that call) until the two other replicas route by it.
//!
//! `cargo bench -p strangler-proxy --bench propagation` (SQLite, polling); with
//! `TEST_DATABASE_URL=postgres://...` also on PostgreSQL, where changes are pushed
//! (LISTEN/NOTIFY). Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::TestDb;
use strangler_proxy::app::Replica;
use strangler_proxy::config::{Config, ProxyArgs};
use strangler_proxy::control::{ControlPlane, PhaseChange};
use strangler_proxy::phase::Phase;
use strangler_proxy::proxy::Proxy;

const CHANGES: usize = 100;

async fn replica(control_db: &str) -> (ControlPlane, std::sync::Arc<Proxy>) {
    let text = r#"
        [upstreams.monolith]
        instances = ["http://127.0.0.1:1"]
        [upstreams.catalog]
        instances = ["http://127.0.0.1:2"]
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "canary"
        percent = 0
        routes = [{ path = "/catalog/*" }]
    "#;
    let args = ProxyArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        control_db: control_db.to_owned(),
        ..ProxyArgs::defaults()
    };
    let config = Config::from_toml(text, &args).unwrap();
    let replica = Replica::build(&config).await.unwrap();
    let (control, proxy) = (replica.control(), replica.proxy());
    tokio::spawn(replica.run_until(std::future::pending()));
    (control, proxy)
}

fn phase_of(proxy: &Proxy) -> Phase {
    proxy.routing().carveouts()[0].phase
}

async fn measure(name: &str, db: &TestDb) {
    let (a, _) = replica(&db.url).await;
    let (_, b) = replica(&db.url).await;
    let (_, c) = replica(&db.url).await;
    let mut delays = Vec::with_capacity(CHANGES);
    for k in 0..CHANGES {
        let to = Phase::Canary {
            basis_points: u32::try_from(k % 2 * 100 + 1).unwrap(),
        };
        // From before the change is asked for: its commit is somewhere inside the call, so this
        // is an upper bound of commit → applied.
        let asked = Instant::now();
        a.transition(
            "catalog",
            PhaseChange {
                to,
                actor: "bench".to_owned(),
                reason: "propagation".to_owned(),
                force: false,
            },
        )
        .await
        .unwrap();
        while phase_of(&b) != to || phase_of(&c) != to {
            assert!(asked.elapsed() < Duration::from_secs(5), "never applied");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        delays.push(asked.elapsed());
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name}: {CHANGES} changes to 3 replicas, asked → every replica applied: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sqlite = TestDb::sqlite().await;
    measure("SQLite (poll every 200 ms)", &sqlite).await;
    if std::env::var(e2e::PG_ENV).is_ok() {
        let pg = TestDb::postgres().await;
        measure(
            "PostgreSQL (LISTEN/NOTIFY, poll every 200 ms as fallback)",
            &pg,
        )
        .await;
    } else {
        println!("PostgreSQL: skipped (set {} to measure it)", e2e::PG_ENV);
    }
}
