//! Sync throughput: backfill, verify, relay, and lag under a steady write rate, on SQLite and
//! (with BENCH_DATABASE_URL or TEST_DATABASE_URL set) on PostgreSQL, where a pg_dump | psql
//! copy of the same table is timed for comparison.
//!
//!     cargo bench -p strangler-sync --bench sync -- [rows]
//!
//! Results go to stdout; BENCHMARKS.md records a run.

// A benchmark reports by panicking on unexpected errors.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sqlkit::{Backend, Db, DbOptions};
use strangler_sync::backfill::Backfill;
use strangler_sync::capture;
use strangler_sync::mapping::Mapping;
use strangler_sync::relay::Relay;
use strangler_sync::verify::verify;

const MAPPING: &str = r#"
carveout = "bench"
[[tables]]
source = "bench_src"
target = "bench_dst"
key = [{ source = "id", target = "product_id" }]
columns = [
  { source = "sku", target = "sku" },
  { source = "name", target = "title" },
  { source = "description", target = "summary" },
  { source = "price_cents", target = "price_mills", transform = "multiply:10" },
  { source = "currency", target = "price_currency" },
  { source = "created_at", target = "created_at" },
  { source = "updated_at", target = "updated_at" },
]
"#;

async fn exec(db: &Db, sql: &str) {
    sqlx::raw_sql(sql).execute(db.pool()).await.unwrap();
}

fn rate(n: u64, elapsed: Duration) -> String {
    format!(
        "{:>10.0}/s ({n} in {:.2} s)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    )
}

async fn run(label: &str, source: Db, target: Db, rows: u64, pg_url: Option<(&str, &str, &str)>) {
    println!("== {label}: {rows} rows");
    exec(&source, "CREATE TABLE bench_src (id BIGINT PRIMARY KEY, sku TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL, price_cents BIGINT NOT NULL, currency TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)").await;
    exec(&target, "CREATE TABLE bench_dst (product_id BIGINT PRIMARY KEY, sku TEXT NOT NULL, title TEXT NOT NULL, summary TEXT NOT NULL, price_mills BIGINT NOT NULL, price_currency TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)").await;
    let fill = match source.backend() {
        Backend::Postgres => format!(
            "INSERT INTO bench_src SELECT i, 'SKU-' || i, 'Product ' || i, 'A product for everyday use.', i % 100000, 'EUR', '2026-11-26T00:00:00.000Z', '2026-11-26T00:00:00.000Z' FROM generate_series(1, {rows}) AS i"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
             INSERT INTO bench_src SELECT i, 'SKU-' || i, 'Product ' || i, 'A product for everyday use.', i % 100000, 'EUR', '2026-11-26T00:00:00.000Z', '2026-11-26T00:00:00.000Z' FROM n"
        ),
    };
    exec(&source, &fill).await;
    let mut mapping = Mapping::parse(MAPPING).unwrap();
    mapping.check(&source, &target).await.unwrap();
    capture::install(&source, &mapping).await.unwrap();

    let started = Instant::now();
    let done = Backfill::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_chunk(5000)
        .run(|_| {})
        .await
        .unwrap();
    assert_eq!(done[0].read, rows);
    println!("backfill  {}", rate(rows, started.elapsed()));

    let started = Instant::now();
    let report = verify(&source, &target, &mapping).await.unwrap();
    assert!(report.clean());
    println!(
        "verify    {}",
        rate(report.rows_compared, started.elapsed())
    );

    // Relay throughput: a backlog of changes, drained.
    let changes = rows.min(100_000);
    exec(
        &source,
        &format!("UPDATE bench_src SET price_cents = price_cents + 1 WHERE id <= {changes}"),
    )
    .await;
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_batch(5000);
    let started = Instant::now();
    let applied = relay.drain().await.unwrap();
    assert_eq!(applied as u64, changes);
    println!("relay     {}", rate(changes, started.elapsed()));

    // Lag at a steady 1,000 writes/s for 5 s, the relay running beside them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (source, stop) = (source.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                exec(
                    &source,
                    &format!(
                        "UPDATE bench_src SET name = 'Renamed {i}' WHERE id = {}",
                        1 + i % 1000
                    ),
                )
                .await;
            }
            i
        })
    };
    let mut lags = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        relay.step().await.unwrap();
        lags.push(relay.lag().await.unwrap().1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    relay.drain().await.unwrap();
    lags.sort();
    let p = |q: f64| lags[((lags.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "lag       p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms at {:.0} writes/s ({} samples)",
        p(0.5),
        p(0.99),
        p(1.0),
        writes as f64 / 5.0,
        lags.len()
    );
    assert!(verify(&source, &target, &mapping).await.unwrap().clean());

    if let Some((base, from, to)) = pg_url {
        // What a user would otherwise reach for: pg_dump --data-only piped into psql.
        let target_url = format!("{base}?options=-c%20search_path%3D{to}");
        let source_schema_table = format!("{from}.bench_src");
        let _ = sqlx::raw_sql("SELECT 1").execute(target.pool()).await;
        exec(&target, "CREATE TABLE bench_src (id BIGINT PRIMARY KEY, sku TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL, price_cents BIGINT NOT NULL, currency TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)").await;
        let started = Instant::now();
        let status = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; pg_dump --data-only --table={source_schema_table} '{base}' | sed 's/{from}\\.bench_src/{to}.bench_src/g' | psql -q -X -v ON_ERROR_STOP=1 '{target_url}' > /dev/null"
            ))
            .status()
            .unwrap();
        assert!(status.success(), "pg_dump | psql failed");
        let elapsed = started.elapsed();
        println!("pg_dump | psql {}", rate(rows, elapsed));
    }
}

async fn pg_schema(base: &str) -> (Db, String) {
    let schema = format!("bench_{}", std::process::id() as u64 * 1000 + rand_suffix());
    let admin = Db::connect_unmigrated(base, &DbOptions::default())
        .await
        .unwrap();
    exec(
        &admin,
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
    )
    .await;
    let url = format!("{base}?options=-c%20search_path%3D{schema}");
    (
        Db::connect_unmigrated(&url, &DbOptions::default())
            .await
            .unwrap(),
        schema,
    )
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(1);
    h.finish() % 1000
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let source = Db::connect_unmigrated(
        &dir.path().join("source.db").display().to_string(),
        &DbOptions::default(),
    )
    .await
    .unwrap();
    let target = Db::connect_unmigrated(
        &dir.path().join("target.db").display().to_string(),
        &DbOptions::default(),
    )
    .await
    .unwrap();
    run("SQLite", source, target, rows, None).await;

    match std::env::var("BENCH_DATABASE_URL").or_else(|_| std::env::var("TEST_DATABASE_URL")) {
        Ok(base) => {
            let (source, from) = pg_schema(&base).await;
            let (target, to) = pg_schema(&base).await;
            run(
                "PostgreSQL",
                source,
                target,
                rows,
                Some((&base, &from, &to)),
            )
            .await;
            let admin = Db::connect_unmigrated(&base, &DbOptions::default())
                .await
                .unwrap();
            exec(
                &admin,
                &format!("DROP SCHEMA {from} CASCADE; DROP SCHEMA {to} CASCADE"),
            )
            .await;
        }
        Err(_) => println!("== PostgreSQL: skipped (set BENCH_DATABASE_URL or TEST_DATABASE_URL)"),
    }
}
