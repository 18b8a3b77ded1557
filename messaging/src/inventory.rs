//! The inventory's event interface: the commands the orders saga sends to whichever side owns
//! the inventory's writes, and the replies it gets back. Each command names its order; every
//! command is idempotent per order (reserving twice holds the stock once, releasing or
//! committing twice changes nothing more), so a redelivered command is harmless even before
//! the inbox drops it.

use serde::{Deserialize, Serialize};

use crate::Message;

/// Where the commands go.
pub const COMMANDS: &str = "inventory.commands";
/// Where the replies go.
pub const REPLIES: &str = "inventory.replies";

/// Units of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product.
    pub product_id: i64,
    /// How many units (positive).
    pub quantity: i64,
}

/// What the saga asks of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Hold every line for the order, all or nothing, until `expires_at` (RFC 3339, UTC).
    Reserve {
        /// The order.
        order_id: i64,
        /// What to hold, one line per product.
        lines: Vec<Line>,
        /// When an uncommitted reservation goes back to stock.
        expires_at: String,
    },
    /// Make the order's held reservation final.
    Commit {
        /// The order.
        order_id: i64,
    },
    /// Give the order's held units back (compensation); also forbids a later reserve of it.
    Release {
        /// The order.
        order_id: i64,
    },
}

impl Command {
    /// The order it is about.
    pub fn order_id(&self) -> i64 {
        match self {
            Command::Reserve { order_id, .. }
            | Command::Commit { order_id }
            | Command::Release { order_id } => *order_id,
        }
    }

    /// As a message to [`COMMANDS`].
    pub fn message(&self) -> Message {
        Message::new(COMMANDS, to_json(self))
    }
}

/// What the inventory answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Every line is held.
    Reserved {
        /// The order.
        order_id: i64,
    },
    /// Nothing is held: this line cannot be met (or the order was released already).
    Insufficient {
        /// The order.
        order_id: i64,
        /// The product short of stock.
        product_id: i64,
        /// Units asked for.
        requested: i64,
        /// Units available.
        available: i64,
    },
    /// The reservation is final.
    Committed {
        /// The order.
        order_id: i64,
    },
    /// The commit came too late: the reservation expired and its units went back to stock.
    Expired {
        /// The order.
        order_id: i64,
    },
    /// The held units are back in stock (or there were none).
    Released {
        /// The order.
        order_id: i64,
    },
    /// This side does not own the inventory's writes (the carve-out moved them): the command
    /// was not applied; send it to the owner.
    NotOwner {
        /// The command, unapplied.
        command: Command,
    },
    /// The command cannot be applied as sent (a bad line).
    Refused {
        /// The order.
        order_id: i64,
        /// Why.
        reason: String,
    },
}

impl Reply {
    /// The order it is about.
    pub fn order_id(&self) -> i64 {
        match self {
            Reply::Reserved { order_id }
            | Reply::Insufficient { order_id, .. }
            | Reply::Committed { order_id }
            | Reply::Expired { order_id }
            | Reply::Released { order_id }
            | Reply::Refused { order_id, .. } => *order_id,
            Reply::NotOwner { command } => command.order_id(),
        }
    }

    /// As a message to [`REPLIES`].
    pub fn message(&self) -> Message {
        Message::new(REPLIES, to_json(self))
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Plain enums of integers and strings: serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies_read_back_as_written() {
        let reserve = Command::Reserve {
            order_id: 7,
            lines: vec![Line {
                product_id: 3,
                quantity: 2,
            }],
            expires_at: "2026-12-03T10:00:00.000Z".to_owned(),
        };
        let message = reserve.message();
        assert_eq!(message.subject, COMMANDS);
        assert_eq!(message.json::<Command>().unwrap(), reserve);
        let text = std::str::from_utf8(&message.payload).unwrap();
        assert!(
            text.starts_with(r#"{"type":"reserve","order_id":7"#),
            "{text}"
        );
        let reply = Reply::NotOwner { command: reserve };
        assert_eq!(reply.message().json::<Reply>().unwrap(), reply);
        assert_eq!(reply.order_id(), 7);
    }
}
