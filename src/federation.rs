//! SPIFFE federation: trust bundles fetched from bundle endpoints (SPIFFE Trust Domain
//! and Bundle §5, the `https_web` profile: plain HTTPS GET, the server authenticated by
//! the web PKI or by the trust domain's `ca_file`).
//!
//! Owns the bundle endpoints' refresh loop; the HTTP client comes from `outbound`. Each endpoint is
//! fetched at start; a failed first fetch leaves the trust domain `missing` (`/readyz`
//! is 503) rather than stopping start-up. Afterwards it is refetched per the bundle's
//! `spiffe_refresh_hint` (§4.1.2), bounded to [30 s, 1 h], 5 min when absent. A failed
//! refresh keeps the last good bundle (a flapping peer must not revoke a whole trust
//! domain), marks it stale, is logged with its cause and counted; the next attempt comes
//! after the lower bound. New bundles swap in place (`ArcSwapOption`), so the next
//! handshake or JWT-SVID check uses them without a restart.
//!
//! Imports `attest`, `clock`, `config` and `domain`; never service, policy or mint.

use crate::attest::{
    BundleError, BundleSource, BundleStatus, ManagedBundleSource, RefreshHealth, TrustBundle,
    parse_spiffe_bundle,
};
use crate::clock::{SharedClock, UnixSeconds};
use crate::config::FederatedDomain;
use crate::domain::TrustDomain;
use crate::outbound;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use crate::outbound::{FETCH_TIMEOUT, MAX_BODY_BYTES};

/// How the refresh interval follows `spiffe_refresh_hint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshBounds {
    pub min: Duration,
    pub max: Duration,
    /// When the bundle carries no hint.
    pub default: Duration,
}

impl Default for RefreshBounds {
    fn default() -> Self {
        Self {
            min: crate::config::DEFAULT_FEDERATION_MIN_REFRESH,
            max: Duration::from_secs(3600),
            default: Duration::from_secs(300),
        }
    }
}

impl RefreshBounds {
    /// The wait before the next fetch after a successful one.
    pub fn interval(&self, hint: Option<u64>) -> Duration {
        let d = hint.map_or(self.default, Duration::from_secs);
        d.max(self.min).min(self.max.max(self.min))
    }
}

/// Why a fetch was not accepted. Messages carry the cause, never bundle contents.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("endpoint answered HTTP {0}")]
    Status(u16),
    #[error("bundle is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("bundle rejected: {0}")]
    Bundle(#[from] BundleError),
    #[error("an X.509 authority belongs to trust domain {0}, not the configured one")]
    WrongTrustDomain(TrustDomain),
}

/// Set-up errors (bad `ca_file`, HTTP client construction).
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("trust domain {trust_domain}: ca_file {path}: {cause}")]
    CaFile {
        trust_domain: TrustDomain,
        path: std::path::PathBuf,
        cause: String,
    },
    #[error("trust domain {0}: cannot build the HTTP client: {1}")]
    Client(TrustDomain, String),
}

const NEVER: i64 = i64::MIN;

struct Endpoint {
    trust_domain: TrustDomain,
    url: String,
    client: reqwest::Client,
    current: ArcSwapOption<TrustBundle>,
    stale: AtomicBool,
    fetches: AtomicU64,
    failures: AtomicU64,
    last_success: AtomicI64,
}

/// Bundles of the `[[trust_domain]] bundle_endpoint` entries.
pub struct FederatedBundles {
    endpoints: Vec<Endpoint>,
    clock: SharedClock,
    bounds: RefreshBounds,
}

impl std::fmt::Debug for FederatedBundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<_> = self
            .endpoints
            .iter()
            .map(|e| (&e.trust_domain, &e.url))
            .collect();
        f.debug_struct("FederatedBundles")
            .field("endpoints", &urls)
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

fn client_for(d: &FederatedDomain) -> Result<reqwest::Client, FederationError> {
    outbound::https_client(d.ca_file.as_deref(), d.allow_http).map_err(|e| match e {
        outbound::ClientError::CaFile { path, cause } => FederationError::CaFile {
            trust_domain: d.trust_domain.clone(),
            path,
            cause,
        },
        outbound::ClientError::Build(cause) => {
            FederationError::Client(d.trust_domain.clone(), cause)
        }
    })
}

impl FederatedBundles {
    /// Builds the clients; fetches nothing yet (see `start`).
    pub fn new(
        domains: &[FederatedDomain],
        clock: SharedClock,
        bounds: RefreshBounds,
    ) -> Result<Self, FederationError> {
        let mut endpoints = Vec::with_capacity(domains.len());
        for d in domains {
            if d.allow_http && d.url.starts_with("http://") {
                tracing::warn!(
                    trust_domain = %d.trust_domain,
                    url = %d.url,
                    "DANGEROUS: dangerous_allow_http: this trust bundle is fetched over plain HTTP \
                     and anyone on the path can replace it; never use this outside tests"
                );
            }
            endpoints.push(Endpoint {
                trust_domain: d.trust_domain.clone(),
                url: d.url.clone(),
                client: client_for(d)?,
                current: ArcSwapOption::empty(),
                stale: AtomicBool::new(false),
                fetches: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_success: AtomicI64::new(NEVER),
            });
        }
        Ok(Self {
            endpoints,
            clock,
            bounds,
        })
    }

    /// Builds, fetches every endpoint once (concurrently) and spawns the refresh tasks.
    /// The tasks end when the returned source is dropped.
    pub async fn start(
        domains: &[FederatedDomain],
        clock: SharedClock,
        bounds: RefreshBounds,
    ) -> Result<Arc<Self>, FederationError> {
        let fed = Arc::new(Self::new(domains, clock, bounds)?);
        let delays =
            futures_util::future::join_all((0..fed.endpoints.len()).map(|i| fed.refresh(i))).await;
        for (i, delay) in delays.into_iter().enumerate() {
            tokio::spawn(refresh_loop(Arc::downgrade(&fed), i, delay));
        }
        Ok(fed)
    }

    pub fn bounds(&self) -> RefreshBounds {
        self.bounds
    }

    /// Fetches endpoint `i` once, swaps in a good bundle or records the failure, and
    /// returns the wait before the next attempt.
    pub async fn refresh(&self, i: usize) -> Duration {
        let Some(ep) = self.endpoints.get(i) else {
            return self.bounds.max;
        };
        match fetch(ep).await {
            Ok(bundle) => {
                let next = self.bounds.interval(bundle.refresh_hint);
                let changed = ep.current.load().as_ref().is_none_or(|old| {
                    old.sequence != bundle.sequence
                        || old.jwt_kids() != bundle.jwt_kids()
                        || old.x509_authorities() != bundle.x509_authorities()
                });
                if changed {
                    tracing::info!(
                        trust_domain = %ep.trust_domain,
                        jwt_authorities = bundle.jwt_authority_count(),
                        x509_authorities = bundle.x509_authorities().len(),
                        sequence = ?bundle.sequence,
                        next_refresh_s = next.as_secs(),
                        "federated trust bundle updated"
                    );
                }
                ep.current.store(Some(Arc::new(bundle)));
                ep.fetches.fetch_add(1, Ordering::Relaxed);
                ep.stale.store(false, Ordering::Relaxed);
                ep.last_success.store(self.clock.now(), Ordering::Relaxed);
                next
            }
            Err(e) => {
                ep.fetches.fetch_add(1, Ordering::Relaxed);
                ep.failures.fetch_add(1, Ordering::Relaxed);
                let have = ep.current.load().is_some();
                ep.stale.store(have, Ordering::Relaxed);
                if have {
                    tracing::warn!(trust_domain = %ep.trust_domain, url = %ep.url, error = %e,
                        "trust bundle refresh failed; keeping the last good bundle");
                } else {
                    tracing::error!(trust_domain = %ep.trust_domain, url = %ep.url, error = %e,
                        "trust bundle fetch failed; this trust domain has no bundle (not ready)");
                }
                self.bounds.min
            }
        }
    }
}

async fn refresh_loop(fed: Weak<FederatedBundles>, i: usize, mut delay: Duration) {
    loop {
        tokio::time::sleep(delay).await;
        let Some(fed) = fed.upgrade() else { return };
        delay = fed.refresh(i).await;
    }
}

async fn fetch(ep: &Endpoint) -> Result<TrustBundle, FetchError> {
    let body = outbound::get_json(&ep.client, &ep.url)
        .await
        .map_err(|e| match e {
            outbound::GetError::Request(cause) => FetchError::Request(cause),
            outbound::GetError::Status(code) => FetchError::Status(code),
            outbound::GetError::TooLarge => FetchError::TooLarge,
        })?
        .body;
    let bundle = parse_spiffe_bundle(&ep.trust_domain, &body)?;
    // The document does not name its trust domain, but X.509 authorities usually carry
    // the trust domain's SPIFFE ID: one naming another trust domain means the endpoint
    // serves the wrong bundle.
    for ca in bundle.x509_authorities() {
        if let Some(td) = crate::attest::x509::authority_trust_domain(ca)
            && td != ep.trust_domain
        {
            return Err(FetchError::WrongTrustDomain(td));
        }
    }
    Ok(bundle)
}

impl BundleSource for FederatedBundles {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.endpoints
            .iter()
            .find(|e| &e.trust_domain == td)?
            .current
            .load_full()
    }
}

impl ManagedBundleSource for FederatedBundles {
    fn owned(&self) -> Vec<TrustDomain> {
        self.endpoints
            .iter()
            .map(|e| e.trust_domain.clone())
            .collect()
    }

    fn status(&self) -> BundleStatus {
        let pick = |f: &dyn Fn(&Endpoint) -> bool| {
            self.endpoints
                .iter()
                .filter(|e| f(e))
                .map(|e| e.trust_domain.clone())
                .collect()
        };
        BundleStatus {
            configured: self.endpoints.len(),
            missing: pick(&|e| e.current.load().is_none()),
            stale: pick(&|e| e.stale.load(Ordering::Relaxed)),
        }
    }

    fn refresh_health(&self) -> Vec<RefreshHealth> {
        self.endpoints
            .iter()
            .map(|e| {
                let at: UnixSeconds = e.last_success.load(Ordering::Relaxed);
                RefreshHealth {
                    trust_domain: e.trust_domain.clone(),
                    fetches: e.fetches.load(Ordering::Relaxed),
                    failures: e.failures.load(Ordering::Relaxed),
                    last_success: (at != NEVER).then_some(at),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_interval_follows_the_hint_within_bounds() {
        let b = RefreshBounds::default();
        assert_eq!(b.interval(None), Duration::from_secs(300));
        assert_eq!(b.interval(Some(1)), Duration::from_secs(30));
        assert_eq!(b.interval(Some(600)), Duration::from_secs(600));
        assert_eq!(b.interval(Some(86_400)), Duration::from_secs(3600));
        let t = RefreshBounds {
            min: Duration::from_secs(1),
            ..b
        };
        assert_eq!(t.interval(Some(1)), Duration::from_secs(1));
        assert_eq!(t.interval(Some(0)), Duration::from_secs(1));
        // A lower bound above the upper one wins rather than panicking.
        let odd = RefreshBounds {
            min: Duration::from_secs(7200),
            ..b
        };
        assert_eq!(odd.interval(None), Duration::from_secs(7200));
    }
}
