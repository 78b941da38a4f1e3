//! Newtypes for values that cross the trust boundary, each checked once at the edge.

use std::fmt;

/// Length caps keep hostile inputs from growing logs, keys and store entries.
pub const MAX_AUDIENCE_LEN: usize = 512;
pub const MAX_SCOPE_LEN: usize = 128;
pub const MAX_SCOPES: usize = 32;
pub const MAX_JTI_LEN: usize = 128;
pub const MAX_KID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{0} is too long")]
    TooLong(&'static str),
    #[error("{0} contains characters that are not allowed")]
    BadChars(&'static str),
    #[error("too many scopes (at most {MAX_SCOPES})")]
    TooManyScopes,
    #[error("{0}")]
    Duration(String),
}

fn checked(
    what: &'static str,
    s: &str,
    max: usize,
    ok: impl Fn(char) -> bool,
) -> Result<String, ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty(what));
    }
    if s.len() > max {
        return Err(ValueError::TooLong(what));
    }
    if !s.chars().all(ok) {
        return Err(ValueError::BadChars(what));
    }
    Ok(s.to_owned())
}

macro_rules! string_newtype {
    ($name:ident, $what:literal, $max:expr, $ok:expr) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, ValueError> {
                checked($what, s, $max, $ok).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

// RFC 8693 §2.1: audience is a logical name or URI; printable ASCII without spaces.
string_newtype!(Audience, "audience", MAX_AUDIENCE_LEN, |c: char| c
    .is_ascii_graphic());
// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
string_newtype!(Scope, "scope", MAX_SCOPE_LEN, |c: char| c
    .is_ascii_graphic()
    && c != '"'
    && c != '\\');
// Our jtis are base64url; foreign ones (JWT-SVID, OIDC) are opaque but capped.
string_newtype!(Jti, "jti", MAX_JTI_LEN, |c: char| c.is_ascii_graphic());
string_newtype!(Kid, "kid", MAX_KID_LEN, |c: char| c.is_ascii_alphanumeric()
    || c == '-'
    || c == '_');

/// An ordered, duplicate-free set of scopes (order of first appearance).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    /// Parses a space-separated `scope` parameter (RFC 6749 §3.3).
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let mut out: Vec<Scope> = Vec::new();
        for token in s.split(' ').filter(|t| !t.is_empty()) {
            let scope = Scope::parse(token)?;
            if !out.contains(&scope) {
                out.push(scope);
            }
            if out.len() > MAX_SCOPES {
                return Err(ValueError::TooManyScopes);
            }
        }
        Ok(Self(out))
    }
    pub fn from_scopes(scopes: Vec<Scope>) -> Self {
        let mut out: Vec<Scope> = Vec::new();
        for s in scopes {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Self(out)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
    pub fn contains(&self, s: &Scope) -> bool {
        self.0.contains(s)
    }
    /// Space-joined form for the `scope` claim and responses.
    pub fn joined(&self) -> String {
        self.0
            .iter()
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The longest duration `parse_duration` accepts: 100 years. Every caller adds the
/// result to a Unix time (`i64`), so this keeps `now + d` far from overflow; callers
/// still apply their own, tighter limits.
pub const MAX_DURATION_SECS: u64 = 100 * 365 * 86_400;

/// Parses durations like `"90s"`, `"5m"`, `"1h30m"`, `"24h"`, `"7d"` into seconds, at
/// most `MAX_DURATION_SECS`.
pub fn parse_duration(s: &str) -> Result<u64, ValueError> {
    let bad = || {
        ValueError::Duration(format!(
            "{s:?} is not a duration; write a number with a unit, like \"30s\", \"5m\", \"1h\" or \"1h30m\""
        ))
    };
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut saw_unit = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mult = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
        saw_unit = true;
    }
    if !num.is_empty() || !saw_unit {
        return Err(bad());
    }
    if total > MAX_DURATION_SECS {
        return Err(ValueError::Duration(format!(
            "{s:?} is longer than 100 years; give a shorter duration"
        )));
    }
    Ok(total)
}

/// Renders seconds the way `parse_duration` reads them (`"1h30m"`).
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(300));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION_SECS));
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-5m",
            "5 m s",
            "36501d",
            "18446744073709551615s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for secs in [1, 59, 60, 300, 5400, 86_400, 90_061] {
            assert_eq!(parse_duration(&format_duration(secs)), Ok(secs));
        }
    }

    #[test]
    fn scopes_dedupe_and_cap() {
        let s = ScopeSet::parse("a b  a c").ok();
        assert_eq!(s.map(|s| s.joined()), Some("a b c".to_owned()));
        assert!(ScopeSet::parse("a\"b").is_err());
        let many = (0..40)
            .map(|i| format!("s{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(ScopeSet::parse(&many), Err(ValueError::TooManyScopes));
    }

    #[test]
    fn newtypes_cap_length_and_charset() {
        assert!(Audience::parse("https://ledger.example.org").is_ok());
        assert!(Audience::parse("has space").is_err());
        assert!(Audience::parse(&"a".repeat(MAX_AUDIENCE_LEN + 1)).is_err());
        assert!(Kid::parse("../../etc/passwd").is_err());
        assert!(Jti::parse("").is_err());
    }
}
