//! The order placement saga and the recovery of orders a crash left pending.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;

use super::{store, Order, OrderItem, Orders, PlaceOrder};
use crate::error::{Error, Problem, Result};
use crate::inventory::{Reservation, StockLine};
use crate::payments::{ChargeOutcome, ChargeRequest};

/// Most lines one order may have.
const MAX_LINES: usize = 100;
/// Most units of one product one order may have.
const MAX_UNITS: i64 = 1000;

/// Checks the request and adds up repeated products, ordered by product id.
fn normalize(request: &PlaceOrder) -> Result<Vec<StockLine>> {
    if request.items.is_empty() || request.items.len() > MAX_LINES {
        return Err(Error::Unprocessable(format!(
            "an order has 1 to {MAX_LINES} items (got {})",
            request.items.len()
        )));
    }
    if request.card_token.trim().is_empty() {
        return Err(Error::Unprocessable(
            "card_token must not be empty".to_owned(),
        ));
    }
    let mut units = BTreeMap::<i64, i64>::new();
    for line in &request.items {
        if !(1..=MAX_UNITS).contains(&line.quantity) {
            return Err(Error::Unprocessable(format!(
                "quantity must be between 1 and {MAX_UNITS} (got {} for product {})",
                line.quantity, line.product_id
            )));
        }
        *units.entry(line.product_id).or_default() += line.quantity;
    }
    if let Some((product_id, quantity)) = units.iter().find(|(_, q)| **q > MAX_UNITS) {
        return Err(Error::Unprocessable(format!(
            "quantity must be between 1 and {MAX_UNITS} (got {quantity} for product {product_id})"
        )));
    }
    Ok(units
        .into_iter()
        .map(|(product_id, quantity)| StockLine {
            product_id,
            quantity,
        })
        .collect())
}

fn order_failed(status: StatusCode, slug: &str, order: &Order, detail: String) -> Error {
    Error::Problem(Box::new(
        Problem::new(status, slug, detail)
            .with("order_id", order.id)
            .with("order_status", order.status.clone()),
    ))
}

/// Marks an order's saga as running in this process until dropped (at its end, or when the
/// saga's future is dropped).
struct Running<'a> {
    orders: &'a Orders,
    id: i64,
}

impl<'a> Running<'a> {
    fn start(orders: &'a Orders, id: i64) -> Self {
        orders
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        Running { orders, id }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.orders
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

pub(super) async fn place(
    orders: &Orders,
    request: PlaceOrder,
    idempotency_key: Option<&str>,
) -> Result<Order> {
    let lines = normalize(&request)?;
    if orders
        .accounts
        .customer(request.customer_id)
        .await?
        .is_none()
    {
        return Err(Error::Unprocessable(format!(
            "customer {} does not exist",
            request.customer_id
        )));
    }
    let ids: Vec<i64> = lines.iter().map(|l| l.product_id).collect();
    let products = orders.catalog.products(&ids).await?;
    if let Some(missing) = ids.iter().find(|id| !products.iter().any(|p| p.id == **id)) {
        return Err(Error::Unprocessable(format!(
            "product {missing} does not exist"
        )));
    }
    let currency = &products[0].currency;
    if products.iter().any(|p| &p.currency != currency) {
        return Err(Error::Unprocessable(
            "all items of an order must share one currency".to_owned(),
        ));
    }
    let items: Vec<OrderItem> = lines
        .iter()
        .zip(&products)
        .map(|(line, product)| OrderItem {
            product_id: line.product_id,
            quantity: line.quantity,
            unit_price_cents: product.price_cents,
        })
        .collect();
    let total = items
        .iter()
        .try_fold(0_i64, |sum, i| {
            sum.checked_add(i.unit_price_cents.checked_mul(i.quantity)?)
        })
        .ok_or_else(|| Error::Unprocessable("the order total is too large".to_owned()))?;

    let order = store::insert_pending(
        &orders.db,
        request.customer_id,
        currency,
        total,
        &items,
        idempotency_key,
    )
    .await?;
    let _running = Running::start(orders, order.id);

    match orders.inventory.reserve(order.id, &lines).await {
        Ok(Reservation::Reserved) => {}
        Ok(Reservation::Insufficient {
            product_id,
            requested,
            available,
        }) => {
            let reason = format!(
                "out of stock: product {product_id} has {available} units, {requested} requested"
            );
            let order = settle(orders, order, "rejected", Some(&reason)).await?;
            return Err(order_failed(
                StatusCode::CONFLICT,
                "out-of-stock",
                &order,
                reason,
            ));
        }
        Err(err) => {
            // The reservation may or may not have committed: release is idempotent, so undo it
            // before failing the order; if even that fails, recovery settles the order later.
            orders.inventory.release(order.id).await?;
            settle(orders, order, "rejected", Some("inventory unavailable")).await?;
            return Err(err);
        }
    }

    let charge = ChargeRequest {
        order_id: order.id,
        amount_cents: total,
        currency: order.currency.clone(),
        card_token: request.card_token,
    };
    let reason = match orders.payments.charge(charge).await? {
        ChargeOutcome::Approved { .. } => {
            orders.inventory.commit(order.id).await?;
            return settle(orders, order, "confirmed", None).await;
        }
        ChargeOutcome::Declined { reason } => format!("payment declined: {reason}"),
        ChargeOutcome::TimedOut => "payment provider timed out".to_owned(),
    };
    orders.inventory.release(order.id).await?;
    let order = settle(orders, order, "payment_failed", Some(&reason)).await?;
    Err(order_failed(
        StatusCode::PAYMENT_REQUIRED,
        "payment-failed",
        &order,
        reason,
    ))
}

/// Moves the pending `order` to its final status and returns it. If it is no longer pending
/// (recovery settled it meanwhile), the stored order is returned unchanged.
async fn settle(
    orders: &Orders,
    order: Order,
    status: &str,
    reason: Option<&str>,
) -> Result<Order> {
    if let Some(settled) = store::finish(&orders.db, order.id, status, reason).await? {
        return Ok(settled);
    }
    let id = order.id;
    store::find(&orders.db, id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("order {id} vanished while being placed")))
}

/// What one pass of recovery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Orders settled.
    pub settled: usize,
    /// Idempotency keys given the outcome of the order they recorded.
    pub keys_completed: u64,
    /// Idempotency keys freed: claimed by a request that recorded nothing and never ended.
    pub keys_released: u64,
}

impl Orders {
    /// Settles orders left `pending` for longer than `older_than` whose saga is not running in
    /// this process (a crash stopped it): an order with an approved payment is confirmed, any
    /// other has its stock released and is marked `payment_failed`. The idempotency keys of the
    /// requests a crash cut short get the settled outcome; keys whose request recorded nothing
    /// are freed. Returns how many orders it settled.
    pub async fn recover_pending(&self, older_than: Duration) -> Result<usize> {
        Ok(self.recover(older_than).await?.settled)
    }

    /// [`Orders::recover_pending`], with what it did to idempotency keys.
    pub async fn recover(&self, older_than: Duration) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let stale = store::pending_before(&self.db, older_than).await?;
        for id in stale {
            let running = self
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&id);
            if running {
                continue;
            }
            let outcome = if self.payments.approved_payment(id).await?.is_some() {
                self.inventory.commit(id).await?;
                store::finish(&self.db, id, "confirmed", None).await?
            } else {
                self.inventory.release(id).await?;
                store::finish(
                    &self.db,
                    id,
                    "payment_failed",
                    Some("abandoned while being placed; settled by recovery"),
                )
                .await?
            };
            // Settled by a saga meanwhile (another process, or this one): its own response is
            // stored by its request.
            let Some(order) = outcome else { continue };
            let (status, body) = super::http::outcome(&settled_result(order));
            report.keys_completed += store::complete_for_order(&self.db, id, status, &body).await?;
            report.settled += 1;
            tracing::warn!(order_id = id, "settled an order left pending");
        }
        report.keys_released = store::release_abandoned_keys(&self.db, older_than).await?;
        Ok(report)
    }

    /// Runs [`Orders::recover`] every `every` for orders older than `older_than`, until the
    /// task is dropped; a failed pass is logged and tried again at the next.
    pub async fn recover_forever(
        self: std::sync::Arc<Self>,
        older_than: Duration,
        every: Duration,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.recover(older_than).await {
                Ok(report) if report != RecoveryReport::default() => {
                    tracing::warn!(?report, "recovery settled what a crash left behind");
                }
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "recovery failed; trying again"),
            }
        }
    }
}

/// The result the saga's request would have answered for an order settled by recovery.
fn settled_result(order: Order) -> Result<Order> {
    match order.status.as_str() {
        "confirmed" => Ok(order),
        _ => {
            let reason = order
                .failure_reason
                .clone()
                .unwrap_or_else(|| "the order failed".to_owned());
            Err(order_failed(
                StatusCode::PAYMENT_REQUIRED,
                "payment-failed",
                &order,
                reason,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::OrderLine;

    fn request(items: &[(i64, i64)]) -> PlaceOrder {
        PlaceOrder {
            customer_id: 1,
            items: items
                .iter()
                .map(|&(product_id, quantity)| OrderLine {
                    product_id,
                    quantity,
                })
                .collect(),
            card_token: "tok_ok".to_owned(),
        }
    }

    #[test]
    fn repeated_products_are_added_up_in_id_order() {
        let lines = normalize(&request(&[(7, 1), (3, 2), (7, 4)])).unwrap();
        assert_eq!(
            lines,
            vec![
                StockLine {
                    product_id: 3,
                    quantity: 2
                },
                StockLine {
                    product_id: 7,
                    quantity: 5
                },
            ]
        );
    }

    #[test]
    fn bad_quantities_and_empty_orders_are_refused() {
        assert!(normalize(&request(&[])).is_err());
        assert!(normalize(&request(&[(1, 0)])).is_err());
        assert!(normalize(&request(&[(1, -3)])).is_err());
        assert!(normalize(&request(&[(1, 600), (1, 600)])).is_err());
    }
}
