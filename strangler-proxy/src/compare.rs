//! Comparing two HTTP responses: status, chosen headers, and bodies (structurally when both are
//! JSON, byte for byte otherwise), with ignore rules for fields known to differ.
//!
//! The comparison core lives in the `contracts` crate, where contract verification uses the
//! same walk under Pact's matching rules; the shadow diffing uses its [`Comparator`].

pub use contracts::compare::{Comparator, Difference, Observed};
