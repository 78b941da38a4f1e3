//! Table-driven tests of compiling and deciding; each case is named.

use super::*;
use crate::domain::Scope;
use serde_json::{Value, json};

const POLICY: &str = r#"
[[rule]]
id = "payments-read-ledger"
match.spiffe_id = "spiffe://example.org/ns/payments/sa/*"
grant.audiences = ["https://ledger.example.org"]
grant.scopes = ["ledger:read", "ledger:write"]
grant.default_scopes = ["ledger:read"]
grant.max_ttl = "5m"
grant.actors = ["spiffe://example.org/ns/gateway/sa/edge"]

[[rule]]
id = "payments-admin"
match.spiffe_id = "spiffe://example.org/ns/payments/sa/admin"
grant.audiences = ["https://ledger.example.org"]
grant.scopes = ["ledger:read", "ledger:admin"]

[[rule]]
id = "payments-anything"
match.spiffe_id = "spiffe://example.org/ns/payments/**"
grant.audiences = ["https://ledger.example.org", "https://reports.example.org"]
grant.scopes = ["ledger:read"]
grant.max_ttl = "1h"

[[rule]]
id = "any-workload-metrics"
match.spiffe_id = "spiffe://example.org/**"
grant.audiences = ["https://metrics.example.org"]

[[rule]]
id = "k8s-payments"
match.issuer = "https://k8s.example.org"
match.claims = { "kubernetes.io.namespace" = "payments", groups = "ledger-*" }
grant.audiences = ["https://ledger.example.org"]
grant.scopes = ["ledger:read"]

[[rule]]
id = "deploy-from-main"
match.issuer = "https://token.actions.githubusercontent.com"
match.claims = { repository = "acme/deploy", ref = "refs/heads/main" }
grant.audiences = ["https://deploy.example.org"]
grant.scopes = ["deploy:write"]
grant.max_ttl = "10m"

[[rule]]
id = "delegated-ledger-write"
match.spiffe_id = "spiffe://example.org/ns/payments/sa/batch"
grant.audiences = ["https://ledger.example.org"]
grant.scopes = ["ledger:write"]
grant.actors = ["spiffe://example.org/ns/scheduler/sa/cron"]
"#;

fn policy() -> CompiledPolicy {
    CompiledPolicy::from_toml(POLICY).unwrap()
}

fn spiffe(id: &str) -> Principal {
    Principal::Spiffe(SpiffeId::parse(id).unwrap())
}

fn oidc(issuer: &str, claims: Value) -> Principal {
    let Value::Object(claims) = claims else {
        panic!("claims must be an object")
    };
    Principal::Oidc {
        issuer: issuer.to_owned(),
        subject: "subject-1".to_owned(),
        claims,
    }
}

fn k8s(namespace: &str, groups: Value) -> Principal {
    oidc(
        "https://k8s.example.org",
        json!({"kubernetes.io": {"namespace": namespace}, "groups": groups}),
    )
}

fn github(repository: &str, git_ref: &str) -> Principal {
    oidc(
        "https://token.actions.githubusercontent.com",
        json!({"repository": repository, "ref": git_ref}),
    )
}

#[derive(Debug)]
enum Want {
    /// rule, granted scopes, max_ttl, actor
    Grant(
        &'static str,
        &'static str,
        Option<u64>,
        Option<&'static str>,
    ),
    NoRule,
    Scope(&'static str),
    Actor(&'static str),
}

/// (name, principal, audience, scopes, actor, want)
type DecideCase = (
    &'static str,
    Principal,
    &'static str,
    &'static str,
    Option<&'static str>,
    Want,
);
/// (name, policy, rule named, field named, words in the message)
type ErrorCase = (
    &'static str,
    String,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);

fn run(
    policy: &CompiledPolicy,
    principal: &Principal,
    audience: &str,
    scopes: &str,
    actor: Option<&str>,
) -> Decision {
    let audience = Audience::parse(audience).unwrap();
    let scopes = ScopeSet::parse(scopes).unwrap();
    let actor = actor.map(|a| SpiffeId::parse(a).unwrap());
    policy.decide(
        principal,
        &AccessRequest {
            audience: &audience,
            scopes: &scopes,
            actor: actor.as_ref(),
        },
    )
}

fn check(name: &str, got: &Decision, want: &Want) {
    match (got, want) {
        (Decision::Grant(g), Want::Grant(rule, scopes, ttl, actor)) => {
            assert_eq!(g.rule_id, *rule, "case {name:?}: rule");
            assert_eq!(g.scopes.joined(), *scopes, "case {name:?}: scopes");
            assert_eq!(g.max_ttl, *ttl, "case {name:?}: max_ttl");
            assert_eq!(
                g.actor.as_ref().map(SpiffeId::as_str),
                *actor,
                "case {name:?}: actor"
            );
        }
        (Decision::Deny(Deny::NoRule), Want::NoRule) => {}
        (Decision::Deny(Deny::ScopeNotAllowed { rule_id }), Want::Scope(rule))
        | (Decision::Deny(Deny::ActorNotAllowed { rule_id }), Want::Actor(rule)) => {
            assert_eq!(rule_id, rule, "case {name:?}: deny rule");
        }
        _ => panic!("case {name:?}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn decide_table() {
    const LEDGER: &str = "https://ledger.example.org";
    const API: &str = "spiffe://example.org/ns/payments/sa/api";
    const EDGE: &str = "spiffe://example.org/ns/gateway/sa/edge";
    const CRON: &str = "spiffe://example.org/ns/scheduler/sa/cron";
    const BATCH: &str = "spiffe://example.org/ns/payments/sa/batch";
    let p = policy();
    // (name, principal, audience, scopes, actor, want)
    let cases: Vec<DecideCase> = vec![
        (
            "default scopes when none requested",
            spiffe(API),
            LEDGER,
            "",
            None,
            Want::Grant("payments-read-ledger", "ledger:read", Some(300), None),
        ),
        (
            "requested scope granted exactly, not the defaults",
            spiffe(API),
            LEDGER,
            "ledger:write",
            None,
            Want::Grant("payments-read-ledger", "ledger:write", Some(300), None),
        ),
        (
            "several scopes keep request order",
            spiffe(API),
            LEDGER,
            "ledger:write ledger:read",
            None,
            Want::Grant(
                "payments-read-ledger",
                "ledger:write ledger:read",
                Some(300),
                None,
            ),
        ),
        (
            "first match wins over a later broader rule",
            spiffe(API),
            LEDGER,
            "ledger:read",
            None,
            Want::Grant("payments-read-ledger", "ledger:read", Some(300), None),
        ),
        (
            "later rule grants when the first refuses the scope",
            spiffe("spiffe://example.org/ns/payments/sa/admin"),
            LEDGER,
            "ledger:admin",
            None,
            Want::Grant("payments-admin", "ledger:admin", None, None),
        ),
        (
            "later rule grants when the first lacks the audience",
            spiffe(API),
            "https://reports.example.org",
            "",
            None,
            Want::Grant("payments-anything", "", Some(3600), None),
        ),
        (
            "double star reaches deeper paths the single star does not",
            spiffe("spiffe://example.org/ns/payments/sa/api/v2"),
            LEDGER,
            "",
            None,
            Want::Grant("payments-anything", "", Some(3600), None),
        ),
        (
            "scope not allowed names the first refusing rule",
            spiffe(API),
            LEDGER,
            "ledger:delete",
            None,
            Want::Scope("payments-read-ledger"),
        ),
        (
            "one disallowed scope refuses the whole request",
            spiffe(API),
            LEDGER,
            "ledger:read ledger:delete",
            None,
            Want::Scope("payments-read-ledger"),
        ),
        (
            "unknown audience is no rule",
            spiffe(API),
            "https://unknown.example.org",
            "",
            None,
            Want::NoRule,
        ),
        (
            "audience is exact, not a prefix",
            spiffe(API),
            "https://ledger.example.org/",
            "",
            None,
            Want::NoRule,
        ),
        (
            "other trust domain is no rule",
            spiffe("spiffe://evil.org/ns/payments/sa/api"),
            LEDGER,
            "",
            None,
            Want::NoRule,
        ),
        (
            "catch-all with no scopes grants no scope",
            spiffe("spiffe://example.org/x/y/z"),
            "https://metrics.example.org",
            "",
            None,
            Want::Grant("any-workload-metrics", "", None, None),
        ),
        (
            "catch-all with no scopes refuses any scope",
            spiffe("spiffe://example.org/x"),
            "https://metrics.example.org",
            "metrics:read",
            None,
            Want::Scope("any-workload-metrics"),
        ),
        (
            "trust domain id reached by /**",
            spiffe("spiffe://example.org"),
            "https://metrics.example.org",
            "",
            None,
            Want::Grant("any-workload-metrics", "", None, None),
        ),
        (
            "listed actor is granted and carried",
            spiffe(API),
            LEDGER,
            "ledger:read",
            Some(EDGE),
            Want::Grant("payments-read-ledger", "ledger:read", Some(300), Some(EDGE)),
        ),
        (
            "unlisted actor names the first rule that refused it",
            spiffe(API),
            LEDGER,
            "ledger:read",
            Some(CRON),
            Want::Actor("payments-read-ledger"),
        ),
        (
            "rule without actors refuses any actor",
            spiffe("spiffe://example.org/x"),
            "https://metrics.example.org",
            "",
            Some(EDGE),
            Want::Actor("any-workload-metrics"),
        ),
        (
            "delegation granted by a later rule",
            spiffe(BATCH),
            LEDGER,
            "ledger:write",
            Some(CRON),
            Want::Grant("delegated-ledger-write", "ledger:write", None, Some(CRON)),
        ),
        (
            "scope refusal outranks an earlier actor refusal",
            spiffe(BATCH),
            LEDGER,
            "ledger:read ledger:write",
            Some(CRON),
            Want::Scope("payments-anything"),
        ),
        (
            "oidc nested dotted claim and array glob",
            k8s("payments", json!(["dev", "ledger-readers"])),
            LEDGER,
            "",
            None,
            Want::Grant("k8s-payments", "", None, None),
        ),
        (
            "oidc scope within rule",
            k8s("payments", json!(["ledger-readers"])),
            LEDGER,
            "ledger:read",
            None,
            Want::Grant("k8s-payments", "ledger:read", None, None),
        ),
        (
            "oidc string claim matched by glob",
            k8s("payments", json!("ledger-writers")),
            LEDGER,
            "",
            None,
            Want::Grant("k8s-payments", "", None, None),
        ),
        (
            "oidc wrong namespace",
            k8s("billing", json!(["ledger-readers"])),
            LEDGER,
            "",
            None,
            Want::NoRule,
        ),
        (
            "oidc array without a matching element",
            k8s("payments", json!(["dev", "ops"])),
            LEDGER,
            "",
            None,
            Want::NoRule,
        ),
        (
            "oidc missing claim never matches",
            oidc(
                "https://k8s.example.org",
                json!({"kubernetes.io": {"namespace": "payments"}}),
            ),
            LEDGER,
            "",
            None,
            Want::NoRule,
        ),
        (
            "oidc issuer is exact",
            oidc(
                "https://k8s.example.org/",
                json!({"kubernetes.io": {"namespace": "payments"}, "groups": "ledger-x"}),
            ),
            LEDGER,
            "",
            None,
            Want::NoRule,
        ),
        (
            "github main branch",
            github("acme/deploy", "refs/heads/main"),
            "https://deploy.example.org",
            "deploy:write",
            None,
            Want::Grant("deploy-from-main", "deploy:write", Some(600), None),
        ),
        (
            "github other branch",
            github("acme/deploy", "refs/heads/feature"),
            "https://deploy.example.org",
            "deploy:write",
            None,
            Want::NoRule,
        ),
        (
            "github other repository",
            github("acme/deploy-fork", "refs/heads/main"),
            "https://deploy.example.org",
            "",
            None,
            Want::NoRule,
        ),
        (
            "oidc principal never matches a spiffe rule",
            oidc(API, json!({"sub": API})),
            LEDGER,
            "",
            None,
            Want::NoRule,
        ),
        (
            "spiffe principal never matches an oidc rule",
            spiffe("spiffe://example.org/ns/ci"),
            "https://deploy.example.org",
            "",
            None,
            Want::NoRule,
        ),
    ];
    for (name, principal, audience, scopes, actor, want) in &cases {
        let got = run(&p, principal, audience, scopes, *actor);
        check(name, &got, want);
    }
}

#[test]
fn first_match_is_order_sensitive() {
    // Same two rules, both order: the first listed one grants.
    let a = r#"
[[rule]]
id = "short"
match.spiffe_id = "spiffe://example.org/a"
grant.audiences = ["aud"]
grant.max_ttl = "1m"
"#;
    let b = r#"
[[rule]]
id = "long"
match.spiffe_id = "spiffe://example.org/*"
grant.audiences = ["aud"]
grant.max_ttl = "30m"
"#;
    let id = spiffe("spiffe://example.org/a");
    for (name, src, want) in [
        ("exact rule first", format!("{a}{b}"), "short"),
        ("glob rule first", format!("{b}{a}"), "long"),
    ] {
        let p = CompiledPolicy::from_toml(&src).unwrap();
        assert_eq!(
            run(&p, &id, "aud", "", None).rule_id(),
            Some(want),
            "case {name:?}"
        );
    }
}

#[test]
fn empty_policy_denies_everything() {
    for (name, src) in [("empty file", ""), ("comments only", "# nothing yet\n")] {
        let p = CompiledPolicy::from_toml(src).unwrap();
        assert_eq!(p.rule_count(), 0, "case {name:?}");
        assert!(p.scopes_supported().is_empty(), "case {name:?}");
        let got = run(&p, &spiffe("spiffe://example.org/a"), "aud", "", None);
        assert_eq!(got, Decision::Deny(Deny::NoRule), "case {name:?}");
    }
    let got = run(
        &CompiledPolicy::default(),
        &spiffe("spiffe://example.org/a"),
        "aud",
        "",
        None,
    );
    assert_eq!(got, Decision::Deny(Deny::NoRule));
}

#[test]
fn metadata_helpers() {
    let p = policy();
    assert_eq!(p.rule_count(), 7);
    assert_eq!(
        p.scopes_supported(),
        [
            "deploy:write",
            "ledger:admin",
            "ledger:read",
            "ledger:write"
        ]
    );
    assert_eq!(p.rule_ids().next(), Some("payments-read-ledger"));
}

#[test]
fn claims_written_as_nested_tables_match_like_dotted_keys() {
    // TOML reads unquoted dotted keys as nested tables; the flattened path is the same.
    let forms = [
        (
            "quoted dotted key",
            r#"match.claims = { "kubernetes.io.namespace" = "payments" }"#,
        ),
        (
            "unquoted dotted key",
            r#"match.claims = { kubernetes.io.namespace = "payments" }"#,
        ),
        (
            "quoted key then nested",
            r#"match.claims = { "kubernetes.io" = { namespace = "payments" } }"#,
        ),
    ];
    let principal = oidc(
        "https://k8s",
        json!({"kubernetes.io": {"namespace": "payments"}}),
    );
    let other = oidc(
        "https://k8s",
        json!({"kubernetes.io": {"namespace": "billing"}}),
    );
    for (name, claims) in forms {
        let src = format!(
            "[[rule]]\nid = \"k\"\nmatch.issuer = \"https://k8s\"\n{claims}\ngrant.audiences = [\"aud\"]\n"
        );
        let p = CompiledPolicy::from_toml(&src).unwrap();
        assert!(
            run(&p, &principal, "aud", "", None).is_grant(),
            "case {name:?}"
        );
        assert!(
            !run(&p, &other, "aud", "", None).is_grant(),
            "case {name:?} other"
        );
    }
}

#[test]
fn sub_table_syntax_is_accepted() {
    let src = r#"
[[rule]]
id = "tables"
[rule.match]
spiffe_id = "spiffe://example.org/a"
[rule.grant]
audiences = ["aud"]
scopes = ["s"]
"#;
    let p = CompiledPolicy::from_toml(src).unwrap();
    let got = run(&p, &spiffe("spiffe://example.org/a"), "aud", "s", None);
    assert_eq!(got.rule_id(), Some("tables"));
}

const SPIFFE_RULE: &str = "[[rule]]\nid = \"r\"\nmatch.spiffe_id = \"spiffe://example.org/a\"\n";

#[test]
fn policy_errors_table() {
    // (name, policy, rule named, field named, words in the message)
    let with = |grant: &str| format!("{SPIFFE_RULE}{grant}\n");
    let aud = "grant.audiences = [\"aud\"]";
    let cases: Vec<ErrorCase> = vec![
        ("toml syntax keeps line and column", format!("{SPIFFE_RULE}grant.audiences = [\"aud\"\n"), None, None, "line 4"),
        ("unknown top-level key", "rules = []\n".to_owned(), None, None, "unknown field `rules`"),
        ("rule is not a table", "rule = [1]\n".to_owned(), None, None, "line 1"),
        ("unknown key in rule", with(&format!("{aud}\npriority = 1")), Some("r"), Some("priority"), "unknown key; expected one of id, match, grant"),
        ("unknown key in match", "[[rule]]\nid = \"r\"\nmatch.spife_id = \"spiffe://example.org/a\"\ngrant.audiences = [\"aud\"]\n".to_owned(), Some("r"), Some("match.spife_id"), "expected one of spiffe_id, issuer, claims"),
        ("unknown key in grant", with(&format!("{aud}\ngrant.max_tll = \"5m\"")), Some("r"), Some("grant.max_tll"), "unknown key"),
        ("missing id", "[[rule]]\nmatch.spiffe_id = \"spiffe://example.org/a\"\n".to_owned(), None, Some("id"), "rule #1 field id: is required"),
        ("empty id", "[[rule]]\nid = \"\"\n".to_owned(), None, Some("id"), "rule #1 field id: must not be empty"),
        ("id is not a string", "[[rule]]\nid = 7\n".to_owned(), None, Some("id"), "expected a string, found integer"),
        ("id with spaces", "[[rule]]\nid = \"read ledger\"\n".to_owned(), None, Some("id"), "printable ASCII without spaces"),
        ("duplicate id", format!("{}{}", with(aud), with(aud)), Some("r"), Some("id"), "duplicate id; rule #1 already uses it"),
        ("missing audiences", with("grant.scopes = [\"s\"]"), Some("r"), Some("grant.audiences"), "is required"),
        ("missing grant", with(""), Some("r"), Some("grant.audiences"), "is required"),
        ("empty audiences", with("grant.audiences = []"), Some("r"), Some("grant.audiences"), "is required"),
        ("audiences not a list", with("grant.audiences = \"aud\""), Some("r"), Some("grant.audiences"), "expected a list of strings, found string"),
        ("audience not a string", with("grant.audiences = [1]"), Some("r"), Some("grant.audiences"), "expected a list of strings, found integer"),
        ("bad audience", with("grant.audiences = [\"has space\"]"), Some("r"), Some("grant.audiences"), "\"has space\": audience contains characters"),
        ("bad scope", with(&format!("{aud}\ngrant.scopes = [\"a\\\"b\"]")), Some("r"), Some("grant.scopes"), "scope contains characters"),
        ("default scopes not a subset", with(&format!("{aud}\ngrant.scopes = [\"ledger:read\"]\ngrant.default_scopes = [\"ledger:admin\"]")), Some("r"), Some("grant.default_scopes"), "\"ledger:admin\" is not in grant.scopes"),
        ("default scopes without scopes", with(&format!("{aud}\ngrant.default_scopes = [\"a\"]")), Some("r"), Some("grant.default_scopes"), "is not in grant.scopes"),
        ("bad duration", with(&format!("{aud}\ngrant.max_ttl = \"5x\"")), Some("r"), Some("grant.max_ttl"), "\"5x\" is not a duration; write e.g. \"5m\""),
        ("duration without unit", with(&format!("{aud}\ngrant.max_ttl = \"300\"")), Some("r"), Some("grant.max_ttl"), "is not a duration"),
        ("duration as a number", with(&format!("{aud}\ngrant.max_ttl = 300")), Some("r"), Some("grant.max_ttl"), "expected a string, found integer"),
        ("ttl over the 1h ceiling", with(&format!("{aud}\ngrant.max_ttl = \"61m\"")), Some("r"), Some("grant.max_ttl"), "hard ceiling \"1h\""),
        ("ttl of a day", with(&format!("{aud}\ngrant.max_ttl = \"1d\"")), Some("r"), Some("grant.max_ttl"), "hard ceiling"),
        ("ttl of zero", with(&format!("{aud}\ngrant.max_ttl = \"0s\"")), Some("r"), Some("grant.max_ttl"), "outside the allowed range"),
        ("wildcard in trust domain", format!("[[rule]]\nid = \"r\"\nmatch.spiffe_id = \"spiffe://*.example.org/a\"\n{aud}\n"), Some("r"), Some("match.spiffe_id"), "trust domain is never a pattern"),
        ("bad pattern", format!("[[rule]]\nid = \"r\"\nmatch.spiffe_id = \"spiffe://example.org/a/\"\n{aud}\n"), Some("r"), Some("match.spiffe_id"), "must not end with '/'"),
        ("double star not last", format!("[[rule]]\nid = \"r\"\nmatch.spiffe_id = \"spiffe://example.org/**/a\"\n{aud}\n"), Some("r"), Some("match.spiffe_id"), "final segment"),
        ("claims without issuer", format!("[[rule]]\nid = \"r\"\nmatch.claims = {{ a = \"b\" }}\n{aud}\n"), Some("r"), Some("match.claims"), "add match.issuer"),
        ("claims with spiffe_id", format!("{SPIFFE_RULE}match.claims = {{ a = \"b\" }}\n{aud}\n"), Some("r"), Some("match.claims"), "only applies to OIDC tokens"),
        ("both spiffe_id and issuer", format!("{SPIFFE_RULE}match.issuer = \"https://i\"\n{aud}\n"), Some("r"), Some("match"), "exactly one of"),
        ("neither spiffe_id nor issuer", format!("[[rule]]\nid = \"r\"\n{aud}\n"), Some("r"), Some("match"), "exactly one of"),
        ("match not a table", format!("[[rule]]\nid = \"r\"\nmatch = \"spiffe://example.org/a\"\n{aud}\n"), Some("r"), Some("match"), "expected a table, found string"),
        ("empty issuer", format!("[[rule]]\nid = \"r\"\nmatch.issuer = \"\"\n{aud}\n"), Some("r"), Some("match.issuer"), "not an issuer URL"),
        ("claim value not a string", format!("[[rule]]\nid = \"r\"\nmatch.issuer = \"https://i\"\nmatch.claims = {{ run_attempt = 3 }}\n{aud}\n"), Some("r"), Some("match.claims.\"run_attempt\""), "expected a string pattern, found integer"),
        ("claim empty nested table", format!("[[rule]]\nid = \"r\"\nmatch.issuer = \"https://i\"\nmatch.claims = {{ a = {{}} }}\n{aud}\n"), Some("r"), Some("match.claims.\"a\""), "expected a string pattern, found table"),
        ("claim path with empty segment", format!("[[rule]]\nid = \"r\"\nmatch.issuer = \"https://i\"\nmatch.claims = {{ \"a..b\" = \"x\" }}\n{aud}\n"), Some("r"), Some("match.claims.\"a..b\""), "empty segments"),
        ("actor pattern is not an exact id", with(&format!("{aud}\ngrant.actors = [\"spiffe://example.org/ns/*\"]")), Some("r"), Some("grant.actors"), "actors are exact IDs"),
    ];
    for (name, src, rule, field, words) in cases {
        let err = match CompiledPolicy::from_toml(&src) {
            Ok(_) => panic!("case {name:?}: compiled but should not"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.contains(words), "case {name:?}: {msg}");
        assert_eq!(err.rule(), rule, "case {name:?}: {msg}");
        assert_eq!(err.field(), field, "case {name:?}: {msg}");
        if let (Some(rule), Some(field)) = (rule, field) {
            let prefix = format!("rule {rule:?} field {field}: ");
            assert!(
                msg.starts_with(&prefix),
                "case {name:?}: {msg:?} should start {prefix:?}"
            );
        }
    }
}

#[test]
fn bad_duration_message_is_the_documented_one() {
    let src = "[[rule]]\nid = \"payments\"\nmatch.spiffe_id = \"spiffe://example.org/a\"\ngrant.audiences = [\"aud\"]\ngrant.max_ttl = \"5x\"\n";
    let msg = CompiledPolicy::from_toml(src).unwrap_err().to_string();
    assert_eq!(
        msg,
        r#"rule "payments" field grant.max_ttl: "5x" is not a duration; write e.g. "5m""#
    );
}

#[test]
fn deploy_policy_loads_and_decides_as_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml");
    let p = CompiledPolicy::load(&path).unwrap();
    assert_eq!(
        p.rule_ids().collect::<Vec<_>>(),
        ["payments-read-ledger", "deploy-from-main"]
    );
    assert_eq!(
        p.scopes_supported(),
        ["deploy:write", "ledger:read", "ledger:write"]
    );
    let api = spiffe("spiffe://example.org/ns/payments/sa/api");
    check(
        "payments default",
        &run(&p, &api, "https://ledger.example.org", "", None),
        &Want::Grant("payments-read-ledger", "ledger:read", Some(300), None),
    );
    check(
        "deploy from main",
        &run(
            &p,
            &github("acme/deploy", "refs/heads/main"),
            "https://deploy.example.org",
            "deploy:write",
            None,
        ),
        &Want::Grant("deploy-from-main", "deploy:write", Some(600), None),
    );
    check(
        "no delegation in the sample",
        &run(
            &p,
            &api,
            "https://ledger.example.org",
            "",
            Some("spiffe://example.org/ns/gateway/sa/edge"),
        ),
        &Want::Actor("payments-read-ledger"),
    );
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-policy.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nid = \"x\"\nmatch.spiffe_id = \"spiffe://e.org/a\"\n",
    )
    .unwrap();
    let err = CompiledPolicy::load(&bad).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad-policy.toml"), "{msg}");
    assert!(msg.contains("rule \"x\" field grant.audiences"), "{msg}");
    assert_eq!(err.rule(), Some("x"));

    let missing = dir.path().join("missing.toml");
    let msg = CompiledPolicy::load(&missing).unwrap_err().to_string();
    assert!(msg.starts_with("cannot read policy file"), "{msg}");
    assert!(msg.contains("missing.toml"), "{msg}");
}

#[test]
fn explain_and_check_report_table() {
    let p = policy();
    let api = spiffe("spiffe://example.org/ns/payments/sa/api");
    let edge = "spiffe://example.org/ns/gateway/sa/edge";
    let cron = "spiffe://example.org/ns/scheduler/sa/cron";
    // (name, principal, audience, scopes, actor, explain, check_report)
    let cases = [
        (
            "grant with scope",
            api.clone(),
            "https://ledger.example.org",
            "",
            None,
            r#"GRANT by rule "payments-read-ledger": audience https://ledger.example.org, scope "ledger:read", max_ttl 5m"#,
            r#"GRANT by rule "payments-read-ledger": audience https://ledger.example.org, scope "ledger:read", max_ttl 5m"#,
        ),
        (
            "grant with actor",
            api.clone(),
            "https://ledger.example.org",
            "ledger:read ledger:write",
            Some(edge),
            r#"GRANT by rule "payments-read-ledger": audience https://ledger.example.org, scope "ledger:read ledger:write", max_ttl 5m, actor spiffe://example.org/ns/gateway/sa/edge"#,
            r#"GRANT by rule "payments-read-ledger": audience https://ledger.example.org, scope "ledger:read ledger:write", max_ttl 5m, actor spiffe://example.org/ns/gateway/sa/edge"#,
        ),
        (
            "grant without scope or ttl",
            spiffe("spiffe://example.org/x"),
            "https://metrics.example.org",
            "",
            None,
            r#"GRANT by rule "any-workload-metrics": audience https://metrics.example.org, no scope, max_ttl server default"#,
            r#"GRANT by rule "any-workload-metrics": audience https://metrics.example.org, no scope, max_ttl server default"#,
        ),
        (
            "no rule",
            api.clone(),
            "https://unknown.example.org",
            "",
            None,
            "DENY (invalid_target): no rule lets this identity reach this audience",
            "DENY (invalid_target): no rule lets spiffe://example.org/ns/payments/sa/api reach https://unknown.example.org",
        ),
        (
            "no rule for oidc",
            github("acme/x", "refs/heads/main"),
            "https://deploy.example.org",
            "",
            None,
            "DENY (invalid_target): no rule lets this identity reach this audience",
            "DENY (invalid_target): no rule lets https://token.actions.githubusercontent.com#subject-1 reach https://deploy.example.org",
        ),
        (
            "scope",
            api.clone(),
            "https://ledger.example.org",
            "ledger:delete",
            None,
            r#"DENY (invalid_scope): rule "payments-read-ledger" lets this identity reach this audience but not every requested scope"#,
            r#"DENY (invalid_scope): rule "payments-read-ledger" lets spiffe://example.org/ns/payments/sa/api reach https://ledger.example.org but not every scope of "ledger:delete""#,
        ),
        (
            "actor",
            api.clone(),
            "https://ledger.example.org",
            "",
            Some(cron),
            r#"DENY (invalid_grant): rule "payments-read-ledger" allows the request but does not list the actor in grant.actors"#,
            r#"DENY (invalid_grant): rule "payments-read-ledger" lets spiffe://example.org/ns/payments/sa/api reach https://ledger.example.org but does not list actor spiffe://example.org/ns/scheduler/sa/cron in grant.actors"#,
        ),
    ];
    for (name, principal, audience, scopes, actor, want_explain, want_report) in cases {
        let aud = Audience::parse(audience).unwrap();
        let scopes = ScopeSet::parse(scopes).unwrap();
        let actor = actor.map(|a| SpiffeId::parse(a).unwrap());
        let req = AccessRequest {
            audience: &aud,
            scopes: &scopes,
            actor: actor.as_ref(),
        };
        let decision = p.decide(&principal, &req);
        assert_eq!(explain(&decision), want_explain, "case {name:?}: explain");
        assert_eq!(
            check_report(&principal, &req, &decision),
            want_report,
            "case {name:?}: report"
        );
    }
}

#[test]
fn deny_reasons_and_codes() {
    let r = |s: &str| s.to_owned();
    // (deny, reason, oauth error, rule)
    let cases = [
        (Deny::NoRule, "no_rule", "invalid_target", None),
        (
            Deny::ScopeNotAllowed { rule_id: r("a") },
            "scope_not_allowed",
            "invalid_scope",
            Some("a"),
        ),
        (
            Deny::ActorNotAllowed { rule_id: r("b") },
            "actor_not_allowed",
            "invalid_grant",
            Some("b"),
        ),
    ];
    for (deny, reason, code, rule) in cases {
        assert_eq!(deny.reason(), reason);
        assert_eq!(deny.oauth_error(), code);
        assert_eq!(deny.rule_id(), rule);
    }
}

#[test]
fn granted_scopes_are_domain_scopes() {
    let p = policy();
    let Decision::Grant(g) = run(
        &p,
        &spiffe("spiffe://example.org/ns/payments/sa/api"),
        "https://ledger.example.org",
        "",
        None,
    ) else {
        panic!("expected a grant")
    };
    assert!(g.scopes.contains(&Scope::parse("ledger:read").unwrap()));
    assert_eq!(g.audience.as_str(), "https://ledger.example.org");
}

/// One OIDC rule with `grant.subject = template` on issuer `https://k8s`.
fn subject_rule(id: &str, claims: &str, template: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\nmatch.issuer = \"https://k8s\"\nmatch.claims = {{ {claims} }}\ngrant.audiences = [\"aud\"]\ngrant.subject = {template:?}\n"
    )
}

#[test]
fn subject_template_errors_table() {
    const K8S: &str =
        "[[rule]]\nid = \"r\"\nmatch.issuer = \"https://k8s\"\ngrant.audiences = [\"aud\"]\n";
    let with = |template: &str| format!("{K8S}grant.subject = {template:?}\n");
    let long = format!("x{}", "{sub}".repeat(103));
    // (name, policy, words in the message)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "spiffe rule",
            format!("{SPIFFE_RULE}grant.audiences = [\"aud\"]\ngrant.subject = \"x\"\n"),
            "applies only to OIDC rules",
        ),
        (
            "not a string",
            format!("{K8S}grant.subject = 1\n"),
            "expected a string, found integer",
        ),
        ("empty", with(""), "must not be empty"),
        ("unclosed", with("gha:{repository"), "is not closed"),
        ("nested open", with("gha:{repo{sitory}"), "is not closed"),
        ("unmatched close", with("gha:repository}"), "unmatched '}'"),
        ("empty placeholder", with("gha:{}"), "empty placeholder"),
        ("leading dot", with("{.sub}"), "empty segments"),
        ("double dot", with("{kubernetes..io}"), "empty segments"),
        ("trailing dot", with("{sub.}"), "empty segments"),
        (
            "spiffe prefix",
            with("spiffe://example.org/{sub}"),
            "must never look like a SPIFFE ID",
        ),
        (
            "spiffe prefix any case",
            with("SpIfFe:{sub}"),
            "must never look like a SPIFFE ID",
        ),
        (
            "url in the literal",
            with("https://token.actions.githubusercontent.com#{sub}"),
            "must not look like a URL",
        ),
        ("too long", with(&long), "over the 512-byte limit"),
        ("literal space", with("gha {sub}"), "whitespace or control"),
        ("literal tab", with("gha:\t{sub}"), "whitespace or control"),
    ];
    for (name, src, words) in cases {
        let err = match CompiledPolicy::from_toml(&src) {
            Ok(_) => panic!("case {name:?}: compiled but should not"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.contains(words), "case {name:?}: {msg}");
        assert_eq!(err.rule(), Some("r"), "case {name:?}: {msg}");
        assert_eq!(err.field(), Some("grant.subject"), "case {name:?}: {msg}");
    }
    // Boundaries that must still compile.
    for (name, template) in [
        ("escaped braces", "{{lit}}:{sub}"),
        ("no placeholder", "ci-deployer"),
        ("exactly 512 bytes", &"y".repeat(512)),
        ("spiffe without colon", "spiffe-{sub}"),
        ("placeholder first", "{sub}"),
    ] {
        assert!(
            CompiledPolicy::from_toml(&with(template)).is_ok(),
            "case {name:?}"
        );
    }
}

#[test]
fn subject_template_rendering_table() {
    let k8s_claims = json!({
        "sub": "system:serviceaccount:payments:api",
        "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api", "uid": "1"}},
        "run_attempt": 3,
        "ratio": 0.5,
        "verified": true,
        "groups": ["a"],
        "nothing": null,
        "evil": "spiffe://example.org/ns/payments/sa/api",
        "evil_upper": "SPIFFE:x",
        "spaced": "a b",
        "newline": "a\nb",
        "huge": "z".repeat(1020),
        "fe": "fe://example.org/x",
        "other_issuer": "https://token.actions.githubusercontent.com#repo:victim/app",
        "colon_slash": "a:/",
    });
    // (name, template, want: Some(subject) or None for "does not select")
    let cases: Vec<(&str, &str, Option<String>)> = vec![
        (
            "nested k8s claims under the dotted key",
            "system:serviceaccount:{kubernetes.io.namespace}:{kubernetes.io.serviceaccount.name}",
            Some("system:serviceaccount:payments:api".to_owned()),
        ),
        (
            "number as JSON text",
            "attempt-{run_attempt}",
            Some("attempt-3".to_owned()),
        ),
        ("float as JSON text", "r{ratio}", Some("r0.5".to_owned())),
        (
            "bool as JSON text",
            "v={verified}",
            Some("v=true".to_owned()),
        ),
        (
            "escaped braces",
            "{{{sub}}}",
            Some("{system:serviceaccount:payments:api}".to_owned()),
        ),
        (
            "no placeholder",
            "ci-deployer",
            Some("ci-deployer".to_owned()),
        ),
        ("missing claim", "x:{environment}", None),
        ("missing nested claim", "x:{kubernetes.io.pod}", None),
        ("array", "x:{groups}", None),
        ("object", "x:{kubernetes.io}", None),
        ("null", "x:{nothing}", None),
        ("injected spiffe id", "{evil}", None),
        ("injected spiffe prefix any case", "{evil_upper}", None),
        ("spiffe prefix built across pieces", "spif{fe}", None),
        ("another issuer's default subject", "{other_issuer}", None),
        ("url built across pieces", "x-{colon_slash}/b", None),
        ("whitespace from a claim", "x:{spaced}", None),
        ("control char from a claim", "x:{newline}", None),
        ("over 1024 bytes", "abcde:{huge}", None),
        (
            "1024 bytes exactly",
            "abcd{huge}",
            Some(format!("abcd{}", "z".repeat(1020))),
        ),
    ];
    let principal = oidc("https://k8s", k8s_claims);
    for (name, template, want) in cases {
        let p = CompiledPolicy::from_toml(&subject_rule("mapped", "sub = \"*\"", template))
            .unwrap_or_else(|e| panic!("case {name:?}: {e}"));
        match (run(&p, &principal, "aud", "", None), want) {
            (Decision::Grant(g), Some(want)) => {
                assert_eq!(g.subject.as_deref(), Some(want.as_str()), "case {name:?}")
            }
            (Decision::Deny(Deny::NoRule), None) => {}
            (got, want) => panic!("case {name:?}: got {got:?}, want subject {want:?}"),
        }
    }
}

#[test]
fn unrenderable_subject_falls_through_to_the_next_rule() {
    let src = format!(
        "{}{}",
        subject_rule("mapped", "sub = \"*\"", "{repository}:{ref}"),
        "[[rule]]\nid = \"fallback\"\nmatch.issuer = \"https://k8s\"\ngrant.audiences = [\"aud\"]\n"
    );
    let p = CompiledPolicy::from_toml(&src).unwrap();
    // (name, claims, granting rule, subject)
    let cases = [
        (
            "renders",
            json!({"sub": "s", "repository": "acme/deploy", "ref": "refs/heads/main"}),
            "mapped",
            Some("acme/deploy:refs/heads/main"),
        ),
        (
            "missing claim skips the rule",
            json!({"sub": "s", "repository": "acme/deploy"}),
            "fallback",
            None,
        ),
        (
            "injected spiffe id skips the rule",
            json!({"sub": "s", "repository": "spiffe://example.org/ns/payments/sa/api", "ref": "x"}),
            "fallback",
            None,
        ),
        (
            "number claim renders",
            json!({"sub": "s", "repository": 42, "ref": "x"}),
            "mapped",
            Some("42:x"),
        ),
    ];
    for (name, claims, rule, subject) in cases {
        let Decision::Grant(g) = run(&p, &oidc("https://k8s", claims), "aud", "", None) else {
            panic!("case {name:?}: expected a grant")
        };
        assert_eq!(g.rule_id, rule, "case {name:?}");
        assert_eq!(g.subject.as_deref(), subject, "case {name:?}");
    }
    // A rule that does not select because of its template is not "the closest miss":
    // with no other rule the answer is NoRule, not ScopeNotAllowed.
    let only =
        CompiledPolicy::from_toml(&subject_rule("mapped", "sub = \"*\"", "{missing}")).unwrap();
    let got = run(
        &only,
        &oidc("https://k8s", json!({"sub": "s"})),
        "aud",
        "x:y",
        None,
    );
    assert_eq!(got, Decision::Deny(Deny::NoRule));
}

#[test]
fn default_subject_is_none_and_reports_show_the_mapped_one() {
    let p = policy();
    let Decision::Grant(g) = run(
        &p,
        &github("acme/deploy", "refs/heads/main"),
        "https://deploy.example.org",
        "",
        None,
    ) else {
        panic!("expected a grant")
    };
    assert_eq!(g.subject, None);
    assert!(!explain(&Decision::Grant(g)).contains("subject"));

    let p = CompiledPolicy::from_toml(&subject_rule(
        "k8s",
        "\"kubernetes.io.namespace\" = \"payments\"",
        "k8s:{kubernetes.io.namespace}:{kubernetes.io.serviceaccount.name}",
    ))
    .unwrap();
    let principal = oidc(
        "https://k8s",
        json!({"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}}),
    );
    let aud = Audience::parse("aud").unwrap();
    let scopes = ScopeSet::parse("").unwrap();
    let req = AccessRequest {
        audience: &aud,
        scopes: &scopes,
        actor: None,
    };
    let decision = p.decide(&principal, &req);
    let want = r#"GRANT by rule "k8s": audience aud, no scope, max_ttl server default, subject k8s:payments:api"#;
    assert_eq!(explain(&decision), want);
    assert_eq!(check_report(&principal, &req, &decision), want);
}
