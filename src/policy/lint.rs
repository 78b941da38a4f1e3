//! Policy lint (`tessera policy check --lint`, and warnings at every load): rules that
//! compile but probably trust more than their author meant. Warnings, never errors —
//! the server runs the policy as written; `--strict` lets CI refuse them.

use super::{CompiledPolicy, CompiledRule, Matcher};
use crate::domain::format_duration;
use std::fmt;

/// One finding about one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LintWarning {
    pub rule_id: String,
    /// Stable code for scripts: `unpinned_tenant`, `unpinned_issuer`,
    /// `trust_domain_wide`, `ttl_above_global_max`.
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for LintWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "warning[{}] rule {:?}: {}",
            self.code, self.rule_id, self.message
        )
    }
}

/// How the tenant is read from one claim of a multi-tenant issuer's tokens.
#[derive(Clone, Copy)]
enum Tenant {
    /// The whole value names the tenant (an owner name or a numeric id).
    Whole,
    /// The tenant is the part before the first `/` (`owner/repo`, `group/project`).
    BeforeSlash,
    /// The tenant follows this prefix, up to the first `/` (the `sub` claim).
    AfterPrefix(&'static str),
}

/// An issuer that signs tokens for many unrelated tenants: any of them can mint a token
/// our rule accepts unless a claim pins the tenant.
struct MultiTenantIssuer {
    issuer: &'static str,
    /// Who the tenants are, for the message.
    tenants: &'static str,
    /// Claims that pin the tenant when their pattern's tenant part has no wildcard.
    pins: &'static [(&'static str, Tenant)],
    /// The suggested fix.
    example: &'static str,
    /// Every accepted pin, for the message.
    alternatives: &'static str,
}

const MULTI_TENANT_ISSUERS: &[MultiTenantIssuer] = &[
    MultiTenantIssuer {
        issuer: "https://token.actions.githubusercontent.com",
        tenants: "every GitHub repository's Actions workflows",
        pins: &[
            ("repository", Tenant::BeforeSlash),
            ("repository_owner", Tenant::Whole),
            ("repository_id", Tenant::Whole),
            ("repository_owner_id", Tenant::Whole),
            ("sub", Tenant::AfterPrefix("repo:")),
        ],
        example: "match.claims.repository_owner = \"acme\"",
        alternatives: "repository = \"acme/*\", repository_owner_id, repository_id, or sub = \"repo:acme/...\"",
    },
    MultiTenantIssuer {
        issuer: "https://gitlab.com",
        tenants: "every gitlab.com project's CI jobs",
        pins: &[
            ("namespace_path", Tenant::BeforeSlash),
            ("namespace_id", Tenant::Whole),
            ("project_path", Tenant::BeforeSlash),
            ("project_id", Tenant::Whole),
            ("sub", Tenant::AfterPrefix("project_path:")),
        ],
        example: "match.claims.namespace_path = \"acme\"",
        alternatives: "project_path = \"acme/*\", namespace_id, project_id, or sub = \"project_path:acme/...\"",
    },
];

impl CompiledPolicy {
    /// Every warning for every rule, in rule order. `global_max_ttl_secs` is the server's
    /// `tokens.max_ttl`.
    pub fn lint(&self, global_max_ttl_secs: u64) -> Vec<LintWarning> {
        let mut out = Vec::new();
        for rule in &self.rules {
            lint_rule(rule, global_max_ttl_secs, &mut out);
        }
        out
    }
}

/// Logs each warning at `warn` (called at start-up and on every reload) and returns how
/// many there were.
pub fn log_lint_warnings(policy: &CompiledPolicy, global_max_ttl_secs: u64) -> usize {
    let warnings = policy.lint(global_max_ttl_secs);
    for w in &warnings {
        tracing::warn!(rule = %w.rule_id, code = w.code, "policy lint: {}", w.message);
    }
    warnings.len()
}

fn lint_rule(rule: &CompiledRule, global_max_ttl: u64, out: &mut Vec<LintWarning>) {
    let mut warn = |code: &'static str, message: String| {
        out.push(LintWarning {
            rule_id: rule.id.clone(),
            code,
            message,
        });
    };
    match &rule.matcher {
        Matcher::Oidc { issuer, claims } => {
            if let Some(mt) = MULTI_TENANT_ISSUERS.iter().find(|mt| mt.issuer == issuer) {
                let pinned = claims.iter().any(|m| {
                    mt.pins.iter().any(|(claim, tenant)| {
                        m.path() == *claim && pins_tenant(m.glob().as_str(), *tenant)
                    })
                });
                if !pinned {
                    warn(
                        "unpinned_tenant",
                        format!(
                            "issuer {issuer} signs tokens for {}, and no claim pins the tenant, so any of them can use this rule; add {} (or pin {} without a wildcard in the owner part)",
                            mt.tenants, mt.example, mt.alternatives
                        ),
                    );
                }
            }
            if claims.is_empty() {
                warn(
                    "unpinned_issuer",
                    format!(
                        "no match.claims, so every token issuer {issuer} signs for this server is accepted; add match.claims naming the workloads, like match.claims.sub = \"...\""
                    ),
                );
            }
        }
        Matcher::Spiffe(pattern) if pattern.spans_trust_domain() => {
            warn(
                "trust_domain_wide",
                format!(
                    "match.spiffe_id {:?} matches every workload in trust domain {}; narrow it to the workloads that need this grant, like \"spiffe://{}/ns/payments/**\"",
                    pattern.as_str(),
                    pattern.trust_domain(),
                    pattern.trust_domain()
                ),
            );
        }
        Matcher::Spiffe(_) => {}
    }
    if let Some(ttl) = rule.max_ttl
        && ttl > global_max_ttl
    {
        warn(
            "ttl_above_global_max",
            format!(
                "grant.max_ttl {} is above the global tokens.max_ttl {}; tokens will be capped at {}, so lower grant.max_ttl or raise tokens.max_ttl",
                format_duration(ttl),
                format_duration(global_max_ttl),
                format_duration(global_max_ttl)
            ),
        );
    }
}

/// Whether a claim pattern fixes the tenant: its tenant part holds no `*`. A pattern
/// for `sub` that does not start with the literal prefix pins nothing.
fn pins_tenant(pattern: &str, tenant: Tenant) -> bool {
    let part = match tenant {
        Tenant::Whole => pattern,
        Tenant::BeforeSlash => before_slash(pattern),
        Tenant::AfterPrefix(prefix) => match pattern.strip_prefix(prefix) {
            Some(rest) => before_slash(rest),
            None => return false,
        },
    };
    !part.is_empty() && !part.contains('*')
}

fn before_slash(s: &str) -> &str {
    s.split_once('/').map_or(s, |(head, _)| head)
}
