#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! `/metrics` on the admin listener: every family the issue names moves when the thing
//! it counts happens, on a real server over HTTPS, and the exposition parses as
//! Prometheus text (each sample line `name{labels} value`, each family typed once).

mod common;

use common::{Auth, Env, LEDGER, PAYMENTS, Server};
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeMap;

async fn scrape(srv: &Server) -> BTreeMap<String, f64> {
    let resp = srv
        .client
        .get(format!("{}/metrics", srv.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = resp.text().await.unwrap();
    parse(&text)
}

/// Parses the text exposition strictly enough that a malformed line fails the test.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(typed.insert(name.to_owned()), "family typed twice: {name}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {:#?}", m.keys().collect::<Vec<_>>()))
}

#[tokio::test]
async fn metrics_count_requests_issuance_denials_revocations_and_store_calls() {
    let srv = Env::new().start().await;
    let before = scrape(&srv).await;
    assert_eq!(
        get(
            &before,
            &format!(
                "tessera_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert_eq!(get(&before, "tessera_revocations_total{kind=\"jti\"}"), 0.0);
    // Both signing keys are reported with their age.
    assert_eq!(
        before
            .keys()
            .filter(|k| k.starts_with("tessera_signing_key_age_seconds{"))
            .count(),
        2,
        "{before:#?}"
    );

    // Two issued tokens, one denial per reason.
    let t1 = srv.token_for(PAYMENTS, LEDGER, None).await;
    let t2 = srv.token_for(PAYMENTS, LEDGER, Some("ledger:write")).await;
    let svid = srv.svid(PAYMENTS, 300);
    srv.exchange(&svid, "https://nowhere.example.org", None)
        .await
        .assert_error(400, "invalid_target");
    srv.exchange("not-a-jwt", LEDGER, None)
        .await
        .assert_error(400, "invalid_grant");
    // Introspection: active, then revoked and inactive.
    assert!(srv.active(&t1).await);
    let r = srv
        .revoke(&t1, Auth::Assertion(&srv.svid(PAYMENTS, 300)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!srv.active(&t1).await);
    // Admin revocations of each kind.
    for body in [
        json!({"subject": "spiffe://example.org/ns/batch/sa/x", "reason": "test"}),
        json!({"kid": "no-such-kid-but-valid", "reason": "test"}),
    ] {
        let r = srv
            .admin(Method::POST, "/admin/v1/revocations", Some(body))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let jti = common::jws_part(&t2, 1)["jti"].as_str().unwrap().to_owned();
    let r = srv
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"jti": jti, "reason": "test"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // A scanner's path is counted as `other`, not as its own label.
    assert_eq!(srv.get("/wp-admin/setup.php").await.status, 404);

    let m = scrape(&srv).await;
    let http = |endpoint: &str, outcome: &str| {
        get(
            &m,
            &format!(
                "tessera_requests_total{{transport=\"http\",endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(http("/token", "success"), 2.0);
    assert_eq!(http("/token", "client_error"), 2.0);
    assert_eq!(http("/introspect", "success"), 2.0);
    assert_eq!(http("/revoke", "success"), 1.0);
    assert_eq!(http("/admin/v1/revocations", "success"), 3.0);
    assert_eq!(http("other", "client_error"), 1.0);
    assert!(
        !m.keys().any(|k| k.contains("wp-admin")),
        "paths are not labels"
    );
    assert_eq!(
        get(
            &m,
            "tessera_request_duration_seconds_count{transport=\"http\",endpoint=\"/token\"}"
        ),
        4.0
    );
    assert_eq!(
        get(
            &m,
            "tessera_request_duration_seconds_bucket{transport=\"http\",endpoint=\"/token\",le=\"+Inf\"}"
        ),
        4.0
    );
    assert_eq!(
        get(&m, "tessera_tokens_issued_total{rule=\"payments-ledger\"}"),
        2.0
    );
    assert_eq!(
        get(&m, "tessera_token_denials_total{reason=\"invalid_target\"}"),
        1.0
    );
    assert_eq!(
        get(&m, "tessera_token_denials_total{reason=\"invalid_grant\"}"),
        1.0
    );
    assert_eq!(
        get(&m, "tessera_introspections_total{active=\"true\"}"),
        1.0
    );
    assert_eq!(
        get(&m, "tessera_introspections_total{active=\"false\"}"),
        1.0
    );
    // One jti by /revoke and one by the admin API; one subject; one kid.
    assert_eq!(get(&m, "tessera_revocations_total{kind=\"jti\"}"), 2.0);
    assert_eq!(get(&m, "tessera_revocations_total{kind=\"subject\"}"), 1.0);
    assert_eq!(get(&m, "tessera_revocations_total{kind=\"kid\"}"), 1.0);
    // Store calls are timed: two introspections, four revocations, two issued tokens.
    for (operation, calls) in [("is_revoked", 2.0), ("revoke", 4.0), ("record_issued", 2.0)] {
        let series =
            format!("tessera_store_operation_duration_seconds_count{{operation=\"{operation}\"}}");
        assert_eq!(get(&m, &series), calls, "{operation}");
    }
    assert_eq!(get(&m, "tessera_store_errors_total"), 0.0);
}
