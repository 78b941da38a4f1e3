#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark may panic
//! Micro-benchmarks of the per-request work, each next to the raw cryptography it is
//! bounded by, so the load numbers (benches/load.rs) can be read as a fraction of it:
//!
//! ```text
//! cargo bench --bench micro
//! ```
//!
//! - `crypto_bound`: ring ECDSA P-256 sign and verify of a 490-byte signing input (the
//!   size of one of our access tokens' header + claims);
//! - `subject_token_verify`: `JwtSvidVerifier::verify` of an ES256 JWT-SVID against its
//!   trust domain's bundle (parse, header rules, key by kid, signature, claims);
//! - `mint`: `Minter::mint` of an ES256 access token (claims, jti, JSON, sign);
//! - `introspect_check`: `Minter::check` of one of our tokens (the uncached introspection);
//! - `policy_decide`: `CompiledPolicy::decide` on a 50-rule policy, matching rule last;
//! - `store_is_revoked`: `RevocationStore::is_revoked` on the embedded store holding 5,000
//!   revocations, and on a private `redis-server` (one loopback round trip).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/redis_harness/mod.rs"]
mod redis_harness;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tessera::attest::{JwtSvidVerifier, StaticBundles, parse_spiffe_bundle};
use tessera::domain::{Audience, Principal, ScopeSet, SpiffeId, TrustDomain};
use tessera::jose::{SigningAlg, SigningKey};
use tessera::mint::keys::KeyRing;
use tessera::mint::{MintRequest, Minter};
use tessera::policy::{AccessRequest, CompiledPolicy};
use tessera::revocation::embedded::EmbeddedStore;
use tessera::revocation::redis::{RedisConfig, RedisStore};
use tessera::revocation::{NewRevocation, RevocationKind, RevocationStore, TokenRef};

use common::{ISSUER, PAYMENTS as WORKLOAD, T0 as NOW};

fn crypto_bound(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let msg = vec![b'x'; 490];
    let sig = key.sign(&rng, &msg).unwrap();
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        key.public_key().as_ref().to_vec(),
    );
    let mut g = c.benchmark_group("crypto_bound");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ring_es256_sign", |b| {
        b.iter(|| key.sign(&rng, black_box(&msg)).unwrap())
    });
    g.bench_function("ring_es256_verify", |b| {
        b.iter(|| public.verify(black_box(&msg), sig.as_ref()).unwrap())
    });
    g.finish();
}

/// A JWT-SVID verifier holding example.org's bundle, and an SVID it accepts.
fn svid_setup() -> (JwtSvidVerifier, String) {
    let authority = SigningKey::generate(SigningAlg::ES256).unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let doc = common::bundle_json(&authority, authority.kid());
    let bundle = parse_spiffe_bundle(&td, doc.as_bytes()).unwrap();
    let verifier = JwtSvidVerifier::new(
        Arc::new(StaticBundles::new([bundle])),
        vec![ISSUER.into()],
        30,
    );
    let svid = authority
        .sign_compact(
            "JWT",
            &serde_json::json!({"sub": WORKLOAD, "aud": [ISSUER], "iat": NOW, "exp": NOW + 300}),
        )
        .unwrap();
    (verifier, svid)
}

fn subject_token_verify(c: &mut Criterion) {
    let (verifier, svid) = svid_setup();
    let mut g = c.benchmark_group("subject_token_verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("jwt_svid_es256", |b| {
        b.iter(|| verifier.verify(black_box(&svid), NOW).unwrap())
    });
    g.finish();
}

fn minter(dir: &std::path::Path) -> Minter {
    let ring = KeyRing::open(dir, SigningAlg::ES256, 3600, NOW).unwrap();
    Minter::new(ISSUER.into(), Arc::new(ring))
}

fn mint_and_check(c: &mut Criterion) {
    let (verifier, svid) = svid_setup();
    let identity = verifier.verify(&svid, NOW).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let minter = minter(&dir.path().join("keys"));
    let audience = Audience::parse("https://ledger.example.org").unwrap();
    let scopes = ScopeSet::parse("ledger:read ledger:write").unwrap();
    let request = MintRequest {
        identity: &identity,
        audience: &audience,
        scopes: &scopes,
        ttl: 300,
        actor: None,
        now: NOW,
        subject: None,
    };
    let token = minter.mint(&request).unwrap().token;
    let mut g = c.benchmark_group("mint");
    g.throughput(Throughput::Elements(1));
    g.bench_function("access_token_es256", |b| {
        b.iter(|| minter.mint(black_box(&request)).unwrap())
    });
    g.finish();
    let mut g = c.benchmark_group("introspect_check");
    g.throughput(Throughput::Elements(1));
    g.bench_function("access_token_es256", |b| {
        b.iter(|| minter.check(black_box(&token), NOW, 30).unwrap())
    });
    g.finish();
}

fn policy_decide(c: &mut Criterion) {
    let mut toml = String::new();
    for i in 0..49 {
        toml.push_str(&format!(
            "[[rule]]\nid = \"team-{i}\"\nmatch.spiffe_id = \"spiffe://example.org/ns/team-{i}/sa/*\"\n\
             grant.audiences = [\"https://svc-{i}.example.org\"]\ngrant.scopes = [\"read\", \"write\"]\n\n"
        ));
    }
    toml.push_str(
        "[[rule]]\nid = \"payments-ledger\"\nmatch.spiffe_id = \"spiffe://example.org/ns/payments/sa/*\"\n\
         grant.audiences = [\"https://ledger.example.org\"]\ngrant.scopes = [\"ledger:read\", \"ledger:write\"]\n",
    );
    let policy = CompiledPolicy::from_toml(&toml).unwrap();
    let principal = Principal::Spiffe(SpiffeId::parse(WORKLOAD).unwrap());
    let audience = Audience::parse("https://ledger.example.org").unwrap();
    let scopes = ScopeSet::parse("ledger:read").unwrap();
    let request = AccessRequest {
        audience: &audience,
        scopes: &scopes,
        actor: None,
    };
    assert!(matches!(
        policy.decide(&principal, &request),
        tessera::policy::Decision::Grant(_)
    ));
    let mut g = c.benchmark_group("policy_decide");
    g.throughput(Throughput::Elements(1));
    g.bench_function("50_rules_match_last", |b| {
        b.iter(|| policy.decide(black_box(&principal), black_box(&request)))
    });
    g.finish();
}

/// 5,000 jti revocations, one subject and one kid revocation; the checked token is
/// revoked by none of them (the common case, and the one that reads every kind).
async fn fill(store: &dyn RevocationStore) {
    let jtis = (0..5_000).map(|i| (RevocationKind::Jti, format!("revoked-{i}")));
    let others = [
        (
            RevocationKind::Subject,
            "spiffe://example.org/ns/other/sa/x".to_owned(),
        ),
        (RevocationKind::Kid, "retired-kid".to_owned()),
    ];
    for (kind, value) in jtis.chain(others) {
        store
            .revoke(NewRevocation {
                kind,
                value,
                reason: "bench".into(),
                actor: "admin-token".into(),
                created_at: NOW,
                expires_at: NOW + 3600,
                block_until: None,
            })
            .await
            .unwrap();
    }
}

fn store_is_revoked(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = TokenRef {
        jti: "live-token",
        subject: WORKLOAD,
        kid: "k1",
        iat: NOW,
    };
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    rt.block_on(fill(&embedded));
    let mut g = c.benchmark_group("store_is_revoked");
    g.throughput(Throughput::Elements(1));
    g.bench_function("embedded", |b| {
        b.iter(|| assert!(!rt.block_on(embedded.is_revoked(&token, NOW)).unwrap()))
    });
    if redis_harness::available("micro-benchmark store_is_revoked/redis") {
        let server = redis_harness::RedisServer::start();
        let redis = rt
            .block_on(RedisStore::connect(RedisConfig::new(server.url())))
            .unwrap();
        rt.block_on(fill(&redis));
        g.bench_function("redis_round_trip", |b| {
            b.iter(|| assert!(!rt.block_on(redis.is_revoked(&token, NOW)).unwrap()))
        });
        drop(redis);
        drop(server); // killed by pid
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = crypto_bound, subject_token_verify, mint_and_check, policy_decide, store_is_revoked
}
criterion_main!(benches);
