#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end: the real server on 127.0.0.1:0 with real TLS (rcgen certificates),
//! driven over HTTPS by reqwest. Tokens are checked by josekit, an independent JOSE
//! library, against the key fetched from the served JWKS.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn kid_of(token: &str) -> String {
    jws_part(token, 0)["kid"].as_str().unwrap().to_owned()
}

/// RFC 7638 thumbprint computed here, independently of `tessera::jose`.
fn thumbprint(jwk: &Value) -> String {
    let s = |k: &str| jwk[k].as_str().unwrap().to_owned();
    let canon = match s("kty").as_str() {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv"), s("x")),
        other => panic!("unexpected kty {other}"),
    };
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canon.as_bytes(),
    ))
}

/// Verifies `token` with josekit against the JWKS key named by its kid; returns
/// (header, claims, jwk).
fn josekit_verify(token: &str, jwks: &Value) -> Result<(Value, Value, Value), String> {
    let header = jws_part(token, 0);
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let jwk_json = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| format!("kid {kid} not in the served JWKS"))?
        .clone();
    let jwk = josekit::jwk::Jwk::from_map(jwk_json.as_object().unwrap().clone())
        .map_err(|e| e.to_string())?;
    let verifier: Box<dyn josekit::jws::JwsVerifier> = match header["alg"].as_str() {
        Some("ES256") => Box::new(
            josekit::jws::ES256
                .verifier_from_jwk(&jwk)
                .map_err(|e| e.to_string())?,
        ),
        Some("EdDSA") => Box::new(
            josekit::jws::EdDSA
                .verifier_from_jwk(&jwk)
                .map_err(|e| e.to_string())?,
        ),
        other => return Err(format!("unexpected alg {other:?}")),
    };
    let (payload, _) =
        josekit::jwt::decode_with_verifier(token, &*verifier).map_err(|e| e.to_string())?;
    let claims = Value::Object(payload.claims_set().clone());
    Ok((header, claims, jwk_json))
}

/// Checks header and claims of an issued token against the contract table.
fn check_contract_claims(header: &Value, claims: &Value, jwk: &Value, now: i64, ttl: i64) {
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(
        header["kid"].as_str().unwrap(),
        thumbprint(jwk),
        "kid is the RFC 7638 thumbprint"
    );
    assert_eq!(
        keys_of(claims),
        set(&[
            "iss",
            "sub",
            "aud",
            "client_id",
            "scope",
            "iat",
            "nbf",
            "exp",
            "jti"
        ]),
        "exactly the contract claims (no cnf, no act): {claims}"
    );
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], PAYMENTS);
    assert_eq!(claims["client_id"], claims["sub"]);
    assert_eq!(claims["aud"], LEDGER, "a single audience string");
    assert_eq!(claims["scope"], "ledger:read ledger:write");
    assert_eq!(claims["iat"], json!(now));
    assert_eq!(claims["nbf"], json!(now));
    assert_eq!(claims["exp"], json!(now + ttl));
    let jti = claims["jti"].as_str().unwrap();
    let raw = URL_SAFE_NO_PAD.decode(jti).expect("jti is base64url");
    assert!(raw.len() >= 16, "jti carries at least 128 bits: {jti}");
}

// ---------------------------------------------------------------- full flow

#[tokio::test]
async fn full_flow_exchange_introspect_admin_revoke_inventory() {
    let srv = Env::new().start().await;
    let now = srv.env.now();
    let svid = srv.svid(PAYMENTS, 3600);
    let r = srv.exchange(&svid, LEDGER, Some("ledger:read")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let body = r.json();
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "ledger:read");
    let token = r.access_token();
    let jti = jws_part(&token, 1)["jti"].as_str().unwrap().to_owned();
    let issued = srv.audit_of(&r.rid);
    assert_eq!(issued["event"], "token.issued");
    assert_eq!(issued["jti"], jti.as_str());

    let i = srv.introspect(&token).await;
    assert_eq!(i.status, 200);
    let v = i.json();
    assert_eq!(
        keys_of(&v),
        set(&[
            "active",
            "iss",
            "sub",
            "aud",
            "client_id",
            "scope",
            "token_type",
            "exp",
            "iat",
            "nbf",
            "jti"
        ]),
        "{v}"
    );
    assert_eq!(v["active"], true);
    assert_eq!(v["iss"], ISSUER);
    assert_eq!(v["sub"], PAYMENTS);
    assert_eq!(v["aud"], LEDGER);
    assert_eq!(v["client_id"], PAYMENTS);
    assert_eq!(v["scope"], "ledger:read");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["jti"], jti.as_str());
    assert_eq!(
        (v["iat"].as_i64(), v["nbf"].as_i64()),
        (Some(now), Some(now))
    );
    assert_eq!(v["exp"].as_i64(), Some(now + 300));

    // The inventory lists the token (never the token itself).
    let inv = srv.admin(Method::GET, "/admin/v1/tokens", None).await;
    assert_eq!(inv.status, 200);
    let items = inv.json()["items"].as_array().unwrap().clone();
    let entry = items
        .iter()
        .find(|t| t["jti"] == jti.as_str())
        .expect("listed");
    assert_eq!(entry["sub"], PAYMENTS);
    assert_eq!(entry["aud"], LEDGER);
    assert_eq!(entry["scope"], "ledger:read");
    assert!(
        entry["iat"].as_str().unwrap().ends_with('Z'),
        "RFC 3339: {entry}"
    );
    assert!(!inv.text.contains(&token));
    assert!(inv.json()["next_cursor"].is_null());

    let rev = srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"jti": jti, "reason": "leaked in a log"})),
        )
        .await;
    assert_eq!(rev.status, 201, "{}", rev.text);
    let rec = rev.json();
    assert_eq!(rec["kind"], "jti");
    assert_eq!(rec["value"], jti.as_str());
    assert_eq!(rec["reason"], "leaked in a log");
    for k in ["id", "actor", "created_at", "expires_at"] {
        assert!(rec[k].is_string(), "{k} in {rec}");
    }

    let i = srv.introspect(&token).await;
    assert_eq!(i.status, 200);
    assert_eq!(i.text, r#"{"active":false}"#);
    assert_eq!(i.json(), json!({"active": false}));

    let inv = srv.admin(Method::GET, "/admin/v1/tokens", None).await;
    assert!(
        !inv.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["jti"] == jti.as_str()),
        "a revoked token is not live: {}",
        inv.text
    );
    let list = srv
        .admin(Method::GET, "/admin/v1/revocations?kind=jti", None)
        .await;
    assert_eq!(list.status, 200);
    assert!(
        list.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["value"] == jti.as_str())
    );
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn revoke_endpoint_accepts_the_subject_or_an_admin_only() {
    let srv = Env::new().start().await;
    let t1 = srv.token_for(PAYMENTS, LEDGER, None).await;

    let other = srv.svid(PAYMENTS_WORKER, 300);
    let r = srv.revoke(&t1, Auth::Assertion(&other)).await;
    r.assert_error(400, "unauthorized_client");
    assert!(!r.text.contains(&t1));
    assert!(
        srv.active(&t1).await,
        "a refused revocation revokes nothing"
    );

    let r = srv.revoke(&t1, Auth::None).await;
    assert_eq!(r.status, 401);
    assert!(srv.active(&t1).await);

    let own = srv.svid(PAYMENTS, 300);
    let r = srv.revoke(&t1, Auth::Assertion(&own)).await;
    assert_eq!((r.status, r.text.as_str()), (200, ""));
    assert!(!srv.active(&t1).await);
    srv.assert_audit(&r, "token.revoked", "success");

    let t2 = srv.token_for(PAYMENTS, LEDGER, None).await;
    let admin = srv.env.admin_token.clone();
    let r = srv.revoke(&t2, Auth::Bearer(&admin)).await;
    assert_eq!((r.status, r.text.as_str()), (200, ""));
    assert!(!srv.active(&t2).await);

    let r = srv.revoke("garbage", Auth::Assertion(&own)).await;
    assert_eq!((r.status, r.text.as_str()), (200, ""));
    let r = srv.revoke("a.b.c", Auth::Bearer(&admin)).await;
    assert_eq!((r.status, r.text.as_str()), (200, ""));
    srv.assert_every_request_audited_once();
}

// ---------------------------------------------------------------- tokens, independently verified

#[tokio::test]
async fn issued_token_verifies_with_josekit_against_the_served_jwks() {
    let srv = Env::new().start().await;
    let now = srv.env.now();
    let token = srv
        .token_for(PAYMENTS, LEDGER, Some("ledger:read ledger:write"))
        .await;
    let jwks = srv.jwks().await;
    let (header, claims, jwk) = josekit_verify(&token, &jwks).unwrap();
    assert_eq!(header["alg"], "ES256");
    check_contract_claims(&header, &claims, &jwk, now, 300);
    assert_eq!(jwk["use"], "sig");

    // The verifier can fail: a changed payload does not verify.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims["scope"] = json!("ledger:admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        tessera::jose::b64url(forged_claims.to_string().as_bytes()),
        parts[2]
    );
    assert!(josekit_verify(&forged, &jwks).is_err());
    assert!(!srv.active(&forged).await, "nor does the server accept it");

    // A second token gets a fresh jti.
    let again = srv.token_for(PAYMENTS, LEDGER, None).await;
    assert_ne!(jws_part(&again, 1)["jti"], claims["jti"]);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn eddsa_configuration_mints_tokens_josekit_verifies() {
    let mut env = Env::new();
    env.settings.signing_alg = tessera::jose::SigningAlg::EdDSA;
    let srv = env.start().await;
    let now = srv.env.now();
    let token = srv
        .token_for(PAYMENTS, LEDGER, Some("ledger:read ledger:write"))
        .await;
    let jwks = srv.jwks().await;
    for k in jwks["keys"].as_array().unwrap() {
        assert_eq!(
            (k["kty"].as_str(), k["alg"].as_str()),
            (Some("OKP"), Some("EdDSA"))
        );
    }
    let (header, claims, jwk) = josekit_verify(&token, &jwks).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    check_contract_claims(&header, &claims, &jwk, now, 300);
    assert!(srv.active(&token).await);
}

// ---------------------------------------------------------------- /token error table

/// Sends `form` to /token and checks status, error code, that no submitted token is
/// echoed, and the audit line.
async fn token_error(srv: &Server, form: &[(&str, &str)], auth: Auth<'_>, status: u16, code: &str) {
    let r = srv.post_form("/token", form, auth).await;
    r.assert_error(status, code);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    for (k, v) in form {
        if k.ends_with("token") || *k == "client_assertion" {
            assert!(!r.text.contains(v), "the body echoes {k}: {}", r.text);
        }
    }
    if let Auth::Assertion(a) = auth {
        assert!(!r.text.contains(a));
    }
    srv.assert_audit(&r, "token.denied", "failure");
    assert!(
        !srv.audit_of(&r.rid).to_string().contains("eyJ"),
        "no JWT in the audit line"
    );
}

#[tokio::test]
async fn token_invalid_request() {
    let srv = Env::new().start().await;
    let svid = srv.svid(PAYMENTS, 600);
    let no_subject = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token_type", JWT_TYPE),
        ("audience", LEDGER),
    ];
    token_error(&srv, &no_subject, Auth::None, 400, "invalid_request").await;
    let mut both = common::exchange_form(&svid, LEDGER);
    both.push(("resource", API));
    token_error(&srv, &both, Auth::None, 400, "invalid_request").await;
    let mut no_target = common::exchange_form(&svid, LEDGER);
    no_target.retain(|(k, _)| *k != "audience");
    token_error(&srv, &no_target, Auth::None, 400, "invalid_request").await;
    let mut bad_type = common::exchange_form(&svid, LEDGER);
    bad_type[2].1 = "urn:ietf:params:oauth:token-type:saml2";
    token_error(&srv, &bad_type, Auth::None, 400, "invalid_request").await;
    let mut bad_requested = common::exchange_form(&svid, LEDGER);
    bad_requested.push((
        "requested_token_type",
        "urn:ietf:params:oauth:token-type:saml2",
    ));
    token_error(&srv, &bad_requested, Auth::None, 400, "invalid_request").await;
    let mut actor_without_type = common::exchange_form(&svid, LEDGER);
    actor_without_type.push(("actor_token", &svid));
    token_error(
        &srv,
        &actor_without_type,
        Auth::None,
        400,
        "invalid_request",
    )
    .await;
    // The same SVID is fine in a well-formed request, with `resource` as the target.
    let mut ok = common::exchange_form(&svid, LEDGER);
    ok[3] = ("resource", LEDGER);
    assert_eq!(srv.post_form("/token", &ok, Auth::None).await.status, 200);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn token_unsupported_grant_type() {
    let srv = Env::new().start().await;
    let svid = srv.svid(PAYMENTS, 600);
    let mut form = common::exchange_form(&svid, LEDGER);
    form[0].1 = "password";
    token_error(&srv, &form, Auth::None, 400, "unsupported_grant_type").await;
    form[0].1 = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    token_error(&srv, &form, Auth::None, 400, "unsupported_grant_type").await;
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn token_invalid_grant() {
    let srv = Env::new().start().await;
    let env = &srv.env;
    let now = env.now();
    let kid = env.example_key.kid().to_owned();
    let claims = |sub: &str| json!({"sub": sub, "aud": [ISSUER], "iat": now, "exp": now + 600});

    let valid = env.svid(PAYMENTS, 600);
    let (si, sig) = valid.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let bad_signature = format!("{si}.{}", sig.into_iter().collect::<String>());

    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            env.svid_claims(&json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now - 3600, "exp": now - 120})),
        ),
        ("bad signature", bad_signature),
        (
            "untrusted trust domain",
            env.example_key
                .sign_compact("JWT", &claims("spiffe://evil.org/ns/payments/sa/api"))
                .unwrap(),
        ),
        (
            "wrong audience",
            env.svid_claims(&json!({"sub": PAYMENTS, "aud": ["https://elsewhere.example.org"], "iat": now, "exp": now + 600})),
        ),
        (
            "alg none",
            raw_jws(&json!({"alg": "none", "typ": "JWT", "kid": kid}), &claims(PAYMENTS), None),
        ),
        (
            "other trust domain's key under a reused kid",
            raw_jws(
                &json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
                &claims(PAYMENTS),
                Some(&env.other_key),
            ),
        ),
        (
            "not yet valid",
            env.svid_claims(&json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now, "nbf": now + 600, "exp": now + 1200})),
        ),
        (
            "issued in the future",
            env.svid_claims(&json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now + 600, "exp": now + 1200})),
        ),
        (
            "no exp",
            env.svid_claims(&json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now})),
        ),
        (
            "our own access token replayed as an SVID",
            srv.token_for(PAYMENTS, LEDGER, None).await,
        ),
        ("not a JWT", "garbage".to_owned()),
    ];
    for (name, token) in &cases {
        let r = srv.exchange(token, LEDGER, None).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (400, "invalid_grant"),
            "case {name}: {}",
            r.text
        );
        assert!(
            !r.text.contains(token.as_str()),
            "case {name} echoes the token"
        );
        srv.assert_audit(&r, "token.denied", "failure");
    }
    // Controls: the same key and kid are accepted where they belong.
    assert_eq!(srv.exchange(&valid, LEDGER, None).await.status, 200);
    let other = env.svid(OTHER_TD, 600);
    assert_eq!(kid_of(&other), kid, "other.org's key really shares the kid");
    let r = srv.exchange(&other, LEDGER, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(jws_part(&r.access_token(), 1)["sub"], OTHER_TD);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn token_invalid_client() {
    let srv = Env::new().start().await;
    let form = [("grant_type", "client_credentials"), ("audience", LEDGER)];
    let r = srv.post_form("/token", &form, Auth::None).await;
    r.assert_error(401, "invalid_client");
    assert!(r.header("www-authenticate").is_some());
    srv.assert_audit(&r, "token.denied", "failure");

    let now = srv.env.now();
    let wrong_aud = srv.env.svid_claims(
        &json!({"sub": PAYMENTS, "aud": ["https://elsewhere.example.org"], "iat": now, "exp": now + 60}),
    );
    token_error(
        &srv,
        &form,
        Auth::Assertion(&wrong_aud),
        401,
        "invalid_client",
    )
    .await;
    let forged = raw_jws(
        &json!({"alg": "ES256", "typ": "JWT", "kid": srv.env.example_key.kid()}),
        &json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now, "exp": now + 60}),
        Some(&srv.env.other_key),
    );
    token_error(&srv, &form, Auth::Assertion(&forged), 401, "invalid_client").await;

    // Control: a good assertion is a client_credentials grant for its own SPIFFE ID.
    let good = srv.svid(PAYMENTS, 60);
    let r = srv.post_form("/token", &form, Auth::Assertion(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(jws_part(&r.access_token(), 1)["sub"], PAYMENTS);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn token_invalid_target_and_invalid_scope() {
    let srv = Env::new().start().await;
    let svid = srv.svid(PAYMENTS, 600);
    token_error(
        &srv,
        &exchange_form(&svid, "https://nowhere.example.org"),
        Auth::None,
        400,
        "invalid_target",
    )
    .await;
    // An audience another rule grants, but not to this identity.
    token_error(
        &srv,
        &exchange_form(&svid, API),
        Auth::None,
        400,
        "invalid_target",
    )
    .await;
    let mut form = common::exchange_form(&svid, LEDGER);
    form.push(("scope", "ledger:read ledger:admin"));
    token_error(&srv, &form, Auth::None, 400, "invalid_scope").await;
    let r = srv.exchange(&svid, LEDGER, Some("ledger:write")).await;
    assert_eq!(
        r.json()["scope"],
        "ledger:write",
        "exactly the requested scope"
    );
    let r = srv.exchange(&svid, LEDGER, None).await;
    assert_eq!(
        r.json()["scope"],
        "ledger:read",
        "default scopes without a request"
    );
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn token_slow_down_per_identity() {
    let mut env = Env::new();
    env.settings.per_identity_limit = Some(tessera::config::Rate::per_second(1));
    let srv = env.start().await;
    let svid = srv.svid(PAYMENTS, 600);
    for _ in 0..2 {
        assert_eq!(
            srv.exchange(&svid, LEDGER, None).await.status,
            200,
            "burst of 2"
        );
    }
    let r = srv.exchange(&svid, LEDGER, None).await;
    r.assert_error(429, "slow_down");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(!r.text.contains(&svid));
    srv.assert_audit(&r, "token.denied", "failure");

    let other = srv.svid(PAYMENTS_WORKER, 600);
    assert_eq!(
        srv.exchange(&other, LEDGER, None).await.status,
        200,
        "another identity is unaffected"
    );
    srv.clock().advance(1);
    let svid = srv.svid(PAYMENTS, 600);
    assert_eq!(
        srv.exchange(&svid, LEDGER, None).await.status,
        200,
        "refilled a second later"
    );
    srv.assert_every_request_audited_once();
}

// ---------------------------------------------------------------- introspection and admin auth

#[tokio::test]
async fn introspection_authentication() {
    let srv = Env::new().start().await;
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;

    let r = srv.introspect_as(&token, Auth::None).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate").is_some(),
        "401 carries a challenge"
    );
    srv.assert_audit(&r, "token.introspected", "failure");

    let secret = srv.env.static_secret.clone();
    let r = srv
        .introspect_as(&token, Auth::Basic(STATIC_CLIENT, &secret))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["active"], true);
    srv.assert_audit(&r, "token.introspected", "success");

    let r = srv
        .introspect_as(&token, Auth::Basic(STATIC_CLIENT, "not-the-secret"))
        .await;
    r.assert_error(401, "invalid_client");
    let r = srv
        .introspect_as(&token, Auth::Basic("nobody", &secret))
        .await;
    r.assert_error(401, "invalid_client");

    let not_allowed = srv.svid(PAYMENTS, 300);
    let r = srv
        .introspect_as(&token, Auth::Assertion(&not_allowed))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(!r.text.contains("active"));
    srv.assert_audit(&r, "token.introspected", "failure");

    let rs = srv.svid(RS, 300);
    let r = srv.introspect_as(&token, Auth::Assertion(&rs)).await;
    assert_eq!(r.json()["active"], true);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn admin_authentication_and_revocation_lifecycle() {
    let srv = Env::new().start().await;
    let path = "/admin/v1/revocations";
    let body = || Some(json!({"subject": PAYMENTS, "reason": "incident 42"}));

    let r = srv.admin_as(Method::POST, path, body(), Auth::None).await;
    assert_eq!(r.status, 401, "{}", r.text);
    srv.assert_audit(&r, "admin.revoke", "failure");
    let r = srv
        .admin_as(
            Method::POST,
            path,
            body(),
            Auth::Bearer("not-the-admin-token"),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = srv
        .admin_as(Method::GET, "/admin/v1/tokens", None, Auth::Bearer("nope"))
        .await;
    assert_eq!(r.status, 401);
    srv.assert_audit(&r, "admin.tokens.list", "failure");
    let workload = srv.svid(PAYMENTS, 300);
    let r = srv
        .admin_as(Method::POST, path, body(), Auth::Bearer(&workload))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let ops = srv.svid(OPS, 300);
    let r = srv
        .admin_as(
            Method::GET,
            "/admin/v1/revocations",
            None,
            Auth::Bearer(&ops),
        )
        .await;
    assert_eq!(r.status, 200, "an allowed workload is an admin: {}", r.text);
    assert_eq!(
        r.json()["items"],
        json!([]),
        "nothing was revoked by refused calls"
    );

    for bad in [
        json!({"subject": PAYMENTS, "reason": ""}),
        json!({"subject": PAYMENTS, "reason": "   "}),
        json!({"subject": PAYMENTS}),
    ] {
        let r = srv.admin(Method::POST, path, Some(bad.clone())).await;
        r.assert_error(400, "invalid_request");
    }

    // Subject revocation: the watermark makes the subject's tokens inactive; lifting it
    // makes them active again.
    let t = srv.token_for(PAYMENTS, LEDGER, None).await;
    let r = srv.admin(Method::POST, path, body()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let sub_rec = r.json();
    assert_eq!(sub_rec["kind"], "subject");
    assert_eq!(sub_rec["actor"], "admin-token");
    assert!(!srv.active(&t).await);
    let r = srv
        .admin(
            Method::DELETE,
            &format!("{path}/{}", sub_rec["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    srv.assert_audit(&r, "admin.revocation.lift", "success");
    assert!(
        srv.active(&t).await,
        "lifted: the subject's tokens are active again"
    );

    // A jti revocation cannot be lifted.
    let jti = jws_part(&t, 1)["jti"].as_str().unwrap().to_owned();
    let r = srv
        .admin(Method::POST, path, Some(json!({"jti": jti, "reason": "r"})))
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = srv
        .admin(Method::DELETE, &format!("{path}/{id}"), None)
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(!srv.active(&t).await);
    let r = srv
        .admin(Method::DELETE, &format!("{path}/no-such-id"), None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    srv.assert_every_request_audited_once();
}

// ---------------------------------------------------------------- revocation semantics

#[tokio::test]
async fn subject_watermark_and_block_new() {
    let srv = Env::new().start().await;
    let t = srv.token_for(PAYMENTS, LEDGER, None).await;
    let bystander = srv.token_for(PAYMENTS_WORKER, LEDGER, None).await;
    let r = srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"subject": PAYMENTS, "reason": "compromised", "block_new": "30m"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!srv.active(&t).await);
    assert!(srv.active(&bystander).await, "other subjects are untouched");

    let svid = srv.svid(PAYMENTS, 3600);
    let r = srv.exchange(&svid, LEDGER, None).await;
    r.assert_error(400, "invalid_grant");
    srv.assert_audit(&r, "token.denied", "failure");
    srv.token_for(PAYMENTS_WORKER, LEDGER, None).await;

    srv.clock().advance(29 * 60);
    let r = srv.exchange(&srv.svid(PAYMENTS, 3600), LEDGER, None).await;
    r.assert_error(400, "invalid_grant");

    srv.clock().advance(2 * 60);
    let fresh = srv.token_for(PAYMENTS, LEDGER, None).await;
    assert!(
        srv.active(&fresh).await,
        "a token issued after the block is valid"
    );
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn block_new_out_of_range_is_refused_and_nothing_is_stored() {
    let srv = Env::new().start().await;
    let path = "/admin/v1/revocations";
    // u64::MAX seconds once wrapped to a block that never held; i64::MAX overflowed.
    for d in [
        "0s",
        "366d",
        "9223372036854775807s",
        "18446744073709551615s",
        "99999999999999999999s",
    ] {
        let r = srv
            .admin(
                Method::POST,
                path,
                Some(json!({"subject": PAYMENTS, "reason": "typo", "block_new": d})),
            )
            .await;
        r.assert_error(400, "invalid_request");
    }
    let r = srv.admin(Method::GET, path, None).await;
    assert_eq!(r.json()["items"], json!([]), "refused calls stored nothing");
    srv.token_for(PAYMENTS, LEDGER, None).await;

    // The upper bound itself is accepted and renders as RFC 3339.
    let r = srv
        .admin(
            Method::POST,
            path,
            Some(json!({"subject": PAYMENTS, "reason": "long", "block_new": "365d"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let rec = r.json();
    let at = |k: &str| tessera::clock::parse_rfc3339(rec[k].as_str().unwrap()).unwrap();
    assert_eq!(at("expires_at") - at("created_at"), 365 * 86_400, "{rec}");
    let r = srv.exchange(&srv.svid(PAYMENTS, 3600), LEDGER, None).await;
    r.assert_error(400, "invalid_grant");
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn kid_revocation_rotates_and_unpublishes_the_key() {
    let srv = Env::new().start().await;
    let t = srv.token_for(PAYMENTS, LEDGER, None).await;
    let old = kid_of(&t);
    let kids = srv.jwks_kids().await;
    assert_eq!(kids.len(), 2);
    let next = kids.iter().find(|k| **k != old).unwrap().clone();

    let r = srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kid": old, "reason": "key exposure"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["kind"], "kid");
    assert!(!srv.active(&t).await);
    let kids = srv.jwks_kids().await;
    assert!(!kids.contains(&old), "revoked kid left the JWKS: {kids:?}");
    assert!(kids.contains(&next));

    let t2 = srv.token_for(PAYMENTS, LEDGER, None).await;
    assert_eq!(
        kid_of(&t2),
        next,
        "issuance continues with the promoted next key"
    );
    assert!(srv.active(&t2).await);

    // Lifting the key revocation brings the key back (published, trusted, not signing).
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let lifted = srv
        .admin(Method::DELETE, &format!("/admin/v1/revocations/{id}"), None)
        .await;
    assert_eq!(lifted.status, 204, "{}", lifted.text);
    assert!(
        srv.active(&t).await,
        "token of the restored key is active again"
    );
    assert!(srv.jwks_kids().await.contains(&old));
    assert_eq!(kid_of(&srv.token_for(PAYMENTS, LEDGER, None).await), next);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn admin_rotation_keeps_old_tokens_and_promotes_the_next_key() {
    let srv = Env::new().start().await;
    let t = srv.token_for(PAYMENTS, LEDGER, None).await;
    let old = kid_of(&t);
    let next = srv
        .jwks_kids()
        .await
        .into_iter()
        .find(|k| *k != old)
        .unwrap();
    let r = srv.admin(Method::POST, "/admin/v1/keys/rotate", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    srv.assert_audit(&r, "keys.rotated", "success");
    let keys = r.json()["keys"].as_array().unwrap().clone();
    let state = |kid: &str| {
        keys.iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state(&next).as_deref(), Some("current"));
    assert_eq!(state(&old).as_deref(), Some("retired"));
    let new_next: Vec<_> = keys.iter().filter(|k| k["state"] == "next").collect();
    assert_eq!(new_next.len(), 1);
    let new_next = new_next[0]["kid"].as_str().unwrap().to_owned();
    assert!(new_next != old && new_next != next);

    let kids = srv.jwks_kids().await;
    for k in [&old, &next, &new_next] {
        assert!(kids.contains(k), "{k} published: {kids:?}");
    }
    assert!(
        srv.active(&t).await,
        "a token of the retired key stays valid"
    );
    let jwks = srv.jwks().await;
    assert!(josekit_verify(&t, &jwks).is_ok());

    let t2 = srv.token_for(PAYMENTS, LEDGER, None).await;
    assert_eq!(kid_of(&t2), next);
    assert!(srv.active(&t2).await);
    assert!(
        josekit_verify(&t2, &jwks).is_ok(),
        "the promoted key was published ahead"
    );
    // The retired key leaves the JWKS once its last token can have expired
    // (global max_ttl 15m + leeway 30s).
    srv.clock().advance(15 * 60 + 31);
    let kids = srv.jwks_kids().await;
    assert!(!kids.contains(&old), "{kids:?}");
    assert!(kids.contains(&next) && kids.contains(&new_next), "{kids:?}");
    srv.assert_every_request_audited_once();
}

// ---------------------------------------------------------------- delegation and lifetime

#[tokio::test]
async fn delegation_puts_the_listed_actor_in_act() {
    let srv = Env::new().start().await;
    let subject = srv.svid(FRONTEND, 600);
    let edge = srv.svid(EDGE, 600);
    let mut form = common::exchange_form(&subject, API);
    form.push(("actor_token", &edge));
    form.push(("actor_token_type", JWT_TYPE));
    let r = srv.post_form("/token", &form, Auth::None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let claims = jws_part(&r.access_token(), 1);
    assert_eq!(claims["sub"], FRONTEND);
    assert_eq!(claims["act"], json!({"sub": EDGE}));

    let rogue = srv.svid(ROGUE, 600);
    let mut form = common::exchange_form(&subject, API);
    form.push(("actor_token", &rogue));
    form.push(("actor_token_type", JWT_TYPE));
    token_error(&srv, &form, Auth::None, 400, "invalid_grant").await;

    let r = srv.exchange(&subject, API, None).await;
    assert!(
        jws_part(&r.access_token(), 1).get("act").is_none(),
        "no act without delegation"
    );
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn lifetime_is_the_minimum_of_rule_global_and_svid() {
    let srv = Env::new().start().await;
    let cases = [
        // (identity, audience, SVID life, expected token life)
        (PAYMENTS, LEDGER, 60, 60),    // the SVID's remaining life
        (PAYMENTS, LEDGER, 3600, 300), // the rule's max_ttl
        (BATCH_JOB, BATCH, 3600, 900), // the global max_ttl under a 1h rule
        (BATCH_JOB, BATCH, 120, 120),  // the SVID again
        (FRONTEND, API, 3600, 300),    // default_ttl for a rule without max_ttl
    ];
    for (id, aud, svid_life, want) in cases {
        let r = srv.exchange(&srv.svid(id, svid_life), aud, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.json()["expires_in"],
            want,
            "{id} with a {svid_life}s SVID"
        );
        let c = jws_part(&r.access_token(), 1);
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            want
        );
    }
    // Introspection follows the token's exp on the manual clock.
    let t = srv.token_for(PAYMENTS, LEDGER, None).await;
    srv.clock().advance(299);
    assert!(srv.active(&t).await, "one second before exp");
    srv.clock().advance(1);
    assert!(!srv.active(&t).await, "expired at exp");
    srv.assert_every_request_audited_once();
}

// ---------------------------------------------------------------- reload

#[tokio::test]
async fn policy_reload_rejects_a_broken_policy_and_applies_a_good_one() {
    let srv = Env::new().start().await;
    let policy = srv.env.path().join("policy.toml");
    std::fs::write(&policy, "[[rule]]\nid = \"broken\"\nmatch.spiffe_id = 42\n").unwrap();
    let r = srv
        .admin(Method::POST, "/admin/v1/policy/reload", None)
        .await;
    r.assert_error(400, "invalid_request");
    srv.assert_audit(&r, "policy.reloaded", "failure");
    srv.token_for(PAYMENTS, LEDGER, None).await;

    const NEW: &str = "https://new.example.org";
    let svid = srv.svid(PAYMENTS, 600);
    srv.exchange(&svid, NEW, None)
        .await
        .assert_error(400, "invalid_target");
    let extra = format!(
        "{POLICY}\n[[rule]]\nid = \"payments-new\"\nmatch.spiffe_id = \"{PAYMENTS}\"\ngrant.audiences = [\"{NEW}\"]\n"
    );
    std::fs::write(&policy, extra).unwrap();
    let r = srv
        .admin(Method::POST, "/admin/v1/policy/reload", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["rules"], 5);
    assert_eq!(r.json()["bundles_failed"], json!([]));
    srv.assert_audit(&r, "policy.reloaded", "success");
    let r = srv.exchange(&svid, NEW, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn bundle_reload_keeps_the_last_good_bundle() {
    let srv = Env::new().start().await;
    std::fs::write(
        srv.env.path().join("bundles/example.org.json"),
        "{\"keys\": [ garbage",
    )
    .unwrap();
    let r = srv
        .admin(Method::POST, "/admin/v1/policy/reload", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let failed = r.json()["bundles_failed"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["trust_domain"], "example.org");
    let t = srv.token_for(PAYMENTS, LEDGER, None).await;
    assert!(srv.active(&t).await);
    assert_eq!(srv.get("/readyz").await.status, 200);
    srv.assert_every_request_audited_once();
}

// ---------------------------------------------------------------- audit

#[tokio::test]
async fn every_request_has_one_audit_line_with_event_and_outcome() {
    let srv = Env::new().start().await;
    let svid = srv.svid(PAYMENTS, 600);
    let mut seen = Vec::new();

    let r = srv.exchange(&svid, LEDGER, None).await;
    let token = r.access_token();
    let line = srv.audit_of(&r.rid);
    assert_eq!(line["subject"], PAYMENTS);
    assert_eq!(line["audience"], LEDGER);
    assert_eq!(line["rule"], "payments-ledger");
    assert_eq!(line["scope"], "ledger:read");
    assert!(line["issuer_kind"].is_string());
    assert_eq!(line["remote_addr"], "127.0.0.1");
    assert!(line["ts"].as_str().unwrap().ends_with('Z'));
    seen.push((r, "token.issued", "success"));
    seen.push((
        srv.exchange(&svid, API, None).await,
        "token.denied",
        "failure",
    ));
    seen.push((
        srv.introspect(&token).await,
        "token.introspected",
        "success",
    ));
    seen.push((
        srv.introspect_as(&token, Auth::None).await,
        "token.introspected",
        "failure",
    ));
    let own = srv.svid(PAYMENTS, 60);
    seen.push((
        srv.revoke(&token, Auth::Assertion(&own)).await,
        "token.revoked",
        "success",
    ));
    seen.push((
        srv.revoke(&token, Auth::None).await,
        "token.revoked",
        "failure",
    ));
    seen.push((
        srv.introspect(&token).await,
        "token.introspected",
        "success",
    ));
    seen.push((
        srv.admin(Method::GET, "/admin/v1/tokens", None).await,
        "admin.tokens.list",
        "success",
    ));
    seen.push((
        srv.admin(Method::GET, "/admin/v1/revocations", None).await,
        "admin.revocations.list",
        "success",
    ));
    seen.push((
        srv.admin(Method::GET, "/admin/v1/revocations?kind=bogus", None)
            .await,
        "admin.revocations.list",
        "failure",
    ));
    for (path, event) in [
        ("/admin/v1/tokens?limit=many", "admin.tokens.list"),
        ("/admin/v1/revocations?limit=-1", "admin.revocations.list"),
        ("/admin/v1/audit?since=yesterday", "admin.audit.query"),
        ("/admin/v1/audit?limit=x", "admin.audit.query"),
    ] {
        let r = srv.admin(Method::GET, path, None).await;
        r.assert_error(400, "invalid_request");
        seen.push((r, event, "failure"));
    }
    seen.push((
        srv.admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"subject": PAYMENTS_WORKER, "reason": "r"})),
        )
        .await,
        "admin.revoke",
        "success",
    ));
    seen.push((
        srv.admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"reason": "r"})),
        )
        .await,
        "admin.revoke",
        "failure",
    ));
    seen.push((
        srv.admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!("not an object")),
        )
        .await,
        "admin.revoke",
        "failure",
    ));
    seen.push((
        srv.admin(Method::DELETE, "/admin/v1/revocations/none", None)
            .await,
        "admin.revocation.lift",
        "failure",
    ));
    seen.push((
        srv.admin(Method::POST, "/admin/v1/keys/rotate", None).await,
        "keys.rotated",
        "success",
    ));
    seen.push((
        srv.admin(Method::POST, "/admin/v1/policy/reload", None)
            .await,
        "policy.reloaded",
        "success",
    ));
    seen.push((
        srv.admin(Method::GET, "/admin/v1/audit?limit=5", None)
            .await,
        "admin.audit.query",
        "success",
    ));
    seen.push((
        srv.admin_as(Method::POST, "/admin/v1/keys/rotate", None, Auth::None)
            .await,
        "keys.rotated",
        "failure",
    ));
    for (r, event, outcome) in &seen {
        srv.assert_audit(r, event, outcome);
        let line = srv.audit_of(&r.rid).to_string();
        assert!(!line.contains(&token) && !line.contains(&svid), "{line}");
    }
    // The revoked token's later introspection names why it is inactive, with the jti.
    let last_intro = srv.audit_of(&seen[6].0.rid);
    assert_eq!(last_intro["jti"], jws_part(&token, 1)["jti"]);
    srv.assert_every_request_audited_once();
}

// ---------------------------------------------------------------- secrets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_audit_lines_or_error_bodies() {
    let logs = SharedBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("tessera=trace,warn"))
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let srv = Env::new().start().await;
    let env = &srv.env;
    let mut secrets: Vec<String> = vec![env.admin_token.clone(), env.static_secret.clone()];
    let svid = srv.svid(PAYMENTS, 600);
    let r = srv.exchange(&svid, LEDGER, None).await;
    let token = r.access_token();
    let expired = env.svid_claims(
        &json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": env.now() - 900, "exp": env.now() - 300}),
    );
    srv.exchange(&expired, LEDGER, None)
        .await
        .assert_error(400, "invalid_grant");
    srv.exchange(&svid, LEDGER, Some("ledger:admin"))
        .await
        .assert_error(400, "invalid_scope");
    let rs = srv.svid(RS, 300);
    srv.introspect_as(&token, Auth::Assertion(&rs)).await;
    let secret = env.static_secret.clone();
    srv.introspect_as(&token, Auth::Basic(STATIC_CLIENT, &secret))
        .await;
    let wrong_secret = "wrong-secret-0123456789abcdef".to_owned();
    srv.introspect_as(&token, Auth::Basic(STATIC_CLIENT, &wrong_secret))
        .await
        .assert_error(401, "invalid_client");
    let stranger = srv.svid(PAYMENTS_WORKER, 300);
    srv.introspect_as(&token, Auth::Assertion(&stranger)).await;
    srv.revoke(&token, Auth::Assertion(&stranger))
        .await
        .assert_error(400, "unauthorized_client");
    let cc_assertion = srv.svid(PAYMENTS, 120);
    let cc = srv
        .post_form(
            "/token",
            &[("grant_type", "client_credentials"), ("audience", LEDGER)],
            Auth::Assertion(&cc_assertion),
        )
        .await
        .access_token();
    let own = srv.svid(PAYMENTS, 300);
    srv.revoke(&token, Auth::Assertion(&own)).await;
    let admin = env.admin_token.clone();
    srv.revoke(&cc, Auth::Bearer(&admin)).await;
    let wrong_admin = format!("{admin}x");
    srv.admin_as(
        Method::GET,
        "/admin/v1/tokens",
        None,
        Auth::Bearer(&wrong_admin),
    )
    .await;
    srv.admin(Method::GET, "/admin/v1/tokens", None).await;
    srv.admin(Method::GET, "/admin/v1/audit", None).await;
    srv.admin(
        Method::POST,
        "/admin/v1/revocations",
        Some(json!({"subject": PAYMENTS, "reason": "scan"})),
    )
    .await;
    let ops = srv.svid(OPS, 300);
    srv.admin_as(
        Method::POST,
        "/admin/v1/keys/rotate",
        None,
        Auth::Bearer(&ops),
    )
    .await;
    // Something is logged (so the capture works): a bundle reload failure.
    std::fs::write(env.path().join("bundles/other.org.json"), "not json").unwrap();
    srv.admin(Method::POST, "/admin/v1/policy/reload", None)
        .await;
    let log_text = logs.text();
    assert!(
        log_text.contains("trust bundle reload failed"),
        "tracing output captured: {log_text}"
    );

    secrets.extend([
        svid,
        token,
        expired,
        rs,
        wrong_secret,
        stranger,
        cc_assertion,
        cc,
        own,
        wrong_admin,
        ops,
    ]);
    let audit = srv.audit.text();
    assert!(audit.lines().count() >= 15);
    let responses = srv.responses.lock().unwrap().clone();
    for s in &secrets {
        // The whole string, and for JWTs the signature alone.
        let needles = [s.as_str(), s.rsplit('.').next().unwrap()];
        for n in needles {
            assert!(!log_text.contains(n), "a secret is in the logs: {n}");
            assert!(!audit.contains(n), "a secret is in the audit lines: {n}");
            for (path, status, body) in &responses {
                if path == "/token" && *status == 200 {
                    continue; // the issued token itself
                }
                assert!(
                    !body.contains(n),
                    "a secret is in the {status} body of {path}"
                );
            }
        }
    }
    srv.assert_every_request_audited_once();
}
