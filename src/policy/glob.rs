//! A star-only string glob, compiled once: `*` matches any run of characters (possibly
//! empty); every other character matches itself. There is no escape, so a literal `*`
//! in a value can only be matched by a `*`. Used for `match.claims` values (over the
//! whole string) and inside one SPIFFE path segment (never crossing a `/`).

/// A compiled glob. Matching never allocates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Glob {
    source: String,
    /// The literal pieces between stars; `None` when the glob has no star, so the common
    /// exact case is a single string comparison.
    parts: Option<Vec<String>>,
}

impl Glob {
    pub(crate) fn new(source: &str) -> Self {
        let parts = source
            .contains('*')
            .then(|| source.split('*').map(str::to_owned).collect());
        Self {
            source: source.to_owned(),
            parts,
        }
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    pub(crate) fn has_wildcard(&self) -> bool {
        self.parts.is_some()
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let Some(parts) = &self.parts else {
            return self.source == s;
        };
        // `split('*')` on a string containing a star yields at least two pieces: the
        // anchored prefix and the anchored suffix, with free-floating pieces between.
        let (Some((first, rest)), Some(last)) = (parts.split_first(), parts.last()) else {
            return false;
        };
        let middle = &rest[..rest.len().saturating_sub(1)];
        if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) {
            return false;
        }
        if !s.ends_with(last.as_str()) {
            return false;
        }
        // Leftmost-first search of each middle piece is exact for star-only globs: taking
        // the earliest occurrence leaves the most room for the pieces after it.
        let mut window = &s[first.len()..s.len() - last.len()];
        for piece in middle {
            match window.find(piece.as_str()) {
                Some(at) => window = &window[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn glob_table() {
        // (name, glob, input, want)
        let cases = [
            ("exact equal", "acme/deploy", "acme/deploy", true),
            ("exact differs", "acme/deploy", "acme/deploy2", false),
            ("exact is case sensitive", "Main", "main", false),
            ("lone star matches anything", "*", "x/y/z", true),
            ("lone star matches empty", "*", "", true),
            ("prefix", "refs/heads/*", "refs/heads/main", true),
            ("prefix crosses slashes", "refs/*", "refs/heads/a/b", true),
            ("prefix wrong", "refs/heads/*", "refs/tags/v1", false),
            ("suffix", "*-api", "ledger-api", true),
            ("suffix star may be empty", "*-api", "-api", true),
            ("suffix wrong", "*-api", "ledger-apis", false),
            ("middle", "a*b*c", "axxbyyc", true),
            ("middle order matters", "a*b*c", "acb", false),
            ("prefix and suffix must not overlap", "ab*ba", "aba", false),
            ("repeated piece", "*ab*ab*", "xabyab", true),
            ("repeated piece needs two", "*ab*ab*", "xab", false),
            ("double star same as star", "a**c", "abc", true),
            ("non-ascii prefix", "é*", "école", true),
            ("non-ascii differs", "é*", "ecole", false),
        ];
        for (name, glob, input, want) in cases {
            assert_eq!(Glob::new(glob).matches(input), want, "case {name:?}");
        }
    }
}
