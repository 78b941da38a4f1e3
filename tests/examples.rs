#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! The examples run against a real Tessera (HTTPS on 127.0.0.1:0, real keys): the
//! resource server's tower layer (JWKS cache and refetch, aud, scope, RFC 8705 binding,
//! optional introspection) and the exchange client (exchange, and renewal fetching the
//! rotated SVID again, from a file or from a fake SPIRE agent's Workload API).

mod common;

#[path = "../examples/resource_server.rs"]
#[allow(dead_code)]
mod resource_server;

#[path = "common/agent.rs"]
mod agent;

#[path = "../examples/exchange_client.rs"]
#[allow(dead_code)]
mod exchange_client;

use agent::{AgentState, serve_agent};
use common::mtls::{Leaf, X509Setup as Setup, leaf, x509_server as tessera};
use common::{
    BATCH, BATCH_JOB, ISSUER, LEDGER, PAYMENTS, PAYMENTS_WORKER, STATIC_CLIENT, Server, jws_part,
};
use reqwest::Method;
use resource_server::{IntrospectionAuth, TokenVerifier, VerifierConfig};
use serde_json::{Value, json};
use std::time::Duration;
use tessera::clock::{Clock as _, SystemClock};
use tessera::workload::pb;
use tokio::sync::watch;

fn verifier(srv: &Server, introspection: Option<IntrospectionAuth>) -> TokenVerifier {
    verifier_with_cooldown(srv, introspection, Duration::from_secs(3600))
}

fn verifier_with_cooldown(
    srv: &Server,
    introspection: Option<IntrospectionAuth>,
    refetch_cooldown: Duration,
) -> TokenVerifier {
    TokenVerifier::new(VerifierConfig {
        tessera_url: srv.public.clone(),
        issuer: ISSUER.into(),
        audience: LEDGER.into(),
        http: srv.client.clone(),
        refetch_cooldown,
        leeway: 5,
        introspection,
    })
}

/// Starts the example's server (TLS, client certificates requested) and returns its URL.
async fn resource_server(s: &Setup, verifier: TokenVerifier) -> String {
    let pki = &s.srv.env.pki;
    let tls = resource_server::tls_config(
        pki.cert_pem.as_bytes(),
        pki.key_pem.as_bytes(),
        s.example.pem.as_bytes(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(resource_server::serve(
        listener,
        tls,
        resource_server::app(verifier),
    ));
    url
}

fn client(s: &Setup, cert: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().add_root_certificate(
        reqwest::Certificate::from_pem(s.srv.env.pki.ca_pem.as_bytes()).unwrap(),
    );
    if let Some(l) = cert {
        b = b.identity(reqwest::Identity::from_pem(l.identity_pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Calls the resource server: (status, WWW-Authenticate, body).
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
) -> (u16, String, Value) {
    let mut req = http.request(method, format!("{url}/ledger"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

#[tokio::test]
async fn the_resource_server_verifies_tokens_locally() {
    let s = tessera().await;
    let v = verifier(&s.srv, None);
    let url = resource_server(&s, v.clone()).await;
    let http = client(&s, None);

    // A valid token: the handler sees the verified subject and scope.
    let read = s.srv.token_for(PAYMENTS, LEDGER, Some("ledger:read")).await;
    let (status, _, body) = call(&http, Method::GET, &url, Some(&read)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reader"], PAYMENTS);
    assert_eq!(body["scope"], "ledger:read");
    assert_eq!(v.jwks_fetches(), 1);

    // No token: a bare challenge (RFC 6750 §3.1).
    let (status, challenge, _) = call(&http, Method::GET, &url, None).await;
    assert_eq!(status, 401);
    assert!(
        challenge.starts_with("Bearer") && !challenge.contains("error="),
        "{challenge}"
    );

    // The write route needs ledger:write.
    let (status, challenge, body) = call(&http, Method::POST, &url, Some(&read)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    let write = s
        .srv
        .token_for(PAYMENTS, LEDGER, Some("ledger:write"))
        .await;
    let (status, _, body) = call(&http, Method::POST, &url, Some(&write)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["writer"], PAYMENTS);

    // Another audience's token is refused.
    let batch = s.srv.token_for(BATCH_JOB, BATCH, None).await;
    let (status, challenge, body) = call(&http, Method::GET, &url, Some(&batch)).await;
    assert_eq!(status, 401, "{body}");
    assert!(challenge.contains(r#"error="invalid_token""#));
    assert_eq!(body["error_description"], "token is for another audience");

    // A tampered signature is refused.
    let mut forged = read.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _, body) = call(&http, Method::GET, &url, Some(&forged)).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("invalid_token"))
    );

    // A JWT-SVID is an identity credential, not an access token (typ).
    let svid = s.srv.svid(PAYMENTS, 300);
    let (status, _, body) = call(&http, Method::GET, &url, Some(&svid)).await;
    assert_eq!(status, 401, "{body}");

    // An expired token: minted an hour ago with Tessera's clock set back.
    let now = SystemClock.now();
    s.srv.clock().set(now - 3600);
    let old = s.srv.token_for(PAYMENTS, LEDGER, Some("ledger:read")).await;
    s.srv.clock().set(now);
    let (status, _, body) = call(&http, Method::GET, &url, Some(&old)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error_description"], "token expired");

    // None of the refusals fetched the JWKS again (every kid was known).
    assert_eq!(v.jwks_fetches(), 1);
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_unknown_kids_wait_for_the_cooldown() {
    const COOLDOWN: Duration = Duration::from_secs(3);
    let s = tessera().await;
    let v = verifier_with_cooldown(&s.srv, None, COOLDOWN);
    let url = resource_server(&s, v.clone()).await;
    let http = client(&s, None);
    let first = s.srv.token_for(PAYMENTS, LEDGER, None).await;
    assert_eq!(call(&http, Method::GET, &url, Some(&first)).await.0, 200);
    assert_eq!(v.jwks_fetches(), 1);

    // One rotation: the new current key was already published as the next key, so the
    // cached JWKS verifies its tokens without a fetch.
    let rotate = || s.srv.admin(Method::POST, "/admin/v1/keys/rotate", None);
    assert_eq!(rotate().await.status, 200);
    let second = s.srv.token_for(PAYMENTS, LEDGER, None).await;
    assert_ne!(
        common::jws_part(&second, 0)["kid"],
        common::jws_part(&first, 0)["kid"]
    );
    assert_eq!(call(&http, Method::GET, &url, Some(&second)).await.0, 200);
    assert_eq!(v.jwks_fetches(), 1);

    // A second rotation: a key the cache has never seen. Once the cooldown since the
    // last fetch has passed, its first token triggers one refetch and is accepted.
    assert_eq!(rotate().await.status, 200);
    let third = s.srv.token_for(PAYMENTS, LEDGER, None).await;
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    let (status, _, body) = call(&http, Method::GET, &url, Some(&third)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(v.jwks_fetches(), 2, "one refetch for the new kid");

    // A made-up kid right after that fetch costs no fetch, and is refused.
    let forged = common::raw_jws(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": "made-up"}),
        &common::jws_part(&third, 1),
        None,
    );
    let (status, _, body) = call(&http, Method::GET, &url, Some(&forged)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error_description"], "signed by an unknown key");
    assert_eq!(v.jwks_fetches(), 2);
}

#[tokio::test]
async fn a_certificate_bound_token_needs_its_certificate() {
    let s = tessera().await;
    let url = resource_server(&s, verifier(&s.srv, None)).await;
    // The workload gets a certificate-bound token over mTLS (client_credentials).
    let cert = leaf(&s.example, &[PAYMENTS], |_| {});
    let with_cert = client(&s, Some(&cert));
    let resp = with_cert
        .post(format!("{}/token", s.srv.public))
        .form(&[("grant_type", "client_credentials"), ("audience", LEDGER)])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(common::jws_part(&token, 1)["cnf"]["x5t#S256"].is_string());

    // Presented with the same certificate: accepted.
    let (status, _, body) = call(&with_cert, Method::GET, &url, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    // Without a certificate, or with another workload's: refused.
    let (status, _, body) = call(&client(&s, None), Method::GET, &url, Some(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        "token is bound to a client certificate; none was presented"
    );
    let other = client(&s, Some(&leaf(&s.example, &[PAYMENTS], |_| {})));
    let (status, _, body) = call(&other, Method::GET, &url, Some(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        "token is bound to another client certificate"
    );
}

#[tokio::test]
async fn introspection_catches_a_revocation_that_local_verification_cannot() {
    let s = tessera().await;
    let local = resource_server(&s, verifier(&s.srv, None)).await;
    let checked = resource_server(
        &s,
        verifier(
            &s.srv,
            Some(IntrospectionAuth::Basic {
                id: STATIC_CLIENT.into(),
                secret: s.srv.env.static_secret.clone(),
            }),
        ),
    )
    .await;
    let http = client(&s, None);
    let token = s.srv.token_for(PAYMENTS, LEDGER, None).await;
    assert_eq!(call(&http, Method::GET, &local, Some(&token)).await.0, 200);
    assert_eq!(
        call(&http, Method::GET, &checked, Some(&token)).await.0,
        200
    );

    let jti = common::jws_part(&token, 1)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"jti": jti, "reason": "example test"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Local verification still accepts it until exp; the introspecting layer does not.
    assert_eq!(call(&http, Method::GET, &local, Some(&token)).await.0, 200);
    let (status, _, body) = call(&http, Method::GET, &checked, Some(&token)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_description"], "token is no longer active");
}

#[tokio::test]
async fn the_exchange_client_exchanges_and_renews_from_the_rotated_svid_file() {
    let s = tessera().await;
    let dir = tempfile::tempdir().unwrap();
    let svid_file = dir.path().join("svid.jwt");
    std::fs::write(&svid_file, s.srv.svid(PAYMENTS, 300)).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &s.srv.env.pki.ca_pem).unwrap();
    let settings = exchange_client::Settings {
        url: s.srv.public.clone(),
        svid: exchange_client::SvidSource::File(svid_file.clone()),
        audience: LEDGER.into(),
        scope: Some("ledger:read".into()),
        ca_file: Some(ca_file),
        once: true,
    };
    let http = exchange_client::http_client(&settings).unwrap();
    let first = exchange_client::exchange(&http, &settings).await.unwrap();
    assert_eq!(first.scope.as_deref(), Some("ledger:read"));
    assert!(first.expires_in > 0 && first.expires_in <= 300);
    assert!(s.srv.active(&first.value).await);
    // It renews at about 80% of the lifetime.
    assert_eq!(exchange_client::renew_after(300), Duration::from_secs(240));

    // SPIRE rotated the SVID: the renewal reads the new file and gets a new token.
    std::fs::write(&svid_file, s.srv.svid(PAYMENTS, 600)).unwrap();
    let renewed = exchange_client::exchange(&http, &settings).await.unwrap();
    assert_ne!(renewed.jti(), first.jti());
    assert!(s.srv.active(&renewed.value).await);

    // An SVID the server refuses is an error naming the OAuth code.
    std::fs::write(&svid_file, "not-a-jwt").unwrap();
    let err = exchange_client::exchange(&http, &settings)
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("invalid_grant"), "{err:#}");

    // An empty file is refused before any request, naming the file.
    std::fs::write(&svid_file, "\n").unwrap();
    let err = exchange_client::exchange(&http, &settings)
        .await
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("is empty") && msg.contains("svid.jwt"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_exchange_client_fetches_its_jwt_svid_from_the_workload_api() {
    let s = tessera().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &s.srv.env.pki.ca_pem).unwrap();
    let sock = dir.path().join("agent.sock");
    let issued = |id: &str| AgentState {
        jwt_svid: Some(pb::Jwtsvid {
            spiffe_id: id.into(),
            svid: s.srv.svid(id, 300),
            hint: String::new(),
        }),
        ..AgentState::default()
    };
    let (agent, rx) = watch::channel(issued(PAYMENTS));
    let requests = serve_agent(&sock, rx);
    let mut settings = exchange_client::Settings {
        url: s.srv.public.clone(),
        svid: exchange_client::SvidSource::WorkloadApi {
            endpoint: format!("unix://{}", sock.display()),
            audience: ISSUER.into(),
        },
        audience: LEDGER.into(),
        scope: None,
        ca_file: Some(ca_file),
        once: true,
    };
    let http = exchange_client::http_client(&settings).unwrap();

    let first = exchange_client::exchange(&http, &settings).await.unwrap();
    assert_eq!(jws_part(&first.value, 1)["sub"], PAYMENTS);
    assert!(s.srv.active(&first.value).await);
    {
        let asked = requests.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(
            asked[0].audience,
            vec![ISSUER.to_owned()],
            "asks for Tessera"
        );
        assert_eq!(asked[0].spiffe_id, "", "the default identity");
    }

    // The agent now issues another SVID: the renewal asks again and exchanges the new one.
    agent.send(issued(PAYMENTS_WORKER)).unwrap();
    let renewed = exchange_client::exchange(&http, &settings).await.unwrap();
    assert_eq!(jws_part(&renewed.value, 1)["sub"], PAYMENTS_WORKER);
    assert_eq!(requests.lock().unwrap().len(), 2);

    // No identity from the agent, or no agent: errors that say where it failed.
    agent.send(AgentState::default()).unwrap();
    let err = exchange_client::exchange(&http, &settings)
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("gave no JWT-SVID"), "{err:#}");
    settings.svid = exchange_client::SvidSource::WorkloadApi {
        endpoint: format!("unix://{}", dir.path().join("absent.sock").display()),
        audience: ISSUER.into(),
    };
    let err = exchange_client::exchange(&http, &settings)
        .await
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("cannot reach the Workload API"),
        "{err:#}"
    );
}
