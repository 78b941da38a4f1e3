//! The SPIFFE Workload API (the local SPIRE agent) as a source of trust bundles and of
//! Tessera's own X.509-SVID. The only module that names `spiffe` and `tonic`.
//!
//! One `WorkloadApiSource` per agent endpoint runs two streams (`FetchX509SVID` and
//! `FetchJWTBundles`) through the `spiffe` crate's client, reconnecting with capped
//! exponential backoff. Every update is swapped in place (architecture habit 15): the
//! bundles of each trust domain in an `ArcSwap` map read per lookup by the verifiers,
//! and the SVID in an `ArcSwapOption<CertifiedKey>` read per handshake by the rustls
//! certificate resolver. Open connections keep the certificate they were made with.

pub mod pb;

use crate::attest::x509::LiveServerCert;
use crate::attest::{BundleSource, LiveBundleSource, TrustBundle, parse_jwks, parse_x509_der};
use crate::domain::TrustDomain;
use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::StreamExt as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::WorkloadApiClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

type BundleMap = HashMap<TrustDomain, Arc<TrustBundle>>;

/// Bundles and the default X.509-SVID of one Workload API endpoint, kept current by
/// background tasks that stop when the source is dropped.
pub struct WorkloadApiSource {
    state: Arc<State>,
    tasks: Vec<tokio::task::AbortHandle>,
}

struct State {
    endpoint: String,
    /// The last good X.509 and JWT halves; `None` until the first message of each stream.
    parts: Mutex<Parts>,
    bundles: ArcSwap<BundleMap>,
    published: std::sync::atomic::AtomicBool,
    svid: ArcSwapOption<CertifiedKey>,
}

#[derive(Default)]
struct Parts {
    x509: Option<HashMap<TrustDomain, TrustBundle>>,
    jwt: Option<HashMap<TrustDomain, TrustBundle>>,
}

impl std::fmt::Debug for WorkloadApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApiSource")
            .field("endpoint", &self.state.endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for WorkloadApiSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl WorkloadApiSource {
    /// Starts streaming from `endpoint` (`unix:///path` or `tcp://ip:port`). Returns at
    /// once; bundles and the SVID appear when the agent first answers (see
    /// `waiting_for`). Needs a tokio runtime.
    pub fn start(endpoint: &str) -> Arc<Self> {
        let state = Arc::new(State {
            endpoint: endpoint.to_owned(),
            parts: Mutex::new(Parts::default()),
            bundles: ArcSwap::from_pointee(BundleMap::new()),
            published: std::sync::atomic::AtomicBool::new(false),
            svid: ArcSwapOption::empty(),
        });
        let tasks = vec![
            tokio::spawn(supervise(state.clone(), Stream::X509)).abort_handle(),
            tokio::spawn(supervise(state.clone(), Stream::JwtBundles)).abort_handle(),
        ];
        Arc::new(Self { state, tasks })
    }

    /// A rustls certificate resolver serving the agent's current default X.509-SVID
    /// (`None` — a failed handshake — until the first SVID arrives).
    pub fn server_cert_resolver(&self) -> Arc<dyn LiveServerCert> {
        Arc::new(SvidResolver(self.state.clone()))
    }

    /// Whether the agent has delivered an X.509-SVID.
    pub fn has_svid(&self) -> bool {
        self.state.svid.load().is_some()
    }

    pub fn endpoint(&self) -> &str {
        &self.state.endpoint
    }
}

impl BundleSource for WorkloadApiSource {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.state.bundles.load().get(td).cloned()
    }
}

impl LiveBundleSource for WorkloadApiSource {
    fn waiting_for(&self) -> Option<String> {
        if self
            .state
            .published
            .load(std::sync::atomic::Ordering::Acquire)
        {
            None
        } else {
            Some(format!(
                "waiting for the first bundles from the Workload API at {}",
                self.state.endpoint
            ))
        }
    }
}

#[derive(Debug)]
struct SvidResolver(Arc<State>);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.svid.load_full()
    }
}

impl LiveServerCert for SvidResolver {
    fn has_certificate(&self) -> bool {
        self.0.svid.load().is_some()
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    X509,
    JwtBundles,
}

/// Runs one stream forever: connect, apply every message, reconnect with backoff when
/// the stream fails or ends. Backoff restarts after a stream that delivered something.
async fn supervise(state: Arc<State>, which: Stream) {
    let mut backoff = BACKOFF_START;
    loop {
        let mut delivered = false;
        let outcome = match which {
            Stream::X509 => run_x509(&state, &mut delivered).await,
            Stream::JwtBundles => run_jwt(&state, &mut delivered).await,
        };
        if delivered {
            backoff = BACKOFF_START;
        }
        match outcome {
            Ok(()) => {
                tracing::info!(endpoint = %state.endpoint, stream = ?which, "Workload API stream ended; reconnecting")
            }
            Err(e) => {
                tracing::warn!(endpoint = %state.endpoint, stream = ?which, error = %e, retry_in_ms = backoff.as_millis() as u64, "Workload API stream failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn run_x509(state: &State, delivered: &mut bool) -> Result<(), String> {
    let client = WorkloadApiClient::connect_to(&state.endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = client
        .stream_x509_contexts()
        .await
        .map_err(|e| e.to_string())?;
    while let Some(item) = stream.next().await {
        let ctx = item.map_err(|e| e.to_string())?;
        let mut bundles = HashMap::new();
        for (td, b) in ctx.bundle_set().iter() {
            let Ok(ours) = TrustDomain::parse(td.as_ref()) else {
                tracing::warn!(trust_domain = %td, "Workload API sent a bundle for an invalid trust domain; ignored");
                continue;
            };
            let der: Vec<u8> = b
                .authorities()
                .iter()
                .flat_map(|c| c.as_bytes().iter().copied())
                .collect();
            match parse_x509_der(&ours, &der) {
                Ok(parsed) => {
                    bundles.insert(ours, parsed);
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %ours, error = %e, "X.509 bundle from the Workload API refused")
                }
            }
        }
        if let Some(svid) = ctx.default_svid() {
            match certified_key(svid) {
                Ok(ck) => {
                    state.svid.store(Some(Arc::new(ck)));
                    tracing::info!(spiffe_id = %svid.spiffe_id(), "X.509-SVID from the Workload API installed");
                }
                Err(e) => tracing::warn!(error = %e, "X.509-SVID from the Workload API refused"),
            }
        }
        state.update(|p| p.x509 = Some(bundles));
        *delivered = true;
    }
    Ok(())
}

async fn run_jwt(state: &State, delivered: &mut bool) -> Result<(), String> {
    let client = WorkloadApiClient::connect_to(&state.endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = client
        .stream_jwt_bundles()
        .await
        .map_err(|e| e.to_string())?;
    while let Some(item) = stream.next().await {
        let set = item.map_err(|e| e.to_string())?;
        let mut bundles = HashMap::new();
        for (td, b) in set.iter() {
            let Ok(ours) = TrustDomain::parse(td.as_ref()) else {
                continue;
            };
            let keys: Result<Vec<serde_json::Value>, _> = b
                .jwt_authorities()
                .map(|a| serde_json::from_slice(a.jwk_json()))
                .collect();
            let parsed = keys.map_err(|e| e.to_string()).and_then(|keys| {
                let doc = serde_json::json!({ "keys": keys }).to_string();
                parse_jwks(&ours, doc.as_bytes()).map_err(|e| e.to_string())
            });
            match parsed {
                Ok(parsed) => {
                    bundles.insert(ours, parsed);
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %ours, error = %e, "JWT bundle from the Workload API refused")
                }
            }
        }
        state.update(|p| p.jwt = Some(bundles));
        *delivered = true;
    }
    Ok(())
}

impl State {
    /// Applies one half and, once both halves have arrived, publishes the combined map.
    fn update(&self, f: impl FnOnce(&mut Parts)) {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut parts);
        let (Some(x509), Some(jwt)) = (&parts.x509, &parts.jwt) else {
            return;
        };
        let mut map = BundleMap::new();
        for td in x509.keys().chain(jwt.keys()) {
            if map.contains_key(td) {
                continue;
            }
            let b = TrustBundle::combine(td, jwt.get(td), x509.get(td));
            map.insert(td.clone(), Arc::new(b));
        }
        self.bundles.store(Arc::new(map));
        self.published
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

fn certified_key(svid: &spiffe::X509Svid) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(chain, signer))
}
