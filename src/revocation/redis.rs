//! Redis backend of [`RevocationStore`], [`TokenInventory`], [`AuditTail`],
//! [`ReplayGuard`] and [`SharedRateLimit`]: the one
//! list every replica shares (contract §6). The only module that names the `redis`
//! crate; it imports only `clock`, `jose` (SHA-256, hex) and the revocation types.
//!
//! # `store.redis_url` forms
//!
//! | deployment | URL |
//! |---|---|
//! | standalone | `redis://[user:pass@]host:port[/db]` |
//! | standalone over TLS | `rediss://[user:pass@]host:port[/db]` (server certificate checked against the system roots) |
//! | Sentinel | `redis+sentinel://[user:pass@]host1:26379,host2:26379/<master-name>[/db]` |
//! | Cluster | `redis+cluster://[user:pass@]host1:7000,host2:7001,...` (seed nodes; database 0 only) |
//!
//! A missing port means 6379 (26379 for sentinels). `user:pass` may be percent-encoded
//! and is used for the data nodes (for Sentinel: master and replicas, not the sentinels
//! themselves). Query strings are refused rather than ignored. [`parse_redis_url`]
//! names the problem and the fix for anything else. Redis 7.0 or newer is required
//! (`EXPIRETIME`, `XADD … MAXLEN ~`, exclusive `XRANGE` bounds); `connect` checks it.
//!
//! # Key layout (contract §6), all under `key_prefix`
//!
//! | key | type | expiry (`EXPIREAT`) |
//! |---|---|---|
//! | `rev:jti:<jti>` | string: record id | `expires_at` |
//! | `rev:sub:<hex sha256(subject)>` | hash: `wm`, `block_until` (optional), `id` (record id) | `expires_at` |
//! | `rev:kid:<kid>` | string: record id | `expires_at` |
//! | `rev:log` | stream of records (`kind value reason actor created_at expires_at [block_until]`), `MAXLEN ~ 100000` | — |
//! | `tok:<jti>` | hash: `sub aud [scope] kid iat exp` | `exp` |
//! | `audit` | stream (`ts outcome [subject] json`), `MAXLEN ~ 10000` | — |
//! | `once:<key>` | string `1`: a one-time subject token was used | `expires_at` |
//! | `rl:<hex sha256(subject)>` | string: GCRA theoretical arrival time, unix µs | `PX` until that time |
//!
//! The `{…}` in the contract's table are placeholders: keys are written without braces.
//! In Cluster mode braces would be hash tags; without them every key hashes whole, so
//! keys spread over all masters. (A `key_prefix` such as `{tessera}:` deliberately puts
//! everything in one slot, on one master; that works too.)
//!
//! A record id is the `rev:log` stream entry id (`<ms>-<seq>`): Redis makes them
//! strictly increasing on the one node that owns `rev:log`, whichever replica of
//! Tessera wrote, so ids order records by creation and serve as listing cursors. A
//! stream record is live iff the key for its kind and value still holds its id and its
//! `expires_at` is after `now`. The TTLs follow `expires_at`, and readers compare
//! the key's `EXPIRETIME` with the `now` they are given, so an entry past its
//! `expires_at` is absent even before Redis expires it.
//!
//! # Writes
//!
//! `revoke` first appends the record to `rev:log`, then writes the key (`SET … GET EXAT`
//! or a `MULTI`/`EXEC` of `HSET` + `EXPIREAT`). It returns only after Redis
//! acknowledged both; with `min_replicas_ack = N > 0` each write is followed, in the
//! same pipeline and so on the same connection to the node that took it, by
//! `WAIT N wait_timeout`, and fewer acknowledgements than `N` fail the call with
//! [`StoreError::Unavailable`]. A failure after the log append leaves an orphan stream
//! entry that is never live (its key does not hold its id), so a failed revoke is never
//! listed or reported as done. The record a revocation replaces is removed from the
//! log on a best-effort basis; if that fails it is simply no longer live.
//!
//! # One-time marks
//!
//! `first_use` is one `EVAL` of [`MARK_ONCE`] on the single key `once:<key>` (so one
//! slot, also in Cluster mode): it marks the key with `SET … EXAT expires_at` unless a
//! mark is there whose `EXPIRETIME` is after the caller's `now`. A plain `SET NX EXAT`
//! would judge expiry by Redis's clock; the script judges it by the injected `now`, as
//! every reader here does. Redis runs a script atomically, so of any number of
//! concurrent calls (from any replica) exactly one sees no live mark. With
//! `min_replicas_ack` the script is followed by `WAIT` like a revocation: a mark lost
//! in a failover would let the token be exchanged again. When the `WAIT` falls short
//! the call fails although the master kept the mark, so a retry is refused as a
//! replay: that fails closed. Marks expire by themselves; `purge_expired` leaves them.
//!
//! # Shared rate limit
//!
//! `take` ([`SharedRateLimit`]) is one `EVAL` of [`GCRA_TAKE`] on the single key
//! `rl:<hex sha256(subject)>`: the generic cell rate algorithm keeps one number per
//! subject, the theoretical arrival time (TAT). A request at `now` conforms when
//! `now >= TAT - interval * (burst - 1)`; then TAT becomes `max(TAT, now) + interval`.
//! The script judges by the caller's `now` (the injected clock), like every reader
//! here, and sets `PX` to when the TAT passes: after that the key would read as a full
//! bucket, so it may go. Redis runs the script atomically, so replicas sharing Redis
//! never let more than the burst through together. No `WAIT`: a limit state lost in a
//! failover only grants one fresh burst.
//!
//! # One round trip for `is_revoked`, also in Cluster mode
//!
//! `is_revoked` needs three keys (`rev:jti`, `rev:sub`, `rev:kid`). Standalone and
//! Sentinel send one pipeline (`GET`, `EXPIRETIME`, `HMGET`, `EXPIRETIME`, `GET`,
//! `EXPIRETIME`) and read one reply batch. In Cluster mode the three keys live in
//! different slots, usually on different masters, and one pipeline cannot span slots.
//! The store sends three single-key pipelines at the same time over the cluster
//! client's multiplexed per-node connections and waits for all of them: every request
//! is written before any reply is awaited, so the latency is one network round trip
//! (the slowest of at most three nodes, in parallel), not three in sequence. The same
//! fan-out serves every multi-key read (listing checks, inventory reads).
//!
//! # Failures
//!
//! Every call is bounded by `timeout` (plus `wait_timeout` for writes that `WAIT`);
//! running out is [`StoreError::Unavailable`]`("timeout")`, as is every connection or
//! server error. Nothing here panics. Standalone uses the `redis` crate's
//! `ConnectionManager` (reconnects in the background after a failed call; TCP_NODELAY
//! on), Cluster its async cluster client (refreshes the slot map and reconnects), and
//! Sentinel our own holder: after a connection error, a timeout or a `READONLY` reply
//! it drops the connection and the next call asks the sentinels for the current
//! master, so a failover is followed without a restart. A `WAIT` short of
//! `min_replicas_ack` does the same: after a forced failover the old master keeps
//! accepting writes until Sentinel demotes it (up to ~10 s), and the missing replica
//! acknowledgement is what gives it away.
//!
//! # Listing
//!
//! Revocations: `XRANGE` over `rev:log` from the cursor, each candidate's key checked
//! in one fan-out per batch. Tokens: `SCAN` over `tok:*` on every master (Cluster:
//! masters in address order), each batch read and checked against the revocations in
//! one fan-out. A token cursor names the node, the `SCAN` cursor of the batch it stopped
//! in and the last jti served from it (batches are served in jti order). While the
//! keyspace is stable every live token is listed exactly once; when keys are added or
//! expire between two pages (or the cluster reshards) a `SCAN` batch can change, and
//! then the batch is served again from its start: a token may then appear twice
//! across pages, but one live throughout is not skipped. The order is therefore not
//! `(iat, jti)` as in the embedded store.
//!
//! `rev:log` is capped at about [`REV_LOG_CAP`] records. With more revocations live at
//! once, the oldest records fall out of the log: they still revoke (their keys stay
//! until `expires_at`) but are no longer listed and cannot be lifted by id.
//!
//! `purge_expired` removes stream records past `expires_at` (and their keys if Redis has
//! not expired them yet) and inventory entries past `exp`, not one-time marks (their TTL
//! is exactly `expires_at`, and a mark past it is ignored by `first_use`); on a real clock the TTLs
//! have normally done the work already. It walks the whole log and `SCAN`s every
//! inventory entry, so call it rarely (say hourly).

use super::{
    AuditFilter, AuditTail, GcraLimit, IssuedToken, LiftOutcome, NewRevocation, Page, PageRequest,
    ReplayGuard, RevocationKind, RevocationRecord, RevocationStore, SharedRateLimit, StoreError,
    StoredAuditEvent, TokenFilter, TokenInventory, TokenRef, check_once_key,
};
use crate::clock::UnixSeconds;
use crate::jose::{hex, sha256};
use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::io::tcp::TcpSettings;
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use ::redis::streams::{StreamId, StreamRangeReply};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ErrorKind, FromRedisValue,
    IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// `rev:log` keeps about this many records (`XADD … MAXLEN ~`).
pub const REV_LOG_CAP: usize = 100_000;
/// The `audit` stream keeps about this many events.
pub const AUDIT_CAP: usize = 10_000;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1_000;
/// Stream entries read per `XRANGE` while listing or purging.
const LOG_BATCH: usize = 500;
const DEFAULT_PREFIX: &str = "tessera:";

// ---- configuration and URL parsing -----------------------------------------------------

/// How to reach Redis and how to use it.
#[derive(Clone)]
pub struct RedisConfig {
    /// See the module doc for the accepted forms.
    pub url: String,
    /// Prepended to every key, e.g. `tessera:`.
    pub key_prefix: String,
    /// Upper bound of every Redis call (default 500 ms).
    pub timeout: Duration,
    /// Replicas that must acknowledge a revocation (`WAIT`) before it is reported done;
    /// 0 waits for the master only.
    pub min_replicas_ack: u32,
    /// How long `WAIT` may block (default 1 s); added to `timeout` for such writes.
    pub wait_timeout: Duration,
}

impl RedisConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_millis(500),
            min_replicas_ack: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("min_replicas_ack", &self.min_replicas_ack)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

/// A URL with its password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// One `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNode {
    pub host: String,
    pub port: u16,
}

/// Credentials for the data nodes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What a `redis_url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Standalone {
        node: RedisNode,
        tls: bool,
        auth: RedisAuth,
        db: i64,
    },
    Sentinel {
        sentinels: Vec<RedisNode>,
        master_name: String,
        auth: RedisAuth,
        db: i64,
    },
    Cluster {
        seeds: Vec<RedisNode>,
        auth: RedisAuth,
    },
}

const FORMS: &str = "redis://[user:pass@]host:port[/db], rediss://…, \
     redis+sentinel://[user:pass@]host1:26379,host2:26379/<master-name>[/db] or \
     redis+cluster://host1:7000,host2:7001,…";

/// Parses `store.redis_url`; the error names the problem and the fix.
pub fn parse_redis_url(s: &str) -> Result<RedisTarget, String> {
    let s = s.trim();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "redis_url `{}` has no scheme; use one of {FORMS}",
            redact_url(s)
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "redis_url `{}`: query strings and fragments are not supported; \
             put the database in the path and the credentials before `@`",
            redact_url(s)
        ));
    }
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (auth, hosts) = match authority.rfind('@') {
        Some(at) => (parse_userinfo(&authority[..at])?, &authority[at + 1..]),
        None => (RedisAuth::default(), authority),
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    match scheme.as_str() {
        "redis" | "rediss" => {
            let mut nodes = parse_hosts(hosts, 6379)?;
            if nodes.len() != 1 {
                return Err(format!(
                    "redis_url `{}` names {} hosts; {scheme}:// takes exactly one. \
                     For several use redis+sentinel://host1,host2/<master-name> or \
                     redis+cluster://host1,host2",
                    redact_url(s),
                    nodes.len()
                ));
            }
            let db = match segments.as_slice() {
                [] => 0,
                [db] => parse_db(db)?,
                _ => {
                    return Err(format!(
                        "redis_url `{}`: the path is only the database number, e.g. /0",
                        redact_url(s)
                    ));
                }
            };
            Ok(RedisTarget::Standalone {
                node: nodes.remove(0),
                tls: scheme == "rediss",
                auth,
                db,
            })
        }
        "redis+sentinel" => {
            let sentinels = parse_hosts(hosts, 26379)?;
            let (master_name, db) = match segments.as_slice() {
                [name] if !name.is_empty() => ((*name).to_owned(), 0),
                [name, db] if !name.is_empty() => ((*name).to_owned(), parse_db(db)?),
                _ => {
                    return Err(format!(
                        "redis_url `{}` names no master; Sentinel URLs end in \
                         /<master-name>[/db], e.g. redis+sentinel://s1:26379,s2:26379/mymaster",
                        redact_url(s)
                    ));
                }
            };
            Ok(RedisTarget::Sentinel {
                sentinels,
                master_name: percent_decode(&master_name)?,
                auth,
                db,
            })
        }
        "redis+cluster" => {
            let seeds = parse_hosts(hosts, 6379)?;
            match segments.as_slice() {
                [] | ["0"] => {}
                _ => {
                    return Err(format!(
                        "redis_url `{}`: Redis Cluster has only database 0; drop the path",
                        redact_url(s)
                    ));
                }
            }
            Ok(RedisTarget::Cluster { seeds, auth })
        }
        "rediss+sentinel" | "rediss+cluster" => Err(format!(
            "redis_url scheme `{scheme}://`: TLS is supported for standalone Redis only \
             (rediss://); use redis+sentinel:// or redis+cluster:// on a trusted network"
        )),
        "unix" | "redis+unix" => Err(format!(
            "redis_url scheme `{scheme}://`: unix sockets are not supported; \
             use redis://127.0.0.1:6379"
        )),
        other => Err(format!(
            "redis_url scheme `{other}://` is unknown; use one of {FORMS}"
        )),
    }
}

fn parse_userinfo(userinfo: &str) -> Result<RedisAuth, String> {
    let (user, pass) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    let username = Some(percent_decode(user)?).filter(|u| !u.is_empty());
    let password = pass
        .map(percent_decode)
        .transpose()?
        .filter(|p| !p.is_empty());
    Ok(RedisAuth { username, password })
}

fn parse_hosts(hosts: &str, default_port: u16) -> Result<Vec<RedisNode>, String> {
    if hosts.is_empty() {
        return Err(format!(
            "redis_url names no host; write host:port, e.g. 127.0.0.1:{default_port}"
        ));
    }
    hosts
        .split(',')
        .map(|h| parse_host(h.trim(), default_port))
        .collect()
}

fn parse_host(h: &str, default_port: u16) -> Result<RedisNode, String> {
    if h.is_empty() {
        return Err("redis_url has an empty host in its host list; remove the extra comma".into());
    }
    let (host, port) = if let Some(v6) = h.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!(
                "redis_url host `{h}`: unclosed `[`; write IPv6 as [::1]:6379"
            ));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => {
                    return Err(format!("redis_url host `{h}`: expected `:port` after `]`"));
                }
            },
        }
    } else {
        match h.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "redis_url host `{h}`: write IPv6 addresses in brackets, e.g. [::1]:6379"
                ));
            }
            Some((host, p)) => (host, Some(p)),
            None => (h, None),
        }
    };
    if host.is_empty() {
        return Err(format!("redis_url host `{h}` has no host name"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "redis_url host `{h}`: port `{p}` is not a number from 1 to 65535"
                ));
            }
        },
    };
    Ok(RedisNode {
        host: host.to_owned(),
        port,
    })
}

fn parse_db(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(format!(
            "redis_url database `{s}` is not a number; write e.g. /0"
        )),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    return Err(
                        "redis_url has a bad %-escape in its credentials or master name; \
                         write %XX with two hex digits (e.g. %40 for @)"
                            .to_owned(),
                    );
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| "redis_url: %-escapes do not decode to UTF-8 text".to_owned())
}

// ---- connections -----------------------------------------------------------------------

/// A connection to whatever the URL names; cheap to clone.
#[derive(Clone)]
enum Handle {
    Single(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Direct(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Direct(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The master behind a set of sentinels: asked again after every connection failure.
struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    current: ArcSwapOption<MultiplexedConnection>,
    config: AsyncConnectionConfig,
}

impl SentinelConn {
    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.load_full() {
            return Ok((*c).clone());
        }
        let mut client = self.client.lock().await;
        // Another task may have reconnected while this one waited for the lock.
        if let Some(c) = self.current.load_full() {
            return Ok((*c).clone());
        }
        let conn = client
            .get_async_connection_with_config(&self.config)
            .await?;
        self.current.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    fn forget(&self) {
        self.current.store(None);
    }
}

enum Conn {
    Single(ConnectionManager),
    Sentinel(Box<SentinelConn>),
    Cluster(ClusterConnection),
}

/// What went wrong inside one bounded call.
enum CallError {
    Timeout,
    Redis(RedisError),
    Store(StoreError),
}

impl From<RedisError> for CallError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<StoreError> for CallError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

fn map_redis_error(e: &RedisError) -> StoreError {
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            StoreError::Corrupt(format!("redis: {e}"))
        }
        _ if e.code() == Some("WRONGTYPE") => StoreError::Corrupt(format!("redis: {e}")),
        _ => StoreError::Unavailable(format!("redis: {e}")),
    }
}

/// Errors after which a Sentinel-resolved connection is dropped and the master asked for
/// again: the node is gone, silent, or no longer the master.
fn needs_new_master(e: &CallError) -> bool {
    match e {
        CallError::Timeout => true,
        CallError::Redis(e) => {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.is_unrecoverable_error()
                || matches!(
                    e.kind(),
                    ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                )
        }
        CallError::Store(_) => false,
    }
}

// ---- keys ------------------------------------------------------------------------------

#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn rev(&self, kind: RevocationKind, value: &str) -> String {
        match kind {
            RevocationKind::Jti => format!("{}rev:jti:{value}", self.prefix),
            RevocationKind::Kid => format!("{}rev:kid:{value}", self.prefix),
            RevocationKind::Subject => {
                format!("{}rev:sub:{}", self.prefix, hex(&sha256(value.as_bytes())))
            }
        }
    }
    fn log(&self) -> String {
        format!("{}rev:log", self.prefix)
    }
    fn tok(&self, jti: &str) -> String {
        format!("{}tok:{jti}", self.prefix)
    }
    fn tok_pattern(&self) -> String {
        format!("{}tok:*", glob_escape(&self.prefix))
    }
    fn tok_jti<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix("tok:")
    }
    fn audit(&self) -> String {
        format!("{}audit", self.prefix)
    }
    fn once(&self, key: &str) -> String {
        format!("{}once:{key}", self.prefix)
    }
    fn rl(&self, subject: &str) -> String {
        format!("{}rl:{}", self.prefix, hex(&sha256(subject.as_bytes())))
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---- the store -------------------------------------------------------------------------

/// The Redis-backed store. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    keys: Keys,
    timeout: Duration,
    min_replicas_ack: u32,
    wait_timeout: Duration,
    target: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.target)
            .field("key_prefix", &self.inner.keys.prefix)
            .field("timeout", &self.inner.timeout)
            .field("min_replicas_ack", &self.inner.min_replicas_ack)
            .finish_non_exhaustive()
    }
}

/// Deletes KEYS[1] only while it still holds record id ARGV[1] (string value, or the
/// `id` field of a hash). Returns 1 when it deleted.
const DELETE_IF_HOLDS: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
local held = false
if t == 'string' then held = redis.call('GET', KEYS[1]) elseif t == 'hash' then held = redis.call('HGET', KEYS[1], 'id') end
if held == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Marks KEYS[1] until unix second ARGV[1] unless a mark lives after ARGV[2] (`now`).
/// Returns 1 when it marked. `EXPIRETIME` -1 (a key without expiry, not ours) counts as
/// live, as in [`live_expiry`]: refusing is the safe side.
const MARK_ONCE: &str = r"
local e = redis.call('EXPIRETIME', KEYS[1])
if e == -1 or (e ~= -2 and e > tonumber(ARGV[2])) then return 0 end
redis.call('SET', KEYS[1], '1', 'EXAT', ARGV[1])
return 1
";

/// GCRA on KEYS[1] (a TAT in unix µs). ARGV: now (µs), interval (µs), burst. Returns 0
/// when the event conforms (and counts it), else the milliseconds until one would.
/// Numbers are Lua doubles: µs since 1970 stay below 2^53 for centuries.
const GCRA_TAKE: &str = r"
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local tau = t * (tonumber(ARGV[3]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1]) or now
if tat < now then tat = now end
local allow_at = tat - tau
if now < allow_at then return math.ceil((allow_at - now) / 1000) end
local nt = tat + t
redis.call('SET', KEYS[1], string.format('%.0f', nt), 'PX', math.ceil((nt - now) / 1000))
return 0
";

/// `EVAL` of [`DELETE_IF_HOLDS`]; routed by its one key, so it can sit in a pipeline.
fn delete_if_holds(key: &str, id: &str) -> Cmd {
    let mut c = ::redis::cmd("EVAL");
    c.arg(DELETE_IF_HOLDS).arg(1).arg(key).arg(id);
    c
}

fn node_info(
    node: &RedisNode,
    tls: bool,
    auth: &RedisAuth,
    db: i64,
) -> RedisResult<::redis::ConnectionInfo> {
    let addr = if tls {
        ConnectionAddr::TcpTls {
            host: node.host.clone(),
            port: node.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(node.host.clone(), node.port)
    };
    let mut redis = ::redis::RedisConnectionInfo::default().set_db(db);
    if let Some(u) = &auth.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &auth.password {
        redis = redis.set_password(p);
    }
    Ok(addr
        .into_connection_info()?
        .set_redis_settings(redis)
        .set_tcp_settings(tcp_settings()))
}

fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

impl RedisStore {
    /// Connects (and checks the server version). Fails with `Unavailable` when Redis
    /// cannot be reached within the timeout; afterwards the store reconnects by itself.
    pub async fn connect(cfg: RedisConfig) -> Result<Self, StoreError> {
        let target = parse_redis_url(&cfg.url).map_err(StoreError::Unavailable)?;
        let timeout = if cfg.timeout.is_zero() {
            Duration::from_millis(500)
        } else {
            cfg.timeout
        };
        // The crate's own response timeout must never cut a WAIT short; ours bounds it.
        let crate_timeout = timeout + cfg.wait_timeout;
        let connect_timeout = timeout.max(Duration::from_secs(1));
        let setup = async {
            let conn = match &target {
                RedisTarget::Standalone {
                    node,
                    tls,
                    auth,
                    db,
                } => {
                    let client = Client::open(node_info(node, *tls, auth, *db)?)?;
                    let config = ConnectionManagerConfig::new()
                        .set_response_timeout(Some(crate_timeout))
                        .set_connection_timeout(Some(connect_timeout))
                        .set_min_delay(Duration::from_millis(50))
                        .set_max_delay(Duration::from_secs(1))
                        .set_number_of_retries(2);
                    Conn::Single(ConnectionManager::new_with_config(client, config).await?)
                }
                RedisTarget::Sentinel {
                    sentinels,
                    master_name,
                    auth,
                    db,
                } => {
                    let addrs = sentinels
                        .iter()
                        .map(|n| ConnectionAddr::Tcp(n.host.clone(), n.port));
                    let mut builder =
                        SentinelClientBuilder::new(addrs, master_name, SentinelServerType::Master)?
                            .set_client_to_redis_db(*db)
                            .set_client_to_redis_tcp_settings(tcp_settings())
                            .set_client_to_sentinel_tcp_settings(tcp_settings());
                    if let Some(u) = &auth.username {
                        builder = builder.set_client_to_redis_username(u);
                    }
                    if let Some(p) = &auth.password {
                        builder = builder.set_client_to_redis_password(p);
                    }
                    let sentinel = SentinelConn {
                        client: tokio::sync::Mutex::new(builder.build()?),
                        current: ArcSwapOption::empty(),
                        config: AsyncConnectionConfig::new()
                            .set_response_timeout(Some(crate_timeout))
                            .set_connection_timeout(Some(connect_timeout)),
                    };
                    sentinel.get().await?;
                    Conn::Sentinel(Box::new(sentinel))
                }
                RedisTarget::Cluster { seeds, auth } => {
                    let infos = seeds
                        .iter()
                        .map(|n| node_info(n, false, &RedisAuth::default(), 0))
                        .collect::<RedisResult<Vec<_>>>()?;
                    let mut builder = ClusterClientBuilder::new(infos)
                        .response_timeout(crate_timeout)
                        .connection_timeout(connect_timeout)
                        .tcp_settings(tcp_settings())
                        .retries(2)
                        .min_retry_wait(20)
                        .max_retry_wait(200);
                    if let Some(u) = &auth.username {
                        builder = builder.username(u);
                    }
                    if let Some(p) = &auth.password {
                        builder = builder.password(p);
                    }
                    Conn::Cluster(builder.build()?.get_async_connection().await?)
                }
            };
            RedisResult::Ok(conn)
        };
        let conn = match tokio::time::timeout(connect_timeout * 3, setup).await {
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "timeout connecting to {}",
                    redact_url(&cfg.url)
                )));
            }
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to {}: {e}",
                    redact_url(&cfg.url)
                )));
            }
            Ok(Ok(c)) => c,
        };
        let store = Self {
            inner: Arc::new(Inner {
                conn,
                keys: Keys {
                    prefix: cfg.key_prefix,
                },
                timeout,
                min_replicas_ack: cfg.min_replicas_ack,
                wait_timeout: cfg.wait_timeout,
                target: redact_url(&cfg.url),
            }),
        };
        store.check_version().await?;
        Ok(store)
    }

    /// Every node must run Redis 7 or newer (`EXPIRETIME`); on a cluster `INFO` answers
    /// per node.
    async fn check_version(&self) -> Result<(), StoreError> {
        let reply: Value = self
            .call(self.inner.timeout, |mut h| async move {
                Ok(::redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut h)
                    .await?)
            })
            .await?;
        let infos: Vec<String> = match reply {
            Value::Map(pairs) => pairs
                .into_iter()
                .map(|(_, v)| from_value(v))
                .collect::<Result<_, _>>()?,
            v => vec![from_value(v)?],
        };
        for info in infos {
            let version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("")
                .trim()
                .to_owned();
            let major = version
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok());
            if major.is_none_or(|m| m < 7) {
                return Err(StoreError::Unavailable(format!(
                    "{} runs Redis {version:?}; Tessera needs Redis 7.0 or newer (EXPIRETIME)",
                    self.inner.target
                )));
            }
        }
        Ok(())
    }

    async fn handle(&self) -> RedisResult<Handle> {
        Ok(match &self.inner.conn {
            Conn::Single(c) => Handle::Single(c.clone()),
            Conn::Sentinel(s) => Handle::Direct(s.get().await?),
            Conn::Cluster(c) => Handle::Cluster(c.clone()),
        })
    }

    /// Runs `f` on a connection within `budget`; maps every failure to a `StoreError`.
    async fn call<T, F, Fut>(&self, budget: Duration, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let work = async {
            let h = self.handle().await?;
            f(h).await
        };
        let out = match tokio::time::timeout(budget, work).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        };
        out.map_err(|e| {
            if let Conn::Sentinel(s) = &self.inner.conn
                && needs_new_master(&e)
            {
                s.forget();
            }
            match e {
                CallError::Timeout => StoreError::Unavailable("timeout".to_owned()),
                CallError::Redis(e) => map_redis_error(&e),
                CallError::Store(e) => e,
            }
        })
    }

    /// One pipeline whose commands all touch one slot (or no key).
    async fn pipe(&self, budget: Duration, p: Pipeline) -> Result<Vec<Value>, StoreError> {
        self.call(
            budget,
            |mut h| async move { Ok(p.query_async(&mut h).await?) },
        )
        .await
    }

    /// Several single-slot pipelines in one round trip: merged into one pipeline on a
    /// single node, sent concurrently (one per slot group) on a cluster.
    async fn fan_out(&self, groups: Vec<Pipeline>) -> Result<Vec<Vec<Value>>, StoreError> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let budget = self.inner.timeout;
        self.call(budget, |h| async move {
            match h {
                Handle::Cluster(c) => {
                    let futs = groups.into_iter().map(|p| {
                        let mut c = c.clone();
                        async move { p.query_async::<Vec<Value>>(&mut c).await }
                    });
                    let replies = futures_util::future::join_all(futs).await;
                    Ok(replies.into_iter().collect::<RedisResult<Vec<_>>>()?)
                }
                mut h => {
                    let mut all = Pipeline::with_capacity(groups.iter().map(Pipeline::len).sum());
                    for g in &groups {
                        for c in g.cmd_iter() {
                            all.add_command(c.clone());
                        }
                    }
                    let mut flat = all.query_async::<Vec<Value>>(&mut h).await?.into_iter();
                    let mut out = Vec::with_capacity(groups.len());
                    for g in &groups {
                        out.push(flat.by_ref().take(g.len()).collect::<Vec<_>>());
                    }
                    Ok(out)
                }
            }
        })
        .await
    }

    fn write_budget(&self) -> Duration {
        if self.inner.min_replicas_ack > 0 {
            self.inner.timeout + self.inner.wait_timeout
        } else {
            self.inner.timeout
        }
    }

    /// Appends `WAIT` to a write pipeline when replicas must acknowledge.
    fn add_wait(&self, p: &mut Pipeline) -> bool {
        if self.inner.min_replicas_ack == 0 {
            return false;
        }
        let ms = u64::try_from(self.inner.wait_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        p.cmd("WAIT").arg(self.inner.min_replicas_ack).arg(ms);
        true
    }

    fn check_wait(&self, reply: Option<&Value>, what: &str) -> Result<(), StoreError> {
        let acked: i64 = reply.map(int).transpose()?.unwrap_or(0);
        if acked < i64::from(self.inner.min_replicas_ack) {
            // A master that lost its replicas may have been failed over (it keeps
            // accepting writes until Sentinel demotes it): ask the sentinels again.
            if let Conn::Sentinel(s) = &self.inner.conn {
                s.forget();
            }
            return Err(StoreError::Unavailable(format!(
                "{what}: {acked} of {} required replicas acknowledged within {:?}",
                self.inner.min_replicas_ack, self.inner.wait_timeout
            )));
        }
        Ok(())
    }

    /// The state of the revocation keys a set of tokens depends on, in one fan-out.
    async fn rev_state(
        &self,
        jtis: &BTreeSet<&str>,
        subjects: &BTreeSet<&str>,
        kids: &BTreeSet<&str>,
        now: UnixSeconds,
    ) -> Result<RevState, StoreError> {
        let mut groups = Vec::with_capacity(jtis.len() + subjects.len() + kids.len());
        for jti in jtis {
            groups.push(get_with_expiry(
                &self.inner.keys.rev(RevocationKind::Jti, jti),
            ));
        }
        for sub in subjects {
            let key = self.inner.keys.rev(RevocationKind::Subject, sub);
            let mut p = Pipeline::new();
            p.cmd("HGET").arg(&key).arg("wm");
            p.cmd("EXPIRETIME").arg(&key);
            groups.push(p);
        }
        for kid in kids {
            groups.push(get_with_expiry(
                &self.inner.keys.rev(RevocationKind::Kid, kid),
            ));
        }
        let mut replies = self.fan_out(groups).await?.into_iter();
        let mut state = RevState::default();
        for jti in jtis {
            if let Some((Some(_), exp)) = pair(replies.next())?
                && live_expiry(exp, now)
            {
                state.jtis.insert((*jti).to_owned());
            }
        }
        for sub in subjects {
            if let Some((Some(wm), exp)) = pair(replies.next())?
                && live_expiry(exp, now)
            {
                let wm = wm
                    .parse::<i64>()
                    .map_err(|_| StoreError::Corrupt(format!("watermark {wm:?} of {sub}")))?;
                state.watermarks.insert((*sub).to_owned(), wm);
            }
        }
        for kid in kids {
            if let Some((Some(_), exp)) = pair(replies.next())?
                && live_expiry(exp, now)
            {
                state.kids.insert((*kid).to_owned());
            }
        }
        Ok(state)
    }

    /// Which of `records` are live: their key still holds their id.
    async fn live_records(
        &self,
        records: Vec<RevocationRecord>,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let groups = records
            .iter()
            .map(|r| {
                let key = self.inner.keys.rev(r.kind, &r.value);
                let mut p = Pipeline::new();
                match r.kind {
                    RevocationKind::Subject => p.cmd("HGET").arg(key).arg("id"),
                    RevocationKind::Jti | RevocationKind::Kid => p.cmd("GET").arg(key),
                };
                p
            })
            .collect();
        let replies = self.fan_out(groups).await?;
        let mut out = Vec::new();
        for (rec, reply) in records.into_iter().zip(replies) {
            let held: Option<String> = reply
                .into_iter()
                .next()
                .map(opt_string)
                .transpose()?
                .flatten();
            if held.as_deref() == Some(rec.id.as_str()) {
                out.push(rec);
            }
        }
        Ok(out)
    }

    async fn xrange(
        &self,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<StreamId>, StoreError> {
        let log = self.inner.keys.log();
        let (start, end) = (start.to_owned(), end.to_owned());
        let reply: StreamRangeReply = self
            .call(self.inner.timeout, |mut h| async move {
                Ok(::redis::cmd("XRANGE")
                    .arg(&log)
                    .arg(&start)
                    .arg(&end)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut h)
                    .await?)
            })
            .await?;
        Ok(reply.ids)
    }

    /// The masters to `SCAN`, as `host:port` in order (`""` for a single node).
    async fn scan_nodes(&self) -> Result<Vec<String>, StoreError> {
        if !matches!(self.inner.conn, Conn::Cluster(_)) {
            return Ok(vec![String::new()]);
        }
        let nodes: String = self
            .call(self.inner.timeout, |mut h| async move {
                Ok(::redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut h)
                    .await?)
            })
            .await?;
        let mut masters: Vec<String> = nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                let is_master = flags.split(',').any(|f| f == "master")
                    && !flags.split(',').any(|f| f == "fail" || f == "noaddr");
                // Masters without slots hold no keys.
                if !is_master || fields.len() < 9 {
                    return None;
                }
                let addr = fields.get(1)?.split('@').next()?;
                Some(addr.to_owned())
            })
            .collect();
        masters.sort();
        masters.dedup();
        if masters.is_empty() {
            return Err(StoreError::Unavailable(
                "CLUSTER NODES lists no master with slots".to_owned(),
            ));
        }
        Ok(masters)
    }

    /// One `SCAN` step over `tok:*` on `node`.
    async fn scan_step(
        &self,
        node: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(self.inner.keys.tok_pattern())
            .arg("COUNT")
            .arg(count)
            .arg("TYPE")
            .arg("hash");
        let reply = self.on_node(node, cmd).await?;
        <(u64, Vec<String>)>::from_redis_value(reply)
            .map_err(|e| StoreError::Corrupt(format!("SCAN reply: {e}")))
    }

    /// `node`'s clock (`TIME`), in whole seconds.
    async fn node_time(&self, node: &str) -> Result<UnixSeconds, StoreError> {
        let reply = self.on_node(node, ::redis::cmd("TIME")).await?;
        let (secs, _micros) = <(i64, i64)>::from_redis_value(reply)
            .map_err(|e| StoreError::Corrupt(format!("TIME reply: {e}")))?;
        Ok(secs)
    }

    /// Runs `cmd` on `node` (a cluster master's address; "" outside a cluster).
    async fn on_node(&self, node: &str, cmd: ::redis::Cmd) -> Result<Value, StoreError> {
        let route = if node.is_empty() {
            None
        } else {
            let (host, port) = node
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| StoreError::Unavailable(format!("bad node address {node}")))?;
            Some(RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host,
                port,
            }))
        };
        self.call(self.inner.timeout, |h| async move {
            Ok(match (h, route) {
                (Handle::Cluster(mut c), Some(route)) => c.route_command(cmd, route).await?,
                (mut h, _) => cmd.query_async::<Value>(&mut h).await?,
            })
        })
        .await
    }

    /// Inventory entries for `keys`, in one fan-out (missing ones left out).
    async fn read_tokens(&self, keys: &[String]) -> Result<Vec<IssuedToken>, StoreError> {
        let groups = keys
            .iter()
            .map(|k| {
                let mut p = Pipeline::new();
                p.cmd("HGETALL").arg(k);
                p
            })
            .collect();
        let replies = self.fan_out(groups).await?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, reply) in keys.iter().zip(replies) {
            let Some(jti) = self.inner.keys.tok_jti(key) else {
                continue;
            };
            let Some(v) = reply.into_iter().next() else {
                continue;
            };
            let map: HashMap<String, String> = from_value(v)?;
            if let Some(t) = token_from_map(jti, map)? {
                out.push(t);
            }
        }
        Ok(out)
    }
}

#[derive(Default)]
struct RevState {
    jtis: BTreeSet<String>,
    watermarks: HashMap<String, UnixSeconds>,
    kids: BTreeSet<String>,
}

impl RevState {
    fn revokes(&self, t: &TokenRef<'_>) -> bool {
        self.jtis.contains(t.jti)
            || self
                .watermarks
                .get(t.subject)
                .is_some_and(|&wm| t.iat <= wm)
            || self.kids.contains(t.kid)
    }
}

fn get_with_expiry(key: &str) -> Pipeline {
    let mut p = Pipeline::new();
    p.cmd("GET").arg(key);
    p.cmd("EXPIRETIME").arg(key);
    p
}

/// An `EXPIRETIME` reply: -2 no key, -1 no expiry (live), else the unix second it ends.
fn live_expiry(exp: i64, now: UnixSeconds) -> bool {
    match exp {
        -2 => false,
        -1 => true,
        t => t > now,
    }
}

fn from_value<T: FromRedisValue>(v: Value) -> Result<T, StoreError> {
    ::redis::from_redis_value(v).map_err(|e| StoreError::Corrupt(format!("redis reply: {e}")))
}

fn opt_string(v: Value) -> Result<Option<String>, StoreError> {
    from_value(v)
}

fn int(v: &Value) -> Result<i64, StoreError> {
    ::redis::from_redis_value_ref(v).map_err(|e| StoreError::Corrupt(format!("redis reply: {e}")))
}

/// A `[value, EXPIRETIME]` reply group.
fn pair(group: Option<Vec<Value>>) -> Result<Option<(Option<String>, i64)>, StoreError> {
    let Some(group) = group else {
        return Ok(None);
    };
    let mut it = group.into_iter();
    match (it.next(), it.next()) {
        (Some(v), Some(e)) => Ok(Some((opt_string(v)?, int(&e)?))),
        _ => Err(StoreError::Corrupt("short pipeline reply".to_owned())),
    }
}

fn page_limit(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn is_stream_id(s: &str) -> bool {
    match s.split_once('-') {
        Some((ms, seq)) => {
            !ms.is_empty()
                && !seq.is_empty()
                && ms.len() <= 20
                && seq.len() <= 20
                && ms.bytes().all(|b| b.is_ascii_digit())
                && seq.bytes().all(|b| b.is_ascii_digit())
                && ms.parse::<u64>().is_ok()
                && seq.parse::<u64>().is_ok()
        }
        None => false,
    }
}

fn field_str(e: &StreamId, name: &str) -> Result<String, StoreError> {
    match e.map.get(name) {
        Some(v) => from_value(v.clone()),
        None => Err(StoreError::Corrupt(format!(
            "rev:log entry {} has no {name}",
            e.id
        ))),
    }
}

fn field_int(e: &StreamId, name: &str) -> Result<i64, StoreError> {
    let s = field_str(e, name)?;
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("rev:log entry {}: {name} = {s:?}", e.id)))
}

fn record_from_entry(e: &StreamId) -> Result<RevocationRecord, StoreError> {
    let kind = field_str(e, "kind")?;
    let kind = RevocationKind::parse(&kind)
        .ok_or_else(|| StoreError::Corrupt(format!("rev:log entry {}: kind {kind:?}", e.id)))?;
    let block_until = match e.map.contains_key("block_until") {
        true => Some(field_int(e, "block_until")?),
        false => None,
    };
    Ok(RevocationRecord {
        id: e.id.clone(),
        kind,
        value: field_str(e, "value")?,
        reason: field_str(e, "reason")?,
        actor: field_str(e, "actor")?,
        created_at: field_int(e, "created_at")?,
        expires_at: field_int(e, "expires_at")?,
        block_until,
    })
}

fn token_from_map(
    jti: &str,
    mut m: HashMap<String, String>,
) -> Result<Option<IssuedToken>, StoreError> {
    if m.is_empty() {
        return Ok(None);
    }
    let mut take = |f: &str| {
        m.remove(f)
            .ok_or_else(|| StoreError::Corrupt(format!("tok:{jti} has no {f}")))
    };
    let num = |f: &str, s: String| {
        s.parse::<i64>()
            .map_err(|_| StoreError::Corrupt(format!("tok:{jti}: {f} = {s:?}")))
    };
    let sub = take("sub")?;
    let aud = take("aud")?;
    let kid = take("kid")?;
    let iat = num("iat", take("iat")?)?;
    let exp = num("exp", take("exp")?)?;
    let scope = m.remove("scope");
    Ok(Some(IssuedToken {
        jti: jti.to_owned(),
        sub,
        aud,
        scope,
        kid,
        iat,
        exp,
    }))
}

/// Where a token listing resumes: the node, the `SCAN` cursor of the batch it stopped in,
/// the cursor that batch returned (to tell whether a re-scan gives the same batch) and
/// the last jti served from it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenCursor {
    node: String,
    scan: u64,
    scan_next: u64,
    last_jti: Option<String>,
}

impl TokenCursor {
    fn encode(&self) -> String {
        let raw = format!(
            "t1\n{}\n{}\n{}\n{}",
            self.node,
            self.scan,
            self.scan_next,
            self.last_jti.as_deref().unwrap_or("")
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode(c: &str) -> Result<Self, StoreError> {
        let raw = URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|_| StoreError::BadCursor)?;
        let s = String::from_utf8(raw).map_err(|_| StoreError::BadCursor)?;
        let mut parts = s.splitn(5, '\n');
        if parts.next() != Some("t1") {
            return Err(StoreError::BadCursor);
        }
        let node = parts.next().ok_or(StoreError::BadCursor)?.to_owned();
        let scan = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(StoreError::BadCursor)?;
        let scan_next = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(StoreError::BadCursor)?;
        let last = parts.next().ok_or(StoreError::BadCursor)?;
        Ok(Self {
            node,
            scan,
            scan_next,
            last_jti: Some(last.to_owned()).filter(|l| !l.is_empty()),
        })
    }
}

#[async_trait]
impl RevocationStore for RedisStore {
    async fn revoke(&self, rev: NewRevocation) -> Result<RevocationRecord, StoreError> {
        let keys = &self.inner.keys;
        let budget = self.write_budget();
        // 1. The record, so a key never names a record the log lacks.
        let mut p = Pipeline::new();
        {
            let x = p
                .cmd("XADD")
                .arg(keys.log())
                .arg("MAXLEN")
                .arg("~")
                .arg(REV_LOG_CAP)
                .arg("*")
                .arg("kind")
                .arg(rev.kind.as_str())
                .arg("value")
                .arg(&rev.value)
                .arg("reason")
                .arg(&rev.reason)
                .arg("actor")
                .arg(&rev.actor)
                .arg("created_at")
                .arg(rev.created_at)
                .arg("expires_at")
                .arg(rev.expires_at);
            if let Some(b) = rev.block_until {
                x.arg("block_until").arg(b);
            }
        }
        let waits = self.add_wait(&mut p);
        let reply = self.pipe(budget, p).await?;
        let id: String = match reply.first() {
            Some(v) => from_value(v.clone())?,
            None => return Err(StoreError::Corrupt("XADD gave no id".to_owned())),
        };
        if waits {
            self.check_wait(reply.get(1), "revocation log")?;
        }

        // 2. The key readers look at, with its expiry; replaces an earlier record.
        let key = keys.rev(rev.kind, &rev.value);
        let exat = rev.expires_at.max(1);
        let mut p = Pipeline::new();
        match rev.kind {
            RevocationKind::Jti | RevocationKind::Kid => {
                p.cmd("SET")
                    .arg(&key)
                    .arg(&id)
                    .arg("EXAT")
                    .arg(exat)
                    .arg("GET");
            }
            RevocationKind::Subject => {
                p.cmd("MULTI");
                p.cmd("HGET").arg(&key).arg("id");
                p.cmd("DEL").arg(&key);
                let h = p
                    .cmd("HSET")
                    .arg(&key)
                    .arg("id")
                    .arg(&id)
                    .arg("wm")
                    .arg(rev.created_at);
                if let Some(b) = rev.block_until {
                    h.arg("block_until").arg(b);
                }
                p.cmd("EXPIREAT").arg(&key).arg(exat);
                p.cmd("EXEC");
            }
        }
        let waits = self.add_wait(&mut p);
        let reply = self.pipe(budget, p).await?;
        let (replaced, wait_reply) = match rev.kind {
            RevocationKind::Jti | RevocationKind::Kid => (reply.first().cloned(), reply.get(1)),
            RevocationKind::Subject => {
                // MULTI, 4 × QUEUED, then EXEC's array.
                let exec = reply.get(5).cloned().unwrap_or(Value::Nil);
                let results: Vec<Value> = match exec {
                    Value::Nil => {
                        return Err(StoreError::Unavailable(
                            "subject revocation transaction aborted".to_owned(),
                        ));
                    }
                    v => from_value(v)?,
                };
                (results.into_iter().next(), reply.get(6))
            }
        };
        if waits {
            self.check_wait(wait_reply, "revocation")?;
        }
        // 3. Tidy: the replaced record is no longer live; dropping it may fail harmlessly.
        if let Some(old) = replaced.map(opt_string).transpose()?.flatten()
            && old != id
        {
            let mut p = Pipeline::new();
            p.cmd("XDEL").arg(keys.log()).arg(old);
            if let Err(e) = self.pipe(self.inner.timeout, p).await {
                tracing::debug!(error = %e, "could not drop a replaced revocation record");
            }
        }
        Ok(RevocationRecord {
            id,
            kind: rev.kind,
            value: rev.value,
            reason: rev.reason,
            actor: rev.actor,
            created_at: rev.created_at,
            expires_at: rev.expires_at,
            block_until: rev.block_until,
        })
    }

    async fn is_revoked(&self, token: &TokenRef<'_>, now: UnixSeconds) -> Result<bool, StoreError> {
        let state = self
            .rev_state(
                &BTreeSet::from([token.jti]),
                &BTreeSet::from([token.subject]),
                &BTreeSet::from([token.kid]),
                now,
            )
            .await?;
        Ok(state.revokes(token))
    }

    async fn blocked_until(
        &self,
        subject: &str,
        now: UnixSeconds,
    ) -> Result<Option<UnixSeconds>, StoreError> {
        let key = self.inner.keys.rev(RevocationKind::Subject, subject);
        let mut p = Pipeline::new();
        p.cmd("HGET").arg(&key).arg("block_until");
        p.cmd("EXPIRETIME").arg(&key);
        let reply = self.pipe(self.inner.timeout, p).await?;
        let Some((Some(b), exp)) = pair(Some(reply))? else {
            return Ok(None);
        };
        if !live_expiry(exp, now) {
            return Ok(None);
        }
        let b: i64 = b
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("block_until {b:?} of a subject")))?;
        Ok((b > now).then_some(b))
    }

    async fn list_revocations(
        &self,
        kind: Option<RevocationKind>,
        page: &PageRequest,
        now: UnixSeconds,
    ) -> Result<Page<RevocationRecord>, StoreError> {
        let limit = page_limit(page.limit);
        let mut start = match page.cursor.as_deref() {
            None => "-".to_owned(),
            Some(c) if is_stream_id(c) => format!("({c}"),
            Some(_) => return Err(StoreError::BadCursor),
        };
        let mut items: Vec<RevocationRecord> = Vec::new();
        loop {
            let entries = self.xrange(&start, "+", LOG_BATCH).await?;
            let exhausted = entries.len() < LOG_BATCH;
            if let Some(last) = entries.last() {
                start = format!("({}", last.id);
            }
            let mut candidates = Vec::new();
            for e in &entries {
                let rec = record_from_entry(e)?;
                if rec.expires_at > now && kind.is_none_or(|k| k == rec.kind) {
                    candidates.push(rec);
                }
            }
            items.extend(self.live_records(candidates).await?);
            if items.len() > limit {
                items.truncate(limit);
                let next_cursor = items.last().map(|r| r.id.clone());
                return Ok(Page { items, next_cursor });
            }
            if exhausted {
                return Ok(Page {
                    items,
                    next_cursor: None,
                });
            }
        }
    }

    async fn lift(&self, id: &str, now: UnixSeconds) -> Result<LiftOutcome, StoreError> {
        if !is_stream_id(id) {
            return Ok(LiftOutcome::NotFound);
        }
        let Some(entry) = self.xrange(id, id, 1).await?.into_iter().next() else {
            return Ok(LiftOutcome::NotFound);
        };
        let rec = record_from_entry(&entry)?;
        if rec.expires_at <= now {
            return Ok(LiftOutcome::NotFound);
        }
        if rec.kind == RevocationKind::Jti {
            let live = !self.live_records(vec![rec]).await?.is_empty();
            return Ok(if live {
                LiftOutcome::NotLiftable
            } else {
                LiftOutcome::NotFound
            });
        }
        let mut p = Pipeline::new();
        p.add_command(delete_if_holds(
            &self.inner.keys.rev(rec.kind, &rec.value),
            &rec.id,
        ));
        let waits = self.add_wait(&mut p);
        let reply = self.pipe(self.write_budget(), p).await?;
        let deleted = reply.first().map(int).transpose()?.unwrap_or(0);
        if deleted == 0 {
            return Ok(LiftOutcome::NotFound);
        }
        if waits {
            self.check_wait(reply.get(1), "lift")?;
        }
        let mut p = Pipeline::new();
        p.cmd("XDEL").arg(self.inner.keys.log()).arg(id);
        if let Err(e) = self.pipe(self.inner.timeout, p).await {
            tracing::debug!(error = %e, "could not drop a lifted revocation record");
        }
        Ok(LiftOutcome::Lifted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(self.inner.timeout, |mut h| async move {
            let _: String = ::redis::cmd("PING").query_async(&mut h).await?;
            Ok(())
        })
        .await
    }

    async fn purge_expired(&self, now: UnixSeconds) -> Result<u64, StoreError> {
        let mut count = 0u64;
        // Revocation records past expires_at, and their keys if still there.
        let mut start = "-".to_owned();
        loop {
            let entries = self.xrange(&start, "+", LOG_BATCH).await?;
            let exhausted = entries.len() < LOG_BATCH;
            if let Some(last) = entries.last() {
                start = format!("({}", last.id);
            }
            let mut expired = Vec::new();
            for e in &entries {
                let rec = record_from_entry(e)?;
                if rec.expires_at <= now {
                    expired.push(rec);
                }
            }
            if !expired.is_empty() {
                let groups = expired
                    .iter()
                    .map(|r| {
                        let mut p = Pipeline::new();
                        p.add_command(delete_if_holds(
                            &self.inner.keys.rev(r.kind, &r.value),
                            &r.id,
                        ));
                        p
                    })
                    .collect();
                self.fan_out(groups).await?;
                let mut p = Pipeline::new();
                let x = p.cmd("XDEL").arg(self.inner.keys.log());
                for r in &expired {
                    x.arg(&r.id);
                }
                let reply = self.pipe(self.inner.timeout, p).await?;
                let n = reply.first().map(int).transpose()?.unwrap_or(0);
                count += u64::try_from(n).unwrap_or(0);
            }
            if exhausted {
                break;
            }
        }
        // Inventory entries past exp. Each carries EXPIREAT = exp, so Redis drops it
        // itself once its own clock passes exp; scanning (every key, on every replica,
        // every purge) is needed only where our clock is ahead of the node's — skew, or
        // a test running ahead of time.
        for node in self.scan_nodes().await? {
            if self.node_time(&node).await? >= now {
                continue;
            }
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self.scan_step(&node, cursor, 1000).await?;
                let tokens = self.read_tokens(&keys).await?;
                let dead: Vec<Pipeline> = tokens
                    .iter()
                    .filter(|t| t.exp <= now)
                    .map(|t| {
                        let mut p = Pipeline::new();
                        p.cmd("DEL").arg(self.inner.keys.tok(&t.jti));
                        p
                    })
                    .collect();
                for reply in self.fan_out(dead).await? {
                    let n = reply.first().map(int).transpose()?.unwrap_or(0);
                    count += u64::try_from(n).unwrap_or(0);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(count)
    }
}

#[async_trait]
impl TokenInventory for RedisStore {
    async fn record_issued(&self, token: &IssuedToken) -> Result<(), StoreError> {
        let key = self.inner.keys.tok(&token.jti);
        let mut p = Pipeline::new();
        p.cmd("MULTI");
        p.cmd("DEL").arg(&key);
        {
            let h = p
                .cmd("HSET")
                .arg(&key)
                .arg("sub")
                .arg(&token.sub)
                .arg("aud")
                .arg(&token.aud)
                .arg("kid")
                .arg(&token.kid)
                .arg("iat")
                .arg(token.iat)
                .arg("exp")
                .arg(token.exp);
            if let Some(scope) = &token.scope {
                h.arg("scope").arg(scope);
            }
        }
        p.cmd("EXPIREAT").arg(&key).arg(token.exp.max(1));
        p.cmd("EXEC");
        self.pipe(self.inner.timeout, p).await?;
        Ok(())
    }

    async fn get_issued(&self, jti: &str) -> Result<Option<IssuedToken>, StoreError> {
        let mut p = Pipeline::new();
        p.cmd("HGETALL").arg(self.inner.keys.tok(jti));
        let reply = self.pipe(self.inner.timeout, p).await?;
        match reply.into_iter().next() {
            Some(v) => token_from_map(jti, from_value(v)?),
            None => Ok(None),
        }
    }

    async fn list_live(
        &self,
        filter: &TokenFilter,
        page: &PageRequest,
        now: UnixSeconds,
    ) -> Result<Page<IssuedToken>, StoreError> {
        let limit = page_limit(page.limit);
        let resume = page
            .cursor
            .as_deref()
            .map(TokenCursor::decode)
            .transpose()?;
        let nodes = self.scan_nodes().await?;
        let count = (limit * 2).clamp(100, 1000);
        let (mut node_idx, mut scan, mut resume) = match resume {
            None => (0, 0, None),
            Some(c) => match nodes.iter().position(|n| *n >= c.node) {
                // Same node: resume the batch. Node gone (topology changed): next one.
                Some(i) if nodes[i] == c.node => (i, c.scan, Some(c)),
                Some(i) => (i, 0, None),
                None => {
                    return Ok(Page {
                        items: Vec::new(),
                        next_cursor: None,
                    });
                }
            },
        };
        let mut items: Vec<IssuedToken> = Vec::new();
        while let Some(node) = nodes.get(node_idx) {
            let (next, keys) = self.scan_step(node, scan, count).await?;
            let skip_upto = resume
                .take()
                .filter(|c| c.scan_next == next)
                .and_then(|c| c.last_jti);
            let mut batch: Vec<IssuedToken> = self
                .read_tokens(&keys)
                .await?
                .into_iter()
                .filter(|t| {
                    t.exp > now
                        && filter.subject.as_ref().is_none_or(|s| *s == t.sub)
                        && filter.audience.as_ref().is_none_or(|a| *a == t.aud)
                        && skip_upto.as_ref().is_none_or(|last| t.jti > *last)
                })
                .collect();
            let jtis: BTreeSet<&str> = batch.iter().map(|t| t.jti.as_str()).collect();
            let subs: BTreeSet<&str> = batch.iter().map(|t| t.sub.as_str()).collect();
            let kids: BTreeSet<&str> = batch.iter().map(|t| t.kid.as_str()).collect();
            let state = self.rev_state(&jtis, &subs, &kids, now).await?;
            batch.retain(|t| {
                !state.revokes(&TokenRef {
                    jti: &t.jti,
                    subject: &t.sub,
                    kid: &t.kid,
                    iat: t.iat,
                })
            });
            batch.sort_by(|a, b| a.jti.cmp(&b.jti));
            let served_before = items.len();
            for t in batch {
                if items.len() == limit {
                    // One more exists. Resume in this batch after the last jti served
                    // from it, or at its start if the page filled in an earlier batch.
                    let last_jti = if items.len() > served_before {
                        items.last().map(|t| t.jti.clone())
                    } else {
                        None
                    };
                    let cursor = TokenCursor {
                        node: node.clone(),
                        scan,
                        scan_next: next,
                        last_jti,
                    };
                    return Ok(Page {
                        items,
                        next_cursor: Some(cursor.encode()),
                    });
                }
                items.push(t);
            }
            if next == 0 {
                node_idx += 1;
                scan = 0;
            } else {
                scan = next;
            }
        }
        Ok(Page {
            items,
            next_cursor: None,
        })
    }
}

#[async_trait]
impl ReplayGuard for RedisStore {
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
        let mut p = Pipeline::new();
        p.cmd("EVAL")
            .arg(MARK_ONCE)
            .arg(1)
            .arg(self.inner.keys.once(key))
            // EXAT refuses 0 and below; such a mark is long expired anyway.
            .arg(expires_at.max(1))
            .arg(now);
        let waits = self.add_wait(&mut p);
        let reply = self.pipe(self.write_budget(), p).await?;
        let marked = match reply.first() {
            Some(v) => int(v)?,
            None => return Err(StoreError::Corrupt("EVAL gave no reply".to_owned())),
        };
        if marked != 1 {
            // Nothing written; the earlier mark's own write was acknowledged (or failed).
            return Ok(false);
        }
        if waits {
            self.check_wait(reply.get(1), "one-time mark")?;
        }
        Ok(true)
    }
}

#[async_trait]
impl SharedRateLimit for RedisStore {
    async fn take(
        &self,
        subject: &str,
        limit: GcraLimit,
        now_millis: i64,
    ) -> Result<Option<u64>, StoreError> {
        let mut p = Pipeline::new();
        p.cmd("EVAL")
            .arg(GCRA_TAKE)
            .arg(1)
            .arg(self.inner.keys.rl(subject))
            .arg(now_millis.max(0).saturating_mul(1000))
            .arg(limit.interval_micros.max(1))
            .arg(limit.burst.max(1));
        let reply = self.pipe(self.inner.timeout, p).await?;
        let wait_ms = match reply.first() {
            Some(v) => int(v)?,
            None => return Err(StoreError::Corrupt("EVAL gave no reply".to_owned())),
        };
        Ok(u64::try_from(wait_ms).ok().filter(|ms| *ms > 0))
    }
}

#[async_trait]
impl AuditTail for RedisStore {
    async fn append_audit(&self, event: &StoredAuditEvent) -> Result<(), StoreError> {
        self.append_audit_batch(std::slice::from_ref(event)).await
    }

    /// One pipeline (one round trip) for the whole batch.
    async fn append_audit_batch(&self, events: &[StoredAuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut p = Pipeline::new();
        for event in events {
            let x = p
                .cmd("XADD")
                .arg(self.inner.keys.audit())
                .arg("MAXLEN")
                .arg("~")
                .arg(AUDIT_CAP)
                .arg("*")
                .arg("ts")
                .arg(event.ts)
                .arg("outcome")
                .arg(&event.outcome)
                .arg("json")
                .arg(&event.json);
            if let Some(s) = &event.subject {
                x.arg("subject").arg(s);
            }
        }
        self.pipe(self.inner.timeout, p).await?;
        Ok(())
    }

    /// Newest first; `limit` 0 is the default page, at most 1000.
    async fn recent_audit(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<StoredAuditEvent>, StoreError> {
        let limit = page_limit(limit);
        let key = self.inner.keys.audit();
        let mut end = "+".to_owned();
        let mut out = Vec::new();
        loop {
            let (k, e) = (key.clone(), end.clone());
            let reply: StreamRangeReply = self
                .call(self.inner.timeout, |mut h| async move {
                    Ok(::redis::cmd("XREVRANGE")
                        .arg(&k)
                        .arg(&e)
                        .arg("-")
                        .arg("COUNT")
                        .arg(LOG_BATCH)
                        .query_async(&mut h)
                        .await?)
                })
                .await?;
            let exhausted = reply.ids.len() < LOG_BATCH;
            if let Some(last) = reply.ids.last() {
                end = format!("({}", last.id);
            }
            for entry in &reply.ids {
                let ev = StoredAuditEvent {
                    ts: field_int(entry, "ts")?,
                    subject: match entry.map.contains_key("subject") {
                        true => Some(field_str(entry, "subject")?),
                        false => None,
                    },
                    outcome: field_str(entry, "outcome")?,
                    json: field_str(entry, "json")?,
                };
                // No early stop on `since`: replicas' clocks differ, so `ts` need not
                // fall monotonically along the stream. The walk is bounded by the cap.
                let wanted = filter.since.is_none_or(|s| ev.ts >= s)
                    && filter
                        .subject
                        .as_ref()
                        .is_none_or(|s| ev.subject.as_ref() == Some(s))
                    && filter.outcome.as_ref().is_none_or(|o| *o == ev.outcome);
                if wanted {
                    out.push(ev);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            if exhausted {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_cursors_round_trip_and_refuse_garbage() {
        let c = TokenCursor {
            node: "127.0.0.1:7000".to_owned(),
            scan: 17,
            scan_next: 42,
            last_jti: Some("jti\nodd".to_owned()),
        };
        assert!(matches!(TokenCursor::decode(&c.encode()), Ok(d) if d == c));
        let none = TokenCursor {
            last_jti: None,
            ..c
        };
        assert!(matches!(TokenCursor::decode(&none.encode()), Ok(d) if d == none));
        for bad in ["", "!!", "dDE", "bm90IGEgY3Vyc29y"] {
            assert!(
                matches!(TokenCursor::decode(bad), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
    }

    #[test]
    fn stream_ids_are_recognised() {
        for good in ["0-0", "1763912345678-0", "1-18446744073709551615"] {
            assert!(is_stream_id(good), "{good}");
        }
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-a",
            "01x-1",
            "1-2-3",
            "99999999999999999999-0",
        ] {
            assert!(!is_stream_id(bad), "{bad}");
        }
    }

    #[test]
    fn expiry_replies() {
        assert!(!live_expiry(-2, 10));
        assert!(live_expiry(-1, 10));
        assert!(live_expiry(11, 10));
        assert!(!live_expiry(10, 10));
    }

    #[test]
    fn keys_follow_the_contract() {
        let k = Keys {
            prefix: "tessera:".to_owned(),
        };
        assert_eq!(k.rev(RevocationKind::Jti, "abc"), "tessera:rev:jti:abc");
        assert_eq!(k.rev(RevocationKind::Kid, "k1"), "tessera:rev:kid:k1");
        assert_eq!(
            k.rev(RevocationKind::Subject, "spiffe://example.org/w"),
            format!(
                "tessera:rev:sub:{}",
                hex(&sha256(b"spiffe://example.org/w"))
            )
        );
        assert_eq!(k.log(), "tessera:rev:log");
        assert_eq!(k.tok("j"), "tessera:tok:j");
        assert_eq!(k.audit(), "tessera:audit");
        assert_eq!(k.once("ab12"), "tessera:once:ab12");
        assert_eq!(
            k.rl("spiffe://example.org/w"),
            format!("tessera:rl:{}", hex(&sha256(b"spiffe://example.org/w")))
        );
        assert_eq!(k.tok_jti("tessera:tok:j"), Some("j"));
        let odd = Keys {
            prefix: "a*[b]?:".to_owned(),
        };
        assert_eq!(odd.tok_pattern(), r"a\*\[b\]\?:tok:*");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact_url("redis+sentinel://:p@a,b/m"),
            "redis+sentinel://:***@a,b/m"
        );
    }
}
