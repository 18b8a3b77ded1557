//! The order placement saga, its decisions and their effects, and the recovery of orders a
//! crash left pending.
//!
//! A pending order is at one **step**: `reserving` (the reserve command is out), `charging`
//! (stock held, the card being charged) or `committing` (paid, the commit command is out).
//! Each event (the inventory's reply, the charge's outcome) moves it by [`decide`], a pure
//! function of the step and the event:
//!
//! | step         | event                           | next                                                     |
//! |--------------|---------------------------------|----------------------------------------------------------|
//! | `reserving`  | reserved                        | `charging`: charge the card                              |
//! | `reserving`  | insufficient                    | settle `rejected` (out of stock)                         |
//! | `reserving`  | refused, released               | settle `rejected` (nothing is held)                      |
//! | `charging`   | charge approved                 | `committing`: send commit                                |
//! | `charging`   | charge declined                 | settle `payment_failed`, send release                    |
//! | `charging`   | charge timed out (voided)       | settle `payment_failed`, send release                    |
//! | `committing` | committed                       | settle `confirmed`                                       |
//! | `committing` | expired                         | refund the charge, settle `payment_failed`               |
//! | any, settled | not owner (sent the wrong way)  | send the same command the other way                      |
//! | any other    | (late or repeated)              | nothing                                                  |
//!
//! The effects ([`Orders::advance`]): each step change is one transaction of the orders'
//! tables, with the reply's id in the inbox (a reply applied twice changes nothing) and the
//! next command staged in the outbox when it goes by message ([`super::link`]), so the command
//! is sent if and only if the step it starts is recorded. A command applied in process runs
//! once that transaction committed, and its reply is fed straight back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use messaging::inbox::Inbox;
use messaging::inventory::{Command, Line, Reply, REPLIES};
use messaging::Delivery;

use super::link::Route;
use super::store::{self, Pending};
use super::{Order, OrderItem, Orders, PlaceOrder};
use crate::error::{Error, Problem, Result};
use crate::inventory::StockLine;
use crate::payments::{ChargeOutcome, ChargeRequest};

/// The orders module's inbox (the inventory's replies).
pub(super) const INBOX: Inbox = Inbox::new("orders_inbox");
/// The durable consumer name of the replies.
const CONSUMER: &str = "orders";

/// A step of a pending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Reserving,
    Charging,
    Committing,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Reserving => "reserving",
            Step::Charging => "charging",
            Step::Committing => "committing",
        }
    }

    fn parse(text: &str) -> Option<Step> {
        match text {
            "reserving" => Some(Step::Reserving),
            "charging" => Some(Step::Charging),
            "committing" => Some(Step::Committing),
            _ => None,
        }
    }
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// The inventory answered a command.
    Inventory(Reply),
    /// The charge ended.
    Charged(ChargeOutcome),
}

/// What the saga does about an event ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Late or repeated: nothing.
    Nothing,
    /// Move to `charging` and charge the card.
    Charge,
    /// Move to `committing` and send the commit.
    Commit,
    /// Settle the order; `release`: send the release too; `refund`: refund the charge first.
    Settle {
        status: &'static str,
        reason: Option<String>,
        release: bool,
        refund: bool,
    },
    /// The command went to the side that does not own the writes: send it the other way.
    Resend(Command),
}

fn fail(status: &'static str, reason: String, release: bool, refund: bool) -> Next {
    Next::Settle {
        status,
        reason: Some(reason),
        release,
        refund,
    }
}

/// The saga's decision: what an event means for an order at `step` (the table above; `None`:
/// the order is settled, or unknown).
pub(super) fn decide(step: Option<Step>, event: &Event) -> Next {
    use Event::{Charged, Inventory};
    let Some(step) = step else {
        return match event {
            Inventory(Reply::NotOwner { command }) => Next::Resend(command.clone()),
            _ => Next::Nothing,
        };
    };
    match (step, event) {
        (_, Inventory(Reply::NotOwner { command })) => Next::Resend(command.clone()),
        (Step::Reserving, Inventory(Reply::Reserved { .. })) => Next::Charge,
        (
            Step::Reserving,
            Inventory(Reply::Insufficient {
                product_id,
                requested,
                available,
                ..
            }),
        ) => fail(
            "rejected",
            format!(
                "out of stock: product {product_id} has {available} units, {requested} requested"
            ),
            false,
            false,
        ),
        (Step::Reserving, Inventory(Reply::Refused { reason, .. })) => fail(
            "rejected",
            format!("the inventory refused the order: {reason}"),
            false,
            false,
        ),
        (Step::Reserving, Inventory(Reply::Released { .. })) => fail(
            "rejected",
            "the inventory released the order before reserving it".to_owned(),
            false,
            false,
        ),
        (Step::Charging, Charged(ChargeOutcome::Approved { .. })) => Next::Commit,
        (Step::Charging, Charged(ChargeOutcome::Declined { reason })) => fail(
            "payment_failed",
            format!("payment declined: {reason}"),
            true,
            false,
        ),
        (Step::Charging, Charged(ChargeOutcome::TimedOut)) => fail(
            "payment_failed",
            "payment provider timed out; the charge was voided".to_owned(),
            true,
            false,
        ),
        (Step::Committing, Inventory(Reply::Committed { .. })) => Next::Settle {
            status: "confirmed",
            reason: None,
            release: false,
            refund: false,
        },
        (Step::Committing, Inventory(Reply::Expired { .. })) => fail(
            "payment_failed",
            "the reservation expired before the payment completed; the charge was refunded"
                .to_owned(),
            false,
            true,
        ),
        _ => Next::Nothing,
    }
}

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

    let order = orders
        .record(
            request.customer_id,
            currency,
            total,
            &items,
            &request.card_token,
            idempotency_key,
            &lines,
        )
        .await?;
    let _running = Running::start(orders, order.id);
    orders.wait_settled(order.id).await
}

/// The result `POST /orders` answers for an order: confirmed is the order, a failure a problem
/// naming it, a pending one (still waiting for the inventory) the order as it is.
pub(super) fn result_of(order: Order) -> Result<Order> {
    let reason = || {
        order
            .failure_reason
            .clone()
            .unwrap_or_else(|| "the order failed".to_owned())
    };
    match order.status.as_str() {
        "confirmed" | "pending" => Ok(order),
        "rejected" => {
            let reason = reason();
            let slug = if reason.starts_with("out of stock") {
                "out-of-stock"
            } else {
                "order-rejected"
            };
            Err(order_failed(StatusCode::CONFLICT, slug, &order, reason))
        }
        _ => {
            let reason = reason();
            Err(order_failed(
                StatusCode::PAYMENT_REQUIRED,
                "payment-failed",
                &order,
                reason,
            ))
        }
    }
}

/// What a transition does to the order.
enum Transition {
    /// Move to this step.
    Step(Step),
    /// Settle with this status and reason.
    Settle(&'static str, Option<String>),
}

/// Orders locked while an event is applied: striped, so two events of one order never
/// interleave and no lock is ever held twice.
pub(super) const LOCK_STRIPES: usize = 64;

impl Orders {
    /// Records the order at `reserving` with its reserve command (staged in the same
    /// transaction when it goes by message), then drives the saga as far as it goes here.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        customer_id: i64,
        currency: &str,
        total: i64,
        items: &[OrderItem],
        card_token: &str,
        idempotency_key: Option<&str>,
        lines: &[StockLine],
    ) -> Result<Order> {
        let route = self.link.route().await?;
        // Relaxed, as every step before the settlement: the durable settlement flushes it, and
        // an order lost with it in a database crash has its reservation expire.
        let mut tx = self.db.begin_relaxed_write().await?;
        let order = store::insert_pending(
            &mut tx,
            customer_id,
            currency,
            total,
            items,
            card_token,
            idempotency_key,
        )
        .await?;
        let reserve = Command::Reserve {
            order_id: order.id,
            lines: lines
                .iter()
                .map(|l| Line {
                    product_id: l.product_id,
                    quantity: l.quantity,
                })
                .collect(),
            expires_at: crate::db::timestamp(
                time::OffsetDateTime::now_utc() + self.timing.reservation_ttl,
            ),
        };
        let in_process = self.link.stage(&mut tx, route, reserve).await?;
        tx.commit().await?;
        self.link.staged();
        if let Some(command) = in_process {
            self.apply_in_process(order.id, command).await?;
        }
        Ok(order)
    }

    /// Waits until the order settles (a saga in process settled it already; one by message
    /// settles when the replies come) or the wait bound passes, and returns its result.
    async fn wait_settled(&self, id: i64) -> Result<Order> {
        let mut settled = self.settled.subscribe();
        let deadline = tokio::time::Instant::now() + self.timing.settle_wait;
        loop {
            let order = store::find(&self.db, id).await?.ok_or_else(|| {
                Error::Internal(anyhow::anyhow!("order {id} vanished while being placed"))
            })?;
            if order.status != "pending" || tokio::time::Instant::now() >= deadline {
                return result_of(order);
            }
            // Woken when this process settles the order; the 500 ms poll covers an order
            // settled by another process consuming the replies.
            let woken = async {
                loop {
                    match settled.recv().await {
                        Ok(settled_id) if settled_id == id => return,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            };
            let until = deadline.min(tokio::time::Instant::now() + Duration::from_millis(500));
            let _ = tokio::time::timeout_at(until, woken).await;
        }
    }

    /// Applies `command` in process and feeds each reply back until the saga waits for
    /// something else; when the service owns the writes, stages the command by message.
    pub(super) async fn apply_in_process(&self, order_id: i64, command: Command) -> Result<()> {
        let mut command = command;
        loop {
            let reply = match self.link.apply(&command).await {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    let mut tx = self.db.begin_write().await?;
                    self.link.stage(&mut tx, Route::Messages, command).await?;
                    tx.commit().await?;
                    self.link.staged();
                    return Ok(());
                }
                // The inventory failed a reservation: undo whatever may have been held (a
                // release is idempotent) and reject the order. Other commands are sent again
                // by recovery.
                Err(err) if matches!(command, Command::Reserve { .. }) => {
                    tracing::error!(order_id, error = %err, "the inventory failed a reservation");
                    self.link.apply(&Command::Release { order_id }).await?;
                    Reply::Refused {
                        order_id,
                        reason: "inventory unavailable".to_owned(),
                    }
                }
                Err(err) => return Err(err),
            };
            match self
                .advance(order_id, Event::Inventory(reply), None)
                .await?
            {
                Some(next) => command = next,
                None => return Ok(()),
            }
        }
    }

    /// Applies one event to an order (under its lock): decides, records, runs the effects.
    /// `inbox_id`: the message that brought the event, recorded in the inbox with the change.
    /// Returns a command to apply in process next, if any.
    pub(super) async fn advance(
        &self,
        order_id: i64,
        event: Event,
        inbox_id: Option<&str>,
    ) -> Result<Option<Command>> {
        let stripe = usize::try_from(order_id.rem_euclid(LOCK_STRIPES as i64)).unwrap_or(0);
        let _locked = self.locks[stripe].lock().await;
        self.apply_event(order_id, event, inbox_id).await
    }

    async fn apply_event(
        &self,
        order_id: i64,
        event: Event,
        inbox_id: Option<&str>,
    ) -> Result<Option<Command>> {
        let pending = store::pending(&self.db, order_id).await?;
        let step = pending
            .as_ref()
            .and_then(|p| p.step.as_deref())
            .and_then(Step::parse);
        let (Some(step), Some(pending)) = (step, pending) else {
            // Settled already (or unknown): a late or repeated event changes nothing, but a
            // command the service refused still goes the other way: a compensation (a
            // release) is sent after its order settled, and must not be lost.
            self.consume(inbox_id).await?;
            return Ok(match decide(None, &event) {
                Next::Resend(command) => Some(command),
                _ => None,
            });
        };
        self.apply_at(order_id, step, &pending, event, inbox_id)
            .await
    }

    /// Applies `event` to the pending order found at `step` (each change below is conditional
    /// on the step, so one that moved since changes nothing).
    async fn apply_at(
        &self,
        order_id: i64,
        step: Step,
        pending: &Pending,
        event: Event,
        inbox_id: Option<&str>,
    ) -> Result<Option<Command>> {
        match decide(Some(step), &event) {
            Next::Nothing => {
                self.consume(inbox_id).await?;
                Ok(None)
            }
            Next::Charge => {
                let mut tx = self.db.begin_relaxed_write().await?;
                if !first(&mut tx, inbox_id).await? {
                    return Ok(None);
                }
                let moved =
                    store::move_step(&mut tx, order_id, step.name(), Step::Charging.name()).await?;
                tx.commit().await?;
                if !moved {
                    return Ok(None);
                }
                let outcome = self.charge(order_id, pending).await?;
                // Still at `charging`: this saga moved it there and holds the order's lock.
                Box::pin(self.apply_at(
                    order_id,
                    Step::Charging,
                    pending,
                    Event::Charged(outcome),
                    None,
                ))
                .await
            }
            Next::Commit => {
                let commit = Command::Commit { order_id };
                self.transition(
                    order_id,
                    inbox_id,
                    step,
                    Transition::Step(Step::Committing),
                    Some(commit),
                )
                .await
            }
            Next::Settle {
                status,
                reason,
                release,
                refund,
            } => {
                if refund {
                    self.payments.refund(order_id).await?;
                }
                if status == "payment_failed" {
                    self.payments.void_timed_out(order_id).await?;
                }
                let release = release.then_some(Command::Release { order_id });
                self.transition(
                    order_id,
                    inbox_id,
                    step,
                    Transition::Settle(status, reason),
                    release,
                )
                .await
            }
            // Refused by the service (it came by message): the monolith owns the writes.
            Next::Resend(command) => {
                self.consume(inbox_id).await?;
                Ok(Some(command))
            }
        }
    }

    /// Records a transition from `from` (with the inbox id, and `command` staged when it goes
    /// by message) in one transaction; returns `command` when it is to be applied in process.
    async fn transition(
        &self,
        order_id: i64,
        inbox_id: Option<&str>,
        from: Step,
        transition: Transition,
        command: Option<Command>,
    ) -> Result<Option<Command>> {
        let mut route = match command {
            Some(_) => self.link.route().await?,
            None => Route::InProcess,
        };
        let mut command = command;
        if let (Route::InProcess, Some(release @ Command::Release { .. })) = (route, &command) {
            // A compensation in process comes first: once the order shows its failure, its
            // stock is back. (A crash in between leaves the order pending; recovery releases
            // again, which changes nothing.)
            match self.link.apply(release).await? {
                Some(_) => command = None,
                None => route = Route::Messages,
            }
        }
        // A step is relaxed (recovery drives an order on from the step it finds); a settlement
        // is durable, with the outcome stored under the order's idempotency keys.
        let mut tx = match transition {
            Transition::Step(_) => self.db.begin_relaxed_write().await?,
            Transition::Settle(..) => self.db.begin_write().await?,
        };
        if !first(&mut tx, inbox_id).await? {
            return Ok(None);
        }
        let (moved, settled) = match &transition {
            Transition::Step(to) => (
                store::move_step(&mut tx, order_id, from.name(), to.name()).await?,
                None,
            ),
            Transition::Settle(status, reason) => {
                let settled = store::settle(
                    &mut tx,
                    order_id,
                    Some(from.name()),
                    status,
                    reason.as_deref(),
                )
                .await?;
                (settled.is_some(), settled)
            }
        };
        let in_process = match command {
            Some(command) if moved => self.link.stage(&mut tx, route, command).await?,
            _ => None,
        };
        if let Some(order) = &settled {
            // The keys of the order get its outcome: their request may have answered 202, or
            // ended with a crash.
            let (status, body) = super::http::outcome(&result_of(order.clone()));
            store::complete_for_order(&mut tx, order_id, status, &body).await?;
        }
        tx.commit().await?;
        self.link.staged();
        if settled.is_some() {
            let _ = self.settled.send(order_id);
        }
        Ok(in_process)
    }

    /// What follows a settlement made outside [`Orders::transition`]: the idempotency keys of
    /// the order get its outcome, and waiters are woken.
    async fn settled_now(&self, order: Order) -> Result<()> {
        let id = order.id;
        let (status, body) = super::http::outcome(&result_of(order));
        let mut tx = self.db.begin_write().await?;
        store::complete_for_order(&mut tx, id, status, &body).await?;
        tx.commit().await?;
        let _ = self.settled.send(id);
        Ok(())
    }

    /// Records a message that changed nothing in the inbox.
    async fn consume(&self, inbox_id: Option<&str>) -> Result<()> {
        if inbox_id.is_some() {
            let mut tx = self.db.begin_write().await?;
            first(&mut tx, inbox_id).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn charge(&self, order_id: i64, pending: &Pending) -> Result<ChargeOutcome> {
        self.payments
            .charge(ChargeRequest {
                order_id,
                amount_cents: pending.total_cents,
                currency: pending.currency.clone(),
                card_token: pending.card_token.clone().unwrap_or_default(),
            })
            .await
    }

    /// Consumes the inventory's replies from `transport` until `stop` completes, applying each
    /// (at most 64 at once on PostgreSQL, 4 on SQLite, one at a time per order) and
    /// acknowledging it once recorded.
    pub async fn consume_replies(
        self: Arc<Self>,
        transport: Arc<dyn messaging::Transport>,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(stop);
        // SQLite has one writer: more replies at once only wait for it (asleep in its busy
        // handler); a few overlap the payment provider's calls.
        let concurrency = match self.db.backend() {
            crate::db::Backend::Sqlite => 4,
            crate::db::Backend::Postgres => 64,
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut consumer = loop {
            match transport.consumer(CONSUMER, REPLIES).await {
                Ok(consumer) => break consumer,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot subscribe to the inventory's replies; trying again");
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        loop {
            let next = tokio::select! {
                () = &mut stop => return,
                next = consumer.next() => next,
            };
            let delivery = match next {
                Ok(delivery) => delivery,
                Err(err) => {
                    tracing::warn!(error = %err, "the transport failed; consuming again");
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let orders = self.clone();
            tokio::spawn(async move {
                orders.handle_reply(delivery).await;
                drop(permit);
            });
        }
    }

    async fn handle_reply(&self, delivery: Delivery) {
        let reply = match delivery.message.json::<Reply>() {
            Ok(reply) => reply,
            Err(err) => {
                tracing::error!(id = %delivery.message.id, error = %err, "a reply that does not parse; dropped");
                let _ = delivery.ack().await;
                return;
            }
        };
        let order_id = reply.order_id();
        let id = delivery.message.id.clone();
        let applied = match self
            .advance(order_id, Event::Inventory(reply), Some(&id))
            .await
        {
            Ok(Some(command)) => self.apply_in_process(order_id, command).await,
            Ok(None) => Ok(()),
            Err(err) => Err(err),
        };
        let acked = match applied {
            Ok(()) => delivery.ack().await,
            Err(err) => {
                tracing::warn!(order_id, error = %err, "applying a reply failed; it will come again");
                delivery.retry_after(Duration::from_millis(200)).await
            }
        };
        if let Err(err) = acked {
            tracing::warn!(order_id, error = %err, "cannot acknowledge a reply; it will come again");
        }
    }
}

/// Records `inbox_id` in `tx`: `false` when it was there already (the message was applied).
async fn first(tx: &mut store::Tx, inbox_id: Option<&str>) -> Result<bool> {
    match inbox_id {
        Some(id) => Ok(INBOX.first_delivery(tx, id).await?),
        None => Ok(true),
    }
}

/// What one pass of recovery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Orders settled.
    pub settled: usize,
    /// Orders whose last command was sent again (a commit whose reply has not come).
    pub resent: usize,
    /// Idempotency keys freed: claimed by a request that recorded nothing and never ended.
    pub keys_released: u64,
}

/// Why recovery settles an order.
const ABANDONED: &str = "abandoned while being placed; settled by recovery";

impl Orders {
    /// Settles orders left `pending` for longer than `older_than` whose saga is not running in
    /// this process (a crash stopped it, or a reply never came). By step: `reserving` is
    /// released and failed; `charging` is confirmed through a commit if the payment was
    /// approved, else voided, released and failed; `committing` has its commit sent again.
    /// Keys whose request recorded nothing are freed. Returns how many orders it settled.
    pub async fn recover_pending(&self, older_than: Duration) -> Result<usize> {
        Ok(self.recover(older_than).await?.settled)
    }

    /// [`Orders::recover_pending`], with the whole report.
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
            let stripe = usize::try_from(id.rem_euclid(LOCK_STRIPES as i64)).unwrap_or(0);
            let next = {
                let _locked = self.locks[stripe].lock().await;
                self.recover_one(id, &mut report).await?
            };
            if let Some(command) = next {
                self.apply_in_process(id, command).await?;
            }
        }
        report.keys_released = store::release_abandoned_keys(&self.db, older_than).await?;
        Ok(report)
    }

    async fn recover_one(&self, id: i64, report: &mut RecoveryReport) -> Result<Option<Command>> {
        let Some(pending) = store::pending(&self.db, id).await? else {
            return Ok(None);
        };
        let release = Some(Command::Release { order_id: id });
        let fail = Transition::Settle("payment_failed", Some(ABANDONED.to_owned()));
        let step = pending.step.as_deref().and_then(Step::parse);
        let next = match step {
            // Placed before the saga recorded steps: its reservation is in process.
            None => return self.recover_unstepped(id, report).await.map(|()| None),
            Some(Step::Reserving) => {
                self.transition(id, None, Step::Reserving, fail, release)
                    .await?
            }
            Some(Step::Charging) => {
                if self.payments.approved_payment(id).await?.is_some() {
                    let commit = Some(Command::Commit { order_id: id });
                    let next = self
                        .transition(
                            id,
                            None,
                            Step::Charging,
                            Transition::Step(Step::Committing),
                            commit,
                        )
                        .await?;
                    report.resent += 1;
                    return Ok(next);
                }
                self.payments.void_timed_out(id).await?;
                self.transition(id, None, Step::Charging, fail, release)
                    .await?
            }
            Some(Step::Committing) => {
                report.resent += 1;
                let route = self.link.route().await?;
                let mut tx = self.db.begin_write().await?;
                let next = self
                    .link
                    .stage(&mut tx, route, Command::Commit { order_id: id })
                    .await?;
                tx.commit().await?;
                self.link.staged();
                return Ok(next);
            }
        };
        if store::find(&self.db, id)
            .await?
            .is_some_and(|o| o.status != "pending")
        {
            report.settled += 1;
            tracing::warn!(order_id = id, "settled an order left pending");
        }
        Ok(next)
    }

    /// An order from before the saga recorded steps: paid is confirmed, anything else released.
    async fn recover_unstepped(&self, id: i64, report: &mut RecoveryReport) -> Result<()> {
        let paid = self.payments.approved_payment(id).await?.is_some();
        let (command, status, reason) = if paid {
            (Command::Commit { order_id: id }, "confirmed", None)
        } else {
            (
                Command::Release { order_id: id },
                "payment_failed",
                Some(ABANDONED),
            )
        };
        self.link.apply(&command).await?;
        let mut tx = self.db.begin_write().await?;
        let settled = store::settle(&mut tx, id, None, status, reason).await?;
        tx.commit().await?;
        if let Some(order) = settled {
            report.settled += 1;
            self.settled_now(order).await?;
        }
        Ok(())
    }

    /// Runs [`Orders::recover`] and the reservations' expiry every `every` for orders older
    /// than `older_than`, until the task is dropped; a failed pass is logged and tried again.
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
            if self.link.route().await.ok() == Some(Route::InProcess) {
                match self.inventory.expire_due().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(orders = n, "released expired reservations"),
                    Err(err) => tracing::warn!(error = %err, "cannot expire reservations"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::OrderLine;

    #[test]
    fn the_decision_table_holds() {
        use Event::{Charged, Inventory};
        let order_id = 7;
        let settles = |next: Next| match next {
            Next::Settle {
                status,
                release,
                refund,
                ..
            } => Some((status, release, refund)),
            _ => None,
        };
        assert_eq!(
            decide(
                Some(Step::Reserving),
                &Inventory(Reply::Reserved { order_id })
            ),
            Next::Charge
        );
        let short = Reply::Insufficient {
            order_id,
            product_id: 3,
            requested: 2,
            available: 1,
        };
        assert_eq!(
            settles(decide(Some(Step::Reserving), &Inventory(short))),
            Some(("rejected", false, false))
        );
        assert_eq!(
            decide(
                Some(Step::Charging),
                &Charged(ChargeOutcome::Approved { payment_id: 1 })
            ),
            Next::Commit
        );
        assert_eq!(
            settles(decide(
                Some(Step::Charging),
                &Charged(ChargeOutcome::TimedOut)
            )),
            Some(("payment_failed", true, false)),
            "a timed-out charge releases the stock"
        );
        assert_eq!(
            settles(decide(
                Some(Step::Charging),
                &Charged(ChargeOutcome::Declined {
                    reason: "no".to_owned()
                })
            )),
            Some(("payment_failed", true, false))
        );
        assert_eq!(
            settles(decide(
                Some(Step::Committing),
                &Inventory(Reply::Committed { order_id })
            )),
            Some(("confirmed", false, false))
        );
        assert_eq!(
            settles(decide(
                Some(Step::Committing),
                &Inventory(Reply::Expired { order_id })
            )),
            Some(("payment_failed", false, true)),
            "an expired reservation refunds the charge"
        );
        // Late and repeated events change nothing.
        assert_eq!(
            decide(
                Some(Step::Committing),
                &Inventory(Reply::Reserved { order_id })
            ),
            Next::Nothing
        );
        assert_eq!(
            decide(
                Some(Step::Reserving),
                &Inventory(Reply::Committed { order_id })
            ),
            Next::Nothing
        );
        assert_eq!(
            decide(
                Some(Step::Charging),
                &Inventory(Reply::Reserved { order_id })
            ),
            Next::Nothing
        );
        let refused = Command::Release { order_id };
        assert_eq!(
            decide(
                Some(Step::Committing),
                &Inventory(Reply::NotOwner {
                    command: refused.clone()
                })
            ),
            Next::Resend(refused.clone())
        );
        // A settled order: a refused command still goes the other way; anything else is late.
        assert_eq!(
            decide(
                None,
                &Inventory(Reply::NotOwner {
                    command: refused.clone()
                })
            ),
            Next::Resend(refused)
        );
        assert_eq!(
            decide(None, &Inventory(Reply::Committed { order_id })),
            Next::Nothing
        );
    }

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
