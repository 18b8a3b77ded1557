//! The write fence under load: the whole stack (monolith, catalog service, proxy, both
//! relays) with writers and readers going through the proxy, while the catalog is cut over to
//! the service and rolled back, again and again. Reports how long each fence held writes (as
//! the cut-over measured it) and the latency every write saw, on SQLite and (with
//! BENCH_DATABASE_URL or TEST_DATABASE_URL set) on PostgreSQL.
//!
//!     cargo bench -p strangler --bench cutover -- [cycles]
//!
//! Results go to stdout; BENCHMARKS.md records a run.

// A benchmark reports by panicking on unexpected errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlkit::{Db, DbOptions};
use strangler::stack::{Stack, StackArgs, StackDbs};

const WRITERS: usize = 4;
const READERS: usize = 2;

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn summary(label: &str, mut values: Vec<Duration>) -> String {
    values.sort();
    format!(
        "{label}: n {}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        values.len(),
        percentile(&values, 0.5),
        percentile(&values, 0.99),
        percentile(&values, 1.0)
    )
}

async fn run(label: &str, args: StackArgs, cycles: usize) {
    println!("== {label}: {cycles} cut-overs and {cycles} roll-backs under load");
    let stack = Stack::start(&args).await.unwrap();
    let admin = stack.admin_client().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for step in [
        json!({"phase": "shadow", "reason": "bench", "actor": "bench"}),
        json!({"phase": "canary", "percent": 100, "reason": "bench", "actor": "bench"}),
    ] {
        let _: Value = admin
            .call(
                admin
                    .request(reqwest::Method::POST, "/carveouts/catalog/phase")
                    .json(&step),
            )
            .await
            .unwrap();
    }
    // The contract gate: a green verification on record (the bench measures the fence).
    let _: Value = admin
        .call(
            admin
                .request(reqwest::Method::POST, "/carveouts/catalog/verifications")
                .json(&json!({"provider": stack.service, "interactions": 1, "failures": 0, "actor": "bench"})),
        )
        .await
        .unwrap();

    let running = Arc::new(AtomicBool::new(true));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut load = Vec::new();
    for w in 0..WRITERS + READERS {
        let (running, writes, failed, http, proxy) = (
            running.clone(),
            writes.clone(),
            failed.clone(),
            http.clone(),
            stack.proxy.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                i += 1;
                let started = Instant::now();
                let write = w < WRITERS;
                let request = if write {
                    http.post(format!("{proxy}/catalog/products")).json(&json!({
                        "sku": format!("BENCH-{}-{w}-{i}", std::process::id()),
                        "name": format!("Bench item {w}-{i}"),
                        "price_cents": 100 + i, "currency": "EUR"}))
                } else {
                    http.get(format!("{proxy}/catalog/products/{}", 1 + i % 500))
                };
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        if write {
                            writes.lock().unwrap().push(started.elapsed());
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut holds = Vec::new();
    let started = Instant::now();
    for cycle in 0..cycles {
        for to_service in [true, false] {
            let reason = if to_service {
                "bench cut-over"
            } else {
                "bench roll-back"
            };
            let out = strangler::cutover::run(
                &admin,
                "catalog",
                stack.cutover_args(&format!("{reason} {cycle}")),
                to_service,
            )
            .await
            .unwrap();
            let held: u64 = out
                .lines()
                .find_map(|l| l.strip_prefix("fence: released after "))
                .and_then(|rest| rest.split(' ').next())
                .and_then(|ms| ms.parse().ok())
                .expect("the cut-over reports how long its fence held");
            holds.push(Duration::from_millis(held));
            // Let the new owner's relay settle before the next flip's pre-checks.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    println!(
        "{} writes in {:.1} s ({:.0}/s), {} request(s) failed",
        writes.len(),
        elapsed.as_secs_f64(),
        writes.len() as f64 / elapsed.as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    println!("{}", summary("fence held", holds));
    println!("{}", summary("write latency", writes));
    stack.stop();
}

async fn pg_schema(base: &str, name: &str) -> String {
    let admin = Db::connect_unmigrated(base, &DbOptions::default())
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
    ))
    .execute(admin.pool())
    .await
    .unwrap();
    format!("{base}?options=-c%20search_path%3D{name}")
}

#[tokio::main]
async fn main() {
    let cycles: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let any = "127.0.0.1:0".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = StackArgs {
        dir: dir.path().to_owned(),
        listen: any,
        admin_listen: any,
        monolith_listen: any,
        service_listen: any,
        contracts_listen: any,
        inventory_listen: any,
        inventory_contracts_listen: any,
        transport: "embedded".to_owned(),
        seed_products: 1000,
        dbs: StackDbs::default(),
    };
    run("SQLite", args.clone(), cycles).await;

    match std::env::var("BENCH_DATABASE_URL").or_else(|_| std::env::var("TEST_DATABASE_URL")) {
        Ok(base) => {
            let prefix = format!("bench_fence_{}", std::process::id());
            let pg = StackArgs {
                dbs: StackDbs {
                    monolith: Some(pg_schema(&base, &format!("{prefix}_shop")).await),
                    service: Some(pg_schema(&base, &format!("{prefix}_catalog")).await),
                    control: Some(pg_schema(&base, &format!("{prefix}_control")).await),
                    inventory: Some(pg_schema(&base, &format!("{prefix}_inventory")).await),
                },
                ..args
            };
            run("PostgreSQL", pg, cycles).await;
            let admin = Db::connect_unmigrated(&base, &DbOptions::default())
                .await
                .unwrap();
            sqlx::raw_sql(&format!(
                "DROP SCHEMA {prefix}_shop CASCADE; DROP SCHEMA {prefix}_catalog CASCADE; \
                 DROP SCHEMA {prefix}_control CASCADE"
            ))
            .execute(admin.pool())
            .await
            .unwrap();
        }
        Err(_) => println!("== PostgreSQL: skipped (set BENCH_DATABASE_URL or TEST_DATABASE_URL)"),
    }
}
