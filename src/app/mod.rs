//! Wiring: the one place that reads the configuration, picks the concrete backends,
//! builds the service and starts the listeners. Tests call `start` with listeners bound
//! to port 0; `main` calls `run`.

pub mod dev;

use crate::attest::oidc::{KeySource, OidcIssuerConfig, OidcVerifier};
use crate::attest::x509::SpiffeClientCertVerifier;
use crate::attest::{
    CombinedBundles, FileBundles, LiveBundleSource, ManagedBundleSource, TrustBundles,
};
use crate::audit::{AuditSink, JsonLines};
use crate::clock::{SharedClock, SystemClock};
use crate::config::RedisSettings;
use crate::config::Settings;
use crate::domain::TrustDomain;
use crate::http::{self, server};
use crate::mint::Minter;
use crate::mint::keys::KeyRing;
use crate::outbound::OidcHttpFetcher;
use crate::policy::CompiledPolicy;
use crate::revocation::embedded::EmbeddedStore;
use crate::revocation::redis::{RedisConfig, RedisStore};
use crate::revocation::{
    AuditTail, Backend, ReplayGuard, RevocationStore, SharedRateLimit, StoreError, TokenInventory,
};
use crate::service::{Service, ServiceParts};
use crate::workload::WorkloadApiSource;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error("policy {0}")]
    Policy(String),
    #[error("trust bundles: {0}")]
    Bundles(String),
    #[error("signing keys: {0}")]
    Keys(String),
    #[error("store: {0}")]
    Store(String),
    #[error("{0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {cause}")]
    Bind { addr: SocketAddr, cause: String },
    #[error("audit: {0}")]
    Audit(String),
    /// A secret file others could read, or a key directory others could write.
    #[error("{0}")]
    FileMode(String),
}

/// Refuses secret files with any group or other permission bit, naming the file and
/// the fix. Files that do not exist yet are left to the code that reads or creates them.
fn check_private_file(what: &str, path: &std::path::Path) -> Result<(), AppError> {
    check_mode(what, path, 0o077, "readable", "chmod 600")
}

/// Refuses a key directory that group or others may write: they could swap keyring.json.
fn check_private_dir(what: &str, dir: &std::path::Path) -> Result<(), AppError> {
    check_mode(what, dir, 0o022, "writable", "chmod 700")
}

fn check_mode(
    what: &str,
    path: &std::path::Path,
    forbidden: u32,
    by_others: &str,
    fix: &str,
) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & forbidden != 0 {
        let p = path.display();
        let kind = if meta.is_dir() { "it" } else { "a secret" };
        return Err(AppError::FileMode(format!(
            "{what} {p} has mode {mode:04o}: {kind} must not be {by_others} by group or others; run `{fix} {p}`"
        )));
    }
    Ok(())
}

/// Start-up check of every secret file the settings name (contract §4 "File modes").
pub fn check_secret_file_modes(settings: &Settings) -> Result<(), AppError> {
    check_private_dir("signing.key_dir", &settings.key_dir)?;
    check_private_file(
        "signing.key_dir",
        &settings.key_dir.join(crate::mint::keys::RING_FILE),
    )?;
    if let Some(p) = &settings.admin_token_hash_file {
        check_private_file("admin.token_hash_file", p)?;
    }
    if let Some(tls) = &settings.tls {
        check_private_file("server.tls_key", &tls.key)?;
    }
    Ok(())
}

/// Builds the service from checked settings: keys, bundles, policy, store, audit.
pub async fn build_service(
    settings: Settings,
    clock: SharedClock,
    audit_sink: Option<Arc<dyn AuditSink>>,
) -> Result<Arc<Service>, AppError> {
    check_secret_file_modes(&settings)?;
    let now = clock.now();
    let policy =
        CompiledPolicy::load(&settings.policy_file).map_err(|e| AppError::Policy(e.to_string()))?;
    crate::policy::log_lint_warnings(&policy, settings.max_ttl);
    let files = FileBundles::load(settings.trust_domains.clone())
        .map_err(|e| AppError::Bundles(e.to_string()))?;
    // One Workload API client per distinct agent endpoint, shared by its trust domains
    // and by the listeners' SVID.
    let mut agents: HashMap<String, Arc<WorkloadApiSource>> = HashMap::new();
    let mut agent = |ep: &str| {
        agents
            .entry(ep.to_owned())
            .or_insert_with(|| WorkloadApiSource::start(ep))
            .clone()
    };
    let mut agent_domains: Vec<(TrustDomain, Arc<dyn LiveBundleSource>)> = Vec::new();
    for (td, ep) in &settings.agent_trust_domains {
        agent_domains.push((td.clone(), agent(ep)));
    }
    let server_cert = settings
        .svid_workload_api
        .as_deref()
        .filter(|_| settings.tls.is_none())
        .map(|ep| agent(ep).server_cert_resolver());
    let bundles = Arc::new(
        TrustBundles::new(files, agent_domains).map_err(|e| AppError::Bundles(e.to_string()))?,
    );
    let federated = crate::federation::FederatedBundles::start(
        &settings.federation,
        clock.clone(),
        crate::federation::RefreshBounds {
            min: settings.federation_min_refresh,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| AppError::Bundles(e.to_string()))?;
    let sources: Vec<Arc<dyn ManagedBundleSource>> = vec![bundles.clone(), federated];
    let trust =
        Arc::new(CombinedBundles::new(sources).map_err(|e| AppError::Bundles(e.to_string()))?);
    let retain = settings.max_ttl + settings.leeway;
    let keys = Arc::new(
        KeyRing::open(&settings.key_dir, settings.signing_alg, retain, now)
            .map_err(|e| AppError::Keys(e.to_string()))?,
    );
    // A key directory created just now took the process umask.
    check_private_dir("signing.key_dir", &settings.key_dir)?;
    let oidc = build_oidc(&settings, &clock)?;
    // With Redis, `[limits] per_identity` is shared by every replica; the embedded
    // store keeps it per process.
    let mut shared_rate_limit: Option<Arc<dyn SharedRateLimit>> = None;
    let (revocations, inventory, audit_tail, replay) = match &settings.redis {
        Some(r) => {
            let store = Arc::new(connect_redis(r).await?);
            shared_rate_limit = Some(store.clone());
            split(store)
        }
        None => split(Arc::new(
            EmbeddedStore::open(&settings.store_path)
                .map_err(|e| AppError::Store(e.to_string()))?,
        )),
    };
    let admin_token_sha256 = match &settings.admin_token_hash_file {
        Some(p) => Some(crate::service::admin::read_token_hash(p).map_err(AppError::Config)?),
        None => None,
    };
    let audit_sink: Arc<dyn AuditSink> = match (audit_sink, &settings.audit_file) {
        (Some(s), _) => s,
        (None, Some(path)) => Arc::new(
            JsonLines::file(path)
                .map_err(|e| AppError::Audit(format!("audit.file {}: {e}", path.display())))?,
        ),
        (None, None) => Arc::new(JsonLines::stdout()),
    };
    Ok(Service::new(ServiceParts {
        minter: Minter::new(settings.issuer.clone(), keys),
        clock,
        bundles,
        trust,
        revocations,
        inventory,
        audit_tail,
        replay,
        audit_sink,
        oidc,
        policy,
        admin_token_sha256,
        server_cert,
        shared_rate_limit,
        settings,
    }))
}

type StoreParts = (
    Arc<dyn RevocationStore>,
    Arc<dyn TokenInventory>,
    Arc<dyn AuditTail>,
    Arc<dyn ReplayGuard>,
);

/// One backend, handed to each consumer as the narrow trait it needs.
fn split<B: Backend>(store: Arc<B>) -> StoreParts {
    (store.clone(), store.clone(), store.clone(), store)
}

/// The `[[oidc_issuer]]` verifier: `jwks_file` keys are read now (a bad file stops
/// start-up), remote issuers get an HTTPS fetcher and are fetched once in the
/// background so the first exchange need not wait.
fn build_oidc(settings: &Settings, clock: &SharedClock) -> Result<Arc<OidcVerifier>, AppError> {
    let mut issuers = Vec::with_capacity(settings.oidc_issuers.len());
    for o in &settings.oidc_issuers {
        let source = match &o.jwks_file {
            Some(path) => KeySource::File(path.clone()),
            None => KeySource::Remote(Arc::new(
                OidcHttpFetcher::new(
                    &o.issuer,
                    o.jwks_uri.as_deref(),
                    o.ca_file.as_deref(),
                    o.allow_http,
                )
                .map_err(|e| AppError::Config(format!("oidc_issuer {}: {e}", o.issuer)))?,
            )),
        };
        let config = OidcIssuerConfig {
            issuer: o.issuer.clone(),
            audiences: o.audiences.clone(),
            leeway_secs: o.leeway,
            one_time: o.one_time,
            refetch_cooldown_secs: o.refetch_cooldown,
            max_key_age_secs: o.max_key_age,
        };
        issuers.push((config, source));
    }
    let oidc = Arc::new(
        OidcVerifier::new(issuers, clock.now()).map_err(|e| AppError::Config(e.to_string()))?,
    );
    if !oidc.is_empty() {
        let (oidc, clock) = (oidc.clone(), clock.clone());
        tokio::spawn(async move { oidc.prefetch(clock.now()).await });
    }
    Ok(oidc)
}

/// How long start-up keeps trying to reach Redis before giving up.
const REDIS_STARTUP_PATIENCE: Duration = Duration::from_secs(20);

/// Connects to Redis, retrying for a while: replicas often start before their Redis.
/// After start-up the connection recovers by itself.
async fn connect_redis(r: &RedisSettings) -> Result<RedisStore, AppError> {
    let mut cfg = RedisConfig::new(r.url.clone());
    cfg.key_prefix = r.key_prefix.clone();
    cfg.min_replicas_ack = r.min_replicas_ack;
    let deadline = tokio::time::Instant::now() + REDIS_STARTUP_PATIENCE;
    loop {
        match RedisStore::connect(cfg.clone()).await {
            Ok(store) => return Ok(store),
            Err(StoreError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "redis not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(AppError::Store(format!(
                    "store.redis_url {}: {e}",
                    crate::revocation::redis::redact_url(&r.url)
                )));
            }
        }
    }
}

/// A started server; dropping it does not stop it, `shutdown` does.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub service: Arc<Service>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, drains in-flight requests, stops background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Starts both listeners and the background tasks (expiry purge, scheduled rotation).
pub fn start(
    public: TcpListener,
    admin: TcpListener,
    service: Arc<Service>,
) -> Result<Running, AppError> {
    start_with_limits(public, admin, service, server::ServerLimits::default())
}

/// As `start`, with explicit connection and request limits (tests lower them).
pub fn start_with_limits(
    public: TcpListener,
    admin: TcpListener,
    service: Arc<Service>,
    limits: server::ServerLimits,
) -> Result<Running, AppError> {
    let s = service.settings();
    // Client certificates are requested on both listeners and checked against the
    // trust bundle of the leaf's own trust domain, read per handshake (so reloads apply).
    let verifier = || {
        let bundles: Arc<dyn crate::attest::BundleSource> = service.trust.clone();
        Arc::new(SpiffeClientCertVerifier::new(
            bundles,
            service.clock.clone(),
        ))
    };
    let tls = match (&s.tls, service.server_cert()) {
        (Some(files), _) => Some(
            server::tls_config(&files.cert, &files.key, Some(verifier()))
                .map_err(|e| AppError::Tls(e.to_string()))?,
        ),
        (None, Some(resolver)) => Some(
            server::tls_config_with_resolver(resolver, Some(verifier()))
                .map_err(|e| AppError::Tls(e.to_string()))?,
        ),
        (None, None) => None,
    };
    let addr = |l: &TcpListener| {
        l.local_addr().map_err(|e| AppError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            cause: e.to_string(),
        })
    };
    let (public_addr, admin_addr) = (addr(&public)?, addr(&admin)?);
    let (stop, rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(server::serve_with_limits(
            public,
            tls.clone(),
            http::with_deadline_and_metrics(
                http::public_router(service.clone()),
                service.clone(),
                limits.request_timeout,
            ),
            stopped(rx.clone()),
            limits.clone(),
        )),
        tokio::spawn(server::serve_with_limits(
            admin,
            tls,
            http::with_deadline_and_metrics(
                http::admin_router(service.clone()),
                service.clone(),
                limits.request_timeout,
            ),
            stopped(rx.clone()),
            limits,
        )),
        tokio::spawn(maintenance(service.clone(), rx)),
    ];
    Ok(Running {
        public_addr,
        admin_addr,
        service,
        stop,
        tasks,
    })
}

/// Every 5 s: pick up key ring changes made by other replicas. Every 30 s: rotate keys
/// when due, and purge expired entries of the embedded store. Redis expires entries by
/// itself, so its purge (a full log walk and inventory scan) runs only hourly.
async fn maintenance(svc: Arc<Service>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut ticks: u64 = 0;
    let purge_every: u64 = if svc.settings().redis.is_some() {
        720
    } else {
        6
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        ticks += 1;
        let now = svc.now();
        let keys = svc.minter().keys();
        if let Err(e) = keys.refresh(now, false) {
            tracing::warn!(error = %e, "key ring refresh failed");
        }
        if ticks % purge_every == 1
            && let Err(e) = svc.revocations.purge_expired(now).await
        {
            tracing::warn!(error = %e, "purge of expired entries failed");
        }
        if ticks % 6 != 1 {
            continue;
        }
        let s = svc.settings();
        match keys.rotate_if_due(now, s.rotate_every, s.prepublish) {
            Ok(true) => tracing::info!("signing key rotated on schedule"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "scheduled key rotation failed"),
        }
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|e| AppError::Bind {
        addr,
        cause: e.to_string(),
    })
}

/// Runs until SIGINT/SIGTERM; SIGHUP reloads policy and trust bundles.
pub async fn run(settings: Settings) -> Result<(), AppError> {
    let (public_listen, admin_listen) = (settings.public_listen, settings.admin_listen);
    let service = build_service(settings, Arc::new(SystemClock), None).await?;
    let public = bind(public_listen).await?;
    let admin = bind(admin_listen).await?;
    let running = start(public, admin, service.clone())?;
    let scheme = if service.settings().serves_tls() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        public = %format!("{scheme}://{}", running.public_addr),
        admin = %format!("{scheme}://{}", running.admin_addr),
        issuer = %service.settings().issuer,
        "tessera listening"
    );
    eprintln!(
        "tessera: public {scheme}://{}  admin {scheme}://{}",
        running.public_addr, running.admin_addr
    );
    wait_for_stop(&service).await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop(service: &Arc<Service>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => match service.reload() {
                Ok(o) => tracing::info!(rules = o.rules, bundles_failed = o.bundles_failed.len(), "reloaded on SIGHUP"),
                Err(e) => tracing::error!(error = %e, "reload on SIGHUP refused; keeping the running policy"),
            },
        }
    }
}
