//! Embedded on-disk backend (redb): one process, one file, survives restarts. It owns
//! the file layout below and imports only `clock` and the revocation types.
//!
//! Layout, one redb file:
//! - `revocations`: id → JSON `RevocationRecord`. Ids are a zero-padded hex counter kept
//!   in `meta`, so key order is creation order, also across restarts (listing, cursor).
//! - `rev_index`: `"<kind>:<value>"` → id of the one record for that kind and value; a new
//!   revocation of the same value deletes the record it replaces.
//! - `tokens`: jti → JSON `IssuedToken`; `tokens_by_iat`: (iat, jti) → () for listing.
//! - `audit`: sequence → JSON `StoredAuditEvent`, capped.
//! - `once`: one-time key → `expires_at` of its mark ([`ReplayGuard`]); a mark past
//!   `expires_at` counts as absent and is overwritten, `purge_expired` drops it.
//!
//! Threading: informative writes (inventory and audit tail, one or more per issued token)
//! go to one writer thread that commits whatever has queued in a single transaction
//! (group commit): under load one commit serves many requests, and callers never contend
//! for redb's single write lock. A caller's write has committed before its `await`
//! returns. Every other write transaction (`first_use` included) and every scan runs in
//! `spawn_blocking` (a commit may fsync, a scan may touch many pages). Point reads (`is_revoked`, `blocked_until`,
//! `get_issued`, `ping`) run inline: a few B-tree lookups served from redb's page cache
//! cost less than the thread hop, and `is_revoked` is on the introspection hot path.

use super::{
    AuditFilter, AuditTail, IssuedToken, LiftOutcome, NewRevocation, Page, PageRequest,
    ReplayGuard, RevocationKind, RevocationRecord, RevocationStore, StoreError, StoredAuditEvent,
    TokenFilter, TokenInventory, TokenRef, check_once_key,
};
use crate::clock::UnixSeconds;
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redb::{
    Database, DatabaseError, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocations");
const REV_INDEX: TableDefinition<&str, &str> = TableDefinition::new("rev_index");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const TOKENS_BY_IAT: TableDefinition<(i64, &str), ()> = TableDefinition::new("tokens_by_iat");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const ONCE: TableDefinition<&str, i64> = TableDefinition::new("once");

const NEXT_REVOCATION_ID: &str = "next_revocation_id";

/// Audit events kept by [`EmbeddedStore::open`]; older ones fall off.
pub const DEFAULT_AUDIT_CAP: usize = 10_000;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1_000;
/// Inventory and audit writes commit without fsync; the first group commit after this
/// long is durable, so a crash loses at most this much of them even when nothing is
/// revoked for hours. By time, not by count: a durable commit holds redb's write lock
/// through its fsync and stalls every queued write (p99 of an exchange at c=64 went
/// from ~10 ms to ~40 ms with a checkpoint every 1,024 commits, docs/benchmarks.md).
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// redb's page cache (its default is 1 GiB, which a busy inventory fills): the hot pages
/// of `is_revoked` (revocations, index) are few; inventory pages are written, rarely read.
const PAGE_CACHE_BYTES: usize = 16 << 20;

/// The redb-backed store. Cheap to clone: clones share one open database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    audit_cap: usize,
    writer: Option<GroupWriter>,
}

/// An informative write, queued for the writer thread.
enum Informative {
    Issued(IssuedToken),
    Audit(Vec<StoredAuditEvent>),
}

struct WriteJob {
    op: Informative,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// Jobs one group commit takes at most; the queue holds a few batches.
const GROUP_MAX: usize = 256;

/// The writer thread and its queue. Dropping it closes the queue and joins the thread,
/// so the database file is closed when the store is (a reopen right after works).
struct GroupWriter {
    queue: Option<tokio::sync::mpsc::Sender<WriteJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GroupWriter {
    fn start(
        db: Arc<Database>,
        audit_cap: u64,
        checkpoint_interval: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let (queue, mut jobs) = tokio::sync::mpsc::channel::<WriteJob>(4 * GROUP_MAX);
        let thread = std::thread::Builder::new()
            .name("tessera-store-writer".into())
            .spawn(move || {
                // A monotonic timer for an operational bound, not a token decision, so
                // not the injected clock.
                let mut last_durable = std::time::Instant::now();
                while let Some(first) = jobs.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < GROUP_MAX {
                        match jobs.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let durability = if last_durable.elapsed() >= checkpoint_interval {
                        last_durable = std::time::Instant::now();
                        Durability::Immediate
                    } else {
                        Durability::None
                    };
                    commit_group(&db, audit_cap, durability, batch);
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start store writer: {e}")))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }
}

/// Applies a batch in one transaction. If any job fails, the transaction is aborted and
/// each job is retried in a transaction of its own, so one bad write fails only its
/// caller.
fn commit_group(db: &Database, audit_cap: u64, durability: Durability, batch: Vec<WriteJob>) {
    let run = |jobs: &[&Informative]| -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(durability).map_err(db_err)?;
        for op in jobs {
            match op {
                Informative::Issued(t) => put_issued(&txn, t)?,
                Informative::Audit(events) => put_audit(&txn, audit_cap, events)?,
            }
        }
        txn.commit().map_err(db_err)
    };
    let ops: Vec<&Informative> = batch.iter().map(|j| &j.op).collect();
    let results: Vec<Result<(), StoreError>> = match run(&ops) {
        Ok(()) => batch.iter().map(|_| Ok(())).collect(),
        Err(_) if batch.len() > 1 => batch.iter().map(|j| run(&[&j.op])).collect(),
        Err(e) => vec![Err(e)],
    };
    for (job, result) in batch.into_iter().zip(results) {
        let _ = job.done.send(result);
    }
}

fn put_issued(txn: &WriteTransaction, token: &IssuedToken) -> Result<(), StoreError> {
    let mut tokens = txn.open_table(TOKENS).map_err(db_err)?;
    let mut by_iat = txn.open_table(TOKENS_BY_IAT).map_err(db_err)?;
    let previous = tokens
        .insert(token.jti.as_str(), encode(token)?.as_slice())
        .map_err(db_err)?
        .map(|g| decode::<IssuedToken>(g.value()))
        .transpose()?;
    if let Some(old) = previous {
        by_iat.remove((old.iat, old.jti.as_str())).map_err(db_err)?;
    }
    by_iat
        .insert((token.iat, token.jti.as_str()), ())
        .map_err(db_err)?;
    Ok(())
}

fn put_audit(
    txn: &WriteTransaction,
    cap: u64,
    events: &[StoredAuditEvent],
) -> Result<(), StoreError> {
    let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
    let first = audit
        .last()
        .map_err(db_err)?
        .map_or(0, |(k, _)| k.value() + 1);
    for (seq, event) in (first..).zip(events) {
        audit
            .insert(seq, encode(event)?.as_slice())
            .map_err(db_err)?;
    }
    while audit.len().map_err(db_err)? > cap {
        audit.pop_first().map_err(db_err)?;
    }
    Ok(())
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("audit_cap", &self.inner.audit_cap)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating it and its parent directories if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_audit_cap(path, DEFAULT_AUDIT_CAP)
    }

    /// Like [`open`](Self::open), keeping at most `audit_cap` (at least 1) audit events.
    pub fn open_with_audit_cap(path: &Path, audit_cap: usize) -> Result<Self, StoreError> {
        Self::open_with(path, audit_cap, CHECKPOINT_INTERVAL)
    }

    /// Like [`open_with_audit_cap`](Self::open_with_audit_cap), with the longest time
    /// between durable commits of inventory and audit writes (`Duration::ZERO`: every
    /// group commit is durable).
    pub fn open_with(
        path: &Path,
        audit_cap: usize,
        checkpoint_interval: std::time::Duration,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = redb::Builder::new()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                    StoreError::Unavailable(format!(
                        "{} is locked by another tessera process? ({e})",
                        path.display()
                    ))
                }
                other => match db_err(other) {
                    StoreError::Corrupt(m) => {
                        StoreError::Corrupt(format!("{}: {m}", path.display()))
                    }
                    e => StoreError::Unavailable(format!("{}: {e}", path.display())),
                },
            })?;
        // Create every table up front so read transactions never meet a missing one.
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.open_table(REVOCATIONS).map_err(db_err)?;
        txn.open_table(REV_INDEX).map_err(db_err)?;
        txn.open_table(TOKENS).map_err(db_err)?;
        txn.open_table(TOKENS_BY_IAT).map_err(db_err)?;
        txn.open_table(AUDIT).map_err(db_err)?;
        txn.open_table(ONCE).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let audit_cap = audit_cap.max(1);
        let writer = GroupWriter::start(
            db.clone(),
            u64::try_from(audit_cap).unwrap_or(u64::MAX),
            checkpoint_interval,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path: path.to_owned(),
                audit_cap,
                writer: Some(writer),
            }),
        })
    }

    /// Queues an informative write for the writer thread and waits for its commit.
    async fn write_informative(&self, op: Informative) -> Result<(), StoreError> {
        let gone = || StoreError::Unavailable("embedded store writer stopped".into());
        let queue = self
            .inner
            .writer
            .as_ref()
            .and_then(|w| w.queue.as_ref())
            .ok_or_else(gone)?;
        let (done, committed) = tokio::sync::oneshot::channel();
        queue
            .send(WriteJob { op, done })
            .await
            .map_err(|_| gone())?;
        committed.await.map_err(|_| gone())?
    }

    /// Runs `f` in a write transaction on the blocking pool and commits it.
    async fn write<T, F>(&self, durability: Durability, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let mut txn = inner.db.begin_write().map_err(db_err)?;
            txn.set_durability(durability).map_err(db_err)?;
            // An error drops `txn` uncommitted, which aborts it.
            let out = f(&txn)?;
            txn.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    /// Runs a scan `f` in a read transaction on the blocking pool.
    async fn scan<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || f(&inner.db.begin_read().map_err(db_err)?)).await
    }

    fn read_now(&self) -> Result<ReadTransaction, StoreError> {
        self.inner.db.begin_read().map_err(db_err)
    }
}

async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        e @ redb::Error::Corrupted(_) => StoreError::Corrupt(e.to_string()),
        e => StoreError::Unavailable(format!("embedded store: {e}")),
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(format!("cannot encode entry: {e}")))
}

fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(format!("unreadable entry: {e}")))
}

fn index_key(kind: RevocationKind, value: &str) -> String {
    format!("{}:{value}", kind.as_str())
}

/// `limit` 0 means the default page; anything above the cap is cut to it.
fn page_limit(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn revocation_id(n: u64) -> String {
    format!("{n:016x}")
}

/// A revocation cursor is the last id served; anything else is refused, not skipped.
fn parse_revocation_cursor(c: &str) -> Result<String, StoreError> {
    if c.len() == 16 && c.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(c.to_owned())
    } else {
        Err(StoreError::BadCursor)
    }
}

fn token_cursor(t: &IssuedToken) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}\n{}", t.iat, t.jti))
}

fn parse_token_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let raw = URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| StoreError::BadCursor)?;
    let s = String::from_utf8(raw).map_err(|_| StoreError::BadCursor)?;
    let (iat, jti) = s.split_once('\n').ok_or(StoreError::BadCursor)?;
    let iat = iat.parse().map_err(|_| StoreError::BadCursor)?;
    Ok((iat, jti.to_owned()))
}

/// Collects up to `limit` kept items and says whether another one followed.
fn take_page<T>(
    candidates: impl Iterator<Item = Result<Option<T>, StoreError>>,
    limit: usize,
) -> Result<(Vec<T>, bool), StoreError> {
    let mut items = Vec::new();
    for candidate in candidates {
        let Some(item) = candidate? else { continue };
        if items.len() == limit {
            return Ok((items, true));
        }
        items.push(item);
    }
    Ok((items, false))
}

/// The live record for a kind and value, if any.
fn live_record(
    index: &impl ReadableTable<&'static str, &'static str>,
    records: &impl ReadableTable<&'static str, &'static [u8]>,
    kind: RevocationKind,
    value: &str,
    now: UnixSeconds,
) -> Result<Option<RevocationRecord>, StoreError> {
    let key = index_key(kind, value);
    let Some(id) = index.get(key.as_str()).map_err(db_err)? else {
        return Ok(None);
    };
    let Some(raw) = records.get(id.value()).map_err(db_err)? else {
        // Writes keep both tables in one transaction; a gap means a bug or damage, and
        // introspection must fail closed rather than call the token good.
        return Err(StoreError::Corrupt(format!(
            "index {key} names a missing record"
        )));
    };
    let rec: RevocationRecord = decode(raw.value())?;
    Ok((rec.expires_at > now).then_some(rec))
}

fn token_revoked(
    index: &impl ReadableTable<&'static str, &'static str>,
    records: &impl ReadableTable<&'static str, &'static [u8]>,
    token: &TokenRef<'_>,
    now: UnixSeconds,
) -> Result<bool, StoreError> {
    if live_record(index, records, RevocationKind::Jti, token.jti, now)?.is_some() {
        return Ok(true);
    }
    if let Some(wm) = live_record(index, records, RevocationKind::Subject, token.subject, now)?
        && token.iat <= wm.created_at
    {
        return Ok(true);
    }
    Ok(live_record(index, records, RevocationKind::Kid, token.kid, now)?.is_some())
}

#[async_trait]
impl RevocationStore for EmbeddedStore {
    async fn revoke(&self, rev: NewRevocation) -> Result<RevocationRecord, StoreError> {
        // Immediate: once this returns, a kill -9 must not lose the revocation.
        self.write(Durability::Immediate, move |txn| {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let n = meta
                .get(NEXT_REVOCATION_ID)
                .map_err(db_err)?
                .map_or(0, |g| g.value());
            meta.insert(NEXT_REVOCATION_ID, n + 1).map_err(db_err)?;
            let rec = RevocationRecord {
                id: revocation_id(n),
                kind: rev.kind,
                value: rev.value,
                reason: rev.reason,
                actor: rev.actor,
                created_at: rev.created_at,
                expires_at: rev.expires_at,
                block_until: rev.block_until,
            };
            let mut index = txn.open_table(REV_INDEX).map_err(db_err)?;
            let mut records = txn.open_table(REVOCATIONS).map_err(db_err)?;
            let key = index_key(rec.kind, &rec.value);
            let replaced = index
                .insert(key.as_str(), rec.id.as_str())
                .map_err(db_err)?
                .map(|g| g.value().to_owned());
            if let Some(old) = replaced {
                records.remove(old.as_str()).map_err(db_err)?;
            }
            records
                .insert(rec.id.as_str(), encode(&rec)?.as_slice())
                .map_err(db_err)?;
            Ok(rec)
        })
        .await
    }

    async fn is_revoked(&self, token: &TokenRef<'_>, now: UnixSeconds) -> Result<bool, StoreError> {
        let txn = self.read_now()?;
        let index = txn.open_table(REV_INDEX).map_err(db_err)?;
        let records = txn.open_table(REVOCATIONS).map_err(db_err)?;
        token_revoked(&index, &records, token, now)
    }

    async fn blocked_until(
        &self,
        subject: &str,
        now: UnixSeconds,
    ) -> Result<Option<UnixSeconds>, StoreError> {
        let txn = self.read_now()?;
        let index = txn.open_table(REV_INDEX).map_err(db_err)?;
        let records = txn.open_table(REVOCATIONS).map_err(db_err)?;
        let rec = live_record(&index, &records, RevocationKind::Subject, subject, now)?;
        Ok(rec.and_then(|r| r.block_until).filter(|&t| t > now))
    }

    async fn list_revocations(
        &self,
        kind: Option<RevocationKind>,
        page: &PageRequest,
        now: UnixSeconds,
    ) -> Result<Page<RevocationRecord>, StoreError> {
        let limit = page_limit(page.limit);
        let after = page
            .cursor
            .as_deref()
            .map(parse_revocation_cursor)
            .transpose()?;
        self.scan(move |txn| {
            let records = txn.open_table(REVOCATIONS).map_err(db_err)?;
            let lower = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let range = records
                .range::<&str>((lower, Bound::Unbounded))
                .map_err(db_err)?;
            let candidates = range.map(|entry| {
                let (_, raw) = entry.map_err(db_err)?;
                let rec: RevocationRecord = decode(raw.value())?;
                let keep = rec.expires_at > now && kind.is_none_or(|k| k == rec.kind);
                Ok(keep.then_some(rec))
            });
            let (items, more) = take_page(candidates, limit)?;
            let next_cursor = if more {
                items.last().map(|r| r.id.clone())
            } else {
                None
            };
            Ok(Page { items, next_cursor })
        })
        .await
    }

    async fn lift(&self, id: &str, now: UnixSeconds) -> Result<LiftOutcome, StoreError> {
        let id = id.to_owned();
        // Immediate: a lifted quarantine must not come back after a crash either.
        self.write(Durability::Immediate, move |txn| {
            let mut records = txn.open_table(REVOCATIONS).map_err(db_err)?;
            let Some(raw) = records
                .get(id.as_str())
                .map_err(db_err)?
                .map(|g| g.value().to_vec())
            else {
                return Ok(LiftOutcome::NotFound);
            };
            let rec: RevocationRecord = decode(&raw)?;
            if rec.expires_at <= now {
                return Ok(LiftOutcome::NotFound);
            }
            if rec.kind == RevocationKind::Jti {
                return Ok(LiftOutcome::NotLiftable);
            }
            records.remove(id.as_str()).map_err(db_err)?;
            let mut index = txn.open_table(REV_INDEX).map_err(db_err)?;
            index
                .remove(index_key(rec.kind, &rec.value).as_str())
                .map_err(db_err)?;
            Ok(LiftOutcome::Lifted)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let txn = self.read_now()?;
        txn.open_table(META).map_err(db_err)?;
        Ok(())
    }

    async fn purge_expired(&self, now: UnixSeconds) -> Result<u64, StoreError> {
        // Immediate, so a purge is also a checkpoint for informative writes.
        self.write(Durability::Immediate, move |txn| {
            let mut records = txn.open_table(REVOCATIONS).map_err(db_err)?;
            let mut index = txn.open_table(REV_INDEX).map_err(db_err)?;
            let mut expired = Vec::new();
            for entry in records.iter().map_err(db_err)? {
                let (_, raw) = entry.map_err(db_err)?;
                let rec: RevocationRecord = decode(raw.value())?;
                if rec.expires_at <= now {
                    expired.push(rec);
                }
            }
            let mut count = 0u64;
            for rec in &expired {
                records.remove(rec.id.as_str()).map_err(db_err)?;
                index
                    .remove(index_key(rec.kind, &rec.value).as_str())
                    .map_err(db_err)?;
                count += 1;
            }

            let mut tokens = txn.open_table(TOKENS).map_err(db_err)?;
            let mut by_iat = txn.open_table(TOKENS_BY_IAT).map_err(db_err)?;
            let mut expired = Vec::new();
            for entry in tokens.iter().map_err(db_err)? {
                let (_, raw) = entry.map_err(db_err)?;
                let token: IssuedToken = decode(raw.value())?;
                if token.exp <= now {
                    expired.push((token.iat, token.jti));
                }
            }
            for (iat, jti) in &expired {
                tokens.remove(jti.as_str()).map_err(db_err)?;
                by_iat.remove((*iat, jti.as_str())).map_err(db_err)?;
                count += 1;
            }

            let mut once = txn.open_table(ONCE).map_err(db_err)?;
            let before = once.len().map_err(db_err)?;
            once.retain(|_, expires_at| expires_at > now)
                .map_err(db_err)?;
            count += before - once.len().map_err(db_err)?;
            Ok(count)
        })
        .await
    }
}

#[async_trait]
impl TokenInventory for EmbeddedStore {
    async fn record_issued(&self, token: &IssuedToken) -> Result<(), StoreError> {
        self.write_informative(Informative::Issued(token.clone()))
            .await
    }

    async fn get_issued(&self, jti: &str) -> Result<Option<IssuedToken>, StoreError> {
        let txn = self.read_now()?;
        let tokens = txn.open_table(TOKENS).map_err(db_err)?;
        let raw = tokens.get(jti).map_err(db_err)?;
        raw.map(|g| decode(g.value())).transpose()
    }

    async fn list_live(
        &self,
        filter: &TokenFilter,
        page: &PageRequest,
        now: UnixSeconds,
    ) -> Result<Page<IssuedToken>, StoreError> {
        let limit = page_limit(page.limit);
        let after = page.cursor.as_deref().map(parse_token_cursor).transpose()?;
        let filter = filter.clone();
        self.scan(move |txn| {
            let tokens = txn.open_table(TOKENS).map_err(db_err)?;
            let by_iat = txn.open_table(TOKENS_BY_IAT).map_err(db_err)?;
            let index = txn.open_table(REV_INDEX).map_err(db_err)?;
            let records = txn.open_table(REVOCATIONS).map_err(db_err)?;
            let lower = match &after {
                Some((iat, jti)) => Bound::Excluded((*iat, jti.as_str())),
                None => Bound::Unbounded,
            };
            let range = by_iat
                .range::<(i64, &str)>((lower, Bound::Unbounded))
                .map_err(db_err)?;
            let candidates = range.map(|entry| {
                let (key, _) = entry.map_err(db_err)?;
                let (_, jti) = key.value();
                let Some(raw) = tokens.get(jti).map_err(db_err)? else {
                    return Err(StoreError::Corrupt(format!(
                        "token index names missing {jti}"
                    )));
                };
                let t: IssuedToken = decode(raw.value())?;
                let wanted = t.exp > now
                    && filter.subject.as_ref().is_none_or(|s| *s == t.sub)
                    && filter.audience.as_ref().is_none_or(|a| *a == t.aud);
                if !wanted {
                    return Ok(None);
                }
                let token_ref = TokenRef {
                    jti: &t.jti,
                    subject: &t.sub,
                    kid: &t.kid,
                    iat: t.iat,
                };
                let revoked = token_revoked(&index, &records, &token_ref, now)?;
                Ok((!revoked).then_some(t))
            });
            let (items, more) = take_page(candidates, limit)?;
            let next_cursor = if more {
                items.last().map(token_cursor)
            } else {
                None
            };
            Ok(Page { items, next_cursor })
        })
        .await
    }
}

#[async_trait]
impl ReplayGuard for EmbeddedStore {
    async fn first_use(
        &self,
        key: &str,
        expires_at: UnixSeconds,
        now: UnixSeconds,
    ) -> Result<bool, StoreError> {
        check_once_key(key)?;
        if expires_at <= now {
            return Ok(true);
        }
        let key = key.to_owned();
        // Read and insert in one write transaction: redb admits one writer at a time,
        // so concurrent callers serialize and exactly one sees the key absent.
        // Immediate: a mark lost in a crash would let the token be exchanged again.
        self.write(Durability::Immediate, move |txn| {
            let mut once = txn.open_table(ONCE).map_err(db_err)?;
            let live = once
                .get(key.as_str())
                .map_err(db_err)?
                .is_some_and(|g| g.value() > now);
            if live {
                return Ok(false);
            }
            once.insert(key.as_str(), expires_at).map_err(db_err)?;
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl AuditTail for EmbeddedStore {
    async fn append_audit(&self, event: &StoredAuditEvent) -> Result<(), StoreError> {
        self.append_audit_batch(std::slice::from_ref(event)).await
    }

    async fn append_audit_batch(&self, events: &[StoredAuditEvent]) -> Result<(), StoreError> {
        self.write_informative(Informative::Audit(events.to_vec()))
            .await
    }

    /// `limit` follows the listing rule: 0 is the default page, at most 1000.
    async fn recent_audit(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<StoredAuditEvent>, StoreError> {
        let limit = page_limit(limit);
        let filter = filter.clone();
        self.scan(move |txn| {
            let audit = txn.open_table(AUDIT).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in audit.iter().map_err(db_err)?.rev() {
                if out.len() == limit {
                    break;
                }
                let (_, raw) = entry.map_err(db_err)?;
                let ev: StoredAuditEvent = decode(raw.value())?;
                let wanted = filter.since.is_none_or(|s| ev.ts >= s)
                    && filter
                        .subject
                        .as_ref()
                        .is_none_or(|s| ev.subject.as_ref() == Some(s))
                    && filter.outcome.as_ref().is_none_or(|o| *o == ev.outcome);
                if wanted {
                    out.push(ev);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::AuditFilter;

    const T: UnixSeconds = 1_900_000_000;

    fn event(i: i64) -> StoredAuditEvent {
        StoredAuditEvent {
            ts: T + i,
            subject: None,
            outcome: "ok".to_owned(),
            json: format!(r#"{{"n":{i}}}"#),
        }
    }

    fn issued(jti: &str, iat: UnixSeconds) -> IssuedToken {
        IssuedToken {
            jti: jti.to_owned(),
            sub: "spiffe://example.org/w".to_owned(),
            aud: "api".to_owned(),
            scope: None,
            kid: "k1".to_owned(),
            iat,
            exp: T + 3600,
        }
    }

    #[tokio::test]
    async fn audit_tail_drops_the_oldest_beyond_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = EmbeddedStore::open_with_audit_cap(&path, 3).unwrap();
        for i in 0..5 {
            store.append_audit(&event(i)).await.unwrap();
        }
        let got = store
            .recent_audit(&AuditFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(got, vec![event(4), event(3), event(2)]);
        drop(store);
        // The cap holds across a reopen and sequence numbers keep going.
        let store = EmbeddedStore::open_with_audit_cap(&path, 3).unwrap();
        store.append_audit(&event(5)).await.unwrap();
        let got = store
            .recent_audit(&AuditFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(got, vec![event(5), event(4), event(3)]);
    }

    #[tokio::test]
    async fn default_audit_cap_is_ten_thousand() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(store.inner.audit_cap, 10_000);
    }

    #[tokio::test]
    async fn recording_a_jti_again_replaces_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        store.record_issued(&issued("a", T - 10)).await.unwrap();
        store.record_issued(&issued("a", T - 5)).await.unwrap();
        let page = store
            .list_live(&TokenFilter::default(), &PageRequest::default(), T)
            .await
            .unwrap();
        assert_eq!(page.items, vec![issued("a", T - 5)]);
        // The old (iat, jti) index entry is gone too, or purge would trip over it.
        assert_eq!(store.purge_expired(T + 3600).await.unwrap(), 1);
        let page = store
            .list_live(&TokenFilter::default(), &PageRequest::default(), T)
            .await
            .unwrap();
        assert!(page.items.is_empty());
    }

    /// The embedded store's own order (the conformance suite compares sets): oldest
    /// first by iat, then jti, and pages of any size join up in that order.
    #[tokio::test]
    async fn live_tokens_are_listed_oldest_first_by_iat_then_jti() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let (t1, t2b, t2a, t3) = (
            issued("1", T - 50),
            issued("b", T - 40),
            issued("a", T - 40),
            issued("3", T - 30),
        );
        for t in [&t3, &t2b, &t1, &t2a] {
            store.record_issued(t).await.unwrap();
        }
        let want = vec![t1, t2a, t2b, t3];
        for limit in [1, 2, 0] {
            let mut got = Vec::new();
            let mut cursor = None;
            loop {
                let req = PageRequest { limit, cursor };
                let page = store
                    .list_live(&TokenFilter::default(), &req, T)
                    .await
                    .unwrap();
                got.extend(page.items);
                cursor = page.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            assert_eq!(got, want, "limit {limit}");
        }
    }

    fn once_marks(store: &EmbeddedStore) -> u64 {
        let txn = store.read_now().unwrap();
        txn.open_table(ONCE).unwrap().len().unwrap()
    }

    /// Redis lets `EXAT` drop marks; here `purge_expired` must, and must count them.
    #[tokio::test]
    async fn purge_drops_and_counts_expired_once_marks() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        for (key, expires_at) in [("gone-1", T + 10), ("gone-2", T + 20), ("kept", T + 30)] {
            assert!(store.first_use(key, expires_at, T).await.unwrap(), "{key}");
        }
        assert_eq!(once_marks(&store), 3);
        // `now` equal to an expires_at purges it: expired marks are absent (module doc).
        assert_eq!(store.purge_expired(T + 20).await.unwrap(), 2);
        assert_eq!(once_marks(&store), 1);
        assert_eq!(store.purge_expired(T + 20).await.unwrap(), 0);
        assert!(!store.first_use("kept", T + 30, T + 20).await.unwrap());
        assert!(store.first_use("gone-1", T + 90, T + 20).await.unwrap());
    }

    /// An acknowledged mark is on disk: a reopen (a restart) still refuses the replay.
    #[tokio::test]
    async fn once_marks_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        assert!(store.first_use("k", T + 60, T).await.unwrap());
        drop(store);
        let store = EmbeddedStore::open(&path).unwrap();
        assert!(!store.first_use("k", T + 60, T + 1).await.unwrap());
    }

    #[test]
    fn page_limit_defaults_and_caps() {
        assert_eq!(page_limit(0), 100);
        assert_eq!(page_limit(7), 7);
        assert_eq!(page_limit(1000), 1000);
        assert_eq!(page_limit(1001), 1000);
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let t = issued("jti:with\nodd chars", -5);
        assert_eq!(
            parse_token_cursor(&token_cursor(&t)).unwrap(),
            (-5, t.jti.clone())
        );
        for bad in ["", "!!", "bm90IGEgY3Vyc29y", "////"] {
            assert!(
                matches!(parse_token_cursor(bad), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
        assert_eq!(
            parse_revocation_cursor(&revocation_id(42)).unwrap(),
            revocation_id(42)
        );
        for bad in [
            "",
            "2a",
            "000000000000002A",
            "00000000000000zz",
            "00000000000000002a",
        ] {
            assert!(
                matches!(parse_revocation_cursor(bad), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
    }

    #[test]
    fn revocation_ids_sort_in_creation_order() {
        let ids: Vec<String> = [0, 9, 10, 255, 256, u64::MAX].map(revocation_id).into();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
