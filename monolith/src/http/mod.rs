//! The HTTP surface shared by every module: problem+json extractors, metrics, and the
//! operational endpoints (`/livez`, `/readyz`, `/metrics`, `/openapi.json`), and the opt-in
//! provider-state hook for contract verification.

pub mod extract;
pub(crate) mod ops;
pub mod states;
