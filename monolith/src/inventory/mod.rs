//! Inventory: stock per product, and the reservations that orders hold while they are placed.
//!
//! Owns the `inventory_*` tables. `quantity` is the stock that can still be sold. The tables form
//! a stock ledger (triggers in `migrations/monolith/*/..._stock_ledger_*.sql`): inserting a
//! reservation row takes its units out of stock in the same statement, and the stock's
//! `CHECK (quantity >= 0)` refuses an oversell, so two orders can never both take the last unit.
//! Committing a reservation keeps the units out; releasing it puts them back. Both are idempotent.
//! A reservation expires: past its `expires_at`, [`InventoryApi::expire_due`] releases it, so
//! an order lost half-way cannot hold stock, and a commit that comes too late gets
//! [`Commit::Expired`].

mod http;
mod store;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::catalog::CatalogApi;
use crate::db::Db;
use crate::error::{Error, Guard, Result};

pub use http::router;
pub use store::seed_stock;

/// Stock of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stock {
    /// The product.
    pub product_id: i64,
    /// Units available for sale.
    pub quantity: i64,
    /// Units held by orders being placed.
    pub reserved: i64,
    /// When the stock last changed (RFC 3339, UTC); null if it was never set.
    pub updated_at: Option<String>,
}

/// The body of `PUT /inventory/{product_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    /// Units available for sale; not negative.
    pub quantity: i64,
}

/// A quantity of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLine {
    /// The product.
    pub product_id: i64,
    /// How many units.
    pub quantity: i64,
}

/// The outcome of [`InventoryApi::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Every line is reserved.
    Reserved,
    /// Nothing was reserved: this line could not be met.
    Insufficient {
        /// The product short of stock.
        product_id: i64,
        /// Units asked for.
        requested: i64,
        /// Units available.
        available: i64,
    },
}

/// The outcome of [`InventoryApi::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The reservation is final.
    Committed,
    /// Nothing was held any more: the reservation expired (its units went back to stock).
    Expired,
}

/// The largest stock quantity accepted.
pub const MAX_QUANTITY: i64 = 1_000_000_000;

/// The inventory module's facade.
#[async_trait]
pub trait InventoryApi: Send + Sync {
    /// Sets the units available for a product of the catalog.
    async fn set_stock(&self, product_id: i64, quantity: i64) -> Result<Stock>;
    /// The stock of a product of the catalog.
    async fn stock(&self, product_id: i64) -> Result<Stock>;
    /// Reserves every line for `order_id`, all or nothing, until `expires_at` (RFC 3339; `None`:
    /// no expiry). Idempotent: an order that already holds its reservation gets
    /// [`Reservation::Reserved`] again.
    async fn reserve(
        &self,
        order_id: i64,
        lines: &[StockLine],
        expires_at: Option<&str>,
    ) -> Result<Reservation>;
    /// Makes the order's held reservation final.
    async fn commit(&self, order_id: i64) -> Result<Commit>;
    /// Returns the order's held units to stock (compensation).
    async fn release(&self, order_id: i64) -> Result<()>;
    /// Releases the reservations whose expiry passed; returns how many orders lost theirs.
    async fn expire_due(&self) -> Result<usize>;
    /// Whether the data sync's write guard keeps the inventory's writes from this database
    /// (`None`: they are written here).
    async fn write_guard(&self) -> Result<Option<Guard>>;
}

/// The in-process implementation of [`InventoryApi`].
#[derive(Clone)]
pub struct Inventory {
    db: Db,
    catalog: Arc<dyn CatalogApi>,
}

impl Inventory {
    /// Inventory stored in `db`, checking products against `catalog`.
    pub fn new(db: Db, catalog: Arc<dyn CatalogApi>) -> Self {
        Inventory { db, catalog }
    }

    async fn ensure_product(&self, product_id: i64) -> Result<()> {
        match self.catalog.product(product_id).await? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!(
                "product {product_id} does not exist"
            ))),
        }
    }
}

#[async_trait]
impl InventoryApi for Inventory {
    async fn set_stock(&self, product_id: i64, quantity: i64) -> Result<Stock> {
        if !(0..=MAX_QUANTITY).contains(&quantity) {
            return Err(Error::Unprocessable(format!(
                "quantity must be between 0 and {MAX_QUANTITY} (got {quantity})"
            )));
        }
        self.ensure_product(product_id).await?;
        store::set(&self.db, product_id, quantity).await
    }

    async fn stock(&self, product_id: i64) -> Result<Stock> {
        if let Some(stock) = store::get(&self.db, product_id).await? {
            return Ok(stock);
        }
        self.ensure_product(product_id).await?;
        Ok(Stock {
            product_id,
            quantity: 0,
            reserved: 0,
            updated_at: None,
        })
    }

    async fn reserve(
        &self,
        order_id: i64,
        lines: &[StockLine],
        expires_at: Option<&str>,
    ) -> Result<Reservation> {
        let mut lines = lines.to_vec();
        // A fixed lock order (by product id) keeps concurrent reservations free of deadlocks.
        lines.sort_by_key(|l| l.product_id);
        if lines.windows(2).any(|w| w[0].product_id == w[1].product_id) {
            return Err(Error::Unprocessable(
                "each product may appear once per reservation".to_owned(),
            ));
        }
        if lines.iter().any(|l| l.quantity <= 0) {
            return Err(Error::Unprocessable(
                "reserved quantities must be positive".to_owned(),
            ));
        }
        if store::held_by(&self.db, order_id).await? {
            return Ok(Reservation::Reserved);
        }
        store::reserve(&self.db, order_id, &lines, expires_at).await
    }

    async fn commit(&self, order_id: i64) -> Result<Commit> {
        store::commit(&self.db, order_id).await
    }

    async fn release(&self, order_id: i64) -> Result<()> {
        store::release(&self.db, order_id).await
    }

    async fn write_guard(&self) -> Result<Option<Guard>> {
        // The reservations move with the stock: one table speaks for both.
        Ok(strangler_sync::guard::state(&self.db, "inventory_reservations").await?)
    }

    async fn expire_due(&self) -> Result<usize> {
        let due = store::expired(&self.db, &crate::db::now()).await?;
        for order_id in &due {
            store::release(&self.db, *order_id).await?;
        }
        Ok(due.len())
    }
}
