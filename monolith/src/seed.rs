//! Filling a database with realistic generated data, through each module's own seeding
//! function (this file names no table).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::db::Db;
use crate::{accounts, catalog, inventory};

/// What a seeding run added and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct SeedReport {
    /// Products added (each with stock).
    pub products: u64,
    /// Customers added.
    pub customers: u64,
    /// Wall time.
    pub elapsed: Duration,
}

fn bar(len: u64, what: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// Adds `products` products with stock and `customers` customers, showing progress bars when
/// `progress` is set.
pub async fn seed(
    db: &Db,
    products: u64,
    customers: u64,
    progress: bool,
) -> anyhow::Result<SeedReport> {
    let start = Instant::now();
    let product_bar = bar(products, "products", progress);
    let ids = catalog::seed_products(db, products, &product_bar).await?;
    product_bar.finish();
    let stock_bar = bar(products, "stock", progress);
    inventory::seed_stock(db, &ids, &stock_bar).await?;
    stock_bar.finish();
    let customer_bar = bar(customers, "customers", progress);
    accounts::seed_customers(db, customers, &customer_bar).await?;
    customer_bar.finish();
    Ok(SeedReport {
        products,
        customers,
        elapsed: start.elapsed(),
    })
}
