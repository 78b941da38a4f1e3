#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! OIDC subject tokens end to end (issue 5): a real OIDC issuer run by the test on
//! loopback HTTPS (axum behind tokio-rustls, the harness's rcgen CA given to Tessera as
//! the issuer's `ca_file`) that serves discovery and a JWKS, can rotate its key, can go
//! down and counts requests; a real Tessera in front of it.

mod common;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use common::{Env, HttpsListener, JWT_TYPE, Server, TOKEN_EXCHANGE, jws_part, raw_jws};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera::jose::{SigningAlg, SigningKey, b64url, random_bytes};

const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const K8S_AUD: &str = "tessera";
const DEPLOY: &str = "https://deploy.example.org";

/// What the fake issuer serves; the test changes it while Tessera runs.
struct IssuerState {
    /// The `issuer` its discovery document claims (normally its own URL).
    claimed_issuer: Mutex<String>,
    keys: Mutex<Vec<Arc<SigningKey>>>,
    cache_control: Mutex<String>,
    up: AtomicBool,
    discovery_hits: AtomicU64,
    jwks_hits: AtomicU64,
}

#[derive(Clone)]
struct FakeIssuer {
    url: String,
    state: Arc<IssuerState>,
}

impl FakeIssuer {
    /// An HTTPS issuer at `https://localhost:PORT/<path>` with one ES256 key.
    async fn start(env: &Env, path: &str) -> Self {
        let listener = HttpsListener::bind(&env.pki).await;
        let url = format!("https://localhost:{}/{path}", listener.port());
        let state = Arc::new(IssuerState {
            claimed_issuer: Mutex::new(url.clone()),
            keys: Mutex::new(vec![Arc::new(
                SigningKey::generate(SigningAlg::ES256).unwrap(),
            )]),
            cache_control: Mutex::new("max-age=300".into()),
            up: AtomicBool::new(true),
            discovery_hits: AtomicU64::new(0),
            jwks_hits: AtomicU64::new(0),
        });
        let (s1, s2) = (state.clone(), state.clone());
        let jwks_url = format!("{url}/keys");
        let app = Router::new()
            .route(
                &format!("/{path}/.well-known/openid-configuration"),
                get(move || {
                    let s = s1.clone();
                    let jwks_url = jwks_url.clone();
                    async move {
                        s.discovery_hits.fetch_add(1, Ordering::SeqCst);
                        if !s.up.load(Ordering::SeqCst) {
                            return (StatusCode::SERVICE_UNAVAILABLE, String::new());
                        }
                        let doc = json!({
                            "issuer": *s.claimed_issuer.lock().unwrap(),
                            "jwks_uri": jwks_url,
                            "id_token_signing_alg_values_supported": ["ES256"],
                        });
                        (StatusCode::OK, doc.to_string())
                    }
                }),
            )
            .route(
                &format!("/{path}/keys"),
                get(move || {
                    let s = s2.clone();
                    async move {
                        s.jwks_hits.fetch_add(1, Ordering::SeqCst);
                        let mut h = HeaderMap::new();
                        if !s.up.load(Ordering::SeqCst) {
                            return (StatusCode::SERVICE_UNAVAILABLE, h, String::new());
                        }
                        h.insert(
                            header::CACHE_CONTROL,
                            s.cache_control.lock().unwrap().parse().unwrap(),
                        );
                        let keys: Vec<Value> = s
                            .keys
                            .lock()
                            .unwrap()
                            .iter()
                            .map(|k| Value::Object(k.public_jwk()))
                            .collect();
                        (StatusCode::OK, h, json!({ "keys": keys }).to_string())
                    }
                }),
            );
        listener.serve(app);
        Self { url, state }
    }

    fn key(&self) -> Arc<SigningKey> {
        self.state.keys.lock().unwrap()[0].clone()
    }

    /// A token signed with the issuer's current key, `claims` merged over defaults.
    fn token(&self, env: &Env, claims: Value) -> String {
        let now = env.now();
        let mut c = json!({"iss": self.url, "aud": [K8S_AUD], "iat": now, "exp": now + 600});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        self.key().sign_compact("JWT", &c).unwrap()
    }

    fn jwks_hits(&self) -> u64 {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn rotate(&self) -> Arc<SigningKey> {
        let k = Arc::new(SigningKey::generate(SigningAlg::ES256).unwrap());
        *self.state.keys.lock().unwrap() = vec![k.clone()];
        k
    }
}

/// Kubernetes projected service-account token claims (the shape of a real one).
fn k8s_claims(namespace: &str, sa: &str) -> Value {
    json!({
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": sa, "uid": "4b8e2f6c-1d3a-4c5e-9f7a-2b6d8e0c1a3f"},
            "pod": {"name": format!("{sa}-7d9f8c6b5-x2k4q"), "uid": "9a1b"}
        },
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}")],
    })
}

const OIDC_POLICY: &str = r#"
[[rule]]
id = "k8s-payments"
match.issuer = "ISSUER_K8S"
match.claims = { "kubernetes.io.namespace" = "payments", "kubernetes.io.serviceaccount.name" = "api-*" }
grant.audiences = ["https://ledger.example.org"]
grant.scopes = ["ledger:read"]
grant.default_scopes = ["ledger:read"]

[[rule]]
id = "k8s-deployers"
match.issuer = "ISSUER_K8S"
match.claims = { groups = "system:serviceaccounts:deploy" }
grant.audiences = ["https://deploy.example.org"]
grant.scopes = ["deploy:write"]

[[rule]]
id = "ci-deploy"
match.issuer = "ISSUER_CI"
match.claims = { repository = "acme/deploy", ref = "refs/heads/main" }
grant.audiences = ["https://deploy.example.org"]
grant.scopes = ["deploy:write"]
grant.max_ttl = "10m"
"#;

struct Setup {
    server: Server,
    k8s: FakeIssuer,
    ci: FakeIssuer,
}

/// Tessera with two OIDC issuers: "k8s" (discovery, ca_file, cooldown 30 s, max key
/// age 10 min) and "ci" (`one_time`), plus the harness's SPIFFE setup.
async fn setup() -> Setup {
    let mut env = Env::new();
    let k8s = FakeIssuer::start(&env, "k8s").await;
    let ci = FakeIssuer::start(&env, "ci").await;
    let policy = format!(
        "{}{}",
        common::POLICY,
        OIDC_POLICY
            .replace("ISSUER_K8S", &k8s.url)
            .replace("ISSUER_CI", &ci.url)
    );
    std::fs::write(env.path().join("policy.toml"), policy).unwrap();
    let mut config = std::fs::read_to_string(&env.config_path).unwrap();
    config.push_str(&format!(
        r#"
[[oidc_issuer]]
issuer = "{}"
audiences = ["{K8S_AUD}"]
ca_file = "ca.crt"
max_key_age = "10m"

[[oidc_issuer]]
issuer = "{}"
audiences = ["{K8S_AUD}"]
ca_file = "ca.crt"
one_time = true
"#,
        k8s.url, ci.url
    ));
    std::fs::write(&env.config_path, config).unwrap();
    env.settings = tessera::config::load(&env.config_path, &[]).unwrap();
    let server = env.start().await;
    Setup { server, k8s, ci }
}

async fn exchange_typed(s: &Server, token: &str, ty: &str, audience: &str) -> common::Resp {
    s.post_form(
        "/token",
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", ty),
            ("audience", audience),
        ],
        common::Auth::None,
    )
    .await
}

async fn exchange(s: &Server, token: &str, audience: &str) -> common::Resp {
    exchange_typed(s, token, JWT_TYPE, audience).await
}

/// Waits until the background prefetch at start-up has finished (one JWKS request).
async fn settle(issuer: &FakeIssuer) {
    for _ in 0..200 {
        if issuer.jwks_hits() >= 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the issuer's keys were never fetched");
}

#[tokio::test]
async fn kubernetes_token_is_exchanged_for_both_token_types() {
    let Setup { server: s, k8s, .. } = setup().await;
    let env = &s.env;
    let token = k8s.token(env, k8s_claims("payments", "api-server"));
    for ty in [JWT_TYPE, ID_TOKEN_TYPE] {
        let r = exchange_typed(&s, &token, ty, common::LEDGER).await;
        assert_eq!(r.status, 200, "{ty}: {}", r.text);
        let claims = jws_part(&r.access_token(), 1);
        // Contract §2: an OIDC subject is `<iss>#<sub>`.
        assert_eq!(
            claims["sub"],
            format!("{}#system:serviceaccount:payments:api-server", k8s.url)
        );
        assert_eq!(claims["client_id"], claims["sub"]);
        assert_eq!(claims["scope"], "ledger:read");
        assert_eq!(claims["aud"], common::LEDGER);
        // Never outlives the subject token (exp = now + 600) nor the 5 min default.
        assert_eq!(claims["exp"].as_i64().unwrap() - env.now(), 300);
        s.assert_audit(&r, "token.issued", "success");
        let ev = s.audit_of(&r.rid);
        assert_eq!(ev["issuer_kind"], "oidc");
        assert_eq!(ev["rule"], "k8s-payments");
    }
    // The issued token introspects as active with the mapped subject.
    let r = exchange(&s, &token, common::LEDGER).await;
    let intro = s.introspect(&r.access_token()).await.json();
    assert_eq!(intro["active"], true);
    assert_eq!(
        intro["sub"],
        format!("{}#system:serviceaccount:payments:api-server", k8s.url)
    );
    s.assert_every_request_audited_once();
}

#[tokio::test]
async fn claim_rules_accept_and_reject() {
    let Setup { server: s, k8s, .. } = setup().await;
    let env = &s.env;
    let ok = |r: &common::Resp| assert_eq!(r.status, 200, "{}", r.text);
    // Glob on a nested claim, and "array contains" on groups.
    ok(&exchange(
        &s,
        &k8s.token(env, k8s_claims("payments", "api-v2")),
        common::LEDGER,
    )
    .await);
    ok(&exchange(&s, &k8s.token(env, k8s_claims("deploy", "runner")), DEPLOY).await);
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "wrong namespace",
            k8s.token(env, k8s_claims("web", "api-server")),
            common::LEDGER,
            400,
            "invalid_target",
        ),
        (
            "service account outside the glob",
            k8s.token(env, k8s_claims("payments", "worker")),
            common::LEDGER,
            400,
            "invalid_target",
        ),
        (
            "group list without the deploy group",
            k8s.token(env, k8s_claims("payments", "api-server")),
            DEPLOY,
            400,
            "invalid_target",
        ),
        (
            "missing nested claim",
            k8s.token(
                env,
                json!({"sub": "system:serviceaccount:payments:api-server"}),
            ),
            common::LEDGER,
            400,
            "invalid_target",
        ),
        (
            "audience not configured for the issuer",
            k8s.token(env, json!({"sub": "x", "aud": ["someone-else"]})),
            common::LEDGER,
            400,
            "invalid_grant",
        ),
        (
            "expired",
            k8s.token(env, json!({"sub": "x", "exp": env.now() - 120})),
            common::LEDGER,
            400,
            "invalid_grant",
        ),
        (
            "missing exp",
            k8s.token(env, json!({"sub": "x", "exp": null})),
            common::LEDGER,
            400,
            "invalid_grant",
        ),
        (
            "issued in the future beyond leeway",
            k8s.token(env, json!({"sub": "x", "iat": env.now() + 600})),
            common::LEDGER,
            400,
            "invalid_grant",
        ),
        (
            "not yet valid",
            k8s.token(env, json!({"sub": "x", "nbf": env.now() + 600})),
            common::LEDGER,
            400,
            "invalid_grant",
        ),
        (
            "no sub",
            k8s.token(env, json!({"kubernetes.io": {"namespace": "payments"}})),
            common::LEDGER,
            400,
            "invalid_grant",
        ),
    ];
    for (name, token, aud, status, error) in cases {
        let r = exchange(&s, &token, aud).await;
        assert_eq!(r.status, status, "{name}: {}", r.text);
        assert_eq!(r.error(), error, "{name}: {}", r.text);
        assert!(!r.text.contains(&token), "{name}: error echoes the token");
    }
    s.assert_every_request_audited_once();
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let Setup { server: s, k8s, .. } = setup().await;
    let env = &s.env;
    let now = env.now();
    let claims = {
        let mut c = k8s_claims("payments", "api-server");
        c["iss"] = json!(k8s.url);
        c["aud"] = json!(K8S_AUD);
        c["iat"] = json!(now);
        c["exp"] = json!(now + 600);
        c
    };
    let kid = k8s.key().kid().to_owned();
    let attacker = SigningKey::generate(SigningAlg::ES256).unwrap();
    let seg = |v: &Value| b64url(v.to_string().as_bytes());
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                seg(&json!({"alg": "none", "kid": kid})),
                seg(&claims)
            ),
        ),
        (
            "HS256 with the public key as secret",
            format!(
                "{}.{}.{}",
                seg(&json!({"alg": "HS256", "kid": kid})),
                seg(&claims),
                b64url(b"forged")
            ),
        ),
        (
            "signed by another key under the issuer's kid",
            raw_jws(
                &json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
                &claims,
                Some(&attacker),
            ),
        ),
        (
            "RS256 header on the EC key",
            format!(
                "{}.{}.{}",
                seg(&json!({"alg": "RS256", "kid": kid})),
                seg(&claims),
                b64url(&[7u8; 256])
            ),
        ),
        (
            "unknown crit",
            raw_jws(
                &json!({"alg": "ES256", "kid": kid, "crit": ["exp"], "exp": 1}),
                &claims,
                Some(&k8s.key()),
            ),
        ),
        (
            "our own access-token typ",
            raw_jws(
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}),
                &claims,
                Some(&k8s.key()),
            ),
        ),
    ];
    for (name, token) in cases {
        let r = exchange(&s, &token, common::LEDGER).await;
        assert_eq!(r.status, 400, "{name}: {}", r.text);
        assert_eq!(r.error(), "invalid_grant", "{name}: {}", r.text);
    }
    // The same claims signed properly pass: the cases above fail for the forgery alone.
    let good = raw_jws(
        &json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
        &claims,
        Some(&k8s.key()),
    );
    let r = exchange(&s, &good, common::LEDGER).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_with_one_refetch() {
    let Setup { server: s, k8s, .. } = setup().await;
    let env = &s.env;
    settle(&k8s).await;
    let before = k8s.jwks_hits();
    let r = exchange(
        &s,
        &k8s.token(env, k8s_claims("payments", "api-a")),
        common::LEDGER,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(k8s.jwks_hits(), before, "cached keys need no fetch");

    // The start-up fetch was an attempt too: rotations are seen once its cooldown passed.
    s.clock().advance(30);
    let new_key = k8s.rotate();
    let token = new_key
        .sign_compact(
            "JWT",
            &json!({"iss": k8s.url, "aud": K8S_AUD, "sub": "system:serviceaccount:payments:api-a",
                "exp": env.now() + 600, "kubernetes.io": {"namespace": "payments",
                "serviceaccount": {"name": "api-a"}}}),
        )
        .unwrap();
    let r = exchange(&s, &token, common::LEDGER).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(k8s.jwks_hits(), before + 1, "exactly one refetch");
    // And the new key is cached from then on.
    assert_eq!(exchange(&s, &token, common::LEDGER).await.status, 200);
    assert_eq!(k8s.jwks_hits(), before + 1);
}

#[tokio::test]
async fn unknown_kids_cause_at_most_one_fetch_per_cooldown() {
    let Setup { server: s, k8s, .. } = setup().await;
    let env = &s.env;
    settle(&k8s).await;
    let before = k8s.jwks_hits();
    let claims = json!({"iss": k8s.url, "aud": K8S_AUD, "sub": "x", "exp": env.now() + 600});
    let random_kid_token = || {
        let kid = b64url(&random_bytes::<12>().unwrap());
        raw_jws(
            &json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
            &claims,
            Some(&k8s.key()),
        )
    };
    s.clock().advance(30); // past the start-up fetch's cooldown
    let tokens: Vec<String> = (0..50).map(|_| random_kid_token()).collect();
    let results =
        futures_util::future::join_all(tokens.iter().map(|t| exchange(&s, t, common::LEDGER)))
            .await;
    for r in &results {
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.error(), "invalid_grant");
    }
    assert_eq!(
        k8s.jwks_hits(),
        before + 1,
        "50 unknown kids, one shared refetch"
    );
    // Inside the cooldown: no fetch at all.
    s.clock().advance(29);
    assert_eq!(
        exchange(&s, &random_kid_token(), common::LEDGER)
            .await
            .status,
        400
    );
    assert_eq!(k8s.jwks_hits(), before + 1);
    // After it: one more.
    s.clock().advance(1);
    assert_eq!(
        exchange(&s, &random_kid_token(), common::LEDGER)
            .await
            .status,
        400
    );
    assert_eq!(k8s.jwks_hits(), before + 2);
}

#[tokio::test]
async fn with_the_issuer_down_cached_keys_work_until_their_maximum_age() {
    let Setup { server: s, k8s, .. } = setup().await;
    settle(&k8s).await;
    k8s.state.up.store(false, Ordering::SeqCst);
    let claims = || k8s_claims("payments", "api-a");
    // The JWKS said max-age=300; 6 minutes later the keys are stale, the refetch fails,
    // and the last good keys still verify (max_key_age = 10m).
    s.clock().advance(360);
    let before = k8s.jwks_hits();
    let r = exchange(&s, &k8s.token(&s.env, claims()), common::LEDGER).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(k8s.jwks_hits() > before, "a stale set is refetched");
    let metrics = s.svc.render_metrics();
    assert!(
        metrics.contains(&format!(
            "tessera_oidc_jwks_fetch_failures_total{{issuer=\"{}\"}} 1",
            k8s.url
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tessera_oidc_key_age_seconds{{issuer=\"{}\"}} 360",
            k8s.url
        )),
        "{metrics}"
    );
    // Past the maximum age the keys are no longer trusted.
    s.clock().advance(250);
    let r = exchange(&s, &k8s.token(&s.env, claims()), common::LEDGER).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error(), "invalid_grant");
    // The issuer recovers: after the cooldown the next token fetches and passes.
    k8s.state.up.store(true, Ordering::SeqCst);
    s.clock().advance(30);
    let r = exchange(&s, &k8s.token(&s.env, claims()), common::LEDGER).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn an_unconfigured_issuer_is_refused_without_any_outbound_connection() {
    let Setup { server: s, k8s, .. } = setup().await;
    settle(&k8s).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicU64::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let evil = format!("https://127.0.0.1:{port}");
    let attacker = SigningKey::generate(SigningAlg::ES256).unwrap();
    let now = s.env.now();
    let claims = json!({"iss": evil, "aud": K8S_AUD, "sub": "system:serviceaccount:payments:api-a",
        "exp": now + 600, "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api-a"}}});
    let cases: Vec<(&str, Value)> = vec![
        ("plain", json!({"alg": "ES256", "kid": attacker.kid()})),
        (
            "jku",
            json!({"alg": "ES256", "kid": attacker.kid(), "jku": format!("{evil}/keys")}),
        ),
        (
            "x5u",
            json!({"alg": "ES256", "kid": attacker.kid(), "x5u": format!("{evil}/cert")}),
        ),
        (
            "embedded jwk",
            json!({"alg": "ES256", "kid": attacker.kid(), "jwk": Value::Object(attacker.public_jwk())}),
        ),
    ];
    for (name, header) in cases {
        let token = raw_jws(&header, &claims, Some(&attacker));
        let r = exchange(&s, &token, common::LEDGER).await;
        assert_eq!(r.status, 400, "{name}: {}", r.text);
        assert_eq!(r.error(), "invalid_grant", "{name}");
        assert!(
            r.text.contains("issuer is not trusted"),
            "{name}: {}",
            r.text
        );
    }
    // An issuer that differs from a configured one only by a trailing slash is another
    // issuer (exact match, OIDC Core §3.1.3.7).
    let token = k8s.token(
        &s.env,
        json!({"iss": format!("{}/", k8s.url), "sub": "system:serviceaccount:payments:api-a"}),
    );
    assert_eq!(
        exchange(&s, &token, common::LEDGER).await.error(),
        "invalid_grant"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "Tessera connected out"
    );
}

#[tokio::test]
async fn one_time_tokens_are_refused_on_replay() {
    let Setup { server: s, ci, k8s } = setup().await;
    let env = &s.env;
    let gha = |jti: Option<&str>| {
        let mut c = json!({"sub": "repo:acme/deploy:ref:refs/heads/main",
            "repository": "acme/deploy", "repository_owner": "acme", "ref": "refs/heads/main"});
        if let Some(j) = jti {
            c["jti"] = json!(j);
        }
        ci.token(env, c)
    };
    // With a jti: the first exchange passes, the second is refused.
    let token = gha(Some("job-1"));
    let r = exchange(&s, &token, DEPLOY).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        jws_part(&r.access_token(), 1)["sub"],
        format!("{}#repo:acme/deploy:ref:refs/heads/main", ci.url)
    );
    let r = exchange(&s, &token, DEPLOY).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error(), "invalid_grant");
    assert!(r.text.contains("already"), "{}", r.text);
    let ev = s.audit_of(&r.rid);
    assert_eq!(ev["reason"], "replayed");
    // A refused exchange does not spend the token: a wrong audience first, then success.
    let token = gha(Some("job-2"));
    assert_eq!(
        exchange(&s, &token, common::LEDGER).await.error(),
        "invalid_target"
    );
    assert_eq!(exchange(&s, &token, DEPLOY).await.status, 200);
    // Without a jti the token's hash is remembered; concurrent replays: exactly one wins.
    let token = gha(None);
    let results =
        futures_util::future::join_all((0..10).map(|_| exchange(&s, &token, DEPLOY))).await;
    let wins = results.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        wins,
        1,
        "{:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        results
            .iter()
            .all(|r| r.status == 200 || r.error() == "invalid_grant")
    );
    // The k8s issuer is not one_time: the same token works twice.
    let t = k8s.token(env, k8s_claims("payments", "api-a"));
    assert_eq!(exchange(&s, &t, common::LEDGER).await.status, 200);
    assert_eq!(exchange(&s, &t, common::LEDGER).await.status, 200);
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let Setup { server: s, k8s, .. } = setup().await;
    settle(&k8s).await;
    // Prefetch ran against the honest document. Now the issuer claims another name;
    // once the keys go stale the refetch must refuse it and keep the old keys only for
    // their maximum age.
    *k8s.state.claimed_issuer.lock().unwrap() = "https://evil.example.org".into();
    // Forget the discovered jwks_uri: the next JWKS fetch fails once, which forces
    // rediscovery.
    k8s.state.up.store(false, Ordering::SeqCst);
    s.clock().advance(301);
    let t = k8s.token(&s.env, k8s_claims("payments", "api-a"));
    assert_eq!(
        exchange(&s, &t, common::LEDGER).await.status,
        200,
        "stale keys still usable"
    );
    k8s.state.up.store(true, Ordering::SeqCst);
    let discovery_before = k8s.state.discovery_hits.load(Ordering::SeqCst);
    s.clock().advance(400); // past max_key_age (10m after the fetch)
    let t = k8s.token(&s.env, k8s_claims("payments", "api-a"));
    let r = exchange(&s, &t, common::LEDGER).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(k8s.state.discovery_hits.load(Ordering::SeqCst) > discovery_before);
}

#[tokio::test]
async fn a_static_jwks_file_needs_no_network() {
    let key = SigningKey::generate(SigningAlg::ES256).unwrap();
    let air_gapped = "https://kubernetes.default.svc.cluster.local";
    let mut env = Env::new();
    std::fs::write(
        env.path().join("k8s-sa.jwks"),
        json!({"keys": [Value::Object(key.public_jwk())]}).to_string(),
    )
    .unwrap();
    let mut policy = common::POLICY.to_owned();
    policy.push_str(&format!(
        r#"
[[rule]]
id = "air-gapped"
match.issuer = "{air_gapped}"
match.claims = {{ "kubernetes.io.namespace" = "payments" }}
grant.audiences = ["https://ledger.example.org"]
"#
    ));
    std::fs::write(env.path().join("policy.toml"), policy).unwrap();
    let mut config = std::fs::read_to_string(&env.config_path).unwrap();
    config.push_str(&format!(
        "\n[[oidc_issuer]]\nissuer = \"{air_gapped}\"\naudiences = [\"{K8S_AUD}\"]\njwks_file = \"k8s-sa.jwks\"\n"
    ));
    std::fs::write(&env.config_path, config).unwrap();
    env.settings = tessera::config::load(&env.config_path, &[]).unwrap();
    let s = env.start().await;
    let now = s.env.now();
    let token = key
        .sign_compact(
            "JWT",
            &json!({"iss": air_gapped, "aud": K8S_AUD, "sub": "system:serviceaccount:payments:api",
                "exp": now + 600, "kubernetes.io": {"namespace": "payments"}}),
        )
        .unwrap();
    let r = exchange(&s, &token, common::LEDGER).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Static keys do not age out.
    s.clock().advance(30 * 86_400);
    let token = key
        .sign_compact(
            "JWT",
            &json!({"iss": air_gapped, "aud": K8S_AUD, "sub": "system:serviceaccount:payments:api",
                "exp": s.env.now() + 600, "kubernetes.io": {"namespace": "payments"}}),
        )
        .unwrap();
    assert_eq!(exchange(&s, &token, common::LEDGER).await.status, 200);
}

/// The fenced block of docs/oidc.md whose info string is `<lang> <name>`.
fn doc_block(doc: &str, lang: &str, name: &str) -> String {
    let start = format!("```{lang} {name}\n");
    let from = doc
        .find(&start)
        .unwrap_or_else(|| panic!("docs/oidc.md has no {start:?} block"))
        + start.len();
    let len = doc[from..].find("```").unwrap();
    doc[from..from + len].to_owned()
}

/// Claims from the docs, re-issued by the test issuer and made current.
fn doc_claims(doc: &str, name: &str, issuer: &FakeIssuer, now: i64) -> String {
    let mut c: Value = serde_json::from_str(&doc_block(doc, "json", name)).unwrap();
    c["iss"] = json!(issuer.url);
    c["iat"] = json!(now);
    c["nbf"] = json!(now);
    c["exp"] = json!(now + 600);
    issuer.key().sign_compact("JWT", &c).unwrap()
}

#[tokio::test]
async fn documented_configurations_work() {
    const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    const GHA_ISSUER: &str = "https://token.actions.githubusercontent.com";
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/oidc.md")).unwrap();
    let mut env = Env::new();
    let k8s = FakeIssuer::start(&env, "k8s").await;
    let gha = FakeIssuer::start(&env, "gha").await;
    // The documented blocks, with the real issuers replaced by the loopback ones (which
    // are served under the test CA, hence the ca_file for GitHub's web-PKI issuer).
    let config = format!(
        "{}\n{}",
        doc_block(&doc, "toml", "k8s-config")
            .replace(K8S_ISSUER, &k8s.url)
            .replace(
                "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                "ca.crt"
            ),
        doc_block(&doc, "toml", "gha-config").replace(
            &format!("issuer = \"{GHA_ISSUER}\""),
            &format!("issuer = \"{}\"\nca_file = \"ca.crt\"", gha.url)
        ),
    );
    let k8s_policy = doc_block(&doc, "toml", "k8s-policy");
    let gha_policy = doc_block(&doc, "toml", "gha-policy");
    let policy = format!(
        "{}\n{}\n{}",
        common::POLICY,
        k8s_policy.replace(K8S_ISSUER, &k8s.url),
        gha_policy.replace(GHA_ISSUER, &gha.url)
    );
    std::fs::write(env.path().join("policy.toml"), policy).unwrap();
    let mut full = std::fs::read_to_string(&env.config_path).unwrap();
    full.push_str(&config);
    std::fs::write(&env.config_path, full).unwrap();
    env.settings = tessera::config::load(&env.config_path, &[]).unwrap();
    // The documented policies pass the lint as written (GitHub pinned to its owner).
    for p in [&k8s_policy, &gha_policy] {
        let compiled = tessera::policy::CompiledPolicy::from_toml(p).unwrap();
        assert!(compiled.lint(900).is_empty(), "{:?}", compiled.lint(900));
    }
    let s = env.start().await;
    let now = s.env.now();

    // Kubernetes: the documented claims, mapped subject as documented.
    let token = doc_claims(&doc, "k8s-claims", &k8s, now);
    let r = exchange(&s, &token, common::LEDGER).await;
    let sub = jws_part(&r.access_token(), 1)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sub, "k8s:payments/api");
    assert!(doc.contains("`sub` is `k8s:payments/api`"));

    // GitHub Actions: id_token type, scope, one_time.
    let token = doc_claims(&doc, "gha-claims", &gha, now);
    let form = |t: &str| {
        vec![
            ("grant_type", TOKEN_EXCHANGE.to_owned()),
            ("subject_token", t.to_owned()),
            ("subject_token_type", ID_TOKEN_TYPE.to_owned()),
            ("audience", DEPLOY.to_owned()),
            ("scope", "deploy:write".to_owned()),
        ]
    };
    let send = |t: String| {
        let s = &s;
        async move {
            let f = form(&t);
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            s.post_form("/token", &f, common::Auth::None).await
        }
    };
    let r = send(token.clone()).await;
    let claims = jws_part(&r.access_token(), 1);
    assert_eq!(
        claims["sub"],
        format!("{}#repo:acme/deploy:environment:production", gha.url)
    );
    assert_eq!(claims["scope"], "deploy:write");
    assert_eq!(claims["exp"].as_i64().unwrap() - now, 600);
    send(token).await.assert_error(400, "invalid_grant");
    // Another repository of the same owner is not let in.
    let mut c: Value = serde_json::from_str(&doc_block(&doc, "json", "gha-claims")).unwrap();
    c["iss"] = json!(gha.url);
    c["exp"] = json!(now + 600);
    c["repository"] = json!("acme/other");
    c["jti"] = json!("other-job");
    let r = send(gha.key().sign_compact("JWT", &c).unwrap()).await;
    r.assert_error(400, "invalid_target");
}
