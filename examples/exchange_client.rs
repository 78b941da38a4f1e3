//! A workload that keeps a fresh Tessera access token.
//!
//! It gets its JWT-SVID from the SPIFFE Workload API (the SPIRE agent's socket, asking
//! for a JWT-SVID whose audience is Tessera) or from a file (SPIRE's `spiffe-helper`,
//! or a sidecar, rewrites that file as the SVID rotates), exchanges it at `POST /token`
//! (RFC 8693 token exchange, a form body), and renews at about 80% of `expires_in`,
//! fetching the SVID again each time. It prints when each token expires and its `jti`,
//! never the token itself.
//!
//! With a SPIRE agent (its socket in `SPIFFE_ENDPOINT_SOCKET`, as the SPIFFE CSI driver
//! or a hostPath mount provides it):
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix:///spiffe-workload-api/spire-agent.sock \
//! TESSERA_URL=https://tessera.example.org TESSERA_CA_FILE=ca.crt \
//!     cargo run --release -q --example exchange_client
//! ```
//!
//! Against the dev server (`cargo run --release -- serve --dev` in another terminal,
//! from the same directory so `./tessera-data` is shared), from a file:
//!
//! ```sh
//! cargo run --release -q -- dev jwt-svid spiffe://dev.local/ns/demo/sa/app \
//!     --audience http://127.0.0.1:8080 > svid.jwt
//! cargo run --release -q --example exchange_client -- svid.jwt
//! ```
//!
//! Dev JWT-SVIDs live 5 minutes and a token never outlives the SVID it was exchanged
//! for, so to watch several renewals keep the file fresh the way SPIRE would:
//!
//! ```sh
//! while true; do
//!   cargo run --release -q -- dev jwt-svid spiffe://dev.local/ns/demo/sa/app \
//!     --audience http://127.0.0.1:8080 > svid.jwt.tmp && mv svid.jwt.tmp svid.jwt
//!   sleep 120
//! done
//! ```
//!
//! Settings: the SVID file is the first argument or `TESSERA_SVID_FILE`; without one,
//! the Workload API at `SPIFFE_ENDPOINT_SOCKET` is used, asking for the audience
//! `TESSERA_SVID_AUDIENCE` (default: `TESSERA_URL`, Tessera's issuer in `serve --dev`;
//! set it to your `issuer` otherwise). `TESSERA_URL` (default `http://127.0.0.1:8080`),
//! `TESSERA_AUDIENCE` (default `https://ledger.dev.local`), `TESSERA_SCOPE` (default
//! `ledger:read`; empty asks for the rule's default scopes), `TESSERA_CA_FILE` (a PEM CA
//! to trust for an https URL). `--once` exchanges once and exits (non-zero on failure).

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tessera::clock::{Clock as _, SystemClock, UnixSeconds, rfc3339};

const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Renew when this fraction of the token's lifetime has passed.
const RENEW_AT: f64 = 0.8;
const MAX_BACKOFF_SECS: u64 = 30;

/// Where the workload's JWT-SVID comes from; asked again before every exchange, since
/// it rotates.
pub enum SvidSource {
    /// A file that a sidecar rewrites as the SVID rotates.
    File(PathBuf),
    /// The SPIFFE Workload API (`unix:///path/agent.sock` or `tcp://ip:port`), asked for
    /// a JWT-SVID of the default identity with this audience.
    WorkloadApi { endpoint: String, audience: String },
}

impl SvidSource {
    /// Where the SVID was looked for, for error messages.
    fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::WorkloadApi { endpoint, .. } => format!("the Workload API at {endpoint}"),
        }
    }
}

pub struct Settings {
    pub url: String,
    pub svid: SvidSource,
    pub audience: String,
    pub scope: Option<String>,
    /// PEM CA certificate to trust for an https Tessera (`TESSERA_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    pub once: bool,
}

impl Settings {
    fn from_args_and_env() -> Result<Self> {
        let mut svid_file = std::env::var_os("TESSERA_SVID_FILE").map(PathBuf::from);
        let mut once = false;
        for arg in std::env::args_os().skip(1) {
            if arg == "--once" {
                once = true;
            } else if arg.to_string_lossy().starts_with('-') {
                bail!("unknown option {arg:?}; usage: exchange_client [--once] [SVID_FILE]");
            } else {
                svid_file = Some(PathBuf::from(arg));
            }
        }
        let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
        let url = env("TESSERA_URL", "http://127.0.0.1:8080")
            .trim_end_matches('/')
            .to_owned();
        let svid = match (svid_file, std::env::var("SPIFFE_ENDPOINT_SOCKET")) {
            (Some(file), _) => SvidSource::File(file),
            (None, Ok(endpoint)) if !endpoint.is_empty() => SvidSource::WorkloadApi {
                endpoint,
                audience: env("TESSERA_SVID_AUDIENCE", &url),
            },
            (None, _) => bail!(
                "no JWT-SVID source: give a JWT-SVID file (first argument or TESSERA_SVID_FILE), \
                 or set SPIFFE_ENDPOINT_SOCKET to the Workload API socket"
            ),
        };
        let scope = env("TESSERA_SCOPE", "ledger:read");
        Ok(Self {
            url,
            svid,
            audience: env("TESSERA_AUDIENCE", "https://ledger.dev.local"),
            scope: (!scope.is_empty()).then_some(scope),
            ca_file: std::env::var_os("TESSERA_CA_FILE").map(PathBuf::from),
            once,
        })
    }
}

/// RFC 8693 §2.2.1 success response (the fields this client uses).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    scope: Option<String>,
}

/// RFC 6749 §5.2 error response.
#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// The token the workload would send as `Authorization: Bearer …`.
pub struct AccessToken {
    pub value: String,
    pub expires_in: u64,
    pub expires_at: UnixSeconds,
    pub scope: Option<String>,
}

impl AccessToken {
    /// The token's `jti`, for logs and `tessera admin revoke --jti`. Read without
    /// verifying: the token came from our STS over the connection we chose; resource
    /// servers are the ones that verify it.
    pub fn jti(&self) -> Option<String> {
        let payload = self.value.split('.').nth(1)?;
        let bytes = tessera::jose::b64url_decode(payload).ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        claims.get("jti")?.as_str().map(str::to_owned)
    }
}

/// The current JWT-SVID: read from the file, or fetched from the Workload API.
pub async fn fetch_svid(source: &SvidSource) -> Result<String> {
    let svid = match source {
        SvidSource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the JWT-SVID from {}", path.display()))?,
        SvidSource::WorkloadApi { endpoint, audience } => {
            // A connection per fetch: renewals are minutes apart.
            let client = spiffe::WorkloadApiClient::connect_to(endpoint)
                .await
                .with_context(|| format!("cannot reach the Workload API at {endpoint}"))?;
            client
                .fetch_jwt_token([audience.as_str()], None)
                .await
                .with_context(|| {
                    format!("the Workload API at {endpoint} gave no JWT-SVID for {audience}")
                })?
        }
    };
    let svid = svid.trim();
    if svid.is_empty() {
        bail!("the JWT-SVID from {} is empty", source.describe());
    }
    Ok(svid.to_owned())
}

/// Fetches the SVID (again: it rotates) and exchanges it for an access token.
pub async fn exchange(http: &reqwest::Client, s: &Settings) -> Result<AccessToken> {
    let svid = fetch_svid(&s.svid).await?;
    let mut form = vec![
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("subject_token", svid.as_str()),
        ("subject_token_type", TOKEN_TYPE_JWT),
        ("audience", s.audience.as_str()),
    ];
    if let Some(scope) = &s.scope {
        form.push(("scope", scope.as_str()));
    }
    let url = format!("{}/token", s.url);
    let resp = http
        .post(&url)
        .form(&form)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await.context("reading the response")?;
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorResponse>(&body) {
            Ok(e) => anyhow!(
                "{url} answered {status}: {} ({})",
                e.error,
                e.error_description.unwrap_or_default()
            ),
            Err(_) => anyhow!("{url} answered {status}"),
        });
    }
    let t: TokenResponse =
        serde_json::from_slice(&body).context("the token response is not RFC 8693 JSON")?;
    Ok(AccessToken {
        expires_at: SystemClock.now() + i64::try_from(t.expires_in).unwrap_or(i64::MAX),
        value: t.access_token,
        expires_in: t.expires_in,
        scope: t.scope,
    })
}

/// The HTTP client: 10 s timeout, and `ca_file` trusted for an https Tessera.
pub fn http_client(s: &Settings) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = &s.ca_file {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).context("the CA file is not PEM")?,
        );
    }
    b.build().context("building the HTTP client")
}

/// When to renew a token that lives `expires_in` seconds: at ~80% of its life.
pub fn renew_after(expires_in: u64) -> Duration {
    Duration::from_secs_f64((expires_in as f64 * RENEW_AT).max(1.0))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exchange_client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let settings = Settings::from_args_and_env()?;
    let http = http_client(&settings)?;
    let mut current: Option<AccessToken> = None;
    let mut failures: u32 = 0;
    loop {
        let wait = match exchange(&http, &settings).await {
            Ok(token) => {
                failures = 0;
                let wait = renew_after(token.expires_in);
                println!(
                    "token jti={} scope={} expires_in={}s expires_at={}; renewing in {}s",
                    token.jti().as_deref().unwrap_or("?"),
                    token.scope.as_deref().unwrap_or("-"),
                    token.expires_in,
                    rfc3339(token.expires_at),
                    wait.as_secs()
                );
                current = Some(token);
                wait
            }
            Err(e) if settings.once => return Err(e),
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_secs((1u64 << failures.min(5)).min(MAX_BACKOFF_SECS));
                let still_valid = current
                    .as_ref()
                    .filter(|t| t.expires_at > SystemClock.now())
                    .map(|t| format!("current token valid until {}", rfc3339(t.expires_at)))
                    .unwrap_or_else(|| "no valid token".into());
                eprintln!(
                    "exchange failed: {e:#}; {still_valid}; retrying in {}s",
                    backoff.as_secs()
                );
                backoff
            }
        };
        if settings.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopping");
                return Ok(());
            }
        }
    }
}
