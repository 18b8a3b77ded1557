//! Contract tests for carve-outs.
//!
//! An extracted service may take over a monolith's routes only when it answers like the
//! monolith did. This crate records that behaviour as Pact V4 contracts (from a scripted list of
//! requests, learning which fields are noise by replaying them), and verifies a provider against
//! contracts with Pact's matching semantics. The comparison core is shared with the proxy's
//! shadow diffing.

pub mod compare;
pub mod generators;
pub mod pact;
pub mod record;
pub mod redact;
pub mod rules;
pub mod time;
pub mod verify;
