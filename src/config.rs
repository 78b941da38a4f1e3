//! Configuration (contract §4): one TOML file, a `TESSERA_<SECTION>__<KEY>` environment
//! overlay, unknown keys refused, and `validate()` turning the raw file into checked
//! `Settings`. Every error names the key and says how to fix it.

use crate::domain::{TrustDomain, parse_duration};
use crate::jose::SigningAlg;
use crate::policy::SpiffePattern;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Hard ceiling on any token lifetime (contract §2).
pub const HARD_MAX_TTL: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: String, cause: String },
    #[error("config file {path}: {cause}")]
    Parse { path: String, cause: String },
    #[error("config key `{key}`: {problem}")]
    Key { key: String, problem: String },
}

fn key_err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub issuer: Option<String>,
    pub policy_file: Option<PathBuf>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub tokens: TokensSection,
    #[serde(default)]
    pub signing: SigningSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub trust_domain: Vec<TrustDomainSection>,
    #[serde(default)]
    pub oidc_issuer: Vec<OidcIssuerSection>,
    #[serde(default)]
    pub introspection: IntrospectionSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub spiffe: SpiffeSection,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
    #[serde(default)]
    pub allowed: Vec<String>,
    pub token_hash_file: Option<PathBuf>,
    #[serde(default)]
    pub metrics_auth: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    pub default_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub leeway: Option<String>,
    #[serde(default)]
    pub accept_audiences: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    pub algorithm: Option<String>,
    pub key_dir: Option<PathBuf>,
    pub rotate_every: Option<String>,
    pub prepublish: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub key_prefix: Option<String>,
    pub path: Option<PathBuf>,
    pub min_replicas_ack: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDomainSection {
    pub name: String,
    pub bundle_file: Option<PathBuf>,
    pub workload_api: Option<String>,
    pub bundle_endpoint: Option<String>,
    /// PEM roots for a `bundle_endpoint` served under a private CA (default: web PKI).
    pub ca_file: Option<PathBuf>,
    /// Allows an `http://` bundle endpoint on a loopback host (tests, local sidecars).
    #[serde(default)]
    pub dangerous_allow_http: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerSection {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub leeway: Option<String>,
    /// Each subject token may be exchanged once (its `jti` is remembered until `exp`).
    #[serde(default)]
    pub one_time: bool,
    /// Minimum gap between two fetches of this issuer's keys (default 30s).
    pub refetch_cooldown: Option<String>,
    /// How long keys that cannot be refreshed stay trusted (default 24h).
    pub max_key_age: Option<String>,
    /// Allows `http://` issuer and JWKS URLs on a loopback host (tests only).
    #[serde(default)]
    pub dangerous_allow_http: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSection {
    #[serde(default)]
    pub allowed: Vec<String>,
    #[serde(default)]
    pub client: Vec<StaticClientSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticClientSection {
    pub id: String,
    pub secret_hash: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub per_identity: Option<String>,
    /// Failed client authentications per remote address; `"off"` disables.
    pub failed_auth_per_address: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    pub file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpiffeSection {
    pub workload_api: Option<String>,
}

/// The checked configuration the rest of the program runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub policy_file: PathBuf,
    pub public_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `None` only in dev mode (plain HTTP on loopback).
    pub tls: Option<TlsFiles>,
    pub admin_allowed: Vec<SpiffePattern>,
    pub admin_token_hash_file: Option<PathBuf>,
    pub metrics_auth: bool,
    pub default_ttl: u64,
    pub max_ttl: u64,
    pub leeway: u64,
    pub accept_audiences: Vec<String>,
    pub signing_alg: SigningAlg,
    pub key_dir: PathBuf,
    pub rotate_every: u64,
    pub prepublish: u64,
    /// The embedded store's file (used when `redis` is `None`).
    pub store_path: PathBuf,
    /// `store.backend = "redis"`: the shared store of every replica.
    pub redis: Option<RedisSettings>,
    /// `[[trust_domain]] bundle_file` entries.
    pub trust_domains: Vec<(TrustDomain, PathBuf)>,
    /// `[[trust_domain]] bundle_endpoint` entries (SPIFFE federation, `https_web`).
    pub federation: Vec<FederatedDomain>,
    /// Lower bound on the bundle refresh interval (30 s; not a config key, tests lower it).
    pub federation_min_refresh: std::time::Duration,
    /// `[[trust_domain]] workload_api` entries: bundles streamed from the local agent.
    pub agent_trust_domains: Vec<(TrustDomain, String)>,
    /// `[spiffe] workload_api` without `server.tls_cert`/`tls_key`: the listeners serve
    /// the agent's X.509-SVID.
    pub svid_workload_api: Option<String>,
    pub introspection_allowed: Vec<SpiffePattern>,
    pub introspection_clients: Vec<StaticClient>,
    /// Token requests per subject (burst = 2x the count).
    pub per_identity_limit: Option<Rate>,
    /// Failed client authentications per remote address on `/introspect`, `/revoke` and
    /// the admin API (burst = the count); `None` when `"off"`.
    pub failed_auth_limit: Option<Rate>,
    pub audit_file: Option<PathBuf>,
    pub dev_mode: bool,
    /// `[[oidc_issuer]]` entries, in file order.
    pub oidc_issuers: Vec<OidcIssuer>,
}

/// One federated trust domain: its bundle is fetched from `url` (SPIFFE Trust Domain and
/// Bundle §5.2.1, `https_web` profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedDomain {
    pub trust_domain: TrustDomain,
    pub url: String,
    /// Roots for the endpoint's certificate instead of the system's web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// `dangerous_allow_http` on a loopback `http://` URL.
    pub allow_http: bool,
}

/// A checked `[[oidc_issuer]]`.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Set, or `None` to discover it from `<issuer>/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub leeway: u64,
    pub one_time: bool,
    pub refetch_cooldown: u64,
    pub max_key_age: u64,
    pub allow_http: bool,
}

pub const DEFAULT_FEDERATION_MIN_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://`, `redis+sentinel://…`, `redis+cluster://…` (docs/operations.md).
    pub url: String,
    pub key_prefix: String,
    /// Replicas that must acknowledge a revocation (`WAIT`) before it is reported done.
    pub min_replicas_ack: u32,
}

impl std::fmt::Debug for RedisSettings {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RedisSettings(prefix={:?}, min_replicas_ack={})",
            self.key_prefix, self.min_replicas_ack
        )
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone)]
pub struct StaticClient {
    pub id: String,
    /// PHC string of an argon2id hash; never the secret itself.
    pub secret_hash: String,
}

impl std::fmt::Debug for StaticClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticClient({}, <hash>)", self.id)
    }
}

/// Reads `path`, applies the environment overlay from `env`, and validates.
pub fn load(path: &Path, env: &[(String, String)]) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        cause: e.to_string(),
    })?;
    let file = parse(&text, env).map_err(|cause| ConfigError::Parse {
        path: path.display().to_string(),
        cause,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.validate(base)
}

/// Parses TOML text with the environment overlay applied.
pub fn parse(text: &str, env: &[(String, String)]) -> Result<FileConfig, String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    apply_env(&mut table, env)?;
    FileConfig::deserialize(toml::Value::Table(table))
        .map_err(|e| e.to_string().trim().replace('\n', " "))
}

const TOP_LEVEL_KEYS: &[&str] = &["issuer", "policy_file"];
/// Arrays of tables come from the file only (contract §4).
const FILE_ONLY_SECTIONS: &[&str] = &["trust_domain", "oidc_issuer"];

/// `TESSERA_<SECTION>__<KEY>` overrides `[section] key`; `TESSERA_<KEY>` overrides a
/// top-level key. Values are read as TOML (`["a","b"]`, `true`, `5`) when they parse as
/// such, else as a plain string. Other `TESSERA_*` variables (e.g. `TESSERA_LOG`) are not
/// configuration and are left alone.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), String> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("TESSERA_") else {
            continue;
        };
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        match rest.split_once("__") {
            Some((section, key)) => {
                let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
                if FILE_ONLY_SECTIONS.contains(&section.as_str()) {
                    return Err(format!(
                        "{name}: [[{section}]] entries can only be set in the config file"
                    ));
                }
                let entry = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match entry {
                    toml::Value::Table(t) => {
                        t.insert(key, value);
                    }
                    _ => return Err(format!("{name}: `{section}` is not a section")),
                }
            }
            None => {
                let key = rest.to_ascii_lowercase();
                if TOP_LEVEL_KEYS.contains(&key.as_str()) {
                    table.insert(key, value);
                }
            }
        }
    }
    Ok(())
}

/// A Workload API endpoint: `unix:///absolute/path` (the SPIFFE Workload Endpoint
/// form) or `tcp://ip:port`.
fn workload_endpoint(key: &str, ep: String) -> Result<String, ConfigError> {
    let ok = ep
        .strip_prefix("unix://")
        .is_some_and(|p| p.starts_with('/') && p.len() > 1)
        || ep
            .strip_prefix("tcp://")
            .is_some_and(|a| a.parse::<SocketAddr>().is_ok());
    if ok {
        Ok(ep)
    } else {
        Err(key_err(
            key,
            format!(
                "{ep:?} is not a Workload API endpoint; use unix:///path/to/agent.sock (or tcp://ip:port)"
            ),
        ))
    }
}

impl Settings {
    /// Whether the listeners serve TLS (certificate files or the agent's SVID).
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some() || self.svid_workload_api.is_some()
    }
}

const MAX_ROTATE_EVERY_SECS: u64 = 365 * 86_400;

fn duration(key: &str, v: &Option<String>, default: &str) -> Result<u64, ConfigError> {
    let s = v.as_deref().unwrap_or(default);
    parse_duration(s).map_err(|e| key_err(key, e.to_string()))
}

fn socket(key: &str, v: &Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = v.as_deref().unwrap_or(default);
    s.parse().map_err(|_| {
        key_err(
            key,
            format!("{s:?} is not an address; write IP:PORT, e.g. \"0.0.0.0:8443\""),
        )
    })
}

fn patterns(key: &str, list: &[String]) -> Result<Vec<SpiffePattern>, ConfigError> {
    list.iter()
        .map(|p| SpiffePattern::parse(p).map_err(|e| key_err(key, e.to_string())))
        .collect()
}

/// A rate limit from the configuration: `count` events per `period_secs`, written
/// `"N/s"`, `"N/m"` or `"N/h"`. Parsed once at start-up (contract §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    period_secs: u32,
}

/// The default of `[limits] failed_auth_per_address`.
pub const DEFAULT_FAILED_AUTH_LIMIT: &str = "10/m";

impl Rate {
    /// Largest `N`: keeps the burst (2N) and the per-event interval well inside range.
    pub const MAX_COUNT: u32 = 1_000_000;

    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a rate; write N/s or N/m with N a whole number, e.g. \"50/s\" or \"10/m\""
            )
        };
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let period_secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        if count == 0 || count > Self::MAX_COUNT {
            return Err(format!(
                "{s:?}: N must be between 1 and {}; to switch the limit off, remove the key",
                Self::MAX_COUNT
            ));
        }
        Ok(Self { count, period_secs })
    }

    /// `count` per second (tests and the dev server).
    pub fn per_second(count: u32) -> Self {
        Self {
            count: count.clamp(1, Self::MAX_COUNT),
            period_secs: 1,
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn period_secs(&self) -> u32 {
        self.period_secs
    }

    /// Time between two events at the steady rate, in microseconds (at least 1).
    pub fn interval_micros(&self) -> u64 {
        (u64::from(self.period_secs) * 1_000_000 / u64::from(self.count)).max(1)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period_secs {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// One `[[oidc_issuer]]` (contract §4). `global_leeway` is `[tokens] leeway`.
fn oidc_issuer(
    key: &str,
    o: OidcIssuerSection,
    global_leeway: u64,
    own_issuer: &str,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<OidcIssuer, ConfigError> {
    let k = |name: &str| format!("{key}.{name}");
    check_fetch_url(
        &k("issuer"),
        &o.issuer,
        o.dangerous_allow_http,
        "OIDC issuers",
    )?;
    if o.issuer.contains('?') {
        return Err(key_err(
            &k("issuer"),
            "an issuer URL has no query (OIDC Discovery §2)",
        ));
    }
    if o.issuer.trim_end_matches('/') == own_issuer.trim_end_matches('/') {
        return Err(key_err(
            &k("issuer"),
            "is Tessera's own issuer; our access tokens are never subject tokens",
        ));
    }
    if o.audiences.is_empty() || o.audiences.iter().any(String::is_empty) {
        return Err(key_err(
            &k("audiences"),
            "list the audiences this issuer's tokens must carry for Tessera, e.g. [\"tessera\"]; an empty list would accept tokens minted for any other service",
        ));
    }
    if o.jwks_file.is_some() {
        for (set, name) in [
            (o.jwks_uri.is_some(), "jwks_uri"),
            (o.ca_file.is_some(), "ca_file"),
            (o.dangerous_allow_http, "dangerous_allow_http"),
        ] {
            if set {
                return Err(key_err(
                    &k(name),
                    "has no effect with jwks_file (static keys are never fetched); remove one of them",
                ));
            }
        }
    }
    if let Some(uri) = &o.jwks_uri {
        check_fetch_url(&k("jwks_uri"), uri, o.dangerous_allow_http, "JWKS URLs")?;
    }
    let leeway = match &o.leeway {
        Some(_) => duration(&k("leeway"), &o.leeway, "30s")?,
        None => global_leeway,
    };
    if leeway > 300 {
        return Err(key_err(
            &k("leeway"),
            "must be at most 5m; clocks that far apart need fixing, not tolerating",
        ));
    }
    let refetch_cooldown = duration(&k("refetch_cooldown"), &o.refetch_cooldown, "30s")?;
    if !(1..=3600).contains(&refetch_cooldown) {
        return Err(key_err(&k("refetch_cooldown"), "must be between 1s and 1h"));
    }
    let max_key_age = duration(&k("max_key_age"), &o.max_key_age, "24h")?;
    if !(60..=7 * 86_400).contains(&max_key_age) {
        return Err(key_err(&k("max_key_age"), "must be between 1m and 7d"));
    }
    Ok(OidcIssuer {
        issuer: o.issuer,
        audiences: o.audiences,
        jwks_uri: o.jwks_uri,
        jwks_file: o.jwks_file.map(resolve),
        ca_file: o.ca_file.map(resolve),
        leeway,
        one_time: o.one_time,
        refetch_cooldown,
        max_key_age,
        allow_http: o.dangerous_allow_http,
    })
}

/// A bundle endpoint URL: `https://` (web PKI), or `http://` on a loopback host with
/// `dangerous_allow_http = true`. No credentials, no fragment.
fn check_bundle_endpoint(key: &str, raw: &str, allow_http: bool) -> Result<(), ConfigError> {
    check_fetch_url(
        key,
        raw,
        allow_http,
        "bundle endpoints (SPIFFE https_web profile)",
    )
}

/// An URL Tessera fetches trust material from: `https://`, or `http://` on a loopback
/// host with `dangerous_allow_http = true`. No credentials, no fragment. `what` names
/// the kind of URL in the message.
fn check_fetch_url(key: &str, raw: &str, allow_http: bool, what: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| {
        key_err(
            key,
            format!("{raw:?} is not a URL ({e}); use https://host/path"),
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(key_err(key, "must not carry credentials or a #fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(key_err(key, format!("{raw:?} has no host"))),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http && loopback => Ok(()),
        "http" if allow_http => Err(key_err(
            key,
            "http:// is allowed only on a loopback host (127.0.0.1, ::1, localhost), even with dangerous_allow_http",
        )),
        "http" => Err(key_err(
            key,
            format!(
                "must be https:// for {what}; http:// needs a loopback host and dangerous_allow_http = true"
            ),
        )),
        other => Err(key_err(
            key,
            format!("scheme {other:?} is not supported; use https://"),
        )),
    }
}

impl FileConfig {
    /// Checks every key; relative paths are resolved against `base` (the config file's
    /// directory) so a service can be started from any working directory.
    pub fn validate(self, base: &Path) -> Result<Settings, ConfigError> {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let issuer = self
            .issuer
            .ok_or_else(|| key_err("issuer", "missing; set it to this server's public URL, e.g. issuer = \"https://sts.example.org\" (before the first [section])"))?;
        if !(issuer.starts_with("https://") || issuer.starts_with("http://"))
            || issuer.ends_with('/')
        {
            return Err(key_err(
                "issuer",
                format!(
                    "{issuer:?} must be an http(s) URL without a trailing slash, e.g. \"https://sts.example.org\""
                ),
            ));
        }
        let policy_file = resolve(self.policy_file.ok_or_else(|| {
            key_err("policy_file", "missing; point it at the policy TOML, e.g. policy_file = \"/etc/tessera/policy.toml\"")
        })?);
        let tls = match (self.server.tls_cert, self.server.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: resolve(cert),
                key: resolve(key),
            }),
            (None, None) if self.spiffe.workload_api.is_some() => None,
            (None, None) => {
                return Err(key_err(
                    "server.tls_cert",
                    "missing; set server.tls_cert and server.tls_key to PEM files (plain HTTP exists only in `tessera serve --dev`)",
                ));
            }
            (Some(_), None) => {
                return Err(key_err(
                    "server.tls_key",
                    "missing; tls_cert needs its tls_key",
                ));
            }
            (None, Some(_)) => {
                return Err(key_err(
                    "server.tls_cert",
                    "missing; tls_key needs its tls_cert",
                ));
            }
        };
        let svid_workload_api = match self.spiffe.workload_api {
            Some(ep) => Some(workload_endpoint("spiffe.workload_api", ep)?),
            None => None,
        };
        let default_ttl = duration("tokens.default_ttl", &self.tokens.default_ttl, "5m")?;
        let max_ttl = duration("tokens.max_ttl", &self.tokens.max_ttl, "15m")?;
        let leeway = duration("tokens.leeway", &self.tokens.leeway, "30s")?;
        if max_ttl == 0 || max_ttl > HARD_MAX_TTL {
            return Err(key_err(
                "tokens.max_ttl",
                "must be between 1s and 1h (the hard ceiling)",
            ));
        }
        if default_ttl == 0 || default_ttl > max_ttl {
            return Err(key_err(
                "tokens.default_ttl",
                "must be above zero and at most tokens.max_ttl",
            ));
        }
        if leeway > 300 {
            return Err(key_err(
                "tokens.leeway",
                "must be at most 5m; clocks that far apart need fixing, not tolerating",
            ));
        }
        let algorithm = self.signing.algorithm.as_deref().unwrap_or("ES256");
        let signing_alg = SigningAlg::parse(algorithm).ok_or_else(|| {
            key_err(
                "signing.algorithm",
                format!("{algorithm:?} is not supported; use \"ES256\", \"EdDSA\" or \"RS256\""),
            )
        })?;
        let key_dir = resolve(self.signing.key_dir.ok_or_else(|| {
            key_err(
                "signing.key_dir",
                "missing; set a directory for the signing keys, e.g. \"/var/lib/tessera/keys\"",
            )
        })?);
        let rotate_every = duration("signing.rotate_every", &self.signing.rotate_every, "24h")?;
        let prepublish = duration("signing.prepublish", &self.signing.prepublish, "1h")?;
        // A key that signs for over a year defeats rotation.
        if rotate_every > MAX_ROTATE_EVERY_SECS {
            return Err(key_err(
                "signing.rotate_every",
                "must be at most 365d; rotate keys at least once a year",
            ));
        }
        if prepublish == 0 || rotate_every < prepublish.max(max_ttl).saturating_mul(2) {
            return Err(key_err(
                "signing.rotate_every",
                "must be at least twice signing.prepublish and twice tokens.max_ttl, so keys overlap safely",
            ));
        }
        let backend = self.store.backend.as_deref().unwrap_or("embedded");
        let (store_path, redis) = match backend {
            "embedded" => (
                resolve(self.store.path.ok_or_else(|| {
                    key_err(
                        "store.path",
                        "missing; set the embedded store file, e.g. \"/var/lib/tessera/store\"",
                    )
                })?),
                None,
            ),
            "redis" => {
                let url = self.store.redis_url.ok_or_else(|| {
                    key_err(
                        "store.redis_url",
                        "missing; set e.g. \"redis://127.0.0.1:6379/0\" (see docs/operations.md for Sentinel and Cluster forms)",
                    )
                })?;
                const SCHEMES: [&str; 4] = [
                    "redis://",
                    "rediss://",
                    "redis+sentinel://",
                    "redis+cluster://",
                ];
                if !SCHEMES.iter().any(|p| url.starts_with(p)) {
                    return Err(key_err(
                        "store.redis_url",
                        "must start with redis://, rediss://, redis+sentinel:// or redis+cluster://",
                    ));
                }
                let key_prefix = self
                    .store
                    .key_prefix
                    .unwrap_or_else(|| "tessera:".to_owned());
                if key_prefix.is_empty()
                    || key_prefix.len() > 64
                    || key_prefix.contains(['{', '}', ' '])
                {
                    return Err(key_err(
                        "store.key_prefix",
                        "must be 1-64 characters without spaces or braces, e.g. \"tessera:\"",
                    ));
                }
                (
                    PathBuf::new(),
                    Some(RedisSettings {
                        url,
                        key_prefix,
                        min_replicas_ack: self.store.min_replicas_ack.unwrap_or(0),
                    }),
                )
            }
            other => {
                return Err(key_err(
                    "store.backend",
                    format!("{other:?} is unknown; use \"embedded\" or \"redis\""),
                ));
            }
        };
        let mut trust_domains = Vec::new();
        let mut federation: Vec<FederatedDomain> = Vec::new();
        let mut agent_trust_domains: Vec<(TrustDomain, String)> = Vec::new();
        for (i, td) in self.trust_domain.into_iter().enumerate() {
            let key = format!("trust_domain[{i}]");
            let name = TrustDomain::parse(&td.name)
                .map_err(|e| key_err(&format!("{key}.name"), format!("{:?}: {e}", td.name)))?;
            if trust_domains.iter().any(|(n, _)| n == &name)
                || federation.iter().any(|f| f.trust_domain == name)
                || agent_trust_domains.iter().any(|(n, _)| n == &name)
            {
                return Err(key_err(
                    &format!("{key}.name"),
                    format!("trust domain {name} is configured twice"),
                ));
            }
            let sources = [
                td.bundle_file.is_some().then_some("bundle_file"),
                td.bundle_endpoint.is_some().then_some("bundle_endpoint"),
                td.workload_api.is_some().then_some("workload_api"),
            ];
            let sources: Vec<&str> = sources.into_iter().flatten().collect();
            if sources.len() > 1 {
                return Err(key_err(
                    &format!("{key}.{}", sources[1]),
                    format!(
                        "a trust domain has exactly one bundle source; {} is set too",
                        sources[0]
                    ),
                ));
            }
            if td.bundle_endpoint.is_none() {
                for (set, k) in [
                    (td.ca_file.is_some(), "ca_file"),
                    (td.dangerous_allow_http, "dangerous_allow_http"),
                ] {
                    if set {
                        return Err(key_err(
                            &format!("{key}.{k}"),
                            "applies only to a bundle_endpoint entry",
                        ));
                    }
                }
            }
            if let Some(ep) = td.workload_api {
                let ep = workload_endpoint(&format!("{key}.workload_api"), ep)?;
                agent_trust_domains.push((name, ep));
                continue;
            }
            if let Some(url) = td.bundle_endpoint {
                let url_key = format!("{key}.bundle_endpoint");
                check_bundle_endpoint(&url_key, &url, td.dangerous_allow_http)?;
                federation.push(FederatedDomain {
                    trust_domain: name,
                    url,
                    ca_file: td.ca_file.map(resolve),
                    allow_http: td.dangerous_allow_http,
                });
                continue;
            }
            let file = td.bundle_file.ok_or_else(|| {
                key_err(
                    &format!("{key}.bundle_file"),
                    "missing; set bundle_file (a SPIFFE bundle on disk), bundle_endpoint (an https URL) or workload_api (a SPIRE agent socket)",
                )
            })?;
            trust_domains.push((name, resolve(file)));
        }
        let mut oidc_issuers: Vec<OidcIssuer> = Vec::with_capacity(self.oidc_issuer.len());
        for (i, o) in self.oidc_issuer.into_iter().enumerate() {
            let checked = oidc_issuer(&format!("oidc_issuer[{i}]"), o, leeway, &issuer, &resolve)?;
            if oidc_issuers.iter().any(|x| x.issuer == checked.issuer) {
                return Err(key_err(
                    &format!("oidc_issuer[{i}].issuer"),
                    format!(
                        "{:?} is configured twice; merge the entries",
                        checked.issuer
                    ),
                ));
            }
            oidc_issuers.push(checked);
        }
        let mut introspection_clients = Vec::new();
        for (i, c) in self.introspection.client.into_iter().enumerate() {
            if c.id.is_empty() {
                return Err(key_err(
                    &format!("introspection.client[{i}].id"),
                    "must not be empty",
                ));
            }
            if !c.secret_hash.starts_with("$argon2id$") {
                return Err(key_err(
                    &format!("introspection.client[{i}].secret_hash"),
                    "must be an argon2id PHC hash ($argon2id$…); generate one with `tessera hash-secret`",
                ));
            }
            introspection_clients.push(StaticClient {
                id: c.id,
                secret_hash: c.secret_hash,
            });
        }
        let per_identity_limit = match &self.limits.per_identity {
            Some(s) => Some(Rate::parse(s).map_err(|e| key_err("limits.per_identity", e))?),
            None => None,
        };
        // Default on: brute force of introspection secrets needs no configuration to be
        // slowed down. "off" is explicit so a typo cannot disable it.
        let failed_auth_limit = match self.limits.failed_auth_per_address.as_deref() {
            Some("off") => None,
            other => Some(
                Rate::parse(other.unwrap_or(DEFAULT_FAILED_AUTH_LIMIT)).map_err(|e| {
                    key_err(
                        "limits.failed_auth_per_address",
                        format!("{e}; or \"off\" to disable"),
                    )
                })?,
            ),
        };
        let accept_audiences = if self.tokens.accept_audiences.is_empty() {
            vec![issuer.clone()]
        } else {
            self.tokens.accept_audiences
        };
        Ok(Settings {
            public_listen: socket("server.listen", &self.server.listen, "0.0.0.0:8443")?,
            admin_listen: socket("admin.listen", &self.admin.listen, "127.0.0.1:9443")?,
            tls,
            admin_allowed: patterns("admin.allowed", &self.admin.allowed)?,
            admin_token_hash_file: self.admin.token_hash_file.map(resolve),
            metrics_auth: self.admin.metrics_auth,
            default_ttl,
            max_ttl,
            leeway,
            accept_audiences,
            signing_alg,
            key_dir,
            rotate_every,
            prepublish,
            store_path,
            redis,
            trust_domains,
            federation,
            federation_min_refresh: DEFAULT_FEDERATION_MIN_REFRESH,
            agent_trust_domains,
            svid_workload_api,
            introspection_allowed: patterns("introspection.allowed", &self.introspection.allowed)?,
            introspection_clients,
            per_identity_limit,
            failed_auth_limit,
            audit_file: self.audit.file.map(resolve),
            dev_mode: false,
            oidc_issuers,
            issuer,
            policy_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
issuer = "https://sts.example.org"
policy_file = "policy.toml"
[server]
tls_cert = "tls.crt"
tls_key = "tls.key"
[signing]
key_dir = "keys"
[store]
backend = "embedded"
path = "store.redb"
"#;

    fn validate(text: &str, env: &[(&str, &str)]) -> Result<Settings, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect();
        parse(text, &env)?
            .validate(Path::new("/etc/tessera"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_file_gets_contract_defaults() {
        let s = validate(MINIMAL, &[]).unwrap();
        assert_eq!((s.default_ttl, s.max_ttl, s.leeway), (300, 900, 30));
        assert_eq!(s.public_listen.to_string(), "0.0.0.0:8443");
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9443");
        assert_eq!(
            s.accept_audiences,
            vec!["https://sts.example.org".to_owned()]
        );
        assert_eq!(s.key_dir, PathBuf::from("/etc/tessera/keys"));
        assert_eq!(s.signing_alg, SigningAlg::ES256);
    }

    #[test]
    fn oidc_issuers_are_checked() {
        let entry = |body: &str| format!("{MINIMAL}\n[[oidc_issuer]]\n{body}\n");
        let s = validate(
            &entry(
                "issuer = \"https://token.actions.githubusercontent.com\"\naudiences = [\"tessera\"]\none_time = true",
            ),
            &[],
        )
        .unwrap();
        let o = &s.oidc_issuers[0];
        assert_eq!(o.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(
            (o.leeway, o.refetch_cooldown, o.max_key_age),
            (30, 30, 86_400)
        );
        assert!(o.one_time && o.jwks_uri.is_none() && !o.allow_http);
        let s = validate(
            &entry(
                "issuer = \"https://k8s.example.org\"\naudiences = [\"a\"]\njwks_file = \"sa.jwks\"\nleeway = \"10s\"",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.oidc_issuers[0].jwks_file,
            Some(PathBuf::from("/etc/tessera/sa.jwks"))
        );
        assert_eq!(s.oidc_issuers[0].leeway, 10);

        let cases: &[(&str, &str, &str)] = &[
            (
                "no audiences",
                "issuer = \"https://i.example\"",
                "oidc_issuer[0].audiences",
            ),
            (
                "plain http",
                "issuer = \"http://i.example\"\naudiences = [\"a\"]",
                "dangerous_allow_http",
            ),
            (
                "http off loopback even when allowed",
                "issuer = \"http://i.example\"\naudiences = [\"a\"]\ndangerous_allow_http = true",
                "loopback",
            ),
            (
                "own issuer",
                "issuer = \"https://sts.example.org/\"\naudiences = [\"a\"]",
                "own issuer",
            ),
            (
                "jwks_file with jwks_uri",
                "issuer = \"https://i.example\"\naudiences = [\"a\"]\njwks_file = \"k\"\njwks_uri = \"https://i.example/k\"",
                "oidc_issuer[0].jwks_uri",
            ),
            (
                "http jwks_uri",
                "issuer = \"https://i.example\"\naudiences = [\"a\"]\njwks_uri = \"http://i.example/k\"",
                "oidc_issuer[0].jwks_uri",
            ),
            (
                "leeway too large",
                "issuer = \"https://i.example\"\naudiences = [\"a\"]\nleeway = \"10m\"",
                "oidc_issuer[0].leeway",
            ),
            (
                "cooldown zero",
                "issuer = \"https://i.example\"\naudiences = [\"a\"]\nrefetch_cooldown = \"0s\"",
                "oidc_issuer[0].refetch_cooldown",
            ),
            (
                "unknown key",
                "issuer = \"https://i.example\"\naudiences = [\"a\"]\njwks_url = \"x\"",
                "unknown field `jwks_url`",
            ),
        ];
        for (name, body, want) in cases {
            let err = validate(&entry(body), &[]).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
        let twice = format!(
            "{}[[oidc_issuer]]\nissuer = \"https://i.example\"\naudiences = [\"b\"]\n",
            entry("issuer = \"https://i.example\"\naudiences = [\"a\"]")
        );
        let err = validate(&twice, &[]).unwrap_err();
        assert!(
            err.contains("oidc_issuer[1].issuer") && err.contains("twice"),
            "{err}"
        );
    }

    #[test]
    fn env_overlay_overrides_sections_and_top_level() {
        let s = validate(
            MINIMAL,
            &[
                ("TESSERA_TOKENS__MAX_TTL", "10m"),
                ("TESSERA_ISSUER", "https://other.example.org"),
                (
                    "TESSERA_INTROSPECTION__ALLOWED",
                    r#"["spiffe://example.org/rs/*"]"#,
                ),
                ("TESSERA_REQUIRE_REDIS", "1"),
            ],
        )
        .unwrap();
        assert_eq!(s.max_ttl, 600);
        assert_eq!(s.issuer, "https://other.example.org");
        assert_eq!(s.introspection_allowed.len(), 1);
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "[tokens]\nlifetim = \"5m\"\n",
                &[],
                "unknown field `lifetim`",
            ),
            ("", &[("TESSERA_TOKENS__MAX_TTL", "5x")], "tokens.max_ttl"),
            ("", &[("TESSERA_TOKENS__MAX_TTL", "2h")], "hard ceiling"),
            (
                "",
                &[("TESSERA_SIGNING__ALGORITHM", "HS256")],
                "signing.algorithm",
            ),
            ("", &[("TESSERA_STORE__BACKEND", "mongo")], "store.backend"),
            (
                "",
                &[("TESSERA_SIGNING__ROTATE_EVERY", "366d")],
                "at most 365d",
            ),
            (
                "",
                &[("TESSERA_SIGNING__PREPUBLISH", "36500d")],
                "signing.rotate_every",
            ),
            (
                "",
                &[("TESSERA_SERVER__LISTEN", "nowhere")],
                "server.listen",
            ),
            (
                "",
                &[("TESSERA_LIMITS__PER_IDENTITY", "fast")],
                "limits.per_identity",
            ),
            ("", &[("TESSERA_BOGUS__KEY", "1")], "unknown field `bogus`"),
            (
                "",
                &[("TESSERA_ADMIN__ALLOWED", r#"["spiffe://*/x"]"#)],
                "admin.allowed",
            ),
            (
                "[[trust_domain]]\nname = \"Bad.Org\"\nbundle_file = \"b.json\"\n",
                &[],
                "trust_domain[0].name",
            ),
        ];
        for (extra, env, want) in cases {
            let text = format!("{MINIMAL}{extra}");
            let err = validate(&text, env).unwrap_err();
            assert!(err.contains(want), "{want}: got {err}");
        }
        let err = validate("policy_file = \"p\"\n", &[]).unwrap_err();
        assert!(
            err.contains("`issuer`") && err.contains("https://"),
            "{err}"
        );
    }

    #[test]
    fn redis_backend_needs_a_url_and_takes_the_prefix() {
        let redis = validate(
            MINIMAL,
            &[
                ("TESSERA_STORE__BACKEND", "redis"),
                (
                    "TESSERA_STORE__REDIS_URL",
                    "redis+sentinel://h1:26379,h2:26379/mymaster",
                ),
                ("TESSERA_STORE__MIN_REPLICAS_ACK", "1"),
            ],
        )
        .unwrap()
        .redis
        .unwrap();
        assert_eq!(redis.key_prefix, "tessera:");
        assert_eq!(redis.min_replicas_ack, 1);
        let err = validate(MINIMAL, &[("TESSERA_STORE__BACKEND", "redis")]).unwrap_err();
        assert!(err.contains("store.redis_url"), "{err}");
        let err = validate(
            MINIMAL,
            &[
                ("TESSERA_STORE__BACKEND", "redis"),
                ("TESSERA_STORE__REDIS_URL", "http://x"),
            ],
        )
        .unwrap_err();
        assert!(err.contains("store.redis_url"), "{err}");
        assert!(validate(MINIMAL, &[]).unwrap().redis.is_none());
    }

    #[test]
    fn rates_parse_once_into_count_and_period() {
        // (input, count, period_secs, interval in µs, rendered)
        let good = [
            ("50/s", 50, 1, 20_000, "50/s"),
            (" 10 / m ", 10, 60, 6_000_000, "10/m"),
            ("600/m", 600, 60, 100_000, "600/m"),
            ("1/h", 1, 3600, 3_600_000_000, "1/h"),
            ("1000000/s", 1_000_000, 1, 1, "1000000/s"),
        ];
        for (text, count, period, interval, shown) in good {
            let r = Rate::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((r.count(), r.period_secs()), (count, period), "{text}");
            assert_eq!(r.interval_micros(), interval, "{text}");
            assert_eq!(r.to_string(), shown, "{text}");
        }
        // (name, input, what the message must say)
        let bad = [
            ("zero", "0/s", "between 1 and"),
            ("too large", "1000001/s", "between 1 and"),
            ("no unit", "50", "N/s or N/m"),
            ("unknown unit", "50/d", "N/s or N/m"),
            ("negative", "-5/s", "N/s or N/m"),
            ("fraction", "2.5/s", "N/s or N/m"),
            ("empty", "", "N/s or N/m"),
            ("word", "fast", "N/s or N/m"),
        ];
        for (name, text, want) in bad {
            let e = Rate::parse(text).unwrap_err();
            assert!(e.contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn limits_section_defaults_and_errors() {
        let s = validate(MINIMAL, &[]).unwrap();
        assert_eq!(s.per_identity_limit, None, "per_identity is off unless set");
        assert_eq!(
            s.failed_auth_limit,
            Some(Rate::parse("10/m").unwrap()),
            "failed_auth_per_address defaults to 10/m"
        );
        let s = validate(
            MINIMAL,
            &[
                ("TESSERA_LIMITS__PER_IDENTITY", "50/s"),
                ("TESSERA_LIMITS__FAILED_AUTH_PER_ADDRESS", "off"),
            ],
        )
        .unwrap();
        assert_eq!(s.per_identity_limit, Some(Rate::per_second(50)));
        assert_eq!(s.failed_auth_limit, None);
        let err = validate(
            MINIMAL,
            &[("TESSERA_LIMITS__FAILED_AUTH_PER_ADDRESS", "Off")],
        )
        .unwrap_err();
        assert!(
            err.contains("limits.failed_auth_per_address") && err.contains("\"off\""),
            "{err}"
        );
        let err = validate(MINIMAL, &[("TESSERA_LIMITS__PER_IDENTITY", "0/m")]).unwrap_err();
        assert!(err.contains("limits.per_identity"), "{err}");
    }
}
