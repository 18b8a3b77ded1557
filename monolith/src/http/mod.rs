//! The HTTP surface shared by every module: problem+json extractors, metrics, and the
//! operational endpoints (`/livez`, `/readyz`, `/metrics`, `/openapi.json`).

pub mod extract;
pub mod metrics;
pub(crate) mod ops;
