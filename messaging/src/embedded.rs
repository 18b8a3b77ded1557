//! The embedded transport: in-process queues with the same contract as JetStream's (durable
//! consumers, explicit acknowledgement, redelivery after the acknowledgement wait), for a
//! stack that runs in one process with nothing installed. Messages live in memory: a process
//! that dies loses what was published and not yet consumed, which the outbox cannot replay
//! (it forgot them once published); the saga's recovery and the reservations' expiry settle
//! what such a crash leaves. Use JetStream when the sender and the receiver are separate
//! processes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::transport::{Acknowledge, Consumer, Delivery, Message, Transport, TransportError};

/// In-process queues, one per durable consumer.
#[derive(Debug)]
pub struct Embedded {
    ack_wait: Duration,
    state: Mutex<State>,
    /// Woken at every publication and every negative acknowledgement.
    notify: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    /// Per subject: messages published before any consumer of it existed.
    backlog: HashMap<String, VecDeque<Message>>,
    /// Per consumer name: its queue.
    queues: HashMap<String, Arc<Mutex<Queue>>>,
}

#[derive(Debug, Default)]
struct Queue {
    subject: String,
    /// Ready to deliver: (message, deliveries so far, not before).
    ready: VecDeque<(Message, u64, Instant)>,
    /// Delivered, not acknowledged: delivery tag → (message, attempt, due again at).
    unacked: HashMap<u64, (Message, u64, Instant)>,
    next_tag: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Embedded {
    /// A transport of its own (tests).
    pub fn new(ack_wait: Duration) -> Arc<Embedded> {
        Arc::new(Embedded {
            ack_wait,
            state: Mutex::default(),
            notify: Arc::new(Notify::new()),
        })
    }

    /// The process's embedded transport of `namespace`: every part of a process that connects
    /// to it shares it (the first caller's acknowledgement wait holds).
    pub fn shared(namespace: &str, ack_wait: Duration) -> Arc<dyn Transport> {
        static SHARED: OnceLock<Mutex<HashMap<String, Arc<Embedded>>>> = OnceLock::new();
        let mut shared = lock(SHARED.get_or_init(Mutex::default));
        shared
            .entry(namespace.to_owned())
            .or_insert_with(|| Embedded::new(ack_wait))
            .clone()
    }
}

#[async_trait]
impl Transport for Embedded {
    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        {
            let mut state = lock(&self.state);
            let now = Instant::now();
            for message in messages {
                let mut queued = false;
                for queue in state.queues.values() {
                    let mut queue = lock(queue);
                    if queue.subject == message.subject {
                        queue.ready.push_back((message.clone(), 0, now));
                        queued = true;
                    }
                }
                if !queued {
                    state
                        .backlog
                        .entry(message.subject.clone())
                        .or_default()
                        .push_back(message.clone());
                }
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn consumer(
        &self,
        name: &str,
        subject: &str,
    ) -> Result<Box<dyn Consumer>, TransportError> {
        let mut state = lock(&self.state);
        let backlog = state.backlog.remove(subject).unwrap_or_default();
        let queue = state
            .queues
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Queue {
                    subject: subject.to_owned(),
                    ..Queue::default()
                }))
            })
            .clone();
        {
            let mut q = lock(&queue);
            let now = Instant::now();
            // A consumer taking over a name gets what its predecessor left unacknowledged.
            for (_, _, due) in q.unacked.values_mut() {
                *due = now;
            }
            q.ready.extend(backlog.into_iter().map(|m| (m, 0, now)));
        }
        Ok(Box::new(EmbeddedConsumer {
            queue,
            notify: self.notify.clone(),
            ack_wait: self.ack_wait,
        }))
    }

    fn describe(&self) -> String {
        "embedded".to_owned()
    }
}

struct EmbeddedConsumer {
    queue: Arc<Mutex<Queue>>,
    notify: Arc<Notify>,
    ack_wait: Duration,
}

impl EmbeddedConsumer {
    /// The next message due, moved to the unacknowledged set; else how long until one may be.
    fn take(&self) -> Result<Delivery, Duration> {
        let mut queue = lock(&self.queue);
        let now = Instant::now();
        let expired: Vec<u64> = queue
            .unacked
            .iter()
            .filter(|(_, (_, _, due))| *due <= now)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in expired {
            if let Some((message, attempt, _)) = queue.unacked.remove(&tag) {
                queue.ready.push_back((message, attempt, now));
            }
        }
        let position = queue.ready.iter().position(|(_, _, at)| *at <= now);
        if let Some(position) = position {
            if let Some((message, attempts, _)) = queue.ready.remove(position) {
                let tag = queue.next_tag;
                queue.next_tag += 1;
                let attempt = attempts + 1;
                queue
                    .unacked
                    .insert(tag, (message.clone(), attempt, now + self.ack_wait));
                return Ok(Delivery {
                    message,
                    attempt,
                    ack: Box::new(EmbeddedAck {
                        queue: self.queue.clone(),
                        notify: self.notify.clone(),
                        tag,
                    }),
                });
            }
        }
        let soonest = queue
            .unacked
            .values()
            .map(|(_, _, due)| *due)
            .chain(queue.ready.iter().map(|(_, _, at)| *at))
            .min()
            .map_or(self.ack_wait, |due| due.saturating_duration_since(now));
        Err(soonest.max(Duration::from_millis(1)))
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.take() {
                Ok(delivery) => return Ok(delivery),
                Err(wait) => {
                    let _ = tokio::time::timeout(wait, notified).await;
                }
            }
        }
    }
}

struct EmbeddedAck {
    queue: Arc<Mutex<Queue>>,
    notify: Arc<Notify>,
    tag: u64,
}

#[async_trait]
impl Acknowledge for EmbeddedAck {
    async fn ack(&self) -> Result<(), TransportError> {
        lock(&self.queue).unacked.remove(&self.tag);
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), TransportError> {
        {
            let mut queue = lock(&self.queue);
            if let Some((message, attempt, _)) = queue.unacked.remove(&self.tag) {
                queue
                    .ready
                    .push_back((message, attempt, Instant::now() + delay));
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unacknowledged_messages_come_again_and_acknowledged_ones_do_not() {
        let transport = Embedded::new(Duration::from_millis(50));
        transport
            .publish(&[Message::new("s", "early")])
            .await
            .unwrap();
        let mut consumer = transport.consumer("c", "s").await.unwrap();
        transport
            .publish(&[Message::new("s", "late"), Message::new("other", "x")])
            .await
            .unwrap();
        let first = consumer.next().await.unwrap();
        assert_eq!(first.message.payload, "early");
        let second = consumer.next().await.unwrap();
        assert_eq!(
            (second.message.payload.as_ref(), second.attempt),
            (&b"late"[..], 1)
        );
        second.ack().await.unwrap();
        // `first` was never acknowledged: it comes back after the wait, as attempt 2.
        let again = consumer.next().await.unwrap();
        assert_eq!(
            (again.message.id.as_str(), again.attempt),
            (first.message.id.as_str(), 2)
        );
        again.retry_after(Duration::from_millis(5)).await.unwrap();
        let third = consumer.next().await.unwrap();
        assert_eq!(third.attempt, 3);
        third.ack().await.unwrap();
        drop(first);
        let nothing = tokio::time::timeout(Duration::from_millis(120), consumer.next()).await;
        assert!(nothing.is_err(), "an acknowledged message came back");
    }
}
