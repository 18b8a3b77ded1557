//! Seeding speed: 100,000 products (each with stock) into a fresh SQLite file and, when
//! `TEST_DATABASE_URL` is set, into a fresh PostgreSQL schema.
//!
//! `cargo bench -p monolith --bench seed` (set `BENCH_PRODUCTS` for another count). The target
//! (BENCHMARKS.md): under 10 s on each backend on a 2-core machine.

use std::time::Instant;

use monolith::db::{Db, DbOptions};

fn main() -> anyhow::Result<()> {
    let products: u64 = std::env::var("BENCH_PRODUCTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for (name, test_db) in e2e::available_backends().await {
            let db = Db::connect(&test_db.url, &DbOptions::default()).await?;
            let start = Instant::now();
            let report = monolith::seed::seed(&db, products, 0, false).await?;
            let elapsed = start.elapsed();
            println!(
                "{name}: seeded {} products with stock in {:.2} s ({:.0} products/s)",
                report.products,
                elapsed.as_secs_f64(),
                report.products as f64 / elapsed.as_secs_f64()
            );
            db.close().await;
        }
        Ok(())
    })
}
