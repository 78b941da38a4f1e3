#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Property tests (proptest, stable toolchain) over the parsers of untrusted input: the
//! same surfaces as the cargo-fuzz targets in fuzz/, with a modest case count so they
//! run inside `cargo test`. Each property asserts an outcome that a broken parser or
//! verifier would violate, not only "no panic".

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tessera::attest::{parse_jwks, parse_spiffe_bundle, parse_x509_der, parse_x509_pem};
use tessera::domain::{Audience, Principal, ScopeSet, SpiffeId, TrustDomain};
use tessera::http::decode_form;
use tessera::jose::{SigningAlg, SigningKey, UnverifiedJws, b64url};
use tessera::policy::{AccessRequest, CompiledPolicy, Decision, HARD_MAX_TTL_SECS};
use tessera::service::exchange::{TokenResponse, check_token_request};
use tessera::service::{CallerCredentials, Params, RequestContext, Service, ServiceError};

const FORM: &str = "application/x-www-form-urlencoded";

/// One service for the whole file: building it (keys, store, bundles) per case would
/// dominate the run time.
struct Fixture {
    rt: tokio::runtime::Runtime,
    env: Env,
    svc: Arc<Service>,
    /// A JWT-SVID the service accepts, for the mutation property.
    valid_svid: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let env = Env::new();
        let (svc, _audit) = rt.block_on(env.service());
        // Valid for the whole run: the manual clock never moves here.
        let valid_svid = env.svid(PAYMENTS, 3000);
        Fixture {
            rt,
            env,
            svc,
            valid_svid,
        }
    })
}

/// `POST /token` as the transport hands it to the service: a token exchange for the
/// ledger audience with `subject_token`.
fn exchange(subject_token: &str) -> Result<TokenResponse, ServiceError> {
    let f = fixture();
    let mut p = BTreeMap::new();
    p.insert("grant_type".to_owned(), TOKEN_EXCHANGE.to_owned());
    p.insert("subject_token".to_owned(), subject_token.to_owned());
    p.insert("subject_token_type".to_owned(), JWT_TYPE.to_owned());
    p.insert("audience".to_owned(), LEDGER.to_owned());
    let ctx = RequestContext::default();
    f.rt.block_on(
        f.svc
            .exchange(&ctx, &Params(p), &CallerCredentials::default()),
    )
}

/// A refusal must be a client error that does not repeat the token (contract §2).
fn assert_refused(token: &str, result: Result<TokenResponse, ServiceError>) {
    let err = match result {
        Ok(_) => panic!("a token was issued for {token:?}"),
        Err(e) => e,
    };
    assert!(
        !matches!(
            err,
            ServiceError::Internal(_) | ServiceError::TemporarilyUnavailable
        ),
        "server-side error for {token:?}: {err:?}"
    );
    if token.len() >= 16 {
        assert!(
            !err.to_string().contains(token),
            "error echoes the token: {err}"
        );
    }
}

fn b64_segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{0,40}"
}

/// Strings shaped like compact JWS: three base64url parts, possibly of real JSON.
/// The structured ones name the kid of the test trust domain's real key, so they reach
/// the signature check.
fn jwt_like() -> impl Strategy<Value = String> {
    let kid = fixture().env.example_key.kid().to_owned();
    let header = prop_oneof![
        Just(json!({"alg": "ES256", "kid": kid, "typ": "JWT"})),
        Just(json!({"alg": "ES384", "kid": kid})),
        Just(json!({"alg": "none"})),
        Just(json!({"alg": "HS256", "kid": "k"})),
        Just(json!({"alg": "ES256", "crit": ["exp"]})),
        Just(json!({"alg": "RS256", "jku": "https://127.0.0.1:1/keys"})),
    ];
    let sub = prop_oneof![
        Just(PAYMENTS.to_owned()),
        Just(OTHER_TD.to_owned()),
        "spiffe://[a-z.]{1,12}(/[a-zA-Z0-9]{1,6}){0,3}",
        ".{0,20}",
    ];
    let structured = (
        header,
        sub,
        prop_oneof![Just(T0 + 300), any::<i64>()],
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(h, sub, exp, sig)| {
            let claims = json!({"sub": sub, "aud": [ISSUER], "exp": exp});
            format!(
                "{}.{}.{}",
                b64url(h.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes()),
                b64url(&sig)
            )
        });
    prop_oneof![
        (b64_segment(), b64_segment(), b64_segment()).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
        structured,
    ]
}

/// Mutations of a string: replace, insert or delete one character, or truncate.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, char),
    Insert(usize, char),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let ch = prop_oneof![
        proptest::char::range('A', 'Z'),
        proptest::char::range('a', 'z'),
        proptest::char::range('0', '9'),
        Just('-'),
        Just('_'),
        Just('.'),
        Just('='),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        (any::<usize>(), ch).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(s: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    match *m {
        Mutation::Replace(i, c) => chars[i % n] = c,
        Mutation::Insert(i, c) => chars.insert(i % (n + 1), c),
        Mutation::Delete(i) => {
            chars.remove(i % n);
        }
        Mutation::Truncate(i) => chars.truncate(i % n),
    }
    chars.into_iter().collect()
}

/// Valid SPIFFE IDs under the strict profile (SPIFFE-ID §2): lowercase trust domain,
/// path segments of `[a-zA-Z0-9._-]`, none empty, `.` or `..`.
fn valid_spiffe_id() -> impl Strategy<Value = (String, String)> {
    let td = "[a-z0-9][a-z0-9._-]{0,30}";
    let segment = "[a-zA-Z0-9._-]{1,12}".prop_filter("dot segment", |s| s != "." && s != "..");
    (td, proptest::collection::vec(segment, 0..6)).prop_map(|(td, segs)| {
        let path: String = segs.iter().map(|s| format!("/{s}")).collect();
        (td, path)
    })
}

/// Policy files made of rules whose keys are each present or not, valid or broken, so
/// generated files reach the rule compiler and `decide`, not only the TOML parser.
fn policy_rule() -> impl Strategy<Value = String> {
    // Keys are written outside the regexes: a `.` in a regex strategy is a wildcard.
    let matcher = prop_oneof![
        4 => "(example[.]org|[a-z.]{1,10})(/[a-z*]{1,4}){0,3}(/[*][*])?"
            .prop_map(|p| format!("match.spiffe_id = \"spiffe://{p}\"")),
        4 => Just(format!("match.spiffe_id = \"{PAYMENTS}\"")),
        4 => ("[a-z.]{1,12}", "[a-z]{1,6}", "[a-z*-]{0,6}").prop_map(|(host, k, v)| format!(
            "match.issuer = \"https://{host}\"\nmatch.claims = {{ {k} = \"{v}\" }}"
        )),
        1 => Just(String::new()),
    ];
    let audiences = prop_oneof![3 => Just(LEDGER.to_owned()), 1 => "[a-z:/.]{0,20}"]
        .prop_map(|a| format!("grant.audiences = [\"{a}\"]"));
    let scopes = proptest::collection::vec("[a-z:]{0,10}", 0..3).prop_map(|s| {
        let quoted: Vec<String> = s.iter().map(|x| format!("\"{x}\"")).collect();
        quoted.join(", ")
    });
    let max_ttl =
        prop_oneof![4 => "\"[1-9][0-9]?[sm]\"", 1 => "\"[0-9]{0,7}[smhd]?\"", 1 => "[0-9]{1,20}"]
            .prop_map(|t| format!("grant.max_ttl = {t}"));
    (
        prop_oneof![4 => "[a-z][a-z0-9-]{0,7}", 1 => ".{0,8}"],
        matcher,
        proptest::option::weighted(0.9, audiences),
        proptest::option::of(scopes.clone().prop_map(|s| format!("grant.scopes = [{s}]"))),
        proptest::option::weighted(
            0.2,
            scopes.prop_map(|s| format!("grant.default_scopes = [{s}]")),
        ),
        proptest::option::weighted(0.5, max_ttl),
        proptest::option::of(
            "[a-z.]{1,10}(/[a-z]{1,4}){0,2}"
                .prop_map(|a| format!("grant.actors = [\"spiffe://{a}\"]")),
        ),
        proptest::option::weighted(
            0.2,
            "[a-z:{}]{0,16}".prop_map(|t| format!("grant.subject = \"{t}\"")),
        ),
        proptest::option::weighted(0.1, ".{0,30}"),
    )
        .prop_map(
            |(id, matcher, aud, scopes, defaults, ttl, actors, subject, junk)| {
                let mut lines = vec!["[[rule]]".to_owned(), format!("id = \"{id}\""), matcher];
                lines.extend(
                    [aud, scopes, defaults, ttl, actors, subject, junk]
                        .into_iter()
                        .flatten(),
                );
                lines.join("\n")
            },
        )
}

fn policy_file() -> impl Strategy<Value = String> {
    proptest::collection::vec(policy_rule(), 0..3).prop_map(|rules| rules.join("\n\n"))
}

const REAL_KEYS: [SigningAlg; 2] = [SigningAlg::ES256, SigningAlg::RS256];

fn real_keys() -> &'static [serde_json::Map<String, serde_json::Value>] {
    static KEYS: OnceLock<Vec<serde_json::Map<String, serde_json::Value>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        REAL_KEYS
            .iter()
            .map(|alg| SigningKey::generate(*alg).unwrap().public_jwk())
            .collect()
    })
}

/// JSON-ish bundle documents: JWK Sets with entries of every shape the parser meets.
fn bundle_doc() -> impl Strategy<Value = Vec<u8>> {
    let text = "[A-Za-z0-9_+/=-]{0,50}";
    let entry = (
        prop_oneof![Just("EC"), Just("RSA"), Just("OKP"), Just("oct"), Just("")],
        prop_oneof![
            Just("P-256"),
            Just("P-384"),
            Just("P-521"),
            Just("Ed25519"),
            Just("X")
        ],
        prop_oneof![
            Just("jwt-svid"),
            Just("x509-svid"),
            Just("wit-svid"),
            Just("")
        ],
        text,
        text,
        text,
        proptest::option::of(text),
    )
        .prop_map(|(kty, crv, usage, kid, x, y, x5c)| {
            let mut e = json!({"kty": kty, "crv": crv, "use": usage, "kid": kid,
                "x": x, "y": y, "n": x, "e": "AQAB"});
            if let Some(c) = x5c {
                e["x5c"] = json!([c]);
            }
            e
        });
    // Real public keys too, so some documents get past key decoding.
    let real = (
        0..REAL_KEYS.len(),
        prop_oneof![Just("jwt-svid"), Just("x509-svid"), Just("")],
        "[a-z0-9]{0,3}",
    )
        .prop_map(|(i, usage, kid)| {
            let mut jwk = serde_json::Value::Object(real_keys()[i].clone());
            jwk["use"] = json!(usage);
            jwk["kid"] = json!(kid);
            jwk
        });
    (
        proptest::collection::vec(prop_oneof![entry, real], 0..5),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(keys, seq)| {
            let mut doc = json!({ "keys": keys });
            if let Some(s) = seq {
                doc["spiffe_sequence"] = json!(s);
            }
            doc.to_string().into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any byte string as `subject_token` → an OAuth client error, never a token, never
    /// a 5xx, never an echo of the token.
    #[test]
    fn any_bytes_as_subject_token_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let token = String::from_utf8_lossy(&bytes).into_owned();
        assert_refused(&token, exchange(&token));
    }

    #[test]
    fn jwt_shaped_subject_tokens_are_refused(token in jwt_like()) {
        assert_refused(&token, exchange(&token));
    }

    /// A valid JWT-SVID with one character changed, added, removed, or cut short: the
    /// service refuses it, and so does the JWS layer with the right key (RFC 7515 §5.2).
    #[test]
    fn mutated_svids_never_verify(m in mutation()) {
        let f = fixture();
        let mutated = mutate(&f.valid_svid, &m);
        prop_assume!(mutated != f.valid_svid);
        let key = f.env.example_key.verifying_key().unwrap();
        let verified = UnverifiedJws::parse(&mutated).and_then(|jws| jws.verify(&key));
        prop_assert!(verified.is_err(), "{m:?} verified");
        assert_refused(&mutated, exchange(&mutated));
    }
}

/// The control for the properties above: the unmutated SVID does get a token through
/// the very same path, so their refusals are not a broken fixture.
#[test]
fn the_unmutated_svid_is_exchanged() {
    let f = fixture();
    let key = f.env.example_key.verifying_key().unwrap();
    let claims = UnverifiedJws::parse(&f.valid_svid)
        .and_then(|jws| jws.verify(&key))
        .unwrap();
    assert_eq!(claims["sub"], PAYMENTS);
    let issued = exchange(&f.valid_svid).unwrap();
    assert!(!issued.access_token.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any body under any media type: `Ok` or an error, never a panic; what decodes has
    /// at most 32 fields.
    #[test]
    fn any_form_body_decodes_or_errors(
        content_type in prop_oneof![Just(FORM.to_owned()), Just(format!("{FORM}; charset=utf-8")), ".{0,40}"],
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(params) = decode_form(&content_type, &body) {
            prop_assert!(params.0.len() <= 32);
            let _ = check_token_request(&params);
        }
    }

    #[test]
    fn any_string_form_body_decodes_or_errors(body in ".{0,300}") {
        if let Ok(params) = decode_form(FORM, body.as_bytes()) {
            let _ = check_token_request(&params);
        }
    }

    /// A form the client encoded is decoded to exactly its fields; repeating any field
    /// is refused (RFC 6749 §3.2).
    #[test]
    fn encoded_forms_round_trip_and_duplicates_are_refused(
        fields in proptest::collection::btree_map("[a-z_]{1,20}", ".{0,40}", 1..20),
        dup in any::<prop::sample::Index>(),
    ) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &fields {
            ser.append_pair(k, v);
        }
        let body = ser.finish();
        let params = decode_form(FORM, body.as_bytes()).unwrap();
        prop_assert_eq!(&params.0, &fields);
        let (k, v) = fields.iter().nth(dup.index(fields.len())).unwrap();
        let mut again = form_urlencoded::Serializer::new(body.clone());
        again.append_pair(k, v);
        prop_assert!(decode_form(FORM, again.finish().as_bytes()).is_err());
    }

    /// Generated valid IDs parse, print back byte for byte and re-parse to an equal ID,
    /// with the trust domain and path where they were.
    #[test]
    fn valid_spiffe_ids_round_trip((td, path) in valid_spiffe_id()) {
        let s = format!("spiffe://{td}{path}");
        let id = SpiffeId::parse(&s).unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id.clone());
        prop_assert_eq!(id.trust_domain_str(), td.as_str());
        prop_assert_eq!(id.path(), path.as_str());
        prop_assert_eq!(TrustDomain::parse(&s).unwrap(), id.trust_domain());
    }

    /// Arbitrary text never panics the parser, and whatever it accepts round-trips.
    #[test]
    fn arbitrary_spiffe_id_text_never_panics(s in prop_oneof![".{0,80}", "spiffe://.{0,60}", "spiffe://[a-zA-Z0-9.:@/%?#_-]{0,40}", "spiffe://[a-z0-9.]{1,10}(/[a-zA-Z0-9.:@%?#_-]{1,8}){1,3}"]) {
        if let Ok(id) = SpiffeId::parse(&s) {
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(SpiffeId::parse(&s).unwrap(), id);
            prop_assert!(!s["spiffe://".len()..].contains([':', '@', '?', '#', '%']));
        }
        let _ = TrustDomain::parse(&s);
    }

    /// Arbitrary bytes never panic the JWS parser; what it accepts obeys its header rules.
    #[test]
    fn jws_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), token in jwt_like()) {
        for t in [String::from_utf8_lossy(&bytes).into_owned(), token] {
            if let Ok(jws) = UnverifiedJws::parse(&t) {
                prop_assert!(!jws.header.contains_key("crit"));
                prop_assert_eq!(jws.header.get("alg").and_then(|a| a.as_str()), Some(jws.alg.as_str()));
            }
        }
    }

    /// TOML-ish text never panics the compiler; a compiled policy decides without
    /// panicking, grants only the asked audience and never past the contract's TTL
    /// ceiling (§2).
    #[test]
    fn policy_compile_never_panics(src in policy_file()) {
        if let Ok(policy) = CompiledPolicy::from_toml(&src) {
            let _ = policy.lint(HARD_MAX_TTL_SECS);
            if let Decision::Grant(g) = decide_for_payments(&policy) {
                prop_assert!(g.max_ttl.is_none_or(|t| t <= HARD_MAX_TTL_SECS));
                prop_assert_eq!(g.audience.as_str(), LEDGER);
            }
        }
    }

    #[test]
    fn mutated_policy_files_never_panic(muts in proptest::collection::vec(mutation(), 1..6)) {
        let mut src = POLICY.to_owned();
        for m in &muts {
            if !src.is_empty() {
                src = mutate(&src, m);
            }
        }
        let _ = CompiledPolicy::from_toml(&src);
    }

    /// Bundle parsers never panic on arbitrary bytes or JWK-Set-shaped JSON; a loaded
    /// bundle finds every key it lists by kid.
    #[test]
    fn bundle_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), doc in bundle_doc()) {
        let td = TrustDomain::parse("example.org").unwrap();
        for input in [&bytes, &doc] {
            for bundle in [parse_spiffe_bundle(&td, input), parse_jwks(&td, input)].into_iter().flatten() {
                for kid in bundle.jwt_kids() {
                    prop_assert!(bundle.jwt_authority(&kid).is_some());
                }
            }
            let _ = parse_x509_pem(&td, input);
            let _ = parse_x509_der(&td, input);
        }
    }
}

fn decide_for_payments(policy: &CompiledPolicy) -> Decision {
    let principal = Principal::Spiffe(SpiffeId::parse(PAYMENTS).unwrap());
    let audience = Audience::parse(LEDGER).unwrap();
    let scopes = ScopeSet::default();
    let req = AccessRequest {
        audience: &audience,
        scopes: &scopes,
        actor: None,
    };
    policy.decide(&principal, &req)
}

fn samples<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// The generators reach past the first check: some generated policies compile and
/// grant, some generated bundles load keys. Without this, the "never panics" properties
/// could pass while only ever exercising the TOML or JSON parser.
#[test]
fn generators_reach_the_deep_paths() {
    let policies = samples(policy_file(), 400);
    let compiled: Vec<CompiledPolicy> = policies
        .iter()
        .filter_map(|src| CompiledPolicy::from_toml(src).ok())
        .collect();
    let granted = compiled
        .iter()
        .filter(|p| decide_for_payments(p).is_grant())
        .count();
    println!(
        "policies: {} of 400 compiled, {granted} granted",
        compiled.len()
    );
    assert!(
        compiled.len() >= 20,
        "only {} of 400 compiled",
        compiled.len()
    );
    assert!(granted >= 5, "only {granted} of 400 granted");

    let td = TrustDomain::parse("example.org").unwrap();
    let docs = samples(bundle_doc(), 400);
    let loaded = docs
        .iter()
        .filter_map(|d| parse_spiffe_bundle(&td, d).ok())
        .filter(|b| b.jwt_authority_count() > 0)
        .count();
    println!("bundles: {loaded} of 400 loaded a key");
    assert!(loaded >= 10, "only {loaded} of 400 bundles loaded a key");
}
