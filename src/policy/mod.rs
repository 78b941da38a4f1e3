//! Authorization policy: which verified identity may get a token for which audience,
//! with which scopes, for how long, and who may act for it (contract §4 "Policy file").
//!
//! Imports only `crate::domain` (and may use `crate::clock`); never another module of
//! ours — `service` composes policy with attestation and minting.

mod claims;
mod error;
mod glob;
mod spiffe_pattern;

pub use error::PolicyError;
pub use spiffe_pattern::SpiffePattern;
