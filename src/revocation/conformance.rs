//! Backend-agnostic conformance suite for [`Backend`] (contract §3, §6 and the semantics
//! in the parent module). Every backend runs it unchanged from its own test: the
//! embedded store on a temp file, Redis against a real server.
//!
//! Each check is a `pub async fn` returning `Err(description)` on the first violated
//! rule; [`run_all`] runs them in order and reports every one by name.
//!
//! So that it also holds on a shared, long-lived store (a Redis reused across runs):
//! - time is only what the checks pass as `now`: synthetic, around `T` = 1.9e9, never
//!   the wall clock, so nothing depends on the store's own idea of time;
//! - every value (jti, subject, kid, audience, id probes) carries a per-run nonce, and
//!   listings are judged only on this run's items (foreign items may interleave);
//! - live entries expire at `T + 3600` or later; `purge` passes `now = T + 100`, so it
//!   removes only entries meant to be expired.
//!
//! Listings are walked to the end, so a store holding many leftovers makes the suite
//! slow: give each run a fresh key prefix or database.
//!
//! Cases not covered here because they need a backend-specific constructor (the audit
//! cap) live in the backend's own unit tests.
//!
//! One-time marks ([`ReplayGuard`](super::ReplayGuard)): the embedded store drops
//! expired marks in `purge_expired`, Redis lets `EXAT` drop them and its purge leaves
//! them. So `purge` here checks only what both promise (an expired mark is usable
//! again, a live one survives); the embedded unit tests check the purge count and
//! `tests/redis_store.rs` the key's `EXPIRETIME`.
//!
//! Inventory order is not part of the contract: the embedded store lists tokens by
//! `(iat, jti)`, while Redis walks `SCAN` batches (hash order) because a sorted index
//! would be a key outside the contract's layout (§6) and another write per issued
//! token. So the inventory checks compare sets and require every live token exactly
//! once across pages, and no expired or revoked one; the embedded store's ordering is
//! tested in its own unit tests. Revocation listings stay ordered (oldest first) here.

use super::{
    AuditFilter, Backend, IssuedToken, LiftOutcome, MAX_ONCE_KEY_LEN, NewRevocation, PageRequest,
    RevocationKind, RevocationRecord, StoreError, StoredAuditEvent, TokenFilter, TokenRef,
};
use crate::clock::UnixSeconds;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

pub type CheckResult = Result<(), String>;

/// The synthetic "present" every check works around.
pub const T: UnixSeconds = 1_900_000_000;
/// Expiry of entries that must stay live throughout (and survive `purge`).
const LONG: UnixSeconds = T + 1_000_000;
/// Guards the pagination walks against a cursor that never ends.
const MAX_PAGES: usize = 100_000;

/// One run's identity: the nonce that keeps its values apart from other runs'.
#[derive(Debug, Clone)]
pub struct Run {
    nonce: String,
}

impl Default for Run {
    fn default() -> Self {
        Self::new()
    }
}

impl Run {
    pub fn new() -> Self {
        // RandomState is seeded randomly per process; the counter separates runs
        // within one process. Enough to keep runs apart, no crypto needed.
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let h = std::collections::hash_map::RandomState::new().hash_one(n);
        Self {
            nonce: format!("{h:016x}"),
        }
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// A run-unique value such as a jti or kid.
    fn v(&self, what: &str) -> String {
        format!("{what}-{}", self.nonce)
    }

    /// A run-unique SPIFFE-ID-shaped subject.
    fn subject(&self, what: &str) -> String {
        format!("spiffe://conformance.test/{}/{what}", self.nonce)
    }
}

/// Runs every check against `store`, in order; the result names each case.
pub async fn run_all<B: Backend + ?Sized>(store: &B) -> Vec<(&'static str, CheckResult)> {
    let run = Run::new();
    let mut out = Vec::new();
    macro_rules! checks {
        ($($name:ident),* $(,)?) => {
            $( out.push((stringify!($name), $name(store, &run).await)); )*
        };
    }
    checks!(
        ping,
        jti_revocation,
        subject_watermark,
        subject_block_until,
        kid_revocation,
        replacement,
        lift,
        listing_order_and_pagination,
        listing_kind_filter_and_bad_cursor,
        listing_limits,
        inventory_get,
        inventory_live_filtering,
        inventory_pagination,
        audit_tail,
        once_first_use,
        once_expiry,
        once_concurrent,
        once_invalid_keys,
        // Last: it deletes what the others left expired.
        purge,
    );
    out
}

// ---- helpers -------------------------------------------------------------------------

trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T> Ctx<T> for Result<T, StoreError> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// `ensure_eq!(actual, expected, "what")`
macro_rules! ensure_eq {
    ($actual:expr, $expected:expr, $($msg:tt)+) => {{
        // `match` keeps temporaries in the arguments alive, as `assert_eq!` does.
        match (&$actual, &$expected) {
            (actual, expected) => {
                if actual != expected {
                    return Err(format!(
                        "{}: expected {:?}, got {:?}",
                        format!($($msg)+),
                        expected,
                        actual
                    ));
                }
            }
        }
    }};
}

fn new_rev(
    kind: RevocationKind,
    value: &str,
    created_at: UnixSeconds,
    expires_at: UnixSeconds,
) -> NewRevocation {
    NewRevocation {
        kind,
        value: value.to_owned(),
        reason: "conformance".to_owned(),
        actor: "conformance-suite".to_owned(),
        created_at,
        expires_at,
        block_until: None,
    }
}

async fn revoke<B: Backend + ?Sized>(
    s: &B,
    rev: NewRevocation,
) -> Result<RevocationRecord, String> {
    let what = format!("revoke {} {}", rev.kind.as_str(), rev.value);
    s.revoke(rev).await.ctx(&what)
}

/// Whether a token with these facts is revoked at `now`.
async fn revoked<B: Backend + ?Sized>(
    s: &B,
    (jti, subject, kid, iat): (&str, &str, &str, UnixSeconds),
    now: UnixSeconds,
) -> Result<bool, String> {
    let token = TokenRef {
        jti,
        subject,
        kid,
        iat,
    };
    s.is_revoked(&token, now).await.ctx("is_revoked")
}

fn effective_limit(limit: usize) -> usize {
    match limit {
        0 => 100,
        n => n.min(1000),
    }
}

/// Every live revocation page by page, checking the paging rules on the way.
async fn walk_revocations<B: Backend + ?Sized>(
    s: &B,
    kind: Option<RevocationKind>,
    limit: usize,
    now: UnixSeconds,
) -> Result<Vec<RevocationRecord>, String> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let req = PageRequest {
            limit,
            cursor: cursor.clone(),
        };
        let page = s
            .list_revocations(kind, &req, now)
            .await
            .ctx("list_revocations")?;
        ensure!(
            page.items.len() <= effective_limit(limit),
            "page of {} items for limit {limit}",
            page.items.len()
        );
        ensure!(
            cursor.is_none() || !page.items.is_empty(),
            "a next_cursor led to an empty page (next_cursor must be None when nothing follows)"
        );
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(all),
        }
    }
    Err(format!(
        "revocation listing did not end after {MAX_PAGES} pages"
    ))
}

async fn walk_live<B: Backend + ?Sized>(
    s: &B,
    filter: &TokenFilter,
    limit: usize,
    now: UnixSeconds,
) -> Result<Vec<IssuedToken>, String> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let req = PageRequest {
            limit,
            cursor: cursor.clone(),
        };
        let page = s.list_live(filter, &req, now).await.ctx("list_live")?;
        ensure!(
            page.items.len() <= effective_limit(limit),
            "page of {} tokens for limit {limit}",
            page.items.len()
        );
        ensure!(
            cursor.is_none() || !page.items.is_empty(),
            "a next_cursor led to an empty page (next_cursor must be None when nothing follows)"
        );
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => {
                let mut seen: Vec<&str> = all.iter().map(|t| t.jti.as_str()).collect();
                seen.sort_unstable();
                let before = seen.len();
                seen.dedup();
                ensure!(
                    seen.len() == before,
                    "a token was listed twice across pages (limit {limit})"
                );
                return Ok(all);
            }
        }
    }
    Err(format!("token listing did not end after {MAX_PAGES} pages"))
}

/// The values of this run's records in `records`, in listing order.
fn mine<'a>(records: &'a [RevocationRecord], run: &Run) -> Vec<&'a str> {
    records
        .iter()
        .filter(|r| r.value.contains(run.nonce()))
        .map(|r| r.value.as_str())
        .collect()
}

fn ids_unique(records: &[RevocationRecord]) -> CheckResult {
    let mut ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    ensure!(ids.len() == before, "an id was listed twice");
    Ok(())
}

fn token(
    jti: &str,
    sub: &str,
    aud: &str,
    kid: &str,
    iat: UnixSeconds,
    exp: UnixSeconds,
) -> IssuedToken {
    IssuedToken {
        jti: jti.to_owned(),
        sub: sub.to_owned(),
        aud: aud.to_owned(),
        scope: Some("read".to_owned()),
        kid: kid.to_owned(),
        iat,
        exp,
    }
}

async fn record_all<B: Backend + ?Sized>(s: &B, tokens: &[&IssuedToken]) -> CheckResult {
    for t in tokens {
        s.record_issued(t)
            .await
            .ctx(&format!("record_issued {}", t.jti))?;
    }
    Ok(())
}

/// The jtis of `tokens`, sorted: inventory listings are compared as sets (module doc).
fn jtis<'a>(tokens: impl IntoIterator<Item = &'a IssuedToken>) -> Vec<&'a str> {
    let mut out: Vec<&str> = tokens.into_iter().map(|t| t.jti.as_str()).collect();
    out.sort_unstable();
    out
}

/// `tokens` sorted by jti, for comparing whole entries regardless of listing order.
fn sorted_by_jti(mut tokens: Vec<IssuedToken>) -> Vec<IssuedToken> {
    tokens.sort_by(|a, b| a.jti.cmp(&b.jti));
    tokens
}

// ---- checks --------------------------------------------------------------------------

pub async fn ping<B: Backend + ?Sized>(s: &B, _run: &Run) -> CheckResult {
    s.ping().await.ctx("ping")
}

/// A jti revocation kills exactly that token until `expires_at`.
pub async fn jti_revocation<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let jti = run.v("jti");
    let sub = run.subject("jti");
    let kid = run.v("jti-kid");
    let new = NewRevocation {
        reason: "token leaked".to_owned(),
        actor: "spiffe://conformance.test/admin".to_owned(),
        ..new_rev(RevocationKind::Jti, &jti, T, T + 3600)
    };
    let rec = revoke(s, new).await?;
    ensure!(!rec.id.is_empty(), "revocation id is empty");
    ensure_eq!(
        (
            rec.kind,
            rec.value.as_str(),
            rec.reason.as_str(),
            rec.actor.as_str(),
            rec.created_at,
            rec.expires_at,
            rec.block_until
        ),
        (
            RevocationKind::Jti,
            jti.as_str(),
            "token leaked",
            "spiffe://conformance.test/admin",
            T,
            T + 3600,
            None
        ),
        "returned record"
    );
    let tok = (jti.as_str(), sub.as_str(), kid.as_str(), T - 10);
    ensure!(revoked(s, tok, T).await?, "revoked jti not revoked");
    ensure!(
        revoked(s, tok, T + 3599).await?,
        "revoked jti not revoked just before expires_at"
    );
    ensure!(
        !revoked(s, tok, T + 3600).await?,
        "jti still revoked at expires_at (expired entries are absent)"
    );
    let later = (jti.as_str(), sub.as_str(), kid.as_str(), T + 10);
    ensure!(
        revoked(s, later, T + 20).await?,
        "a jti revocation must not depend on iat"
    );
    let other = run.v("jti-other");
    ensure!(
        !revoked(s, (other.as_str(), sub.as_str(), kid.as_str(), T - 10), T).await?,
        "another jti of the same subject and key is revoked"
    );
    Ok(())
}

/// A subject revocation is a watermark: `iat <= created_at` is dead, later tokens live.
pub async fn subject_watermark<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let sub = run.subject("wm");
    let kid = run.v("wm-kid");
    revoke(s, new_rev(RevocationKind::Subject, &sub, T, LONG)).await?;
    let now = T + 10;
    for (iat, want, what) in [
        (T - 1, true, "iat before the watermark"),
        (T, true, "iat equal to the watermark"),
        (T + 1, false, "iat after the watermark"),
    ] {
        let jti = run.v(&format!("wm-{iat}"));
        let got = revoked(s, (&jti, &sub, &kid, iat), now).await?;
        ensure_eq!(got, want, "{what}");
    }
    let other = run.subject("wm-other");
    let jti = run.v("wm-other");
    ensure!(
        !revoked(s, (&jti, &other, &kid, T - 1), now).await?,
        "another subject's token is revoked"
    );
    ensure!(
        !revoked(s, (&jti, &sub, &kid, T - 1), LONG).await?,
        "subject revocation still in force at expires_at"
    );
    Ok(())
}

/// `blocked_until` answers only while the quarantine is in force.
pub async fn subject_block_until<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let blocked = run.subject("block");
    revoke(
        s,
        NewRevocation {
            block_until: Some(T + 600),
            ..new_rev(RevocationKind::Subject, &blocked, T, LONG)
        },
    )
    .await?;
    for (now, want) in [
        (T, Some(T + 600)),
        (T + 599, Some(T + 600)),
        (T + 600, None),
        (T + 601, None),
    ] {
        let got = s.blocked_until(&blocked, now).await.ctx("blocked_until")?;
        ensure_eq!(got, want, "blocked_until at T+{}", now - T);
    }
    let unblocked = run.subject("no-block");
    revoke(s, new_rev(RevocationKind::Subject, &unblocked, T, LONG)).await?;
    let got = s.blocked_until(&unblocked, T).await.ctx("blocked_until")?;
    ensure_eq!(got, None, "subject revoked without block_new");
    let unknown = run.subject("never-revoked");
    let got = s.blocked_until(&unknown, T).await.ctx("blocked_until")?;
    ensure_eq!(got, None, "subject never revoked");
    Ok(())
}

/// A kid revocation kills every token signed by that key, whatever its iat.
pub async fn kid_revocation<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let kid = run.v("kid");
    let sub = run.subject("kid");
    revoke(s, new_rev(RevocationKind::Kid, &kid, T, LONG)).await?;
    let (a, b) = (run.v("kid-a"), run.v("kid-b"));
    ensure!(
        revoked(s, (&a, &sub, &kid, T - 100), T + 10).await?,
        "token signed by the revoked key (older) is live"
    );
    ensure!(
        revoked(s, (&b, &sub, &kid, T + 100), T + 200).await?,
        "token signed by the revoked key (newer than the revocation) is live"
    );
    let other = run.v("kid-other");
    ensure!(
        !revoked(s, (&a, &sub, &other, T - 100), T + 10).await?,
        "token signed by another key is revoked"
    );
    ensure!(
        !revoked(s, (&a, &sub, &kid, T - 100), LONG).await?,
        "kid revocation still in force at expires_at"
    );
    Ok(())
}

/// A new subject or kid revocation replaces the earlier one for the same value.
pub async fn replacement<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let sub = run.subject("replace");
    let kid = run.v("replace-kid");
    let first = revoke(
        s,
        NewRevocation {
            block_until: Some(T + 600),
            ..new_rev(RevocationKind::Subject, &sub, T, LONG)
        },
    )
    .await?;
    let second = revoke(s, new_rev(RevocationKind::Subject, &sub, T + 100, LONG)).await?;
    ensure!(
        first.id != second.id,
        "two revocations share the id {}",
        first.id
    );
    let now = T + 200;
    let jti = run.v("replace");
    ensure!(
        revoked(s, (&jti, &sub, &kid, T + 50), now).await?,
        "the newer watermark is not in force"
    );
    let got = s
        .blocked_until(&sub, now - 150)
        .await
        .ctx("blocked_until")?;
    ensure_eq!(got, None, "quarantine of the replaced record");

    let listed = walk_revocations(s, Some(RevocationKind::Subject), 0, now).await?;
    let ids: Vec<&str> = listed
        .iter()
        .filter(|r| r.value == sub)
        .map(|r| r.id.as_str())
        .collect();
    ensure_eq!(
        ids,
        vec![second.id.as_str()],
        "subject records listed for {sub}"
    );
    let got = s.lift(&first.id, now).await.ctx("lift")?;
    ensure_eq!(
        got,
        LiftOutcome::NotFound,
        "lifting the replaced subject record"
    );

    let k1 = revoke(s, new_rev(RevocationKind::Kid, &kid, T, LONG)).await?;
    let k2 = revoke(s, new_rev(RevocationKind::Kid, &kid, T + 100, LONG)).await?;
    let listed = walk_revocations(s, Some(RevocationKind::Kid), 0, now).await?;
    let ids: Vec<&str> = listed
        .iter()
        .filter(|r| r.value == kid)
        .map(|r| r.id.as_str())
        .collect();
    ensure_eq!(ids, vec![k2.id.as_str()], "kid records listed for {kid}");
    let got = s.lift(&k1.id, now).await.ctx("lift")?;
    ensure_eq!(
        got,
        LiftOutcome::NotFound,
        "lifting the replaced kid record"
    );
    Ok(())
}

/// Lifting: subject and kid records go away and stop revoking; jti records are final.
pub async fn lift<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let now = T + 10;
    let sub = run.subject("lift");
    let kid = run.v("lift-kid");
    let jti = run.v("lift-jti");
    let other_kid = run.v("lift-other-kid");

    let sub_rec = revoke(
        s,
        NewRevocation {
            block_until: Some(T + 600),
            ..new_rev(RevocationKind::Subject, &sub, T, LONG)
        },
    )
    .await?;
    let probe = run.v("lift-probe");
    ensure!(
        revoked(s, (&probe, &sub, &other_kid, T - 1), now).await?,
        "subject not revoked before the lift"
    );
    let got = s.lift(&sub_rec.id, now).await.ctx("lift subject")?;
    ensure_eq!(got, LiftOutcome::Lifted, "lifting a subject revocation");
    ensure!(
        !revoked(s, (&probe, &sub, &other_kid, T - 1), now).await?,
        "subject still revoked after the lift"
    );
    let got = s.blocked_until(&sub, now).await.ctx("blocked_until")?;
    ensure_eq!(got, None, "quarantine after the lift");
    let got = s.lift(&sub_rec.id, now).await.ctx("lift again")?;
    ensure_eq!(got, LiftOutcome::NotFound, "lifting the same record twice");

    let kid_rec = revoke(s, new_rev(RevocationKind::Kid, &kid, T, LONG)).await?;
    let other_sub = run.subject("lift-other");
    let got = s.lift(&kid_rec.id, now).await.ctx("lift kid")?;
    ensure_eq!(got, LiftOutcome::Lifted, "lifting a kid revocation");
    ensure!(
        !revoked(s, (&probe, &other_sub, &kid, T - 1), now).await?,
        "key still revoked after the lift"
    );

    let jti_rec = revoke(s, new_rev(RevocationKind::Jti, &jti, T, LONG)).await?;
    let got = s.lift(&jti_rec.id, now).await.ctx("lift jti")?;
    ensure_eq!(got, LiftOutcome::NotLiftable, "lifting a jti revocation");
    ensure!(
        revoked(s, (&jti, &other_sub, &other_kid, T - 1), now).await?,
        "jti no longer revoked after a refused lift"
    );

    let listed = walk_revocations(s, None, 0, now).await?;
    let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
    ensure!(
        !ids.contains(&sub_rec.id.as_str()),
        "lifted subject record still listed"
    );
    ensure!(
        !ids.contains(&kid_rec.id.as_str()),
        "lifted kid record still listed"
    );
    ensure!(
        ids.contains(&jti_rec.id.as_str()),
        "jti record not listed after a refused lift"
    );

    let got = s
        .lift(&run.v("no-such-id"), now)
        .await
        .ctx("lift unknown")?;
    ensure_eq!(got, LiftOutcome::NotFound, "lifting an unknown id");

    let expired = revoke(
        s,
        new_rev(
            RevocationKind::Subject,
            &run.subject("lift-expired"),
            T - 100,
            T,
        ),
    )
    .await?;
    let got = s.lift(&expired.id, now).await.ctx("lift expired")?;
    ensure_eq!(got, LiftOutcome::NotFound, "lifting an expired record");
    Ok(())
}

/// Live records oldest first, across pages, each once; expired ones left out.
pub async fn listing_order_and_pagination<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let now = T + 10;
    let made = [
        (RevocationKind::Jti, run.v("list-1")),
        (RevocationKind::Subject, run.subject("list-2")),
        (RevocationKind::Kid, run.v("list-3")),
        (RevocationKind::Jti, run.v("list-4")),
        (RevocationKind::Subject, run.subject("list-5")),
    ];
    let expired = run.v("list-expired");
    revoke(
        s,
        new_rev(RevocationKind::Jti, &run.v("list-0"), T - 200, T + 3600),
    )
    .await?;
    revoke(s, new_rev(RevocationKind::Jti, &expired, T - 100, T)).await?;
    for (i, (kind, value)) in (1..).zip(&made) {
        revoke(s, new_rev(*kind, value, T + i, LONG)).await?;
    }
    let mut want = vec![run.v("list-0")];
    want.extend(made.iter().map(|(_, v)| v.clone()));
    for limit in [1, 2, 0] {
        let all = walk_revocations(s, None, limit, now).await?;
        ids_unique(&all)?;
        ensure!(
            all.iter().all(|r| r.expires_at > now),
            "an expired record is listed (limit {limit})"
        );
        let got: Vec<&str> = mine(&all, run)
            .into_iter()
            .filter(|v| v.contains("list-"))
            .collect();
        ensure_eq!(
            got,
            want,
            "this run's records in listing order (limit {limit})"
        );
    }
    Ok(())
}

/// The kind filter, and a cursor the backend did not hand out.
pub async fn listing_kind_filter_and_bad_cursor<B: Backend + ?Sized>(
    s: &B,
    run: &Run,
) -> CheckResult {
    let now = T + 10;
    let (j1, k1, j2) = (run.v("kf-jti-1"), run.v("kf-kid-1"), run.v("kf-jti-2"));
    revoke(s, new_rev(RevocationKind::Jti, &j1, T, T + 3600)).await?;
    revoke(s, new_rev(RevocationKind::Kid, &k1, T, LONG)).await?;
    revoke(s, new_rev(RevocationKind::Jti, &j2, T, T + 3600)).await?;

    let jtis = walk_revocations(s, Some(RevocationKind::Jti), 1, now).await?;
    ensure!(
        jtis.iter().all(|r| r.kind == RevocationKind::Jti),
        "kind=jti listed another kind"
    );
    let got: Vec<&str> = mine(&jtis, run)
        .into_iter()
        .filter(|v| v.contains("kf-"))
        .collect();
    ensure_eq!(got, vec![j1.as_str(), j2.as_str()], "kind=jti listing");

    let kids = walk_revocations(s, Some(RevocationKind::Kid), 2, now).await?;
    ensure!(
        kids.iter().all(|r| r.kind == RevocationKind::Kid),
        "kind=kid listed another kind"
    );
    let got: Vec<&str> = mine(&kids, run)
        .into_iter()
        .filter(|v| v.contains("kf-"))
        .collect();
    ensure_eq!(got, vec![k1.as_str()], "kind=kid listing");

    let bad = PageRequest {
        limit: 10,
        cursor: Some(format!("!!not a cursor {}", run.nonce())),
    };
    match s.list_revocations(None, &bad, now).await {
        Err(StoreError::BadCursor) => Ok(()),
        Err(e) => Err(format!("garbage cursor: expected BadCursor, got error {e}")),
        Ok(p) => Err(format!("garbage cursor accepted, {} items", p.items.len())),
    }
}

/// `limit` 0 is a page of 100; larger limits are capped at 1000.
pub async fn listing_limits<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let now = T + 10;
    // 101 kid records guarantee that more than a default page is live; lifted after.
    let mut made = Vec::new();
    for i in 0..101 {
        made.push(
            revoke(
                s,
                new_rev(RevocationKind::Kid, &run.v(&format!("lim-{i:03}")), T, LONG),
            )
            .await?,
        );
    }
    let first = PageRequest {
        limit: 0,
        cursor: None,
    };
    let page = s
        .list_revocations(Some(RevocationKind::Kid), &first, now)
        .await
        .ctx("list_revocations")?;
    ensure_eq!(
        page.items.len(),
        100,
        "items on a limit=0 page with 101+ live records"
    );
    ensure!(
        page.next_cursor.is_some(),
        "no next_cursor with more records live"
    );

    let total = walk_revocations(s, Some(RevocationKind::Kid), 1000, now)
        .await?
        .len();
    let huge = PageRequest {
        limit: 5000,
        cursor: None,
    };
    let page = s
        .list_revocations(Some(RevocationKind::Kid), &huge, now)
        .await
        .ctx("list_revocations")?;
    ensure_eq!(
        page.items.len(),
        total.min(1000),
        "items on a limit=5000 page"
    );
    ensure_eq!(
        page.next_cursor.is_some(),
        total > 1000,
        "next_cursor on a limit=5000 page of {total} records"
    );

    for rec in made {
        let got = s.lift(&rec.id, now).await.ctx("lift")?;
        ensure_eq!(got, LiftOutcome::Lifted, "cleaning up {}", rec.value);
    }
    Ok(())
}

pub async fn inventory_get<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let t = IssuedToken {
        scope: None,
        ..token(
            &run.v("inv-get"),
            &run.subject("inv-get"),
            &run.v("aud-get"),
            &run.v("inv-kid"),
            T,
            T + 3600,
        )
    };
    let scoped = token(
        &run.v("inv-get-scoped"),
        &run.subject("inv-get"),
        &run.v("aud-get"),
        &run.v("inv-kid"),
        T,
        T + 3600,
    );
    record_all(s, &[&t, &scoped]).await?;
    let got = s.get_issued(&t.jti).await.ctx("get_issued")?;
    ensure_eq!(got, Some(t.clone()), "inventory entry without scope");
    let got = s.get_issued(&scoped.jti).await.ctx("get_issued")?;
    ensure_eq!(got, Some(scoped.clone()), "inventory entry with scope");
    let got = s
        .get_issued(&run.v("inv-unknown"))
        .await
        .ctx("get_issued")?;
    ensure_eq!(got, None, "unknown jti");
    Ok(())
}

/// `list_live` leaves out expired tokens and those revoked by jti, watermark or kid,
/// and filters by exact subject and audience.
pub async fn inventory_live_filtering<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let aud = run.v("aud-main");
    let aud2 = run.v("aud-other");
    let s_live = run.subject("inv-live");
    let s_wm = run.subject("inv-wm");
    let k_live = run.v("inv-kid-live");
    let k_dead = run.v("inv-kid-dead");
    let live1 = token(
        &run.v("inv-live1"),
        &s_live,
        &aud,
        &k_live,
        T - 300,
        T + 3600,
    );
    let live2 = token(
        &run.v("inv-live2"),
        &s_live,
        &aud2,
        &k_live,
        T - 200,
        T + 3600,
    );
    let expired = token(&run.v("inv-expired"), &s_live, &aud, &k_live, T - 4000, T);
    let by_jti = token(
        &run.v("inv-by-jti"),
        &s_live,
        &aud,
        &k_live,
        T - 250,
        T + 3600,
    );
    let wm_old = token(
        &run.v("inv-wm-old"),
        &s_wm,
        &aud,
        &k_live,
        T - 200,
        T + 3600,
    );
    let wm_new = token(&run.v("inv-wm-new"), &s_wm, &aud, &k_live, T - 50, T + 3600);
    let by_kid = token(
        &run.v("inv-by-kid"),
        &s_live,
        &aud,
        &k_dead,
        T - 150,
        T + 3600,
    );
    record_all(
        s,
        &[&wm_new, &live1, &live2, &expired, &by_jti, &wm_old, &by_kid],
    )
    .await?;

    let by_aud = TokenFilter {
        subject: None,
        audience: Some(aud.clone()),
    };
    // Before anything is revoked or expired, every token of the audience is live.
    let got = walk_live(s, &by_aud, 0, T - 1).await?;
    ensure_eq!(
        jtis(&got),
        jtis([&expired, &live1, &by_jti, &wm_old, &by_kid, &wm_new]),
        "audience listing before revocations"
    );

    revoke(
        s,
        new_rev(RevocationKind::Jti, &by_jti.jti, T - 5, T + 3600),
    )
    .await?;
    revoke(s, new_rev(RevocationKind::Subject, &s_wm, T - 100, LONG)).await?;
    revoke(s, new_rev(RevocationKind::Kid, &k_dead, T - 5, LONG)).await?;
    let now = T + 10;
    let got = walk_live(s, &by_aud, 0, now).await?;
    ensure_eq!(
        sorted_by_jti(got),
        sorted_by_jti(vec![live1.clone(), wm_new.clone()]),
        "audience listing after expiry and revocations"
    );

    let by_sub = TokenFilter {
        subject: Some(s_live.clone()),
        audience: None,
    };
    let got = walk_live(s, &by_sub, 0, now).await?;
    ensure_eq!(jtis(&got), jtis([&live1, &live2]), "subject filter");
    let both = TokenFilter {
        subject: Some(s_live.clone()),
        audience: Some(aud2.clone()),
    };
    let got = walk_live(s, &both, 0, now).await?;
    ensure_eq!(jtis(&got), jtis([&live2]), "subject and audience filter");
    let wm_only = TokenFilter {
        subject: Some(s_wm.clone()),
        audience: None,
    };
    let got = walk_live(s, &wm_only, 0, now).await?;
    ensure_eq!(jtis(&got), jtis([&wm_new]), "watermarked subject");
    let prefix = TokenFilter {
        subject: Some(format!("spiffe://conformance.test/{}", run.nonce())),
        audience: None,
    };
    let got = walk_live(s, &prefix, 0, now).await?;
    ensure!(
        got.is_empty(),
        "subject filter matched a prefix: {:?}",
        jtis(&got)
    );
    Ok(())
}

/// Pages join up (each token exactly once, whatever the page size); a foreign cursor is
/// refused. Order is the backend's (module doc).
pub async fn inventory_pagination<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let aud = run.v("aud-page");
    let sub = run.subject("page");
    let kid = run.v("page-kid");
    let mk = |name: &str, iat| {
        token(
            &format!("pg-{name}-{}", run.nonce()),
            &sub,
            &aud,
            &kid,
            iat,
            T + 3600,
        )
    };
    let (t1, t2b, t2a, t3, t4) = (
        mk("1", T - 50),
        mk("b", T - 40),
        mk("a", T - 40),
        mk("3", T - 30),
        mk("4", T - 20),
    );
    // Recorded out of order, so a backend that lists by insertion is not favoured.
    record_all(s, &[&t3, &t2b, &t1, &t4, &t2a]).await?;
    let want = vec![t1, t2a, t2b, t3, t4];
    let filter = TokenFilter {
        subject: None,
        audience: Some(aud),
    };
    for limit in [1, 2, 0] {
        let got = walk_live(s, &filter, limit, T).await?;
        ensure_eq!(jtis(&got), jtis(&want), "listing with limit {limit}");
    }
    let bad = PageRequest {
        limit: 2,
        cursor: Some(format!("!!not a cursor {}", run.nonce())),
    };
    match s.list_live(&filter, &bad, T).await {
        Err(StoreError::BadCursor) => Ok(()),
        Err(e) => Err(format!("garbage cursor: expected BadCursor, got error {e}")),
        Ok(p) => Err(format!("garbage cursor accepted, {} items", p.items.len())),
    }
}

/// Newest first, single and batched appends alike; `since` is inclusive; subject and
/// outcome filter exactly.
pub async fn audit_tail<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let sub = run.subject("audit");
    let other = run.subject("audit-other");
    let ev = |i: i64, subject: Option<&str>, outcome: &str| StoredAuditEvent {
        ts: T + i,
        subject: subject.map(str::to_owned),
        outcome: outcome.to_owned(),
        json: format!(r#"{{"n":{i},"run":"{}"}}"#, run.nonce()),
    };
    let e1 = ev(1, Some(&sub), "ok");
    let e2 = ev(2, Some(&sub), "denied");
    let e3 = ev(3, Some(&other), "ok");
    let e4 = ev(4, Some(&sub), "ok");
    let e5 = ev(5, None, "error");
    // Two one by one, three as one batch: order holds across both.
    for e in [&e1, &e2] {
        s.append_audit(e).await.ctx("append_audit")?;
    }
    s.append_audit_batch(&[e3.clone(), e4.clone(), e5.clone()])
        .await
        .ctx("append_audit_batch")?;
    let f =
        |subject: Option<&str>, outcome: Option<&str>, since: Option<UnixSeconds>| AuditFilter {
            since,
            subject: subject.map(str::to_owned),
            outcome: outcome.map(str::to_owned),
        };
    let cases = [
        (
            "subject",
            f(Some(&sub), None, None),
            10,
            vec![&e4, &e2, &e1],
        ),
        (
            "subject, limit 2",
            f(Some(&sub), None, None),
            2,
            vec![&e4, &e2],
        ),
        (
            "subject and outcome",
            f(Some(&sub), Some("denied"), None),
            10,
            vec![&e2],
        ),
        (
            "subject and since (inclusive)",
            f(Some(&sub), None, Some(T + 2)),
            10,
            vec![&e4, &e2],
        ),
        ("no filter, limit 1", f(None, None, None), 1, vec![&e5]),
        (
            "no filter, limit 5",
            f(None, None, None),
            5,
            vec![&e5, &e4, &e3, &e2, &e1],
        ),
    ];
    for (what, filter, limit, want) in cases {
        let got = s.recent_audit(&filter, limit).await.ctx("recent_audit")?;
        let want: Vec<StoredAuditEvent> = want.into_iter().cloned().collect();
        ensure_eq!(got, want, "{what}");
    }
    let got = s
        .recent_audit(&f(None, Some("error"), Some(T + 5)), 10)
        .await
        .ctx("recent_audit")?;
    ensure_eq!(got.first(), Some(&e5), "outcome and since, newest");
    ensure!(
        got.iter().all(|e| e.outcome == "error" && e.ts >= T + 5),
        "outcome/since filter let through {got:?}"
    );
    Ok(())
}

/// `first_use(key, expires_at, now)`, asserting the answer.
async fn first_use<B: Backend + ?Sized>(
    s: &B,
    key: &str,
    expires_at: UnixSeconds,
    now: UnixSeconds,
    want: bool,
    what: &str,
) -> CheckResult {
    let got = s
        .first_use(key, expires_at, now)
        .await
        .ctx(&format!("first_use ({what})"))?;
    ensure_eq!(got, want, "first_use: {what}");
    Ok(())
}

/// The first use of a key is `true`, every later one `false`; keys are independent.
pub async fn once_first_use<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let (a, b) = (run.v("once-a"), run.v("once-b"));
    first_use(s, &a, T + 3600, T, true, "first use of a").await?;
    first_use(s, &a, T + 3600, T, false, "second use of a, same now").await?;
    first_use(s, &a, T + 3600, T + 3599, false, "a just before its expiry").await?;
    // A replay that claims a later expiry must not extend or reset anything either.
    first_use(
        s,
        &a,
        LONG,
        T + 10,
        false,
        "a again with a later expires_at",
    )
    .await?;
    first_use(s, &b, T + 3600, T, true, "first use of b after a").await?;
    first_use(s, &b, T + 3600, T + 1, false, "second use of b").await?;
    first_use(s, &a, T + 3600, T + 1, false, "a after b was marked").await?;
    Ok(())
}

/// A mark holds until its `expires_at` (exclusive), then the key is usable again and
/// the new mark holds; an already expired `expires_at` marks nothing.
pub async fn once_expiry<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let k = run.v("once-exp");
    first_use(s, &k, T + 60, T, true, "first use").await?;
    first_use(s, &k, T + 60, T + 59, false, "one second before expires_at").await?;
    first_use(
        s,
        &k,
        T + 120,
        T + 60,
        true,
        "at expires_at (expired marks are absent)",
    )
    .await?;
    first_use(s, &k, T + 120, T + 61, false, "after being marked again").await?;
    first_use(
        s,
        &k,
        T + 120,
        T + 119,
        false,
        "just before the new expires_at",
    )
    .await?;

    let dead = run.v("once-dead");
    first_use(s, &dead, T - 5, T, true, "expires_at before now").await?;
    first_use(s, &dead, T, T, true, "expires_at equal to now").await?;
    // Had either call written a mark (until T - 5 or T), it would be live at T - 10.
    first_use(s, &dead, T + 60, T - 10, true, "after two expired requests").await?;
    first_use(s, &dead, T + 60, T - 9, false, "then marked as usual").await?;
    Ok(())
}

/// Of 32 concurrent first uses of one key exactly one wins.
pub async fn once_concurrent<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    const CALLS: usize = 32;
    let k = run.v("once-race");
    let calls = (0..CALLS).map(|_| s.first_use(&k, T + 3600, T));
    let results = futures_util::future::join_all(calls).await;
    let mut winners = 0;
    for r in results {
        if r.ctx("concurrent first_use")? {
            winners += 1;
        }
    }
    ensure_eq!(
        winners,
        1,
        "calls answering true among {CALLS} concurrent ones"
    );
    first_use(s, &k, T + 3600, T + 1, false, "after the race").await?;
    Ok(())
}

/// Keys outside `[0-9a-zA-Z:_-]{1,128}` are refused as `InvalidKey`, however the
/// times look; the longest valid key works.
pub async fn once_invalid_keys<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let base = run.v("once-bad");
    let long = format!("{base}{}", "x".repeat(MAX_ONCE_KEY_LEN + 1 - base.len()));
    let cases = [
        ("empty", String::new()),
        ("129 bytes", long.clone()),
        ("space", format!("{base} x")),
        ("hash tag", format!("{{{base}}}")),
        ("glob", format!("{base}*")),
        ("slash", format!("{base}/x")),
        ("dot (a JWT)", format!("{base}.x.y")),
        ("newline", format!("{base}\nx")),
        ("non-ascii", format!("{base}\u{e9}")),
    ];
    for (what, key) in &cases {
        for (expires_at, now) in [(T + 3600, T), (T - 1, T)] {
            match s.first_use(key, expires_at, now).await {
                Err(StoreError::InvalidKey(_)) => {}
                Err(e) => return Err(format!("{what}: expected InvalidKey, got error {e}")),
                Ok(b) => return Err(format!("{what}: key accepted ({b})")),
            }
        }
    }
    let max = &long[..MAX_ONCE_KEY_LEN];
    first_use(s, max, T + 3600, T, true, "a 128-byte key").await?;
    first_use(s, max, T + 3600, T, false, "a 128-byte key again").await?;
    Ok(())
}

/// `purge_expired` removes expired revocations and tokens, counts them, keeps the rest.
pub async fn purge<B: Backend + ?Sized>(s: &B, run: &Run) -> CheckResult {
    let purge_at = T + 100;
    let before = T + 10; // when the expired entries would still be live
    let jti = run.v("purge-jti");
    let kid = run.v("purge-kid");
    let sub = run.subject("purge");
    revoke(s, new_rev(RevocationKind::Jti, &jti, T, T + 50)).await?;
    revoke(s, new_rev(RevocationKind::Kid, &kid, T, T + 60)).await?;
    revoke(s, new_rev(RevocationKind::Subject, &sub, T, LONG)).await?;
    let aud = run.v("aud-purge");
    let other_kid = run.v("purge-other-kid");
    let gone = token(
        &run.v("purge-tok-gone"),
        &sub,
        &aud,
        &other_kid,
        T + 1,
        T + 50,
    );
    let kept = token(
        &run.v("purge-tok-kept"),
        &sub,
        &aud,
        &other_kid,
        T + 2,
        T + 3600,
    );
    record_all(s, &[&gone, &kept]).await?;
    let (mark_gone, mark_kept) = (run.v("purge-once-gone"), run.v("purge-once-kept"));
    first_use(s, &mark_gone, T + 50, T, true, "marking what purge drops").await?;
    first_use(s, &mark_kept, LONG, T, true, "marking what purge keeps").await?;

    let n = s.purge_expired(purge_at).await.ctx("purge_expired")?;
    ensure!(
        n >= 3,
        "purge counted {n}, this run alone expired 3 entries"
    );
    let n = s.purge_expired(purge_at).await.ctx("purge_expired again")?;
    ensure_eq!(n, 0, "a second purge at the same time");

    // Asked at a time when they would be live, purged entries must be gone.
    let other_sub = run.subject("purge-other");
    ensure!(
        !revoked(s, (&jti, &other_sub, &other_kid, T - 1), before).await?,
        "purged jti revocation still in force"
    );
    ensure!(
        !revoked(s, (&run.v("purge-probe"), &other_sub, &kid, T - 1), before).await?,
        "purged kid revocation still in force"
    );
    let listed = walk_revocations(s, None, 0, before).await?;
    ensure!(
        !listed.iter().any(|r| r.value == jti || r.value == kid),
        "purged records still listed"
    );
    ensure!(
        listed.iter().any(|r| r.value == sub),
        "live subject record gone after purge"
    );
    ensure!(
        revoked(
            s,
            (&run.v("purge-probe"), &sub, &other_kid, T - 1),
            purge_at
        )
        .await?,
        "live subject revocation lost by purge"
    );
    let filter = TokenFilter {
        subject: None,
        audience: Some(aud),
    };
    // `sub` is watermarked at T, these tokens were issued after it: both would be live.
    let got = walk_live(s, &filter, 0, before).await?;
    ensure_eq!(jtis(&got), jtis([&kept]), "inventory after purge");
    let got = s.get_issued(&kept.jti).await.ctx("get_issued")?;
    ensure_eq!(got, Some(kept), "live inventory entry after purge");
    first_use(
        s,
        &mark_kept,
        LONG,
        purge_at,
        false,
        "live mark after purge",
    )
    .await?;
    first_use(
        s,
        &mark_gone,
        LONG,
        purge_at,
        true,
        "expired mark after purge",
    )
    .await?;
    Ok(())
}
