//! Orders: placing an order as a saga across inventory and payments.
//!
//! Owns the `orders_*` tables and talks to the other modules only through their facades:
//! [`AccountsApi`] (does the customer exist), [`CatalogApi`] (prices), [`InventoryApi`]
//! (reserve / commit / release stock) and [`PaymentsApi`] (charge). Placing an order:
//!
//! 1. record the order as `pending` with its priced lines (one statement);
//! 2. reserve the stock, all or nothing (short of stock: `rejected`, 409);
//! 3. charge the card;
//! 4. approved: commit the reservation, `confirmed` (201); declined or timed out: release the
//!    reservation (compensation), `payment_failed` (402).
//!
//! The saga runs to its end whatever the client does: `POST /orders` runs it in a task of its
//! own, so a client that hangs up half-way cancels nothing. Only a crash can stop it between
//! steps, leaving the order `pending` with its reservation held; [`Orders::recover_pending`]
//! settles such orders from the payment record (a paid order is confirmed, any other released),
//! so stock is never lost and a paid order is never failed. It runs at start-up and then
//! continuously ([`Orders::recover_forever`]), and skips the orders whose saga is still running
//! in this process. `POST /orders` also honours an `Idempotency-Key` (see `http`): recovery
//! stores the settled outcome under the key of a request the crash cut short.

mod http;
mod saga;
mod store;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::accounts::AccountsApi;
use crate::catalog::CatalogApi;
use crate::db::Db;
use crate::error::Result;
use crate::inventory::InventoryApi;
use crate::payments::PaymentsApi;

pub use http::{router, OrderList};
pub use saga::RecoveryReport;

/// One line of an order request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// The product.
    pub product_id: i64,
    /// Units wanted, 1 to 1000.
    pub quantity: i64,
}

/// The body of `POST /orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// Who orders.
    pub customer_id: i64,
    /// What is ordered (1 to 100 lines; repeated products are added up).
    pub items: Vec<OrderLine>,
    /// Card token for the payment provider (`tok_ok`, `tok_decline`, `tok_timeout` with the fake).
    pub card_token: String,
}

/// A priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderItem {
    /// The product.
    pub product_id: i64,
    /// Units ordered.
    pub quantity: i64,
    /// Price of one unit when the order was placed, in cents.
    pub unit_price_cents: i64,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    /// Order id.
    pub id: i64,
    /// Who ordered.
    pub customer_id: i64,
    /// `pending`, `confirmed`, `payment_failed` or `rejected`.
    pub status: String,
    /// Sum of the items, in cents.
    pub total_cents: i64,
    /// ISO 4217 currency code of every item.
    pub currency: String,
    /// Why the order failed, when it did.
    pub failure_reason: Option<String>,
    /// The priced lines, by product id.
    pub items: Vec<OrderItem>,
    /// When the order was placed (RFC 3339, UTC).
    pub created_at: String,
    /// When its status last changed (RFC 3339, UTC).
    pub updated_at: String,
}

/// The orders module's facade.
#[async_trait]
pub trait OrdersApi: Send + Sync {
    /// Places an order (the saga). A failed order is still recorded; the error carries its id.
    /// `idempotency_key`: a key already claimed for this request, linked to the order in the
    /// transaction that records it.
    async fn place_order(
        &self,
        request: PlaceOrder,
        idempotency_key: Option<String>,
    ) -> Result<Order>;
    /// The order with this id, if any.
    async fn order(&self, id: i64) -> Result<Option<Order>>;
    /// A customer's orders, newest first (at most 100).
    async fn customer_orders(&self, customer_id: i64) -> Result<Vec<Order>>;
}

/// The in-process implementation of [`OrdersApi`].
#[derive(Clone)]
pub struct Orders {
    db: Db,
    accounts: Arc<dyn AccountsApi>,
    catalog: Arc<dyn CatalogApi>,
    inventory: Arc<dyn InventoryApi>,
    payments: Arc<dyn PaymentsApi>,
    /// Orders whose saga is running in this process: recovery leaves them alone.
    running: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
}

impl Orders {
    /// Orders stored in `db`, placed through the other modules' facades.
    pub fn new(
        db: Db,
        accounts: Arc<dyn AccountsApi>,
        catalog: Arc<dyn CatalogApi>,
        inventory: Arc<dyn InventoryApi>,
        payments: Arc<dyn PaymentsApi>,
    ) -> Self {
        Orders {
            db,
            accounts,
            catalog,
            inventory,
            payments,
            running: Arc::default(),
        }
    }
}

#[async_trait]
impl OrdersApi for Orders {
    async fn place_order(
        &self,
        request: PlaceOrder,
        idempotency_key: Option<String>,
    ) -> Result<Order> {
        saga::place(self, request, idempotency_key.as_deref()).await
    }

    async fn order(&self, id: i64) -> Result<Option<Order>> {
        store::find(&self.db, id).await
    }

    async fn customer_orders(&self, customer_id: i64) -> Result<Vec<Order>> {
        store::for_customer(&self.db, customer_id).await
    }
}
