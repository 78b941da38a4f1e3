//! The compact JWS parser and its header rules (src/jose.rs), then JWT-SVID verification
//! (src/attest/jwt_svid.rs) against a bundle whose keys exist only in this process:
//! no input may panic, and none may verify (RFC 8725 §3.1: `alg` bound to the key).
//!
//! Input: first byte 0 → the rest is the token as text. Otherwise the rest is split at
//! 0xff bytes into header JSON, payload JSON and raw signature, each base64url-encoded
//! here, so mutations reach the JSON and header checks instead of dying in base64.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};
use tessera::attest::{JwtSvidVerifier, StaticBundles, parse_jwks};
use tessera::domain::TrustDomain;
use tessera::jose::{MAX_TOKEN_LEN, SigningAlg, SigningKey, UnverifiedJws, VerifyingKey, b64url};

/// 2026-01-01T00:00:00Z, as in the tests.
const NOW: i64 = 1_767_225_600;

struct Fixture {
    keys: Vec<VerifyingKey>,
    svids: JwtSvidVerifier,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let es = SigningKey::generate(SigningAlg::ES256).expect("ES256 key");
    let rs = SigningKey::generate(SigningAlg::RS256).expect("RS256 key");
    let ed = SigningKey::generate(SigningAlg::EdDSA).expect("EdDSA key");
    // Fixed kids, so seeds can name them and reach the signature check.
    let mut es_jwk = es.public_jwk();
    es_jwk.insert("kid".into(), "k1".into());
    let mut rs_jwk = rs.public_jwk();
    rs_jwk.insert("kid".into(), "k2".into());
    let jwks = serde_json::json!({ "keys": [es_jwk, rs_jwk] });
    let td = TrustDomain::parse("example.org").expect("trust domain");
    let bundle = parse_jwks(&td, jwks.to_string().as_bytes()).expect("bundle");
    let svids = JwtSvidVerifier::new(
        Arc::new(StaticBundles::new([bundle])),
        vec!["https://sts.example.org".to_owned()],
        30,
    );
    let keys = [&es, &rs, &ed]
        .iter()
        .map(|k| k.verifying_key().expect("verifying key"))
        .collect();
    Fixture { keys, svids }
});

fn token_of(data: &[u8]) -> Option<String> {
    let (&mode, rest) = data.split_first()?;
    if mode == 0 {
        return std::str::from_utf8(rest).ok().map(str::to_owned);
    }
    let mut parts = rest.splitn(3, |b| *b == 0xff);
    let header = parts.next().unwrap_or_default();
    let payload = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    Some(format!(
        "{}.{}.{}",
        b64url(header),
        b64url(payload),
        b64url(signature)
    ))
}

fuzz_target!(|data: &[u8]| {
    let Some(token) = token_of(data) else {
        return;
    };
    let fixture = &*FIXTURE;
    if let Ok(jws) = UnverifiedJws::parse(&token) {
        // What the parser let through must obey the header rules it enforces.
        assert!(token.len() <= MAX_TOKEN_LEN);
        assert!(!jws.header.contains_key("crit"), "crit accepted");
        assert_eq!(
            jws.header.get("alg").and_then(|v| v.as_str()),
            Some(jws.alg.as_str())
        );
        if let Some(cty) = jws.header.get("cty").and_then(|v| v.as_str()) {
            assert!(!cty.eq_ignore_ascii_case("JWT"), "nested JWT accepted");
        }
        for key in &fixture.keys {
            let again = UnverifiedJws::parse(&token).expect("parsing is deterministic");
            assert!(again.verify(key).is_err(), "a fuzzed token verified");
        }
        let again = UnverifiedJws::parse(&token).expect("parsing is deterministic");
        assert!(again.verify_any(&fixture.keys).is_err());
    }
    assert!(
        fixture.svids.verify(&token, NOW).is_err(),
        "a fuzzed JWT-SVID verified"
    );
});
