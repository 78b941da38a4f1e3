//! Policy file → compiled rules. Runs once per load; every check that can be done on
//! the file is done here so `decide` only compares.
//!
//! The top level is read with serde (`deny_unknown_fields`, keeping toml's line/column
//! report); each rule is then read from its TOML table by hand, against the key lists
//! below, because serde's errors cannot name the rule id and the toml crate keeps the
//! failing key path private. Unknown keys are an error at every level.

use super::claims::ClaimMatcher;
use super::error::PolicyError;
use super::spiffe_pattern::SpiffePattern;
use super::subject::SubjectTemplate;
use super::{CompiledRule, Matcher};
use crate::domain::{Audience, Scope, ScopeSet, SpiffeId, parse_duration};
use std::collections::HashMap;
use toml::{Table, Value};

/// The hard ceiling on any token lifetime (contract §2); a rule may only lower it.
pub const HARD_MAX_TTL_SECS: u64 = 3600;
/// Rule ids appear in audit events and error messages; keep them short and printable.
pub const MAX_RULE_ID_LEN: usize = 128;

const RULE_KEYS: &[&str] = &["id", "match", "grant"];
const RULE_KEYS_TEXT: &str = "id, match, grant";
const MATCH_KEYS: &[&str] = &["spiffe_id", "issuer", "claims"];
const MATCH_KEYS_TEXT: &str = "spiffe_id, issuer, claims";
const GRANT_KEYS: &[&str] = &[
    "audiences",
    "scopes",
    "default_scopes",
    "max_ttl",
    "actors",
    "subject",
];
const GRANT_KEYS_TEXT: &str = "audiences, scopes, default_scopes, max_ttl, actors, subject";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rule: Vec<Table>,
}

pub(super) fn compile(src: &str) -> Result<Vec<CompiledRule>, PolicyError> {
    let raw: RawPolicy = toml::from_str(src).map_err(|e| PolicyError::Toml(e.to_string()))?;
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(raw.rule.len());
    let mut rules = Vec::with_capacity(raw.rule.len());
    for (i, table) in raw.rule.iter().enumerate() {
        let index = i + 1;
        let id = rule_id(index, table)?;
        if let Some(&first) = seen.get(id) {
            return Err(PolicyError::DuplicateId {
                rule: id.to_owned(),
                first,
            });
        }
        seen.insert(id, index);
        rules.push(compile_rule(id, table)?);
    }
    Ok(rules)
}

fn rule_id(index: usize, table: &Table) -> Result<&str, PolicyError> {
    let bad = |problem: &str| PolicyError::BadId {
        index,
        problem: problem.to_owned(),
    };
    let id = match table.get("id") {
        None => return Err(bad("is required; give every rule a unique id")),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(bad(&format!(
                "expected a string, found {}",
                other.type_str()
            )));
        }
    };
    if id.is_empty() {
        return Err(bad("must not be empty"));
    }
    if id.len() > MAX_RULE_ID_LEN {
        return Err(bad("is longer than 128 bytes"));
    }
    if !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad(
            "may contain only printable ASCII without spaces, like \"payments-read-ledger\"",
        ));
    }
    Ok(id)
}

/// One table of a rule (`rule`, `match` or `grant`), with the rule id for messages.
struct Section<'a> {
    rule: &'a str,
    /// `""` for the rule itself, else `"match."` or `"grant."`.
    prefix: &'static str,
    table: &'a Table,
}

impl<'a> Section<'a> {
    fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn rule(&self) -> String {
        self.rule.to_owned()
    }

    fn check_keys(&self, known: &[&str], expected: &'static str) -> Result<(), PolicyError> {
        match self.table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(key) => Err(PolicyError::UnknownKey {
                rule: self.rule(),
                field: self.field(key),
                expected,
            }),
            None => Ok(()),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> PolicyError {
        PolicyError::WrongType {
            rule: self.rule(),
            field: self.field(key),
            expected,
            found: found.type_str(),
        }
    }

    fn invalid(&self, key: &str, problem: String) -> PolicyError {
        PolicyError::Invalid {
            rule: self.rule(),
            field: self.field(key),
            problem,
        }
    }

    fn table(&self, key: &str) -> Result<Option<Section<'a>>, PolicyError> {
        let prefix = match key {
            "match" => "match.",
            _ => "grant.",
        };
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Table(table)) => Ok(Some(Section {
                rule: self.rule,
                prefix,
                table,
            })),
            Some(other) => Err(self.wrong_type(key, "a table", other)),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, PolicyError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    fn str_list(&self, key: &str) -> Result<Option<Vec<&'a str>>, PolicyError> {
        let items = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.wrong_type(key, "a list of strings", other)),
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.wrong_type(key, "a list of strings", other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn scopes(&self, key: &str) -> Result<ScopeSet, PolicyError> {
        let scopes = self
            .str_list(key)?
            .unwrap_or_default()
            .into_iter()
            .map(|s| Scope::parse(s).map_err(|e| self.invalid(key, format!("scope {s:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ScopeSet::from_scopes(scopes))
    }
}

fn compile_rule(id: &str, table: &Table) -> Result<CompiledRule, PolicyError> {
    let rule = Section {
        rule: id,
        prefix: "",
        table,
    };
    rule.check_keys(RULE_KEYS, RULE_KEYS_TEXT)?;
    let matcher = compile_match(&rule)?;

    let empty = Table::new();
    let grant = rule.table("grant")?.unwrap_or(Section {
        rule: id,
        prefix: "grant.",
        table: &empty,
    });
    grant.check_keys(GRANT_KEYS, GRANT_KEYS_TEXT)?;

    let audiences = grant.str_list("audiences")?.unwrap_or_default();
    if audiences.is_empty() {
        return Err(PolicyError::Missing {
            rule: grant.rule(),
            field: grant.field("audiences"),
            hint: "list at least one audience, like [\"https://ledger.example.org\"]",
        });
    }
    let audiences = audiences
        .into_iter()
        .map(|a| Audience::parse(a).map_err(|e| grant.invalid("audiences", format!("{a:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;

    let scopes = grant.scopes("scopes")?;
    let default_scopes = grant.scopes("default_scopes")?;
    if let Some(extra) = default_scopes.iter().find(|s| !scopes.contains(s)) {
        return Err(PolicyError::DefaultScopeNotAllowed {
            rule: grant.rule(),
            field: grant.field("default_scopes"),
            scope: extra.as_str().to_owned(),
        });
    }

    let max_ttl = match grant.str("max_ttl")? {
        None => None,
        Some(text) => {
            let secs = parse_duration(text).map_err(|_| PolicyError::BadDuration {
                rule: grant.rule(),
                field: grant.field("max_ttl"),
                value: text.to_owned(),
            })?;
            if secs == 0 || secs > HARD_MAX_TTL_SECS {
                return Err(PolicyError::TtlOutOfRange {
                    rule: grant.rule(),
                    field: grant.field("max_ttl"),
                    value: text.to_owned(),
                });
            }
            Some(secs)
        }
    };

    let actors = grant
        .str_list("actors")?
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            SpiffeId::parse(a).map_err(|e| {
                grant.invalid(
                    "actors",
                    format!("{a:?} is not a SPIFFE ID ({e}); actors are exact IDs, not patterns"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let subject = match grant.str("subject")? {
        None => None,
        Some(_) if matches!(matcher, Matcher::Spiffe(_)) => {
            return Err(grant.invalid(
                "subject",
                "applies only to OIDC rules (match.issuer); a SPIFFE workload's token subject is always its SPIFFE ID, so remove grant.subject".to_owned(),
            ));
        }
        Some(template) => Some(
            SubjectTemplate::parse(template)
                .map_err(|problem| grant.invalid("subject", problem))?,
        ),
    };

    Ok(CompiledRule {
        id: id.to_owned(),
        matcher,
        audiences,
        scopes,
        default_scopes,
        max_ttl,
        actors,
        subject,
    })
}

fn compile_match(rule: &Section<'_>) -> Result<Matcher, PolicyError> {
    let Some(m) = rule.table("match")? else {
        return Err(PolicyError::MatchAmbiguous {
            rule: rule.rule(),
            field: "match".to_owned(),
        });
    };
    m.check_keys(MATCH_KEYS, MATCH_KEYS_TEXT)?;
    let spiffe_id = m.str("spiffe_id")?;
    let issuer = m.str("issuer")?;
    let claims = match m.table.get("claims") {
        None => None,
        Some(Value::Table(t)) => Some(t),
        Some(other) => return Err(m.wrong_type("claims", "a table", other)),
    };
    match (spiffe_id, issuer) {
        (Some(pattern), None) => {
            if claims.is_some() {
                return Err(PolicyError::ClaimsWithoutIssuer {
                    rule: m.rule(),
                    field: m.field("claims"),
                });
            }
            SpiffePattern::parse(pattern)
                .map(Matcher::Spiffe)
                .map_err(|e| m.invalid("spiffe_id", e.to_string()))
        }
        (None, Some(issuer)) => {
            if issuer.is_empty() || issuer.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(m.invalid(
                    "issuer",
                    format!("{issuer:?} is not an issuer URL; write it exactly as the token's iss"),
                ));
            }
            let mut matchers = Vec::new();
            if let Some(claims) = claims {
                flatten_claims(&m, claims, "", &mut matchers)?;
            }
            Ok(Matcher::Oidc {
                issuer: issuer.to_owned(),
                claims: matchers,
            })
        }
        (Some(_), Some(_)) | (None, None) => {
            if spiffe_id.is_none() && claims.is_some() {
                return Err(PolicyError::ClaimsWithoutIssuer {
                    rule: m.rule(),
                    field: m.field("claims"),
                });
            }
            Err(PolicyError::MatchAmbiguous {
                rule: m.rule(),
                field: "match".to_owned(),
            })
        }
    }
}

/// `match.claims` as written may nest: TOML reads `{ kubernetes.io.namespace = "x" }`
/// (unquoted) as nested tables, and `{ "kubernetes.io.namespace" = "x" }` as one key.
/// Both flatten to the dotted path `kubernetes.io.namespace`, resolved the same way.
fn flatten_claims(
    m: &Section<'_>,
    table: &Table,
    prefix: &str,
    out: &mut Vec<ClaimMatcher>,
) -> Result<(), PolicyError> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let field = format!("claims.{path:?}");
        match value {
            Value::String(pattern) => {
                let matcher = ClaimMatcher::new(&path, pattern)
                    .map_err(|problem| m.invalid(&field, problem.to_owned()))?;
                out.push(matcher);
            }
            // An empty table would silently drop the constraint the author meant to write.
            Value::Table(inner) if inner.is_empty() => {
                return Err(m.wrong_type(&field, "a string pattern", value));
            }
            Value::Table(inner) => flatten_claims(m, inner, &path, out)?,
            other => return Err(m.wrong_type(&field, "a string pattern", other)),
        }
    }
    Ok(())
}
