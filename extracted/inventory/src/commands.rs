//! The saga's side of the service: the commands of the orders saga, consumed from the transport,
//! each applied once (the inbox) in one transaction with its reply staged in the outbox; and the
//! expiry of reservations that no commit claimed in time.
//!
//! Write ownership: while the carve-out's writes belong to the monolith, the data sync's write
//! guard refuses this side's writes. A command that meets the guard is not applied: under a
//! fence (a move in progress) it is delivered again shortly, so it waits out the move; when the
//! monolith owns the writes it is answered [`Reply::NotOwner`], and the saga applies it there.

use std::sync::Arc;
use std::time::Duration;

use messaging::inbox::Inbox;
use messaging::inventory::{Command, Reply, COMMANDS};
use messaging::outbox::Outbox;
use messaging::{Delivery, Transport};
use sqlkit::Db;
use strangler_sync::guard::{self, Guard};

/// The service's inbox.
pub const INBOX: Inbox = Inbox::new("inbox");
/// The durable consumer name of the service's commands.
pub const CONSUMER: &str = "inventory-service";

/// How a command ended.
#[derive(Debug)]
enum Applied {
    /// Applied now, or before (a duplicate): acknowledge it.
    Done,
    /// Fenced by a move: deliver it again later.
    Wait,
}

/// Most commands applied at once on PostgreSQL; on SQLite one (it has a single writer, and
/// writers that wait for it sleep in its busy handler).
const CONCURRENCY: usize = 32;
/// Orders locked while a command of theirs is applied (striped by order id): two commands of
/// one order never interleave.
const STRIPES: usize = 64;

/// Applies the saga's commands.
#[derive(Clone)]
pub struct Commands {
    db: Db,
    outbox: Outbox,
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
}

impl Commands {
    /// Commands applied to `db`, replies staged in `outbox`.
    pub fn new(db: Db, outbox: Outbox) -> Self {
        Commands {
            db,
            outbox,
            locks: Arc::new((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect()),
        }
    }

    /// Consumes commands from `transport` until `stop` completes, applying up to
    /// [`CONCURRENCY`] at once on PostgreSQL (one at a time per order).
    pub async fn run(
        self,
        transport: Arc<dyn Transport>,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(stop);
        let mut consumer = loop {
            match transport.consumer(CONSUMER, COMMANDS).await {
                Ok(consumer) => break consumer,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot subscribe to the saga's commands; trying again");
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        let concurrency = match self.db.backend() {
            sqlkit::Backend::Sqlite => 1,
            sqlkit::Backend::Postgres => CONCURRENCY,
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        loop {
            let delivery = tokio::select! {
                () = &mut stop => return,
                next = consumer.next() => next,
            };
            match delivery {
                Ok(delivery) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let commands = self.clone();
                    tokio::spawn(async move {
                        commands.handle(delivery).await;
                        drop(permit);
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the transport failed; consuming again");
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }

    async fn handle(&self, delivery: Delivery) {
        let command = match delivery.message.json::<Command>() {
            Ok(command) => command,
            Err(err) => {
                tracing::error!(id = %delivery.message.id, error = %err, "a command that does not parse; dropped");
                let _ = delivery.ack().await;
                return;
            }
        };
        let stripe = usize::try_from(command.order_id().rem_euclid(STRIPES as i64)).unwrap_or(0);
        let outcome = {
            let _locked = self.locks[stripe].lock().await;
            self.apply(&delivery.message.id, &command).await
        };
        let acked = match outcome {
            Ok(Applied::Done) => {
                self.outbox.wake();
                delivery.ack().await
            }
            Ok(Applied::Wait) => delivery.retry_after(Duration::from_millis(50)).await,
            Err(err) => {
                tracing::warn!(order_id = command.order_id(), error = %err, "a command failed; it will come again");
                delivery.retry_after(Duration::from_millis(200)).await
            }
        };
        if let Err(err) = acked {
            tracing::warn!(error = %err, "cannot acknowledge a command; it will come again");
        }
    }

    /// Applies one command (once per message id) with its reply, in one transaction.
    async fn apply(&self, message_id: &str, command: &Command) -> anyhow::Result<Applied> {
        let mut tx = self.db.begin_write().await?;
        if !INBOX.first_delivery(&mut tx, message_id).await? {
            return Ok(Applied::Done);
        }
        // Asked before anything is written: a commit or release that finds no row here fires
        // no guard trigger, and would be answered as if it had been applied.
        match guard::check(&mut tx, self.db.backend(), "reservations").await? {
            None => {}
            Some(Guard::Fenced) => return Ok(Applied::Wait),
            Some(Guard::OwnedElsewhere) => {
                let reply = Reply::NotOwner {
                    command: command.clone(),
                };
                self.outbox.stage(&mut tx, &reply.message()).await?;
                tx.commit().await?;
                return Ok(Applied::Done);
            }
        }
        let result = match command {
            Command::Reserve {
                order_id,
                lines,
                expires_at,
            } => crate::store::reserve(&mut tx, *order_id, lines, expires_at).await,
            Command::Commit { order_id } => crate::store::commit(&mut tx, *order_id).await,
            Command::Release { order_id } => {
                crate::store::release(&mut tx, *order_id, "release").await
            }
        };
        let reply = match result {
            Ok(reply @ Reply::Insufficient { .. }) => {
                // Lines taken before the short one go back: only the inbox and the reply stay.
                tx.rollback().await?;
                tx = self.db.begin_write().await?;
                if !INBOX.first_delivery(&mut tx, message_id).await? {
                    return Ok(Applied::Done);
                }
                reply
            }
            Ok(reply) => reply,
            Err(err) => match guard::refusal(&err) {
                Some(Guard::Fenced) => return Ok(Applied::Wait),
                Some(Guard::OwnedElsewhere) => {
                    tx.rollback().await?;
                    tx = self.db.begin_write().await?;
                    if !INBOX.first_delivery(&mut tx, message_id).await? {
                        return Ok(Applied::Done);
                    }
                    Reply::NotOwner {
                        command: command.clone(),
                    }
                }
                None => return Err(err.into()),
            },
        };
        self.outbox.stage(&mut tx, &reply.message()).await?;
        tx.commit().await?;
        tracing::debug!(?command, ?reply, "applied a saga command");
        Ok(Applied::Done)
    }

    /// Releases the reservations whose expiry passed, every `every`, until `stop` completes.
    pub async fn expire_forever(
        self,
        every: Duration,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(stop);
        loop {
            match self.expire_due().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(orders = n, "released expired reservations"),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot expire reservations; trying again")
                }
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Releases every reservation expired by now; returns how many orders lost theirs.
    pub async fn expire_due(&self) -> anyhow::Result<usize> {
        let orders = crate::store::expired(&self.db, &sqlkit::now(), 500).await?;
        let mut expired = 0;
        for order_id in orders {
            let mut tx = self.db.begin_write().await?;
            match crate::store::release(&mut tx, order_id, "expire").await {
                Ok(_) => {
                    tx.commit().await?;
                    expired += 1;
                }
                // Not this side's to release: the owner's expiry does it.
                Err(err) if guard::refusal(&err).is_some() => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(expired)
    }
}
