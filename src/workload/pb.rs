//! Generated from `proto/spiffe/workload/workload.proto` (the SPIFFE Workload API) by
//! `build.rs`: messages and the `SpiffeWorkloadApi` server. The file has no proto
//! `package`, so prost names the output `_.rs`.
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));
