//! A resource server that accepts Tessera access tokens: an axum service behind a tower
//! layer that verifies each token locally.
//!
//! - **Signature** against Tessera's JWKS (`/jwks.json`), cached; a token signed by a key
//!   the cache does not know triggers one refetch (at most one per cooldown, so a flood
//!   of made-up `kid`s cannot turn into a flood of fetches). After `tessera admin
//!   rotate-keys` the new key is picked up on its first token.
//! - **Claims** (RFC 9068 §4): header `typ` `at+jwt`, `iss`, `exp`/`nbf` with a small
//!   leeway, and this server's audience in `aud`.
//! - **Scope** per route: `TesseraAuthLayer::new(verifier).require_scope("ledger:write")`;
//!   a token without it gets 403 `insufficient_scope` (RFC 6750 §3.1).
//! - **Certificate binding** (RFC 8705 §3): a token with `cnf.x5t#S256` is accepted only
//!   on a TLS connection whose client certificate has that SHA-256 thumbprint. The server
//!   requests (does not require) client certificates for that.
//! - **Revocation**, optionally: with introspection credentials it also asks
//!   `/introspect` (RFC 7662) and refuses tokens that are no longer active. Local
//!   verification alone accepts a revoked token until it expires (minutes); that is the
//!   trade-off the introspection option buys back, for one round trip per request.
//!
//! Handlers find the verified claims as a request extension (`Extension<Claims>`).
//! Refusals are 401 with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3).
//!
//! Run it against a TLS Tessera (`cargo run --example resource_server`), configured by
//! environment:
//!
//! ```sh
//! TESSERA_URL=https://sts.example.org:8443 TESSERA_CA_FILE=ca.crt \
//! TESSERA_ISSUER=https://sts.example.org RS_AUDIENCE=https://ledger.example.org \
//! RS_LISTEN=127.0.0.1:8444 RS_TLS_CERT=rs.crt RS_TLS_KEY=rs.key RS_CLIENT_CA=spiffe-ca.pem \
//!   cargo run --release --example resource_server
//! ```
//!
//! `RS_INTROSPECT_CLIENT_ID` + `RS_INTROSPECT_SECRET_FILE` (a static client) or
//! `RS_INTROSPECT_SVID_FILE` (a JWT-SVID, re-read per call as SPIRE rotates it) turn on
//! introspection. `RS_CLIENT_CA` is the PEM of the workloads' X.509 authorities, to accept
//! their SVIDs as client certificates. `GET /ledger` needs `ledger:read`, `POST /ledger`
//! `ledger:write`. `tests/examples.rs` runs all of this against a real Tessera.

use anyhow::{Context as _, Result, anyhow};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::RwLock;

/// How the resource server authenticates to `/introspect`.
#[derive(Clone)]
pub enum IntrospectionAuth {
    /// A static introspection client (`[[introspection.client]]`): HTTP Basic.
    Basic { id: String, secret: String },
    /// A JWT-SVID client assertion, read from this file on every call.
    SvidFile(PathBuf),
}

pub struct VerifierConfig {
    /// Tessera's public base URL (where `/jwks.json` and `/introspect` are).
    pub tessera_url: String,
    /// The `iss` Tessera puts in its tokens (`issuer` in its configuration).
    pub issuer: String,
    /// This resource server's audience.
    pub audience: String,
    /// An HTTP client that trusts Tessera's certificate.
    pub http: reqwest::Client,
    /// At most one JWKS fetch per this long when a token names an unknown key.
    pub refetch_cooldown: Duration,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    pub introspection: Option<IntrospectionAuth>,
}

/// The claims a handler can rely on (RFC 9068 §2.2).
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Value,
    pub exp: u64,
    #[serde(default)]
    pub nbf: Option<u64>,
    pub jti: String,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub cnf: Option<Confirmation>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

impl Claims {
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|s| s == wanted))
    }

    fn has_audience(&self, wanted: &str) -> bool {
        match &self.aud {
            Value::String(a) => a == wanted,
            Value::Array(list) => list.iter().any(|a| a == wanted),
            _ => false,
        }
    }
}

/// Why a token was refused; the text goes into `error_description`.
#[derive(Debug)]
pub enum Refusal {
    /// No bearer token at all (RFC 6750 §3.1: the challenge carries no error code).
    Missing,
    InvalidToken(String),
    InsufficientScope(String),
    /// Tessera could not be asked (JWKS or introspection unreachable): 503, fail closed.
    Unavailable(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, challenge, body) = match &self {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                r#"Bearer realm="resource-server""#.to_owned(),
                json!({"error": "invalid_request", "error_description": "bearer token required"}),
            ),
            Refusal::InvalidToken(why) => (
                StatusCode::UNAUTHORIZED,
                r#"Bearer realm="resource-server", error="invalid_token""#.to_owned(),
                json!({"error": "invalid_token", "error_description": why}),
            ),
            Refusal::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                format!(
                    r#"Bearer realm="resource-server", error="insufficient_scope", scope="{scope}""#
                ),
                json!({"error": "insufficient_scope", "scope": scope}),
            ),
            Refusal::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"Bearer realm="resource-server""#.to_owned(),
                json!({"error": "temporarily_unavailable", "error_description": why}),
            ),
        };
        let mut resp = (status, Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

struct KeyCache {
    /// Verifiers by `kid`, with the JWS `alg` each key is for.
    keys: HashMap<String, (String, Arc<dyn josekit::jws::JwsVerifier>)>,
    fetched_at: Option<Instant>,
}

/// Verifies Tessera access tokens; cheap to clone into every request.
#[derive(Clone)]
pub struct TokenVerifier {
    config: Arc<VerifierConfig>,
    cache: Arc<RwLock<KeyCache>>,
    fetches: Arc<AtomicU64>,
}

/// The client certificate of the connection (DER), put into each request by the
/// accept loop.
#[derive(Clone)]
pub struct ClientCertificate(pub Option<Arc<Vec<u8>>>);

impl TokenVerifier {
    pub fn new(config: VerifierConfig) -> Self {
        Self {
            config: Arc::new(config),
            cache: Arc::new(RwLock::new(KeyCache {
                keys: HashMap::new(),
                fetched_at: None,
            })),
            fetches: Arc::new(AtomicU64::new(0)),
        }
    }

    /// JWKS fetches so far (what the refetch cooldown bounds).
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Verifies `token` as presented on a connection with `client_cert`.
    pub async fn verify(&self, token: &str, client_cert: Option<&[u8]>) -> Result<Claims, Refusal> {
        let bad = |why: &str| Refusal::InvalidToken(why.to_owned());
        let header = josekit::jwt::decode_header(token).map_err(|_| bad("malformed token"))?;
        // RFC 9068 §4: the typ tells an access token from an ID token or a JWT-SVID.
        let typ = header.claim("typ").and_then(Value::as_str).unwrap_or("");
        if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
            return Err(bad("not an access token (typ)"));
        }
        let kid = header
            .claim("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("token names no key"))?
            .to_owned();
        let alg = header.claim("alg").and_then(Value::as_str).unwrap_or("");
        let (key_alg, verifier) = self.key(&kid).await?;
        // The key decides the algorithm, never the token (RFC 8725 §3.1).
        if key_alg != alg {
            return Err(bad("algorithm does not match the key"));
        }
        let (payload, _) = josekit::jwt::decode_with_verifier(token, verifier.as_ref())
            .map_err(|_| bad("bad signature"))?;
        let claims: Claims = serde_json::from_value(Value::Object(payload.claims_set().clone()))
            .map_err(|_| bad("missing or malformed claims"))?;
        // A resource server is not Tessera: it reads the wall clock (Tessera's own code
        // injects time through its `Clock`).
        #[allow(clippy::disallowed_methods)]
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let leeway = self.config.leeway;
        if claims.iss != self.config.issuer {
            return Err(bad("wrong issuer"));
        }
        if !claims.has_audience(&self.config.audience) {
            return Err(bad("token is for another audience"));
        }
        if claims.exp + leeway <= now {
            return Err(bad("token expired"));
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(bad("token not valid yet"));
        }
        if let Some(cnf) = &claims.cnf {
            // RFC 8705 §3: the presenter must hold the certificate the token is bound to.
            let Some(der) = client_cert else {
                return Err(bad(
                    "token is bound to a client certificate; none was presented",
                ));
            };
            let digest = ring::digest::digest(&ring::digest::SHA256, der);
            let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
            if thumbprint != cnf.x5t_s256 {
                return Err(bad("token is bound to another client certificate"));
            }
        }
        if self.config.introspection.is_some() && !self.introspect(token).await? {
            return Err(bad("token is no longer active"));
        }
        Ok(claims)
    }

    /// The verifier for `kid`: from the cache, or from one refetch of the JWKS.
    async fn key(
        &self,
        kid: &str,
    ) -> Result<(String, Arc<dyn josekit::jws::JwsVerifier>), Refusal> {
        if let Some(k) = self.cache.read().await.keys.get(kid) {
            return Ok(k.clone());
        }
        let mut cache = self.cache.write().await;
        // Another request may have refetched while we waited for the lock.
        if let Some(k) = cache.keys.get(kid) {
            return Ok(k.clone());
        }
        let cooling = cache
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.config.refetch_cooldown);
        if !cooling {
            cache.keys = self.fetch_jwks().await?;
            cache.fetched_at = Some(Instant::now());
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| Refusal::InvalidToken("signed by an unknown key".into()))
    }

    async fn fetch_jwks(
        &self,
    ) -> Result<HashMap<String, (String, Arc<dyn josekit::jws::JwsVerifier>)>, Refusal> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/jwks.json", self.config.tessera_url);
        let unavailable = |e: String| Refusal::Unavailable(format!("JWKS: {e}"));
        let resp = self
            .config
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("{url} answered {}", resp.status())));
        }
        let doc: Value = resp.json().await.map_err(|e| unavailable(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in doc["keys"].as_array().into_iter().flatten() {
            // A key we cannot use is skipped, not fatal: the others still verify.
            let (Some(kid), Some(alg)) = (jwk["kid"].as_str(), jwk["alg"].as_str()) else {
                continue;
            };
            let Ok(parsed) = josekit::jwk::Jwk::from_bytes(jwk.to_string().as_bytes()) else {
                continue;
            };
            let verifier: Option<Arc<dyn josekit::jws::JwsVerifier>> = match alg {
                "ES256" => josekit::jws::ES256
                    .verifier_from_jwk(&parsed)
                    .ok()
                    .map(|v| Arc::new(v) as _),
                "EdDSA" => josekit::jws::EdDSA
                    .verifier_from_jwk(&parsed)
                    .ok()
                    .map(|v| Arc::new(v) as _),
                "RS256" => josekit::jws::RS256
                    .verifier_from_jwk(&parsed)
                    .ok()
                    .map(|v| Arc::new(v) as _),
                _ => None,
            };
            if let Some(v) = verifier {
                keys.insert(kid.to_owned(), (alg.to_owned(), v));
            }
        }
        Ok(keys)
    }

    /// RFC 7662: whether Tessera still says the token is active. Fails closed.
    async fn introspect(&self, token: &str) -> Result<bool, Refusal> {
        let url = format!("{}/introspect", self.config.tessera_url);
        let unavailable = |e: String| Refusal::Unavailable(format!("introspection: {e}"));
        let mut form = vec![("token".to_owned(), token.to_owned())];
        let mut req = self.config.http.post(&url);
        match &self.config.introspection {
            Some(IntrospectionAuth::Basic { id, secret }) => {
                req = req.basic_auth(id, Some(secret));
            }
            Some(IntrospectionAuth::SvidFile(path)) => {
                let svid = std::fs::read_to_string(path)
                    .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
                form.push((
                    "client_assertion_type".into(),
                    "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe".into(),
                ));
                form.push(("client_assertion".into(), svid.trim().to_owned()));
            }
            None => return Ok(true),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("{url} answered {}", resp.status())));
        }
        let answer: Value = resp.json().await.map_err(|e| unavailable(e.to_string()))?;
        Ok(answer["active"] == Value::Bool(true))
    }
}

/// The tower layer: verifies the bearer token, checks the route's scope, and hands the
/// claims to the handler.
#[derive(Clone)]
pub struct TesseraAuthLayer {
    verifier: TokenVerifier,
    scope: Option<Arc<str>>,
}

impl TesseraAuthLayer {
    pub fn new(verifier: TokenVerifier) -> Self {
        Self {
            verifier,
            scope: None,
        }
    }

    pub fn require_scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.into());
        self
    }
}

impl<S> tower::Layer<S> for TesseraAuthLayer {
    type Service = TesseraAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TesseraAuth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TesseraAuth<S> {
    inner: S,
    layer: TesseraAuthLayer,
}

impl<S> tower::Service<Request> for TesseraAuth<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.split_once(' ')
                        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                })
                .map(|(_, t)| t.trim().to_owned());
            let Some(token) = token else {
                return Ok(Refusal::Missing.into_response());
            };
            let cert = req
                .extensions()
                .get::<ClientCertificate>()
                .and_then(|c| c.0.clone());
            let claims = match layer
                .verifier
                .verify(&token, cert.as_deref().map(Vec::as_slice))
                .await
            {
                Ok(c) => c,
                Err(refusal) => return Ok(refusal.into_response()),
            };
            if let Some(scope) = &layer.scope
                && !claims.has_scope(scope)
            {
                return Ok(Refusal::InsufficientScope(scope.to_string()).into_response());
            }
            req.extensions_mut().insert(claims);
            inner.call(req).await
        })
    }
}

/// The demo API: a ledger to read (`ledger:read`) and append to (`ledger:write`).
pub fn app(verifier: TokenVerifier) -> Router {
    let read = TesseraAuthLayer::new(verifier.clone()).require_scope("ledger:read");
    let write = TesseraAuthLayer::new(verifier).require_scope("ledger:write");
    Router::new()
        .route("/ledger", get(read_ledger).route_layer(read))
        .route(
            "/ledger",
            axum::routing::post(append_ledger).route_layer(write),
        )
        .route("/healthz", get(|| async { "ok" }))
}

async fn read_ledger(Extension(claims): Extension<Claims>) -> Json<Value> {
    Json(json!({"reader": claims.sub, "scope": claims.scope, "entries": []}))
}

async fn append_ledger(Extension(claims): Extension<Claims>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(json!({"writer": claims.sub, "jti": claims.jti})),
    )
}

/// TLS with our certificate; client certificates are requested, not required, and must
/// chain to `client_ca_pem` (the workloads' X.509 authorities) when sent.
pub fn tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
        roots.add(ca.context("client CA PEM")?)?;
    }
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("key PEM")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` over TLS on `listener`, giving each request its connection's client
/// certificate. Runs until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, app: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.to_vec()));
            let app = app.layer(Extension(ClientCertificate(cert)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

fn env(key: &str) -> Result<String> {
    std::env::var(key)
        .map_err(|_| anyhow!("set {key} (see the header of examples/resource_server.rs)"))
}

async fn run() -> Result<()> {
    let read = |key: &str| -> Result<Vec<u8>> {
        let path = env(key)?;
        std::fs::read(&path).with_context(|| format!("{key}: cannot read {path}"))
    };
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
    if let Ok(ca) = std::env::var("TESSERA_CA_FILE") {
        let pem =
            std::fs::read(&ca).with_context(|| format!("TESSERA_CA_FILE: cannot read {ca}"))?;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let introspection = match (
        std::env::var("RS_INTROSPECT_CLIENT_ID"),
        std::env::var("RS_INTROSPECT_SECRET_FILE"),
        std::env::var("RS_INTROSPECT_SVID_FILE"),
    ) {
        (Ok(id), Ok(secret_file), _) => Some(IntrospectionAuth::Basic {
            id,
            secret: std::fs::read_to_string(&secret_file)
                .with_context(|| format!("cannot read {secret_file}"))?
                .trim()
                .to_owned(),
        }),
        (_, _, Ok(svid)) => Some(IntrospectionAuth::SvidFile(svid.into())),
        _ => None,
    };
    let verifier = TokenVerifier::new(VerifierConfig {
        tessera_url: env("TESSERA_URL")?.trim_end_matches('/').to_owned(),
        issuer: env("TESSERA_ISSUER")?,
        audience: env("RS_AUDIENCE")?,
        http: http.build()?,
        refetch_cooldown: Duration::from_secs(10),
        leeway: 30,
        introspection,
    });
    let tls = tls_config(
        &read("RS_TLS_CERT")?,
        &read("RS_TLS_KEY")?,
        &read("RS_CLIENT_CA")?,
    )?;
    let addr = std::env::var("RS_LISTEN").unwrap_or_else(|_| "127.0.0.1:8444".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("resource server on https://{addr}");
    serve(listener, tls, app(verifier)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resource_server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
