#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! SPIFFE federation end to end: a real HTTPS bundle endpoint (axum behind tokio-rustls,
//! rcgen certificate) serving the bundle of `partner.org`, which the test rotates and
//! breaks while Tessera runs.

mod common;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use common::{Env, HttpsListener, ISSUER, LEDGER, POLICY, Server, bundle_json};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera::config::FederatedDomain;
use tessera::domain::TrustDomain;
use tessera::jose::{SigningAlg, SigningKey};

const PARTNER: &str = "spiffe://partner.org/ns/billing/sa/api";

/// What the endpoint answers: status and body, changeable while it runs.
#[derive(Clone)]
struct Endpoint {
    reply: Arc<Mutex<(u16, String)>>,
    hits: Arc<Mutex<u64>>,
    url: String,
}

impl Endpoint {
    fn serve(&self, status: u16, body: impl Into<String>) {
        *self.reply.lock().unwrap() = (status, body.into());
    }
    fn hits(&self) -> u64 {
        *self.hits.lock().unwrap()
    }
}

/// A SPIFFE bundle for `key` with a 1 s refresh hint.
fn partner_bundle(key: &SigningKey) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(&bundle_json(key, key.kid())).unwrap();
    doc["spiffe_refresh_hint"] = json!(1);
    doc.to_string()
}

/// An HTTPS bundle endpoint on 127.0.0.1:0 with the harness PKI's server certificate.
async fn bundle_endpoint(env: &Env, status: u16, body: String) -> Endpoint {
    let listener = HttpsListener::bind(&env.pki).await;
    let ep = Endpoint {
        reply: Arc::new(Mutex::new((status, body))),
        hits: Arc::new(Mutex::new(0)),
        url: format!("https://localhost:{}/bundle", listener.port()),
    };
    let state = ep.clone();
    let app = Router::new().route(
        "/bundle",
        get(move || {
            let state = state.clone();
            async move {
                *state.hits.lock().unwrap() += 1;
                let (code, body) = state.reply.lock().unwrap().clone();
                (StatusCode::from_u16(code).unwrap(), body)
            }
        }),
    );
    listener.serve(app);
    ep
}

/// Env with a `partner.org` trust domain federated from `ep` (1 s lower refresh bound)
/// and a policy rule for it.
async fn start_with_partner(env: Env, ep: &Endpoint) -> Server {
    let mut env = env;
    let policy = format!(
        "{POLICY}\n[[rule]]\nid = \"partner\"\nmatch.spiffe_id = \"spiffe://partner.org/ns/*/sa/*\"\ngrant.audiences = [\"{LEDGER}\"]\ngrant.scopes = [\"ledger:read\"]\n"
    );
    std::fs::write(env.path().join("policy.toml"), policy).unwrap();
    env.settings.federation.push(FederatedDomain {
        trust_domain: TrustDomain::parse("partner.org").unwrap(),
        url: ep.url.clone(),
        ca_file: Some(env.path().join("ca.crt")),
        allow_http: false,
    });
    env.settings.federation_min_refresh = Duration::from_secs(1);
    env.start().await
}

fn partner_svid(server: &Server, key: &SigningKey) -> String {
    let now = server.env.now();
    key.sign_compact(
        "JWT",
        &json!({"sub": PARTNER, "aud": [ISSUER], "iat": now, "exp": now + 600}),
    )
    .unwrap()
}

fn metric(server: &Server, name: &str) -> Option<i64> {
    let text = server.svc.render_metrics();
    let prefix = format!("{name}{{trust_domain=\"partner.org\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

/// Polls `cond` every 100 ms for up to 8 s.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..80 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Start-up fetch, rotation by refresh hint, and a broken endpoint (500, then garbage)
/// that keeps the last good bundle, is stale in /readyz and is counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_bundle_is_fetched_rotated_and_kept_when_the_endpoint_breaks() {
    let env = Env::new();
    let key1 = SigningKey::generate(SigningAlg::ES256).unwrap();
    let key2 = SigningKey::generate(SigningAlg::ES256).unwrap();
    let ep = bundle_endpoint(&env, 200, partner_bundle(&key1)).await;
    let server = start_with_partner(env, &ep).await;

    // Fetched at start: ready, and a partner.org JWT-SVID is exchanged.
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert!(ready.json()["warnings"].is_null(), "{}", ready.text);
    let r = server
        .exchange(&partner_svid(&server, &key1), LEDGER, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Another trust domain's key cannot sign for partner.org.
    let forged = server.env.example_key.sign_compact(
        "JWT",
        &json!({"sub": PARTNER, "aud": [ISSUER], "iat": server.env.now(), "exp": server.env.now() + 600}),
    );
    server
        .exchange(&forged.unwrap(), LEDGER, None)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(
        metric(&server, "tessera_bundle_refresh_failures_total"),
        Some(0)
    );
    assert!(metric(&server, "tessera_bundle_age_seconds").is_some());

    // The partner rotates: after a refresh (hint 1 s) the new key is accepted without
    // a restart, and the removed key is refused.
    ep.serve(200, partner_bundle(&key2));
    eventually("the rotated key to be accepted", || async {
        server
            .exchange(&partner_svid(&server, &key2), LEDGER, None)
            .await
            .status
            == 200
    })
    .await;
    server
        .exchange(&partner_svid(&server, &key1), LEDGER, None)
        .await
        .assert_error(400, "invalid_grant");

    // The endpoint fails with 500: the last good bundle still verifies, /readyz is
    // ready but reports partner.org stale, and the failure counter moves.
    ep.serve(500, "oops");
    eventually("a failed refresh to be counted", || async {
        metric(&server, "tessera_bundle_refresh_failures_total").unwrap() >= 1
    })
    .await;
    let r = server
        .exchange(&partner_svid(&server, &key2), LEDGER, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert!(
        ready.text.contains("partner.org") && ready.text.contains("stale"),
        "{}",
        ready.text
    );

    // Garbage with a 200 is a failure too (parse error), still keeping the bundle.
    let before = metric(&server, "tessera_bundle_refresh_failures_total").unwrap();
    ep.serve(200, "{\"keys\": [");
    eventually("a parse failure to be counted", || async {
        metric(&server, "tessera_bundle_refresh_failures_total").unwrap() > before
    })
    .await;
    let r = server
        .exchange(&partner_svid(&server, &key2), LEDGER, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The bundle age follows the injected clock.
    server.clock().advance(120);
    assert!(metric(&server, "tessera_bundle_age_seconds").unwrap() >= 120);

    // Fixed again: no longer stale.
    ep.serve(200, partner_bundle(&key2));
    eventually("staleness to clear", || async {
        server.get("/readyz").await.json()["warnings"].is_null()
    })
    .await;
    server.shutdown().await;
}

/// A failed first fetch does not stop start-up: partner.org is missing and /readyz is
/// 503 naming it, until the endpoint answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_first_fetch_is_not_ready_until_the_endpoint_answers() {
    let env = Env::new();
    let key = SigningKey::generate(SigningAlg::ES256).unwrap();
    let ep = bundle_endpoint(&env, 503, "later".to_owned()).await;
    let server = start_with_partner(env, &ep).await;
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(ready.text.contains("partner.org"), "{}", ready.text);
    server
        .exchange(&partner_svid(&server, &key), LEDGER, None)
        .await
        .assert_error(400, "invalid_grant");
    assert!(metric(&server, "tessera_bundle_age_seconds").is_none());
    assert!(ep.hits() >= 1);

    ep.serve(200, partner_bundle(&key));
    eventually("the trust domain to become ready", || async {
        server.get("/readyz").await.status == 200
    })
    .await;
    let r = server
        .exchange(&partner_svid(&server, &key), LEDGER, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    server.shutdown().await;
}

/// Without `ca_file` the web PKI roots are used, so the test CA's endpoint is not
/// trusted: the trust domain stays missing (a TLS failure is a fetch failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_outside_the_web_pki_is_not_trusted_without_ca_file() {
    let mut env = Env::new();
    let key = SigningKey::generate(SigningAlg::ES256).unwrap();
    let ep = bundle_endpoint(&env, 200, partner_bundle(&key)).await;
    env.settings.federation.push(FederatedDomain {
        trust_domain: TrustDomain::parse("partner.org").unwrap(),
        url: ep.url.clone(),
        ca_file: None,
        allow_http: false,
    });
    let server = env.start().await;
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(
        metric(&server, "tessera_bundle_refresh_failures_total"),
        Some(1)
    );
    server.shutdown().await;
}

/// Config validation: https only; http:// needs loopback AND dangerous_allow_http; one
/// source per trust domain; errors name the key.
#[test]
fn bundle_endpoint_config_is_checked() {
    let env = Env::new();
    let base = std::fs::read_to_string(&env.config_path).unwrap();
    let load = |entry: &str| {
        let path = env.path().join("fed.toml");
        std::fs::write(
            &path,
            format!("{base}\n[[trust_domain]]\nname = \"partner.org\"\n{entry}"),
        )
        .unwrap();
        tessera::config::load(&path, &[]).map_err(|e| e.to_string())
    };
    let ok =
        load("bundle_endpoint = \"https://partner.org/bundle\"\nca_file = \"ca.crt\"\n").unwrap();
    assert_eq!(ok.federation.len(), 1);
    assert_eq!(ok.federation[0].ca_file, Some(env.path().join("ca.crt")));
    assert!(!ok.federation[0].allow_http);
    assert_eq!(ok.federation_min_refresh, Duration::from_secs(30));

    let ok = load("bundle_endpoint = \"http://127.0.0.1:8080/b\"\ndangerous_allow_http = true\n")
        .unwrap();
    assert!(ok.federation[0].allow_http);
    load("bundle_endpoint = \"http://localhost/b\"\ndangerous_allow_http = true\n").unwrap();

    let cases: &[(&str, &str)] = &[
        (
            "bundle_endpoint = \"http://127.0.0.1/b\"\n",
            "dangerous_allow_http",
        ),
        (
            "bundle_endpoint = \"http://partner.org/b\"\ndangerous_allow_http = true\n",
            "loopback",
        ),
        ("bundle_endpoint = \"ftp://partner.org/b\"\n", "scheme"),
        ("bundle_endpoint = \"not a url\"\n", "not a URL"),
        (
            "bundle_endpoint = \"https://u:p@partner.org/b\"\n",
            "credentials",
        ),
        (
            "bundle_endpoint = \"https://partner.org/b\"\nbundle_file = \"b.json\"\n",
            "exactly one bundle source",
        ),
        (
            "bundle_file = \"b.json\"\nca_file = \"ca.crt\"\n",
            "trust_domain[2].ca_file",
        ),
        (
            "bundle_file = \"b.json\"\ndangerous_allow_http = true\n",
            "trust_domain[2].dangerous_allow_http",
        ),
        ("", "trust_domain[2].bundle_file"),
    ];
    for (entry, want) in cases {
        let err = load(entry).unwrap_err();
        assert!(err.contains(want), "{entry:?}: want {want:?}, got {err}");
        if !want.starts_with("trust_domain[") {
            assert!(err.contains("trust_domain[2]."), "{entry:?}: {err}");
        }
    }
    // The duplicate check spans sources.
    let err = load("bundle_endpoint = \"https://x.org/b\"\n[[trust_domain]]\nname = \"partner.org\"\nbundle_file = \"b.json\"\n").unwrap_err();
    assert!(err.contains("configured twice"), "{err}");
}
