//! Generated from `proto/tessera/v1/tessera.proto` by `build.rs`: the `tessera.v1`
//! messages, the `TokenService` server and its client.
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

include!(concat!(env!("OUT_DIR"), "/tessera.v1.rs"));
