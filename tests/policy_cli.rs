#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! `tessera policy check` run as the built binary on temporary files (contract §5):
//! `--lint [--strict]`, `--max-ttl`/`--config`, and `--claims-file` for OIDC rules.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

const UNPINNED_GITHUB: &str = r#"
[[rule]]
id = "any-repo-deploys"
match.issuer = "https://token.actions.githubusercontent.com"
match.claims = { repository = "*/deploy", ref = "refs/heads/main" }
grant.audiences = ["https://deploy.example.org"]
"#;

const CLEAN: &str = r#"
[[rule]]
id = "acme-deploys"
match.issuer = "https://token.actions.githubusercontent.com"
match.claims = { repository = "acme/*", ref = "refs/heads/main" }
grant.audiences = ["https://deploy.example.org"]
grant.max_ttl = "10m"

[[rule]]
id = "k8s-payments"
match.issuer = "https://k8s.example.org"
match.claims = { "kubernetes.io.namespace" = "payments" }
grant.audiences = ["https://ledger.example.org"]
grant.scopes = ["ledger:read"]
grant.subject = "system:serviceaccount:{kubernetes.io.namespace}:{kubernetes.io.serviceaccount.name}"

[[rule]]
id = "payments-spiffe"
match.spiffe_id = "spiffe://example.org/ns/payments/sa/*"
grant.audiences = ["https://ledger.example.org"]
"#;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tessera(dir: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .current_dir(dir)
        .env_remove("TESSERA_TOKENS__MAX_TTL")
        .args(args)
        .output()
        .unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn lint_cases() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let unpinned = write(d, "unpinned.toml", UNPINNED_GITHUB);
    let clean = write(d, "clean.toml", CLEAN);
    // (name, args, exit code, words in stdout)
    let cases: Vec<(&str, Vec<&str>, i32, Vec<&str>)> = vec![
        (
            "unpinned github rule is flagged, exit 0",
            vec!["--policy", &unpinned, "--lint"],
            0,
            vec![
                r#"warning[unpinned_tenant] rule "any-repo-deploys": "#,
                "repository_owner",
                "\n1 warning\n",
            ],
        ),
        (
            "strict turns the warning into exit 1",
            vec!["--policy", &unpinned, "--lint", "--strict"],
            1,
            vec!["warning[unpinned_tenant]", "1 warning"],
        ),
        (
            "clean policy",
            vec!["--policy", &clean, "--lint", "--strict"],
            0,
            vec!["0 warnings"],
        ),
        (
            "ttl above a lower --max-ttl",
            vec!["--policy", &clean, "--lint", "--max-ttl", "5m"],
            0,
            vec![
                r#"warning[ttl_above_global_max] rule "acme-deploys": grant.max_ttl 10m is above the global tokens.max_ttl 5m"#,
                "1 warning",
            ],
        ),
        (
            "lint with a decision prints both",
            vec![
                "--policy",
                &unpinned,
                "--lint",
                "--identity",
                "spiffe://example.org/a",
                "--audience",
                "https://deploy.example.org",
            ],
            1,
            vec!["DENY (invalid_target)", "warning[unpinned_tenant]"],
        ),
    ];
    for (name, args, code, words) in cases {
        let mut full = vec!["policy", "check"];
        full.extend(args);
        let run = tessera(d, &full);
        assert_eq!(
            run.code, code,
            "case {name:?}: {}{}",
            run.stdout, run.stderr
        );
        for w in words {
            assert!(
                run.stdout.contains(w),
                "case {name:?}: {w:?} in {}",
                run.stdout
            );
        }
    }
}

#[test]
fn lint_reads_max_ttl_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clean = write(d, "clean.toml", CLEAN);
    // Only validated, never opened: the files it names need not exist.
    let config = write(
        d,
        "tessera.toml",
        "issuer = \"https://sts.example.org\"\npolicy_file = \"clean.toml\"\n\n[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\n[tokens]\ndefault_ttl = \"1m\"\nmax_ttl = \"5m\"\n\n[signing]\nkey_dir = \"keys\"\n\n[store]\npath = \"store.redb\"\n",
    );
    let run = tessera(
        d,
        &[
            "policy", "check", "--policy", &clean, "--lint", "--config", &config,
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("global tokens.max_ttl 5m"),
        "{}",
        run.stdout
    );

    let run = tessera(
        d,
        &[
            "policy",
            "check",
            "--policy",
            &clean,
            "--lint",
            "--config",
            &config,
            "--max-ttl",
            "1h",
        ],
    );
    assert_ne!(run.code, 0, "--config and --max-ttl conflict");
}

#[test]
fn claims_file_checks_oidc_rules_and_prints_the_mapped_subject() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clean = write(d, "clean.toml", CLEAN);
    let k8s = write(
        d,
        "k8s.json",
        r#"{
  "iss": "https://k8s.example.org",
  "sub": "system:serviceaccount:payments:api",
  "aud": ["https://sts.example.org"],
  "kubernetes.io": {
    "namespace": "payments",
    "serviceaccount": {"name": "api", "uid": "0f3c"}
  }
}"#,
    );
    let billing = write(
        d,
        "billing.json",
        r#"{"iss": "https://k8s.example.org", "sub": "x", "kubernetes.io": {"namespace": "billing"}}"#,
    );
    let no_iss = write(d, "no-iss.json", r#"{"sub": "x"}"#);
    let not_object = write(d, "list.json", "[1, 2]");
    // (name, claims file, exit code (2: an error), stdout or stderr words)
    let cases = [
        (
            "kubernetes claims grant with the mapped subject",
            &k8s,
            0,
            r#"GRANT by rule "k8s-payments": audience https://ledger.example.org, scope "ledger:read", max_ttl server default, subject system:serviceaccount:payments:api"#,
        ),
        (
            "other namespace is denied, named by iss#sub",
            &billing,
            1,
            "DENY (invalid_target): no rule lets https://k8s.example.org#x reach https://ledger.example.org",
        ),
        ("claims without iss", &no_iss, 2, "no \"iss\" string"),
        (
            "claims not an object",
            &not_object,
            2,
            "expected a JSON object",
        ),
    ];
    for (name, file, code, words) in cases {
        let run = tessera(
            d,
            &[
                "policy",
                "check",
                "--policy",
                &clean,
                "--claims-file",
                file,
                "--audience",
                "https://ledger.example.org",
                "--scope",
                "ledger:read",
            ],
        );
        assert_eq!(
            run.code, code,
            "case {name:?}: {}{}",
            run.stdout, run.stderr
        );
        assert!(
            run.stdout.contains(words) || run.stderr.contains(words),
            "case {name:?}: {words:?} in {}{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn argument_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clean = write(d, "clean.toml", CLEAN);
    let claims = write(d, "c.json", r#"{"iss": "https://i", "sub": "s"}"#);
    // (name, args, exit code (2: usage or input error), words in stdout or stderr)
    let cases: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (
            "spiffe check unchanged",
            vec![
                "--identity",
                "spiffe://example.org/ns/payments/sa/api",
                "--audience",
                "https://ledger.example.org",
            ],
            0,
            r#"GRANT by rule "payments-spiffe": audience https://ledger.example.org, no scope, max_ttl server default"#,
        ),
        (
            "identity needed without --lint",
            vec!["--audience", "https://ledger.example.org"],
            2,
            "--identity",
        ),
        (
            "audience needed without --lint",
            vec!["--identity", "spiffe://example.org/a"],
            2,
            "--audience",
        ),
        (
            "strict needs lint",
            vec![
                "--strict",
                "--identity",
                "spiffe://example.org/a",
                "--audience",
                "a",
            ],
            2,
            "--lint",
        ),
        (
            "identity and claims file conflict",
            vec![
                "--identity",
                "spiffe://example.org/a",
                "--claims-file",
                &claims,
                "--audience",
                "a",
            ],
            2,
            "cannot be used with",
        ),
        (
            "audience alone with lint",
            vec!["--lint", "--audience", "a"],
            2,
            "give --identity or --claims-file",
        ),
        (
            "bad max ttl",
            vec!["--lint", "--max-ttl", "soon"],
            2,
            "--max-ttl",
        ),
    ];
    for (name, args, code, words) in cases {
        let mut full = vec!["policy", "check", "--policy", &clean];
        full.extend(args);
        let run = tessera(d, &full);
        assert_eq!(
            run.code, code,
            "case {name:?}: {}{}",
            run.stdout, run.stderr
        );
        assert!(
            run.stdout.contains(words) || run.stderr.contains(words),
            "case {name:?}: {words:?} in {}{}",
            run.stdout,
            run.stderr
        );
    }
}
