//! Revocation store, token inventory, audit tail, one-time marks and the shared rate
//! limit: the state every replica must share. Backends: `embedded` (redb, one process) and `redis` (shared by every replica). Imports only
//! `domain` and `clock`; the service layer talks to the traits, never a backend.
//!
//! Semantics (contract §3, §6):
//! - a jti revocation kills one token until `expires_at` (the token's exp + leeway);
//! - a subject revocation is a watermark: every token of that subject with
//!   `iat <= watermark` is dead; `block_until` additionally quarantines new issuance;
//! - a kid revocation kills every token signed by that key.
//!
//! Entries whose `expires_at <= now` are treated as absent even before a purge runs.

pub mod conformance;
pub mod embedded;
pub mod redis;

use crate::clock::UnixSeconds;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    Jti,
    Subject,
    Kid,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jti => "jti",
            Self::Subject => "subject",
            Self::Kid => "kid",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jti" => Some(Self::Jti),
            "subject" => Some(Self::Subject),
            "kid" => Some(Self::Kid),
            _ => None,
        }
    }
}

/// What the admin API (or `/revoke`) asks the store to remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRevocation {
    pub kind: RevocationKind,
    /// jti, subject (SPIFFE ID or `<iss>#<sub>`), or kid.
    pub value: String,
    pub reason: String,
    /// Who asked: the admin's SPIFFE ID, `admin-token`, or the token's own subject.
    pub actor: String,
    /// Also the watermark for subject revocations.
    pub created_at: UnixSeconds,
    /// When the entry stops mattering and may be forgotten.
    pub expires_at: UnixSeconds,
    /// Subject revocations only: refuse new issuance until then (`block_new`).
    pub block_until: Option<UnixSeconds>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// Unique, and ordered by creation (listing order and cursor).
    pub id: String,
    pub kind: RevocationKind,
    pub value: String,
    pub reason: String,
    pub actor: String,
    pub created_at: UnixSeconds,
    pub expires_at: UnixSeconds,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_until: Option<UnixSeconds>,
}

/// The facts of a token that the three revocation kinds look at.
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'a> {
    pub jti: &'a str,
    pub subject: &'a str,
    pub kid: &'a str,
    pub iat: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiftOutcome {
    Lifted,
    NotFound,
    /// jti revocations are final (contract §3: 409).
    NotLiftable,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    /// Opaque, from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// An entry of the live-token inventory; never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub jti: String,
    pub sub: String,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub kid: String,
    pub iat: UnixSeconds,
    pub exp: UnixSeconds,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFilter {
    pub subject: Option<String>,
    pub audience: Option<String>,
}

/// An audit event as the store keeps it: the rendered JSON line plus the fields the
/// admin API filters on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAuditEvent {
    pub ts: UnixSeconds,
    #[serde(default)]
    pub subject: Option<String>,
    pub outcome: String,
    pub json: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub since: Option<UnixSeconds>,
    pub subject: Option<String>,
    pub outcome: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or did not answer in time. Callers fail
    /// closed: introspection 503, admin revocation 503 (never reported as done).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with data we cannot read.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    #[error("bad cursor")]
    BadCursor,
    /// A [`ReplayGuard`] key outside the documented alphabet or length. Callers pass a
    /// hex digest, so this is a programming error, never a client's; the message gives
    /// the length and first bad byte position, never the key (it might be a token).
    #[error("invalid one-time key: {0}")]
    InvalidKey(String),
}

#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// Durably stores a revocation and returns its record. A subject or kid
    /// revocation replaces an earlier one for the same value.
    async fn revoke(&self, rev: NewRevocation) -> Result<RevocationRecord, StoreError>;
    /// One read covering all three kinds.
    async fn is_revoked(&self, token: &TokenRef<'_>, now: UnixSeconds) -> Result<bool, StoreError>;
    /// The quarantine end for a subject, if one is in force at `now`.
    async fn blocked_until(
        &self,
        subject: &str,
        now: UnixSeconds,
    ) -> Result<Option<UnixSeconds>, StoreError>;
    /// Live records, oldest first.
    async fn list_revocations(
        &self,
        kind: Option<RevocationKind>,
        page: &PageRequest,
        now: UnixSeconds,
    ) -> Result<Page<RevocationRecord>, StoreError>;
    async fn lift(&self, id: &str, now: UnixSeconds) -> Result<LiftOutcome, StoreError>;
    /// Readiness probe.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Drops expired entries (revocations, inventory and, where the backend does not
    /// expire them itself, one-time marks; not the audit tail); returns how many.
    async fn purge_expired(&self, now: UnixSeconds) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait TokenInventory: Send + Sync + 'static {
    async fn record_issued(&self, token: &IssuedToken) -> Result<(), StoreError>;
    async fn get_issued(&self, jti: &str) -> Result<Option<IssuedToken>, StoreError>;
    /// Unexpired and unrevoked tokens (by jti, subject watermark or kid), oldest first.
    async fn list_live(
        &self,
        filter: &TokenFilter,
        page: &PageRequest,
        now: UnixSeconds,
    ) -> Result<Page<IssuedToken>, StoreError>;
}

#[async_trait]
pub trait AuditTail: Send + Sync + 'static {
    /// Appends one event; the tail is capped, the oldest events fall off.
    async fn append_audit(&self, event: &StoredAuditEvent) -> Result<(), StoreError>;
    /// Appends events in order, in as few writes as the backend allows (the service's
    /// audit task drains its queue into one call).
    async fn append_audit_batch(&self, events: &[StoredAuditEvent]) -> Result<(), StoreError> {
        for event in events {
            self.append_audit(event).await?;
        }
        Ok(())
    }
    /// Newest first, at most `limit`.
    async fn recent_audit(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<StoredAuditEvent>, StoreError>;
}

/// One-time use of subject tokens (`[[oidc_issuer]] one_time`, contract §6 `once:{key}`).
#[async_trait]
pub trait ReplayGuard: Send + Sync + 'static {
    /// Marks `key` as used until `expires_at`. `Ok(true)` for the first use, `Ok(false)`
    /// when it was already marked and has not expired at `now`. Atomic: of any number of
    /// concurrent calls with one key, across every replica sharing the store, exactly one
    /// gets `true`. `key` is opaque, at most 128 bytes of `[0-9a-zA-Z:_-]`.
    ///
    /// Both backends: an empty key or one breaking that rule is
    /// [`StoreError::InvalidKey`], before anything is read or written; an
    /// `expires_at <= now` marks nothing and returns `Ok(true)` (an already expired
    /// mark would be absent anyway, and the caller refuses expired tokens first).
    async fn first_use(
        &self,
        key: &str,
        expires_at: UnixSeconds,
        now: UnixSeconds,
    ) -> Result<bool, StoreError>;
}

/// GCRA parameters of a shared rate limit: one event per `interval_micros` on average,
/// at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraLimit {
    pub interval_micros: u64,
    pub burst: u32,
}

/// A rate limit that every replica sharing the store enforces together (`[limits]
/// per_identity` with the Redis backend; contract §6 `rl:{hex sha256(subject)}`).
#[async_trait]
pub trait SharedRateLimit: Send + Sync + 'static {
    /// Takes one event of `subject`'s allowance at `now_millis` (the caller's clock, not
    /// the store's). `Ok(None)`: it conforms and was counted. `Ok(Some(ms))`: refused,
    /// and the next event conforms in `ms` milliseconds (at least 1); nothing counted.
    /// Atomic: concurrent callers on any replica never together exceed the burst.
    async fn take(
        &self,
        subject: &str,
        limit: GcraLimit,
        now_millis: i64,
    ) -> Result<Option<u64>, StoreError>;
}

/// Longest [`ReplayGuard`] key: a prefix and a hex SHA-256 fit with room to spare.
pub const MAX_ONCE_KEY_LEN: usize = 128;

/// The [`ReplayGuard`] key rule, shared by both backends so they refuse the same keys.
/// The alphabet keeps the Redis key free of glob and hash-tag characters (`{}*?[]`).
fn check_once_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_ONCE_KEY_LEN {
        return Err(StoreError::InvalidKey(format!(
            "{} bytes long; pass 1 to {MAX_ONCE_KEY_LEN} bytes (a hex SHA-256 is 64)",
            key.len()
        )));
    }
    match key
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-')))
    {
        Some(at) => Err(StoreError::InvalidKey(format!(
            "byte {at} is outside [0-9a-zA-Z:_-]; pass a hex digest"
        ))),
        None => Ok(()),
    }
}

/// A backend implements all four; `app` hands each consumer the narrow trait it needs.
pub trait Backend: RevocationStore + TokenInventory + AuditTail + ReplayGuard {}
impl<T: RevocationStore + TokenInventory + AuditTail + ReplayGuard> Backend for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_keys_follow_the_rule() {
        let max = "a".repeat(MAX_ONCE_KEY_LEN);
        let cases: [(&str, &str, bool); 11] = [
            ("hex sha-256", &"0123456789abcdef".repeat(4), true),
            ("every allowed class", "AZaz09:_-", true),
            ("one byte", "x", true),
            ("exactly the maximum", &max, true),
            ("empty", "", false),
            ("one byte too long", &format!("{max}a"), false),
            ("space", "a b", false),
            ("hash tag braces", "{tag}", false),
            ("glob star", "a*", false),
            ("slash", "a/b", false),
            ("non-ascii", "caf\u{e9}", false),
        ];
        for (name, key, ok) in cases {
            let got = check_once_key(key);
            assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
            if let Err(e) = got {
                assert!(matches!(e, StoreError::InvalidKey(_)), "{name}: {e:?}");
            }
        }
    }

    #[test]
    fn invalid_key_message_does_not_echo_the_key() {
        let secret = "eyJhbGciOiJSUzI1NiJ9.secret.part";
        let e = check_once_key(secret).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(e.contains("byte 20"), "{e}");
    }
}
