//! The contracts crate's integration tests: the Pact specification's cases, recording from and
//! verifying real monoliths on port 0, defective providers, and Pact's own verifier.

// A panic is how a test reports an unexpected error.
#![allow(clippy::unwrap_used)]
// Helpers are `pub` for the test modules of this one binary.
#![allow(unreachable_pub)]

mod official;
mod spec;
mod support;
mod verify;
