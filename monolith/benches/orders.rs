//! Order placement over HTTP: concurrent clients placing orders against a shop served on
//! 127.0.0.1 port 0, for a bounded time, on SQLite and (with `TEST_DATABASE_URL`) PostgreSQL.
//!
//! `cargo bench -p monolith --bench orders`. Knobs: `BENCH_SECONDS` (default 10),
//! `BENCH_CLIENTS` (concurrent clients, default 64). Each order buys one or two random products
//! for a random customer with the approving card, so every order runs the whole saga (reserve,
//! charge, commit, confirm). Reports orders/s and latency percentiles; every non-201 answer is
//! counted as an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::TestDb;
use monolith::app::Application;
use monolith::config::ServeConfig;
use monolith::db::{Db, DbOptions};
use rand::Rng;
use serde_json::json;

const PRODUCTS: u64 = 10_000;
const CUSTOMERS: u64 = 1_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let clients: usize = env_or("BENCH_CLIENTS", 64);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for (name, test_db) in e2e::available_backends().await {
            run(name, &test_db, Duration::from_secs(seconds), clients).await?;
        }
        Ok(())
    })
}

async fn run(
    name: &str,
    test_db: &TestDb,
    duration: Duration,
    clients: usize,
) -> anyhow::Result<()> {
    // Seed, then give every product enough stock that no order runs out.
    let db = Db::connect(&test_db.url, &DbOptions::default()).await?;
    monolith::seed::seed(&db, PRODUCTS, CUSTOMERS, false).await?;
    db.close().await;
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        database_url: test_db.url.clone(),
        ..ServeConfig::defaults()
    };
    let app = Application::build(&config).await?;
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    for product in 1..=PRODUCTS {
        let r = http
            .put(format!("{base}/inventory/{product}"))
            .json(&json!({"quantity": 1_000_000}))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 200,
            "stocking product {product}: {}",
            r.status()
        );
    }

    let running = Arc::new(AtomicBool::new(true));
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let http = http.clone();
            let base = base.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0_u64;
                while running.load(Ordering::Relaxed) {
                    let body = {
                        let mut rng = rand::thread_rng();
                        let lines = rng.gen_range(1..=2);
                        let items: Vec<_> = (0..lines)
                            .map(|_| json!({"product_id": rng.gen_range(1..=PRODUCTS), "quantity": rng.gen_range(1..=3)}))
                            .collect();
                        json!({"customer_id": rng.gen_range(1..=CUSTOMERS), "items": items, "card_token": "tok_ok"})
                    };
                    let sent = Instant::now();
                    match http.post(format!("{base}/orders")).json(&body).send().await {
                        Ok(r) if r.status() == 201 => {
                            let _ = r.bytes().await;
                            latencies.push(sent.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    running.store(false, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{name}: {} orders in {:.1} s = {:.0} orders/s with {clients} clients; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {errors} errors",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
    let _ = stop.send(());
    server.await??;
    Ok(())
}
