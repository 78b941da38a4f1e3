#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Router tests without a socket: `public_router` / `admin_router` driven with
//! `tower::ServiceExt::oneshot` (architecture habit 10, second level).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use tessera::service::Service;
use tower::ServiceExt as _;

struct Out {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn cache_control(&self) -> Option<&str> {
        self.headers
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap())
    }
}

async fn call(router: axum::Router, req: Request<Body>) -> Out {
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Out {
        status,
        headers,
        body,
    }
}

async fn get(svc: &Arc<Service>, path: &str) -> Out {
    let req = Request::get(path).body(Body::empty()).unwrap();
    call(tessera::http::public_router(svc.clone()), req).await
}

fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn post(svc: &Arc<Service>, path: &str, content_type: &str, body: impl Into<Body>) -> Out {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap();
    call(tessera::http::public_router(svc.clone()), req).await
}

async fn post_form(svc: &Arc<Service>, path: &str, body: String) -> Out {
    post(svc, path, "application/x-www-form-urlencoded", body).await
}

async fn admin(
    svc: &Arc<Service>,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> Out {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    call(
        tessera::http::admin_router(svc.clone()),
        b.body(body).unwrap(),
    )
    .await
}

#[tokio::test]
async fn metadata_document_names_endpoints_grants_and_policy_scopes() {
    let env = Env::new();
    let (svc, _) = env.service().await;
    let out = get(&svc, "/.well-known/oauth-authorization-server").await;
    assert_eq!(out.status, StatusCode::OK);
    let doc = out.json();
    assert_eq!(doc["issuer"], ISSUER);
    assert_eq!(doc["token_endpoint"], format!("{ISSUER}/token"));
    assert_eq!(
        doc["introspection_endpoint"],
        format!("{ISSUER}/introspect")
    );
    assert_eq!(doc["revocation_endpoint"], format!("{ISSUER}/revoke"));
    assert_eq!(doc["jwks_uri"], format!("{ISSUER}/jwks.json"));
    let grants = doc["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&json!(TOKEN_EXCHANGE)), "{grants:?}");
    assert!(grants.contains(&json!("client_credentials")), "{grants:?}");
    let auth = doc["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(auth.contains(&json!("private_key_jwt")), "{auth:?}");
    // The test server has TLS listeners, which accept X.509-SVIDs (RFC 8705).
    assert!(auth.contains(&json!("tls_client_auth")), "{auth:?}");
    assert!(doc["introspection_endpoint_auth_methods_supported"].is_array());
    assert_eq!(
        doc["tls_client_certificate_bound_access_tokens"],
        json!(true)
    );
    // From the policy file: the sorted union of every rule's grant.scopes.
    assert_eq!(
        doc["scopes_supported"],
        json!(["api:read", "ledger:read", "ledger:write"])
    );

    let oidc = get(&svc, "/.well-known/openid-configuration").await;
    assert_eq!(oidc.status, StatusCode::OK);
    assert_eq!(oidc.json(), doc, "OIDC discovery serves the same document");
}

#[tokio::test]
async fn jwks_publishes_current_and_next_keys_with_a_bounded_cache_lifetime() {
    let mut env = Env::new();
    env.settings.prepublish = 120;
    let (svc, _) = env.service().await;
    let out = get(&svc, "/jwks.json").await;
    assert_eq!(out.status, StatusCode::OK);
    let keys = out.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "current + next: {keys:?}");
    let info = svc.minter().keys().info();
    for k in &keys {
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["use"], "sig");
        assert!(k.get("d").is_none(), "no private members: {k}");
        let kid = k["kid"].as_str().unwrap();
        assert!(info.iter().any(|i| i.kid == kid), "{kid} is a ring key");
    }
    assert_ne!(keys[0]["kid"], keys[1]["kid"]);
    let current = svc.minter().keys().current().key.kid().to_owned();
    assert!(keys.iter().any(|k| k["kid"] == current.as_str()));

    let cc = out.cache_control().unwrap();
    let n: u64 = cc
        .strip_prefix("public, max-age=")
        .unwrap_or_else(|| panic!("{cc}"))
        .parse()
        .unwrap();
    assert!(n <= 120 / 2, "max-age {n} must be at most prepublish/2");
}

#[tokio::test]
async fn health_and_readiness() {
    let env = Env::new();
    let (svc, _) = env.service().await;
    assert_eq!(get(&svc, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&svc, "/readyz").await.status, StatusCode::OK);
    let req = Request::get("/healthz").body(Body::empty()).unwrap();
    let out = call(tessera::http::admin_router(svc.clone()), req).await;
    assert_eq!(out.status, StatusCode::OK);
}

#[tokio::test]
async fn oauth_and_admin_responses_are_not_cacheable() {
    let env = Env::new();
    let (svc, _) = env.service().await;
    let svid = env.svid(PAYMENTS, 600);
    let ok = post_form(
        &svc,
        "/token",
        form_body(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &svid),
            ("subject_token_type", JWT_TYPE),
            ("audience", LEDGER),
        ]),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.cache_control(), Some("no-store"));
    let token = ok.json()["access_token"].as_str().unwrap().to_owned();

    let denied = post_form(&svc, "/token", form_body(&[("grant_type", "password")])).await;
    assert_eq!(denied.status, StatusCode::BAD_REQUEST);
    assert_eq!(denied.cache_control(), Some("no-store"));

    let rs = env.svid(RS, 300);
    let intro = post_form(
        &svc,
        "/introspect",
        form_body(&[
            ("token", &token),
            ("client_assertion_type", JWT_SPIFFE),
            ("client_assertion", &rs),
        ]),
    )
    .await;
    assert_eq!(intro.status, StatusCode::OK);
    assert_eq!(intro.json()["active"], json!(true));
    assert_eq!(intro.cache_control(), Some("no-store"));

    let own = env.svid(PAYMENTS, 300);
    let rev = post_form(
        &svc,
        "/revoke",
        form_body(&[
            ("token", &token),
            ("client_assertion_type", JWT_SPIFFE),
            ("client_assertion", &own),
        ]),
    )
    .await;
    assert_eq!(rev.status, StatusCode::OK);
    assert_eq!(rev.cache_control(), Some("no-store"));

    let t = env.admin_token.clone();
    for (method, path, body) in [
        ("GET", "/admin/v1/tokens", None),
        ("GET", "/admin/v1/revocations", None),
        ("GET", "/admin/v1/audit", None),
        (
            "POST",
            "/admin/v1/revocations",
            Some(json!({"subject": PAYMENTS_WORKER, "reason": "test"})),
        ),
        ("POST", "/admin/v1/keys/rotate", None),
        ("POST", "/admin/v1/policy/reload", None),
    ] {
        let out = admin(&svc, method, path, &t, body).await;
        assert!(out.status.is_success(), "{method} {path}: {}", out.status);
        assert_eq!(out.cache_control(), Some("no-store"), "{method} {path}");
    }
    let out = admin(&svc, "GET", "/admin/v1/tokens", "wrong", None).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.cache_control(), Some("no-store"));
}

#[tokio::test]
async fn body_over_64_kib_is_refused_with_413() {
    let env = Env::new();
    let (svc, audit) = env.service().await;
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(65 * 1024)
    );
    for path in ["/token", "/introspect", "/revoke"] {
        let out = post_form(&svc, path, big.clone()).await;
        assert_eq!(out.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
    // Just under the limit is read (and refused for what it says, not for its size).
    let fits = format!("grant_type=password&pad={}", "a".repeat(60 * 1024));
    let out = post_form(&svc, "/token", fits).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert_eq!(out.json()["error"], "unsupported_grant_type");
    // Refusals before processing are still audited.
    assert_eq!(audit.text().lines().count(), 4);
}

#[tokio::test]
async fn malformed_requests_are_invalid_request() {
    let env = Env::new();
    let (svc, _) = env.service().await;
    let svid = env.svid(PAYMENTS, 600);
    let json_body = json!({
        "grant_type": TOKEN_EXCHANGE, "subject_token": svid,
        "subject_token_type": JWT_TYPE, "audience": LEDGER,
    })
    .to_string();
    let out = post(&svc, "/token", "application/json", json_body).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert_eq!(out.json()["error"], "invalid_request");
    assert!(!String::from_utf8_lossy(&out.body).contains(&svid));

    let dup = format!(
        "{}&audience={}",
        form_body(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &svid),
            ("subject_token_type", JWT_TYPE),
            ("audience", LEDGER),
        ]),
        "https%3A%2F%2Fapi.example.org"
    );
    let out = post_form(&svc, "/token", dup).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert_eq!(out.json()["error"], "invalid_request");
    assert!(!String::from_utf8_lossy(&out.body).contains(&svid));

    let out = post_form(&svc, "/token", form_body(&[("grant_type", "password")])).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert_eq!(out.json()["error"], "unsupported_grant_type");

    let out = post_form(&svc, "/token", String::new()).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert_eq!(out.json()["error"], "invalid_request");
}

#[tokio::test]
async fn wrong_method_is_a_client_error() {
    let env = Env::new();
    let (svc, _) = env.service().await;
    for (method, path) in [
        ("GET", "/token"),
        ("GET", "/introspect"),
        ("PUT", "/revoke"),
        ("POST", "/jwks.json"),
        ("DELETE", "/.well-known/oauth-authorization-server"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let out = call(tessera::http::public_router(svc.clone()), req).await;
        assert!(
            out.status.is_client_error(),
            "{method} {path}: {}",
            out.status
        );
    }
    let req = Request::get("/admin/v1/keys/rotate")
        .header(header::AUTHORIZATION, format!("Bearer {}", env.admin_token))
        .body(Body::empty())
        .unwrap();
    let out = call(tessera::http::admin_router(svc.clone()), req).await;
    assert!(out.status.is_client_error(), "{}", out.status);
    // The rotation did not happen.
    assert_eq!(svc.minter().keys().info().len(), 2);
}
