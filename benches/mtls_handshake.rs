#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark may panic
//! Server-side CPU of an mTLS request on a new connection (full TLS 1.3 handshake with
//! an X.509-SVID client certificate, checked by our SPIFFE verifier) versus the same
//! request on a reused keep-alive connection.
//!
//! Runs the real release binary (`serve --config`) as its own process and reads that
//! process's CPU time from /proc, so the client's work is not counted:
//!
//! ```text
//! cargo bench --bench mtls_handshake            # N = 2000 per mode
//! MTLS_BENCH_N=5000 cargo bench --bench mtls_handshake
//! ```
//! Results go to docs/benchmarks.md by hand.

#[path = "../tests/common/mod.rs"]
mod common;

use common::mtls::{add_x509_authorities, ca, leaf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// utime + stime of a process, in clock ticks (USER_HZ = 100 on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("MTLS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let env = common::Env::new();
    let (example, other) = (ca("example.org"), ca("other.org"));
    add_x509_authorities(&env, &example, &other);
    let cert = leaf(&example, &[common::PAYMENTS], |_| {});
    let (p, a) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--config"])
        .arg(&env.config_path)
        .env("TESSERA_SERVER__LISTEN", format!("127.0.0.1:{p}"))
        .env("TESSERA_ADMIN__LISTEN", format!("127.0.0.1:{a}"))
        .env("TESSERA_AUDIT__FILE", env.path().join("audit.jsonl"))
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let url = format!("https://127.0.0.1:{p}/healthz");
    let ca_cert = reqwest::Certificate::from_pem(env.pki.ca_pem.as_bytes()).unwrap();
    let identity = reqwest::Identity::from_pem(cert.identity_pem.as_bytes()).unwrap();
    let client = |reuse: bool| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(ca_cert.clone())
            .identity(identity.clone())
            .http1_only()
            .timeout(Duration::from_secs(10));
        if !reuse {
            b = b.pool_max_idle_per_host(0);
        }
        b.build().unwrap()
    };
    let start = Instant::now();
    while client(true).get(&url).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "mTLS GET /healthz, {n} sequential requests per mode, server CPU from /proc/{pid}/stat"
    );
    for (mode, reuse) in [
        ("new connection per request", false),
        ("one keep-alive connection", true),
    ] {
        let c = client(reuse);
        c.get(&url).send().await.unwrap(); // warm up
        let before = cpu_ticks(pid);
        let t = Instant::now();
        for _ in 0..n {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        let wall = t.elapsed();
        let cpu_us = (cpu_ticks(pid) - before) as f64 * 10_000.0; // 1 tick = 10 ms
        println!(
            "{mode:>28}: server CPU {:>7.1} µs/request, wall {:>7.1} µs/request",
            cpu_us / n as f64,
            wall.as_micros() as f64 / n as f64
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
