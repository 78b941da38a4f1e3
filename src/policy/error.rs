//! Policy errors. Every variant about a rule names the rule id and the field, so an
//! operator can fix the file from the message alone; TOML syntax errors keep the toml
//! crate's line/column report.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// TOML syntax, or the top level of the file (only `[[rule]]` tables are allowed).
    #[error("invalid policy: {0}")]
    Toml(String),
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Any other error, tagged with the file it came from.
    #[error("policy file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<PolicyError>,
    },
    /// A rule without a usable id; rules are counted from 1 in file order.
    #[error("rule #{index} field id: {problem}")]
    BadId { index: usize, problem: String },
    #[error("rule {rule:?} field id: duplicate id; rule #{first} already uses it")]
    DuplicateId { rule: String, first: usize },
    #[error("rule {rule:?} field {field}: unknown key; expected one of {expected}")]
    UnknownKey {
        rule: String,
        field: String,
        expected: &'static str,
    },
    #[error("rule {rule:?} field {field}: expected {expected}, found {found}")]
    WrongType {
        rule: String,
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("rule {rule:?} field {field}: is required; {hint}")]
    Missing {
        rule: String,
        field: String,
        hint: &'static str,
    },
    #[error("rule {rule:?} field {field}: {value:?} is not a duration; write e.g. \"5m\"")]
    BadDuration {
        rule: String,
        field: String,
        value: String,
    },
    #[error(
        "rule {rule:?} field {field}: {value:?} is outside the allowed range; write between \"1s\" and the hard ceiling \"1h\""
    )]
    TtlOutOfRange {
        rule: String,
        field: String,
        value: String,
    },
    #[error(
        "rule {rule:?} field {field}: {scope:?} is not in grant.scopes; default scopes must be a subset of the allowed scopes"
    )]
    DefaultScopeNotAllowed {
        rule: String,
        field: String,
        scope: String,
    },
    #[error(
        "rule {rule:?} field {field}: set exactly one of match.spiffe_id (SPIFFE workloads) or match.issuer (OIDC tokens)"
    )]
    MatchAmbiguous { rule: String, field: String },
    #[error("rule {rule:?} field {field}: only applies to OIDC tokens; add match.issuer")]
    ClaimsWithoutIssuer { rule: String, field: String },
    /// A value that does not parse (audience, scope, SPIFFE ID, pattern, claim path).
    #[error("rule {rule:?} field {field}: {problem}")]
    Invalid {
        rule: String,
        field: String,
        problem: String,
    },
    /// A SPIFFE ID pattern outside any rule (configuration's `allowed` lists).
    #[error("invalid SPIFFE ID pattern {pattern:?}: {problem}")]
    Pattern { pattern: String, problem: String },
}

impl PolicyError {
    /// The rule id the error concerns, if any (for tooling and tests).
    pub fn rule(&self) -> Option<&str> {
        match self {
            Self::DuplicateId { rule, .. }
            | Self::UnknownKey { rule, .. }
            | Self::WrongType { rule, .. }
            | Self::Missing { rule, .. }
            | Self::BadDuration { rule, .. }
            | Self::TtlOutOfRange { rule, .. }
            | Self::DefaultScopeNotAllowed { rule, .. }
            | Self::MatchAmbiguous { rule, .. }
            | Self::ClaimsWithoutIssuer { rule, .. }
            | Self::Invalid { rule, .. } => Some(rule),
            Self::InFile { source, .. } => source.rule(),
            Self::Toml(_) | Self::Read { .. } | Self::BadId { .. } | Self::Pattern { .. } => None,
        }
    }

    /// The field the error concerns, like `grant.max_ttl`, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { field, .. }
            | Self::WrongType { field, .. }
            | Self::Missing { field, .. }
            | Self::BadDuration { field, .. }
            | Self::TtlOutOfRange { field, .. }
            | Self::DefaultScopeNotAllowed { field, .. }
            | Self::MatchAmbiguous { field, .. }
            | Self::ClaimsWithoutIssuer { field, .. }
            | Self::Invalid { field, .. } => Some(field),
            Self::BadId { .. } | Self::DuplicateId { .. } => Some("id"),
            Self::InFile { source, .. } => source.field(),
            Self::Toml(_) | Self::Read { .. } | Self::Pattern { .. } => None,
        }
    }
}
