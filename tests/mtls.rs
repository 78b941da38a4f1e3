#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! X.509-SVIDs over mTLS on the real server (127.0.0.1:0, rustls, rcgen certificates):
//! `client_credentials` with `tls_client_auth` gives a certificate-bound token (RFC 8705
//! `cnf.x5t#S256`); bad certificates never get a token; the mTLS identity authenticates
//! introspection, revocation and the admin API.

mod common;

use common::mtls::{Leaf, ca, leaf, x509_server as setup};
use common::{JWT_SPIFFE, LEDGER, PAYMENTS, Server, jws_part};
use rcgen::{BasicConstraints, IsCa};
use serde_json::{Value, json};
use tessera::clock::{Clock as _, SystemClock};
use tessera::jose::{b64url, sha256};

const RS: &str = "spiffe://example.org/ns/rs/sa/reader";
const OPS: &str = "spiffe://example.org/ops/alice";

fn client_with(srv: &Server, leaf: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(srv.env.pki.ca_pem.as_bytes()).unwrap(),
        )
        .timeout(std::time::Duration::from_secs(10));
    if let Some(l) = leaf {
        b = b.identity(reqwest::Identity::from_pem(l.identity_pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// POSTs a form; `Err` when the TLS handshake (or connection) failed.
async fn post(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    bearer: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut req = client.post(url).form(form);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn client_credentials(
    srv: &Server,
    client: &reqwest::Client,
) -> Result<(u16, Value), String> {
    post(
        client,
        &format!("{}/token", srv.public),
        &[("grant_type", "client_credentials"), ("audience", LEDGER)],
        None,
    )
    .await
}

#[tokio::test]
async fn tls_client_auth_issues_a_certificate_bound_token() {
    let s = setup().await;
    let cert = leaf(&s.example, &[PAYMENTS], |_| {});
    let client = client_with(&s.srv, Some(&cert));
    let (status, body) = client_credentials(&s.srv, &client).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap();
    let claims = jws_part(token, 1);
    let thumbprint = b64url(&sha256(&cert.der));
    assert_eq!(claims["sub"], PAYMENTS);
    assert_eq!(claims["cnf"], json!({"x5t#S256": thumbprint}));

    // Introspection over mTLS by an allowed resource server returns the binding.
    let rs = client_with(&s.srv, Some(&leaf(&s.example, &[RS], |_| {})));
    let url = format!("{}/introspect", s.srv.public);
    let (status, v) = post(&rs, &url, &[("token", token)], None).await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["active"], true);
    assert_eq!(v["cnf"]["x5t#S256"], thumbprint);

    // The same workload with a JWT-SVID assertion instead gets an unbound token.
    let svid = s.srv.svid(PAYMENTS, 300);
    let plain = client_with(&s.srv, None);
    let (status, body) = post(
        &plain,
        &format!("{}/token", s.srv.public),
        &[
            ("grant_type", "client_credentials"),
            ("audience", LEDGER),
            ("client_assertion_type", JWT_SPIFFE),
            ("client_assertion", &svid),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        jws_part(body["access_token"].as_str().unwrap(), 1)
            .get("cnf")
            .is_none()
    );
}

#[tokio::test]
async fn bad_client_certificates_never_get_a_token() {
    let s = setup().await;
    let stranger = ca("example.org"); // same name, not in the bundle
    let now = time_now();
    let cases: Vec<(&str, Leaf)> = vec![
        ("untrusted CA", leaf(&stranger, &[PAYMENTS], |_| {})),
        (
            "another trust domain's CA",
            leaf(&s.other, &[PAYMENTS], |_| {}),
        ),
        (
            "expired",
            leaf(&s.example, &[PAYMENTS], |p| {
                p.not_before = now - time::Duration::days(2);
                p.not_after = now - time::Duration::days(1);
            }),
        ),
        (
            "CA=true leaf",
            leaf(&s.example, &[PAYMENTS], |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }),
        ),
        (
            "two URI SANs",
            leaf(
                &s.example,
                &[PAYMENTS, "spiffe://example.org/ns/x/sa/y"],
                |_| {},
            ),
        ),
        ("no URI SAN", leaf(&s.example, &[], |_| {})),
    ];
    for (name, cert) in cases {
        let client = client_with(&s.srv, Some(&cert));
        match client_credentials(&s.srv, &client).await {
            Err(_) => {} // refused in the handshake (TLS alert)
            Ok((status, body)) => {
                assert_eq!(status, 401, "{name}: {body}");
                assert_eq!(body["error"], "invalid_client", "{name}");
                assert!(body.get("access_token").is_none(), "{name}");
            }
        }
    }
    // The control: a good certificate from the same CA works.
    let good = client_with(&s.srv, Some(&leaf(&s.example, &[PAYMENTS], |_| {})));
    assert_eq!(client_credentials(&s.srv, &good).await.unwrap().0, 200);
    // No certificate and no assertion: invalid_client.
    let none = client_with(&s.srv, None);
    let (status, body) = client_credentials(&s.srv, &none).await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test]
async fn mtls_identity_authenticates_introspection_revocation_and_admin() {
    let s = setup().await;
    let payments = client_with(&s.srv, Some(&leaf(&s.example, &[PAYMENTS], |_| {})));
    let (_, body) = client_credentials(&s.srv, &payments).await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    let introspect = format!("{}/introspect", s.srv.public);

    // A workload not in introspection.allowed: 403; nobody at all: 401.
    let (status, _) = post(&payments, &introspect, &[("token", &token)], None)
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = post(
        &client_with(&s.srv, None),
        &introspect,
        &[("token", &token)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    // Admin API over mTLS: an ops identity is allowed, a workload is not.
    let ops = client_with(&s.srv, Some(&leaf(&s.example, &[OPS], |_| {})));
    let tokens_url = format!("{}/admin/v1/tokens", s.srv.admin);
    let r = ops.get(&tokens_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = payments.get(&tokens_url).send().await.unwrap();
    assert_eq!(r.status(), 403);

    // /revoke by the token's own subject over mTLS.
    let (status, _) = post(
        &payments,
        &format!("{}/revoke", s.srv.public),
        &[("token", &token)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let rs = client_with(&s.srv, Some(&leaf(&s.example, &[RS], |_| {})));
    let (status, v) = post(&rs, &introspect, &[("token", &token)], None)
        .await
        .unwrap();
    assert_eq!((status, v), (200, json!({"active": false})));
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(SystemClock.now()).unwrap()
}

/// The peer identity reaches the handlers over HTTP/1.1 and over HTTP/2 alike.
#[tokio::test]
async fn peer_identity_over_http1_and_http2() {
    let s = setup().await;
    let cert = leaf(&s.example, &[PAYMENTS], |_| {});
    let thumbprint = b64url(&sha256(&cert.der));
    for (name, h2) in [("HTTP/1.1", false), ("HTTP/2", true)] {
        let b = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(s.srv.env.pki.ca_pem.as_bytes()).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(cert.identity_pem.as_bytes()).unwrap());
        let client = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        }
        .build()
        .unwrap();
        let r = client
            .post(format!("{}/token", s.srv.public))
            .form(&[("grant_type", "client_credentials"), ("audience", LEDGER)])
            .send()
            .await
            .unwrap();
        let want = if h2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(r.version(), want, "{name}");
        let body: Value = r.json().await.unwrap();
        let claims = jws_part(body["access_token"].as_str().unwrap(), 1);
        assert_eq!(claims["cnf"]["x5t#S256"], thumbprint, "{name}");
    }
}
