#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! The multi-replica promise over real Redis (issue: Redis revocation store): two Tessera
//! servers share one Redis and one key directory; a revocation made on A holds on B the
//! moment A's admin call returns — on standalone Redis, a 3-master Cluster and through
//! a Sentinel failover — and a Redis outage fails closed and heals by itself.

mod common;
mod redis_harness;

use common::{Env, LEDGER, PAYMENTS, Server};
use redis_harness::{RedisCluster, RedisSentinel, RedisServer, available, cli, wait_until};
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An environment whose store is Redis at `url`; the clock is set to real time because
/// Redis expires keys on its own clock.
fn redis_env(url: &str, min_replicas_ack: u32) -> Env {
    Env::new().on_redis(url, "t", min_replicas_ack)
}

async fn two_replicas(url: &str) -> (Server, Server) {
    let a = redis_env(url, 0);
    let b = a.replica();
    (a.start().await, b.start().await)
}

async fn revoke_jti(srv: &Server, token: &str) {
    let jti = common::jws_part(token, 1)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"jti": jti, "reason": "replica test"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// Revoke on A, introspect on B with no delay: inactive, every time. B is first shown to
/// accept the token, so the check cannot pass by B failing to verify A's tokens.
async fn revoke_on_a_holds_on_b(a: &Server, b: &Server, trials: usize) {
    for i in 0..trials {
        let token = a.token_for(PAYMENTS, LEDGER, None).await;
        assert!(
            b.active(&token).await,
            "trial {i}: B does not accept A's token"
        );
        revoke_jti(a, &token).await;
        assert!(
            !b.active(&token).await,
            "trial {i}: B still says active after A revoked"
        );
    }
}

#[tokio::test]
async fn two_replicas_on_standalone_redis_500_trials() {
    if !available("two_replicas_on_standalone_redis_500_trials") {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = two_replicas(&redis.url()).await;
    revoke_on_a_holds_on_b(&a, &b, 500).await;
    // B answered every post-revocation introspection from its verified-token cache, so
    // the revocation held through a cache hit: the store is asked on every request.
    let hits = b
        .svc
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix("tessera_cache_hits_total{cache=\"introspection\"} "))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(hits >= 500, "B's introspection cache hits: {hits}");

    // Subject and kid revocations and the inventory are shared too.
    let token = a.token_for(PAYMENTS, LEDGER, None).await;
    let listed = b.admin(Method::GET, "/admin/v1/tokens", None).await;
    let jti = common::jws_part(&token, 1)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        listed.text.contains(&jti),
        "B lists A's token: {}",
        listed.text
    );
    a.clock().advance(1); // the watermark covers tokens issued at or before it
    let r = a
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"subject": PAYMENTS, "reason": "replica test", "block_new": "10m"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!b.active(&token).await);
    let svid = b.svid(PAYMENTS, 300);
    b.exchange(&svid, LEDGER, None)
        .await
        .assert_error(400, "invalid_grant");
    let audit = b.admin(Method::GET, "/admin/v1/audit?limit=5", None).await;
    assert!(
        audit.text.contains("admin.revoke"),
        "B's audit query shows A's admin call: {}",
        audit.text
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn two_replicas_on_a_three_master_cluster() {
    if !available("two_replicas_on_a_three_master_cluster") {
        return;
    }
    let cluster = RedisCluster::start();
    let (a, b) = two_replicas(&cluster.url()).await;
    revoke_on_a_holds_on_b(&a, &b, 100).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// With `min_replicas_ack = 1` a revocation answered 201 survives a Sentinel failover.
#[tokio::test]
async fn sentinel_failover_keeps_an_acknowledged_revocation() {
    if !available("sentinel_failover_keeps_an_acknowledged_revocation") {
        return;
    }
    let setup = RedisSentinel::start();
    let srv = redis_env(&setup.url(), 1).start().await;
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;
    assert!(srv.active(&token).await);
    revoke_jti(&srv, &token).await;

    let out = cli(setup.sentinel.port, &["SENTINEL", "failover", "mymaster"]);
    assert!(out.contains("OK"), "SENTINEL failover: {out}");
    wait_until(
        "the replica to become master",
        Duration::from_secs(20),
        || {
            setup.master_port() == Some(setup.replica.port)
                && cli(setup.replica.port, &["ROLE"]).starts_with("master")
        },
    );
    // Until the server reaches the new master it may answer 503; never active.
    let start = Instant::now();
    loop {
        let r = srv.introspect(&token).await;
        match r.status {
            200 => {
                assert_eq!(
                    r.json(),
                    json!({"active": false}),
                    "revocation lost in failover"
                );
                break;
            }
            503 => assert!(start.elapsed() < Duration::from_secs(20), "no recovery"),
            other => panic!("unexpected {other}: {}", r.text),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.shutdown().await;
}

/// Redis dies under traffic: no revoked token is ever reported active, introspection
/// answers 503, issuance continues, admin revocation and /readyz answer 503; within 5 s
/// of Redis coming back everything answers normally, with no restart.
#[tokio::test]
async fn redis_outage_fails_closed_and_heals() {
    if !available("redis_outage_fails_closed_and_heals") {
        return;
    }
    // Durable Redis, so the restarted server still has the revocation.
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"], false);
    let srv = Arc::new(redis_env(&redis.url(), 0).start().await);
    let revoked = srv.token_for(PAYMENTS, LEDGER, None).await;
    let live = srv.token_for(PAYMENTS, LEDGER, None).await;
    revoke_jti(&srv, &revoked).await;

    let stop = Arc::new(AtomicBool::new(false));
    let unavailable = Arc::new(AtomicU64::new(0));
    let checker = {
        let (srv, stop, unavailable) = (srv.clone(), stop.clone(), unavailable.clone());
        let revoked = revoked.clone();
        tokio::spawn(async move {
            let mut checks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = srv.introspect(&revoked).await;
                match r.status {
                    200 => assert_eq!(r.json(), json!({"active": false}), "revoked token active"),
                    503 => {
                        assert_eq!(r.error(), "temporarily_unavailable");
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("introspection answered {other}: {}", r.text),
                }
                checks += 1;
            }
            checks
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.stop();

    // During the outage.
    let r = srv.introspect(&live).await;
    assert_eq!(
        r.status, 503,
        "unchecked token must not be answered: {}",
        r.text
    );
    let svid = srv.svid(PAYMENTS, 300);
    let issued = srv.exchange(&svid, LEDGER, None).await;
    assert_eq!(issued.status, 200, "issuance continues: {}", issued.text);
    let r = srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"jti": "during-outage", "reason": "x"})),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(srv.get("/readyz").await.status, 503);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        unavailable.load(Ordering::Relaxed) > 0,
        "outage not observed"
    );

    redis.restart();
    let back = Instant::now();
    loop {
        let ready = srv.get("/readyz").await.status == 200;
        let r = srv.introspect(&live).await;
        if ready && r.status == 200 {
            assert_eq!(r.json()["active"], true);
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not healed 5 s after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The revocation made before the outage still holds, and admin writes work again.
    assert!(!srv.active(&revoked).await);
    revoke_jti(&srv, &live).await;
    assert!(!srv.active(&live).await);

    stop.store(true, Ordering::Relaxed);
    let checks = checker.await.unwrap();
    assert!(checks > 10, "checker ran only {checks} times");
    match Arc::try_unwrap(srv) {
        Ok(s) => s.shutdown().await,
        Err(_) => panic!("server still shared"),
    }
}
