//! The proxy's integration tests: the real server on 127.0.0.1 port 0 in front of stub
//! upstreams that report who served each request and what they received.

// A panic is how a test reports an unexpected error.
#![allow(clippy::unwrap_used)]
// Helpers are `pub` for the test modules of this one binary.
#![allow(unreachable_pub)]

#[macro_use]
extern crate e2e;

mod canary;
mod capture;
mod control;
mod framing;
mod hostile;
mod hygiene;
mod ownership;
mod phases;
mod process;
mod resilience;
mod rollout;
mod shadow;
mod support;
