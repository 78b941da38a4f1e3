//! Policy lint: each code fires on the rule it describes and stays quiet on a properly
//! pinned one. Table-driven; each case named.

use super::*;

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const GITLAB: &str = "https://gitlab.com";
/// The contract's default `tokens.max_ttl`.
const MAX_TTL: u64 = 900;

fn oidc_rule(issuer: &str, claims: &str) -> String {
    let claims = if claims.is_empty() {
        String::new()
    } else {
        format!("match.claims = {{ {claims} }}\n")
    };
    format!(
        "[[rule]]\nid = \"r\"\nmatch.issuer = \"{issuer}\"\n{claims}grant.audiences = [\"aud\"]\n"
    )
}

fn spiffe_rule(pattern: &str) -> String {
    format!("[[rule]]\nid = \"r\"\nmatch.spiffe_id = \"{pattern}\"\ngrant.audiences = [\"aud\"]\n")
}

fn codes(src: &str, max_ttl: u64) -> Vec<&'static str> {
    let p = CompiledPolicy::from_toml(src).unwrap_or_else(|e| panic!("{e}\n{src}"));
    p.lint(max_ttl).into_iter().map(|w| w.code).collect()
}

#[test]
fn lint_table() {
    let ttl = |t: &str| {
        format!(
            "[[rule]]\nid = \"r\"\nmatch.spiffe_id = \"spiffe://example.org/a\"\ngrant.audiences = [\"aud\"]\ngrant.max_ttl = \"{t}\"\n"
        )
    };
    // (name, policy, expected codes in order)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        // GitHub Actions: the tenant is the repository owner.
        (
            "github owner pinned",
            oidc_rule(GITHUB, r#"repository_owner = "acme""#),
            vec![],
        ),
        (
            "github repository any",
            oidc_rule(GITHUB, r#"repository = "*""#),
            vec!["unpinned_tenant"],
        ),
        (
            "github repository owner glob pinned",
            oidc_rule(GITHUB, r#"repository = "acme/*""#),
            vec![],
        ),
        (
            "github repository any owner",
            oidc_rule(GITHUB, r#"repository = "*/deploy""#),
            vec!["unpinned_tenant"],
        ),
        (
            "github repository owner prefix glob",
            oidc_rule(GITHUB, r#"repository = "acme*/deploy""#),
            vec!["unpinned_tenant"],
        ),
        (
            "github repository exact",
            oidc_rule(GITHUB, r#"repository = "acme/deploy""#),
            vec![],
        ),
        (
            "github owner glob",
            oidc_rule(GITHUB, r#"repository_owner = "acme-*""#),
            vec!["unpinned_tenant"],
        ),
        (
            "github owner id",
            oidc_rule(GITHUB, r#"repository_owner_id = "123456""#),
            vec![],
        ),
        (
            "github repository id",
            oidc_rule(GITHUB, r#"repository_id = "987""#),
            vec![],
        ),
        (
            "github sub pinned",
            oidc_rule(GITHUB, r#"sub = "repo:acme/deploy:ref:refs/heads/main""#),
            vec![],
        ),
        (
            "github sub any repo of owner",
            oidc_rule(GITHUB, r#"sub = "repo:acme/*""#),
            vec![],
        ),
        (
            "github sub any owner",
            oidc_rule(GITHUB, r#"sub = "repo:*/deploy:*""#),
            vec!["unpinned_tenant"],
        ),
        (
            "github sub without prefix",
            oidc_rule(GITHUB, r#"sub = "*:ref:refs/heads/main""#),
            vec!["unpinned_tenant"],
        ),
        (
            "github only ref",
            oidc_rule(GITHUB, r#"ref = "refs/heads/main""#),
            vec!["unpinned_tenant"],
        ),
        (
            "github no claims",
            oidc_rule(GITHUB, ""),
            vec!["unpinned_tenant", "unpinned_issuer"],
        ),
        (
            "github pinned among other claims",
            oidc_rule(
                GITHUB,
                r#"ref = "refs/heads/*", repository = "acme/deploy""#,
            ),
            vec![],
        ),
        // GitLab: the tenant is the top-level group.
        (
            "gitlab namespace pinned",
            oidc_rule(GITLAB, r#"namespace_path = "acme""#),
            vec![],
        ),
        (
            "gitlab subgroup glob pinned",
            oidc_rule(GITLAB, r#"namespace_path = "acme/*""#),
            vec![],
        ),
        (
            "gitlab namespace glob",
            oidc_rule(GITLAB, r#"namespace_path = "*""#),
            vec!["unpinned_tenant"],
        ),
        (
            "gitlab project path pinned",
            oidc_rule(GITLAB, r#"project_path = "acme/deploy""#),
            vec![],
        ),
        (
            "gitlab project path any group",
            oidc_rule(GITLAB, r#"project_path = "*/deploy""#),
            vec!["unpinned_tenant"],
        ),
        (
            "gitlab project id",
            oidc_rule(GITLAB, r#"project_id = "42""#),
            vec![],
        ),
        (
            "gitlab namespace id",
            oidc_rule(GITLAB, r#"namespace_id = "7""#),
            vec![],
        ),
        (
            "gitlab sub pinned",
            oidc_rule(
                GITLAB,
                r#"sub = "project_path:acme/deploy:ref_type:branch:ref:main""#,
            ),
            vec![],
        ),
        (
            "gitlab sub any group",
            oidc_rule(GITLAB, r#"sub = "project_path:*""#),
            vec!["unpinned_tenant"],
        ),
        (
            "gitlab only ref",
            oidc_rule(GITLAB, r#"ref = "main""#),
            vec!["unpinned_tenant"],
        ),
        // A single-tenant issuer needs no tenant pin, but still some claim.
        (
            "own k8s issuer with claims",
            oidc_rule(
                "https://k8s.example.org",
                r#""kubernetes.io.namespace" = "payments""#,
            ),
            vec![],
        ),
        (
            "own k8s issuer without claims",
            oidc_rule("https://k8s.example.org", ""),
            vec!["unpinned_issuer"],
        ),
        (
            "issuer is compared exactly",
            oidc_rule("https://gitlab.example.org", r#"ref = "main""#),
            vec![],
        ),
        // SPIFFE patterns.
        (
            "whole trust domain",
            spiffe_rule("spiffe://example.org/**"),
            vec!["trust_domain_wide"],
        ),
        (
            "any first segment then everything",
            spiffe_rule("spiffe://example.org/*/**"),
            vec!["trust_domain_wide"],
        ),
        (
            "two any segments then everything",
            spiffe_rule("spiffe://example.org/*/*/**"),
            vec!["trust_domain_wide"],
        ),
        (
            "namespace subtree",
            spiffe_rule("spiffe://example.org/ns/payments/**"),
            vec![],
        ),
        (
            "any then literal",
            spiffe_rule("spiffe://example.org/*/payments/**"),
            vec![],
        ),
        (
            "one any segment",
            spiffe_rule("spiffe://example.org/ns/*"),
            vec![],
        ),
        ("exact id", spiffe_rule("spiffe://example.org/ns/a"), vec![]),
        // TTL against the global maximum.
        ("ttl above global", ttl("30m"), vec!["ttl_above_global_max"]),
        ("ttl at global", ttl("15m"), vec![]),
        ("ttl below global", ttl("5m"), vec![]),
    ];
    for (name, src, want) in cases {
        assert_eq!(codes(&src, MAX_TTL), want, "case {name:?}");
    }
}

#[test]
fn warnings_name_the_rule_and_the_fix() {
    let p = CompiledPolicy::from_toml(&oidc_rule(GITHUB, r#"repository = "*""#)).unwrap();
    let [w] = p
        .lint(MAX_TTL)
        .try_into()
        .unwrap_or_else(|v| panic!("{v:?}"));
    let line = w.to_string();
    assert!(
        line.starts_with(r#"warning[unpinned_tenant] rule "r": "#),
        "{line}"
    );
    assert!(line.contains(GITHUB), "{line}");
    assert!(
        line.contains(r#"match.claims.repository_owner = "acme""#),
        "{line}"
    );

    let src = "[[rule]]\nid = \"slow\"\nmatch.spiffe_id = \"spiffe://example.org/a\"\ngrant.audiences = [\"aud\"]\ngrant.max_ttl = \"1h\"\n";
    let p = CompiledPolicy::from_toml(src).unwrap();
    let [w] = p.lint(600).try_into().unwrap_or_else(|v| panic!("{v:?}"));
    assert_eq!(
        w.to_string(),
        r#"warning[ttl_above_global_max] rule "slow": grant.max_ttl 1h is above the global tokens.max_ttl 10m; tokens will be capped at 10m, so lower grant.max_ttl or raise tokens.max_ttl"#
    );
    // The same rule is clean when the server allows an hour.
    assert!(p.lint(3600).is_empty());

    let p = CompiledPolicy::from_toml(&spiffe_rule("spiffe://example.org/**")).unwrap();
    let [w] = p
        .lint(MAX_TTL)
        .try_into()
        .unwrap_or_else(|v| panic!("{v:?}"));
    assert!(w.message.contains("trust domain example.org"), "{w}");
}

#[test]
fn warnings_come_in_rule_order() {
    let src = format!(
        "{}{}",
        spiffe_rule("spiffe://example.org/**").replace("\"r\"", "\"first\""),
        oidc_rule(GITHUB, "").replace("\"r\"", "\"second\""),
    );
    let p = CompiledPolicy::from_toml(&src).unwrap();
    let got: Vec<(String, &str)> = p
        .lint(MAX_TTL)
        .into_iter()
        .map(|w| (w.rule_id, w.code))
        .collect();
    assert_eq!(
        got,
        [
            ("first".to_owned(), "trust_domain_wide"),
            ("second".to_owned(), "unpinned_tenant"),
            ("second".to_owned(), "unpinned_issuer"),
        ]
    );
    assert_eq!(log_lint_warnings(&p, MAX_TTL), 3);
}

#[test]
fn deploy_sample_policy_is_lint_clean() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml");
    let p = CompiledPolicy::load(&path).unwrap();
    assert_eq!(p.lint(MAX_TTL), []);
}
