//! Payments: charging a card through a provider, and the record of every attempt.
//!
//! Owns the `payments_*` tables. The provider sits behind [`PaymentProvider`]; the shop ships a
//! deterministic [`FakeProvider`] (token `tok_ok` is approved, `tok_decline` declined, and
//! `tok_timeout` never answers, so the module's timeout fires). A charge is idempotent per
//! order: once an order has an approved payment, charging it again returns that payment and
//! does not call the provider.

mod provider;
mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::Result;

pub use provider::{FakeProvider, PaymentProvider, ProviderError, ProviderReceipt};

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
    /// The approved payment of an order, if any.
    async fn approved_payment(&self, order_id: i64) -> Result<Option<Payment>>;
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
        let reference = format!("order-{}", request.order_id);
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
        let payment_id = store::record(
            &self.db,
            &request,
            status,
            provider_ref.as_deref(),
            reason.as_deref(),
        )
        .await?;
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
}
