#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! Audit completeness (contract §8) over the real HTTPS server: every request kind and
//! every error path leaves exactly one audit line with the fields its event promises, and
//! the lines link a subject credential to the rule, the issued jti, its introspections
//! and its revocation. Also the start-up refusal of secret files others can read.

mod common;

use common::mtls::{add_x509_authorities, ca, leaf};
use common::{
    API, Auth, Env, ISSUER, LEDGER, OPS, PAYMENTS, PAYMENTS_WORKER, ROGUE, RS, Resp, STATIC_CLIENT,
    Server, TOKEN_EXCHANGE, jws_part, raw_jws, sha256_hex,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use tessera::clock::{Clock as _, SystemClock};

/// Fields every audit line carries (contract §8).
const ALWAYS: &[&str] = &["ts", "event", "outcome", "remote_addr", "request_id"];

/// Asserts the one audit line of `r`: its event, outcome, that every field of `ALWAYS`
/// and of `fields` is present, and that a failure names its reason.
fn expect(
    srv: &Server,
    name: &str,
    r: &Resp,
    event: &str,
    outcome: &str,
    fields: &[&str],
) -> Value {
    let line = srv.audit_of(&r.rid);
    assert_eq!(
        (line["event"].as_str(), line["outcome"].as_str()),
        (Some(event), Some(outcome)),
        "case {name}: {line}"
    );
    for f in ALWAYS.iter().chain(fields) {
        assert!(
            line.get(*f).is_some_and(|v| !v.is_null()),
            "case {name}: audit line lacks {f}: {line}"
        );
    }
    if outcome == "failure" {
        assert!(line["reason"].is_string(), "case {name}: no reason: {line}");
    }
    assert_eq!(line["remote_addr"], "127.0.0.1", "case {name}");
    line
}

#[tokio::test]
async fn every_request_kind_and_error_path_is_audited_once_with_its_fields() {
    let srv = Env::new().start().await;
    let now = srv.env.now();
    let svid = srv.svid(PAYMENTS, 600);

    // ---- /token
    let r = srv.exchange(&svid, LEDGER, Some("ledger:write")).await;
    let token = r.access_token();
    let line = expect(
        &srv,
        "issued",
        &r,
        "token.issued",
        "success",
        &[
            "subject",
            "issuer_kind",
            "audience",
            "scope",
            "jti",
            "rule",
            "credential_sha256",
        ],
    );
    assert_eq!(line["credential_sha256"], sha256_hex(&svid));
    assert_eq!(line["jti"], jws_part(&token, 1)["jti"]);

    let r = srv
        .post_form("/token", &[("grant_type", TOKEN_EXCHANGE)], Auth::None)
        .await;
    r.assert_error(400, "invalid_request");
    expect(&srv, "invalid_request", &r, "token.denied", "failure", &[]);

    let r = srv
        .post_form(
            "/token",
            &[("grant_type", "password"), ("audience", LEDGER)],
            Auth::None,
        )
        .await;
    r.assert_error(400, "unsupported_grant_type");
    expect(
        &srv,
        "unsupported_grant_type",
        &r,
        "token.denied",
        "failure",
        &[],
    );

    // Signed by other.org's key under example.org's kid, claiming an example.org subject.
    let forged = raw_jws(
        &json!({"typ": "JWT", "alg": "ES256", "kid": srv.env.example_key.kid()}),
        &json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now, "exp": now + 600}),
        Some(&srv.env.other_key),
    );
    let r = srv
        .post_form(
            "/token",
            &common::exchange_form(&forged, LEDGER),
            Auth::None,
        )
        .await;
    r.assert_error(400, "invalid_grant");
    let line = expect(
        &srv,
        "bad signature",
        &r,
        "token.denied",
        "failure",
        &["audience", "credential_sha256"],
    );
    assert_eq!(line["credential_sha256"], sha256_hex(&forged));
    assert!(
        line.get("subject").is_none(),
        "unverified subject logged: {line}"
    );

    let expired = srv.env.svid_claims(
        &json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now - 900, "exp": now - 600}),
    );
    let r = srv.exchange(&expired, LEDGER, None).await;
    r.assert_error(400, "invalid_grant");
    let line = expect(
        &srv,
        "expired",
        &r,
        "token.denied",
        "failure",
        &["credential_sha256"],
    );
    assert_eq!(line["credential_sha256"], sha256_hex(&expired));

    let r = srv.exchange(&svid, API, None).await;
    r.assert_error(400, "invalid_target");
    let line = expect(
        &srv,
        "policy: no rule",
        &r,
        "token.denied",
        "failure",
        &["subject", "issuer_kind", "audience", "credential_sha256"],
    );
    assert_eq!(line["subject"], PAYMENTS);

    let r = srv.exchange(&svid, LEDGER, Some("ledger:admin")).await;
    r.assert_error(400, "invalid_scope");
    let line = expect(
        &srv,
        "policy: scope",
        &r,
        "token.denied",
        "failure",
        &["subject", "audience", "rule", "credential_sha256"],
    );
    assert_eq!(line["rule"], "payments-ledger");

    let big = "a".repeat(70 * 1024);
    let r = srv
        .post_form(
            "/token",
            &[("grant_type", TOKEN_EXCHANGE), ("pad", &big)],
            Auth::None,
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    expect(&srv, "413", &r, "token.denied", "failure", &[]);

    // ---- /introspect
    let r = srv.introspect(&token).await;
    assert_eq!(r.json()["active"], true);
    let line = expect(
        &srv,
        "introspect active",
        &r,
        "token.introspected",
        "success",
        &["caller", "jti", "subject", "audience", "active"],
    );
    assert_eq!(
        (&line["caller"], &line["jti"], &line["active"]),
        (&json!(RS), &jws_part(&token, 1)["jti"], &json!(true))
    );

    let r = srv.introspect("not-a-token").await;
    assert_eq!(r.json(), json!({"active": false}));
    let line = expect(
        &srv,
        "introspect inactive",
        &r,
        "token.introspected",
        "success",
        &["caller", "active", "reason"],
    );
    assert_eq!(line["active"], false);

    let r = srv
        .introspect_as(
            &token,
            Auth::Basic(STATIC_CLIENT, &srv.env.static_secret.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let line = expect(
        &srv,
        "introspect basic",
        &r,
        "token.introspected",
        "success",
        &["caller"],
    );
    assert_eq!(line["caller"], format!("client:{STATIC_CLIENT}"));

    let r = srv.introspect_as(&token, Auth::None).await;
    r.assert_error(401, "invalid_client");
    expect(
        &srv,
        "introspect 401",
        &r,
        "token.introspected",
        "failure",
        &[],
    );

    let r = srv
        .introspect_as(&token, Auth::Basic(STATIC_CLIENT, "wrong-secret-wrong"))
        .await;
    r.assert_error(401, "invalid_client");
    expect(
        &srv,
        "introspect bad secret",
        &r,
        "token.introspected",
        "failure",
        &[],
    );

    // ---- /revoke
    let own = srv.svid(PAYMENTS, 60);
    let r = srv.revoke(&token, Auth::Assertion(&own)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    expect(
        &srv,
        "revoke",
        &r,
        "token.revoked",
        "success",
        &[
            "caller",
            "jti",
            "subject",
            "revocation_kind",
            "revocation_id",
        ],
    );
    let r = srv.revoke(&token, Auth::None).await;
    r.assert_error(401, "invalid_client");
    expect(&srv, "revoke 401", &r, "token.revoked", "failure", &[]);
    let worker_token = srv.token_for(PAYMENTS_WORKER, LEDGER, None).await;
    let r = srv.revoke(&worker_token, Auth::Assertion(&own)).await;
    r.assert_error(400, "unauthorized_client");
    expect(
        &srv,
        "revoke other's token",
        &r,
        "token.revoked",
        "failure",
        &["caller", "jti"],
    );

    // ---- admin: every route, success, 401 and 403
    let rogue = srv.svid(ROGUE, 300);
    let ops = srv.svid(OPS, 300);
    let r = srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"subject": PAYMENTS_WORKER, "reason": "audit test"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let revocation_id = r.json()["id"].as_str().unwrap().to_owned();
    let line = expect(
        &srv,
        "admin revoke",
        &r,
        "admin.revoke",
        "success",
        &["caller", "subject", "revocation_kind", "revocation_id"],
    );
    assert_eq!(
        (&line["caller"], &line["subject"], &line["revocation_kind"]),
        (
            &json!("admin-token"),
            &json!(PAYMENTS_WORKER),
            &json!("subject")
        )
    );
    let lift = format!("/admin/v1/revocations/{revocation_id}");
    let routes: [(Method, &str, Option<Value>, &str, u16); 7] = [
        (
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"jti": "j-audit-1", "reason": "audit test"})),
            "admin.revoke",
            201,
        ),
        (
            Method::GET,
            "/admin/v1/revocations",
            None,
            "admin.revocations.list",
            200,
        ),
        (Method::DELETE, &lift, None, "admin.revocation.lift", 204),
        (
            Method::GET,
            "/admin/v1/tokens",
            None,
            "admin.tokens.list",
            200,
        ),
        (
            Method::POST,
            "/admin/v1/keys/rotate",
            None,
            "keys.rotated",
            200,
        ),
        (
            Method::POST,
            "/admin/v1/policy/reload",
            None,
            "policy.reloaded",
            200,
        ),
        (
            Method::GET,
            "/admin/v1/audit",
            None,
            "admin.audit.query",
            200,
        ),
    ];
    for (method, path, body, event, ok) in routes {
        let r = srv
            .admin_as(method.clone(), path, body.clone(), Auth::Bearer(&ops))
            .await;
        assert_eq!(r.status, ok, "{path}: {}", r.text);
        let line = expect(&srv, path, &r, event, "success", &["caller"]);
        assert_eq!(line["caller"], OPS, "{path}");

        let r = srv
            .admin_as(
                method.clone(),
                path,
                body.clone(),
                Auth::Bearer("not-the-admin-token"),
            )
            .await;
        r.assert_error(401, "invalid_client");
        let line = expect(&srv, &format!("{path} 401"), &r, event, "failure", &[]);
        assert!(line.get("caller").is_none(), "{line}");

        let r = srv
            .admin_as(method.clone(), path, body.clone(), Auth::None)
            .await;
        r.assert_error(401, "invalid_client");
        expect(
            &srv,
            &format!("{path} no credential"),
            &r,
            event,
            "failure",
            &[],
        );

        let r = srv.admin_as(method, path, body, Auth::Bearer(&rogue)).await;
        r.assert_error(403, "access_denied");
        expect(&srv, &format!("{path} 403"), &r, event, "failure", &[]);
    }

    // ---- routing refusals on both listeners
    let r = srv.post_form("/no-such-endpoint", &[], Auth::None).await;
    assert_eq!(r.status, 404, "{}", r.text);
    expect(&srv, "public 404", &r, "request.rejected", "failure", &[]);
    let r = srv.post_form("/jwks.json", &[], Auth::None).await;
    assert_eq!(r.status, 405, "{}", r.text);
    expect(&srv, "public 405", &r, "request.rejected", "failure", &[]);
    let r = srv.admin(Method::GET, "/admin/v1/nothing", None).await;
    assert_eq!(r.status, 404, "{}", r.text);
    expect(&srv, "admin 404", &r, "request.rejected", "failure", &[]);
    let r = srv.admin(Method::PUT, "/admin/v1/tokens", None).await;
    assert_eq!(r.status, 405, "{}", r.text);
    expect(&srv, "admin 405", &r, "request.rejected", "failure", &[]);

    // ---- unaudited by design: metadata, JWKS and health carry no credential. If they
    // wrote audit lines, the check below would find lines of no audited request.
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/jwks.json",
        "/healthz",
        "/readyz",
    ] {
        assert_eq!(srv.get(path).await.status, 200, "{path}");
    }
    srv.assert_every_request_audited_once();
    // No line ever carries a token or a secret the test used.
    let text = srv.audit.text();
    for secret in [
        &token,
        &svid,
        &forged,
        &own,
        &ops,
        &srv.env.admin_token,
        &srv.env.static_secret,
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret reached the audit log"
        );
    }
    srv.shutdown().await;
}

/// Every event naming `jti`, in order.
fn events_of_jti(srv: &Server, jti: &str) -> Vec<Value> {
    srv.audit_lines()
        .into_iter()
        .filter(|l| l["jti"] == jti)
        .collect()
}

#[tokio::test]
async fn audit_chain_links_credential_rule_jti_introspections_and_revocation() {
    let srv = Env::new().start().await;
    let svid = srv.svid(PAYMENTS, 600);
    let token = srv.exchange(&svid, LEDGER, None).await.access_token();
    assert!(srv.active(&token).await);
    assert!(srv.active(&token).await);
    let own = srv.svid(PAYMENTS, 60);
    assert_eq!(srv.revoke(&token, Auth::Assertion(&own)).await.status, 200);
    assert!(!srv.active(&token).await);

    // Follow the chain from the credential's hash alone, as an operator with jq would.
    let lines = srv.audit_lines();
    let issued: Vec<&Value> = lines
        .iter()
        .filter(|l| l["credential_sha256"] == sha256_hex(&svid))
        .collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    let issued = issued[0];
    assert_eq!(
        (&issued["event"], &issued["rule"], &issued["subject"]),
        (
            &json!("token.issued"),
            &json!("payments-ledger"),
            &json!(PAYMENTS)
        )
    );
    let jti = issued["jti"].as_str().unwrap();
    assert_eq!(jti, jws_part(&token, 1)["jti"]);

    let chain = events_of_jti(&srv, jti);
    let shape: Vec<(String, Option<bool>)> = chain
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap().to_owned(),
                l["active"].as_bool(),
            )
        })
        .collect();
    let expected = [
        ("token.issued", None),
        ("token.introspected", Some(true)),
        ("token.introspected", Some(true)),
        ("token.revoked", None),
        ("token.introspected", Some(false)),
    ];
    let expected: Vec<(String, Option<bool>)> = expected
        .iter()
        .map(|(e, a)| ((*e).to_owned(), *a))
        .collect();
    assert_eq!(shape, expected, "{chain:#?}");
    for l in &chain[1..] {
        assert_eq!(l["subject"], PAYMENTS, "{l}");
        assert_eq!(l["outcome"], "success", "{l}");
    }
    assert_eq!(chain[1]["caller"], RS);
    assert_eq!(
        (&chain[3]["caller"], &chain[3]["revocation_kind"]),
        (&json!(PAYMENTS), &json!("jti"))
    );
    assert!(chain[3]["revocation_id"].is_string());
    assert_eq!(chain[4]["reason"], "inactive: revoked");

    // Admin revocations name what they revoke: a jti, a subject, a signing key.
    let other = srv.token_for(PAYMENTS_WORKER, LEDGER, None).await;
    let other_jti = jws_part(&other, 1)["jti"].as_str().unwrap().to_owned();
    let kid = jws_part(&other, 0)["kid"].as_str().unwrap().to_owned();
    for (body, kind, field, value) in [
        (json!({"jti": other_jti}), "jti", "jti", other_jti.clone()),
        (
            json!({"subject": PAYMENTS_WORKER}),
            "subject",
            "subject",
            PAYMENTS_WORKER.to_owned(),
        ),
        (json!({"kid": kid}), "kid", "kid", kid.clone()),
    ] {
        let mut body = body;
        body["reason"] = json!("chain test");
        let r = srv
            .admin(Method::POST, "/admin/v1/revocations", Some(body))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let line = srv.audit_of(&r.rid);
        assert_eq!(
            (
                &line["revocation_kind"],
                &line[field],
                &line["revocation_id"]
            ),
            (&json!(kind), &json!(value), &r.json()["id"]),
            "{line}"
        );
        assert_eq!(line["caller"], "admin-token");
        if kind == "jti" {
            assert!(!srv.active(&other).await);
            let after = events_of_jti(&srv, &other_jti);
            let last = after.last().unwrap();
            assert_eq!(
                (&last["event"], &last["active"]),
                (&json!("token.introspected"), &json!(false))
            );
        }
    }

    // The store's audit tail (GET /admin/v1/audit) holds the same linked records. Its
    // writer runs off the request path, so wait until it has caught up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = srv
            .admin(
                Method::GET,
                &format!("/admin/v1/audit?subject={}&limit=1000", urlenc(PAYMENTS)),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let items = r.json()["items"].as_array().unwrap().clone();
        let linked = items.iter().filter(|i| i["jti"] == jti).count();
        if linked == 5 {
            assert!(
                items
                    .iter()
                    .any(|i| i["credential_sha256"] == sha256_hex(&svid))
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tail has {linked} of 5: {items:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    srv.assert_every_request_audited_once();
    srv.shutdown().await;
}

fn urlenc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `client_credentials` with `tls_client_auth`: the certificate is the credential.
async fn client_credentials_over_mtls(
    srv: &Server,
    identity_pem: &str,
    request_id: &str,
    audience: &str,
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(srv.env.pki.ca_pem.as_bytes()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(identity_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    client
        .post(format!("{}/token", srv.public))
        .header("x-request-id", request_id)
        .form(&[("grant_type", "client_credentials"), ("audience", audience)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn mtls_credential_sha256_is_the_client_certificate_der_hash() {
    let env = Env::new();
    // Certificates are checked against the server's clock: use the real one.
    env.clock.set(SystemClock.now());
    let (example, other) = (ca("example.org"), ca("other.org"));
    add_x509_authorities(&env, &example, &other);
    let srv = env.start().await;
    let cert = leaf(&example, &[PAYMENTS], |_| {});
    let r = client_credentials_over_mtls(&srv, &cert.identity_pem, "mtls-cc-1", LEDGER).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    let line = srv.audit_of("mtls-cc-1");
    assert_eq!(line["event"], "token.issued");
    assert_eq!(
        line["credential_sha256"],
        tessera::jose::hex(&tessera::jose::sha256(&cert.der))
    );
    assert_eq!(line["jti"], jws_part(token, 1)["jti"]);
    assert_eq!(line["issuer_kind"], "x509-svid");

    // A refused certificate still names its hash: repeated attempts with one stolen or
    // forged certificate can be found.
    let bad = leaf(&example, &[PAYMENTS_WORKER], |_| {});
    let r = client_credentials_over_mtls(&srv, &bad.identity_pem, "mtls-cc-2", API).await;
    assert_eq!(r.status(), 400);
    let line = srv.audit_of("mtls-cc-2");
    assert_eq!(
        (&line["event"], &line["credential_sha256"]),
        (
            &json!("token.denied"),
            &json!(tessera::jose::hex(&tessera::jose::sha256(&bad.der)))
        )
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn refusals_outside_the_handlers_are_audited_once() {
    let mut env = Env::new();
    env.settings.metrics_auth = true;
    let srv = env.start().await;
    // A JSON body where a form is required.
    let r = srv
        .client
        .post(format!("{}/token", srv.public))
        .header("x-request-id", "json-body")
        .json(&json!({"grant_type": TOKEN_EXCHANGE}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let line = srv.audit_of("json-body");
    assert_eq!(
        (&line["event"], &line["outcome"]),
        (&json!("token.denied"), &json!("failure"))
    );
    // A refused scrape of /metrics is a failed authentication.
    let r = srv
        .client
        .get(format!("{}/metrics", srv.admin))
        .header("x-request-id", "metrics-401")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let line = srv.audit_of("metrics-401");
    assert_eq!(
        (&line["event"], &line["outcome"]),
        (&json!("admin.metrics"), &json!("failure"))
    );
    let r = srv
        .client
        .get(format!("{}/metrics", srv.admin))
        .bearer_auth(&srv.env.admin_token)
        .header("x-request-id", "metrics-200")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        srv.audit_lines()
            .iter()
            .all(|l| l["request_id"] != "metrics-200")
    );
    srv.shutdown().await;
}

// ---------------------------------------------------------------- file modes

async fn start_error(env: &Env) -> String {
    match tessera::app::build_service(env.settings.clone(), env.clock.clone(), None).await {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn secret_files_readable_by_others_stop_start_up_naming_the_file() {
    let env = Env::new();
    let tls_key = env.settings.tls.as_ref().unwrap().key.clone();
    // Happy path first (owner-only modes, 0400 too, start); it also creates
    // keys/keyring.json, 0600 in a 0755 directory. The refusals below come before the
    // store is opened, so this service's store lock does not matter.
    chmod(&tls_key, 0o400);
    tessera::app::build_service(env.settings.clone(), env.clock.clone(), None)
        .await
        .unwrap();
    let keys = env.settings.key_dir.clone();
    let ring = keys.join("keyring.json");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ring), 0o600);

    let admin_hash = env.settings.admin_token_hash_file.clone().unwrap();
    // (case, file, bad mode)
    let cases = [
        ("keyring group-readable", ring.clone(), 0o640),
        ("keyring world-readable", ring.clone(), 0o604),
        ("admin token hash", admin_hash.clone(), 0o644),
        ("tls key", tls_key.clone(), 0o640),
        ("tls key group-writable", tls_key.clone(), 0o620),
    ];
    for (name, file, bad) in cases {
        chmod(&file, bad);
        let err = start_error(&env).await;
        let shown = file.display().to_string();
        assert!(err.contains(&shown), "case {name}: {err}");
        assert!(
            err.contains(&format!("chmod 600 {shown}")),
            "case {name}: {err}"
        );
        chmod(&file, 0o600);
    }
    for (name, bad) in [
        ("key dir group-writable", 0o775),
        ("key dir world-writable", 0o757),
    ] {
        chmod(&keys, bad);
        let err = start_error(&env).await;
        let shown = keys.display().to_string();
        assert!(
            err.contains(&format!("chmod 700 {shown}")),
            "case {name}: {err}"
        );
        chmod(&keys, 0o755);
    }
}
