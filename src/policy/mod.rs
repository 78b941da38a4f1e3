//! Authorization policy: which verified identity may get a token for which audience,
//! with which scopes, for how long, and who may act for it (contract §4 "Policy file").
//!
//! The policy file is compiled once into a [`CompiledPolicy`] (patterns pre-split,
//! values parsed into domain newtypes, every cross-field rule checked), so
//! [`CompiledPolicy::decide`] only compares and allocates nothing until it builds the
//! [`Decision`]. Deny by default: every decision names the rule that granted, or the
//! reason nothing did.
//!
//! Imports only `crate::domain` (and may use `crate::clock`); never another module of
//! ours — `service` composes policy with attestation and minting.

mod claims;
mod compile;
mod error;
mod glob;
mod lint;
mod spiffe_pattern;
mod subject;

#[cfg(test)]
mod lint_tests;
#[cfg(test)]
mod tests;

pub use compile::{HARD_MAX_TTL_SECS, MAX_RULE_ID_LEN};
pub use error::PolicyError;
pub use lint::{LintWarning, log_lint_warnings};
pub use spiffe_pattern::SpiffePattern;
pub use subject::{MAX_SUBJECT_LEN, MAX_TEMPLATE_LEN, is_valid_mapped_subject};

use crate::domain::{Audience, Principal, ScopeSet, SpiffeId, format_duration};
use claims::ClaimMatcher;
use std::path::Path;
use subject::SubjectTemplate;

/// What selects a principal. A SPIFFE pattern never selects an OIDC principal and an
/// issuer never selects a SPIFFE one.
#[derive(Clone, Debug)]
enum Matcher {
    Spiffe(SpiffePattern),
    Oidc {
        issuer: String,
        /// All must match.
        claims: Vec<ClaimMatcher>,
    },
}

impl Matcher {
    fn selects(&self, principal: &Principal) -> bool {
        match (self, principal) {
            (Self::Spiffe(pattern), Principal::Spiffe(id)) => pattern.matches(id),
            (
                Self::Oidc {
                    issuer: want,
                    claims: matchers,
                },
                Principal::Oidc { issuer, claims, .. },
            ) => want == issuer && matchers.iter().all(|m| m.matches(claims)),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct CompiledRule {
    id: String,
    matcher: Matcher,
    audiences: Vec<Audience>,
    scopes: ScopeSet,
    /// Checked at compile time to be a subset of `scopes`.
    default_scopes: ScopeSet,
    /// Seconds, at most [`HARD_MAX_TTL_SECS`].
    max_ttl: Option<u64>,
    actors: Vec<SpiffeId>,
    /// `grant.subject`; only on OIDC rules (checked at compile time).
    subject: Option<SubjectTemplate>,
}

impl CompiledRule {
    /// The match selects the principal and, when the rule maps the subject, the template
    /// renders a valid subject from its claims; otherwise the rule is skipped like any
    /// rule that does not match. Allocates nothing.
    fn selects(&self, principal: &Principal) -> bool {
        self.matcher.selects(principal)
            && match (&self.subject, principal) {
                (None, _) => true,
                (Some(template), Principal::Oidc { claims, .. }) => {
                    template.rendered_len(claims).is_some()
                }
                (Some(_), Principal::Spiffe(_)) => false,
            }
    }

    /// The mapped subject for a principal this rule selects: `Some(None)` keeps the
    /// default subject, `None` means the template does not render (never after
    /// [`Self::selects`] said yes, but this stays the safe answer).
    fn mapped_subject(&self, principal: &Principal) -> Option<Option<String>> {
        match (&self.subject, principal) {
            (None, _) => Some(None),
            (Some(template), Principal::Oidc { claims, .. }) => template.render(claims).map(Some),
            (Some(_), Principal::Spiffe(_)) => None,
        }
    }
}

/// A policy file, compiled. Cheap to share behind an `Arc` and swap on reload.
#[derive(Clone, Debug, Default)]
pub struct CompiledPolicy {
    rules: Vec<CompiledRule>,
}

/// One token request as policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    pub audience: &'a Audience,
    /// Empty means no scope was requested: the rule's `default_scopes` are granted.
    pub scopes: &'a ScopeSet,
    /// The actor of an RFC 8693 delegation, already verified.
    pub actor: Option<&'a SpiffeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Grant(Grant),
    Deny(Deny),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub rule_id: String,
    pub audience: Audience,
    /// Exactly the requested scopes, or the rule's default scopes when none were asked.
    pub scopes: ScopeSet,
    /// The rule's `grant.max_ttl` in seconds; `None` means the server's `default_ttl`.
    pub max_ttl: Option<u64>,
    pub actor: Option<SpiffeId>,
    /// The issued token's subject when the rule maps it (`grant.subject`, OIDC rules);
    /// `None` keeps the identity's own subject.
    pub subject: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deny {
    /// No rule lets this identity reach this audience → `invalid_target`.
    NoRule,
    /// A rule lets the identity reach the audience but not every requested scope →
    /// `invalid_scope`. Names the first such rule.
    ScopeNotAllowed { rule_id: String },
    /// A rule allows identity, audience and scopes but does not list the actor in
    /// `grant.actors` → `invalid_grant`.
    ActorNotAllowed { rule_id: String },
}

impl Deny {
    /// Short reason for audit events (`reason` field).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRule => "no_rule",
            Self::ScopeNotAllowed { .. } => "scope_not_allowed",
            Self::ActorNotAllowed { .. } => "actor_not_allowed",
        }
    }

    /// The OAuth error code the contract assigns (§2, RFC 6749 §5.2, RFC 8707 §2).
    pub fn oauth_error(&self) -> &'static str {
        match self {
            Self::NoRule => "invalid_target",
            Self::ScopeNotAllowed { .. } => "invalid_scope",
            Self::ActorNotAllowed { .. } => "invalid_grant",
        }
    }

    /// The rule that came closest to granting, if any (audit `rule` field).
    pub fn rule_id(&self) -> Option<&str> {
        match self {
            Self::NoRule => None,
            Self::ScopeNotAllowed { rule_id } | Self::ActorNotAllowed { rule_id } => Some(rule_id),
        }
    }
}

impl Decision {
    pub fn is_grant(&self) -> bool {
        matches!(self, Self::Grant(_))
    }

    /// The rule that granted, or that came closest to granting.
    pub fn rule_id(&self) -> Option<&str> {
        match self {
            Self::Grant(g) => Some(&g.rule_id),
            Self::Deny(d) => d.rule_id(),
        }
    }
}

impl CompiledPolicy {
    pub fn from_toml(src: &str) -> Result<Self, PolicyError> {
        compile::compile(src).map(|rules| Self { rules })
    }

    /// Reads and compiles a policy file; every error names the file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&src).map_err(|e| PolicyError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// First rule that selects the principal and covers audience, scopes and actor
    /// grants; otherwise the closest miss, in the order scope > actor > no rule.
    pub fn decide(&self, principal: &Principal, req: &AccessRequest<'_>) -> Decision {
        let mut scope_refused: Option<&CompiledRule> = None;
        let mut actor_refused: Option<&CompiledRule> = None;
        for rule in &self.rules {
            // Audience first: a string compare, cheaper than patterns and claim lookups.
            if !rule.audiences.contains(req.audience) || !rule.selects(principal) {
                continue;
            }
            if !req.scopes.iter().all(|s| rule.scopes.contains(s)) {
                scope_refused.get_or_insert(rule);
                continue;
            }
            if let Some(actor) = req.actor
                && !rule.actors.contains(actor)
            {
                actor_refused.get_or_insert(rule);
                continue;
            }
            let Some(subject) = rule.mapped_subject(principal) else {
                continue;
            };
            let scopes = if req.scopes.is_empty() {
                rule.default_scopes.clone()
            } else {
                req.scopes.clone()
            };
            return Decision::Grant(Grant {
                rule_id: rule.id.clone(),
                audience: req.audience.clone(),
                scopes,
                max_ttl: rule.max_ttl,
                actor: req.actor.cloned(),
                subject,
            });
        }
        let deny = match (scope_refused, actor_refused) {
            (Some(rule), _) => Deny::ScopeNotAllowed {
                rule_id: rule.id.clone(),
            },
            (None, Some(rule)) => Deny::ActorNotAllowed {
                rule_id: rule.id.clone(),
            },
            (None, None) => Deny::NoRule,
        };
        Decision::Deny(deny)
    }

    /// Union of every rule's `grant.scopes`, sorted and deduplicated (RFC 8414
    /// `scopes_supported`).
    pub fn scopes_supported(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| r.scopes.iter().map(|s| s.as_str().to_owned()))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Rule ids in evaluation order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }
}

/// One line describing a decision on its own, e.g.
/// `GRANT by rule "payments-read-ledger": audience https://ledger.example.org, scope "ledger:read", max_ttl 5m`
/// (followed by `, subject <mapped>` when the rule sets `grant.subject`).
/// See [`check_report`] for the fuller line `tessera policy check` prints.
pub fn explain(decision: &Decision) -> String {
    match decision {
        Decision::Grant(g) => explain_grant(g),
        Decision::Deny(d) => {
            let why = match d {
                Deny::NoRule => "no rule lets this identity reach this audience".to_owned(),
                Deny::ScopeNotAllowed { rule_id } => format!(
                    "rule {rule_id:?} lets this identity reach this audience but not every requested scope"
                ),
                Deny::ActorNotAllowed { rule_id } => format!(
                    "rule {rule_id:?} allows the request but does not list the actor in grant.actors"
                ),
            };
            format!("DENY ({}): {why}", d.oauth_error())
        }
    }
}

/// The line `tessera policy check` prints: like [`explain`], naming the identity,
/// audience, scopes and actor of the request.
pub fn check_report(principal: &Principal, req: &AccessRequest<'_>, decision: &Decision) -> String {
    let who = principal_name(principal);
    let aud = req.audience;
    match decision {
        Decision::Grant(g) => explain_grant(g),
        Decision::Deny(d) => {
            let why = match d {
                Deny::NoRule => format!("no rule lets {who} reach {aud}"),
                Deny::ScopeNotAllowed { rule_id } => format!(
                    "rule {rule_id:?} lets {who} reach {aud} but not every scope of {:?}",
                    req.scopes.joined()
                ),
                Deny::ActorNotAllowed { rule_id } => format!(
                    "rule {rule_id:?} lets {who} reach {aud} but does not list actor {} in grant.actors",
                    req.actor.map_or("(none)", SpiffeId::as_str)
                ),
            };
            format!("DENY ({}): {why}", d.oauth_error())
        }
    }
}

fn explain_grant(g: &Grant) -> String {
    let scope = if g.scopes.is_empty() {
        "no scope".to_owned()
    } else {
        format!("scope {:?}", g.scopes.joined())
    };
    let ttl = g
        .max_ttl
        .map_or_else(|| "server default".to_owned(), format_duration);
    let mut line = format!(
        "GRANT by rule {:?}: audience {}, {scope}, max_ttl {ttl}",
        g.rule_id, g.audience
    );
    if let Some(subject) = &g.subject {
        line.push_str(&format!(", subject {subject}"));
    }
    if let Some(actor) = &g.actor {
        line.push_str(&format!(", actor {actor}"));
    }
    line
}

/// How a principal is named in reports: the SPIFFE ID, or `<iss>#<sub>` (contract §2).
fn principal_name(principal: &Principal) -> String {
    match principal {
        Principal::Spiffe(id) => id.to_string(),
        Principal::Oidc {
            issuer, subject, ..
        } => format!("{issuer}#{subject}"),
    }
}
