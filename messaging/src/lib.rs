//! Messages between the monolith and the services carved out of it.
//!
//! - [`Transport`]: publishing a [`Message`] durably and consuming a subject with explicit
//!   acknowledgement, at least once. [`jetstream::JetStream`] is the production transport (NATS
//!   JetStream: messages survive a broker restart); [`embedded::Embedded`] is the in-process
//!   default, for a stack that runs in one process with nothing installed.
//! - [`outbox`]: a message is staged in the sender's own database transaction, with the state
//!   change it announces, and a relay publishes it afterwards; nothing is published that was not
//!   committed, and nothing committed is lost (at least once).
//! - [`inbox`]: the receiver records each message id in the transaction that applies it, so a
//!   message delivered twice is applied once.
//! - [`inventory`]: the inventory's event interface (the commands the orders saga sends, the
//!   replies it gets).

pub mod embedded;
pub mod inbox;
pub mod inventory;
pub mod jetstream;
pub mod outbox;
mod transport;

pub use transport::{connect, Consumer, Delivery, Message, Transport, TransportError};
