//! The transport seam: publish durably, consume at least once with explicit acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// One message: its id (the inbox's deduplication key), its subject and its payload (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique per message; a redelivery or a re-publication carries the same id.
    pub id: String,
    /// Where it goes (`inventory.commands`).
    pub subject: String,
    /// The body.
    pub payload: Bytes,
}

impl Message {
    /// A message with a fresh id.
    pub fn new(subject: &str, payload: impl Into<Bytes>) -> Message {
        Message {
            id: uuid::Uuid::new_v4().to_string(),
            subject: subject.to_owned(),
            payload: payload.into(),
        }
    }

    /// The payload as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// Why the transport failed; the caller retries later (the outbox keeps the message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

impl TransportError {
    pub(crate) fn from(err: impl std::fmt::Display) -> Self {
        TransportError(err.to_string())
    }
}

/// A message handed to a consumer; acknowledge it once its effect is committed, or it comes
/// back after the transport's acknowledgement wait.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// How many times it was delivered, this time included (1 the first time).
    pub attempt: u64,
    pub(crate) ack: Box<dyn Acknowledge>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Done with it: it is not delivered again.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.ack.ack().await
    }

    /// Not done: deliver it again after `delay`.
    pub async fn retry_after(self, delay: Duration) -> Result<(), TransportError> {
        self.ack.nak(delay).await
    }
}

#[async_trait]
pub(crate) trait Acknowledge: Send + Sync {
    async fn ack(&self) -> Result<(), TransportError>;
    async fn nak(&self, delay: Duration) -> Result<(), TransportError>;
}

/// Deliveries of one durable consumer.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; waits until there is one. An error means the transport is down for
    /// now: call again (the consumer reconnects).
    async fn next(&mut self) -> Result<Delivery, TransportError>;
}

/// A message transport.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Publishes the messages in order; returns once each is stored by the transport. On an
    /// error, the first `n` (as [`TransportError`] leaves unsaid) may have been stored: a
    /// caller publishes them again, and receivers deduplicate by id.
    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError>;

    /// The durable consumer `name` of `subject`: it resumes where the last one with this name
    /// stopped (unacknowledged messages come again).
    async fn consumer(
        &self,
        name: &str,
        subject: &str,
    ) -> Result<Box<dyn Consumer>, TransportError>;

    /// What it is, for logs (`embedded`, `nats://127.0.0.1:4222`).
    fn describe(&self) -> String;
}

/// The transport at `url`: `embedded` (in-process, see [`crate::embedded`]) or a `nats://` URL
/// (NATS JetStream, see [`crate::jetstream`]), either with an optional `?namespace=NAME` that
/// keeps its subjects apart from every other namespace's (default `shop`). `ack_wait`: how long
/// a delivery may stay unacknowledged before it is delivered again.
pub async fn connect(url: &str, ack_wait: Duration) -> anyhow::Result<Arc<dyn Transport>> {
    let (base, namespace) = match url.split_once("?namespace=") {
        Some((base, namespace)) => (base, namespace),
        None => (url, "shop"),
    };
    anyhow::ensure!(
        !namespace.is_empty()
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "the namespace of {url:?} must be letters, digits, '_' or '-'"
    );
    if base == "embedded" {
        return Ok(crate::embedded::Embedded::shared(namespace, ack_wait));
    }
    anyhow::ensure!(
        base.starts_with("nats://"),
        "unknown message transport {url:?}: `embedded` or a nats:// URL"
    );
    Ok(Arc::new(
        crate::jetstream::JetStream::connect(base, namespace, ack_wait).await?,
    ))
}
