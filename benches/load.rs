#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark may panic
//! Load benchmark: the release binary under sustained load, as a workload and a resource
//! server would meet it.
//!
//! ```text
//! cargo bench --bench load                        # 5 s per row, 50 revocation trials
//! LOAD_SECS=10 LOAD_LAG_TRIALS=200 cargo bench --bench load
//! LOAD_STORES=redis LOAD_ENDPOINTS=/token cargo bench --bench load   # a subset, e.g. for perf
//! ```
//!
//! It starts `tessera serve --config` as its own process on loopback (TLS 1.3, ES256
//! signing) twice: once on the embedded store, once on a private `redis-server` it starts
//! on a free port. Against each it drives
//! - `POST /token`: RFC 8693 exchange, an ES256 JWT-SVID in, an ES256 access token out;
//! - `POST /introspect`: one of 512 issued tokens, the caller authenticated by a JWT-SVID
//!   client assertion, with the revocation check on every request;
//!
//! at concurrency 16 and 64 over kept-alive HTTP/1.1 connections (one request in flight
//! per connection), then the reused-SVID exchange and introspection again over gRPC
//! (`TokenService`, one HTTP/2 connection and one call in flight per task;
//! `LOAD_ENDPOINTS=grpc` runs only those), and prints one table: requests/s, p50/p99 latency, the server's CPU
//! (from `/proc/<pid>/stat`, so the load generator's own CPU is not counted) and its
//! peak RSS (`VmHWM`). Every answer is checked: a 200 with a token, or `active:true`.
//!
//! Then the revocation lag across two replicas sharing the Redis store: a token is
//! issued on A and seen active on B; pollers introspect it on B without pause while the
//! admin API on A revokes its jti. An introspection that *started* after the admin call
//! returned and still said `active` is stale (the contract allows none); the lag is the
//! time from the admin call's start to B's first inactive answer.
//!
//! The load generator is our own (hyper + rustls on one current-thread runtime, so it
//! takes at most one of the machine's cores); everything it starts it stops by pid.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/redis_harness/mod.rs"]
mod redis_harness;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::clock::Clock as _;
use tessera::grpc::pb;
use tessera::grpc::pb::token_service_client::TokenServiceClient;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

const FORM: &str = "application/x-www-form-urlencoded";
const INTROSPECTION_TOKENS: usize = 512;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in clock ticks (USER_HZ = 100 on Linux).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Peak resident set size of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Where the revocation store lives for one server process.
#[derive(Clone)]
enum Store {
    Embedded,
    Redis { url: String, prefix: String },
}

/// A `tessera serve` child process, killed by pid on drop.
struct Tessera {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Tessera {
    async fn start(env: &common::Env, name: &str, store: &Store) -> Self {
        let (public, admin) = (free_addr(), free_addr());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(["serve", "--config"])
            .arg(&env.config_path)
            .env("TESSERA_SERVER__LISTEN", public.to_string())
            .env("TESSERA_ADMIN__LISTEN", admin.to_string())
            .env(
                "TESSERA_AUDIT__FILE",
                env.path().join(format!("audit-{name}.jsonl")),
            )
            .env(
                "TESSERA_STORE__PATH",
                env.path().join(format!("store-{name}.redb")),
            )
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Store::Redis { url, prefix } = store {
            cmd.env("TESSERA_STORE__BACKEND", "redis")
                .env("TESSERA_STORE__REDIS_URL", url)
                .env("TESSERA_STORE__KEY_PREFIX", prefix);
        }
        let child = cmd.spawn().unwrap();
        let server = Self {
            child,
            public,
            admin,
        };
        let client = https_client(env);
        let start = Instant::now();
        loop {
            let url = format!("https://{public}/readyz");
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tessera ({name}) did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tessera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn https_client(env: &common::Env) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(env.pki.ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// TLS to the server's public listener, offering one ALPN protocol (`http/1.1` for the
/// HTTP rows, `h2` for gRPC).
fn tls_connector(env: &common::Env, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls_pki_types::pem::PemObject::from_pem_slice(env.pki.ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A tonic client on its own HTTP/2 connection to `addr`.
async fn grpc_client(addr: SocketAddr, tls: &TlsConnector) -> TokenServiceClient<Channel> {
    let tls = tls.clone();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let tls = tls.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let stream = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    TokenServiceClient::new(channel)
}

/// One kept-alive HTTP/1.1 connection over TLS.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr, tls: &TlsConnector) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tls.connect(name, tcp).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender }
    }

    /// POSTs a form; returns the status and the body.
    async fn post(&mut self, path: &str, body: Bytes, bearer: Option<&str>) -> (u16, Bytes) {
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, FORM);
        if let Some(t) = bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.sender.ready().await.unwrap();
        let resp = self
            .sender
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }
}

fn form(pairs: &[(&str, &str)]) -> Bytes {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    Bytes::from(s.finish())
}

fn exchange_body(svid: &str) -> Bytes {
    form(&common::exchange_form(svid, common::LEDGER))
}

fn introspect_body(token: &str, assertion: &str) -> Bytes {
    form(&[
        ("token", token),
        ("client_assertion_type", common::JWT_SPIFFE),
        ("client_assertion", assertion),
    ])
}

fn is_token(status: u16, body: &[u8]) -> bool {
    status == 200 && body.starts_with(b"{\"access_token\":\"")
}

fn is_active(status: u16, body: &[u8]) -> bool {
    status == 200 && body.starts_with(b"{\"active\":true")
}

fn is_inactive(status: u16, body: &[u8]) -> bool {
    status == 200 && body == b"{\"active\":false}"
}

fn access_token(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["jti"].as_str().unwrap().to_owned()
}

/// What one row of load measured.
struct Measured {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
    server_cpu_pct: f64,
    client_cpu_pct: f64,
    redis_cpu_pct: Option<f64>,
}

struct Row {
    store: &'static str,
    endpoint: &'static str,
    concurrency: usize,
    m: Measured,
    peak_rss_mib: f64,
}

impl Row {
    /// Logs the row's rate as it is measured, and reads the server's peak RSS so far.
    fn new(
        store: &'static str,
        endpoint: &'static str,
        concurrency: usize,
        m: Measured,
        server_pid: u32,
    ) -> Self {
        eprintln!(
            "load: {store} {endpoint} c={concurrency}: {:.0}/s",
            m.per_sec
        );
        Self {
            store,
            endpoint,
            concurrency,
            m,
            peak_rss_mib: peak_rss_mib(server_pid),
        }
    }
}

/// Whether an answer is the expected success.
type Check = fn(u16, &[u8]) -> bool;

/// One connection's way to send the n-th request of a row and judge the answer.
trait Caller: Send + 'static {
    /// Sends request `n`; `Err` holds what came back when it was not the expected success.
    fn call(&mut self, n: usize) -> impl Future<Output = Result<(), String>> + Send;
}

/// A form POST over one kept-alive HTTP/1.1 connection.
struct HttpCaller {
    conn: Conn,
    path: &'static str,
    bodies: Arc<Vec<Bytes>>,
    check: Check,
}

impl Caller for HttpCaller {
    async fn call(&mut self, n: usize) -> Result<(), String> {
        let body = self.bodies[n % self.bodies.len()].clone();
        let (status, resp) = self.conn.post(self.path, body, None).await;
        if (self.check)(status, &resp) {
            Ok(())
        } else {
            Err(format!("{status} {}", String::from_utf8_lossy(&resp)))
        }
    }
}

/// What a gRPC row sends.
#[derive(Clone)]
enum GrpcCall {
    Exchange(pb::ExchangeRequest),
    /// Introspection of one of `tokens`, authenticated by a JWT-SVID in metadata.
    Introspect {
        tokens: Arc<Vec<String>>,
        assertion: MetadataValue<Ascii>,
    },
}

/// A unary call over one HTTP/2 connection (its own channel), one call in flight.
struct GrpcCaller {
    client: TokenServiceClient<Channel>,
    call: GrpcCall,
}

impl Caller for GrpcCaller {
    async fn call(&mut self, n: usize) -> Result<(), String> {
        match &self.call {
            GrpcCall::Exchange(req) => match self.client.exchange(req.clone()).await {
                Ok(r) if !r.get_ref().access_token.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            },
            GrpcCall::Introspect { tokens, assertion } => {
                let mut req = tonic::Request::new(pb::IntrospectRequest {
                    token: tokens[n % tokens.len()].clone(),
                    ..Default::default()
                });
                req.metadata_mut()
                    .insert("client-assertion", assertion.clone());
                match self.client.introspect(req).await {
                    Ok(r) if r.get_ref().active => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        }
    }
}

/// Drives the callers (one per connection) for `warmup + measure`; only the second
/// part counts.
async fn drive<C: Caller>(
    label: &str,
    callers: Vec<C>,
    warmup: Duration,
    measure: Duration,
    pids: (u32, Option<u32>),
) -> Measured {
    let concurrency = callers.len();
    let begin = Instant::now() + Duration::from_millis(20);
    let (measure_from, end) = (begin + warmup, begin + warmup + measure);
    let mut tasks = Vec::new();
    for (i, mut caller) in callers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut failed = 0u64;
            let mut first_failure = None;
            let mut n = i;
            tokio::time::sleep_until(begin.into()).await;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let answer = caller.call(n).await;
                n += concurrency;
                if t >= measure_from {
                    if answer.is_ok() {
                        let us = t.elapsed().as_micros();
                        latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else {
                        failed += 1;
                    }
                }
                if let Err(e) = answer
                    && first_failure.is_none()
                {
                    first_failure = Some(e);
                }
            }
            (latencies_us, failed, first_failure)
        }));
    }
    let me = std::process::id().to_string();
    let (server, redis) = (pids.0.to_string(), pids.1.map(|p| p.to_string()));
    tokio::time::sleep_until(measure_from.into()).await;
    let before = (
        cpu_ticks(&server),
        cpu_ticks(&me),
        redis.as_deref().map(cpu_ticks),
    );
    tokio::time::sleep_until(end.into()).await;
    let after = (
        cpu_ticks(&server),
        cpu_ticks(&me),
        redis.as_deref().map(cpu_ticks),
    );
    let mut latencies = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f, first) = t.await.unwrap();
        if let Some(first) = first {
            eprintln!("load: unexpected answer on {label}: {first}");
        }
        latencies.extend(l);
        failed += f;
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        f64::from(latencies.get(i).copied().unwrap_or(0)) / 1000.0
    };
    let secs = measure.as_secs_f64();
    // 1 tick = 10 ms; CPU% of one core over the measured window.
    let cpu = |b: u64, a: u64| (a - b) as f64 / secs;
    Measured {
        per_sec: latencies.len() as f64 / secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failed,
        server_cpu_pct: cpu(before.0, after.0),
        client_cpu_pct: cpu(before.1, after.1),
        redis_cpu_pct: before.2.zip(after.2).map(|(b, a)| cpu(b, a)),
    }
}

/// Exchanges one SVID on `server` and returns the access token.
async fn issue(conn: &mut Conn, svid_body: &Bytes) -> String {
    let (status, body) = conn.post("/token", svid_body.clone(), None).await;
    assert!(
        is_token(status, &body),
        "exchange failed: {status} {}",
        String::from_utf8_lossy(&body)
    );
    access_token(&body)
}

async fn measure_store(
    env: &common::Env,
    store_name: &'static str,
    store: &Store,
    redis_pid: Option<u32>,
    rows: &mut Vec<Row>,
) {
    let (warmup, measure) = (
        Duration::from_secs(1),
        Duration::from_secs(env_num("LOAD_SECS", 5)),
    );
    let server = Tessera::start(env, store_name, store).await;
    let tls = tls_connector(env, b"http/1.1");
    let svid = env.svid(common::PAYMENTS, 3600);
    let exchange = exchange_body(&svid);
    let assertion = env.svid(common::RS, 3600);
    let mut conn = Conn::open(server.public, &tls).await;
    let mut tokens = Vec::with_capacity(INTROSPECTION_TOKENS);
    for _ in 0..INTROSPECTION_TOKENS {
        tokens.push(issue(&mut conn, &exchange).await);
    }
    let introspections: Vec<Bytes> = tokens
        .iter()
        .map(|t| introspect_body(t, &assertion))
        .collect();
    // Three kinds of row: an exchange with a JWT-SVID never seen before (full ES256
    // verification, then signing), an exchange re-presenting one SVID (its verification
    // comes from the subject-token cache, as for a workload that exchanges its SVID for
    // several audiences), and introspection.
    let kinds: [(&'static str, &'static str, Check); 3] = [
        ("/token (new SVID each)", "/token", is_token),
        ("/token (SVID reused)", "/token", is_token),
        ("/introspect", "/introspect", is_active),
    ];
    let introspections = Arc::new(introspections);
    // LOAD_ENDPOINTS=/token (or /introspect) runs one endpoint's rows.
    let endpoints =
        std::env::var("LOAD_ENDPOINTS").unwrap_or_else(|_| "/token,/introspect,grpc".into());
    for (label, path, check) in kinds.into_iter().filter(|k| endpoints.contains(k.1)) {
        for concurrency in [16, 64] {
            let bodies = match label {
                "/introspect" => introspections.clone(),
                "/token (SVID reused)" => Arc::new(vec![exchange.clone()]),
                // More SVIDs than the row can send at 15,000/s, so none repeats.
                _ => Arc::new(
                    (0..15_000 * (warmup + measure).as_secs())
                        .map(|_| exchange_body(&env.svid(common::PAYMENTS, 3600)))
                        .collect(),
                ),
            };
            let n_bodies = bodies.len();
            let mut callers = Vec::with_capacity(concurrency);
            for _ in 0..concurrency {
                callers.push(HttpCaller {
                    conn: Conn::open(server.public, &tls).await,
                    path,
                    bodies: bodies.clone(),
                    check,
                });
            }
            let m = drive(label, callers, warmup, measure, (server.pid(), redis_pid)).await;
            if m.per_sec * (warmup + measure).as_secs_f64() > n_bodies as f64
                && label.contains("new SVID")
            {
                eprintln!("load: {label} sent more requests than it had SVIDs; some repeated");
            }
            rows.push(Row::new(store_name, label, concurrency, m, server.pid()));
        }
    }
    if !endpoints.contains("grpc") {
        return;
    }
    // The same exchange (SVID reused) and introspection over gRPC (contract §7): HTTP/2 on
    // the same TLS listener, one channel and one call in flight per connection.
    let grpc_tls = tls_connector(env, b"h2");
    let grpc_kinds = [
        (
            "gRPC Exchange (SVID reused)",
            GrpcCall::Exchange(pb::ExchangeRequest {
                subject_token: svid.clone(),
                subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
                audience: common::LEDGER.into(),
                ..Default::default()
            }),
        ),
        (
            "gRPC Introspect",
            GrpcCall::Introspect {
                tokens: Arc::new(tokens),
                assertion: assertion.parse().unwrap(),
            },
        ),
    ];
    for (label, call) in grpc_kinds {
        for concurrency in [16, 64] {
            let mut callers = Vec::with_capacity(concurrency);
            for _ in 0..concurrency {
                callers.push(GrpcCaller {
                    client: grpc_client(server.public, &grpc_tls).await,
                    call: call.clone(),
                });
            }
            let m = drive(label, callers, warmup, measure, (server.pid(), redis_pid)).await;
            rows.push(Row::new(store_name, label, concurrency, m, server.pid()));
        }
    }
}

struct LagTrial {
    stale: u64,
    polls_after_return: u64,
    lag: Duration,
    call: Duration,
}

/// `POST /admin/v1/revocations` for the token's jti; returns once it answered 201.
async fn revoke_jti(admin: &reqwest::Client, url: &str, admin_token: &str, token: &str) {
    let resp = admin
        .post(url)
        .bearer_auth(admin_token)
        .json(&serde_json::json!({"jti": jti_of(token), "reason": "load benchmark"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "revocation failed");
}

/// Revoke on A while pollers introspect on B; see the module comment. Also returns the
/// admin call's duration on idle replicas (no pollers), for comparison.
async fn revocation_lag(
    env: &common::Env,
    store: &Store,
    trials: u64,
) -> (Vec<LagTrial>, Vec<Duration>) {
    let a = Tessera::start(env, "replica-a", store).await;
    let b = Tessera::start(env, "replica-b", store).await;
    let tls = tls_connector(env, b"http/1.1");
    let exchange = exchange_body(&env.svid(common::PAYMENTS, 3600));
    let assertion = env.svid(common::RS, 3600);
    let mut on_a = Conn::open(a.public, &tls).await;
    // HTTP/1.1 like the pollers. With reqwest's default (HTTP/2 by ALPN) the admin call
    // on idle replicas took ~12 ms instead of ~0.4 ms here; see docs/benchmarks.md.
    let admin = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(env.pki.ca_pem.as_bytes()).unwrap())
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let admin_url = format!("https://{}/admin/v1/revocations", a.admin);
    // Warm the admin connection so the measured call is the revocation, not a handshake.
    admin
        .get(&admin_url)
        .bearer_auth(&env.admin_token)
        .send()
        .await
        .unwrap();
    let mut pollers = Vec::new();
    for _ in 0..4 {
        pollers.push(Conn::open(b.public, &tls).await);
    }
    let mut idle_calls = Vec::new();
    for _ in 0..20 {
        let token = issue(&mut on_a, &exchange).await;
        let start = Instant::now();
        revoke_jti(&admin, &admin_url, &env.admin_token, &token).await;
        idle_calls.push(start.elapsed());
    }
    let mut out = Vec::new();
    for _ in 0..trials {
        let token = issue(&mut on_a, &exchange).await;
        let body = introspect_body(&token, &assertion);
        let (status, resp) = pollers[0].post("/introspect", body.clone(), None).await;
        assert!(is_active(status, &resp), "B does not accept A's token");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for mut conn in pollers.drain(..) {
            let (body, stop) = (body.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, resp) = conn.post("/introspect", body.clone(), None).await;
                    answers.push((started, Instant::now(), status, resp));
                }
                (conn, answers)
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let call_start = Instant::now();
        revoke_jti(&admin, &admin_url, &env.admin_token, &token).await;
        let returned = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut trial = LagTrial {
            stale: 0,
            polls_after_return: 0,
            lag: Duration::MAX,
            call: returned - call_start,
        };
        for t in tasks {
            let (conn, answers) = t.await.unwrap();
            pollers.push(conn);
            for (started, ended, status, resp) in answers {
                let active = is_active(status, &resp);
                assert!(
                    active || is_inactive(status, &resp),
                    "unexpected introspection answer {status}"
                );
                if started >= returned {
                    trial.polls_after_return += 1;
                    trial.stale += u64::from(active);
                }
                if !active && ended > call_start {
                    trial.lag = trial.lag.min(ended - call_start);
                }
            }
        }
        out.push(trial);
    }
    (out, idle_calls)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test discovery
    }
    if !redis_harness::available("load benchmark (Redis rows)") {
        return;
    }
    let env = common::Env::new();
    // The child process runs on the system clock; SVIDs must be valid now.
    env.clock.set(tessera::clock::SystemClock.now());
    // LOAD_STORES=embedded (or redis) runs one store's rows, e.g. under a profiler.
    let stores = std::env::var("LOAD_STORES").unwrap_or_else(|_| "embedded,redis".into());
    let mut rows = Vec::new();
    if stores.contains("embedded") {
        measure_store(&env, "embedded", &Store::Embedded, None, &mut rows).await;
    }
    let redis = redis_harness::RedisServer::start();
    let store = Store::Redis {
        url: redis.url(),
        prefix: "bench:".into(),
    };
    if stores.contains("redis") {
        measure_store(&env, "redis", &store, redis.pid(), &mut rows).await;
    }
    let (trials, mut idle_calls) =
        revocation_lag(&env, &store, env_num("LOAD_LAG_TRIALS", 50).max(1)).await;

    println!(
        "\nTLS 1.3, HTTP/1.1 keep-alive (gRPC rows: HTTP/2), one request in flight per connection, {} s per row; \
         CPU in % of one core (the machine has {}).\n",
        env_num("LOAD_SECS", 5),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "| store | endpoint | conc. | req/s | p50 ms | p99 ms | failed | server CPU % | load gen CPU % | redis CPU % | server peak RSS MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let m = &r.m;
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {} | {:.1} |",
            r.store,
            r.endpoint,
            r.concurrency,
            m.per_sec,
            m.p50_ms,
            m.p99_ms,
            m.failed,
            m.server_cpu_pct,
            m.client_cpu_pct,
            m.redis_cpu_pct.map_or("–".into(), |c| format!("{c:.0}")),
            r.peak_rss_mib,
        );
    }
    let mut lags: Vec<Duration> = trials.iter().map(|t| t.lag).collect();
    let mut calls: Vec<Duration> = trials.iter().map(|t| t.call).collect();
    lags.sort_unstable();
    calls.sort_unstable();
    idle_calls.sort_unstable();
    let stale: u64 = trials.iter().map(|t| t.stale).sum();
    let after: u64 = trials.iter().map(|t| t.polls_after_return).sum();
    println!(
        "\nRevocation across two replicas sharing Redis ({} trials, 4 pollers on B): \
         stale answers after the admin call returned: {stale} of {after}; \
         admin call p50 {:.2} ms, max {:.2} ms (on idle replicas: p50 {:.2} ms); \
         revoke-start → first inactive on B p50 {:.2} ms, max {:.2} ms",
        trials.len(),
        ms(calls[calls.len() / 2]),
        ms(calls[calls.len() - 1]),
        ms(idle_calls[idle_calls.len() / 2]),
        ms(lags[lags.len() / 2]),
        ms(lags[lags.len() - 1]),
    );
    assert_eq!(stale, 0, "stale introspections after a revocation returned");
}
