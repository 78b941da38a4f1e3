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

/// The block scalar under `key: |` in a ConfigMap, de-indented (the manifests' own
/// layout; no YAML crate for one field).
fn configmap_entry(yaml: &str, key: &str) -> String {
    let header = format!("  {key}: |");
    let mut lines = yaml.lines().skip_while(|l| *l != header).skip(1);
    let mut out = String::new();
    for line in lines.by_ref() {
        if !line.is_empty() && !line.starts_with("    ") {
            break;
        }
        out.push_str(line.strip_prefix("    ").unwrap_or(""));
        out.push('\n');
    }
    assert!(!out.trim().is_empty(), "no {key} in the ConfigMap");
    out
}

#[test]
fn kubernetes_configmap_config_validates_and_its_policy_compiles() {
    let yaml = std::fs::read_to_string(deploy("kubernetes/configmap.yaml")).unwrap();
    let text = configmap_entry(&yaml, "tessera.toml");
    let s = config::parse(&text, &[])
        .unwrap_or_else(|e| panic!("parse: {e}"))
        .validate(Path::new("/etc/tessera"))
        .unwrap_or_else(|e| panic!("validate: {e}"));
    // Several replicas: Redis, TLS from the agent's SVID, bundles from the agent.
    let redis = s
        .redis
        .as_ref()
        .expect("the Kubernetes sample shares Redis");
    assert_eq!(redis.url, "redis://redis:6379/0");
    assert!(s.tls.is_none(), "no TLS key file in the pod");
    assert!(s.svid_workload_api.is_some());
    assert!(s.serves_tls());
    assert_eq!(s.admin_listen.to_string(), "0.0.0.0:9443");
    assert!(s.audit_file.is_none(), "audit events go to stdout");
    assert_eq!(s.key_dir, Path::new("/var/lib/tessera/keys"));

    let policy = CompiledPolicy::from_toml(&configmap_entry(&yaml, "policy.toml"))
        .unwrap_or_else(|e| panic!("ConfigMap policy.toml: {e}"));
    assert_eq!(policy.rule_count(), 1);

    // The paths the config names are the ones the Deployment mounts.
    let deployment = std::fs::read_to_string(deploy("kubernetes/deployment.yaml")).unwrap();
    for mount in ["/etc/tessera", "/run/spire/sockets", "/var/lib/tessera"] {
        assert!(
            deployment.contains(&format!("mountPath: {mount}\n")),
            "{mount}"
        );
    }
}

#[test]
fn compose_config_validates_and_ships_the_sample_policy() {
    let text = std::fs::read_to_string(deploy("compose/tessera.toml")).unwrap();
    let s = config::parse(&text, &[])
        .unwrap_or_else(|e| panic!("parse: {e}"))
        .validate(Path::new("/etc/tessera"))
        .unwrap_or_else(|e| panic!("validate: {e}"));
    assert_eq!(
        s.redis.expect("compose runs Redis").url,
        "redis://redis:6379/0"
    );
    assert!(s.tls.is_some());
    // What the config reads and writes is what docker-compose.yml mounts, and the image
    // starts with this file.
    let compose = std::fs::read_to_string(deploy("docker-compose.yml")).unwrap();
    for mount in ["./compose:/etc/tessera:ro", "tessera-keys:/var/lib/tessera"] {
        assert!(compose.contains(mount), "{mount}");
    }
    assert!(s.key_dir.starts_with("/var/lib/tessera"));
    assert!(s.policy_file.starts_with("/etc/tessera"));
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(dockerfile.contains(r#"CMD ["serve", "--config", "/etc/tessera/tessera.toml"]"#));
    assert_eq!(
        std::fs::read_to_string(deploy("compose/policy.toml")).unwrap(),
        std::fs::read_to_string(deploy("policy.toml")).unwrap(),
        "deploy/compose/policy.toml is a copy of deploy/policy.toml"
    );
}
