#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! The gRPC API (contract §7) end to end: a tonic client over real TLS (rustls, ALPN
//! h2) to the real public listener. Same authentication (JWT-SVID assertion in
//! metadata, the connection's X.509-SVID), same outcomes and audit events as HTTP, the
//! OAuth error code first in the status message.

mod common;

use common::mtls::{Leaf, X509Setup, leaf, x509_server};
use common::{Env, LEDGER, PAYMENTS, RS, Server, jws_part};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use std::sync::Arc;
use tessera::grpc::pb::token_service_client::TokenServiceClient;
use tessera::grpc::pb::{ExchangeRequest, IntrospectRequest, IntrospectResponse, RevokeRequest};
use tessera::jose::{b64url, sha256};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A tonic client speaking HTTP/2 over rustls to the server's public listener,
/// optionally presenting an X.509-SVID.
async fn client(srv: &Server, svid: Option<&Leaf>) -> TokenServiceClient<Channel> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(srv.env.pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match svid {
        Some(l) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(l.der.clone())],
                PrivateKeyDer::Pkcs8(l.key_der.clone().into()),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let addr = srv.running.as_ref().unwrap().public_addr;
    let channel = Endpoint::from_static("http://127.0.0.1")
        .connect_with_connector(tower::service_fn(move |_| {
            let tls = tls.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
                let stream = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    TokenServiceClient::new(channel)
}

fn exchange_request(svid: &str, audience: &str, scope: &str) -> ExchangeRequest {
    ExchangeRequest {
        subject_token: svid.to_owned(),
        subject_token_type: JWT_TYPE.to_owned(),
        audience: audience.to_owned(),
        scope: scope.to_owned(),
        ..Default::default()
    }
}

fn with_assertion<T>(msg: T, svid: &str, request_id: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("client-assertion", svid.parse().unwrap());
    req.metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    req
}

/// Introspection over gRPC authenticated by `svid` in metadata.
async fn introspect(
    grpc: &mut TokenServiceClient<Channel>,
    token: &str,
    svid: &str,
    request_id: &str,
) -> Result<IntrospectResponse, tonic::Status> {
    let msg = IntrospectRequest {
        token: token.to_owned(),
        ..Default::default()
    };
    Ok(grpc
        .introspect(with_assertion(msg, svid, request_id))
        .await?
        .into_inner())
}

fn audit_of(srv: &Server, rid: &str) -> serde_json::Value {
    let lines: Vec<_> = srv
        .audit_lines()
        .into_iter()
        .filter(|l| l["request_id"] == rid)
        .collect();
    assert_eq!(lines.len(), 1, "one audit event for {rid}: {lines:?}");
    lines.into_iter().next().unwrap()
}

#[tokio::test]
async fn exchange_introspect_and_revoke_over_grpc() {
    let srv = Env::new().start().await;
    let mut grpc = client(&srv, None).await;

    let svid = srv.svid(PAYMENTS, 300);
    let mut req = Request::new(exchange_request(&svid, LEDGER, "ledger:write"));
    req.metadata_mut()
        .insert("x-request-id", "grpc-exchange-1".parse().unwrap());
    let issued = grpc.exchange(req).await.unwrap().into_inner();
    assert_eq!(issued.token_type, "Bearer");
    assert_eq!(
        issued.issued_token_type,
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(issued.scope.as_deref(), Some("ledger:write"));
    assert!(issued.expires_in > 0 && issued.expires_in <= 300);
    let claims = jws_part(&issued.access_token, 1);
    assert_eq!(claims["sub"], PAYMENTS);
    assert_eq!(claims["aud"], LEDGER);
    let ev = audit_of(&srv, "grpc-exchange-1");
    assert_eq!(ev["event"], "token.issued");
    assert_eq!(ev["rule"], "payments-ledger");
    assert_eq!(ev["jti"], claims["jti"]);

    // The token is the HTTP endpoints' token: HTTP introspection knows it.
    assert!(srv.active(&issued.access_token).await);

    // Introspection over gRPC, authenticated by the resource server's JWT-SVID.
    let rs = srv.svid(RS, 300);
    let answer = introspect(&mut grpc, &issued.access_token, &rs, "grpc-introspect-1")
        .await
        .unwrap();
    assert!(answer.active);
    assert_eq!(answer.sub, PAYMENTS);
    assert_eq!(answer.aud, LEDGER);
    assert_eq!(answer.scope.as_deref(), Some("ledger:write"));
    assert_eq!(json!(answer.jti), claims["jti"]);
    assert_eq!(json!(answer.exp), claims["exp"]);
    let ev = audit_of(&srv, "grpc-introspect-1");
    assert_eq!(
        (
            ev["event"].clone(),
            ev["active"].clone(),
            ev["caller"].clone()
        ),
        (json!("token.introspected"), json!(true), json!(RS))
    );

    // The subject revokes its own token (RFC 7009 over gRPC)...
    grpc.revoke(with_assertion(
        RevokeRequest {
            token: issued.access_token.clone(),
            ..Default::default()
        },
        &srv.svid(PAYMENTS, 300),
        "grpc-revoke-1",
    ))
    .await
    .unwrap();
    let ev = audit_of(&srv, "grpc-revoke-1");
    assert_eq!(ev["event"], "token.revoked");
    assert_eq!(ev["outcome"], "success");
    assert_eq!(ev["revocation_kind"], "jti");

    // ...and every transport now says inactive, with nothing else in the answer.
    let answer = introspect(&mut grpc, &issued.access_token, &rs, "grpc-introspect-2")
        .await
        .unwrap();
    assert_eq!(answer, Default::default());
    assert!(!srv.active(&issued.access_token).await);
}

#[tokio::test]
async fn grpc_errors_carry_the_oauth_code_and_are_audited() {
    let srv = Env::new().start().await;
    let mut grpc = client(&srv, None).await;
    let svid = srv.svid(PAYMENTS, 300);

    let cases: Vec<(&str, ExchangeRequest, Code, &str)> = vec![
        (
            "no-rule",
            exchange_request(&svid, "https://elsewhere.example.org", ""),
            Code::InvalidArgument,
            "invalid_target: ",
        ),
        (
            "bad-scope",
            exchange_request(&svid, LEDGER, "ledger:admin"),
            Code::InvalidArgument,
            "invalid_scope: ",
        ),
        (
            "no-subject",
            exchange_request("", LEDGER, ""),
            Code::InvalidArgument,
            "invalid_request: ",
        ),
        (
            "forged",
            exchange_request(&format!("{svid}x"), LEDGER, ""),
            Code::InvalidArgument,
            "invalid_grant: ",
        ),
    ];
    for (rid, msg, code, prefix) in cases {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("x-request-id", rid.parse().unwrap());
        let status = grpc.exchange(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{rid}: {status:?}");
        assert!(
            status.message().starts_with(prefix),
            "{rid}: {}",
            status.message()
        );
        assert!(!status.message().contains(&svid), "{rid}: token echoed");
        let ev = audit_of(&srv, rid);
        assert_eq!(
            (ev["event"].clone(), ev["outcome"].clone()),
            (json!("token.denied"), json!("failure")),
            "{rid}"
        );
    }

    // Introspection without a credential: UNAUTHENTICATED, invalid_client.
    let status = grpc
        .introspect(IntrospectRequest {
            token: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().starts_with("invalid_client: "),
        "{status:?}"
    );

    // A workload that may not introspect: PERMISSION_DENIED.
    let status = introspect(&mut grpc, "x", &svid, "grpc-forbidden")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().starts_with("access_denied: "),
        "{status:?}"
    );
    assert_eq!(audit_of(&srv, "grpc-forbidden")["outcome"], "failure");

    // A malformed authorization header is refused before processing, and audited.
    let mut req = Request::new(RevokeRequest {
        token: "x".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Digest nope".parse().unwrap());
    req.metadata_mut()
        .insert("x-request-id", "grpc-bad-auth".parse().unwrap());
    let status = grpc.revoke(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(audit_of(&srv, "grpc-bad-auth")["event"], "token.revoked");

    // Messages above the HTTP body limit are refused, not decoded.
    let huge = "a".repeat(70 * 1024);
    let status = grpc
        .exchange(exchange_request(&huge, LEDGER, ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // The gRPC outcomes are counted under their transport.
    let metrics = srv
        .client
        .get(format!("{}/metrics", srv.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "tessera_requests_total{transport=\"grpc\",endpoint=\"/tessera.v1.TokenService/Exchange\",outcome=\"client_error\"} 5\n"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tessera_token_denials_total{reason=\"invalid_target\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_x509_svid_on_the_connection_authenticates_grpc_calls() {
    let X509Setup { srv, example, .. } = x509_server().await;

    // client_credentials with the connection's X.509-SVID: a certificate-bound token.
    let payments = leaf(&example, &[PAYMENTS], |_| {});
    let mut grpc = client(&srv, Some(&payments)).await;
    let issued = grpc
        .exchange(ExchangeRequest {
            grant_type: "client_credentials".into(),
            audience: LEDGER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let thumbprint = b64url(&sha256(&payments.der));
    assert_eq!(
        jws_part(&issued.access_token, 1)["cnf"],
        json!({"x5t#S256": thumbprint})
    );

    // The resource server introspects with its own X.509-SVID and sees the binding.
    let mut rs = client(&srv, Some(&leaf(&example, &[RS], |_| {}))).await;
    let answer = rs
        .introspect(IntrospectRequest {
            token: issued.access_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
    assert_eq!(answer.cnf_x5t_s256.as_deref(), Some(thumbprint.as_str()));

    // The same connection without an allowed identity cannot introspect.
    let status = grpc
        .introspect(IntrospectRequest {
            token: issued.access_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

/// What tonic refuses before a handler runs is still audited, and bad input is never
/// a server error: raw HTTP/2 requests with an undecodable message and to an unknown
/// method.
#[tokio::test]
async fn undecodable_messages_and_unknown_methods_are_client_errors_and_audited() {
    let srv = Env::new().start().await;
    // One gRPC frame: uncompressed, length 5, bytes that are not a protobuf message.
    let garbage = vec![0u8, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff];
    for (path, rid, code, event) in [
        (
            "/tessera.v1.TokenService/Exchange",
            "raw-garbage",
            "3",
            "token.denied",
        ),
        (
            "/tessera.v1.TokenService/Nope",
            "raw-unknown",
            "12",
            "request.rejected",
        ),
    ] {
        let resp = srv
            .client
            .post(format!("{}{path}", srv.public))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-request-id", rid)
            .body(garbage.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200, "gRPC errors ride on HTTP 200");
        let headers = resp.headers();
        assert_eq!(headers["grpc-status"], code, "{rid}: {headers:?}");
        let message = headers["grpc-message"].to_str().unwrap();
        assert!(message.starts_with("invalid_request"), "{rid}: {message}");
        let ev = audit_of(&srv, rid);
        assert_eq!(
            (ev["event"].clone(), ev["outcome"].clone()),
            (json!(event), json!("failure")),
            "{rid}"
        );
    }
}
