//! Tessera: a security token service for workloads.
//!
//! Module map and dependency direction: see `docs/architecture.md`. In short,
//! `domain` and `clock` import nothing of ours; `attest`, `policy`, `mint`,
//! `revocation` and `audit` import only `domain`, `clock` and `jose`; `service`
//! composes them; `http` translates; `app` wires; `cli` drives.

pub mod app;
pub mod attest;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod federation;
pub mod grpc;
pub mod http;
pub mod jose;
pub mod metrics;
pub mod mint;
pub mod outbound;
pub mod policy;
pub mod revocation;
pub mod service;
pub mod workload;
