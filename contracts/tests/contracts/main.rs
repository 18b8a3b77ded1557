//! The contracts crate's integration tests.

mod spec;
