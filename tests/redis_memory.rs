#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! Redis memory per 1,000,000 live inventory entries and per 100,000 revocations, written
//! through `RedisStore` (so the key layout is the real one) into a private redis-server.
//! Run by hand:
//!
//! `cargo test --release --test redis_memory -- --ignored --nocapture`

mod redis_harness;

use redis_harness::{RedisServer, available};
use std::time::{Duration, Instant};
use tessera::revocation::conformance::T;
use tessera::revocation::redis::{RedisConfig, RedisStore};
use tessera::revocation::{
    IssuedToken, NewRevocation, RevocationKind, RevocationStore, TokenInventory,
};

const TOKENS: usize = 1_000_000;
const REVOCATIONS: usize = 100_000;
/// In-flight requests at once; the multiplexed connection pipelines them.
const CONCURRENCY: usize = 2_000;

/// 22 characters, like a 128-bit base64url jti.
fn jti(i: usize) -> String {
    format!("jti{i:019}")
}

fn token(i: usize) -> IssuedToken {
    IssuedToken {
        jti: jti(i),
        sub: format!("spiffe://example.org/ns/payments/sa/worker-{}", i % 1000),
        aud: "https://ledger.example.org".to_owned(),
        scope: Some("ledger:read ledger:write".to_owned()),
        kid: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".to_owned(),
        iat: T,
        exp: T + 900,
    }
}

fn revocation(kind: RevocationKind, value: String) -> NewRevocation {
    NewRevocation {
        kind,
        value,
        reason: "credential leaked in CI logs".to_owned(),
        actor: "spiffe://example.org/ops/oncall".to_owned(),
        created_at: T,
        expires_at: T + 960,
        block_until: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow measurement; run by hand with --release --ignored --nocapture"]
async fn redis_memory_per_million_tokens_and_per_100k_revocations() {
    if !available("redis_memory") {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig {
        timeout: Duration::from_secs(30),
        ..RedisConfig::new(server.url())
    })
    .await
    .unwrap();
    store.ping().await.unwrap();
    let base = server.used_memory();

    let start = Instant::now();
    for chunk in (0..TOKENS).collect::<Vec<_>>().chunks(CONCURRENCY) {
        let futs = chunk.iter().map(|&i| {
            let store = store.clone();
            async move { store.record_issued(&token(i)).await }
        });
        for r in futures_util::future::join_all(futs).await {
            r.unwrap();
        }
    }
    let after_tokens = server.used_memory();
    let tok = after_tokens - base;
    println!(
        "{TOKENS} tok: entries: used_memory +{} bytes = {:.1} MiB ({:.0} B/token), written in {:?}",
        tok,
        tok as f64 / 1048576.0,
        tok as f64 / TOKENS as f64,
        start.elapsed()
    );

    // Each kind on a fresh server: rev:log is capped at ~100k records, so a second
    // batch on the same server would trim the first one's records.
    let info = redis_harness::cli(server.port, &["INFO", "memory"]);
    for line in info.lines().filter(|l| {
        l.starts_with("used_memory_human")
            || l.starts_with("used_memory_rss_human")
            || l.starts_with("mem_fragmentation_ratio")
    }) {
        println!("after the tokens: {}", line.trim());
    }
    drop(store);
    drop(server);
    for (kind, name) in [
        (RevocationKind::Jti, "jti"),
        (RevocationKind::Subject, "subject"),
    ] {
        let server = RedisServer::start();
        let store = RedisStore::connect(RedisConfig {
            timeout: Duration::from_secs(30),
            ..RedisConfig::new(server.url())
        })
        .await
        .unwrap();
        store.ping().await.unwrap();
        let before = server.used_memory();
        let start = Instant::now();
        for chunk in (0..REVOCATIONS).collect::<Vec<_>>().chunks(CONCURRENCY) {
            let futs = chunk.iter().map(|&i| {
                let store = store.clone();
                let value = match kind {
                    RevocationKind::Subject => {
                        format!("spiffe://example.org/ns/team-{}/sa/revoked-{i}", i % 100)
                    }
                    _ => format!("rev{i:019}"),
                };
                async move { store.revoke(revocation(kind, value)).await }
            });
            for r in futures_util::future::join_all(futs).await {
                r.unwrap();
            }
        }
        let used = server.used_memory() - before;
        println!(
            "{REVOCATIONS} {name} revocations (key + rev:log record): used_memory +{} bytes = {:.1} MiB ({:.0} B/revocation), written in {:?}",
            used,
            used as f64 / 1048576.0,
            used as f64 / REVOCATIONS as f64,
            start.elapsed()
        );
    }
}
