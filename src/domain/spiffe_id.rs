//! SPIFFE IDs and trust domains (SPIFFE-ID spec §2), strict profile: lowercase-only trust
//! domains, `[a-z0-9._-]` in the trust domain, `[a-zA-Z0-9._-]` in path segments, no
//! empty, `.` or `..` segments, no port, userinfo, query, fragment or percent-encoding.
//! The `spiffe` crate lowercases upper-case trust domains instead; an STS copies the ID
//! into `sub`, so we refuse rather than normalise (docs/architecture.md).

use std::fmt;

/// Trust domain names are at most 255 bytes (SPIFFE-ID §2.1); whole IDs at most 2048
/// bytes (§2.3 guidance, also what X.509 URI SANs tolerate in practice).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("SPIFFE ID must start with spiffe://")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain may contain only a-z, 0-9, '.', '-' and '_'")]
    BadTrustDomainChar,
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
    #[error("path segments must not be empty")]
    EmptySegment,
    #[error("path segments must not be '.' or '..'")]
    DotSegment,
    #[error("path may contain only a-z, A-Z, 0-9, '.', '-' and '_'")]
    BadPathChar,
    #[error("path must not end with '/'")]
    TrailingSlash,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    td_len: usize,
}

const SCHEME: &str = "spiffe://";

fn td_char_ok(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
}

fn path_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_')
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !td.bytes().all(td_char_ok) {
        return Err(SpiffeIdError::BadTrustDomainChar);
    }
    Ok(())
}

/// Checks a path (everything after the trust domain, starting with `/` or empty).
fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::BadTrustDomainChar);
    };
    if rest.is_empty() {
        return Err(SpiffeIdError::TrailingSlash);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Err(if i == last {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if *seg == "." || *seg == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if !seg.bytes().all(path_char_ok) {
            return Err(SpiffeIdError::BadPathChar);
        }
    }
    Ok(())
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        check_trust_domain(&rest[..td_len])?;
        check_path(&rest[td_len..])?;
        Ok(Self {
            id: s.to_owned(),
            td_len,
        })
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    pub fn trust_domain_str(&self) -> &str {
        &self.id[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// The path, `""` for the trust domain's own ID, otherwise starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.td_len..]
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl TrustDomain {
    /// Parses a trust domain name as found in configuration; like go-spiffe's
    /// `TrustDomainFromString`, a full SPIFFE ID is accepted and its trust domain taken.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.contains(":/") {
            return Ok(SpiffeId::parse(s)?.trust_domain());
        }
        check_trust_domain(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<td>`
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}
impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}
impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_splits() {
        let id = SpiffeId::parse("spiffe://example.org/ns/a/sa/b").ok();
        let id = id.as_ref();
        assert_eq!(id.map(|i| i.trust_domain_str()), Some("example.org"));
        assert_eq!(id.map(|i| i.path()), Some("/ns/a/sa/b"));
        assert!(SpiffeId::parse("spiffe://example.org").is_ok());
    }

    #[test]
    fn rejects_the_classic_mistakes() {
        for bad in [
            "",
            "http://example.org/a",
            "spiffe://",
            "spiffe://Example.org/a",
            "spiffe://example.org/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a%20b",
            "spiffe://example.org:8080/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn trust_domain_accepts_an_id() {
        assert_eq!(
            TrustDomain::parse("spiffe://example.org/x").map(|t| t.to_string()),
            Ok("example.org".to_owned())
        );
        assert!(TrustDomain::parse("spiffe://example.org/").is_err());
    }
}
