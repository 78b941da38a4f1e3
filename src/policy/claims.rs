//! `match.claims` for OIDC principals.
//!
//! A claim path is a dotted path into nested JSON objects. Keys may themselves contain
//! dots (`kubernetes.io`), so at each level the longest run of path segments that exists
//! as a key is taken, then the rest is resolved inside its value. Resolution is greedy
//! and does not back off to a shorter key: one path names one claim, predictably.
//!
//! A value matches when it is a string the glob matches, a bool or number whose JSON
//! text the glob matches, or an array with any element that matches by those rules
//! ("array contains"). `null`, objects and a missing claim never match.

use super::glob::Glob;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt::Write as _;

/// A dotted claim path, split once. The one resolver for `match.claims` and the
/// placeholders of `grant.subject`, so both name the same claim for the same path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClaimPath {
    path: String,
    /// Byte ranges of the dot-separated segments of `path`; any run of consecutive
    /// segments is a substring of `path`, so lookups never build a key.
    segments: Vec<(usize, usize)>,
}

impl ClaimPath {
    /// `path` must be non-empty with no empty segment (the caller knows the rule id and
    /// field for the message).
    pub(crate) fn new(path: &str) -> Result<Self, &'static str> {
        let mut segments = Vec::new();
        let mut start = 0;
        for piece in path.split('.') {
            if piece.is_empty() {
                return Err("claim paths are dot-separated keys; empty segments are not allowed");
            }
            segments.push((start, start + piece.len()));
            start += piece.len() + 1;
        }
        Ok(Self {
            path: path.to_owned(),
            segments,
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.path
    }

    pub(crate) fn resolve<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        let mut object = claims;
        let mut i = 0;
        loop {
            let from = self.segments.get(i)?.0;
            // Longest existing key first: `kubernetes.io.namespace` prefers the key
            // "kubernetes.io.namespace", then "kubernetes.io", then "kubernetes".
            let (value, next) = (i..self.segments.len()).rev().find_map(|j| {
                let to = self.segments[j].1;
                object.get(&self.path[from..to]).map(|v| (v, j + 1))
            })?;
            if next == self.segments.len() {
                return Some(value);
            }
            object = value.as_object()?;
            i = next;
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClaimMatcher {
    path: ClaimPath,
    glob: Glob,
}

impl ClaimMatcher {
    /// See [`ClaimPath::new`] for what `path` must be.
    pub(crate) fn new(path: &str, pattern: &str) -> Result<Self, &'static str> {
        Ok(Self {
            path: ClaimPath::new(path)?,
            glob: Glob::new(pattern),
        })
    }

    pub(crate) fn matches(&self, claims: &Map<String, Value>) -> bool {
        self.path
            .resolve(claims)
            .is_some_and(|v| self.value_matches(v, true))
    }

    /// The dotted path as written (lint).
    pub(crate) fn path(&self) -> &str {
        self.path.as_str()
    }

    /// The pattern (lint).
    pub(crate) fn glob(&self) -> &Glob {
        &self.glob
    }

    fn value_matches(&self, value: &Value, top: bool) -> bool {
        match value {
            // Only one level of "array contains": nested arrays are not flattened.
            Value::Array(items) => top && items.iter().any(|v| self.value_matches(v, false)),
            _ => {
                let mut buf = StackStr::default();
                scalar_text(value, &mut buf).is_some_and(|text| self.glob.matches(&text))
            }
        }
    }
}

/// The text of a scalar claim, as `match.claims` and `grant.subject` both see it:
/// strings as-is, bools and numbers as their JSON text. `None` for arrays, objects and
/// null. Numbers render into `buf`, so no allocation on the request path; serde_json
/// prints them in their shortest form, which always fits, and the owned fallback only
/// keeps this correct should that ever change.
pub(crate) fn scalar_text<'v>(value: &'v Value, buf: &'v mut StackStr) -> Option<Cow<'v, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => match write!(buf, "{n}") {
            Ok(()) => {
                let buf: &'v StackStr = buf;
                Some(Cow::Borrowed(buf.as_str()))
            }
            Err(_) => Some(Cow::Owned(n.to_string())),
        },
        Value::Array(_) | Value::Object(_) | Value::Null => None,
    }
}

/// Enough for any `serde_json::Number` without `arbitrary_precision`: integers take at
/// most 20 bytes, floats (shortest round-trip form) at most 24.
#[derive(Default)]
pub(crate) struct StackStr {
    buf: [u8; 32],
    len: usize,
}

impl StackStr {
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        let v = json!({
            "sub": "system:serviceaccount:payments:api",
            "repository": "acme/deploy",
            "ref": "refs/heads/main",
            "groups": ["dev", "payments-admins"],
            "nested_arrays": [["x"]],
            "email_verified": true,
            "run_attempt": 3,
            "ratio": 0.5,
            "nothing": null,
            "kubernetes.io": {
                "namespace": "payments",
                "serviceaccount": {"name": "api", "uid": "1234"}
            },
            "a": {"b": {"c": "via-nested"}},
            "a.b": {"d": "via-dotted"},
            "x.y": "flat-dotted-key",
            "x": {"y": "nested-shadowed"}
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn claims_table() {
        // (name, path, pattern, want)
        let cases = [
            ("top-level exact", "repository", "acme/deploy", true),
            ("top-level exact differs", "repository", "acme/other", false),
            ("top-level glob", "ref", "refs/heads/*", true),
            ("glob is whole-string", "ref", "heads/*", false),
            (
                "dotted key then nested",
                "kubernetes.io.namespace",
                "payments",
                true,
            ),
            (
                "dotted key two levels",
                "kubernetes.io.serviceaccount.name",
                "api",
                true,
            ),
            (
                "dotted key glob",
                "kubernetes.io.serviceaccount.uid",
                "12*",
                true,
            ),
            ("longest key wins", "x.y", "flat-dotted-key", true),
            (
                "longest key shadows nested",
                "x.y",
                "nested-shadowed",
                false,
            ),
            ("greedy does not back off", "a.b.c", "via-nested", false),
            ("greedy dotted key", "a.b.d", "via-dotted", true),
            ("array contains", "groups", "payments-admins", true),
            ("array contains glob", "groups", "payments-*", true),
            ("array contains none", "groups", "ops", false),
            (
                "nested arrays are not flattened",
                "nested_arrays",
                "x",
                false,
            ),
            ("bool as JSON text", "email_verified", "true", true),
            ("bool differs", "email_verified", "false", false),
            ("number as JSON text", "run_attempt", "3", true),
            ("float as JSON text", "ratio", "0.5", true),
            ("null never matches", "nothing", "*", false),
            ("object never matches", "kubernetes.io", "*", false),
            ("missing claim", "environment", "*", false),
            ("missing nested claim", "kubernetes.io.pod", "*", false),
            ("path through a string", "repository.owner", "*", false),
        ];
        let claims = claims();
        for (name, path, pattern, want) in cases {
            let m = ClaimMatcher::new(path, pattern).unwrap();
            assert_eq!(m.matches(&claims), want, "case {name:?}");
        }
    }

    #[test]
    fn bad_paths() {
        for path in ["", ".a", "a.", "a..b"] {
            assert!(ClaimMatcher::new(path, "x").is_err(), "{path:?}");
        }
    }
}
