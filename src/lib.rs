//! Tessera: a security token service for workloads.
//!
//! Module map and dependency direction: see `docs/architecture.md`. In short,
//! `domain` and `clock` import nothing of ours; `attest`, `policy`, `mint`,
//! `revocation` and `audit` import only `domain`, `clock` and `jose`; `service`
//! composes them; `http` translates; `app` wires; `cli` drives.

pub mod attest;
pub mod clock;
pub mod domain;
pub mod jose;
pub mod revocation;
