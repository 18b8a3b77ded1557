//! Orders: placing an order as a saga across inventory and payments.
//!
//! Owns the `orders_*` tables and talks to the other modules only through their facades:
//! [`AccountsApi`] (does the customer exist), [`CatalogApi`] (prices), [`InventoryApi`]
//! (reserve / commit / release stock) and [`PaymentsApi`] (charge, void, refund). Placing an
//! order:
//!
//! 1. record the order as `pending` at step `reserving`, with the reserve command;
//! 2. the inventory holds the stock, all or nothing, until an expiry (short of stock:
//!    `rejected`, 409);
//! 3. charge the card (a charge whose answer times out is voided with the provider);
//! 4. approved: commit the reservation, then `confirmed` (201); declined or timed out: release
//!    the reservation (compensation), `payment_failed` (402); a commit that finds the
//!    reservation expired has the charge refunded, `payment_failed`.
//!
//! The saga's decisions and effects are in `saga` (a table of step × event), the way to the
//! inventory in `link`: in process while the monolith owns the inventory's writes, through the
//! transactional outbox (`orders_outbox`) and a message transport once the inventory carve-out
//! moved them to its service, the replies applied once through the inbox (`orders_inbox`).
//!
//! The saga runs to its end whatever the client does: `POST /orders` runs it in a task of its
//! own and waits for the order to settle (at most [`SagaTiming::settle_wait`]; past it, the
//! order is answered `pending`, 202, and settles later). A crash between steps leaves the order
//! `pending`; [`Orders::recover_pending`] drives such orders on from their step, so stock is
//! never lost and a paid order is never failed. It runs at start-up and then continuously
//! ([`Orders::recover_forever`], which also expires reservations), and skips the orders whose
//! saga is still running in this process. `POST /orders` also honours an `Idempotency-Key`
//! (see `http`): a settlement stores its outcome under the key of the request that placed it.

mod http;
mod link;
mod saga;
mod store;

use std::sync::Arc;
use std::time::Duration;

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
pub use link::{InventoryLink, Messages, Route};
pub use saga::RecoveryReport;

/// The orders module's outbox (its commands to the inventory).
pub fn outbox() -> messaging::outbox::Outbox {
    messaging::outbox::Outbox::new("orders_outbox")
}

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

/// How long the saga's waits last.
#[derive(Debug, Clone, Copy)]
pub struct SagaTiming {
    /// How long `POST /orders` waits for an order to settle before answering it `pending`
    /// (202); the saga goes on.
    pub settle_wait: Duration,
    /// How long a reservation holds before it expires, if no commit claimed it.
    pub reservation_ttl: Duration,
}

impl Default for SagaTiming {
    fn default() -> Self {
        SagaTiming {
            settle_wait: Duration::from_secs(10),
            reservation_ttl: Duration::from_secs(600),
        }
    }
}

/// The in-process implementation of [`OrdersApi`].
#[derive(Clone)]
pub struct Orders {
    db: Db,
    accounts: Arc<dyn AccountsApi>,
    catalog: Arc<dyn CatalogApi>,
    inventory: Arc<dyn InventoryApi>,
    payments: Arc<dyn PaymentsApi>,
    link: InventoryLink,
    timing: SagaTiming,
    /// Orders whose saga is running in this process: recovery leaves them alone.
    running: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
    /// Ids of the orders this process settles, for the requests waiting on them.
    settled: tokio::sync::broadcast::Sender<i64>,
    /// One event of an order at a time ([`saga::LOCK_STRIPES`] stripes by order id).
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
}

impl Orders {
    /// Orders stored in `db`, placed through the other modules' facades; the inventory is
    /// reached in process.
    pub fn new(
        db: Db,
        accounts: Arc<dyn AccountsApi>,
        catalog: Arc<dyn CatalogApi>,
        inventory: Arc<dyn InventoryApi>,
        payments: Arc<dyn PaymentsApi>,
    ) -> Self {
        let link = InventoryLink::in_process(inventory.clone());
        Orders {
            db,
            accounts,
            catalog,
            inventory,
            payments,
            link,
            timing: SagaTiming::default(),
            running: Arc::default(),
            settled: tokio::sync::broadcast::channel(1024).0,
            locks: Arc::new(
                (0..saga::LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            ),
        }
    }

    /// Reaches the inventory by `messages` once the monolith no longer owns its writes.
    pub fn with_messages(mut self, messages: Messages) -> Self {
        self.link = InventoryLink::with_messages(self.inventory.clone(), messages);
        self
    }

    /// With these waits.
    pub fn with_timing(mut self, timing: SagaTiming) -> Self {
        self.timing = timing;
        self
    }

    /// The messages side of the link to the inventory, if configured.
    pub fn messages(&self) -> Option<&Messages> {
        self.link.messages()
    }

    /// The database (for the outbox relay).
    pub fn db(&self) -> &Db {
        &self.db
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
