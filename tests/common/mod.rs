//! Shared test harness: a temp directory with a config file, a policy, SPIFFE bundles for
//! two trust domains, rcgen TLS certificates and an admin token; JWT-SVIDs minted here
//! against a manual clock; and a real server on 127.0.0.1:0 with audit lines captured
//! in memory and a reqwest client that trusts the test CA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod mtls;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tessera::app::{self, Running};
use tessera::audit::JsonLines;
use tessera::clock::{Clock as _, ManualClock};
use tessera::config::Settings;
use tessera::jose::{SigningAlg, SigningKey, b64url};
use tessera::service::Service;

/// 2026-01-01T00:00:00Z: where every manual clock starts.
pub const T0: i64 = 1_767_225_600;
pub const ISSUER: &str = "https://sts.example.org";
pub const LEDGER: &str = "https://ledger.example.org";
pub const API: &str = "https://api.example.org";
pub const BATCH: &str = "https://batch.example.org";

pub const PAYMENTS: &str = "spiffe://example.org/ns/payments/sa/api";
pub const PAYMENTS_WORKER: &str = "spiffe://example.org/ns/payments/sa/worker";
pub const BATCH_JOB: &str = "spiffe://example.org/ns/batch/sa/nightly";
pub const FRONTEND: &str = "spiffe://example.org/ns/web/sa/frontend";
pub const EDGE: &str = "spiffe://example.org/ns/gateway/sa/edge";
pub const ROGUE: &str = "spiffe://example.org/ns/gateway/sa/rogue";
/// A resource server listed in `introspection.allowed`.
pub const RS: &str = "spiffe://example.org/ns/rs/sa/ledger";
/// Listed in `admin.allowed`.
pub const OPS: &str = "spiffe://example.org/ops/alice";
pub const OTHER_TD: &str = "spiffe://other.org/ns/x/sa/y";

pub const STATIC_CLIENT: &str = "legacy-gateway";

pub const POLICY: &str = r#"
[[rule]]
id = "payments-ledger"
match.spiffe_id = "spiffe://example.org/ns/payments/sa/*"
grant.audiences = ["https://ledger.example.org"]
grant.scopes = ["ledger:read", "ledger:write"]
grant.default_scopes = ["ledger:read"]
grant.max_ttl = "5m"

[[rule]]
id = "frontend-via-edge"
match.spiffe_id = "spiffe://example.org/ns/web/sa/frontend"
grant.audiences = ["https://api.example.org"]
grant.scopes = ["api:read"]
grant.actors = ["spiffe://example.org/ns/gateway/sa/edge"]

[[rule]]
id = "batch-long"
match.spiffe_id = "spiffe://example.org/ns/batch/sa/*"
grant.audiences = ["https://batch.example.org"]
grant.max_ttl = "1h"

[[rule]]
id = "other-td"
match.spiffe_id = "spiffe://other.org/ns/*/sa/*"
grant.audiences = ["https://ledger.example.org"]
grant.scopes = ["ledger:read"]
"#;

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

/// A `Write` into shared memory (audit lines, tracing output).
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// TLS material generated with rcgen: a CA and a server certificate for
/// 127.0.0.1/localhost.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tessera test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params
        .distinguished_name
        .push(DnType::CommonName, "tessera test server");
    let cert = params.signed_by(&key, &issuer).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A SPIFFE bundle document with one JWT-SVID authority under `kid`.
pub fn bundle_json(key: &SigningKey, kid: &str) -> String {
    let mut jwk = key.public_jwk();
    jwk.insert("use".into(), "jwt-svid".into());
    jwk.insert("kid".into(), kid.into());
    jwk.remove("alg");
    json!({"keys": [jwk], "spiffe_refresh_hint": 300}).to_string()
}

/// Writes a secret file readable by the owner only (mode 0600): the server refuses to
/// start with a group- or world-readable key or admin token hash (contract §4).
pub fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .unwrap();
    f.write_all(contents.as_ref()).unwrap();
}

pub fn sha256_hex(s: &str) -> String {
    tessera::jose::hex(&tessera::jose::sha256(s.as_bytes()))
}

pub fn argon2id_hash(secret: &str) -> String {
    use argon2::PasswordHasher as _;
    let salt = argon2::password_hash::SaltString::encode_b64(b"tessera-test-salt").unwrap();
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// A compact JWS with an arbitrary header, signed ES256 with `key` (or unsigned, for
/// `alg: none`). For tokens `sign_compact` refuses to make.
pub fn raw_jws(header: &Value, claims: &Value, key: Option<&SigningKey>) -> String {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let si = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let Some(key) = key else {
        return format!("{si}.");
    };
    let rng = ring::rand::SystemRandom::new();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.pkcs8(), &rng).unwrap();
    let sig = kp.sign(&rng, si.as_bytes()).unwrap();
    format!("{si}.{}", b64url(sig.as_ref()))
}

/// Decodes the JSON of a compact JWS segment (0 = header, 1 = payload) without
/// checking anything.
pub fn jws_part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&tessera::jose::b64url_decode(seg).unwrap()).unwrap()
}

/// A loopback HTTPS listener (the harness PKI's `localhost` certificate) for servers the
/// tests play: bundle endpoints, OIDC issuers. Bind first (to build URLs from the
/// port), then hand the router to `serve`.
pub struct HttpsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl HttpsListener {
    pub async fn bind(pki: &TestPki) -> Self {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self {
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Serves `app` over HTTP/1.1 and HTTP/2 until the test ends.
    pub fn serve(self, app: axum::Router) {
        let Self { listener, acceptor } = self;
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
    }
}

/// Everything a server needs on disk, before it starts.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub settings: Settings,
    pub clock: Arc<ManualClock>,
    /// JWT-SVID authority of example.org.
    pub example_key: SigningKey,
    /// JWT-SVID authority of other.org, published under the same kid as example.org's.
    pub other_key: SigningKey,
    pub admin_token: String,
    pub static_secret: String,
    pub pki: TestPki,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let example_key = SigningKey::generate(SigningAlg::ES256).unwrap();
        let other_key = SigningKey::generate(SigningAlg::ES256).unwrap();
        std::fs::create_dir_all(p.join("bundles")).unwrap();
        std::fs::write(
            p.join("bundles/example.org.json"),
            bundle_json(&example_key, example_key.kid()),
        )
        .unwrap();
        // other.org deliberately reuses example.org's kid for its own key.
        std::fs::write(
            p.join("bundles/other.org.json"),
            bundle_json(&other_key, example_key.kid()),
        )
        .unwrap();
        std::fs::write(p.join("policy.toml"), POLICY).unwrap();
        let admin_token = format!(
            "adm-{}",
            b64url(&tessera::jose::random_bytes::<24>().unwrap())
        );
        write_secret(
            &p.join("admin-token.sha256"),
            format!("{}\n", sha256_hex(&admin_token)),
        );
        let static_secret = format!(
            "sec-{}",
            b64url(&tessera::jose::random_bytes::<24>().unwrap())
        );
        let pki = pki();
        std::fs::write(p.join("tls.crt"), &pki.cert_pem).unwrap();
        write_secret(&p.join("tls.key"), &pki.key_pem);
        std::fs::write(p.join("ca.crt"), &pki.ca_pem).unwrap();
        let config = format!(
            r#"issuer = "{ISSUER}"
policy_file = "policy.toml"

[server]
listen = "127.0.0.1:0"
tls_cert = "tls.crt"
tls_key = "tls.key"

[admin]
listen = "127.0.0.1:0"
allowed = ["spiffe://example.org/ops/*"]
token_hash_file = "admin-token.sha256"

[signing]
key_dir = "keys"

[store]
backend = "embedded"
path = "store.redb"

[[trust_domain]]
name = "example.org"
bundle_file = "bundles/example.org.json"

[[trust_domain]]
name = "other.org"
bundle_file = "bundles/other.org.json"

[introspection]
allowed = ["spiffe://example.org/ns/rs/sa/*"]

[[introspection.client]]
id = "{STATIC_CLIENT}"
secret_hash = "{}"

[audit]
file = "audit.jsonl"
"#,
            argon2id_hash(&static_secret)
        );
        let config_path = p.join("tessera.toml");
        std::fs::write(&config_path, config).unwrap();
        let settings = tessera::config::load(&config_path, &[]).unwrap();
        Self {
            dir,
            config_path,
            settings,
            clock: ManualClock::new(T0),
            example_key,
            other_key,
            admin_token,
            static_secret,
            pki,
        }
    }

    /// The store is Redis at `url` under `key_prefix`; the clock is set to real time
    /// because Redis expires keys on its own clock.
    pub fn on_redis(mut self, url: &str, key_prefix: &str, min_replicas_ack: u32) -> Self {
        self.clock.set(tessera::clock::SystemClock.now());
        self.settings.redis = Some(tessera::config::RedisSettings {
            url: url.to_owned(),
            key_prefix: format!("{key_prefix}{}:", self.clock.now()),
            min_replicas_ack,
        });
        self
    }

    /// Another replica of this environment: same configuration, keys, bundles, clock
    /// and store, its own directory, listeners and audit buffer.
    pub fn replica(&self) -> Env {
        let copy = |k: &SigningKey| SigningKey::from_pkcs8(k.alg(), k.pkcs8()).unwrap();
        Env {
            dir: tempfile::tempdir().unwrap(),
            config_path: self.config_path.clone(),
            settings: self.settings.clone(),
            clock: self.clock.clone(),
            example_key: copy(&self.example_key),
            other_key: copy(&self.other_key),
            admin_token: self.admin_token.clone(),
            static_secret: self.static_secret.clone(),
            pki: TestPki {
                ca_pem: self.pki.ca_pem.clone(),
                cert_pem: self.pki.cert_pem.clone(),
                key_pem: self.pki.key_pem.clone(),
            },
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// A JWT-SVID for `id` (example.org, or other.org with its own key), audience the
    /// issuer, valid `ttl` seconds from the manual clock's now.
    pub fn svid(&self, id: &str, ttl: i64) -> String {
        let now = self.now();
        self.svid_claims(&json!({"sub": id, "aud": [ISSUER], "iat": now, "exp": now + ttl}))
    }

    /// Signs `claims` with the authority of the trust domain named in `sub`.
    pub fn svid_claims(&self, claims: &Value) -> String {
        let sub = claims["sub"].as_str().unwrap_or_default();
        if sub.starts_with("spiffe://other.org/") {
            let header = json!({"typ": "JWT", "alg": "ES256", "kid": self.example_key.kid()});
            raw_jws(&header, claims, Some(&self.other_key))
        } else {
            self.example_key.sign_compact("JWT", claims).unwrap()
        }
    }

    /// Builds the service (no socket): for router tests.
    pub async fn service(&self) -> (Arc<Service>, SharedBuf) {
        let audit = SharedBuf::default();
        let svc = app::build_service(
            self.settings.clone(),
            self.clock.clone(),
            Some(Arc::new(JsonLines::new(Box::new(audit.clone())))),
        )
        .await
        .unwrap();
        (svc, audit)
    }

    /// Starts the real server with TLS on two 127.0.0.1:0 listeners.
    pub async fn start(self) -> Server {
        self.start_with(tessera::http::server::ServerLimits::default())
            .await
    }

    /// As `start`, with explicit connection and request limits.
    pub async fn start_with(self, limits: tessera::http::server::ServerLimits) -> Server {
        let (svc, audit) = self.service().await;
        let localhost = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let public = app::bind(localhost).await.unwrap();
        let admin = app::bind(localhost).await.unwrap();
        let running = app::start_with_limits(public, admin, svc.clone(), limits).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.pki.ca_pem.as_bytes()).unwrap(),
            )
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap();
        Server {
            public: format!("https://127.0.0.1:{}", running.public_addr.port()),
            admin: format!("https://127.0.0.1:{}", running.admin_addr.port()),
            running: Some(running),
            svc,
            audit,
            client,
            env: self,
            counter: AtomicU64::new(0),
            audited: Mutex::new(Vec::new()),
            responses: Mutex::new(Vec::new()),
        }
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// An RFC 8693 exchange form for a JWT-SVID subject token.
pub fn exchange_form<'a>(svid: &'a str, audience: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", svid),
        ("subject_token_type", JWT_TYPE),
        ("audience", audience),
    ]
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// JWT-SVID client assertion in the form (jwt-spiffe).
    Assertion(&'a str),
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The `x-request-id` sent with the request.
    pub rid: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn access_token(&self) -> String {
        assert_eq!(self.status, 200, "expected a token: {}", self.text);
        self.json()["access_token"].as_str().unwrap().to_owned()
    }
    /// Asserts an OAuth error response.
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(
            (self.status, self.error().as_str()),
            (status, error),
            "body: {}",
            self.text
        );
    }
}

pub struct Server {
    pub env: Env,
    pub running: Option<Running>,
    pub svc: Arc<Service>,
    pub audit: SharedBuf,
    pub client: reqwest::Client,
    pub public: String,
    pub admin: String,
    counter: AtomicU64,
    /// Request ids of audited requests sent through the harness.
    audited: Mutex<Vec<String>>,
    /// Every response seen (path, status, body), for the secret scan.
    pub responses: Mutex<Vec<(String, u16, String)>>,
}

impl Server {
    pub fn clock(&self) -> &ManualClock {
        &self.env.clock
    }

    pub fn svid(&self, id: &str, ttl: i64) -> String {
        self.env.svid(id, ttl)
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        auth: Auth<'_>,
        form: Option<Vec<(String, String)>>,
        json_body: Option<Value>,
        audited: bool,
    ) -> Resp {
        let rid = format!("req-{}", self.counter.fetch_add(1, Ordering::SeqCst));
        let mut req = self
            .client
            .request(method, url.as_str())
            .header("x-request-id", &rid);
        let mut form = form;
        match auth {
            Auth::None => {}
            Auth::Assertion(a) => {
                let f = form.get_or_insert_with(Vec::new);
                f.push(("client_assertion_type".into(), JWT_SPIFFE.into()));
                f.push(("client_assertion".into(), a.into()));
            }
            Auth::Basic(id, secret) => req = req.basic_auth(id, Some(secret)),
            Auth::Bearer(t) => req = req.bearer_auth(t),
        }
        if let Some(f) = form {
            req = req.form(&f);
        }
        if let Some(b) = json_body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        if audited {
            self.audited.lock().unwrap().push(rid.clone());
        }
        let path = url.split_once("127.0.0.1").map_or("", |(_, p)| p);
        let path = path
            .split_once('/')
            .map_or(String::new(), |(_, p)| format!("/{p}"));
        self.responses
            .lock()
            .unwrap()
            .push((path, status, text.clone()));
        Resp {
            status,
            headers,
            text,
            rid,
        }
    }

    /// POST a form to a public endpoint (`/token`, `/introspect`, `/revoke`).
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)], auth: Auth<'_>) -> Resp {
        let form = form
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.send(
            Method::POST,
            format!("{}{path}", self.public),
            auth,
            Some(form),
            None,
            true,
        )
        .await
    }

    /// Unaudited public GET (metadata, JWKS, health).
    pub async fn get(&self, path: &str) -> Resp {
        self.send(
            Method::GET,
            format!("{}{path}", self.public),
            Auth::None,
            None,
            None,
            false,
        )
        .await
    }

    /// RFC 8693 exchange of a JWT-SVID.
    pub async fn exchange(&self, svid: &str, audience: &str, scope: Option<&str>) -> Resp {
        let mut form = exchange_form(svid, audience);
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.post_form("/token", &form, Auth::None).await
    }

    /// Mints a fresh SVID for `id` and exchanges it for a token to `audience`.
    pub async fn token_for(&self, id: &str, audience: &str, scope: Option<&str>) -> String {
        let svid = self.svid(id, 3600);
        self.exchange(&svid, audience, scope).await.access_token()
    }

    /// Introspection authenticated with a JWT-SVID assertion of the resource server.
    pub async fn introspect(&self, token: &str) -> Resp {
        let rs = self.svid(RS, 300);
        self.post_form("/introspect", &[("token", token)], Auth::Assertion(&rs))
            .await
    }

    pub async fn introspect_as(&self, token: &str, auth: Auth<'_>) -> Resp {
        self.post_form("/introspect", &[("token", token)], auth)
            .await
    }

    /// Whether introspection reports `token` active (asserting the exact inactive shape).
    pub async fn active(&self, token: &str) -> bool {
        let r = self.introspect(token).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json();
        if v["active"] == json!(false) {
            assert_eq!(
                v,
                json!({"active": false}),
                "inactive answers carry nothing else"
            );
            false
        } else {
            assert_eq!(v["active"], json!(true), "{}", r.text);
            true
        }
    }

    pub async fn revoke(&self, token: &str, auth: Auth<'_>) -> Resp {
        self.post_form("/revoke", &[("token", token)], auth).await
    }

    /// Admin call with the admin bearer token.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let token = self.env.admin_token.clone();
        self.admin_as(method, path, body, Auth::Bearer(&token))
            .await
    }

    pub async fn admin_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        auth: Auth<'_>,
    ) -> Resp {
        self.send(
            method,
            format!("{}{path}", self.admin),
            auth,
            None,
            body,
            true,
        )
        .await
    }

    pub async fn jwks(&self) -> Value {
        let r = self.get("/jwks.json").await;
        assert_eq!(r.status, 200);
        r.json()
    }

    pub async fn jwks_kids(&self) -> Vec<String> {
        self.jwks().await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Parsed audit lines.
    pub fn audit_lines(&self) -> Vec<Value> {
        self.audit
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The one audit line of a request; fails unless there is exactly one.
    pub fn audit_of(&self, rid: &str) -> Value {
        let mut found: Vec<Value> = self
            .audit_lines()
            .into_iter()
            .filter(|l| l["request_id"] == rid)
            .collect();
        assert_eq!(found.len(), 1, "audit lines for {rid}: {found:?}");
        found.remove(0)
    }

    pub fn assert_audit(&self, r: &Resp, event: &str, outcome: &str) {
        let line = self.audit_of(&r.rid);
        assert_eq!(
            (line["event"].as_str(), line["outcome"].as_str()),
            (Some(event), Some(outcome)),
            "{line}"
        );
    }

    /// Every audited request sent through this harness produced exactly one audit line.
    pub fn assert_every_request_audited_once(&self) {
        let lines = self.audit_lines();
        let rids = self.audited.lock().unwrap().clone();
        assert!(!rids.is_empty());
        for rid in &rids {
            let n = lines.iter().filter(|l| l["request_id"] == *rid).count();
            assert_eq!(n, 1, "request {rid} has {n} audit lines");
        }
        for l in &lines {
            assert!(
                rids.iter().any(|r| l["request_id"] == *r),
                "audit line without a request of ours: {l}"
            );
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}
