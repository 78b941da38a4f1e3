#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The hot-path caches over the real server: what a cache hit may never change —
//! revocation is asked on every introspection, `exp` ends a cached token or client
//! assertion, a changed trust bundle ends a cached assertion, a wrong static-client
//! secret is never answered from memory — and that the caches do hit (counted in
//! `/metrics`; nothing here measures time). Audit stays one event per request with the
//! same fields on a hit as on a miss.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// The value of one metric line (`name` with its labels, as rendered).
fn metric(srv: &Server, series: &str) -> u64 {
    let text = srv.svc.render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn hits(srv: &Server, cache: &str) -> u64 {
    metric(
        srv,
        &format!("tessera_cache_hits_total{{cache=\"{cache}\"}}"),
    )
}

fn misses(srv: &Server, cache: &str) -> u64 {
    metric(
        srv,
        &format!("tessera_cache_misses_total{{cache=\"{cache}\"}}"),
    )
}

fn argon2id_runs(srv: &Server) -> u64 {
    metric(srv, "tessera_argon2id_verifications_total")
}

/// The audit fields a cache hit must record exactly as a full verification does.
fn audited_fields(srv: &Server, r: &Resp) -> Value {
    let l = srv.audit_of(&r.rid);
    json!({
        "event": l["event"], "outcome": l["outcome"], "caller": l["caller"],
        "jti": l["jti"], "subject": l["subject"], "audience": l["audience"],
        "active": l["active"], "reason": l["reason"],
    })
}

/// example.org's bundle now carries another key only, reloaded through the admin API.
async fn replace_example_org_key(srv: &Server) {
    let other = tessera::jose::SigningKey::generate(tessera::jose::SigningAlg::ES256).unwrap();
    std::fs::write(
        srv.env.path().join("bundles/example.org.json"),
        bundle_json(&other, other.kid()),
    )
    .unwrap();
    let r = srv
        .admin(Method::POST, "/admin/v1/policy/reload", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// An admin revocation that must be stored (201).
async fn revoke_by_admin(srv: &Server, body: Value) {
    let r = srv
        .admin(Method::POST, "/admin/v1/revocations", Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

fn exp_of(token: &str) -> i64 {
    jws_part(token, 1)["exp"].as_i64().unwrap()
}

#[tokio::test]
async fn a_cached_token_is_inactive_on_the_next_introspection_once_revoked() {
    let srv = Env::new().start().await;
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;

    let first = srv.introspect(&token).await;
    assert_eq!(first.json()["active"], true, "{}", first.text);
    let before = hits(&srv, "introspection");
    let second = srv.introspect(&token).await;
    assert_eq!(second.json(), first.json(), "a hit answers as a miss did");
    assert_eq!(
        hits(&srv, "introspection"),
        before + 1,
        "the token was cached"
    );
    assert_eq!(audited_fields(&srv, &second), audited_fields(&srv, &first));
    assert_eq!(
        srv.audit_of(&second.rid)["jti"],
        jws_part(&token, 1)["jti"],
        "a hit names the token's jti"
    );

    // Revoked by its own subject through /revoke (RFC 7009).
    let own = srv.svid(PAYMENTS, 300);
    let r = srv.revoke(&token, Auth::Assertion(&own)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let hits_before = hits(&srv, "introspection");
    let after = srv.introspect(&token).await;
    assert_eq!(after.json(), json!({"active": false}));
    assert_eq!(
        hits(&srv, "introspection"),
        hits_before + 1,
        "still a cache hit: the store answered"
    );
    let line = srv.audit_of(&after.rid);
    assert_eq!(line["reason"], "inactive: revoked");
    assert_eq!(line["jti"], jws_part(&token, 1)["jti"]);
    assert_eq!(line["subject"], PAYMENTS);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn cached_tokens_are_inactive_after_admin_revocations_of_jti_subject_and_key() {
    let srv = Env::new().start().await;
    let by_jti = srv.token_for(PAYMENTS, LEDGER, None).await;
    let by_subject = srv.token_for(PAYMENTS_WORKER, LEDGER, None).await;
    let by_kid = srv.token_for(BATCH_JOB, BATCH, None).await;
    for t in [&by_jti, &by_subject, &by_kid] {
        assert!(srv.active(t).await);
        assert!(srv.active(t).await);
    }
    assert!(hits(&srv, "introspection") >= 3);

    let jti = jws_part(&by_jti, 1)["jti"].clone();
    revoke_by_admin(&srv, json!({"jti": jti, "reason": "test"})).await;
    assert!(!srv.active(&by_jti).await, "jti revocation");
    assert!(srv.active(&by_subject).await);

    srv.clock().advance(1);
    revoke_by_admin(&srv, json!({"subject": PAYMENTS_WORKER, "reason": "test"})).await;
    assert!(!srv.active(&by_subject).await, "subject watermark");
    assert!(srv.active(&by_kid).await);

    let kid = jws_part(&by_kid, 0)["kid"].clone();
    revoke_by_admin(&srv, json!({"kid": kid, "reason": "test"})).await;
    assert!(!srv.active(&by_kid).await, "key revocation");
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn a_cached_token_is_inactive_from_its_exp() {
    let srv = Env::new().start().await;
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;
    let exp = exp_of(&token);
    assert!(srv.active(&token).await);
    srv.clock().set(exp - 1);
    let before = hits(&srv, "introspection");
    assert!(srv.active(&token).await, "one second before exp");
    assert_eq!(hits(&srv, "introspection"), before + 1);
    // `Minter::check` allows no leeway on our own tokens' exp; neither may the cache.
    srv.clock().set(exp);
    let r = srv.introspect(&token).await;
    assert_eq!(r.json(), json!({"active": false}), "expired at exp");
    assert_eq!(
        srv.audit_of(&r.rid)["reason"],
        "inactive: token has expired"
    );
    srv.clock().set(exp + srv.env.settings.leeway as i64 + 1);
    assert!(!srv.active(&token).await);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn a_cached_token_is_not_active_at_a_time_before_it_was_verified() {
    let srv = Env::new().start().await;
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;
    let nbf = jws_part(&token, 1)["nbf"].as_i64().unwrap();
    assert!(srv.active(&token).await);
    // The clock steps back beyond nbf and the leeway: `check` says not yet valid, and
    // the cached answer (verified later than that) must not say otherwise.
    srv.clock().set(nbf - srv.env.settings.leeway as i64 - 1);
    let r = srv.introspect(&token).await;
    assert_eq!(r.json(), json!({"active": false}));
    assert_eq!(
        srv.audit_of(&r.rid)["reason"],
        "inactive: token is not valid yet"
    );
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn a_static_client_runs_argon2id_once_and_a_wrong_secret_every_time() {
    let srv = Env::new().start().await;
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;
    let secret = srv.env.static_secret.clone();
    let basic = Auth::Basic(STATIC_CLIENT, &secret);
    assert_eq!(argon2id_runs(&srv), 0);

    let first = srv.introspect_as(&token, basic).await;
    assert_eq!(first.json()["active"], true, "{}", first.text);
    assert_eq!(argon2id_runs(&srv), 1);
    let second = srv.introspect_as(&token, basic).await;
    assert_eq!(second.json()["active"], true, "{}", second.text);
    assert_eq!(argon2id_runs(&srv), 1, "the second request ran no argon2id");
    assert_eq!(hits(&srv, "static_client"), 1);
    assert_eq!(audited_fields(&srv, &second), audited_fields(&srv, &first));
    assert_eq!(
        srv.audit_of(&second.rid)["caller"],
        format!("client:{STATIC_CLIENT}")
    );

    // A wrong secret after a correct one: still argon2id, still 401.
    let wrong = format!("{secret}x");
    let r = srv
        .introspect_as(&token, Auth::Basic(STATIC_CLIENT, &wrong))
        .await;
    r.assert_error(401, "invalid_client");
    assert_eq!(argon2id_runs(&srv), 2);
    assert_eq!(hits(&srv, "static_client"), 1);
    // The right secret under another client id is another key, and unknown.
    let r = srv
        .introspect_as(&token, Auth::Basic("legacy-gatewa", &secret))
        .await;
    r.assert_error(401, "invalid_client");
    assert_eq!(argon2id_runs(&srv), 3);

    // The remembered success lasts a bounded time (60 s), then argon2id runs again.
    srv.clock().advance(59);
    assert_eq!(srv.introspect_as(&token, basic).await.status, 200);
    assert_eq!(argon2id_runs(&srv), 3);
    srv.clock().advance(1);
    assert_eq!(srv.introspect_as(&token, basic).await.status, 200);
    assert_eq!(argon2id_runs(&srv), 4);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn a_cached_client_assertion_is_refused_once_expired() {
    let srv = Env::new().start().await;
    let leeway = srv.env.settings.leeway as i64;
    let token = srv.token_for(BATCH_JOB, BATCH, None).await;
    let assertion = srv.svid(RS, 60);
    let exp = jws_part(&assertion, 1)["exp"].as_i64().unwrap();

    let first = srv.introspect_as(&token, Auth::Assertion(&assertion)).await;
    assert_eq!(first.json()["active"], true, "{}", first.text);
    let before = hits(&srv, "client_assertion");
    srv.clock().set(exp - 1);
    let second = srv.introspect_as(&token, Auth::Assertion(&assertion)).await;
    assert_eq!(second.json()["active"], true, "{}", second.text);
    assert_eq!(
        hits(&srv, "client_assertion"),
        before + 1,
        "assertion cached"
    );
    assert_eq!(audited_fields(&srv, &second), audited_fields(&srv, &first));

    // From exp on the cache does not answer; the verifier's leeway still applies.
    let misses_before = misses(&srv, "client_assertion");
    srv.clock().set(exp);
    let r = srv.introspect_as(&token, Auth::Assertion(&assertion)).await;
    assert_eq!(r.status, 200, "within the leeway: {}", r.text);
    assert_eq!(misses(&srv, "client_assertion"), misses_before + 1);
    srv.clock().set(exp + leeway);
    let r = srv.introspect_as(&token, Auth::Assertion(&assertion)).await;
    r.assert_error(401, "invalid_client");
    srv.assert_audit(&r, "token.introspected", "failure");
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn a_cached_client_assertion_is_refused_once_its_key_leaves_the_bundle() {
    let srv = Env::new().start().await;
    let token = srv.token_for(PAYMENTS, LEDGER, None).await;
    let assertion = srv.svid(RS, 300);
    let rs = Auth::Assertion(&assertion);
    assert_eq!(srv.introspect_as(&token, rs).await.status, 200);
    assert_eq!(srv.introspect_as(&token, rs).await.status, 200);
    assert!(hits(&srv, "client_assertion") >= 1);

    replace_example_org_key(&srv).await;
    srv.introspect_as(&token, rs)
        .await
        .assert_error(401, "invalid_client");
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn an_admin_jwt_svid_bearer_is_cached_and_still_expires() {
    let srv = Env::new().start().await;
    let leeway = srv.env.settings.leeway as i64;
    let svid = srv.svid(OPS, 60);
    let exp = jws_part(&svid, 1)["exp"].as_i64().unwrap();
    let bearer = Auth::Bearer(&svid);
    let path = "/admin/v1/revocations";
    assert_eq!(
        srv.admin_as(Method::GET, path, None, bearer).await.status,
        200
    );
    let before = hits(&srv, "client_assertion");
    assert_eq!(
        srv.admin_as(Method::GET, path, None, bearer).await.status,
        200
    );
    assert_eq!(hits(&srv, "client_assertion"), before + 1);
    srv.clock().set(exp + leeway);
    let r = srv.admin_as(Method::GET, path, None, bearer).await;
    assert_eq!(r.status, 401, "{}", r.text);
    srv.assert_every_request_audited_once();
}

#[tokio::test]
async fn a_cached_subject_svid_still_expires_and_still_needs_its_bundle() {
    let srv = Env::new().start().await;
    let leeway = srv.env.settings.leeway as i64;
    let svid = srv.svid(PAYMENTS, 120);
    let exp = jws_part(&svid, 1)["exp"].as_i64().unwrap();
    let first = srv.exchange(&svid, LEDGER, None).await;
    let second = srv.exchange(&svid, LEDGER, None).await;
    assert_ne!(first.access_token(), second.access_token());
    assert_eq!(hits(&srv, "subject_token"), 1, "the second exchange hit");
    assert_eq!(misses(&srv, "subject_token"), 1);
    assert_eq!(audited_fields(&srv, &first)["subject"], PAYMENTS);
    assert_eq!(
        audited_fields(&srv, &second)["subject"],
        audited_fields(&srv, &first)["subject"]
    );
    // A client assertion cached under the same SVID text is no subject-token hit, and
    // the reverse: the caches are apart.
    assert_eq!(hits(&srv, "client_assertion"), 0);

    // Past exp + leeway a cached SVID is refused like any other.
    srv.clock().set(exp + leeway);
    srv.exchange(&svid, LEDGER, None)
        .await
        .assert_error(400, "invalid_grant");

    // A fresh SVID, cached, then its key leaves example.org's bundle: refused at once.
    srv.clock().set(exp - 60);
    let svid = srv.svid(PAYMENTS, 120);
    srv.exchange(&svid, LEDGER, None).await.access_token();
    srv.exchange(&svid, LEDGER, None).await.access_token();
    assert_eq!(hits(&srv, "subject_token"), 2);
    replace_example_org_key(&srv).await;
    srv.exchange(&svid, LEDGER, None)
        .await
        .assert_error(400, "invalid_grant");
    srv.assert_every_request_audited_once();
}
