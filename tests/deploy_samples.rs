#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The sample files under `deploy/` are documentation that must keep working: the
//! production config validates, and the sample policy compiles.

use std::path::{Path, PathBuf};
use tessera::config;
use tessera::policy::CompiledPolicy;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

#[test]
fn production_sample_config_validates() {
    let text = std::fs::read_to_string(deploy("tessera.toml")).unwrap();
    let file = config::parse(&text, &[]).unwrap_or_else(|e| panic!("parse: {e}"));
    let s = file
        .validate(Path::new("deploy"))
        .unwrap_or_else(|e| panic!("validate: {e}"));

    assert_eq!(s.issuer, "https://sts.example.org");
    assert!(s.tls.is_some(), "production serves TLS");
    assert!(!s.dev_mode);
    assert_eq!(s.public_listen.to_string(), "0.0.0.0:8443");
    assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9443");
    assert_eq!((s.default_ttl, s.max_ttl, s.leeway), (300, 900, 30));
    assert_eq!(s.accept_audiences, vec![s.issuer.clone()]);
    assert_eq!(s.signing_alg.as_str(), "ES256");
    assert_eq!((s.rotate_every, s.prepublish), (86_400, 3600));
    assert_eq!(s.store_path, PathBuf::from("/var/lib/tessera/store.redb"));
    assert_eq!(s.trust_domains.len(), 1);
    assert_eq!(s.trust_domains[0].0.to_string(), "example.org");
    assert_eq!(s.introspection_allowed.len(), 1);
    assert_eq!(s.introspection_clients.len(), 1);
    assert!(
        s.introspection_clients[0]
            .secret_hash
            .starts_with("$argon2id$")
    );
    assert_eq!(
        s.per_identity_limit.map(|r| r.to_string()).as_deref(),
        Some("50/s")
    );
    assert_eq!(
        s.audit_file.as_deref(),
        Some(Path::new("/var/log/tessera/audit.jsonl"))
    );
}

#[test]
fn production_sample_refused_keys_are_only_in_comments() {
    // Uncommenting a key a later issue brings must stop start-up, naming the key; so must
    // switching to Redis without uncommenting its URL.
    let text = std::fs::read_to_string(deploy("tessera.toml")).unwrap();
    let cases = [
        (
            "backend = \"embedded\"",
            "backend = \"redis\"",
            "store.redis_url",
        ),
        (
            "# workload_api = \"unix:///run/spire/sockets/agent.sock\"",
            "workload_api = \"unix:///run/spire/sockets/agent.sock\"",
            "trust_domain[0]",
        ),
    ];
    for (from, to, key) in cases {
        assert!(text.contains(from), "sample no longer contains {from:?}");
        let edited = text.replacen(from, to, 1);
        let err = config::parse(&edited, &[])
            .unwrap()
            .validate(Path::new("deploy"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn production_sample_switches_to_redis_by_uncommenting() {
    let text = std::fs::read_to_string(deploy("tessera.toml")).unwrap();
    let edited = text
        .replacen("backend = \"embedded\"", "backend = \"redis\"", 1)
        .replacen("# redis_url = ", "redis_url = ", 1)
        .replacen("# key_prefix = ", "key_prefix = ", 1)
        .replacen("# min_replicas_ack = ", "min_replicas_ack = ", 1);
    let s = config::parse(&edited, &[])
        .unwrap()
        .validate(Path::new("deploy"))
        .unwrap();
    let redis = s.redis.expect("redis settings");
    assert_eq!(redis.key_prefix, "tessera:");
    assert_eq!(redis.min_replicas_ack, 1);
}

#[test]
fn sample_policy_compiles() {
    let policy = CompiledPolicy::load(&deploy("policy.toml"))
        .unwrap_or_else(|e| panic!("deploy/policy.toml: {e}"));
    assert_eq!(policy.rule_count(), 2);
}
