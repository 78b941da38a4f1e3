//! Tessera: a security token service for workloads.

pub mod attest;
pub mod clock;
pub mod domain;
pub mod jose;
pub mod policy;
pub mod revocation;
