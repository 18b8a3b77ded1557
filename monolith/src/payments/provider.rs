//! The payment provider seam and the shop's deterministic fake.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// A card payment provider.
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
}

/// A deterministic provider for development and tests: `tok_ok` is approved, `tok_decline`
/// (and any unknown token) is declined, `tok_timeout` never answers.
#[derive(Debug, Default)]
pub struct FakeProvider {
    charges: AtomicU64,
}

impl FakeProvider {
    /// A fake provider that has charged nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many charges it has approved.
    pub fn approved_charges(&self) -> u64 {
        self.charges.load(Ordering::SeqCst)
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
            "tok_ok" => {
                let n = self.charges.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(ProviderReceipt {
                    reference: format!("fake_ch_{n}_{reference}"),
                })
            }
            "tok_timeout" => std::future::pending().await,
            "tok_decline" => Err(ProviderError::Declined("card_declined".to_owned())),
            _ => Err(ProviderError::Declined("unknown_card_token".to_owned())),
        }
    }
}
