#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! The SPIFFE Workload API end to end: a fake SPIRE agent (`common/agent.rs`: the
//! generated tonic server on a unix socket, rcgen certificates) feeds
//! Tessera its own X.509-SVID and the example.org bundles. Rotation on command proves
//! new handshakes see the new SVID and roots while open connections keep working, with
//! no restart.

#[path = "common/agent.rs"]
mod agent;
mod common;

use agent::{AgentState, serve_agent};
use common::mtls::{Leaf, SpiffeCa, ca, leaf};
use common::{Env, JWT_SPIFFE, LEDGER, PAYMENTS, jws_part};
use rcgen::{ExtendedKeyUsagePurpose, IsCa};
use serde_json::{Value, json};
use std::time::Duration;
use tessera::clock::{Clock as _, SystemClock};
use tessera::domain::TrustDomain;
use tessera::jose::{b64url, sha256};
use tessera::workload::pb;
use tokio::sync::watch;

const TESSERA_ID: &str = "spiffe://example.org/tessera";

/// An agent-issued SVID: basicConstraints CA=false (the spiffe crate requires it).
fn svid(ca: &SpiffeCa, uri: &str, eku: ExtendedKeyUsagePurpose) -> Leaf {
    leaf(ca, &[uri], |p| {
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![eku, ExtendedKeyUsagePurpose::ClientAuth];
    })
}

fn agent_state(svid: &Leaf, ca: &SpiffeCa, jwks: &str) -> AgentState {
    AgentState {
        x509: Some(pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: TESSERA_ID.into(),
                x509_svid: svid.der.clone(),
                x509_svid_key: svid.key_der.clone(),
                bundle: ca.der.clone(),
                hint: String::new(),
            }],
            crl: vec![],
            federated_bundles: Default::default(),
        }),
        jwt_bundles: Some(pb::JwtBundlesResponse {
            bundles: [("spiffe://example.org".to_owned(), jwks.as_bytes().to_vec())].into(),
        }),
        jwt_svid: None,
    }
}

/// A client trusting both agent CAs (the server SVID has no DNS name, only its SPIFFE
/// ID, so the host name is not checked; the chain is).
fn client(cas: &[&SpiffeCa], identity: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .danger_accept_invalid_hostnames(true)
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    for ca in cas {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap());
    }
    if let Some(l) = identity {
        b = b.identity(reqwest::Identity::from_pem(l.identity_pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// POST /token; the status, body and the server certificate of the connection used.
async fn token(
    c: &reqwest::Client,
    base: &str,
    form: &[(&str, &str)],
) -> Result<(u16, Value, Vec<u8>), String> {
    let r = c
        .post(format!("{base}/token"))
        .form(form)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let peer = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate().map(<[u8]>::to_vec))
        .unwrap_or_default();
    let status = r.status().as_u16();
    let body = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
    Ok((status, body, peer))
}

const CC: &[(&str, &str)] = &[("grant_type", "client_credentials"), ("audience", LEDGER)];

#[tokio::test]
async fn tessera_serves_the_agent_svid_and_bundles_and_rotates_without_restart() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut env = Env::new();
    env.clock.set(SystemClock.now());
    let sock = env.path().join("agent.sock");
    let endpoint = format!("unix://{}", sock.display());
    let example = TrustDomain::parse("example.org").unwrap();
    // example.org's bundles come from the agent; other.org stays a file.
    env.settings.tls = None;
    env.settings.svid_workload_api = Some(endpoint.clone());
    env.settings.trust_domains.retain(|(td, _)| *td != example);
    env.settings.agent_trust_domains = vec![(example, endpoint)];
    let jwks = common::bundle_json(&env.example_key, env.example_key.kid());

    // Tessera starts before the agent answers: not ready until its SVID and the first
    // bundles have arrived.
    let ca1 = ca("example.org");
    let svid1 = svid(&ca1, TESSERA_ID, ExtendedKeyUsagePurpose::ServerAuth);
    let srv = env.start().await;
    let not_ready = srv.svc.readiness().await.unwrap_err();
    assert!(not_ready.contains("X.509-SVID"), "{not_ready}");

    let (agent, rx) = watch::channel(agent_state(&svid1, &ca1, &jwks));
    serve_agent(&sock, rx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while srv.svc.readiness().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became ready: {:?}",
            srv.svc.readiness().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // mTLS with a client certificate from the agent's CA: a cnf-bound token, and the
    // server presented the agent's SVID.
    let alice1 = svid(&ca1, PAYMENTS, ExtendedKeyUsagePurpose::ClientAuth);
    let open = client(&[&ca1], Some(&alice1));
    let (status, body, peer) = token(&open, &srv.public, CC).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(peer, svid1.der, "the server presents the agent's SVID");
    let claims = jws_part(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], PAYMENTS);
    assert_eq!(
        claims["cnf"],
        json!({"x5t#S256": b64url(&sha256(&alice1.der))})
    );

    // The JWT bundle from the agent verifies a JWT-SVID client assertion.
    let svid_jwt = srv.svid(PAYMENTS, 300);
    let plain = client(&[&ca1], None);
    let (status, body, _) = token(
        &plain,
        &srv.public,
        &[
            ("grant_type", "client_credentials"),
            ("audience", LEDGER),
            ("client_assertion_type", JWT_SPIFFE),
            ("client_assertion", &svid_jwt),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // Rotation: new CA, new server SVID, the bundle holds only the new CA.
    let ca2 = ca("example.org");
    let svid2 = svid(&ca2, TESSERA_ID, ExtendedKeyUsagePurpose::ServerAuth);
    agent.send(agent_state(&svid2, &ca2, &jwks)).unwrap();
    let alice2 = svid(&ca2, PAYMENTS, ExtendedKeyUsagePurpose::ClientAuth);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (body, peer) = loop {
        // A fresh client each time: a new handshake.
        let fresh = client(&[&ca1, &ca2], Some(&alice2));
        if let Ok((200, body, peer)) = token(&fresh, &srv.public, CC).await
            && peer == svid2.der
        {
            break (body, peer);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(peer, svid2.der);
    let claims = jws_part(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(
        claims["cnf"],
        json!({"x5t#S256": b64url(&sha256(&alice2.der))})
    );

    // A new handshake with a certificate from the retired CA gets no token.
    let retired = client(&[&ca1, &ca2], Some(&alice1));
    // (An `Err` is a refusal in the handshake.)
    if let Ok((status, body, _)) = token(&retired, &srv.public, CC).await {
        assert!(status >= 400, "{status} {body}");
    }

    // The connection opened before the rotation is not cut: it still works and still
    // carries the old server certificate.
    let (status, body, peer) = token(&open, &srv.public, CC).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        peer, svid1.der,
        "the pooled connection kept its certificate"
    );

    srv.shutdown().await;
}
