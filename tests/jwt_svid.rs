#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! Positive and negative JWT-SVID tests with tokens minted here (the conformance corpus
//! has no verifiable JWT-SVIDs: upstream mints them at runtime too). Only the public API.

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};
use std::sync::Arc;
use tessera::attest::{AttestError, JwtSvidVerifier, StaticBundles, parse_spiffe_bundle};
use tessera::domain::{CredentialKind, Principal, TrustDomain};
use tessera::jose::{SigningAlg, SigningKey, b64url};

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const AUD: &str = "https://sts.example.org";
const LEEWAY: u64 = 30;

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct TestKey {
    signer: Signer,
    /// Public JWK members (no kid, no use).
    jwk: Value,
}

impl TestKey {
    fn ec(alg: &'static signature::EcdsaSigningAlgorithm, crv: &str, n: usize) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let pt = kp.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "crv": crv,
            "x": b64url(&pt[1..1 + n]), "y": b64url(&pt[1 + n..])});
        Self {
            signer: Signer::Ec(kp),
            jwk,
        }
    }
    fn es256() -> Self {
        Self::ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
    }
    fn es384() -> Self {
        Self::ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
    }
    fn rsa() -> Self {
        let k = SigningKey::generate(SigningAlg::RS256).unwrap();
        let public = k.public_jwk();
        let kp = RsaKeyPair::from_pkcs8(k.pkcs8()).unwrap();
        Self {
            signer: Signer::Rsa(kp),
            jwk: json!({"kty": "RSA", "n": public["n"], "e": public["e"]}),
        }
    }
    fn ed25519() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(kp.public_key().as_ref())});
        Self {
            signer: Signer::Ed(kp),
            jwk,
        }
    }

    fn bundle_entry(&self, kid: &str) -> Value {
        let mut e = self.jwk.clone();
        e["kid"] = kid.into();
        e["use"] = "jwt-svid".into();
        e
    }

    /// Signs with the algorithm implied by the key (and, for RSA, `PS256` when the header
    /// says so); the header is taken as given, so tests can lie in it.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(header).unwrap()),
            b64url(&serde_json::to_vec(claims).unwrap())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Ec(kp) => kp.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Ed(kp) => kp.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(kp) => {
                let pad: &dyn signature::RsaEncoding = if header["alg"] == "PS256" {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; kp.public().modulus_len()];
                kp.sign(pad, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
        };
        format!("{input}.{}", b64url(&sig))
    }
}

struct World {
    es256: TestKey,
    es384: TestKey,
    rsa: TestKey,
    /// other.org's key; it reuses example.org's ES256 kid.
    other: TestKey,
    verifier: JwtSvidVerifier,
}

fn bundle(td: &str, entries: Vec<Value>) -> tessera::attest::TrustBundle {
    let td = TrustDomain::parse(td).unwrap();
    let doc = serde_json::to_vec(&json!({"keys": entries})).unwrap();
    parse_spiffe_bundle(&td, &doc).unwrap()
}

fn world() -> World {
    let (es256, es384, rsa, other) = (
        TestKey::es256(),
        TestKey::es384(),
        TestKey::rsa(),
        TestKey::es256(),
    );
    let example = bundle(
        "example.org",
        vec![
            es256.bundle_entry("k-es256"),
            es384.bundle_entry("k-es384"),
            rsa.bundle_entry("k-rsa"),
        ],
    );
    let other_org = bundle("other.org", vec![other.bundle_entry("k-es256")]);
    let revoked = bundle("revoked.org", vec![]);
    let source = StaticBundles::new([example, other_org, revoked]);
    let verifier = JwtSvidVerifier::new(Arc::new(source), vec![AUD.to_owned()], LEEWAY);
    World {
        es256,
        es384,
        rsa,
        other,
        verifier,
    }
}

fn claims() -> Value {
    json!({"sub": "spiffe://example.org/ns/payments/sa/api", "aud": AUD,
        "exp": NOW + 300, "iat": NOW - 10})
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

impl World {
    fn es(&self, claims: &Value) -> String {
        self.es256.sign(&header("ES256", "k-es256"), claims)
    }
    fn check(&self, token: &str) -> Result<String, AttestError> {
        self.verifier.verify(token, NOW).map(|id| id.subject())
    }
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    if v.is_null() {
        c.as_object_mut().unwrap().remove(k);
    } else {
        c[k] = v;
    }
    c
}

#[test]
fn valid_tokens_yield_an_identity_for_each_algorithm() {
    let w = world();
    let tokens = [
        w.es(&claims()),
        w.es384.sign(&header("ES384", "k-es384"), &claims()),
        w.rsa.sign(&header("RS256", "k-rsa"), &claims()),
        w.rsa.sign(&header("PS256", "k-rsa"), &claims()),
    ];
    for t in &tokens {
        let id = w.verifier.verify(t, NOW).unwrap();
        assert_eq!(id.kind(), CredentialKind::JwtSvid);
        assert_eq!(id.expires_at(), NOW + 300);
        assert_eq!(id.cert_thumbprint(), None);
        let Principal::Spiffe(sid) = id.principal() else {
            panic!("not a SPIFFE principal")
        };
        assert_eq!(sid.as_str(), "spiffe://example.org/ns/payments/sa/api");
    }
    // typ is optional, and JOSE is allowed (JWT-SVID §2.3).
    let jose = w.es256.sign(
        &json!({"alg": "ES256", "kid": "k-es256", "typ": "JOSE"}),
        &claims(),
    );
    assert!(w.check(&jose).is_ok());
    let untyped = w
        .es256
        .sign(&json!({"alg": "ES256", "kid": "k-es256"}), &claims());
    assert!(w.check(&untyped).is_ok());
}

#[test]
fn key_comes_only_from_the_subjects_trust_domain() {
    let w = world();
    // other.org's key, same kid, claiming an example.org identity: example.org's bundle
    // is the only one consulted, so the signature fails.
    let forged = w.other.sign(&header("ES256", "k-es256"), &claims());
    assert_eq!(w.check(&forged), Err(AttestError::BadSignature));
    // The same key is fine for its own trust domain.
    let own = w.other.sign(
        &header("ES256", "k-es256"),
        &with(claims(), "sub", json!("spiffe://other.org/w")),
    );
    assert_eq!(w.check(&own), Ok("spiffe://other.org/w".to_owned()));
    // An example.org key cannot vouch for other.org either.
    let cross = w.es(&with(claims(), "sub", json!("spiffe://other.org/w")));
    assert_eq!(w.check(&cross), Err(AttestError::BadSignature));
    let unknown = w.es(&with(claims(), "sub", json!("spiffe://unknown.org/w")));
    assert_eq!(
        w.check(&unknown).map_err(|e| e.reason()),
        Err("unknown_trust_domain")
    );
    // An empty bundle ("revoked", §4.1) trusts nothing.
    let revoked = w.es(&with(claims(), "sub", json!("spiffe://revoked.org/w")));
    assert_eq!(
        w.check(&revoked).map_err(|e| e.reason()),
        Err("unknown_kid")
    );
}

#[test]
fn time_claims_with_leeway_boundaries() {
    let w = world();
    let l = LEEWAY as i64;
    let cases = [
        ("exp", json!(NOW - l), Err(AttestError::Expired)),
        ("exp", json!(NOW - l + 1), Ok(())),
        ("exp", json!(NOW - 3600), Err(AttestError::Expired)),
        ("exp", Value::Null, Err(AttestError::MissingExp)),
        ("exp", json!("soon"), Err(AttestError::InvalidClaim("exp"))),
        (
            "exp",
            json!((NOW - l) as f64 + 0.5),
            Err(AttestError::Expired),
        ),
        ("nbf", json!(NOW + l), Ok(())),
        ("nbf", json!(NOW + l + 1), Err(AttestError::NotYetValid)),
        ("nbf", json!(NOW + 3600), Err(AttestError::NotYetValid)),
        ("nbf", json!(NOW - 10), Ok(())),
        ("iat", json!(NOW + l), Ok(())),
        ("iat", json!(NOW + l + 1), Err(AttestError::IssuedInFuture)),
        (
            "iat",
            json!((NOW + l) as f64 + 0.5),
            Err(AttestError::IssuedInFuture),
        ),
        ("iat", Value::Null, Ok(())),
    ];
    for (claim, value, want) in cases {
        let t = w.es(&with(claims(), claim, value.clone()));
        assert_eq!(
            w.check(&t).map(|_| ()),
            want,
            "{claim} = {value} at now = {NOW}"
        );
    }
    // With zero leeway, exp == now is already expired (RFC 7519 §4.1.4: "on or after").
    let strict = JwtSvidVerifier::new(
        Arc::new(StaticBundles::new([bundle(
            "example.org",
            vec![w.es256.bundle_entry("k-es256")],
        )])),
        vec![AUD.to_owned()],
        0,
    );
    let at = |exp: i64| strict.verify(&w.es(&with(claims(), "exp", json!(exp))), NOW);
    assert_eq!(at(NOW).err(), Some(AttestError::Expired));
    assert!(at(NOW + 1).is_ok());
}

#[test]
fn audience_is_required_and_must_match() {
    let w = world();
    let cases = [
        (Value::Null, Err(AttestError::MissingAud)),
        (
            json!("https://other.example"),
            Err(AttestError::WrongAudience),
        ),
        (json!(["x", AUD]), Ok(())),
        (json!(["x", "y"]), Err(AttestError::WrongAudience)),
        (json!([]), Err(AttestError::MissingAud)),
        (json!([AUD, 7]), Err(AttestError::InvalidClaim("aud"))),
        (json!(7), Err(AttestError::InvalidClaim("aud"))),
    ];
    for (aud, want) in cases {
        let t = w.es(&with(claims(), "aud", aud.clone()));
        assert_eq!(w.check(&t).map(|_| ()), want, "aud = {aud}");
    }
    // Per-call audiences (client assertions name the token endpoint).
    let t = w.es(&with(
        claims(),
        "aud",
        json!("https://sts.example.org/token"),
    ));
    assert!(
        w.verifier
            .verify_with_audiences(&t, &["https://sts.example.org/token".to_owned()], NOW)
            .is_ok()
    );
    assert_eq!(w.check(&t), Err(AttestError::WrongAudience));
}

#[test]
fn header_rules() {
    let w = world();
    let ed = TestKey::ed25519();
    // EdDSA is not a JWT-SVID algorithm (JWT-SVID §2.1), whatever the key.
    let t = ed.sign(&header("EdDSA", "k-es256"), &claims());
    assert_eq!(w.check(&t), Err(AttestError::AlgNotAllowed("EdDSA".into())));
    let t = w.es256.sign(
        &json!({"alg": "ES256", "kid": "k-es256", "typ": "at+jwt"}),
        &claims(),
    );
    assert_eq!(w.check(&t), Err(AttestError::BadTyp));
    let t = w.es256.sign(
        &json!({"alg": "ES256", "kid": "k-es256", "typ": "jwt"}),
        &claims(),
    );
    assert_eq!(w.check(&t), Err(AttestError::BadTyp));
    let t = w
        .es256
        .sign(&json!({"alg": "ES256", "typ": "JWT"}), &claims());
    assert_eq!(w.check(&t), Err(AttestError::NoKid));
    let t = w.es256.sign(&header("ES256", "nope"), &claims());
    assert_eq!(w.check(&t).map_err(|e| e.reason()), Err("unknown_kid"));
    // alg must fit the bundle key (RFC 8725 §3.1).
    let t = w.es256.sign(&header("RS256", "k-es256"), &claims());
    assert_eq!(w.check(&t), Err(AttestError::AlgKeyMismatch));
    let t = w.es256.sign(&header("none", "k-es256"), &claims());
    assert_eq!(w.check(&t).map_err(|e| e.reason()), Err("alg_not_allowed"));
}

#[test]
fn embedded_keys_in_the_header_are_never_trusted() {
    let w = world();
    let attacker = TestKey::es256();
    for extra in [
        ("jwk", attacker.jwk.clone()),
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut h = header("ES256", "k-es256");
        h[extra.0] = extra.1.clone();
        let t = attacker.sign(&h, &claims());
        assert_eq!(w.check(&t), Err(AttestError::BadSignature), "{}", extra.0);
        // And the header does not stop a genuine token verifying against the bundle.
        let genuine = w.es256.sign(&h, &claims());
        assert!(w.check(&genuine).is_ok(), "{}", extra.0);
    }
}

#[test]
fn subject_must_be_a_workload_spiffe_id() {
    let w = world();
    let cases: [(Value, &str); 6] = [
        (Value::Null, "no_subject"),
        (json!(42), "invalid_claim"),
        (json!("1234567890"), "not_a_spiffe_id"),
        (json!("spiffe://Example.org/w"), "not_a_spiffe_id"),
        (json!("spiffe://example.org/a/../b"), "not_a_spiffe_id"),
        (json!("spiffe://example.org"), "subject_not_workload"),
    ];
    for (sub, want) in cases {
        let t = w.es(&with(claims(), "sub", sub.clone()));
        assert_eq!(
            w.check(&t).map_err(|e| e.reason()),
            Err(want),
            "sub = {sub}"
        );
    }
}

#[test]
fn tampered_payload_fails_and_errors_never_echo_the_token() {
    let w = world();
    let t = w.es(&claims());
    let (h, rest) = t.split_once('.').unwrap();
    let sig = rest.rsplit_once('.').unwrap().1;
    let forged_claims = with(claims(), "sub", json!("spiffe://example.org/admin"));
    let forged = format!(
        "{h}.{}.{sig}",
        b64url(&serde_json::to_vec(&forged_claims).unwrap())
    );
    let err = w.check(&forged).unwrap_err();
    assert_eq!(err, AttestError::BadSignature);
    for token in [&forged, &t[..t.len() - 3], "a.b.c"] {
        if let Err(e) = w.check(token) {
            let msg = e.to_string();
            assert!(!msg.contains(h) && !msg.contains(sig), "{msg}");
        }
    }
}
