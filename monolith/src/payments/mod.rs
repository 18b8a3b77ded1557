//! Payments: charging a card through a provider, and the record of every attempt.
//!
//! Owns the `payments_*` tables. The provider sits behind [`PaymentProvider`]; the shop ships a
//! deterministic [`FakeProvider`] (token `tok_ok` is approved, `tok_decline` declined, and
//! `tok_timeout` takes the money and never answers, so the module's timeout fires and the charge
//! is voided). A charge is idempotent per order: once an order has an approved payment,
//! charging it again returns that payment and does not call the provider, and the provider
//! knows each charge by the order's reference. Compensations: a charge whose answer timed out is
//! voided at once; an approved one can be refunded.

mod provider;
mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::Result;

pub use provider::{FakeCharge, FakeProvider, PaymentProvider, ProviderError, ProviderReceipt};

/// What to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The order paid for; at most one approved payment exists per order.
    pub order_id: i64,
    /// Amount in minor units.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// The card token the customer gave.
    pub card_token: String,
}

/// How a charge ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ChargeOutcome {
    /// The money was taken.
    Approved {
        /// The payment record.
        payment_id: i64,
    },
    /// The provider refused the card.
    Declined {
        /// The provider's reason.
        reason: String,
    },
    /// The provider did not answer in time; nothing was charged.
    TimedOut,
}

/// A recorded payment attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Payment id.
    pub id: i64,
    /// The order paid for.
    pub order_id: i64,
    /// Amount in minor units.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// `approved`, `declined` or `timed_out`.
    pub status: String,
    /// The provider's reference of an approved charge.
    pub provider_ref: Option<String>,
}

/// The payments module's facade.
#[async_trait]
pub trait PaymentsApi: Send + Sync {
    /// Charges the card for an order (idempotent per order once approved).
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome>;
    /// The approved payment of an order, if any (a refunded one is not).
    async fn approved_payment(&self, order_id: i64) -> Result<Option<Payment>>;
    /// Gives back the approved payment of an order (compensation); `false` when it has none.
    /// Idempotent.
    async fn refund(&self, order_id: i64) -> Result<bool>;
    /// Voids the order's charges whose answer timed out, at the provider (compensation: the
    /// provider may have taken the money). Idempotent.
    async fn void_timed_out(&self, order_id: i64) -> Result<()>;
}

/// The in-process implementation of [`PaymentsApi`].
#[derive(Clone)]
pub struct Payments {
    db: Db,
    provider: Arc<dyn PaymentProvider>,
    timeout: Duration,
}

impl Payments {
    /// Payments recorded in `db`, charged through `provider`, each call bounded by `timeout`.
    pub fn new(db: Db, provider: Arc<dyn PaymentProvider>, timeout: Duration) -> Self {
        Payments {
            db,
            provider,
            timeout,
        }
    }
}

#[async_trait]
impl PaymentsApi for Payments {
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome> {
        if let Some(payment) = store::approved(&self.db, request.order_id).await? {
            return Ok(ChargeOutcome::Approved {
                payment_id: payment.id,
            });
        }
        let reference = reference(request.order_id);
        let call = self.provider.charge(
            &request.card_token,
            request.amount_cents,
            &request.currency,
            &reference,
        );
        let (status, provider_ref, reason) = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(receipt)) => ("approved", Some(receipt.reference), None),
            Ok(Err(ProviderError::Declined(reason))) => ("declined", None, Some(reason)),
            Ok(Err(ProviderError::Timeout)) | Err(_) => ("timed_out", None, None),
        };
        if status == "timed_out" {
            // The provider may have taken the money before its answer was lost: cancel it.
            self.void(&reference).await;
        }
        let recorded = store::record(
            &self.db,
            &request,
            status,
            provider_ref.as_deref(),
            reason.as_deref(),
        )
        .await;
        let payment_id = match recorded {
            Ok(id) => id,
            // A concurrent charge of the same order recorded the approval first (the provider
            // charged once: same reference): that payment is the answer.
            Err(crate::error::Error::Conflict(_)) if status == "approved" => {
                match store::approved(&self.db, request.order_id).await? {
                    Some(payment) => payment.id,
                    None => {
                        return Err(crate::error::Error::Internal(anyhow::anyhow!(
                            "order {} is paid, but its payment cannot be read",
                            request.order_id
                        )))
                    }
                }
            }
            Err(err) => return Err(err),
        };
        Ok(match status {
            "approved" => ChargeOutcome::Approved { payment_id },
            "declined" => ChargeOutcome::Declined {
                reason: reason.unwrap_or_default(),
            },
            _ => ChargeOutcome::TimedOut,
        })
    }

    async fn approved_payment(&self, order_id: i64) -> Result<Option<Payment>> {
        store::approved(&self.db, order_id).await
    }

    async fn refund(&self, order_id: i64) -> Result<bool> {
        if store::approved(&self.db, order_id).await?.is_none() {
            return Ok(false);
        }
        self.provider
            .refund(&reference(order_id))
            .await
            .map_err(|e| {
                crate::error::Error::Internal(anyhow::anyhow!("refunding order {order_id}: {e}"))
            })?;
        store::mark(&self.db, order_id, "refunded_at").await?;
        Ok(true)
    }

    async fn void_timed_out(&self, order_id: i64) -> Result<()> {
        if store::has_timed_out(&self.db, order_id).await? {
            self.void(&reference(order_id)).await;
            store::mark(&self.db, order_id, "voided_at").await?;
        }
        Ok(())
    }
}

/// The reference of an order's charge with the provider (its idempotency key there).
fn reference(order_id: i64) -> String {
    format!("order-{order_id}")
}

impl Payments {
    /// Voids a charge whose answer was lost; a provider that fails to is logged, and the void
    /// is tried again by the next compensation of the order.
    async fn void(&self, reference: &str) {
        match tokio::time::timeout(self.timeout, self.provider.void(reference)).await {
            Ok(Ok(())) => tracing::info!(reference, "voided a charge whose answer timed out"),
            Ok(Err(err)) => {
                tracing::error!(reference, error = %err, "the provider refused to void a charge")
            }
            Err(_) => tracing::error!(reference, "voiding a charge timed out"),
        }
    }
}
