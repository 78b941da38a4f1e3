//! Compiles `proto/` with protox (pure Rust, no protoc) and tonic-prost-build.
//! - the SPIFFE Workload API: server side only. Tessera's client is the `spiffe` crate;
//!   the server is what the tests' fake SPIRE agent implements.
//! - Tessera's own `tessera.v1` API: server and client (the client serves tests,
//!   examples and users of the library).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let workload = protox::compile(["spiffe/workload/workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_fds(workload)?;
    let tessera = protox::compile(["tessera/v1/tessera.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(tessera)?;
    Ok(())
}
