//! NATS JetStream: messages are stored by the broker (file storage), survive its restart, and
//! are delivered to durable pull consumers until acknowledged.
//!
//! One stream per namespace (`SHOP` for the default `shop`) holds its subjects, each stored as
//! `<namespace>.<subject>` (`shop.inventory.commands`). A message's id travels in the
//! `Shop-Msg-Id` header (the inbox's key); the broker's own `Nats-Msg-Id` deduplication is set
//! to the same id, so a re-publication within its window is dropped by the broker too.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_trait::async_trait;
use futures::StreamExt as _;

use crate::transport::{Acknowledge, Consumer, Delivery, Message, Transport, TransportError};

/// The header carrying a message's id.
pub const ID_HEADER: &str = "Shop-Msg-Id";

/// A JetStream connection.
#[derive(Debug, Clone)]
pub struct JetStream {
    url: String,
    namespace: String,
    context: jetstream::Context,
    stream: stream::Stream,
    ack_wait: Duration,
    /// Publish every message twice, under two broker ids (tests of the inbox).
    twice: bool,
}

impl JetStream {
    /// Connects (retrying in the background if the broker goes away later) and makes sure the
    /// stream exists.
    pub async fn connect(
        url: &str,
        namespace: &str,
        ack_wait: Duration,
    ) -> anyhow::Result<JetStream> {
        let stream_name = namespace.to_uppercase();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
        let context = jetstream::new(client);
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            context.get_or_create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![format!("{namespace}.>")],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("NATS at {url} did not answer in 10 s (is JetStream on?)"))?
        .map_err(|e| anyhow::anyhow!("cannot create the stream {stream_name} at {url}: {e}"))?;
        Ok(JetStream {
            url: url.to_owned(),
            namespace: namespace.to_owned(),
            context,
            stream,
            ack_wait,
            twice: false,
        })
    }

    /// Publishes every message twice from now on, each copy under its own broker id but with
    /// the same message id: every message is delivered twice, on purpose (tests).
    pub fn publishing_twice(mut self) -> JetStream {
        self.twice = true;
        self
    }
}

#[async_trait]
impl Transport for JetStream {
    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let copies: &[&str] = if self.twice { &["", "#2"] } else { &[""] };
            for copy in copies {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(message.payload.clone())
                    .message_id(format!("{}{copy}", message.id))
                    .header(ID_HEADER, message.id.as_str());
                let ack = self
                    .context
                    .send_publish(format!("{}.{}", self.namespace, message.subject), publish)
                    .await
                    .map_err(TransportError::from)?;
                acks.push(ack);
            }
        }
        for ack in acks {
            ack.await.map_err(TransportError::from)?;
        }
        Ok(())
    }

    async fn consumer(
        &self,
        name: &str,
        subject: &str,
    ) -> Result<Box<dyn Consumer>, TransportError> {
        let consumer = self
            .stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subject: format!("{}.{subject}", self.namespace),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(TransportError::from)?;
        Ok(Box::new(JetStreamConsumer {
            consumer,
            messages: None,
            prefix: format!("{}.", self.namespace),
        }))
    }

    fn describe(&self) -> String {
        format!("{} (namespace {})", self.url, self.namespace)
    }
}

struct JetStreamConsumer {
    consumer: consumer::Consumer<consumer::pull::Config>,
    messages: Option<consumer::pull::Stream>,
    /// `<namespace>.`, taken off the stored subject.
    prefix: String,
}

#[async_trait]
impl Consumer for JetStreamConsumer {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            if self.messages.is_none() {
                self.messages = Some(
                    self.consumer
                        .messages()
                        .await
                        .map_err(TransportError::from)?,
                );
            }
            let Some(messages) = self.messages.as_mut() else {
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    let attempt = message
                        .info()
                        .map_or(1, |info| info.delivered.max(1) as u64);
                    let id = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(ID_HEADER))
                        .map(|v| v.as_str().to_owned());
                    let Some(id) = id else {
                        // Not one of ours: nothing can deduplicate it, so it is dropped.
                        tracing::warn!(subject = %message.subject, "a message without an id; dropped");
                        let _ = message.ack().await;
                        continue;
                    };
                    let delivered = Message {
                        id,
                        subject: message
                            .subject
                            .strip_prefix(self.prefix.as_str())
                            .unwrap_or(&message.subject)
                            .to_owned(),
                        payload: message.payload.clone(),
                    };
                    return Ok(Delivery {
                        message: delivered,
                        attempt,
                        ack: Box::new(JetStreamAck(message)),
                    });
                }
                Some(Err(err)) => {
                    // Missed heartbeats while the broker restarts, and the like: start over.
                    self.messages = None;
                    return Err(TransportError::from(err));
                }
                None => {
                    self.messages = None;
                    return Err(TransportError("the consumer's stream ended".to_owned()));
                }
            }
        }
    }
}

struct JetStreamAck(jetstream::Message);

#[async_trait]
impl Acknowledge for JetStreamAck {
    async fn ack(&self) -> Result<(), TransportError> {
        self.0.ack().await.map_err(TransportError::from)
    }

    async fn nak(&self, delay: Duration) -> Result<(), TransportError> {
        self.0
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(TransportError::from)
    }
}
