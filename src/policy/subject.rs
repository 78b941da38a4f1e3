//! `grant.subject`: the issued token's `sub` built from an OIDC token's claims instead
//! of the default `<iss>#<sub>` (contract §2 "Issued access token", §4 "Policy file").
//!
//! `{dotted.claim.path}` is replaced by the claim's value, resolved exactly like
//! `match.claims` (the same [`ClaimPath`]); `{{` and `}}` are literal braces. A claim
//! that is missing, null, an array or an object does not render, and neither does a
//! result that is not a valid mapped subject ([`is_valid_mapped_subject`]): the rule
//! then does not select the principal, as if its `match` had failed. Never an error on
//! the request path — the token's claims are the issuer's, not ours to reject loudly.

use super::claims::{ClaimPath, StackStr, scalar_text};
use serde_json::{Map, Value};

/// Longest `grant.subject` template, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 512;
/// Longest rendered subject, in bytes.
pub const MAX_SUBJECT_LEN: usize = 1024;

/// A subject must never pass for a SPIFFE ID: consumers that see `spiffe:` trust the
/// value as a workload identity the SPIFFE verifier checked (contract §2).
const SPIFFE_PREFIX: &[u8; 7] = b"spiffe:";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Claim(ClaimPath),
}

/// A compiled `grant.subject`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubjectTemplate {
    parts: Vec<Part>,
}

impl SubjectTemplate {
    /// Compiles a template; the error is the problem and its fix, for the caller to tag
    /// with the rule id and field.
    pub(crate) fn parse(src: &str) -> Result<Self, String> {
        if src.is_empty() {
            return Err("must not be empty; write a template like \"gha:{repository}@{ref}\", or remove grant.subject to keep <iss>#<sub>".to_owned());
        }
        if src.len() > MAX_TEMPLATE_LEN {
            return Err(format!(
                "is {} bytes, over the {MAX_TEMPLATE_LEN}-byte limit; shorten the literal text",
                src.len()
            ));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = src.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' | '}' if chars.next_if(|&(_, n)| n == c).is_some() => literal.push(c),
                '{' => {
                    let start = at + 1;
                    let end = loop {
                        match chars.next() {
                            Some((end, '}')) => break end,
                            Some((_, '{')) | None => {
                                return Err(format!(
                                    "the '{{' at byte {at} is not closed; close it with '}}', or write {{{{ for a literal brace"
                                ));
                            }
                            Some(_) => {}
                        }
                    };
                    let path = &src[start..end];
                    if path.is_empty() {
                        return Err(format!(
                            "empty placeholder at byte {at}; name a claim like {{sub}}, or write {{{{}}}} for literal braces"
                        ));
                    }
                    let path = ClaimPath::new(path)
                        .map_err(|problem| format!("placeholder {{{path}}}: {problem}"))?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Claim(path));
                }
                '}' => {
                    return Err(format!(
                        "unmatched '}}' at byte {at}; write }}}} for a literal brace"
                    ));
                }
                c if bad_char(c) => {
                    return Err(format!(
                        "contains {c:?} at byte {at}; a subject may not hold whitespace or control characters, so remove it"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if let Some(Part::Literal(prefix)) = parts.first()
            && has_spiffe_prefix(prefix.as_bytes())
        {
            return Err("starts with \"spiffe:\"; an OIDC subject must never look like a SPIFFE ID, so use another prefix, like \"k8s:\"".to_owned());
        }
        if parts
            .iter()
            .any(|p| matches!(p, Part::Literal(l) if l.contains("://")))
        {
            return Err("contains \"://\"; a mapped subject must not look like a URL, an issuer's default <iss>#<sub> or a SPIFFE ID, so use a prefix like \"k8s:\"".to_owned());
        }
        Ok(Self { parts })
    }

    /// The rendered subject's length when the template renders to a valid subject for
    /// these claims; `None` when the rule must not select them. Allocates nothing.
    pub(crate) fn rendered_len(&self, claims: &Map<String, Value>) -> Option<usize> {
        let mut guard = Guard::default();
        (self.for_each_piece(claims, |piece| guard.push(piece)) && guard.finish())
            .then_some(guard.len)
    }

    /// The rendered subject, or `None` as for [`Self::rendered_len`].
    pub(crate) fn render(&self, claims: &Map<String, Value>) -> Option<String> {
        let len = self.rendered_len(claims)?;
        let mut out = String::with_capacity(len);
        self.for_each_piece(claims, |piece| {
            out.push_str(piece);
            true
        })
        .then_some(out)
    }

    /// Feeds each rendered piece to `f` in order; false as soon as a placeholder does not
    /// resolve to a scalar or `f` refuses a piece.
    fn for_each_piece(&self, claims: &Map<String, Value>, mut f: impl FnMut(&str) -> bool) -> bool {
        self.parts.iter().all(|part| match part {
            Part::Literal(text) => f(text),
            Part::Claim(path) => {
                let mut buf = StackStr::default();
                path.resolve(claims)
                    .and_then(|value| scalar_text(value, &mut buf))
                    .is_some_and(|text| f(&text))
            }
        })
    }
}

/// Whether `s` may be an issued token's subject that came from `grant.subject`:
/// 1..=1024 bytes, no whitespace or control character, not starting with `spiffe:` in
/// any case, and no `://` anywhere: a claim value must not make a mapped subject equal
/// another issuer's default `<iss>#<sub>` (or any URL-shaped identity). The admin API accepts the same forms for revocation by subject.
pub fn is_valid_mapped_subject(s: &str) -> bool {
    let mut guard = Guard::default();
    guard.push(s) && guard.finish()
}

fn bad_char(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

fn has_spiffe_prefix(s: &[u8]) -> bool {
    s.get(..SPIFFE_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(SPIFFE_PREFIX))
}

/// Checks a subject piece by piece as it would be rendered, without building it.
#[derive(Default)]
struct Guard {
    len: usize,
    /// The first bytes of the subject, enough to test the `spiffe:` prefix.
    head: [u8; SPIFFE_PREFIX.len()],
    head_len: usize,
    /// The last two bytes seen, to find `://` across pieces.
    tail: [u8; 2],
    url_like: bool,
}

impl Guard {
    fn push(&mut self, piece: &str) -> bool {
        self.len += piece.len();
        if self.len > MAX_SUBJECT_LEN || piece.chars().any(bad_char) {
            return false;
        }
        for &b in piece.as_bytes() {
            if let Some(slot) = self.head.get_mut(self.head_len) {
                *slot = b;
                self.head_len += 1;
            }
            self.url_like |= self.tail == *b":/" && b == b'/';
            self.tail = [self.tail[1], b];
        }
        !self.url_like
    }

    fn finish(&self) -> bool {
        self.len > 0 && !self.url_like && !has_spiffe_prefix(&self.head[..self.head_len])
    }
}
