//! The transport-free core: token exchange, introspection, revocation and the admin
//! operations. Takes plain parameters, returns plain results; `http` (and later
//! `grpc`) only translate. No axum, tonic or redis type appears here.

pub mod admin;
mod cache;
pub mod exchange;
pub mod introspect;
mod limiter;

use crate::attest::jwt_svid::JwtSvidVerifier;
use crate::attest::x509::ServerCertResolver;
use crate::attest::x509::X509SvidVerifier;
use crate::attest::{
    AttestError, BundleSource as _, CombinedBundles, OidcVerifier, SubjectToken, TrustBundle,
    TrustBundles, verify_subject_token,
};
use crate::audit::{AuditEvent, AuditSink, Outcome};
use crate::clock::{SharedClock, UnixSeconds};
use crate::config::{Settings, StaticClient};
use crate::domain::{SpiffeId, VerifiedIdentity};
use crate::jose;
use crate::mint::{CheckedToken, MintError, Minter};
use crate::policy::{CompiledPolicy, SpiffePattern};
use crate::revocation::{
    AuditTail, ReplayGuard, RevocationStore, SharedRateLimit, StoredAuditEvent, TokenInventory,
};
use arc_swap::ArcSwap;
use cache::ExpiringCache;
use rustls_pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

pub use limiter::{FailedAuthLimiter, IdentityLimiter};

/// RFC 8693 / RFC 7523-style client assertion type of the OAuth SPIFFE draft.
pub const JWT_SPIFFE_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

/// Everything that can end a request early. `http::error` is the one mapping to HTTP
/// (RFC 6749 §5.2 codes); descriptions are short and never contain tokens or policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unsupported grant type")]
    UnsupportedGrantType,
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    InvalidClient(String),
    #[error("no policy rule allows this audience")]
    InvalidTarget,
    #[error("{0}")]
    InvalidScope(String),
    #[error("rate limit exceeded")]
    SlowDown { retry_after: u64 },
    #[error("{0}")]
    UnauthorizedClient(String),
    /// No credential at all: 401 with `WWW-Authenticate`.
    #[error("authentication required")]
    Unauthenticated,
    #[error("this identity is not allowed here")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the revocation store is unavailable")]
    TemporarilyUnavailable,
    /// The cause is logged; the client sees a generic message.
    #[error("internal error")]
    Internal(String),
}

impl ServiceError {
    /// The RFC 6749 §5.2 error code (or this server's own for admin outcomes), the same
    /// on every transport.
    pub fn oauth_code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::InvalidClient(_) | Self::Unauthenticated => "invalid_client",
            Self::InvalidTarget => "invalid_target",
            Self::InvalidScope(_) => "invalid_scope",
            Self::SlowDown { .. } => "slow_down",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::Forbidden => "access_denied",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::Internal(_) => "server_error",
        }
    }

    /// Short reason for the audit record.
    pub fn audit_reason(&self) -> String {
        match self {
            Self::InvalidRequest(m)
            | Self::InvalidGrant(m)
            | Self::InvalidClient(m)
            | Self::InvalidScope(m)
            | Self::UnauthorizedClient(m)
            | Self::NotFound(m)
            | Self::Conflict(m) => m.clone(),
            Self::Internal(m) => format!("internal: {m}"),
            other => other.to_string(),
        }
    }
}

impl From<AttestError> for ServiceError {
    fn from(e: AttestError) -> Self {
        Self::InvalidGrant(e.to_string())
    }
}

/// Where a request came from; filled by the transport.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub remote_addr: Option<SocketAddr>,
    pub request_id: String,
}

/// Form parameters with duplicates already refused (RFC 6749 §3.2: parameters MUST NOT
/// be included more than once).
#[derive(Debug, Clone, Default)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
    pub fn require(&self, k: &str) -> Result<&str, ServiceError> {
        self.get(k)
            .ok_or_else(|| ServiceError::InvalidRequest(format!("missing parameter {k}")))
    }
}

/// Credentials a caller presented, as the transport found them; none is checked yet.
#[derive(Clone, Default)]
pub struct CallerCredentials {
    /// `client_assertion_type` + `client_assertion` form parameters.
    pub assertion: Option<(String, String)>,
    /// HTTP Basic `client_id:client_secret`.
    pub basic: Option<(String, String)>,
    /// `Authorization: Bearer …`.
    pub bearer: Option<String>,
    /// The client certificate chain of the TLS connection, if the client sent one.
    pub peer: Option<Arc<PeerCertificates>>,
}

/// A client certificate chain from the TLS handshake (the TLS client verifier already
/// checked it). The identity is derived once per connection and reused by every
/// request on it; its expiry is still checked per request.
pub struct PeerCertificates {
    chain: Vec<CertificateDer<'static>>,
    identity: OnceLock<Result<VerifiedIdentity, String>>,
}

impl PeerCertificates {
    pub fn new(chain: Vec<CertificateDer<'static>>) -> Self {
        Self {
            chain,
            identity: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for CallerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CallerCredentials(assertion: {}, basic: {}, bearer: {}, peer: {})",
            self.assertion.is_some(),
            self.basic.as_ref().map_or("-", |(id, _)| id.as_str()),
            self.bearer.is_some(),
            self.peer.is_some()
        )
    }
}

/// Presented secrets (assertion, Basic secret, bearer token) are wiped when the request
/// is done with them.
impl Drop for CallerCredentials {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        if let Some((_, assertion)) = &mut self.assertion {
            assertion.zeroize();
        }
        if let Some((_, secret)) = &mut self.basic {
            secret.zeroize();
        }
        if let Some(bearer) = &mut self.bearer {
            bearer.zeroize();
        }
    }
}

impl CallerCredentials {
    /// SHA-256 (hex) of the client credential that authenticates a `client_credentials`
    /// request, in the order it is tried: the JWT-SVID assertion string, else the client
    /// certificate's DER. For the audit record (contract §8 `credential_sha256`).
    pub(crate) fn client_credential_sha256(&self) -> Option<String> {
        if let Some((_, assertion)) = &self.assertion {
            return Some(sha256_hex(assertion.as_bytes()));
        }
        let leaf = self.peer.as_ref()?.chain.first()?;
        Some(sha256_hex(leaf.as_ref()))
    }

    /// Takes `client_assertion*` out of the form parameters.
    pub fn with_form_assertion(mut self, params: &Params) -> Self {
        if let (Some(t), Some(a)) = (
            params.get("client_assertion_type"),
            params.get("client_assertion"),
        ) {
            self.assertion = Some((t.to_owned(), a.to_owned()));
        }
        self
    }
}

/// Counters the readiness probe and (later) `/metrics` read.
#[derive(Debug, Default)]
pub struct Counters {
    pub store_errors: AtomicU64,
    pub audit_dropped: AtomicU64,
    pub inventory_write_failures: AtomicU64,
    /// Token requests refused by `[limits] per_identity`.
    pub rate_limited_per_identity: AtomicU64,
    /// Requests refused by `[limits] failed_auth_per_address`.
    pub rate_limited_failed_auth: AtomicU64,
    /// Token requests the local limiter judged because the shared one was unreachable.
    pub rate_limit_fallbacks: AtomicU64,
    /// argon2id verifications of static-client secrets actually run (cache misses).
    pub argon2id_verifications: AtomicU64,
}

/// Verified access tokens remembered for introspection. A map slot holds the key, the
/// `CheckedToken` struct and two times (~310 bytes; the map keeps up to twice as many
/// slots as entries); the strings behind it are shorter than the compact token they were
/// decoded from (base64url is 4/3 of the bytes), and only tokens of at most
/// `TOKEN_CACHE_MAX_TOKEN_BYTES` are stored. Bound when full: 131,072 slots × ~310 B
/// (~40 MiB) + 65,536 × ≤ 2 KiB of strings ≈ 170 MiB at worst; our tokens are typically
/// ~600 bytes with ~300 bytes of strings, ≈ 60 MiB.
const TOKEN_CACHE_CAPACITY: usize = 65_536;
/// Longer tokens (very long SPIFFE IDs) are verified on every request, never cached.
const TOKEN_CACHE_MAX_TOKEN_BYTES: usize = 2_048;
/// Verified JWT-SVIDs of callers (client assertions, admin bearer SVIDs). An entry is a
/// SPIFFE ID (at most 2,048 bytes) and a shared pointer to a bundle: at most ~2.3 KiB,
/// so ≤ ~40 MiB; callers reuse their SVID until it nears expiry, so it stays far below.
const ASSERTION_CACHE_CAPACITY: usize = 16_384;
/// Verified JWT-SVID subject tokens of `/token` (a workload exchanges its SVID for
/// several audiences, or again before its access token expires); bounded like the
/// assertion cache. OIDC subject tokens are never cached (`one_time` must see each use).
const SUBJECT_CACHE_CAPACITY: usize = 16_384;
/// Static introspection clients whose secret passed argon2id. Only successes are
/// remembered and each client has one secret that verifies, so this holds at most one
/// entry per configured client (48 bytes each).
const STATIC_CLIENT_CACHE_CAPACITY: usize = 1_024;
/// How long a static client's verified secret skips argon2id: long enough that a
/// steady caller pays argon2id about once a minute, short enough that a secret rotated
/// out of the configuration (which needs a restart anyway) or a stolen-and-reported
/// secret is not honoured from memory for long.
const STATIC_CLIENT_CACHE_SECS: i64 = 60;

/// A verified JWT-SVID and the bundle that verified it (see `Service::verified_jwt_svid`).
/// Holding the `Arc` keeps a replaced bundle in memory until its cached SVIDs are looked
/// up, evicted or expire (at most their remaining life); it also rules out a new bundle
/// reusing the old one's address and passing for it.
#[derive(Clone)]
struct CachedSvid {
    identity: VerifiedIdentity,
    bundle: Arc<TrustBundle>,
}

/// The hot-path caches (docs/architecture.md "Hot-path caches"). Each remembers only
/// successful verifications, keyed by a digest of the credential, never the credential.
struct HotCaches {
    tokens: ExpiringCache<CheckedToken>,
    assertions: ExpiringCache<CachedSvid>,
    /// Kept apart from `assertions`: a hit here must mean "verified as a subject token",
    /// which routes OIDC issuers first (contract §2).
    subject_svids: ExpiringCache<CachedSvid>,
    static_clients: ExpiringCache<()>,
    /// Keys the static-client cache; `None` (no randomness at start) disables it.
    static_client_mac: Option<jose::ProcessMac>,
}

impl HotCaches {
    fn new() -> Self {
        let static_client_mac = jose::ProcessMac::random()
            .map_err(|e| {
                tracing::error!(error = %e, "no key for the static-client cache; every request runs argon2id");
            })
            .ok();
        Self {
            tokens: ExpiringCache::new(TOKEN_CACHE_CAPACITY),
            assertions: ExpiringCache::new(ASSERTION_CACHE_CAPACITY),
            subject_svids: ExpiringCache::new(SUBJECT_CACHE_CAPACITY),
            static_clients: ExpiringCache::new(STATIC_CLIENT_CACHE_CAPACITY),
            static_client_mac,
        }
    }

    /// The static-client cache key: HMAC-SHA256 under the process key of the id's
    /// length (8 bytes, big-endian), the id and the secret. The length prefix keeps
    /// ("a\0b", "c") and ("a", "b\0c") apart, which a separator byte would not, since a
    /// presented id may contain any byte.
    fn static_client_key(&self, id: &str, secret: &str) -> Option<cache::CacheKey> {
        let mac = self.static_client_mac.as_ref()?;
        let len = u64::try_from(id.len()).unwrap_or(u64::MAX).to_be_bytes();
        Some(mac.tag(&[&len, id.as_bytes(), secret.as_bytes()]))
    }
}

/// State that `POST /admin/v1/policy/reload` swaps atomically.
pub struct Reloadable {
    pub policy: CompiledPolicy,
    pub admin_token_sha256: Option<String>,
}

pub struct Service {
    pub(crate) settings: Settings,
    pub(crate) clock: SharedClock,
    pub(crate) jwt_svids: JwtSvidVerifier,
    pub(crate) oidc: Arc<OidcVerifier>,
    pub(crate) x509_svids: X509SvidVerifier,
    /// Bundle files (reloaded on SIGHUP / admin reload) and Workload API domains.
    pub(crate) bundles: Arc<TrustBundles>,
    /// What the verifiers read: files, agent and federated endpoints, one owner per
    /// trust domain.
    pub(crate) trust: Arc<CombinedBundles>,
    pub(crate) minter: Minter,
    pub(crate) revocations: Arc<dyn RevocationStore>,
    pub(crate) inventory: Arc<dyn TokenInventory>,
    pub(crate) audit_tail: Arc<dyn AuditTail>,
    pub(crate) replay: Arc<dyn ReplayGuard>,
    pub(crate) reloadable: ArcSwap<Reloadable>,
    pub(crate) audit_sink: Arc<dyn AuditSink>,
    audit_tx: mpsc::Sender<StoredAuditEvent>,
    pub(crate) limiter: Option<IdentityLimiter>,
    pub(crate) failed_auth: Option<FailedAuthLimiter>,
    pub counters: Counters,
    pub metrics: crate::metrics::Metrics,
    pub(crate) server_cert: Option<ServerCertResolver>,
    caches: HotCaches,
}

/// The parts `app` wires together.
pub struct ServiceParts {
    pub settings: Settings,
    pub clock: SharedClock,
    pub bundles: Arc<TrustBundles>,
    /// Must include `bundles` as one of its sources.
    pub trust: Arc<CombinedBundles>,
    pub minter: Minter,
    pub revocations: Arc<dyn RevocationStore>,
    pub inventory: Arc<dyn TokenInventory>,
    pub audit_tail: Arc<dyn AuditTail>,
    pub replay: Arc<dyn ReplayGuard>,
    pub audit_sink: Arc<dyn AuditSink>,
    /// `[[oidc_issuer]]` verification and key caches.
    pub oidc: Arc<OidcVerifier>,
    pub policy: CompiledPolicy,
    pub admin_token_sha256: Option<String>,
    /// The listeners' certificate from the Workload API (`[spiffe] workload_api`).
    pub server_cert: Option<ServerCertResolver>,
    /// The store's shared rate limit (Redis); `None` keeps `per_identity` per replica.
    pub shared_rate_limit: Option<Arc<dyn SharedRateLimit>>,
}

/// Audit events for the store's tail are written by one task, off the request path.
const AUDIT_QUEUE: usize = 4096;
/// Audit events written to the store's tail in one call, at most.
const AUDIT_TAIL_BATCH: usize = 256;

impl Service {
    /// Builds the service and spawns its audit-tail writer (needs a tokio runtime).
    pub fn new(p: ServiceParts) -> Arc<Self> {
        let (audit_tx, mut rx) = mpsc::channel::<StoredAuditEvent>(AUDIT_QUEUE);
        let jwt_svids = JwtSvidVerifier::new(
            p.trust.clone(),
            p.settings.accept_audiences.clone(),
            p.settings.leeway,
        );
        let limiter = p
            .settings
            .per_identity_limit
            .map(|rate| IdentityLimiter::new(rate, p.clock.clone(), p.shared_rate_limit.clone()));
        let failed_auth = p.settings.failed_auth_limit.map(FailedAuthLimiter::new);
        let x509_svids = X509SvidVerifier::new(p.trust.clone());
        let svc = Arc::new(Self {
            jwt_svids,
            oidc: p.oidc,
            replay: p.replay,
            x509_svids,
            bundles: p.bundles,
            trust: p.trust,
            server_cert: p.server_cert,
            minter: p.minter,
            revocations: p.revocations,
            inventory: p.inventory,
            audit_tail: p.audit_tail.clone(),
            reloadable: ArcSwap::from_pointee(Reloadable {
                policy: p.policy,
                admin_token_sha256: p.admin_token_sha256,
            }),
            audit_sink: p.audit_sink,
            audit_tx,
            limiter,
            failed_auth,
            counters: Counters::default(),
            metrics: crate::metrics::Metrics::default(),
            caches: HotCaches::new(),
            clock: p.clock,
            settings: p.settings,
        });
        let tail = p.audit_tail;
        tokio::spawn(async move {
            // Whatever queued while the last write ran goes in the next one.
            let mut batch = Vec::with_capacity(AUDIT_TAIL_BATCH);
            while rx.recv_many(&mut batch, AUDIT_TAIL_BATCH).await > 0 {
                if let Err(e) = tail.append_audit_batch(&batch).await {
                    tracing::warn!(error = %e, events = batch.len(), "audit tail append failed");
                }
                batch.clear();
            }
        });
        svc
    }

    pub fn now(&self) -> UnixSeconds {
        self.clock.now()
    }

    /// The Workload API SVID resolver, when the listeners serve the agent's SVID.
    pub fn server_cert(&self) -> Option<ServerCertResolver> {
        self.server_cert.clone()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn minter(&self) -> &Minter {
        &self.minter
    }

    /// Emits the request's audit event to the sink and the store's tail.
    pub(crate) fn audit(&self, ctx: &RequestContext, mut ev: AuditEvent) {
        ev.remote_addr = ctx.remote_addr.map(|a| a.ip().to_string());
        if !ctx.request_id.is_empty() {
            ev.request_id = Some(ctx.request_id.clone());
        }
        self.count(&ev);
        let json = ev.to_json();
        self.audit_sink.emit(&ev, &json);
        let stored = StoredAuditEvent {
            ts: ev.ts,
            subject: ev.subject,
            outcome: ev.outcome.as_str().to_owned(),
            json,
        };
        if self.audit_tx.try_send(stored).is_err() {
            self.counters.audit_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every request ends in exactly one audit event, so the outcome metrics are
    /// counted from it: nothing can be answered without being counted.
    fn count(&self, ev: &AuditEvent) {
        let ok = ev.outcome == Outcome::Success;
        match ev.event {
            "token.issued" => self
                .metrics
                .token_issued(ev.rule.as_deref().unwrap_or("unknown")),
            "token.denied" => self
                .metrics
                .token_denied(ev.error_code.unwrap_or("invalid_request")),
            "token.introspected" if ok => self.metrics.introspected(ev.active == Some(true)),
            _ => {}
        }
        if ok
            && matches!(ev.event, "token.revoked" | "admin.revoke")
            && let Some(kind) = ev.revocation_kind
        {
            self.metrics.revoked(kind);
        }
    }

    /// Times one call to the revocation store or the token inventory.
    pub(crate) async fn store_call<T, E>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = call.await;
        self.metrics.observe_store(operation, started.elapsed());
        result
    }

    /// Records the outcome of `result` in `ev` and emits it: the single exit of every
    /// request, so no path goes unaudited.
    pub(crate) fn finish<T>(
        &self,
        ctx: &RequestContext,
        mut ev: AuditEvent,
        result: Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        match &result {
            Ok(_) => ev.outcome = Outcome::Success,
            Err(e) => {
                ev.outcome = Outcome::Failure;
                ev.error_code = Some(e.oauth_code());
                if ev.reason.is_none() {
                    ev.reason = Some(e.audit_reason());
                }
                if let ServiceError::Internal(cause) = e {
                    tracing::error!(event = ev.event, cause = %cause, "internal error");
                }
            }
        }
        self.audit(ctx, ev);
        result
    }

    /// Verifies a JWT-SVID client assertion (OAuth SPIFFE client authentication draft).
    pub(crate) fn assertion_identity(
        &self,
        creds: &CallerCredentials,
    ) -> Option<Result<VerifiedIdentity, ServiceError>> {
        let (kind, assertion) = creds.assertion.as_ref()?;
        if kind != JWT_SPIFFE_ASSERTION {
            return Some(Err(ServiceError::InvalidClient(
                "unsupported client_assertion_type".into(),
            )));
        }
        Some(
            self.verified_jwt_svid(assertion).map_err(|e| {
                ServiceError::InvalidClient(format!("client assertion rejected: {e}"))
            }),
        )
    }

    /// Verifies a JWT-SVID that authenticates a caller (a client assertion, an admin
    /// bearer SVID), remembering the result under its SHA-256 until its `exp`. Nothing
    /// applies one-time (jti) rules to these: a caller reuses its SVID on every request
    /// (one-time use applies only to `[[oidc_issuer]] one_time` subject tokens of
    /// `/token`, which never come here).
    ///
    /// A hit is given only while `now < exp` (from then on, through the leeway, every
    /// request is verified in full) and only while the trust domain's bundle is the very
    /// one that verified the SVID: every bundle source swaps in a new `Arc` when a bundle
    /// changes (file reload, Workload API update, federation refresh), so a key removed
    /// from a bundle stops cached SVIDs at once instead of after their remaining life.
    pub(crate) fn verified_jwt_svid(
        &self,
        unverified_jwt: &str,
    ) -> Result<VerifiedIdentity, AttestError> {
        let now = self.now();
        let key = jose::sha256(unverified_jwt.as_bytes());
        if let Some(hit) = self.cached_svid(&self.caches.assertions, &key, now) {
            return Ok(hit.identity);
        }
        let (identity, bundle) = self.jwt_svids.verify_keeping_bundle(unverified_jwt, now)?;
        remember_svid(&self.caches.assertions, key, &identity, bundle, now);
        Ok(identity)
    }

    /// A cached SVID that is live at `now` and whose trust domain still has the very
    /// bundle that verified it.
    fn cached_svid(
        &self,
        cache: &ExpiringCache<CachedSvid>,
        key: &cache::CacheKey,
        now: UnixSeconds,
    ) -> Option<CachedSvid> {
        cache.get_if(key, now, |c| {
            c.identity
                .spiffe_id()
                .and_then(|id| self.trust.bundle(&id.trust_domain()))
                .is_some_and(|b| Arc::ptr_eq(&b, &c.bundle))
        })
    }

    /// `verify_subject_token` through the subject-token cache, with the same hit rules
    /// as [`Self::verified_jwt_svid`]. Only JWT-SVIDs are remembered; an OIDC token is
    /// verified (and, for `one_time` issuers, marked) on every request.
    pub(crate) async fn verified_subject_token(
        &self,
        unverified_token: &str,
        now: UnixSeconds,
    ) -> Result<SubjectToken, AttestError> {
        let key = jose::sha256(unverified_token.as_bytes());
        if let Some(hit) = self.cached_svid(&self.caches.subject_svids, &key, now) {
            return Ok(SubjectToken {
                identity: hit.identity,
                one_time: None,
                svid_bundle: Some(hit.bundle),
            });
        }
        let verified =
            verify_subject_token(&self.jwt_svids, &self.oidc, unverified_token, now).await?;
        if let (Some(bundle), None) = (&verified.svid_bundle, &verified.one_time) {
            let cache = &self.caches.subject_svids;
            remember_svid(cache, key, &verified.identity, bundle.clone(), now);
        }
        Ok(verified)
    }

    /// `Minter::check` through the verified-token cache (introspection). A hit is given
    /// while `now < exp` — exactly as long as `check` would pass the token's `exp` — and
    /// from the `now` it was verified at, so `nbf` (with leeway) holds too. Revocation is
    /// not part of this: the caller asks the store on every request. A key taken out of
    /// the ring (kid revocation) is covered by that store check, since the kid's
    /// revocation is stored before the key leaves the ring and outlives its tokens.
    pub(crate) fn checked_token(
        &self,
        unverified_token: &str,
        now: UnixSeconds,
    ) -> Result<CheckedToken, MintError> {
        let key = jose::sha256(unverified_token.as_bytes());
        if let Some(hit) = self.caches.tokens.get(&key, now) {
            return Ok(hit);
        }
        let checked = self
            .minter
            .check(unverified_token, now, self.settings.leeway)?;
        if unverified_token.len() <= TOKEN_CACHE_MAX_TOKEN_BYTES {
            self.caches
                .tokens
                .insert(key, checked.clone(), now, checked.claims.exp);
        }
        Ok(checked)
    }

    /// Whether this static client's id and secret passed argon2id within the last
    /// `STATIC_CLIENT_CACHE_SECS`. A wrong secret has another HMAC and never hits.
    pub(crate) fn static_client_recently_verified(&self, id: &str, secret: &str) -> bool {
        self.caches
            .static_client_key(id, secret)
            .is_some_and(|k| self.caches.static_clients.get(&k, self.now()).is_some())
    }

    /// Remembers a static client whose secret just passed argon2id.
    pub(crate) fn remember_static_client(&self, id: &str, secret: &str) {
        if let Some(k) = self.caches.static_client_key(id, secret) {
            let now = self.now();
            self.caches.static_clients.insert(
                k,
                (),
                now,
                now.saturating_add(STATIC_CLIENT_CACHE_SECS),
            );
        }
    }

    /// The X.509-SVID of the TLS connection as an identity (RFC 8705 `tls_client_auth`),
    /// if the client presented a certificate.
    pub(crate) fn peer_identity(
        &self,
        creds: &CallerCredentials,
    ) -> Option<Result<VerifiedIdentity, ServiceError>> {
        let peer = creds.peer.as_ref()?;
        let now = self.now();
        let verified = peer.identity.get_or_init(|| {
            self.x509_svids
                .verify(&peer.chain, now)
                .map_err(|e| e.to_string())
        });
        Some(match verified {
            Ok(id) if id.expires_at() > now => Ok(id.clone()),
            Ok(_) => Err(ServiceError::InvalidClient(
                "client certificate has expired".into(),
            )),
            Err(e) => Err(ServiceError::InvalidClient(format!(
                "client certificate rejected: {e}"
            ))),
        })
    }

    /// The workload a caller proved to be, from a JWT-SVID client assertion or else the
    /// connection's X.509-SVID; `None` when it presented neither.
    pub(crate) fn workload_caller(
        &self,
        creds: &CallerCredentials,
    ) -> Option<Result<SpiffeId, ServiceError>> {
        let identity = self
            .assertion_identity(creds)
            .or_else(|| self.peer_identity(creds))?;
        Some(identity.and_then(|id| {
            id.spiffe_id()
                .cloned()
                .ok_or_else(|| ServiceError::InvalidClient("credential has no SPIFFE ID".into()))
        }))
    }

    /// `[limits] failed_auth_per_address`: refuses a caller whose address used up its
    /// failed authentications, before any argon2id or signature work.
    pub(crate) fn failed_auth_gate(
        &self,
        ctx: &RequestContext,
        ev: &mut AuditEvent,
    ) -> Result<(), ServiceError> {
        let (Some(limiter), Some(addr)) = (&self.failed_auth, ctx.remote_addr) else {
            return Ok(());
        };
        limiter
            .check(addr.ip(), self.clock.now_millis())
            .map_err(|refused| {
                self.counters
                    .rate_limited_failed_auth
                    .fetch_add(1, Ordering::Relaxed);
                ev.reason = Some("rate_limited: failed_auth".to_owned());
                ServiceError::SlowDown {
                    retry_after: refused.retry_after_secs,
                }
            })
    }

    /// Counts a failed client authentication (credentials presented and rejected) of
    /// the caller's address; a success or a missing credential counts nothing.
    pub(crate) fn note_auth_result<T>(
        &self,
        ctx: &RequestContext,
        result: &Result<T, ServiceError>,
    ) {
        if let (Some(limiter), Some(addr), Err(ServiceError::InvalidClient(_))) =
            (&self.failed_auth, ctx.remote_addr, result)
            && !limiter.record_failure(addr.ip(), self.clock.now_millis())
        {
            tracing::warn!("failed-authentication table full; this address is not counted");
        }
    }

    pub fn policy(&self) -> arc_swap::Guard<Arc<Reloadable>> {
        self.reloadable.load()
    }

    /// Readiness (contract §2 `/readyz`): keys loaded, bundles loaded, store reachable.
    /// `Ok` carries warnings that do not make the server unready (stale bundles).
    pub async fn readiness(&self) -> Result<Vec<String>, String> {
        if let Some(cert) = &self.server_cert
            && !cert.has_certificate()
        {
            return Err("waiting for this server's X.509-SVID from the Workload API".into());
        }
        let status = self.trust.status();
        if !status.is_ready() {
            let names: Vec<String> = status.missing.iter().map(ToString::to_string).collect();
            return Err(format!("trust bundles not loaded: {}", names.join(", ")));
        }
        self.revocations
            .ping()
            .await
            .map_err(|e| format!("revocation store: {e}"))?;
        Ok(status
            .stale
            .iter()
            .map(|td| format!("trust bundle of {td} is stale: its last refresh failed; serving the last good one"))
            .collect())
    }
}

/// Whether `id` matches any of `patterns`.
/// Remembers an SVID verified at `now` with `bundle`, until its `exp`.
fn remember_svid(
    cache: &ExpiringCache<CachedSvid>,
    key: cache::CacheKey,
    identity: &VerifiedIdentity,
    bundle: Arc<TrustBundle>,
    now: UnixSeconds,
) {
    let exp = identity.expires_at();
    let identity = identity.clone();
    cache.insert(key, CachedSvid { identity, bundle }, now, exp);
}

pub(crate) fn allowed(patterns: &[SpiffePattern], id: &SpiffeId) -> bool {
    patterns.iter().any(|p| p.matches(id))
}

/// Lowercase hex SHA-256, the form credentials take in audit records.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    jose::hex(&jose::sha256(bytes))
}

/// Constant-time check of a presented secret against a stored lowercase-hex SHA-256.
pub(crate) fn matches_sha256(presented: &str, stored_hex: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let got = jose::hex(&jose::sha256(presented.as_bytes()));
    got.as_bytes().ct_eq(stored_hex.as_bytes()).into()
}

/// Checks HTTP Basic credentials against the configured static clients (argon2id).
pub(crate) fn verify_static_client(clients: &[StaticClient], id: &str, secret: &str) -> bool {
    use argon2::PasswordVerifier as _;
    let client = clients.iter().find(|c| c.id == id);
    // An unknown client id costs the same argon2id work as a wrong secret, so response
    // times do not tell which client ids exist.
    let stored = client.map_or(UNKNOWN_CLIENT_HASH, |c| c.secret_hash.as_str());
    let ok = match argon2::PasswordHash::new(stored) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    };
    ok && client.is_some()
}

/// argon2id (default parameters, as `tessera hash-secret` makes) of a random string
/// nobody holds; verified against when the client id is unknown.
const UNKNOWN_CLIENT_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$S8Gn9LsDnGUe6WWI+e46WQ$qz/smOILrtuemEXdOqz1jMMuajd9nd7QChudEML7guE";

impl Service {
    /// The Prometheus text exposition of `/metrics` (metric families: docs/operations.md).
    pub fn render_metrics(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        crate::metrics::family(
            &mut out,
            "tessera_build_info",
            "gauge",
            "Always 1; the version label names the running build.",
        );
        out.push_str(&format!(
            "tessera_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ));
        self.metrics.render(&mut out);
        self.render_key_metrics(&mut out);
        for (name, help, v) in [
            (
                "tessera_store_errors_total",
                "Revocation store calls that failed.",
                &c.store_errors,
            ),
            (
                "tessera_audit_dropped_total",
                "Audit events not written to the store tail.",
                &c.audit_dropped,
            ),
            (
                "tessera_inventory_write_failures_total",
                "Issued tokens missing from the inventory.",
                &c.inventory_write_failures,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# HELP tessera_rate_limited_total Requests refused with 429 slow_down, by limit.\n# TYPE tessera_rate_limited_total counter\n");
        for (limit, v) in [
            ("per_identity", &c.rate_limited_per_identity),
            ("failed_auth", &c.rate_limited_failed_auth),
        ] {
            out.push_str(&format!(
                "tessera_rate_limited_total{{limit=\"{limit}\"}} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP tessera_rate_limit_fallbacks_total Token requests judged by this replica's own per_identity limit because the shared store was unreachable.\n# TYPE tessera_rate_limit_fallbacks_total counter\ntessera_rate_limit_fallbacks_total {}\n",
            c.rate_limit_fallbacks.load(Ordering::Relaxed)
        ));
        self.render_cache_metrics(&mut out);
        let health = self.trust.refresh_health();
        if !health.is_empty() {
            let now = self.now();
            out.push_str("# HELP tessera_bundle_fetches_total Fetches of a federated trust bundle, failed or not.\n# TYPE tessera_bundle_fetches_total counter\n");
            for h in &health {
                out.push_str(&format!(
                    "tessera_bundle_fetches_total{{trust_domain=\"{}\"}} {}\n",
                    h.trust_domain, h.fetches
                ));
            }
            out.push_str("# HELP tessera_bundle_refresh_failures_total Failed fetches of a federated trust bundle.\n# TYPE tessera_bundle_refresh_failures_total counter\n");
            for h in &health {
                out.push_str(&format!(
                    "tessera_bundle_refresh_failures_total{{trust_domain=\"{}\"}} {}\n",
                    h.trust_domain, h.failures
                ));
            }
            out.push_str("# HELP tessera_bundle_age_seconds Seconds since the served federated trust bundle was fetched.\n# TYPE tessera_bundle_age_seconds gauge\n");
            for h in &health {
                if let Some(at) = h.last_success {
                    out.push_str(&format!(
                        "tessera_bundle_age_seconds{{trust_domain=\"{}\"}} {}\n",
                        h.trust_domain,
                        (now - at).max(0)
                    ));
                }
            }
        }
        let oidc = self.oidc.stats(self.now());
        if !oidc.is_empty() {
            type Row = fn(&crate::attest::oidc::IssuerKeyStats) -> Option<i64>;
            let families: [(&str, &str, &str, Row); 3] = [
                (
                    "tessera_oidc_jwks_fetches_total",
                    "counter",
                    "Fetches of an OIDC issuer's keys (discovery and JWKS).",
                    |st| i64::try_from(st.fetches).ok(),
                ),
                (
                    "tessera_oidc_jwks_fetch_failures_total",
                    "counter",
                    "Failed fetches of an OIDC issuer's keys.",
                    |st| i64::try_from(st.failures).ok(),
                ),
                (
                    "tessera_oidc_key_age_seconds",
                    "gauge",
                    "Seconds since the OIDC issuer's keys in use were fetched.",
                    |st| st.key_age.map(|a| a.max(0)),
                ),
            ];
            for (name, kind, help, value) in families {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                for st in &oidc {
                    if let Some(v) = value(st) {
                        // Prometheus text format: label values escape \\, " and newline.
                        let issuer = st
                            .issuer
                            .replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n");
                        out.push_str(&format!("{name}{{issuer=\"{issuer}\"}} {v}\n"));
                    }
                }
            }
        }
        out
    }
}

impl Service {
    /// Age of the signing keys in use: a current key older than the rotation period
    /// means rotation stopped.
    fn render_key_metrics(&self, out: &mut String) {
        use crate::mint::keys::KeyState;
        crate::metrics::family(
            out,
            "tessera_signing_key_age_seconds",
            "gauge",
            "Seconds since the current and next signing keys were created.",
        );
        let now = self.now();
        for k in self.minter.keys().info() {
            let state = match k.state {
                KeyState::Current => "current",
                KeyState::Next => "next",
                KeyState::Retired | KeyState::Revoked => continue,
            };
            out.push_str(&format!(
                "tessera_signing_key_age_seconds{{kid=\"{}\",state=\"{state}\"}} {}\n",
                crate::metrics::escape(&k.kid),
                (now - k.created_at).max(0)
            ));
        }
    }

    /// Hits, misses and sizes of the hot-path caches, and the argon2id work they save.
    fn render_cache_metrics(&self, out: &mut String) {
        let c = &self.caches;
        let caches: [(&str, (u64, u64), usize); 4] = [
            ("introspection", c.tokens.stats(), c.tokens.len()),
            ("client_assertion", c.assertions.stats(), c.assertions.len()),
            (
                "subject_token",
                c.subject_svids.stats(),
                c.subject_svids.len(),
            ),
            (
                "static_client",
                c.static_clients.stats(),
                c.static_clients.len(),
            ),
        ];
        out.push_str("# HELP tessera_cache_hits_total Lookups answered from a hot-path cache of verified credentials, by cache.\n# TYPE tessera_cache_hits_total counter\n");
        for (name, (hits, _), _) in &caches {
            out.push_str(&format!(
                "tessera_cache_hits_total{{cache=\"{name}\"}} {hits}\n"
            ));
        }
        out.push_str("# HELP tessera_cache_misses_total Lookups a hot-path cache could not answer (the credential was verified in full), by cache.\n# TYPE tessera_cache_misses_total counter\n");
        for (name, (_, misses), _) in &caches {
            out.push_str(&format!(
                "tessera_cache_misses_total{{cache=\"{name}\"}} {misses}\n"
            ));
        }
        out.push_str("# HELP tessera_cache_entries Entries held by a hot-path cache, by cache.\n# TYPE tessera_cache_entries gauge\n");
        for (name, _, len) in &caches {
            out.push_str(&format!(
                "tessera_cache_entries{{cache=\"{name}\"}} {len}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP tessera_argon2id_verifications_total argon2id verifications of static-client secrets run (not answered from the cache).\n# TYPE tessera_argon2id_verifications_total counter\ntessera_argon2id_verifications_total {}\n",
            self.counters.argon2id_verifications.load(Ordering::Relaxed)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, secret: &str) -> StaticClient {
        use argon2::PasswordHasher as _;
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = argon2::Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .unwrap()
            .to_string();
        StaticClient {
            id: id.into(),
            secret_hash: hash,
        }
    }

    #[test]
    fn debug_of_presented_credentials_is_redacted() {
        let (assertion, secret, bearer) = (
            "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmUifQ.c2lnbmF0dXJlLWJ5dGVz",
            "static-client-secret-value",
            "adm-admin-bearer-token-value",
        );
        let creds = CallerCredentials {
            assertion: Some((JWT_SPIFFE_ASSERTION.into(), assertion.into())),
            basic: Some(("legacy-gateway".into(), secret.into())),
            bearer: Some(bearer.into()),
            peer: None,
        };
        let shown = format!("{creds:?}");
        for s in [assertion, secret, bearer, "c2lnbmF0dXJl", "admin-bearer"] {
            assert!(!shown.contains(s), "{shown}");
        }
        assert!(shown.contains("legacy-gateway"), "{shown}");
    }

    #[test]
    fn client_credential_hash_is_of_the_assertion_else_the_certificate() {
        let cert = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        // (`..Default::default()` cannot build it: the type wipes its secrets on drop.)
        let mut creds = CallerCredentials::default();
        creds.peer = Some(Arc::new(PeerCertificates::new(vec![cert.clone()])));
        assert_eq!(
            creds.client_credential_sha256(),
            Some(sha256_hex(cert.as_ref()))
        );
        creds.assertion = Some((JWT_SPIFFE_ASSERTION.into(), "a.b.c".into()));
        assert_eq!(creds.client_credential_sha256(), Some(sha256_hex(b"a.b.c")));
        assert_eq!(
            CallerCredentials::default().client_credential_sha256(),
            None
        );
    }

    #[test]
    fn static_clients_need_the_right_id_and_secret() {
        let clients = [client("gw", "a-long-secret-value")];
        assert!(verify_static_client(&clients, "gw", "a-long-secret-value"));
        assert!(!verify_static_client(&clients, "gw", "wrong"));
        assert!(!verify_static_client(
            &clients,
            "other",
            "a-long-secret-value"
        ));
        // The unknown-id path really runs argon2id: its hash must parse.
        assert!(argon2::PasswordHash::new(UNKNOWN_CLIENT_HASH).is_ok());
    }
}
