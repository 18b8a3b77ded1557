//! How the saga reaches the inventory: in process through its facade while the monolith owns
//! the inventory's writes, through messages once the inventory carve-out moved them to its
//! service. The same commands and replies either way ([`messaging::inventory`]); only the
//! transport differs.
//!
//! Who owns the writes is what the data sync's write guard says in the monolith's database:
//! when the cut-over flipped the inventory's tables to `owned-elsewhere`, commands go to the
//! outbox, staged in the transaction that moves the order's saga, and a relay publishes them.
//! The guard's state is read at most every 250 ms; a command sent the wrong way while it
//! changes comes back and goes the other way (in process: the guard refuses the write, and the
//! command is staged instead; by message: the service answers `not_owner`, and the saga applies
//! it here). Under a fence (a move in progress), an in-process command waits for it to end.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use messaging::inventory::{Command, Reply};
use messaging::outbox::Outbox;
use messaging::Transport;

use super::store::Tx;
use crate::error::{Error, Guard, Result};
use crate::inventory::{Commit, InventoryApi, Reservation, StockLine};

/// How long a read of the guard holds.
const GUARD_TTL: Duration = Duration::from_millis(250);
/// The longest an in-process command waits out a fence.
const FENCE_WAIT: Duration = Duration::from_secs(30);

/// Which way a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the in-process facade.
    InProcess,
    /// Through the outbox and the transport.
    Messages,
}

/// The messages side of the link: the outbox and the transport its relay publishes to.
#[derive(Clone)]
pub struct Messages {
    /// The transport (JetStream, or the embedded one).
    pub transport: Arc<dyn Transport>,
    /// The orders module's outbox.
    pub outbox: Outbox,
}

/// The saga's link to the inventory.
#[derive(Clone)]
pub struct InventoryLink {
    inventory: Arc<dyn InventoryApi>,
    messages: Option<Messages>,
    cached: Arc<Mutex<Option<(Instant, Route)>>>,
}

impl InventoryLink {
    /// In process only (no transport configured: the inventory has not been carved out).
    pub fn in_process(inventory: Arc<dyn InventoryApi>) -> Self {
        InventoryLink {
            inventory,
            messages: None,
            cached: Arc::default(),
        }
    }

    /// In process while the monolith owns the inventory's writes, by `messages` once not.
    pub fn with_messages(inventory: Arc<dyn InventoryApi>, messages: Messages) -> Self {
        InventoryLink {
            messages: Some(messages),
            ..Self::in_process(inventory)
        }
    }

    /// The messages side, if configured.
    pub fn messages(&self) -> Option<&Messages> {
        self.messages.as_ref()
    }

    /// Which way commands go now.
    pub async fn route(&self) -> Result<Route> {
        if self.messages.is_none() {
            return Ok(Route::InProcess);
        }
        if let Some((at, route)) = *self.cached.lock().unwrap_or_else(PoisonError::into_inner) {
            if at.elapsed() < GUARD_TTL {
                return Ok(route);
            }
        }
        let guard = self.inventory.write_guard().await?;
        let route = match guard {
            Some(Guard::OwnedElsewhere) => Route::Messages,
            Some(Guard::Fenced) | None => Route::InProcess,
        };
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), route));
        Ok(route)
    }

    fn forget_route(&self) {
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Stages `command` in `tx` when it goes by message; returns the command back when it is
    /// to be applied in process once `tx` committed ([`InventoryLink::apply`]).
    pub async fn stage(
        &self,
        tx: &mut Tx,
        route: Route,
        command: Command,
    ) -> Result<Option<Command>> {
        match (route, &self.messages) {
            (Route::Messages, Some(messages)) => {
                messages.outbox.stage(tx, &command.message()).await?;
                Ok(None)
            }
            _ => Ok(Some(command)),
        }
    }

    /// After the staging transaction committed: wakes the relay.
    pub fn staged(&self) {
        if let Some(messages) = &self.messages {
            messages.outbox.wake();
        }
    }

    /// Applies `command` in process and returns the inventory's reply. Under a fence it waits;
    /// when the service owns the writes, `Ok(None)`: the caller stages the command instead.
    pub async fn apply(&self, command: &Command) -> Result<Option<Reply>> {
        let started = Instant::now();
        loop {
            match self.apply_once(command).await {
                Err(Error::Elsewhere(Guard::Fenced)) if started.elapsed() < FENCE_WAIT => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(Error::Elsewhere(Guard::OwnedElsewhere)) if self.messages.is_some() => {
                    self.forget_route();
                    return Ok(None);
                }
                other => return other.map(Some),
            }
        }
    }

    async fn apply_once(&self, command: &Command) -> Result<Reply> {
        Ok(match command {
            Command::Reserve {
                order_id,
                lines,
                expires_at,
            } => {
                let lines: Vec<StockLine> = lines
                    .iter()
                    .map(|l| StockLine {
                        product_id: l.product_id,
                        quantity: l.quantity,
                    })
                    .collect();
                match self
                    .inventory
                    .reserve(*order_id, &lines, Some(expires_at))
                    .await?
                {
                    Reservation::Reserved => Reply::Reserved {
                        order_id: *order_id,
                    },
                    Reservation::Insufficient {
                        product_id,
                        requested,
                        available,
                    } => Reply::Insufficient {
                        order_id: *order_id,
                        product_id,
                        requested,
                        available,
                    },
                }
            }
            Command::Commit { order_id } => match self.inventory.commit(*order_id).await? {
                Commit::Committed => Reply::Committed {
                    order_id: *order_id,
                },
                Commit::Expired => Reply::Expired {
                    order_id: *order_id,
                },
            },
            Command::Release { order_id } => {
                self.inventory.release(*order_id).await?;
                Reply::Released {
                    order_id: *order_id,
                }
            }
        })
    }
}
