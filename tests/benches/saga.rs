//! Orders per second and latency through the proxy with the inventory in process and with the
//! inventory extracted, its saga over NATS JetStream (the embedded transport when
//! `TEST_NATS_URL` is not set), in one run, on SQLite (and PostgreSQL when `TEST_DATABASE_URL`
//! is set).
//!
//! `TEST_NATS_URL=nats://127.0.0.1:4222 cargo bench -p e2e --bench saga`
//!
//! Two loads per setup: a closed loop (32 clients ordering back to back: the rate it sustains)
//! and, once the data sync has caught up with it, an open loop at 200 orders/s for 10 s
//! (latency measured from each order's scheduled start, so a stall counts against every order
//! it delays). Each order is one unit of one of 50 products, in turn (a shop's orders spread
//! over its products; every order on one product would measure the lock on its stock row
//! instead).

// A panic is how a benchmark reports an unexpected error.
#![allow(clippy::unwrap_used)]

// The fixture serves the tests too: the benchmark uses part of it.
#[allow(dead_code)]
#[path = "../tests/inventory_shop.rs"]
mod inventory_shop;

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::Broker;
use inventory_shop::Shop;
use monolith::config::ServeConfig;
use strangler_sync::sides::Direction;

const CLIENTS: usize = 32;
const CLOSED_ORDERS: usize = 3000;
const RATE: u64 = 200;
const OPEN_SECONDS: u64 = 10;
const PRODUCTS: usize = 50;

struct Figures {
    rate: f64,
    closed_p99: Duration,
    open_p50: Duration,
    open_p99: Duration,
    failed: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

async fn measure(shop: Arc<Shop>, products: Arc<Vec<i64>>, sync: Direction) -> Figures {
    // Warm-up: connections, caches, the first messages.
    for i in 0..100 {
        shop.order(&[products[i % PRODUCTS]], "tok_ok").await;
    }
    let started = Instant::now();
    let per_client = CLOSED_ORDERS / CLIENTS;
    let clients = (0..CLIENTS).map(|client| {
        let (shop, products) = (shop.clone(), products.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            let mut failed = 0;
            for i in 0..per_client {
                let at = Instant::now();
                let product = products[(client + i * CLIENTS) % PRODUCTS];
                let (status, _) = shop.order(&[product], "tok_ok").await;
                latencies.push(at.elapsed());
                failed += usize::from(status != 201);
            }
            (latencies, failed)
        })
    });
    let mut closed = Vec::new();
    let mut failed = 0;
    for client in futures::future::join_all(clients).await {
        let (latencies, f) = client.unwrap();
        closed.extend(latencies);
        failed += f;
    }
    let rate = closed.len() as f64 / started.elapsed().as_secs_f64();
    closed.sort();
    // The open loop starts from a quiet shop: the data sync has applied what the closed loop
    // wrote (its backlog would otherwise compete with the measured orders, a cost of running
    // the two loads back to back, not of the rate measured).
    shop.settle(sync).await;

    let start = Instant::now() + Duration::from_millis(50);
    let orders = (0..RATE * OPEN_SECONDS).map(|i| {
        let (shop, products) = (shop.clone(), products.clone());
        let due = start + Duration::from_micros(i * 1_000_000 / RATE);
        tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let product = products[i as usize % PRODUCTS];
            let (status, _) = shop.order(&[product], "tok_ok").await;
            (due.elapsed(), status)
        })
    });
    let mut open = Vec::new();
    for order in futures::future::join_all(orders).await {
        let (latency, status) = order.unwrap();
        open.push(latency);
        failed += usize::from(status != 201);
    }
    open.sort();
    Figures {
        rate,
        closed_p99: percentile(&closed, 0.99),
        open_p50: percentile(&open, 0.50),
        open_p99: percentile(&open, 0.99),
        failed,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn run() {
    let jetstream = std::env::var(e2e::NATS_ENV).is_ok();
    let transport = if jetstream {
        "JetStream"
    } else {
        println!(
            "JetStream: skipped ({} is not set); the extracted setup uses the embedded transport",
            e2e::NATS_ENV
        );
        "embedded"
    };
    println!("| database | inventory | orders/s (closed loop, {CLIENTS} clients) | p99 closed | p50 at {RATE}/s | p99 at {RATE}/s | failed |");
    println!("|---|---|---|---|---|---|---|");
    for (backend, _) in e2e::available_backends().await {
        let mut rates = Vec::new();
        for extracted in [false, true] {
            let db = if backend == "postgres" {
                e2e::TestDb::postgres().await
            } else {
                e2e::TestDb::sqlite().await
            };
            let broker = if jetstream {
                Broker::jetstream()
            } else {
                Broker::embedded()
            };
            // The monolith's default pool: one shop runs at a time here, unlike in the tests.
            let pool = ServeConfig::defaults().db_max_connections;
            let (mut shop, products) =
                Shop::start_pooled(db, &broker, PRODUCTS, 1_000_000_000, pool).await;
            if extracted {
                shop.cut_over().await;
            }
            let sync = if extracted {
                Direction::Reverse
            } else {
                Direction::Forward
            };
            let figures = measure(Arc::new(shop), Arc::new(products), sync).await;
            let label = if extracted {
                format!("extracted, by message ({transport})")
            } else {
                "in process".to_owned()
            };
            println!(
                "| {backend} | {label} | {:.0} | {} | {} | {} | {} |",
                figures.rate,
                ms(figures.closed_p99),
                ms(figures.open_p50),
                ms(figures.open_p99),
                figures.failed
            );
            rates.push(figures.rate);
        }
        println!(
            "{backend}: the extracted inventory sustains {:.2}x the in-process rate",
            rates[1] / rates[0]
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}
