//! The payment provider seam and the shop's deterministic fake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

/// Proof of an approved charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderReceipt {
    /// The provider's reference for the charge.
    pub reference: String,
}

/// Why a provider did not charge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The card was refused.
    #[error("declined: {0}")]
    Declined(String),
    /// The provider gave up waiting on its side.
    #[error("the provider timed out")]
    Timeout,
}

/// A card payment provider. Every call names the charge by `reference` (one per order), so a
/// call repeated after a lost answer does not charge twice (the provider's idempotency key).
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// Charges `amount_cents` to the card behind `token`; `reference` identifies the charge.
    async fn charge(
        &self,
        token: &str,
        amount_cents: i64,
        currency: &str,
        reference: &str,
    ) -> Result<ProviderReceipt, ProviderError>;

    /// Cancels the charge `reference` if the provider took it (a charge whose answer timed
    /// out); nothing happens if it did not. Idempotent.
    async fn void(&self, reference: &str) -> Result<(), ProviderError>;

    /// Gives back the money of the approved charge `reference`. Idempotent.
    async fn refund(&self, reference: &str) -> Result<(), ProviderError>;
}

/// What the fake provider did with one charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeCharge {
    /// The money is taken.
    Charged,
    /// Cancelled before settlement.
    Voided,
    /// Given back.
    Refunded,
}

/// A deterministic provider for development and tests: `tok_ok` is approved, `tok_decline`
/// (and any unknown token) is declined, `tok_timeout` takes the money but never answers (so the
/// caller's timeout fires and it must void the charge). Charges are idempotent by reference.
#[derive(Debug, Default)]
pub struct FakeProvider {
    charges: Mutex<HashMap<String, (String, FakeCharge)>>,
    count: AtomicU64,
}

impl FakeProvider {
    /// A fake provider that has charged nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many charges it has approved.
    pub fn approved_charges(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// What became of the charge `reference`, if it was taken.
    pub fn charge_state(&self, reference: &str) -> Option<FakeCharge> {
        self.lock().get(reference).map(|(_, state)| *state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, FakeCharge)>> {
        self.charges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the money for `reference` once; the same reference again gets the same receipt.
    fn take(&self, reference: &str) -> ProviderReceipt {
        let mut charges = self.lock();
        let (receipt, _) = charges.entry(reference.to_owned()).or_insert_with(|| {
            let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
            (format!("fake_ch_{n}_{reference}"), FakeCharge::Charged)
        });
        ProviderReceipt {
            reference: receipt.clone(),
        }
    }

    fn settle(&self, reference: &str, to: FakeCharge) {
        if let Some((_, state)) = self.lock().get_mut(reference) {
            if *state == FakeCharge::Charged {
                *state = to;
            }
        }
    }
}

#[async_trait]
impl PaymentProvider for FakeProvider {
    async fn charge(
        &self,
        token: &str,
        _amount_cents: i64,
        _currency: &str,
        reference: &str,
    ) -> Result<ProviderReceipt, ProviderError> {
        match token {
            "tok_ok" => Ok(self.take(reference)),
            "tok_timeout" => {
                self.take(reference);
                std::future::pending().await
            }
            "tok_decline" => Err(ProviderError::Declined("card_declined".to_owned())),
            _ => Err(ProviderError::Declined("unknown_card_token".to_owned())),
        }
    }

    async fn void(&self, reference: &str) -> Result<(), ProviderError> {
        self.settle(reference, FakeCharge::Voided);
        Ok(())
    }

    async fn refund(&self, reference: &str) -> Result<(), ProviderError> {
        self.settle(reference, FakeCharge::Refunded);
        Ok(())
    }
}
