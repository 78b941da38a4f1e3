//! OIDC subject tokens (contract §2, §4 `[[oidc_issuer]]`; OpenID Connect Core §2 and
//! §3.1.3.7; RFC 7519; RFC 8725): Kubernetes service-account tokens, CI job tokens and
//! any other issuer the operator configured.
//!
//! An issuer is selected only by an exact match of the token's `iss` with a configured
//! issuer; nothing named in a token (`jku`, `x5u`, `iss` of an unknown issuer) is ever
//! fetched. Keys come from the issuer's JWKS through the `JwksFetcher` seam (the HTTP
//! client lives outside `attest`) or from a static `jwks_file`.
//!
//! Key cache, per issuer:
//! - fresh for the JWKS response's `Cache-Control: max-age`, clamped to
//!   [`MIN_CACHE_SECS`, `MAX_CACHE_SECS`] (the lower bound when absent);
//! - a stale set, or a token with an unknown `kid`, triggers a refetch, at most one per
//!   `refetch_cooldown`: concurrent requests queue on one lock and share that fetch;
//! - a failed fetch keeps the last good keys, usable until `max_key_age` after they were
//!   fetched; after that the issuer's tokens are refused until a fetch succeeds.
//!
//! Time is the injected clock's (`now`), so tests move it instead of sleeping.

use super::jwt_svid::{check_audience, check_times};
use super::{AttestError, bundle};
use crate::clock::UnixSeconds;
use crate::domain::identity::VerifierProof;
use crate::domain::{CredentialKind, Principal, VerifiedIdentity};
use crate::jose::{self, Alg, JoseError, UnverifiedJws, VerifyingKey};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Lower bound on how long a fetched JWKS is used before it is refetched.
pub const MIN_CACHE_SECS: i64 = 60;
/// Upper bound, whatever `Cache-Control` says.
pub const MAX_CACHE_SECS: i64 = 24 * 3600;
/// Default minimum gap between two fetches of one issuer's keys.
pub const DEFAULT_REFETCH_COOLDOWN_SECS: u64 = 30;
/// Default age after which keys that could not be refreshed are no longer trusted.
pub const DEFAULT_MAX_KEY_AGE_SECS: u64 = 24 * 3600;
/// Longest `sub` accepted; it becomes part of the issued token's subject.
pub const MAX_SUBJECT_LEN: usize = 1024;
/// Keys kept from one JWKS; real issuers publish a handful.
pub const MAX_KEYS: usize = 64;

/// One `[[oidc_issuer]]`, checked by configuration.
#[derive(Debug, Clone)]
pub struct OidcIssuerConfig {
    /// Compared byte for byte with `iss` (OIDC Core §3.1.3.7 step 2).
    pub issuer: String,
    /// The token's `aud` must contain one of these (step 3).
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
    /// Remember each token (its `jti`, or its hash) until `exp`: a second exchange fails.
    pub one_time: bool,
    pub refetch_cooldown_secs: u64,
    pub max_key_age_secs: u64,
}

/// A JWKS document as fetched, with the freshness the server gave it.
#[derive(Debug, Clone)]
pub struct FetchedJwks {
    pub body: Vec<u8>,
    /// `Cache-Control: max-age` of the response, seconds.
    pub max_age: Option<u64>,
}

/// Where an issuer's keys come from over the network: discovery plus the JWKS fetch,
/// implemented by `oidc_fetch` (the one place besides federation that names an HTTP
/// client). The error is a log-safe cause.
#[async_trait]
pub trait JwksFetcher: Send + Sync {
    async fn fetch_jwks(&self) -> Result<FetchedJwks, String>;
}

/// Where one issuer's keys come from.
pub enum KeySource {
    Remote(Arc<dyn JwksFetcher>),
    /// `jwks_file`: static keys for air-gapped clusters, read at start and on reload.
    File(PathBuf),
}

struct IssuerKey {
    kid: Option<String>,
    key: VerifyingKey,
}

struct KeySet {
    keys: Vec<IssuerKey>,
    fetched_at: UnixSeconds,
    /// Refetch after this; `i64::MAX` for a static file.
    fresh_until: UnixSeconds,
}

const NEVER: i64 = i64::MIN;

/// Why a JWKS was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS rejected: {0}")]
    Bundle(#[from] bundle::BundleError),
    #[error("JWKS holds no usable signing key")]
    NoUsableKey,
    #[error("cannot read {path}: {cause}")]
    Io { path: PathBuf, cause: String },
}

/// Parses an OIDC JWKS (RFC 7517 §5). Lenient where issuers differ (RFC 7517 §4.2: keys
/// with `use` other than `sig` are skipped, as are key types or curves we do not
/// verify, such as an `oct` or `enc` key next to the signing keys), strict where a
/// lenient parser is a confusion vector (duplicate JSON members, oversized documents).
/// A set without a single usable key is an error: keeping the previous keys is safer
/// than trusting nothing by accident.
pub fn parse_oidc_jwks(json: &[u8]) -> Result<Vec<(Option<String>, VerifyingKey)>, JwksError> {
    let (_, entries) = bundle::parse_jwk_set(json)?;
    let mut keys = Vec::new();
    for entry in &entries {
        let Some(jwk) = entry.as_object() else {
            continue;
        };
        if jwk.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
            continue;
        }
        // HMAC keys are never used: they would need the secret shared with us (RFC 8725 §3.2).
        let Ok(key) = VerifyingKey::from_jwk(jwk) else {
            continue;
        };
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
        keys.push((kid, key));
        if keys.len() == MAX_KEYS {
            break;
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

/// Counters and freshness of one issuer's keys, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerKeyStats {
    pub issuer: String,
    pub fetches: u64,
    pub failures: u64,
    /// Seconds since the keys in use were fetched (or read), `None` before the first.
    pub key_age: Option<i64>,
}

struct Issuer {
    config: OidcIssuerConfig,
    source: KeySource,
    keys: ArcSwapOption<KeySet>,
    /// Start time (clock seconds) of the last fetch attempt, successful or not.
    last_attempt: AtomicI64,
    /// Serialises fetches: requests that arrive during one wait and then use its result.
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    failures: AtomicU64,
}

/// A subject token that passed verification (OIDC or JWT-SVID).
#[derive(Debug)]
pub struct SubjectToken {
    pub identity: VerifiedIdentity,
    /// Set for `one_time` issuers: what the replay guard must mark as used.
    pub one_time: Option<OneTimeUse>,
    /// For a JWT-SVID: the trust bundle that verified it (see `JwtSvidVerifier::verify_keeping_bundle`).
    pub svid_bundle: Option<std::sync::Arc<super::TrustBundle>>,
}

/// The store key that makes a token single-use, and how long it must be remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimeUse {
    /// Hex SHA-256 of `<iss>` NUL `<jti>`, or of the whole token when it has no `jti`
    /// (contract §6 `once:{key}`).
    pub key: String,
    /// The token's `exp` plus leeway: it can no longer be presented after that.
    pub until: UnixSeconds,
}

/// All configured OIDC issuers.
pub struct OidcVerifier {
    issuers: HashMap<String, Arc<Issuer>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.issuers.keys().collect();
        names.sort();
        f.debug_struct("OidcVerifier")
            .field("issuers", &names)
            .finish()
    }
}

fn read_jwks_file(path: &PathBuf) -> Result<Vec<(Option<String>, VerifyingKey)>, JwksError> {
    let io = |cause: String| JwksError::Io {
        path: path.clone(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
    if meta.len() > bundle::MAX_BUNDLE_BYTES as u64 {
        return Err(JwksError::Bundle(bundle::BundleError::TooLarge));
    }
    let bytes = std::fs::read(path).map_err(|e| io(e.to_string()))?;
    parse_oidc_jwks(&bytes)
}

fn key_set(
    keys: Vec<(Option<String>, VerifyingKey)>,
    fetched_at: UnixSeconds,
    fresh_until: UnixSeconds,
) -> Arc<KeySet> {
    Arc::new(KeySet {
        keys: keys
            .into_iter()
            .map(|(kid, key)| IssuerKey { kid, key })
            .collect(),
        fetched_at,
        fresh_until,
    })
}

/// Set-up failure: names the issuer and the file.
#[derive(Debug, thiserror::Error)]
#[error("oidc_issuer {issuer}: jwks_file: {source}")]
pub struct OidcSetupError {
    pub issuer: String,
    #[source]
    pub source: JwksError,
}

impl OidcVerifier {
    /// An empty verifier: no issuer is trusted.
    pub fn none() -> Self {
        Self {
            issuers: HashMap::new(),
        }
    }

    /// `jwks_file` issuers are read now (a bad file stops start-up, naming it); remote
    /// issuers fetch on first use or on `prefetch`.
    pub fn new(
        issuers: Vec<(OidcIssuerConfig, KeySource)>,
        now: UnixSeconds,
    ) -> Result<Self, OidcSetupError> {
        let mut map = HashMap::with_capacity(issuers.len());
        for (config, source) in issuers {
            let keys = match &source {
                KeySource::File(path) => {
                    let keys = read_jwks_file(path).map_err(|source| OidcSetupError {
                        issuer: config.issuer.clone(),
                        source,
                    })?;
                    Some(key_set(keys, now, i64::MAX))
                }
                KeySource::Remote(_) => None,
            };
            let issuer = Issuer {
                source,
                keys: ArcSwapOption::new(keys),
                last_attempt: AtomicI64::new(NEVER),
                fetch_lock: tokio::sync::Mutex::new(()),
                fetches: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                config,
            };
            map.insert(issuer.config.issuer.clone(), Arc::new(issuer));
        }
        Ok(Self { issuers: map })
    }

    /// Whether `iss` names a configured issuer (exact match).
    pub fn is_configured(&self, iss: &str) -> bool {
        self.issuers.contains_key(iss)
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches every remote issuer's keys once (at start, so the first exchange does
    /// not wait). Failures are counted and logged; the next token retries.
    pub async fn prefetch(&self, now: UnixSeconds) {
        for issuer in self.issuers.values() {
            if matches!(issuer.source, KeySource::Remote(_)) {
                issuer.refresh(now).await;
            }
        }
    }

    /// Re-reads `jwks_file` issuers; a file that fails keeps its last good keys.
    /// Returns the failures, naming issuer and file. Blocking file I/O.
    pub fn reload_files(&self, now: UnixSeconds) -> Vec<String> {
        let mut failed = Vec::new();
        for issuer in self.issuers.values() {
            if let KeySource::File(path) = &issuer.source {
                match read_jwks_file(path) {
                    Ok(keys) => issuer.keys.store(Some(key_set(keys, now, i64::MAX))),
                    Err(e) => failed.push(format!("oidc_issuer {}: {e}", issuer.config.issuer)),
                }
            }
        }
        failed
    }

    pub fn stats(&self, now: UnixSeconds) -> Vec<IssuerKeyStats> {
        let mut out: Vec<IssuerKeyStats> = self
            .issuers
            .values()
            .map(|i| IssuerKeyStats {
                issuer: i.config.issuer.clone(),
                fetches: i.fetches.load(Ordering::Relaxed),
                failures: i.failures.load(Ordering::Relaxed),
                key_age: i
                    .keys
                    .load()
                    .as_ref()
                    .map(|k| now.saturating_sub(k.fetched_at)),
            })
            .collect();
        out.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        out
    }

    /// Verifies a token whose `iss` is a configured issuer (the caller checked with
    /// `is_configured`; an unknown `iss` is refused here too). `raw` is the compact
    /// token, hashed for the one-time key when the token has no `jti`.
    pub async fn verify(
        &self,
        jws: UnverifiedJws<'_>,
        raw: &str,
        now: UnixSeconds,
    ) -> Result<SubjectToken, AttestError> {
        let iss = match jws.unverified_claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(AttestError::UntrustedIssuer),
        };
        let issuer = self
            .issuers
            .get(iss)
            .cloned()
            .ok_or(AttestError::UntrustedIssuer)?;
        // RFC 7515 §4.1.9 / RFC 8725 §3.11: if typ is present it must say JWT; this also
        // refuses access tokens (`at+jwt`) replayed as identity tokens.
        if let Some(typ) = jws.typ.as_deref()
            && !matches!(
                typ.to_ascii_lowercase().as_str(),
                "jwt" | "application/jwt" | "jose"
            )
        {
            return Err(AttestError::BadTyp);
        }
        let keys = issuer.keys_for(jws.kid.as_deref(), jws.alg, now).await?;
        let claims = jws
            .verify_any(keys.iter().map(|k| &k.key))
            .map_err(|e| match e {
                JoseError::BadSignature => AttestError::BadSignature,
                JoseError::AlgKeyMismatch { .. } => AttestError::AlgKeyMismatch,
                other => AttestError::Malformed(other),
            })?;
        drop(keys);
        let cfg = &issuer.config;
        let leeway = i64::try_from(cfg.leeway_secs).unwrap_or(i64::MAX);
        let expires_at = check_times(&claims, now, leeway)?;
        check_audience(&claims, &cfg.audiences)?;
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT_LEN => s.clone(),
            Some(Value::String(_)) | Some(_) => return Err(AttestError::InvalidClaim("sub")),
            None => return Err(AttestError::NoSubject),
        };
        let one_time = if cfg.one_time {
            Some(OneTimeUse {
                key: one_time_key(&cfg.issuer, claims.get("jti"), raw)?,
                until: expires_at.saturating_add(leeway),
            })
        } else {
            None
        };
        let identity = VerifiedIdentity::new(
            VerifierProof::new(),
            Principal::Oidc {
                issuer: cfg.issuer.clone(),
                subject,
                claims,
            },
            CredentialKind::Oidc,
            expires_at,
            None,
        );
        Ok(SubjectToken {
            identity,
            one_time,
            svid_bundle: None,
        })
    }
}

/// Contract §6 `once:{key}`: the issuer scopes the `jti` (two issuers may reuse one).
fn one_time_key(issuer: &str, jti: Option<&Value>, raw: &str) -> Result<String, AttestError> {
    let digest = match jti {
        Some(Value::String(j)) if !j.is_empty() => {
            let mut input = Vec::with_capacity(issuer.len() + 1 + j.len());
            input.extend_from_slice(issuer.as_bytes());
            input.push(0);
            input.extend_from_slice(j.as_bytes());
            jose::sha256(&input)
        }
        None => jose::sha256(raw.as_bytes()),
        Some(_) => return Err(AttestError::InvalidClaim("jti")),
    };
    Ok(jose::hex(&digest))
}

/// The keys a token may be checked with, held for the duration of one verification.
struct Candidates {
    set: Arc<KeySet>,
    /// Indexes into `set.keys`.
    picked: Vec<usize>,
}

impl Candidates {
    fn iter(&self) -> impl Iterator<Item = &IssuerKey> {
        self.picked.iter().filter_map(|&i| self.set.keys.get(i))
    }
}

impl Issuer {
    /// Fresh keys are always usable; stale ones (a refresh failed) until `max_key_age`.
    fn usable(&self, set: &KeySet, now: UnixSeconds) -> bool {
        let max_age = i64::try_from(self.config.max_key_age_secs).unwrap_or(i64::MAX);
        now < set.fresh_until || now.saturating_sub(set.fetched_at) <= max_age
    }

    fn cooled_down(&self, now: UnixSeconds) -> bool {
        let last = self.last_attempt.load(Ordering::Acquire);
        let cooldown = i64::try_from(self.config.refetch_cooldown_secs).unwrap_or(i64::MAX);
        last == NEVER || now.saturating_sub(last) >= cooldown
    }

    /// Keys matching `kid` (every key when the token has none) that can take `alg`.
    fn pick(set: &Arc<KeySet>, kid: Option<&str>, alg: Alg) -> Candidates {
        let picked = set
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| kid.is_none_or(|want| k.kid.as_deref() == Some(want)))
            .filter(|(_, k)| k.key.fits(alg))
            .map(|(i, _)| i)
            .collect();
        Candidates {
            set: Arc::clone(set),
            picked,
        }
    }

    async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Alg,
        now: UnixSeconds,
    ) -> Result<Candidates, AttestError> {
        let mut current = self.keys.load_full();
        if current.as_ref().is_none_or(|s| now >= s.fresh_until) {
            // Stale or never fetched: fetch (or wait for the fetch in flight).
            self.refresh(now).await;
            current = self.keys.load_full();
        }
        let Some(set) = current.filter(|s| self.usable(s, now)) else {
            return Err(AttestError::IssuerKeysUnavailable);
        };
        let found = Self::pick(&set, kid, alg);
        if found.picked.is_empty() && kid.is_some() {
            // An unknown kid may be a rotation we have not seen: refetch once per cooldown.
            self.refresh(now).await;
            if let Some(set) = self.keys.load_full().filter(|s| self.usable(s, now)) {
                let found = Self::pick(&set, kid, alg);
                if !found.picked.is_empty() {
                    return Ok(found);
                }
            }
        }
        if found.picked.is_empty() {
            let any_with_kid =
                kid.is_some_and(|want| set.keys.iter().any(|k| k.kid.as_deref() == Some(want)));
            return Err(if any_with_kid {
                AttestError::AlgKeyMismatch
            } else {
                AttestError::UnknownIssuerKid
            });
        }
        Ok(found)
    }

    /// One fetch, shared: whoever takes the lock first fetches; the others wait for it,
    /// find the attempt inside the cooldown and use its result. Outside a fetch the
    /// lock is uncontended, so a flood of unknown kids costs a lock and a compare.
    async fn refresh(&self, now: UnixSeconds) {
        let KeySource::Remote(fetcher) = &self.source else {
            return;
        };
        if !self.cooled_down(now) && self.fetch_lock.try_lock().is_ok() {
            return; // a recent attempt, none in flight: nothing to wait for
        }
        let _guard = self.fetch_lock.lock().await;
        if !self.cooled_down(now) {
            return;
        }
        self.last_attempt.store(now, Ordering::Release);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = match fetcher.fetch_jwks().await {
            Ok(doc) => parse_oidc_jwks(&doc.body)
                .map(|keys| (keys, doc.max_age))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match result {
            Ok((keys, max_age)) => {
                let ttl = max_age
                    .map_or(MIN_CACHE_SECS, |a| i64::try_from(a).unwrap_or(i64::MAX))
                    .clamp(MIN_CACHE_SECS, MAX_CACHE_SECS);
                tracing::debug!(issuer = %self.config.issuer, keys = keys.len(), ttl, "OIDC keys fetched");
                self.keys
                    .store(Some(key_set(keys, now, now.saturating_add(ttl))));
            }
            Err(cause) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    issuer = %self.config.issuer,
                    error = %cause,
                    "OIDC key fetch failed; keeping the last good keys"
                );
            }
        }
    }
}

/// The `iss` of an unverified token, when it is a string.
pub fn unverified_issuer(claims: &Map<String, Value>) -> Option<&str> {
    claims.get("iss").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{SigningAlg, SigningKey};
    use serde_json::json;
    use std::sync::Mutex;

    const ISS: &str = "https://issuer.example.org";

    /// Serves whatever JWKS the test set, counting fetches (the HTTP client is
    /// `outbound`'s and is exercised end to end in tests/oidc.rs).
    struct ScriptedFetcher {
        reply: Mutex<Result<FetchedJwks, String>>,
        calls: AtomicU64,
    }

    #[async_trait]
    impl JwksFetcher for ScriptedFetcher {
        async fn fetch_jwks(&self) -> Result<FetchedJwks, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.reply.lock().unwrap().clone()
        }
    }

    fn jwks(keys: &[&SigningKey], max_age: Option<u64>) -> Result<FetchedJwks, String> {
        let keys: Vec<Value> = keys.iter().map(|k| Value::Object(k.public_jwk())).collect();
        Ok(FetchedJwks {
            body: json!({ "keys": keys }).to_string().into_bytes(),
            max_age,
        })
    }

    fn verifier(fetcher: Arc<ScriptedFetcher>, one_time: bool) -> OidcVerifier {
        let config = OidcIssuerConfig {
            issuer: ISS.into(),
            audiences: vec!["tessera".into()],
            leeway_secs: 30,
            one_time,
            refetch_cooldown_secs: 30,
            max_key_age_secs: 3600,
        };
        OidcVerifier::new(vec![(config, KeySource::Remote(fetcher))], 0).unwrap()
    }

    fn token(key: &SigningKey, claims: Value) -> String {
        key.sign_compact("JWT", &claims).unwrap()
    }

    async fn verify(v: &OidcVerifier, t: &str, now: i64) -> Result<SubjectToken, AttestError> {
        v.verify(UnverifiedJws::parse(t).unwrap(), t, now).await
    }

    #[test]
    fn jwks_parsing_keeps_signing_keys_only() {
        let ec = SigningKey::generate(SigningAlg::ES256).unwrap();
        let mut enc = ec.public_jwk();
        enc.insert("use".into(), "enc".into());
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            Value::Object(enc),
            {"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA", "kid": "weird"},
            "not an object",
            Value::Object(ec.public_jwk()),
        ]});
        let keys = parse_oidc_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].0.as_deref(), Some(ec.kid()));

        for (name, doc) in [
            (
                "no usable key",
                json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string(),
            ),
            ("empty", json!({"keys": []}).to_string()),
            ("not a JWKS", "[]".to_owned()),
            ("duplicate member", r#"{"keys": [], "keys": []}"#.to_owned()),
        ] {
            assert!(parse_oidc_jwks(doc.as_bytes()).is_err(), "{name}");
        }
    }

    #[test]
    fn one_time_keys_are_scoped_by_issuer_and_fall_back_to_the_token_hash() {
        let a = one_time_key(ISS, Some(&json!("j1")), "t").unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(
            a,
            one_time_key(ISS, Some(&json!("j1")), "other token").unwrap()
        );
        assert_ne!(
            a,
            one_time_key("https://other", Some(&json!("j1")), "t").unwrap()
        );
        assert_ne!(a, one_time_key(ISS, Some(&json!("j2")), "t").unwrap());
        let h1 = one_time_key(ISS, None, "token-1").unwrap();
        assert_ne!(h1, one_time_key(ISS, None, "token-2").unwrap());
        assert_eq!(h1, jose::hex(&jose::sha256(b"token-1")));
        assert!(one_time_key(ISS, Some(&json!(7)), "t").is_err());
    }

    #[tokio::test]
    async fn cache_control_is_clamped_between_one_minute_and_a_day() {
        let key = SigningKey::generate(SigningAlg::ES256).unwrap();
        for (max_age, fresh_for) in [
            (Some(1), MIN_CACHE_SECS),
            (None, MIN_CACHE_SECS),
            (Some(600), 600),
            (Some(10_000_000), MAX_CACHE_SECS),
        ] {
            let f = Arc::new(ScriptedFetcher {
                reply: Mutex::new(jwks(&[&key], max_age)),
                calls: AtomicU64::new(0),
            });
            let v = verifier(f.clone(), false);
            let t = |now: i64| {
                token(
                    &key,
                    json!({"iss": ISS, "aud": "tessera", "sub": "s", "exp": now + 60}),
                )
            };
            verify(&v, &t(0), 0).await.unwrap();
            assert_eq!(f.calls.load(Ordering::SeqCst), 1);
            verify(&v, &t(fresh_for - 1), fresh_for - 1).await.unwrap();
            assert_eq!(
                f.calls.load(Ordering::SeqCst),
                1,
                "{max_age:?}: still fresh"
            );
            verify(&v, &t(fresh_for), fresh_for).await.unwrap();
            assert_eq!(f.calls.load(Ordering::SeqCst), 2, "{max_age:?}: refetched");
        }
    }

    #[tokio::test]
    async fn verified_claims_and_one_time_use() {
        let key = SigningKey::generate(SigningAlg::ES256).unwrap();
        let f = Arc::new(ScriptedFetcher {
            reply: Mutex::new(jwks(&[&key], None)),
            calls: AtomicU64::new(0),
        });
        let v = verifier(f, true);
        let t = token(
            &key,
            json!({"iss": ISS, "aud": ["x", "tessera"], "sub": "repo:acme/app", "exp": 100, "jti": "j"}),
        );
        let ok = verify(&v, &t, 10).await.unwrap();
        assert_eq!(ok.identity.subject(), format!("{ISS}#repo:acme/app"));
        assert_eq!(ok.identity.kind(), CredentialKind::Oidc);
        assert_eq!(ok.identity.expires_at(), 100);
        let once = ok.one_time.unwrap();
        assert_eq!(once.until, 130);
        assert_eq!(once.key, one_time_key(ISS, Some(&json!("j")), &t).unwrap());
        let long_sub = "s".repeat(MAX_SUBJECT_LEN + 1);
        for (name, claims, want) in [
            (
                "wrong aud",
                json!({"iss": ISS, "aud": "y", "sub": "s", "exp": 100}),
                AttestError::WrongAudience,
            ),
            (
                "empty sub",
                json!({"iss": ISS, "aud": "tessera", "sub": "", "exp": 100}),
                AttestError::InvalidClaim("sub"),
            ),
            (
                "long sub",
                json!({"iss": ISS, "aud": "tessera", "sub": long_sub, "exp": 100}),
                AttestError::InvalidClaim("sub"),
            ),
            (
                "numeric sub",
                json!({"iss": ISS, "aud": "tessera", "sub": 5, "exp": 100}),
                AttestError::InvalidClaim("sub"),
            ),
            (
                "expired",
                json!({"iss": ISS, "aud": "tessera", "sub": "s", "exp": -30}),
                AttestError::Expired,
            ),
            (
                "unknown issuer",
                json!({"iss": "https://x", "aud": "tessera", "sub": "s", "exp": 100}),
                AttestError::UntrustedIssuer,
            ),
        ] {
            let t = token(&key, claims);
            assert_eq!(verify(&v, &t, 10).await.unwrap_err(), want, "{name}");
        }
    }
}
