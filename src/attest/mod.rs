//! Attestation: turns a presented credential into a `VerifiedIdentity`, the only place
//! that may build one (it holds the `VerifierProof` seal).
//!
//! Owns SPIFFE trust bundles (`bundle`), the `BundleSource` seam that serves them, the
//! JWT-SVID verifier (`jwt_svid`) and the X.509-SVID verifier with its rustls client
//! certificate verifier (`x509`, the one file here that names rustls). Imports only `crate::domain`, `crate::clock` and
//! `crate::jose`; never policy, mint, revocation or service.

pub mod bundle;
pub mod combined;
pub mod jwt_svid;
pub mod oidc;
pub mod x509;

pub use bundle::{
    BundleError, TrustBundle, parse_jwks, parse_spiffe_bundle, parse_x509_der, parse_x509_pem,
};
pub use combined::{CombinedBundles, ManagedBundleSource, RefreshHealth};
pub use jwt_svid::JwtSvidVerifier;
pub use oidc::{OidcVerifier, OneTimeUse, SubjectToken};
pub use x509::{SpiffeClientCertVerifier, X509SvidVerifier, check_svid_structure};

use crate::domain::{SpiffeIdError, TrustDomain};
use crate::jose::JoseError;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Why a credential was not accepted. Variants name the failed check; messages never
/// contain the token (contract §2: error descriptions never reveal the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("malformed token: {0}")]
    Malformed(JoseError),
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    AlgNotAllowed(String),
    #[error("token algorithm does not fit the trust bundle key")]
    AlgKeyMismatch,
    #[error("token typ must be JWT or JOSE")]
    BadTyp,
    #[error("token header has no kid")]
    NoKid,
    #[error("token has no sub claim")]
    NoSubject,
    #[error("sub is not a SPIFFE ID: {0}")]
    NotASpiffeId(SpiffeIdError),
    #[error("sub is a trust domain ID, not a workload SPIFFE ID")]
    SubjectNotWorkload,
    #[error("no trust bundle for trust domain {0}")]
    UnknownTrustDomain(TrustDomain),
    #[error("no key with the token's kid in the bundle of trust domain {0}")]
    UnknownKid(TrustDomain),
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid (nbf)")]
    NotYetValid,
    #[error("token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("token has no aud claim")]
    MissingAud,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("claim {0} has the wrong type")]
    InvalidClaim(&'static str),
    /// The presented certificate chain is malformed or breaks an X509-SVID rule; the
    /// text names the rule, never certificate contents.
    #[error("bad certificate: {0}")]
    BadCertificate(&'static str),
    #[error("the bundle of trust domain {0} has no X.509 authorities")]
    NoX509Authorities(TrustDomain),
    #[error("certificate chain is not trusted: {0}")]
    UntrustedChain(&'static str),
    #[error("certificate has expired")]
    CertExpired,
    #[error("certificate is not yet valid")]
    CertNotYetValid,
    /// `iss` is not a configured OIDC issuer and `sub` is not a SPIFFE ID.
    #[error("token issuer is not trusted")]
    UntrustedIssuer,
    /// The issuer's keys could not be fetched and no cached keys are young enough.
    #[error("the issuer's signing keys are unavailable")]
    IssuerKeysUnavailable,
    #[error("no key with the token's kid in the issuer's JWKS")]
    UnknownIssuerKid,
}

impl AttestError {
    /// Short machine-readable reason for audit events and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::AlgNotAllowed(_) => "alg_not_allowed",
            Self::AlgKeyMismatch => "alg_key_mismatch",
            Self::BadTyp => "bad_typ",
            Self::NoKid => "no_kid",
            Self::NoSubject => "no_subject",
            Self::NotASpiffeId(_) => "not_a_spiffe_id",
            Self::SubjectNotWorkload => "subject_not_workload",
            Self::UnknownTrustDomain(_) => "unknown_trust_domain",
            Self::UnknownKid(_) => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::MissingExp => "missing_exp",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::MissingAud => "missing_aud",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::BadCertificate(_) => "bad_certificate",
            Self::NoX509Authorities(_) => "no_x509_authorities",
            Self::UntrustedChain(_) => "untrusted_chain",
            Self::CertExpired => "cert_expired",
            Self::CertNotYetValid => "cert_not_yet_valid",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::IssuerKeysUnavailable => "issuer_keys_unavailable",
            Self::UnknownIssuerKid => "unknown_kid",
        }
    }
}

/// Verifies a subject (or actor) token of `/token` (contract §2): a JWT whose `iss` is
/// a configured OIDC issuer is an OIDC token, checked first; anything else must be a
/// JWT-SVID, verified with its own trust domain's bundle. The token is parsed once.
pub async fn verify_subject_token(
    svids: &JwtSvidVerifier,
    oidc: &OidcVerifier,
    unverified_token: &str,
    now: crate::clock::UnixSeconds,
) -> Result<SubjectToken, AttestError> {
    let jws = jwt_svid::parse_jws(unverified_token)?;
    let iss = oidc::unverified_issuer(&jws.unverified_claims);
    if iss.is_some_and(|i| oidc.is_configured(i)) {
        return oidc.verify(jws, unverified_token, now).await;
    }
    let foreign_issuer = iss.is_some();
    match svids.verify_parsed_with_bundle(jws, svids.accept_audiences(), now) {
        Ok((identity, bundle)) => Ok(SubjectToken {
            identity,
            one_time: None,
            svid_bundle: Some(bundle),
        }),
        // An OIDC token of an issuer we do not trust: say that, not "not a SPIFFE ID".
        Err(AttestError::NotASpiffeId(_) | AttestError::InvalidClaim("sub")) if foreign_issuer => {
            Err(AttestError::UntrustedIssuer)
        }
        Err(e) => Err(e),
    }
}

/// Where verifiers get the bundle of a trust domain (rust-spiffe `BundleSource`).
/// Lookups are by exact trust domain: a verifier never searches other bundles.
pub trait BundleSource: Send + Sync {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>>;
}

/// A fixed set of bundles, for tests and the CLI.
#[derive(Debug, Default, Clone)]
pub struct StaticBundles(pub HashMap<TrustDomain, Arc<TrustBundle>>);

impl StaticBundles {
    pub fn new(bundles: impl IntoIterator<Item = TrustBundle>) -> Self {
        Self(
            bundles
                .into_iter()
                .map(|b| (b.trust_domain.clone(), Arc::new(b)))
                .collect(),
        )
    }
}

impl BundleSource for StaticBundles {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.0.get(td).cloned()
    }
}

/// Outcome of `FileBundles::reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub loaded: Vec<TrustDomain>,
    /// Trust domains whose file could not be loaded, with the reason; each keeps serving
    /// its last good bundle.
    pub failed: Vec<(TrustDomain, String)>,
}

/// Readiness of a bundle source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleStatus {
    pub configured: usize,
    /// Configured trust domains without any bundle (not ready while non-empty).
    pub missing: Vec<TrustDomain>,
    /// Trust domains whose last reload failed and that serve an older bundle.
    pub stale: Vec<TrustDomain>,
}

impl BundleStatus {
    pub fn is_ready(&self) -> bool {
        self.missing.is_empty()
    }
}

type BundleMap = HashMap<TrustDomain, Arc<TrustBundle>>;

/// Bundles read from `[[trust_domain]] bundle_file` entries (contract §4): one SPIFFE
/// bundle document per file. Loaded at start (a bad file stops start-up, naming it) and
/// swapped in place on `reload` (architecture habit 15) without blocking readers.
pub struct FileBundles {
    entries: Vec<(TrustDomain, PathBuf)>,
    current: ArcSwap<BundleMap>,
    /// Serialises reloads and remembers which domains are stale.
    reload_state: Mutex<Vec<TrustDomain>>,
}

impl std::fmt::Debug for FileBundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBundles")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

fn load_file(td: &TrustDomain, path: &std::path::Path) -> Result<TrustBundle, BundleError> {
    let wrap = |source: BundleError| BundleError::File {
        path: path.to_path_buf(),
        trust_domain: td.clone(),
        source: Box::new(source),
    };
    let meta = std::fs::metadata(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > bundle::MAX_BUNDLE_BYTES as u64 {
        return Err(wrap(BundleError::TooLarge));
    }
    let bytes = std::fs::read(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_spiffe_bundle(td, &bytes).map_err(wrap)
}

impl FileBundles {
    /// Loads every configured file; any failure is returned and names the file.
    /// A trust domain configured twice is an error (one trust domain, one bundle).
    pub fn load(entries: Vec<(TrustDomain, PathBuf)>) -> Result<Self, BundleError> {
        let mut map = BundleMap::with_capacity(entries.len());
        for (td, path) in &entries {
            if map.contains_key(td) {
                return Err(BundleError::DuplicateTrustDomain(td.clone()));
            }
            map.insert(td.clone(), Arc::new(load_file(td, path)?));
        }
        Ok(Self {
            entries,
            current: ArcSwap::from_pointee(map),
            reload_state: Mutex::new(Vec::new()),
        })
    }

    /// Re-reads every file. A file that fails keeps the last good bundle of its trust
    /// domain (a broken deploy must not revoke a whole trust domain) and is reported.
    /// Blocking file I/O: call from a blocking-capable task.
    pub fn reload(&self) -> ReloadReport {
        let mut stale = self
            .reload_state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next: BundleMap = (**self.current.load()).clone();
        let mut report = ReloadReport::default();
        stale.clear();
        for (td, path) in &self.entries {
            match load_file(td, path) {
                Ok(b) => {
                    next.insert(td.clone(), Arc::new(b));
                    report.loaded.push(td.clone());
                }
                Err(e) => {
                    if next.contains_key(td) {
                        stale.push(td.clone());
                    }
                    report.failed.push((td.clone(), e.to_string()));
                }
            }
        }
        self.current.store(Arc::new(next));
        report
    }

    pub fn status(&self) -> BundleStatus {
        let map = self.current.load();
        let stale = self
            .reload_state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        BundleStatus {
            configured: self.entries.len(),
            missing: self
                .entries
                .iter()
                .filter(|(td, _)| !map.contains_key(td))
                .map(|(td, _)| td.clone())
                .collect(),
            stale,
        }
    }

    /// The configured trust domains, in configuration order.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.entries.iter().map(|(td, _)| td)
    }
}

impl BundleSource for FileBundles {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.current.load().get(td).cloned()
    }
}

/// A source of bundles kept up to date from outside (the SPIFFE Workload API): it knows
/// whether its first complete update has arrived.
pub trait LiveBundleSource: BundleSource {
    /// `Some(reason)` while the source has not delivered its first bundles.
    fn waiting_for(&self) -> Option<String>;
}

/// Every configured trust domain's bundle source: `bundle_file` domains from
/// `FileBundles`, `workload_api` domains from their agent. This is what the JWT-SVID
/// verifier and the mTLS client-certificate verifier read, per lookup, so agent updates
/// and file reloads apply to the next token and the next handshake.
pub struct TrustBundles {
    files: FileBundles,
    agent: Vec<(TrustDomain, Arc<dyn LiveBundleSource>)>,
}

impl std::fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundles")
            .field("files", &self.files)
            .field(
                "agent",
                &self.agent.iter().map(|(td, _)| td).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TrustBundles {
    /// A trust domain configured both as a file and from an agent is an error.
    pub fn new(
        files: FileBundles,
        agent: Vec<(TrustDomain, Arc<dyn LiveBundleSource>)>,
    ) -> Result<Self, BundleError> {
        let mut seen: Vec<&TrustDomain> = files.trust_domains().collect();
        for (td, _) in &agent {
            if seen.contains(&td) {
                return Err(BundleError::DuplicateTrustDomain(td.clone()));
            }
            seen.push(td);
        }
        Ok(Self { files, agent })
    }

    /// Every trust domain this source owns: files first, then agent domains.
    pub fn trust_domains(&self) -> Vec<TrustDomain> {
        self.files
            .trust_domains()
            .cloned()
            .chain(self.agent.iter().map(|(td, _)| td.clone()))
            .collect()
    }

    /// Re-reads the bundle files (agent domains update by themselves).
    pub fn reload(&self) -> ReloadReport {
        self.files.reload()
    }

    pub fn status(&self) -> BundleStatus {
        let mut status = self.files.status();
        status.configured += self.agent.len();
        for (td, src) in &self.agent {
            if src.waiting_for().is_some() || src.bundle(td).is_none() {
                status.missing.push(td.clone());
            }
        }
        status
    }
}

impl BundleSource for TrustBundles {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        if let Some((_, src)) = self.agent.iter().find(|(t, _)| t == td) {
            return src.bundle(td);
        }
        self.files.bundle(td)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(kids: &[&str]) -> String {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| {
                json!({"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": kid,
                    "x": "ngLYQnlfF6GsojUwqtcEE3WgTNG2RUlsGhK73RNEl5k",
                    "y": "tKbiDSUSsQ3F1P7wteeHNXIcU-cx6CgSbroeQrQHTLM"})
            })
            .collect();
        json!({"keys": keys}).to_string()
    }

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    fn kids(src: &dyn BundleSource, d: &str) -> Option<Vec<String>> {
        src.bundle(&td(d)).map(|b| b.jwt_kids())
    }

    #[test]
    fn reload_swaps_good_files_and_keeps_the_last_good_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&pa, doc(&["a1"])).unwrap();
        std::fs::write(&pb, doc(&["b1"])).unwrap();
        let fb =
            FileBundles::load(vec![(td("a.org"), pa.clone()), (td("b.org"), pb.clone())]).unwrap();
        assert_eq!(kids(&fb, "a.org"), Some(vec!["a1".to_owned()]));
        assert_eq!(kids(&fb, "c.org"), None);
        assert!(fb.status().is_ready());
        let held = fb.bundle(&td("a.org")).unwrap();

        // a.org rotates, b.org's file breaks.
        std::fs::write(&pa, doc(&["a1", "a2"])).unwrap();
        std::fs::write(&pb, "{\"keys\": [").unwrap();
        let report = fb.reload();
        assert_eq!(report.loaded, vec![td("a.org")]);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].0, td("b.org"));
        assert!(
            report.failed[0].1.contains("b.json"),
            "{}",
            report.failed[0].1
        );
        assert_eq!(
            kids(&fb, "a.org"),
            Some(vec!["a1".to_owned(), "a2".to_owned()])
        );
        assert_eq!(kids(&fb, "b.org"), Some(vec!["b1".to_owned()]));
        let status = fb.status();
        assert!(status.is_ready());
        assert_eq!(status.stale, vec![td("b.org")]);
        // Readers holding the old bundle keep a consistent view.
        assert_eq!(held.jwt_kids(), vec!["a1".to_owned()]);

        // A deleted file also keeps the last good bundle; a fixed one clears staleness.
        std::fs::remove_file(&pb).unwrap();
        assert_eq!(fb.reload().failed[0].0, td("b.org"));
        assert_eq!(kids(&fb, "b.org"), Some(vec!["b1".to_owned()]));
        std::fs::write(&pb, doc(&[])).unwrap();
        let report = fb.reload();
        assert!(report.failed.is_empty());
        assert_eq!(kids(&fb, "b.org"), Some(vec![]));
        assert!(fb.status().stale.is_empty());
    }

    #[test]
    fn load_fails_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        let bad = dir.path().join("bad.json");
        std::fs::write(&good, doc(&["k"])).unwrap();
        std::fs::write(&bad, "{}").unwrap();
        let err = FileBundles::load(vec![(td("a.org"), good.clone()), (td("b.org"), bad)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.json") && err.contains("keys"), "{err}");
        let missing = dir.path().join("missing.json");
        let err = FileBundles::load(vec![(td("a.org"), missing)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
        let err =
            FileBundles::load(vec![(td("a.org"), good.clone()), (td("a.org"), good)]).unwrap_err();
        assert!(matches!(err, BundleError::DuplicateTrustDomain(_)));
    }

    #[test]
    fn static_bundles_and_reasons() {
        let b = parse_spiffe_bundle(&td("a.org"), doc(&["k"]).as_bytes()).unwrap();
        let s = StaticBundles::new([b]);
        assert_eq!(kids(&s, "a.org"), Some(vec!["k".to_owned()]));
        assert_eq!(AttestError::Expired.reason(), "expired");
        assert_eq!(
            AttestError::UnknownTrustDomain(td("x.org")).to_string(),
            "no trust bundle for trust domain x.org"
        );
    }
}
