#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! Rate limits over the real HTTPS server (contract §2, §4 `[limits]`, §6 `rl:`):
//! `per_identity` (burst 2x, 429 `slow_down` + `Retry-After`, per subject, refilled by
//! the injected clock, shared by replicas on one Redis, failing open to the local limit
//! when Redis is down) and `failed_auth_per_address` (failed client authentications per
//! remote address on /introspect, /revoke and the admin API).

mod common;
mod redis_harness;

use common::{Auth, Env, LEDGER, PAYMENTS, PAYMENTS_WORKER, STATIC_CLIENT, Server};
use redis_harness::{RedisServer, available, cli};
use reqwest::Method;
use serde_json::{Value, json};
use std::net::IpAddr;
use tessera::clock::{Clock as _, SystemClock};
use tessera::config::Rate;

/// `Retry-After` of a 429 `slow_down`, after checking the status, the code and that
/// the body echoes no credential.
fn slow_down_retry_after(r: &common::Resp, secret: &str) -> u64 {
    r.assert_error(429, "slow_down");
    assert!(!r.text.contains(secret), "the body echoes a credential");
    r.header("retry-after")
        .expect("429 carries Retry-After")
        .parse()
        .expect("Retry-After is whole seconds")
}

async fn metrics(srv: &Server) -> String {
    let r = srv
        .client
        .get(format!("{}/metrics", srv.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of one sample line (`name{labels} value`) in a metrics exposition.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn assert_rate_limited_audit(srv: &Server, r: &common::Resp, event: &str, limit: &str) {
    let line = srv.audit_of(&r.rid);
    assert_eq!(line["event"], event, "{line}");
    assert_eq!(line["outcome"], "failure", "{line}");
    assert_eq!(line["reason"], format!("rate_limited: {limit}"), "{line}");
}

#[tokio::test]
async fn per_identity_burst_is_twice_the_rate_then_slow_down_and_the_clock_refills() {
    let mut env = Env::new();
    env.settings.per_identity_limit = Some(Rate::per_second(3));
    let srv = env.start().await;
    let svid = srv.svid(PAYMENTS, 600);
    for i in 0..6 {
        let r = srv.exchange(&svid, LEDGER, None).await;
        assert_eq!(
            r.status, 200,
            "request {i} of the burst of 2 x 3: {}",
            r.text
        );
    }
    let refused = srv.exchange(&svid, LEDGER, None).await;
    assert_eq!(slow_down_retry_after(&refused, &svid), 1);
    assert_rate_limited_audit(&srv, &refused, "token.denied", "per_identity");

    // Another identity at the same moment is not affected.
    let other = srv.svid(PAYMENTS_WORKER, 600);
    for _ in 0..6 {
        assert_eq!(srv.exchange(&other, LEDGER, None).await.status, 200);
    }

    // One second of the injected clock refills 3 requests, not more.
    srv.clock().advance(1);
    for _ in 0..3 {
        assert_eq!(srv.exchange(&svid, LEDGER, None).await.status, 200);
    }
    let again = srv.exchange(&svid, LEDGER, None).await;
    assert_eq!(slow_down_retry_after(&again, &svid), 1);

    let m = metrics(&srv).await;
    assert_eq!(
        sample(&m, r#"tessera_rate_limited_total{limit="per_identity"}"#),
        2
    );
    assert_eq!(
        sample(&m, r#"tessera_rate_limited_total{limit="failed_auth"}"#),
        0
    );
    srv.assert_every_request_audited_once();
    srv.shutdown().await;
}

/// A Redis-backed environment on real time (Redis expires keys on its own clock).
fn redis_env(url: &str, rate: &str) -> Env {
    let mut env = Env::new().on_redis(url, "rl", 0);
    env.settings.per_identity_limit = Some(Rate::parse(rate).unwrap());
    env
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_the_per_identity_limit() {
    if !available("two_replicas_on_one_redis_share_the_per_identity_limit") {
        return;
    }
    let redis = RedisServer::start();
    // 2/m: burst 4, then one request per 30 s. Minutes, so Redis's own expiry (real
    // time) cannot drop the state while the test runs.
    let a_env = redis_env(&redis.url(), "2/m");
    let prefix = a_env.settings.redis.as_ref().unwrap().key_prefix.clone();
    let b_env = a_env.replica();
    let (a, b) = (a_env.start().await, b_env.start().await);
    let svid = a.svid(PAYMENTS, 600);
    for i in 0..4 {
        let r = a.exchange(&svid, LEDGER, None).await;
        assert_eq!(r.status, 200, "A, request {i}: {}", r.text);
    }
    // B has served nothing yet, so only the shared state can refuse.
    let refused = b.exchange(&svid, LEDGER, None).await;
    assert_eq!(slow_down_retry_after(&refused, &svid), 30);
    assert_rate_limited_audit(&b, &refused, "token.denied", "per_identity");
    assert_eq!(
        a.exchange(&svid, LEDGER, None).await.status,
        429,
        "A refuses as well"
    );

    // The state is one key under the prefix, named by the subject's SHA-256, expiring.
    let key = format!("{prefix}rl:{}", common::sha256_hex(PAYMENTS));
    let pttl: i64 = cli(redis.port, &["PTTL", &key]).trim().parse().unwrap();
    assert!(pttl > 0, "{key} has no expiry: {pttl}");
    let keys = cli(
        redis.port,
        &["--scan", "--pattern", &format!("{prefix}rl:*")],
    );
    assert!(
        !keys.contains("spiffe"),
        "the subject appears in a key: {keys}"
    );

    // Another identity is unaffected on both replicas.
    let other = a.svid(PAYMENTS_WORKER, 600);
    assert_eq!(b.exchange(&other, LEDGER, None).await.status, 200);
    assert_eq!(a.exchange(&other, LEDGER, None).await.status, 200);

    // 30 s of the shared clock grant one more request, to whichever replica asks.
    a.clock().advance(30);
    assert_eq!(b.exchange(&svid, LEDGER, None).await.status, 200);
    let r = a.exchange(&svid, LEDGER, None).await;
    slow_down_retry_after(&r, &svid);

    let m = metrics(&b).await;
    assert_eq!(
        sample(&m, r#"tessera_rate_limited_total{limit="per_identity"}"#),
        1
    );
    assert_eq!(sample(&m, "tessera_rate_limit_fallbacks_total"), 0);
    a.assert_every_request_audited_once();
    b.assert_every_request_audited_once();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_down_fails_open_to_the_replica_limit() {
    if !available("redis_down_fails_open_to_the_replica_limit") {
        return;
    }
    let mut redis = RedisServer::start();
    let srv = redis_env(&redis.url(), "2/m").start().await;
    let svid = srv.svid(PAYMENTS, 600);
    assert_eq!(srv.exchange(&svid, LEDGER, None).await.status, 200);
    redis.stop();
    // Issuance continues without the store (contract §6); this replica's own limit
    // (burst 4, counted from here) still holds.
    for i in 0..4 {
        let r = srv.exchange(&svid, LEDGER, None).await;
        assert_eq!(r.status, 200, "request {i} with Redis down: {}", r.text);
    }
    let refused = srv.exchange(&svid, LEDGER, None).await;
    slow_down_retry_after(&refused, &svid);
    assert_rate_limited_audit(&srv, &refused, "token.denied", "per_identity");
    let m = metrics(&srv).await;
    assert_eq!(sample(&m, "tessera_rate_limit_fallbacks_total"), 5);
    srv.assert_every_request_audited_once();
    srv.shutdown().await;
}

/// A client whose connections come from `ip` (a loopback alias), trusting the test CA.
fn client_from(srv: &Server, ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(srv.env.pki.ca_pem.as_bytes()).unwrap(),
        )
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn failed_auth_per_address_refuses_the_eleventh_attempt_even_with_the_right_secret() {
    let srv = Env::new().start().await; // default: failed_auth_per_address = "10/m"
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;
    let secret = srv.env.static_secret.clone();
    let wrong = Auth::Basic(STATIC_CLIENT, "not-the-secret");
    let right = Auth::Basic(STATIC_CLIENT, &secret);

    // No credential at all is not a failed authentication.
    for _ in 0..12 {
        srv.introspect_as(&token, Auth::None)
            .await
            .assert_error(401, "invalid_client");
    }
    for _ in 0..9 {
        srv.introspect_as(&token, wrong)
            .await
            .assert_error(401, "invalid_client");
    }
    // Successful authentications are not counted.
    for _ in 0..5 {
        let r = srv.introspect_as(&token, right).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["active"], json!(true));
    }
    srv.introspect_as(&token, wrong)
        .await
        .assert_error(401, "invalid_client");

    // The 11th attempt is refused before authentication, even with the right secret.
    let refused = srv.introspect_as(&token, right).await;
    assert_eq!(slow_down_retry_after(&refused, &secret), 6);
    assert_rate_limited_audit(&srv, &refused, "token.introspected", "failed_auth");
    assert!(
        srv.audit_of(&refused.rid).get("subject").is_none(),
        "no caller was authenticated"
    );

    // The budget is per address and covers /revoke and the admin API too.
    let r = srv.revoke(&token, Auth::Bearer(&srv.env.admin_token)).await;
    slow_down_retry_after(&r, &srv.env.admin_token);
    assert_rate_limited_audit(&srv, &r, "token.revoked", "failed_auth");
    let r = srv.admin(Method::GET, "/admin/v1/revocations", None).await;
    slow_down_retry_after(&r, &srv.env.admin_token);
    assert_rate_limited_audit(&srv, &r, "admin.revocations.list", "failed_auth");
    // /token is not behind this limit.
    assert_eq!(
        srv.exchange(&srv.svid(PAYMENTS, 600), LEDGER, None)
            .await
            .status,
        200
    );

    // Another address is unaffected.
    let other = client_from(&srv, "127.0.0.2");
    let r = other
        .post(format!("{}/introspect", srv.public))
        .basic_auth(STATIC_CLIENT, Some(&secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["active"], json!(true));

    // The clock restores the allowance: a minute later the right secret works again.
    srv.clock().advance(60);
    let r = srv.introspect_as(&token, right).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let m = metrics(&srv).await;
    assert_eq!(
        sample(&m, r#"tessera_rate_limited_total{limit="failed_auth"}"#),
        3
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn failed_admin_authentications_are_limited_on_the_admin_listener() {
    let srv = Env::new().start().await;
    for _ in 0..10 {
        srv.admin_as(
            Method::GET,
            "/admin/v1/tokens",
            None,
            Auth::Bearer("adm-guessed"),
        )
        .await
        .assert_error(401, "invalid_client");
    }
    let r = srv.admin(Method::GET, "/admin/v1/tokens", None).await;
    slow_down_retry_after(&r, &srv.env.admin_token);
    assert_rate_limited_audit(&srv, &r, "admin.tokens.list", "failed_auth");
    // The revocation call authenticates before reading its body: refused and audited once.
    let r = srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"subject": PAYMENTS, "reason": "test"})),
        )
        .await;
    slow_down_retry_after(&r, &srv.env.admin_token);
    assert_rate_limited_audit(&srv, &r, "admin.revoke", "failed_auth");
    srv.assert_every_request_audited_once();
    srv.shutdown().await;
}

#[tokio::test]
async fn failed_auth_limit_off_counts_nothing() {
    let mut env = Env::new();
    env.settings.failed_auth_limit = None; // failed_auth_per_address = "off"
    let srv = env.start().await;
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;
    for _ in 0..15 {
        srv.introspect_as(&token, Auth::Basic(STATIC_CLIENT, "nope"))
            .await
            .assert_error(401, "invalid_client");
    }
    let secret = srv.env.static_secret.clone();
    let r = srv
        .introspect_as(&token, Auth::Basic(STATIC_CLIENT, &secret))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    srv.shutdown().await;
}

#[tokio::test]
async fn shared_limit_is_atomic_across_store_clients() {
    use tessera::revocation::redis::{RedisConfig, RedisStore};
    use tessera::revocation::{GcraLimit, SharedRateLimit};
    if !available("shared_limit_is_atomic_across_store_clients") {
        return;
    }
    let redis = RedisServer::start();
    // Two clients stand for two replicas; 2 x 40 concurrent takes at one instant.
    let a = RedisStore::connect(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let b = RedisStore::connect(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let limit = GcraLimit {
        interval_micros: 60_000_000,
        burst: 10,
    };
    let now_ms = SystemClock.now() * 1000;
    let takes = (0..80).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { store.take(PAYMENTS, limit, now_ms).await.unwrap() }
    });
    let results = futures_util::future::join_all(takes).await;
    let allowed = results.iter().filter(|r| r.is_none()).count();
    assert_eq!(allowed, 10, "exactly the burst conforms: {results:?}");
    // Refusals name the wait until the next event: one interval, in milliseconds.
    assert!(
        results.iter().flatten().all(|ms| *ms == 60_000),
        "{results:?}"
    );
    // Another subject has its own allowance; time refills one event per interval.
    assert_eq!(a.take(PAYMENTS_WORKER, limit, now_ms).await.unwrap(), None);
    assert_eq!(
        b.take(PAYMENTS, limit, now_ms + 60_000).await.unwrap(),
        None
    );
    assert!(
        a.take(PAYMENTS, limit, now_ms + 60_000)
            .await
            .unwrap()
            .is_some()
    );
}
