#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! The Redis backend against real `redis-server` processes the harness starts on free
//! loopback ports: the conformance suite on standalone Redis and on a 3-master cluster,
//! URL parsing, faults (a dead or frozen server, a restart, a Sentinel failover) and
//! replica acknowledgement.

mod redis_harness;

use redis_harness::{RedisCluster, RedisSentinel, RedisServer, available, cli, wait_until};
use std::time::{Duration, Instant};
use tessera::revocation::conformance::{self, T};
use tessera::revocation::redis::{
    RedisAuth, RedisConfig, RedisNode, RedisStore, RedisTarget, parse_redis_url,
};
use tessera::revocation::{
    NewRevocation, PageRequest, ReplayGuard, RevocationKind, RevocationStore, StoreError, TokenRef,
};

fn config(url: &str) -> RedisConfig {
    RedisConfig {
        timeout: Duration::from_millis(300),
        ..RedisConfig::new(url)
    }
}

fn jti_rev(jti: &str) -> NewRevocation {
    NewRevocation {
        kind: RevocationKind::Jti,
        value: jti.to_owned(),
        reason: "test".to_owned(),
        actor: "test".to_owned(),
        created_at: T,
        expires_at: T + 3600,
        block_until: None,
    }
}

fn token(jti: &str) -> TokenRef<'_> {
    TokenRef {
        jti,
        subject: "spiffe://example.org/workload",
        kid: "k1",
        iat: T - 10,
    }
}

async fn run_conformance(store: &RedisStore, what: &str) {
    let started = Instant::now();
    let results = conformance::run_all(store).await;
    let mut failed = Vec::new();
    for (name, result) in &results {
        match result {
            Ok(()) => println!("ok      {what} {name}"),
            Err(why) => {
                println!("FAILED  {what} {name}: {why}");
                failed.push(*name);
            }
        }
    }
    println!("{what}: {} cases in {:?}", results.len(), started.elapsed());
    assert!(
        results.len() >= 19,
        "suite ran only {} cases",
        results.len()
    );
    assert!(
        failed.is_empty(),
        "{what}: conformance cases failed: {failed:?}"
    );
}

#[tokio::test]
async fn conformance_suite_passes_on_standalone_redis() {
    if !available("conformance_suite_passes_on_standalone_redis") {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(config(&server.url())).await.unwrap();
    run_conformance(&store, "standalone").await;
}

#[tokio::test]
async fn conformance_suite_passes_on_a_three_master_cluster() {
    if !available("conformance_suite_passes_on_a_three_master_cluster") {
        return;
    }
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(config(&cluster.url())).await.unwrap();
    run_conformance(&store, "cluster").await;
    // The keys really are spread: every master holds some of them.
    for node in &cluster.nodes {
        let n: i64 = cli(node.port, &["DBSIZE"]).trim().parse().unwrap();
        assert!(n > 0, "master {} holds no keys", node.port);
    }
}

#[test]
fn url_forms_parse() {
    let node = |h: &str, p| RedisNode {
        host: h.to_owned(),
        port: p,
    };
    let cases: Vec<(&str, RedisTarget)> = vec![
        (
            "redis://127.0.0.1:6379",
            RedisTarget::Standalone {
                node: node("127.0.0.1", 6379),
                tls: false,
                auth: RedisAuth::default(),
                db: 0,
            },
        ),
        (
            "redis://redis.internal/3",
            RedisTarget::Standalone {
                node: node("redis.internal", 6379),
                tls: false,
                auth: RedisAuth::default(),
                db: 3,
            },
        ),
        (
            "rediss://tessera:p%40ss@redis.example.org:6380/0",
            RedisTarget::Standalone {
                node: node("redis.example.org", 6380),
                tls: true,
                auth: RedisAuth {
                    username: Some("tessera".to_owned()),
                    password: Some("p@ss".to_owned()),
                },
                db: 0,
            },
        ),
        (
            "redis://:secret@[::1]:7000",
            RedisTarget::Standalone {
                node: node("::1", 7000),
                tls: false,
                auth: RedisAuth {
                    username: None,
                    password: Some("secret".to_owned()),
                },
                db: 0,
            },
        ),
        (
            "redis+sentinel://s1:26379,s2:26380,s3/mymaster/2",
            RedisTarget::Sentinel {
                sentinels: vec![node("s1", 26379), node("s2", 26380), node("s3", 26379)],
                master_name: "mymaster".to_owned(),
                auth: RedisAuth::default(),
                db: 2,
            },
        ),
        (
            "redis+sentinel://u:p@s1:26379/mymaster",
            RedisTarget::Sentinel {
                sentinels: vec![node("s1", 26379)],
                master_name: "mymaster".to_owned(),
                auth: RedisAuth {
                    username: Some("u".to_owned()),
                    password: Some("p".to_owned()),
                },
                db: 0,
            },
        ),
        (
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002",
            RedisTarget::Cluster {
                seeds: vec![
                    node("10.0.0.1", 7000),
                    node("10.0.0.2", 7001),
                    node("10.0.0.3", 7002),
                ],
                auth: RedisAuth::default(),
            },
        ),
    ];
    for (url, want) in cases {
        assert_eq!(parse_redis_url(url), Ok(want), "{url}");
    }
}

#[test]
fn bad_urls_name_the_problem_and_the_fix() {
    let cases = [
        ("127.0.0.1:6379", "no scheme"),
        ("http://127.0.0.1:6379", "unknown"),
        ("redis://", "no host"),
        ("redis://h:0", "port `0`"),
        ("redis://h:99999", "port `99999`"),
        ("redis://h:x", "port `x`"),
        ("redis://a:1,b:2", "takes exactly one"),
        ("redis://h/db", "database `db`"),
        ("redis://h/0/1", "only the database"),
        ("redis://h?db=1", "query strings"),
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis+sentinel://s1:26379/", "names no master"),
        ("redis+sentinel://s1/m/x", "database `x`"),
        ("redis+cluster://a:1,b:2/3", "only database 0"),
        ("redis+cluster://a:1,,b:2", "extra comma"),
        ("rediss+cluster://a:1", "TLS is supported for standalone"),
        ("redis://::1:6379", "brackets"),
        ("redis://:%zz@h", "%-escape"),
    ];
    for (url, needle) in cases {
        let err = parse_redis_url(url).unwrap_err();
        assert!(err.contains(needle), "{url}: {err}");
        assert!(!err.contains("secret"), "{url}: {err}");
    }
    let err = parse_redis_url("redis://u:secret@a:1,b:2").unwrap_err();
    assert!(!err.contains("secret"), "password leaked: {err}");
}

#[tokio::test]
async fn connect_refuses_an_unreachable_server_in_time() {
    if !available("connect_refuses_an_unreachable_server_in_time") {
        return;
    }
    let port = redis_harness::free_port(false);
    let start = Instant::now();
    let err = RedisStore::connect(config(&format!("redis://127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

/// Dead server: every call fails fast with Unavailable. Frozen server: the timeout
/// bounds the call. Restarted server: the same store works again within 5 s.
#[tokio::test]
async fn outages_fail_closed_within_the_timeout_and_recover_without_restart() {
    if !available("outages_fail_closed_within_the_timeout_and_recover_without_restart") {
        return;
    }
    let mut server = RedisServer::start();
    let store = RedisStore::connect(config(&server.url())).await.unwrap();
    store.revoke(jti_rev("before-outage")).await.unwrap();
    assert!(store.is_revoked(&token("before-outage"), T).await.unwrap());

    // Frozen (SIGSTOP): the socket stays open but nothing answers.
    server.signal("STOP");
    for _ in 0..3 {
        let start = Instant::now();
        let got = store.is_revoked(&token("before-outage"), T).await;
        let took = start.elapsed();
        assert!(
            matches!(&got, Err(StoreError::Unavailable(m)) if m == "timeout"),
            "frozen server: {got:?}"
        );
        assert!(took < Duration::from_millis(800), "took {took:?}");
    }
    let start = Instant::now();
    let got = store.revoke(jti_rev("during-freeze")).await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    assert!(start.elapsed() < Duration::from_millis(800));
    let start = Instant::now();
    let got = store.first_use("during-freeze", T + 3600, T).await;
    assert!(
        matches!(&got, Err(StoreError::Unavailable(m)) if m == "timeout"),
        "frozen server, first_use: {got:?}"
    );
    assert!(start.elapsed() < Duration::from_millis(800));
    server.signal("CONT");

    // Dead: connection refused, fast.
    server.stop();
    for _ in 0..5 {
        let start = Instant::now();
        let got = store.is_revoked(&token("before-outage"), T).await;
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
        assert!(
            start.elapsed() < Duration::from_millis(800),
            "{:?}",
            start.elapsed()
        );
        let got = store.ping().await;
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
        let got = store.first_use("while-dead", T + 3600, T).await;
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    }

    // Back (empty: this server keeps nothing on disk): the same store recovers.
    server.restart();
    let back = Instant::now();
    loop {
        if store.ping().await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "no recovery within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("recovered {:?} after the restart", back.elapsed());
    store.revoke(jti_rev("after-outage")).await.unwrap();
    assert!(store.is_revoked(&token("after-outage"), T).await.unwrap());
}

/// With `min_replicas_ack = 1` and no replica, a revocation is refused and never live.
#[tokio::test]
async fn missing_replica_acknowledgement_fails_the_revocation() {
    if !available("missing_replica_acknowledgement_fails_the_revocation") {
        return;
    }
    let server = RedisServer::start();
    let strict = RedisStore::connect(RedisConfig {
        min_replicas_ack: 1,
        wait_timeout: Duration::from_millis(200),
        ..config(&server.url())
    })
    .await
    .unwrap();
    let start = Instant::now();
    let got = strict.revoke(jti_rev("unacked")).await;
    match &got {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("0 of 1"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!strict.is_revoked(&token("unacked"), T).await.unwrap());
    let listed = strict
        .list_revocations(None, &PageRequest::default(), T)
        .await
        .unwrap();
    assert!(listed.items.is_empty(), "listed: {:?}", listed.items);
}

/// A one-time mark is the contract's key (§6 `once:{key}`), a string whose Redis TTL
/// ends exactly at `expires_at` (Redis, not `purge_expired`, forgets it), and a used key
/// is refused through a second store as through the first (replicas share marks).
#[tokio::test]
async fn once_marks_follow_the_contract_layout() {
    if !available("once_marks_follow_the_contract_layout") {
        return;
    }
    let server = RedisServer::start();
    let a = RedisStore::connect(config(&server.url())).await.unwrap();
    let b = RedisStore::connect(config(&server.url())).await.unwrap();
    let key = "0123456789abcdef".repeat(4);
    assert!(a.first_use(&key, T + 3600, T).await.unwrap());
    assert!(!b.first_use(&key, T + 3600, T + 1).await.unwrap());
    let redis_key = format!("tessera:once:{key}");
    assert_eq!(cli(server.port, &["TYPE", &redis_key]).trim(), "string");
    assert_eq!(
        cli(server.port, &["EXPIRETIME", &redis_key]).trim(),
        (T + 3600).to_string()
    );
    // Past expires_at the mark is absent for the injected clock, and re-marking moves
    // the TTL to the new expires_at.
    assert!(b.first_use(&key, T + 7200, T + 3600).await.unwrap());
    assert_eq!(
        cli(server.port, &["EXPIRETIME", &redis_key]).trim(),
        (T + 7200).to_string()
    );
    // Keys are checked before Redis is asked: nothing is written for a bad one.
    let got = a.first_use("a*", T + 3600, T).await;
    assert!(matches!(got, Err(StoreError::InvalidKey(_))), "{got:?}");
    assert_eq!(cli(server.port, &["KEYS", "tessera:once:a*"]).trim(), "");
    // Already expired: nothing is written either.
    assert!(a.first_use("dead", T - 1, T).await.unwrap());
    assert_eq!(
        cli(server.port, &["EXISTS", "tessera:once:dead"]).trim(),
        "0"
    );
}

/// With `min_replicas_ack = 1` and no replica a mark is refused like a revocation, and
/// the refusal fails closed: the retry is a replay, since the master kept the mark.
#[tokio::test]
async fn missing_replica_acknowledgement_fails_the_one_time_mark() {
    if !available("missing_replica_acknowledgement_fails_the_one_time_mark") {
        return;
    }
    let server = RedisServer::start();
    let strict = RedisStore::connect(RedisConfig {
        min_replicas_ack: 1,
        wait_timeout: Duration::from_millis(200),
        ..config(&server.url())
    })
    .await
    .unwrap();
    let start = Instant::now();
    let got = strict.first_use("unacked", T + 3600, T).await;
    match &got {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("0 of 1"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!strict.first_use("unacked", T + 3600, T).await.unwrap());
}

/// Sentinel: a revocation acknowledged by the replica survives a failover, and the
/// same store follows the new master.
#[tokio::test]
async fn sentinel_failover_keeps_revocations_and_the_store_follows_the_new_master() {
    if !available("sentinel_failover_keeps_revocations_and_the_store_follows_the_new_master") {
        return;
    }
    let setup = RedisSentinel::start();
    let store = RedisStore::connect(RedisConfig {
        min_replicas_ack: 1,
        wait_timeout: Duration::from_secs(1),
        ..config(&setup.url())
    })
    .await
    .unwrap();
    let rec = store.revoke(jti_rev("before-failover")).await.unwrap();
    let old_master = setup.master.port;
    assert_eq!(setup.master_port(), Some(old_master));

    let out = cli(setup.sentinel.port, &["SENTINEL", "failover", "mymaster"]);
    assert!(out.contains("OK"), "SENTINEL failover: {out}");
    wait_until(
        "sentinel to name the new master",
        Duration::from_secs(15),
        || setup.master_port() == Some(setup.replica.port),
    );
    wait_until(
        "the replica to become master",
        Duration::from_secs(10),
        || cli(setup.replica.port, &["ROLE"]).starts_with("master"),
    );

    // Phase 1: the same store reaches the new master. After a forced failover the old
    // master keeps accepting writes until Sentinel demotes it (next INFO round, up to
    // ~10 s); the store notices because WAIT 1 gets no acknowledgement there, refuses
    // the revoke and asks the sentinels again. Until the old master replicates from
    // the new one, WAIT on the new master fails too, so revokes stay refused.
    let start = Instant::now();
    let mut outcome;
    loop {
        // Every answer is either right or Unavailable; never "not revoked".
        match store.is_revoked(&token("before-failover"), T).await {
            Ok(revoked) => assert!(revoked, "revocation lost in the failover"),
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("{e}"),
        }
        outcome = store.revoke(jti_rev("after-failover")).await;
        if let Err(e @ (StoreError::Corrupt(_) | StoreError::BadCursor)) = &outcome {
            panic!("{e}");
        }
        // Landed on the new master: its log holds more than the replicated record.
        let on_new = cli(setup.replica.port, &["XLEN", "tessera:rev:log"]);
        if on_new.trim().parse::<u64>().unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "store did not follow: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "store wrote to the new master {:?} after the switch",
        start.elapsed()
    );
    // Phase 2: once the old master replicates again, acknowledged revokes resume.
    let start = Instant::now();
    while outcome.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no replica acknowledged: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        outcome = store.revoke(jti_rev("after-failover")).await;
    }
    println!("acknowledged revokes resumed {:?} later", start.elapsed());
    assert!(
        store
            .is_revoked(&token("before-failover"), T)
            .await
            .unwrap()
    );
    let key = "tessera:rev:jti:after-failover";
    let on_new = cli(setup.replica.port, &["GET", key]);
    assert!(
        !on_new.trim().is_empty(),
        "new revocation not on the new master"
    );
    let listed = store
        .list_revocations(None, &PageRequest::default(), T)
        .await
        .unwrap();
    assert!(listed.items.iter().any(|r| r.id == rec.id));
}

/// Inventory keys expire in Redis by themselves (EXPIREAT = exp), so a purge at a time
/// Redis's clock has already reached scans nothing; only a purge ahead of Redis's clock
/// (skew, or this suite's T in 2030) walks `tok:*`.
#[tokio::test]
async fn purge_scans_the_inventory_only_when_ahead_of_the_redis_clock() {
    if !available("purge_scans_the_inventory_only_when_ahead_of_the_redis_clock") {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(config(&server.url())).await.unwrap();
    let now = tessera::clock::Clock::now(&tessera::clock::SystemClock);
    for i in 0..20 {
        let token = tessera::revocation::IssuedToken {
            jti: format!("jti-{i}"),
            sub: "spiffe://example.org/workload".into(),
            aud: "https://api.example.org".into(),
            scope: None,
            kid: "k1".into(),
            iat: now,
            exp: now + 3600,
        };
        tessera::revocation::TokenInventory::record_issued(&store, &token)
            .await
            .unwrap();
    }
    let scans = || {
        let stats = cli(server.port, &["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
            .and_then(|v| v.split(',').next())
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    assert_eq!(store.purge_expired(now).await.unwrap(), 0);
    assert_eq!(
        scans(),
        0,
        "a purge at Redis's own time scanned the inventory"
    );
    // An hour and a bit ahead of Redis: the entries are past exp for us, not for Redis.
    assert_eq!(store.purge_expired(now + 3700).await.unwrap(), 20);
    assert!(scans() > 0, "a purge ahead of Redis's clock did not scan");
}
