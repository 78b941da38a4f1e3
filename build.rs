//! Compiles `proto/` with protox (pure Rust, no protoc) and tonic-prost-build.
//! Only the server side is generated: Tessera's client is the `spiffe` crate; the server
//! is what the tests' fake SPIRE agent implements.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["spiffe/workload/workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_fds(fds)?;
    Ok(())
}
