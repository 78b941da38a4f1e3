//! SPIFFE ID patterns for `match.spiffe_id` and the configuration's `allowed` lists.
//!
//! Syntax (contract §4): `spiffe://<trust-domain>/<segment>/...` where
//! - a segment that is exactly `*` matches exactly one path segment;
//! - a final `/**` matches zero or more further segments (so `spiffe://td/ns/**`
//!   matches `spiffe://td/ns` itself too);
//! - `*` inside a segment (`*-api`, `web-*`) matches any run of characters within that
//!   one segment, possibly empty, never a `/` — the configuration example
//!   `spiffe://example.org/ns/*/sa/*-api` relies on it;
//! - the trust domain is never a pattern and matches exactly;
//! - `**` anywhere but as the final segment is an error, as is anything the SPIFFE ID
//!   rules of `domain::SpiffeId` refuse once the stars are set aside.

use super::error::PolicyError;
use super::glob::Glob;
use crate::domain::SpiffeId;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `*`: any one segment.
    Any,
    /// A segment without stars, compared exactly, or an in-segment glob.
    Glob(Glob),
}

/// A compiled SPIFFE ID pattern; segments are split at parse time so matching walks the
/// ID's path without allocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffePattern {
    source: String,
    trust_domain: String,
    segments: Vec<Segment>,
    /// Ends in `/**`.
    any_tail: bool,
}

const SCHEME: &str = "spiffe://";

impl SpiffePattern {
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let bad = |problem: &str| PolicyError::Pattern {
            pattern: s.to_owned(),
            problem: problem.to_owned(),
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("must start with spiffe://"))?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (trust_domain, path) = rest.split_at(td_len);
        if trust_domain.contains('*') {
            return Err(bad(
                "the trust domain is never a pattern; write one rule per trust domain",
            ));
        }
        let (path, any_tail) = match path.strip_suffix("/**") {
            Some(p) => (p, true),
            None => (path, false),
        };
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        if segments.iter().any(|seg| seg.contains("**")) {
            return Err(bad(
                "`**` is allowed only as the whole final segment (`/**`)",
            ));
        }
        // Reuse the SPIFFE ID rules: with each star replaced by an ordinary character the
        // pattern must be a valid ID (trust domain charset, no empty or dot segments...).
        let probe = format!("{SCHEME}{trust_domain}{}", path.replace('*', "x"));
        SpiffeId::parse(&probe).map_err(|e| bad(&e.to_string()))?;
        let segments = segments
            .into_iter()
            .map(|seg| match seg {
                "*" => Segment::Any,
                _ => Segment::Glob(Glob::new(seg)),
            })
            .collect();
        Ok(Self {
            source: s.to_owned(),
            trust_domain: trust_domain.to_owned(),
            segments,
            any_tail,
        })
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain_str() != self.trust_domain {
            return false;
        }
        // `path()` is "" or "/a/b": skipping the piece before the first '/' leaves the
        // segments, and nothing at all for the trust domain's own ID.
        let mut id_segments = id.path().split('/').skip(1);
        for pattern in &self.segments {
            let Some(seg) = id_segments.next() else {
                return false;
            };
            let ok = match pattern {
                // Valid IDs have no empty segments, so `*` never matches an empty one.
                Segment::Any => !seg.is_empty(),
                Segment::Glob(g) => g.matches(seg),
            };
            if !ok {
                return false;
            }
        }
        self.any_tail || id_segments.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// True when the pattern matches every workload of its trust domain, or every one
    /// with at least some number of segments: `spiffe://td/**`, `spiffe://td/*/**`...
    /// (policy lint `trust_domain_wide`).
    pub fn spans_trust_domain(&self) -> bool {
        self.any_tail && self.segments.iter().all(|s| *s == Segment::Any)
    }

    /// True when the pattern matches exactly one ID (no star anywhere).
    pub fn is_exact(&self) -> bool {
        !self.any_tail
            && self.segments.iter().all(|s| match s {
                Segment::Any => false,
                Segment::Glob(g) => !g.has_wildcard(),
            })
    }
}

impl std::fmt::Display for SpiffePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for SpiffePattern {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn matching_table() {
        // (name, pattern, id, want)
        let cases = [
            (
                "exact",
                "spiffe://example.org/ns/a/sa/b",
                "spiffe://example.org/ns/a/sa/b",
                true,
            ),
            (
                "exact differs",
                "spiffe://example.org/ns/a/sa/b",
                "spiffe://example.org/ns/a/sa/c",
                false,
            ),
            (
                "exact is not a prefix",
                "spiffe://example.org/ns/a",
                "spiffe://example.org/ns/a/sa/b",
                false,
            ),
            (
                "exact trust domain id",
                "spiffe://example.org",
                "spiffe://example.org",
                true,
            ),
            (
                "trust domain id is not a wildcard",
                "spiffe://example.org",
                "spiffe://example.org/a",
                false,
            ),
            (
                "star one segment",
                "spiffe://example.org/ns/payments/sa/*",
                "spiffe://example.org/ns/payments/sa/api",
                true,
            ),
            (
                "star not zero segments",
                "spiffe://example.org/ns/payments/sa/*",
                "spiffe://example.org/ns/payments/sa",
                false,
            ),
            (
                "star not two segments",
                "spiffe://example.org/ns/payments/sa/*",
                "spiffe://example.org/ns/payments/sa/api/x",
                false,
            ),
            (
                "star in the middle",
                "spiffe://example.org/ns/*/sa/api",
                "spiffe://example.org/ns/billing/sa/api",
                true,
            ),
            (
                "star in the middle not two",
                "spiffe://example.org/ns/*/sa/api",
                "spiffe://example.org/ns/a/b/sa/api",
                false,
            ),
            (
                "double star zero segments",
                "spiffe://example.org/ns/**",
                "spiffe://example.org/ns",
                true,
            ),
            (
                "double star one segment",
                "spiffe://example.org/ns/**",
                "spiffe://example.org/ns/a",
                true,
            ),
            (
                "double star many segments",
                "spiffe://example.org/ns/**",
                "spiffe://example.org/ns/a/b/c/d",
                true,
            ),
            (
                "double star needs its prefix",
                "spiffe://example.org/ns/**",
                "spiffe://example.org/nsx/a",
                false,
            ),
            (
                "double star whole domain",
                "spiffe://example.org/**",
                "spiffe://example.org",
                true,
            ),
            (
                "double star whole domain deep",
                "spiffe://example.org/**",
                "spiffe://example.org/a/b",
                true,
            ),
            (
                "star then double star",
                "spiffe://example.org/*/**",
                "spiffe://example.org",
                false,
            ),
            (
                "star then double star one",
                "spiffe://example.org/*/**",
                "spiffe://example.org/a",
                true,
            ),
            (
                "in-segment suffix glob",
                "spiffe://example.org/ns/*/sa/*-api",
                "spiffe://example.org/ns/x/sa/ledger-api",
                true,
            ),
            (
                "in-segment glob does not cross slash",
                "spiffe://example.org/ns/web-*",
                "spiffe://example.org/ns/web-a/b",
                false,
            ),
            (
                "in-segment prefix glob",
                "spiffe://example.org/ns/web-*",
                "spiffe://example.org/ns/web-frontend",
                true,
            ),
            (
                "in-segment glob wrong prefix",
                "spiffe://example.org/ns/web-*",
                "spiffe://example.org/ns/api-frontend",
                false,
            ),
            (
                "other trust domain",
                "spiffe://example.org/ns/*",
                "spiffe://evil.org/ns/a",
                false,
            ),
            (
                "trust domain suffix trick",
                "spiffe://example.org/**",
                "spiffe://example.org.evil.com/a",
                false,
            ),
            (
                "trust domain prefix trick",
                "spiffe://example.org/**",
                "spiffe://org/a",
                false,
            ),
            (
                "path is case sensitive",
                "spiffe://example.org/ns/A",
                "spiffe://example.org/ns/a",
                false,
            ),
        ];
        for (name, pattern, candidate, want) in cases {
            let p = SpiffePattern::parse(pattern).unwrap();
            assert_eq!(p.matches(&id(candidate)), want, "case {name:?}");
        }
    }

    #[test]
    fn parse_errors_table() {
        // (name, pattern, expected words in the message)
        let cases = [
            ("wrong scheme", "https://example.org/a", "spiffe://"),
            (
                "star trust domain",
                "spiffe://*.example.org/a",
                "trust domain is never a pattern",
            ),
            (
                "whole star trust domain",
                "spiffe://*/a",
                "trust domain is never a pattern",
            ),
            (
                "double star in the middle",
                "spiffe://example.org/**/a",
                "final segment",
            ),
            (
                "double star inside segment",
                "spiffe://example.org/a**",
                "final segment",
            ),
            (
                "trailing slash",
                "spiffe://example.org/a/",
                "must not end with '/'",
            ),
            (
                "empty segment",
                "spiffe://example.org//a",
                "must not be empty",
            ),
            ("dot segment", "spiffe://example.org/a/../b", "'.' or '..'"),
            (
                "bad path char",
                "spiffe://example.org/a b",
                "path may contain only",
            ),
            (
                "upper-case trust domain",
                "spiffe://Example.org/a",
                "trust domain may contain only",
            ),
            (
                "missing trust domain",
                "spiffe:///a",
                "trust domain is missing",
            ),
            ("empty", "", "spiffe://"),
        ];
        for (name, pattern, words) in cases {
            let err = SpiffePattern::parse(pattern).unwrap_err().to_string();
            assert!(err.contains(words), "case {name:?}: {err}");
            assert!(
                err.contains(&format!("{pattern:?}")),
                "case {name:?} names the pattern: {err}"
            );
        }
    }

    #[test]
    fn exactness_and_display() {
        let p = SpiffePattern::parse("spiffe://example.org/ns/a").unwrap();
        assert!(p.is_exact());
        assert_eq!(p.as_str(), "spiffe://example.org/ns/a");
        assert_eq!(p.to_string(), "spiffe://example.org/ns/a");
        assert!(
            !SpiffePattern::parse("spiffe://example.org/ns/*")
                .unwrap()
                .is_exact()
        );
        assert!(
            !SpiffePattern::parse("spiffe://example.org/ns/**")
                .unwrap()
                .is_exact()
        );
        assert!(
            !SpiffePattern::parse("spiffe://example.org/ns/a-*")
                .unwrap()
                .is_exact()
        );
    }
}
