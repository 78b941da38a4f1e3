//! Outbound HTTPS for trust material: SPIFFE bundle endpoints (`federation`) and OIDC
//! discovery and JWKS (`OidcHttpFetcher`). The one place besides `cli` that names
//! reqwest; `attest` stays free of HTTP clients and sees only the `JwksFetcher` seam.
//!
//! Every request has a whole-request timeout, follows at most 3 redirects, refuses
//! bodies over [`MAX_BODY_BYTES`] and, unless `dangerous_allow_http` was set for a
//! loopback test, speaks HTTPS only. A `ca_file` replaces the web PKI roots.

use crate::attest::oidc::{FetchedJwks, JwksFetcher};
use async_trait::async_trait;
use std::path::Path;
use std::time::Duration;

/// Whole-request timeout of one fetch (connect, TLS, headers and body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest document accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ca_file {path}: {cause}")]
    CaFile {
        path: std::path::PathBuf,
        cause: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Why a GET failed. Messages carry the cause, never the document.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("endpoint answered HTTP {0}")]
    Status(u16),
    #[error("document is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

/// A fetched document and its `Cache-Control: max-age`.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<u64>,
}

/// An HTTPS client trusting `ca_file` (PEM, replacing the web PKI) or the web PKI.
pub fn https_client(
    ca_file: Option<&Path>,
    allow_http: bool,
) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .https_only(!allow_http)
        .user_agent(concat!("tessera/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let ca_err = |cause: String| ClientError::CaFile {
            path: path.to_path_buf(),
            cause,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| ca_err("not a PEM certificate bundle".into()))?;
        if certs.is_empty() {
            return Err(ca_err("holds no certificate".into()));
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| ClientError::Build(error_chain(&e)))
}

/// The error and its sources, so "connection refused" or a TLS cause reaches the log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// GETs a JSON document, refusing non-2xx answers and bodies over the cap.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Result<Fetched, GetError> {
    let request = |e: reqwest::Error| GetError::Request(error_chain(&e));
    let mut resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(request)?;
    if !resp.status().is_success() {
        return Err(GetError::Status(resp.status().as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(GetError::TooLarge);
    }
    let max_age = resp
        .headers()
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(cache_max_age);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(request)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(GetError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { body, max_age })
}

/// `max-age` of a `Cache-Control` value (RFC 9111 §5.2.2.1); `no-store`/`no-cache` count as
/// 0 (the key cache then applies its lower bound).
pub fn cache_max_age(value: &str) -> Option<u64> {
    let mut age = None;
    for directive in value.split(',') {
        let d = directive.trim();
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(0);
        }
        if let Some((name, v)) = d.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
        {
            age = v.trim().trim_matches('"').parse::<u64>().ok();
        }
    }
    age
}

/// Whether `url` is `https://`, or `http://` to a loopback host when allowed.
pub fn url_allowed(url: &str, allow_http: bool) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => return false,
    };
    match u.scheme() {
        "https" => true,
        "http" => allow_http && loopback,
        _ => false,
    }
}

/// OIDC discovery (OpenID Connect Discovery 1.0 §4) and JWKS fetch for one issuer.
pub struct OidcHttpFetcher {
    issuer: String,
    /// Configured `jwks_uri`; `None` means discover it.
    configured_jwks_uri: Option<String>,
    allow_http: bool,
    client: reqwest::Client,
    /// The discovered `jwks_uri`, forgotten after a failed JWKS fetch so the next
    /// attempt rediscovers (an issuer may move its keys).
    discovered: tokio::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for OidcHttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcHttpFetcher")
            .field("issuer", &self.issuer)
            .field("jwks_uri", &self.configured_jwks_uri)
            .finish_non_exhaustive()
    }
}

impl OidcHttpFetcher {
    pub fn new(
        issuer: &str,
        jwks_uri: Option<&str>,
        ca_file: Option<&Path>,
        allow_http: bool,
    ) -> Result<Self, ClientError> {
        if allow_http {
            tracing::warn!(
                issuer,
                "DANGEROUS: dangerous_allow_http: this issuer's keys may be fetched over plain \
                 HTTP and anyone on the path can replace them; never use this outside tests"
            );
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            configured_jwks_uri: jwks_uri.map(str::to_owned),
            allow_http,
            client: https_client(ca_file, allow_http)?,
            discovered: tokio::sync::Mutex::new(None),
        })
    }

    async fn jwks_uri(&self) -> Result<String, String> {
        if let Some(u) = &self.configured_jwks_uri {
            return Ok(u.clone());
        }
        let mut cached = self.discovered.lock().await;
        if let Some(u) = cached.as_ref() {
            return Ok(u.clone());
        }
        // Discovery §4: the document lives under the issuer; §4.3: its `issuer` must be
        // exactly the configured issuer, or the document is for someone else.
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let doc = get_json(&self.client, &url)
            .await
            .map_err(|e| format!("discovery {url}: {e}"))?;
        let meta: serde_json::Value = serde_json::from_slice(&doc.body)
            .map_err(|_| format!("discovery {url}: not a JSON document"))?;
        if meta.get("issuer").and_then(serde_json::Value::as_str) != Some(self.issuer.as_str()) {
            return Err(format!(
                "discovery {url}: the document's issuer is not {}",
                self.issuer
            ));
        }
        let jwks_uri = meta
            .get("jwks_uri")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("discovery {url}: no jwks_uri"))?;
        if !url_allowed(jwks_uri, self.allow_http) {
            return Err(format!("discovery {url}: jwks_uri is not an https URL"));
        }
        *cached = Some(jwks_uri.to_owned());
        Ok(jwks_uri.to_owned())
    }
}

#[async_trait]
impl JwksFetcher for OidcHttpFetcher {
    async fn fetch_jwks(&self) -> Result<FetchedJwks, String> {
        let uri = self.jwks_uri().await?;
        match get_json(&self.client, &uri).await {
            Ok(f) => Ok(FetchedJwks {
                body: f.body,
                max_age: f.max_age,
            }),
            Err(e) => {
                *self.discovered.lock().await = None;
                Err(format!("jwks {uri}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        for (value, want) in [
            ("max-age=300", Some(300)),
            ("public, max-age=19800, must-revalidate", Some(19800)),
            ("MAX-AGE = 60", Some(60)),
            ("no-store", Some(0)),
            ("private, no-cache", Some(0)),
            ("max-age=abc", None),
            ("public", None),
            ("", None),
        ] {
            assert_eq!(cache_max_age(value), want, "{value:?}");
        }
    }

    #[test]
    fn only_https_or_loopback_http() {
        for (url, allow, want) in [
            ("https://issuer.example.org", false, true),
            ("http://issuer.example.org", false, false),
            ("http://issuer.example.org", true, false),
            ("http://127.0.0.1:8080", true, true),
            ("http://localhost:8080/keys", true, true),
            ("http://[::1]:8080", true, true),
            ("http://127.0.0.1:8080", false, false),
            ("ftp://issuer.example.org", true, false),
            ("not a url", true, false),
        ] {
            assert_eq!(url_allowed(url, allow), want, "{url} allow_http={allow}");
        }
    }
}
