#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! Issue 6: the adversarial corpus (forged, malformed and oversized credentials sent to
//! the real server over HTTPS), the connection and request limits of
//! `http::server::ServerLimits`, and a scan of every captured log line, audit line and
//! response body for the secrets the corpus used.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tessera::http::server::ServerLimits;
use tessera::jose::{SigningAlg, SigningKey, b64url};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

// ---------------------------------------------------------------------------------------
// Captured tracing output of this test binary (every test's server logs into it).

fn logs() -> SharedBuf {
    static LOGS: OnceLock<SharedBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = SharedBuf::default();
        let writer = buf.clone();
        let filter = tracing_subscriber::EnvFilter::new("debug,tessera=trace");
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("tracing subscriber installed once");
        buf
    })
    .clone()
}

// ---------------------------------------------------------------------------------------
// Forging helpers.

/// ES256 over arbitrary header and payload bytes (not necessarily JSON).
fn es256_raw(header: &[u8], payload: &[u8], key: &SigningKey) -> String {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let si = format!("{}.{}", b64url(header), b64url(payload));
    let rng = ring::rand::SystemRandom::new();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.pkcs8(), &rng).unwrap();
    let sig = kp.sign(&rng, si.as_bytes()).unwrap();
    format!("{si}.{}", b64url(sig.as_ref()))
}

fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let si = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, si.as_bytes());
    format!("{si}.{}", b64url(tag.as_ref()))
}

/// The SubjectPublicKeyInfo DER of a P-256 key (RFC 5480), from its JWK.
fn p256_spki_der(key: &SigningKey) -> Vec<u8> {
    let jwk = key.public_jwk();
    let coord = |c: &str| tessera::jose::b64url_decode(jwk[c].as_str().unwrap()).unwrap();
    let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    der.push(0x04);
    der.extend(coord("x"));
    der.extend(coord("y"));
    der
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Replaces segment `i` of a compact JWS.
fn with_segment(token: &str, i: usize, seg: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[i] = seg;
    parts.join(".")
}

/// A TCP listener the forged `jku`/`x5u` headers point at; counts connections.
async fn canary() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, hits)
}

// ---------------------------------------------------------------------------------------
// Secrets sent, and the echo checks.

#[derive(Default)]
struct Secrets {
    /// Whole secrets (tokens, keys, passwords) that must never appear anywhere.
    whole: Vec<String>,
    /// 16-byte windows of random material (JWT payloads/signatures, keys, passwords).
    windows: HashSet<Vec<u8>>,
}

impl Secrets {
    fn add_random(&mut self, s: &str) {
        self.whole.push(s.to_owned());
        for w in s.as_bytes().windows(16) {
            self.windows.insert(w.to_vec());
        }
    }

    /// A JWT: the whole token, and windows of its payload and signature (headers are
    /// shared by many tokens and public).
    fn add_jwt(&mut self, token: &str) {
        self.whole.push(token.to_owned());
        for seg in token.split('.').skip(1) {
            // Padding-only payloads (the 1 MiB case) repeat; their signature is enough.
            if seg.len() < 4096 {
                for w in seg.as_bytes().windows(16) {
                    self.windows.insert(w.to_vec());
                }
            }
        }
    }

    fn add_key(&mut self, key: &SigningKey) {
        let der = key.pkcs8();
        self.add_random(&b64url(der));
        self.add_random(&base64::engine::general_purpose::STANDARD.encode(der));
        self.add_random(&tessera::jose::hex(der));
    }

    /// The first secret window found in `text`, if any.
    fn leak_in(&self, text: &str) -> Option<String> {
        for w in &self.whole {
            if !w.is_empty() && text.contains(w.as_str()) {
                return Some(w.chars().take(40).collect());
            }
        }
        text.as_bytes()
            .windows(16)
            .find(|w| self.windows.contains(*w))
            .map(|w| String::from_utf8_lossy(w).into_owned())
    }
}

/// The body never contains the credential or any 16-character piece of it.
fn assert_no_echo(case: &str, body: &str, credential: &str) {
    if credential.len() < 16 {
        return;
    }
    let leaked = body
        .as_bytes()
        .windows(16)
        .find(|w| credential.as_bytes().windows(16).any(|c| c == *w));
    assert!(
        leaked.is_none(),
        "case {case}: response body echoes part of the credential: {:?}",
        leaked.map(String::from_utf8_lossy)
    );
}

/// Checks one answer: expected status and OAuth error, never a 5xx, never a token.
fn check(case: &str, status: u16, text: &str, want: (u16, &str), credential: &str) {
    assert!(status < 500, "case {case}: 5xx {status}: {text}");
    assert!(
        !text.contains("access_token"),
        "case {case}: a token was issued: {text}"
    );
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("case {case}: body is not JSON ({e}): {text:?}"));
    assert_eq!(
        (status, v["error"].as_str().unwrap_or("")),
        want,
        "case {case}: {text}"
    );
    assert_no_echo(case, text, credential);
}

// ---------------------------------------------------------------------------------------
// The corpus.

/// Subject tokens that must each be refused by `/token` with 400 `invalid_grant`.
fn forged_subject_tokens(env: &Env, canary_port: u16) -> Vec<(String, String)> {
    let now = env.now();
    let kid = env.example_key.kid().to_owned();
    let good = json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now, "exp": now + 300});
    let es = |h: Value| raw_jws(&h, &good, Some(&env.example_key));
    let claims = |c: Value| env.svid_claims(&c);
    let attacker = SigningKey::generate(SigningAlg::ES256).unwrap();
    let valid = env.svid(PAYMENTS, 300);
    let jwk_text = serde_json::to_string(&env.example_key.public_jwk()).unwrap();
    let spki = p256_spki_der(&env.example_key);
    let rsa = SigningKey::generate(SigningAlg::RS256).unwrap();
    let rsa_token = rsa.sign_compact("JWT", &good).unwrap();
    let es256_header = b64url(json!({"alg": "ES256", "kid": kid}).to_string().as_bytes());
    let url = format!("https://127.0.0.1:{canary_port}/keys");
    let attacker_jwk = Value::Object(attacker.public_jwk());
    let cert = {
        let kp = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["attacker".to_owned()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(c.der())
    };
    let by_attacker = |extra: Value| {
        let mut h = json!({"alg": "ES256", "kid": kid});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        raw_jws(&h, &good, Some(&attacker))
    };
    let sig_of_valid = valid.split('.').nth(2).unwrap().to_owned();
    let mut cases: Vec<(&str, String)> = vec![
        (
            "alg_none",
            raw_jws(&json!({"alg": "none", "kid": kid}), &good, None),
        ),
        (
            "alg_none_uppercase",
            raw_jws(&json!({"alg": "NONE"}), &good, None),
        ),
        (
            "hs256_with_public_jwk_as_secret",
            hs256(
                &json!({"alg": "HS256", "kid": kid}),
                &good,
                jwk_text.as_bytes(),
            ),
        ),
        (
            "hs256_with_public_der_as_secret",
            hs256(&json!({"alg": "HS256", "kid": kid}), &good, &spki),
        ),
        (
            "hs256_with_public_pem_as_secret",
            hs256(
                &json!({"alg": "HS256", "kid": kid}),
                &good,
                pem("PUBLIC KEY", &spki).as_bytes(),
            ),
        ),
        (
            "rsa_key_presented_as_es256",
            with_segment(&rsa_token, 0, &es256_header),
        ),
        (
            "unknown_kid",
            es(json!({"alg": "ES256", "kid": "no-such-key"})),
        ),
        (
            "kid_path_traversal",
            by_attacker(json!({"kid": "../../etc/passwd"})),
        ),
        (
            "kid_sql_injection",
            by_attacker(json!({"kid": "' OR 1=1 --"})),
        ),
        ("kid_10kb", by_attacker(json!({"kid": "k".repeat(10_240)}))),
        ("jku_to_canary", by_attacker(json!({"jku": url}))),
        ("x5u_to_canary", by_attacker(json!({"x5u": url}))),
        ("embedded_jwk", by_attacker(json!({"jwk": attacker_jwk}))),
        ("embedded_x5c", by_attacker(json!({"x5c": [cert]}))),
        (
            "unknown_crit",
            es(json!({"alg": "ES256", "kid": kid, "crit": ["x-unknown"], "x-unknown": 1})),
        ),
        (
            "expired",
            claims(json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now - 7200, "exp": now - 3600})),
        ),
        (
            "nbf_in_future",
            claims(
                json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now, "nbf": now + 3600, "exp": now + 7200}),
            ),
        ),
        (
            "iat_far_in_future",
            claims(json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now + 31_536_000, "exp": now + 31_536_300})),
        ),
        (
            "missing_exp",
            claims(json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now})),
        ),
        (
            "missing_aud",
            claims(json!({"sub": PAYMENTS, "iat": now, "exp": now + 300})),
        ),
        (
            "wrong_aud",
            claims(json!({"sub": PAYMENTS, "aud": ["https://evil.example"], "iat": now, "exp": now + 300})),
        ),
        (
            "sub_not_spiffe_id",
            claims(json!({"sub": "admin", "aud": [ISSUER], "iat": now, "exp": now + 300})),
        ),
        (
            "sub_spiffe_with_query",
            claims(json!({"sub": "spiffe://example.org/ns/payments/sa/api?x=1", "aud": [ISSUER], "iat": now, "exp": now + 300})),
        ),
        (
            "unknown_trust_domain",
            claims(json!({"sub": "spiffe://evil.org/ns/payments/sa/api", "aud": [ISSUER], "iat": now, "exp": now + 300})),
        ),
        (
            "other_trust_domain_key_reusing_kid",
            raw_jws(
                &json!({"typ": "JWT", "alg": "ES256", "kid": kid}),
                &good,
                Some(&env.other_key),
            ),
        ),
        (
            "ecdsa_signature_of_zeros",
            with_segment(&valid, 2, &b64url(&[0u8; 64])),
        ),
        (
            "truncated_signature",
            with_segment(&valid, 2, &sig_of_valid[..sig_of_valid.len() - 6]),
        ),
        ("empty_signature", with_segment(&valid, 2, "")),
        (
            "two_segments",
            valid.rsplit_once('.').unwrap().0.to_owned(),
        ),
        ("four_segments", format!("{valid}.{sig_of_valid}")),
        (
            "five_segments",
            format!("{valid}.{sig_of_valid}.{sig_of_valid}"),
        ),
        (
            "non_base64url_in_payload",
            with_segment(
                &valid,
                1,
                &format!("{}+/=", valid.split('.').nth(1).unwrap()),
            ),
        ),
        ("non_base64url_everywhere", "!!!.$$$.***".to_owned()),
        (
            "header_not_json",
            es256_raw(b"not json at all", good.to_string().as_bytes(), &env.example_key),
        ),
        (
            "payload_not_json",
            es256_raw(
                json!({"alg": "ES256", "kid": kid}).to_string().as_bytes(),
                b"{\"sub\": truncated",
                &env.example_key,
            ),
        ),
        (
            "payload_json_array",
            es256_raw(
                json!({"alg": "ES256", "kid": kid}).to_string().as_bytes(),
                b"[1,2,3]",
                &env.example_key,
            ),
        ),
        (
            "duplicate_alg_in_header",
            es256_raw(
                format!(r#"{{"alg":"none","alg":"ES256","kid":"{kid}"}}"#).as_bytes(),
                good.to_string().as_bytes(),
                &env.example_key,
            ),
        ),
        (
            "duplicate_sub_in_payload",
            es256_raw(
                json!({"alg": "ES256", "kid": kid}).to_string().as_bytes(),
                format!(
                    r#"{{"sub":"{PAYMENTS}","sub":"spiffe://example.org/ops/alice","aud":["{ISSUER}"],"iat":{now},"exp":{}}}"#,
                    now + 300
                )
                .as_bytes(),
                &env.example_key,
            ),
        ),
        (
            "cty_jwt_nesting",
            raw_jws(
                &json!({"alg": "ES256", "kid": kid, "cty": "JWT"}),
                &json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now, "exp": now + 300, "inner": valid}),
                Some(&env.example_key),
            ),
        ),
        ("not_a_jwt", "hello world, this is no token".to_owned()),
    ];
    // A valid SVID with one flipped bit in the signature.
    let mut flipped = tessera::jose::b64url_decode(&sig_of_valid).unwrap();
    flipped[10] ^= 1;
    cases.push((
        "flipped_signature_bit",
        with_segment(&valid, 2, &b64url(&flipped)),
    ));
    cases.into_iter().map(|(n, t)| (n.to_owned(), t)).collect()
}

/// Sends a form as raw bytes (so duplicates and field counts are exactly as written).
async fn post_raw(
    s: &Server,
    path: &str,
    ctype: &str,
    body: Vec<u8>,
    basic: Option<(&str, &str)>,
) -> (u16, String) {
    let rid = format!("adv-{}", NEXT_RID.fetch_add(1, Ordering::SeqCst));
    let mut req = s
        .client
        .post(format!("{}{path}", s.public))
        .header("content-type", ctype)
        .header("x-request-id", &rid)
        .body(body);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    s.responses
        .lock()
        .unwrap()
        .push((path.to_owned(), status, text.clone()));
    // Contract §8: every request, refused ones included, leaves exactly one audit event.
    s.audit_of(&rid);
    (status, text)
}

static NEXT_RID: AtomicUsize = AtomicUsize::new(0);

fn form_bytes(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

const FORM: &str = "application/x-www-form-urlencoded";

/// (name, content type, body, expected status and OAuth error)
type FormCase = (&'static str, &'static str, Vec<u8>, (u16, &'static str));

/// Runs the whole corpus against `/token` and `/introspect`, then scans every captured
/// log line, audit line and response body for every secret the corpus used.
#[tokio::test]
async fn adversarial_corpus_is_refused_and_no_secret_reaches_any_log() {
    let logs = logs();
    let mut secrets = Secrets::default();
    let (canary_port, canary_hits) = canary().await;
    let server = Env::new().start().await;
    let env = &server.env;
    secrets.add_random(&env.admin_token);
    secrets.add_random(&env.static_secret);
    secrets.add_key(&env.example_key);
    secrets.add_key(&env.other_key);
    for line in env.pki.key_pem.lines().filter(|l| !l.starts_with("-----")) {
        secrets.add_random(line);
    }

    // Baseline: the same shape of request with an honest SVID is granted, so each refusal
    // below is caused by its forgery, not by the setup.
    let honest = server.svid(PAYMENTS, 300);
    secrets.add_jwt(&honest);
    let granted = server.exchange(&honest, LEDGER, None).await;
    let access_token = granted.access_token();
    secrets.add_jwt(&access_token);
    // The scanner finds a token where one is (the honest answer carries it).
    assert!(secrets.leak_in(&granted.text).is_some());
    assert!(server.active(&access_token).await);

    // 1. Forged subject tokens at /token: 400 invalid_grant; at /introspect: inactive.
    let forged = forged_subject_tokens(env, canary_port);
    assert!(forged.len() >= 40, "corpus shrank: {}", forged.len());
    for (name, token) in &forged {
        secrets.add_jwt(token);
        let r = server.exchange(token, LEDGER, None).await;
        server.audit_of(&r.rid);
        check(
            &format!("token/{name}"),
            r.status,
            &r.text,
            (400, "invalid_grant"),
            token,
        );
        let r = server.introspect(token).await;
        assert_eq!(r.status, 200, "introspect/{name}: {}", r.text);
        assert_eq!(r.json(), json!({"active": false}), "introspect/{name}");
    }

    // 2. Malformed requests at /token.
    let svid = server.svid(PAYMENTS, 300);
    secrets.add_jwt(&svid);
    let exchange = |extra: &[(&'static str, String)]| {
        let mut f: Vec<(&str, String)> = vec![
            ("grant_type", TOKEN_EXCHANGE.to_owned()),
            ("subject_token", svid.clone()),
            ("subject_token_type", JWT_TYPE.to_owned()),
            ("audience", LEDGER.to_owned()),
        ];
        f.extend(extra.iter().cloned());
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(f)
            .finish()
            .into_bytes()
    };
    let too_many: Vec<(&'static str, String)> = (0..33)
        .map(|i| {
            (
                &*Box::leak(format!("x{i}").into_boxed_str()),
                "1".to_owned(),
            )
        })
        .collect();
    let one_mib = {
        let now = env.now();
        let pad = "p".repeat(1024 * 1024);
        server.env.svid_claims(
            &json!({"sub": PAYMENTS, "aud": [ISSUER], "iat": now, "exp": now + 300, "pad": pad}),
        )
    };
    secrets.add_jwt(&one_mib);
    let form_cases: Vec<FormCase> = vec![
        (
            "empty_subject_token",
            FORM,
            form_bytes(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", ""),
                ("subject_token_type", JWT_TYPE),
                ("audience", LEDGER),
            ]),
            (400, "invalid_request"),
        ),
        (
            "one_mib_subject_token",
            FORM,
            form_bytes(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &one_mib),
                ("subject_token_type", JWT_TYPE),
                ("audience", LEDGER),
            ]),
            (413, "invalid_request"),
        ),
        (
            "body_64_kib_plus_one",
            FORM,
            {
                let mut b = exchange(&[]);
                b.extend(b"&pad=");
                let missing = 64 * 1024 + 1 - b.len();
                b.extend(std::iter::repeat_n(b'q', missing));
                assert_eq!(b.len(), 64 * 1024 + 1);
                b
            },
            (413, "invalid_request"),
        ),
        (
            "duplicated_grant_type",
            FORM,
            exchange(&[("grant_type", TOKEN_EXCHANGE.to_owned())]),
            (400, "invalid_request"),
        ),
        (
            "duplicated_subject_token",
            FORM,
            exchange(&[("subject_token", svid.clone())]),
            (400, "invalid_request"),
        ),
        (
            "duplicated_audience",
            FORM,
            exchange(&[("audience", API.to_owned())]),
            (400, "invalid_request"),
        ),
        (
            "thirty_three_form_fields",
            FORM,
            exchange(&too_many),
            (400, "invalid_request"),
        ),
        (
            "json_body_instead_of_form",
            "application/json",
            json!({"grant_type": TOKEN_EXCHANGE, "subject_token": svid, "subject_token_type": JWT_TYPE, "audience": LEDGER})
                .to_string()
                .into_bytes(),
            (400, "invalid_request"),
        ),
        (
            "form_bytes_labelled_json",
            "application/json",
            exchange(&[]),
            (400, "invalid_request"),
        ),
        (
            "unknown_grant_type",
            FORM,
            form_bytes(&[
                ("grant_type", "urn:example:grant:magic"),
                ("subject_token", &svid),
                ("audience", LEDGER),
            ]),
            (400, "unsupported_grant_type"),
        ),
        (
            "password_grant",
            FORM,
            form_bytes(&[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", "admin"),
            ]),
            (400, "unsupported_grant_type"),
        ),
        (
            "missing_grant_type",
            FORM,
            form_bytes(&[("subject_token", &svid), ("audience", LEDGER)]),
            (400, "invalid_request"),
        ),
        (
            "invalid_utf8_form",
            FORM,
            b"grant_type=%FF%FE&subject_token=%C3%28".to_vec(),
            (400, "invalid_request"),
        ),
    ];
    for (name, ctype, body, want) in form_cases {
        let (status, text) = post_raw(&server, "/token", ctype, body, None).await;
        let credential = if name.starts_with("one_mib") {
            &one_mib
        } else {
            &svid
        };
        check(&format!("form/{name}"), status, &text, want, credential);
    }

    // Wrong methods.
    for (name, method, path) in [
        ("get_token", Method::GET, "/token"),
        ("put_token", Method::PUT, "/token"),
        ("get_introspect", Method::GET, "/introspect"),
        ("delete_revoke", Method::DELETE, "/revoke"),
    ] {
        let rid = format!("adv-{}", NEXT_RID.fetch_add(1, Ordering::SeqCst));
        let r = server
            .client
            .request(
                method,
                format!("{}{path}?subject_token={svid}", server.public),
            )
            .header("x-request-id", &rid)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        server
            .responses
            .lock()
            .unwrap()
            .push((path.to_owned(), status, text.clone()));
        server.audit_of(&rid);
        check(
            &format!("method/{name}"),
            status,
            &text,
            (405, "invalid_request"),
            &svid,
        );
    }

    // 3. The static introspection client's secret, wrong: 401, never echoed.
    let wrong_secret = format!("{}x", env.static_secret);
    secrets.add_random(&wrong_secret);
    let (status, text) = post_raw(
        &server,
        "/introspect",
        FORM,
        form_bytes(&[("token", &access_token)]),
        Some((STATIC_CLIENT, &wrong_secret)),
    )
    .await;
    check(
        "introspect/wrong_static_secret",
        status,
        &text,
        (401, "invalid_client"),
        &wrong_secret,
    );

    // The forged headers never made the server fetch anything.
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        0,
        "jku/x5u/jwk/x5c made the server connect to the canary listener"
    );

    // 4. Forged client assertions at /introspect: 401 invalid_client. A second server, so
    // these failed authentications stay under the per-address limit (10 per minute).
    let second = Env::new().start().await;
    let now = second.env.now();
    let rs_claims = json!({"sub": RS, "aud": [ISSUER], "iat": now, "exp": now + 300});
    let rs_kid = second.env.example_key.kid().to_owned();
    let rs_valid = second.svid(RS, 300);
    let rs_sig = rs_valid.split('.').nth(2).unwrap().to_owned();
    let assertions: Vec<(&str, String)> = vec![
        (
            "alg_none",
            raw_jws(&json!({"alg": "none", "kid": rs_kid}), &rs_claims, None),
        ),
        (
            "hs256_with_public_jwk_as_secret",
            hs256(
                &json!({"alg": "HS256", "kid": rs_kid}),
                &rs_claims,
                serde_json::to_string(&second.env.example_key.public_jwk())
                    .unwrap()
                    .as_bytes(),
            ),
        ),
        (
            "other_trust_domain_key_reusing_kid",
            raw_jws(
                &json!({"alg": "ES256", "kid": rs_kid}),
                &rs_claims,
                Some(&second.env.other_key),
            ),
        ),
        (
            "ecdsa_signature_of_zeros",
            with_segment(&rs_valid, 2, &b64url(&[0u8; 64])),
        ),
        (
            "expired",
            second.env.svid_claims(
                &json!({"sub": RS, "aud": [ISSUER], "iat": now - 7200, "exp": now - 3600}),
            ),
        ),
        (
            "wrong_aud",
            second.env.svid_claims(
                &json!({"sub": RS, "aud": ["https://evil.example"], "iat": now, "exp": now + 300}),
            ),
        ),
        ("four_segments", format!("{rs_valid}.{rs_sig}")),
    ];
    secrets.add_key(&second.env.example_key);
    secrets.add_key(&second.env.other_key);
    secrets.add_random(&second.env.admin_token);
    secrets.add_random(&second.env.static_secret);
    secrets.add_jwt(&rs_valid);
    for (name, assertion) in &assertions {
        secrets.add_jwt(assertion);
        let r = second
            .introspect_as(&access_token, Auth::Assertion(assertion))
            .await;
        assert!(
            !r.text.contains("\"active\""),
            "assertion/{name}: introspected with a forged assertion: {}",
            r.text
        );
        second.audit_of(&r.rid);
        check(
            &format!("assertion/{name}"),
            r.status,
            &r.text,
            (401, "invalid_client"),
            assertion,
        );
    }

    // 5. Secret scan: tracing output, audit lines and response bodies of both servers.
    let log_text = logs.text();
    assert!(
        log_text.contains("request refused") && log_text.contains("request answered"),
        "the debug capture is empty or misses the server's request logs"
    );
    let mut scanned = vec![("tracing".to_owned(), log_text)];
    for s in [&server, &second] {
        let audit = s.audit.text();
        assert!(!audit.is_empty());
        scanned.push(("audit".to_owned(), audit));
        for (path, status, body) in s.responses.lock().unwrap().iter() {
            // The one honest token response carries the issued token by design.
            if body.contains(&access_token) && *status == 200 {
                continue;
            }
            scanned.push((format!("response {path} {status}"), body.clone()));
        }
    }
    for (source, text) in &scanned {
        if let Some(leak) = secrets.leak_in(text) {
            panic!("secret material in {source}: {leak:?}");
        }
    }
    server.shutdown().await;
    second.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 over TLS, for clients that misbehave on purpose.

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(server: &Server) -> std::io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(server.env.pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr = server.running.as_ref().unwrap().public_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// Reads one HTTP/1.1 response (status, body); `None` when the server closed first.
async fn read_response(tls: &mut Tls) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if buf.len() >= end + 4 + len {
                    let status = head.split(' ').nth(1)?.parse().ok()?;
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return Some((status, body));
                }
            }
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    // A bound so a broken server fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("server neither answered nor closed")
}

async fn healthz_on(tls: &mut Tls) -> Option<u16> {
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    read_response(tls).await.map(|(s, _)| s)
}

/// Retries until a fresh connection answers `/healthz` (a freed slot is released by the
/// connection's task shortly after the peer closes).
async fn eventually_healthy(server: &Server) -> bool {
    for _ in 0..100 {
        if let Ok(mut c) = tls_connect(server).await
            && healthz_on(&mut c).await == Some(200)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ---------------------------------------------------------------------------------------
// Limits.

#[tokio::test]
async fn oversized_request_headers_get_431_on_http1_and_http2() {
    let _ = logs();
    let server = Env::new().start().await;
    let big = "a".repeat(32 * 1024);
    // HTTP/1.1: hyper answers 431 and closes.
    let mut c = tls_connect(&server).await.unwrap();
    c.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (status, _) = read_response(&mut c).await.expect("an answer");
    assert_eq!(status, 431);
    // Just under the limit is served.
    let mut c = tls_connect(&server).await.unwrap();
    let fits = "a".repeat(12 * 1024);
    c.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {fits}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut c).await.map(|r| r.0), Some(200));
    // HTTP/2 (reqwest negotiates h2 by ALPN): the header list is over
    // max_header_list_size (RFC 9113 §6.5.2); h2 answers the stream with 431.
    let resp = server
        .client
        .get(format!("{}/healthz", server.public))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status().as_u16(), 431);
    // And the server still serves.
    assert_eq!(server.get("/healthz").await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn slow_header_client_is_dropped_and_frees_its_connection_slot() {
    let _ = logs();
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        max_connections: 1,
        ..ServerLimits::default()
    };
    let server = Env::new().start_with(limits).await;
    // A client that completes the handshake and sends nothing.
    let mut silent = tls_connect(&server).await.unwrap();
    assert_eq!(
        read_response(&mut silent).await,
        None,
        "the silent client was answered instead of dropped"
    );
    drop(silent);
    assert!(eventually_healthy(&server).await);
    let mut slow = tls_connect(&server).await.unwrap();
    // Half a request head, then nothing.
    slow.write_all(b"POST /token HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut slow).await,
        None,
        "the slow client was answered instead of dropped"
    );
    // Its slot (the only one) is free again.
    assert!(eventually_healthy(&server).await);
    server.shutdown().await;
}

#[tokio::test]
async fn connection_limit_refuses_one_more_and_accepts_after_one_closes() {
    let _ = logs();
    let limits = ServerLimits {
        max_connections: 2,
        ..ServerLimits::default()
    };
    let server = Env::new().start_with(limits).await;
    let mut a = tls_connect(&server).await.unwrap();
    let mut b = tls_connect(&server).await.unwrap();
    assert_eq!(healthz_on(&mut a).await, Some(200));
    assert_eq!(healthz_on(&mut b).await, Some(200));
    // Slot 3: closed on accept, so the handshake or the request fails.
    let third = match tls_connect(&server).await {
        Ok(mut c) => healthz_on(&mut c).await,
        Err(_) => None,
    };
    assert_eq!(third, None, "a third connection was served");
    // The two keep-alive connections still work.
    assert_eq!(healthz_on(&mut a).await, Some(200));
    drop(a);
    assert!(eventually_healthy(&server).await);
    assert_eq!(healthz_on(&mut b).await, Some(200));
    server.shutdown().await;
}

#[tokio::test]
async fn request_not_answered_in_time_gets_503_temporarily_unavailable() {
    let _ = logs();
    // A client that announces a body and trickles it keeps the handler waiting on the
    // body read, which the request timeout covers.
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let server = Env::new().start_with(limits).await;
    let mut c = tls_connect(&server).await.unwrap();
    c.write_all(
        b"POST /token HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: slow-body-1\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant_type",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut c).await.expect("an answer");
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "temporarily_unavailable", "{body}");
    // Audited like every refusal.
    let line = server.audit_of("slow-body-1");
    assert_eq!(line["event"], "token.denied", "{line}");
    // A normal request on the same server is unaffected.
    let svid = server.svid(PAYMENTS, 300);
    assert_eq!(server.exchange(&svid, LEDGER, None).await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_drains_an_in_flight_request_and_refuses_new_connections() {
    let _ = logs();
    let mut server = Env::new().start().await;
    let addr = server.running.as_ref().unwrap().public_addr;
    let svid = server.svid(PAYMENTS, 300);
    let body = form_bytes(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", &svid),
        ("subject_token_type", JWT_TYPE),
        ("audience", LEDGER),
    ]);
    let mut c = tls_connect(&server).await.unwrap();
    // `Expect: 100-continue` (RFC 9110 §10.1.1): the server's 100 proves the handler has
    // started reading the body, so the request is in flight before shutdown begins.
    c.write_all(
        format!(
            "POST /token HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n\
             Content-Type: {FORM}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut c).await.map(|r| r.0), Some(100));
    let (first, rest) = body.split_at(body.len() / 2);
    c.write_all(first).await.unwrap();
    c.flush().await.unwrap();
    // The request is in flight (head read, body half sent): shut down now.
    let running = server.running.take().unwrap();
    let stopping = tokio::spawn(running.shutdown());
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "new connections were still accepted after shutdown"
    );
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the in-flight request"
    );
    c.write_all(rest).await.unwrap();
    let Some((status, text)) = read_response(&mut c).await else {
        panic!("the in-flight request was cut off; log:\n{}", logs().text());
    };
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["access_token"].as_str().is_some_and(|t| t.len() > 100),
        "{text}"
    );
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("shutdown finished after the drain")
        .unwrap();
}

/// Each case name names one case, so a failure message points at exactly one forgery.
#[tokio::test]
async fn corpus_case_names_are_unique() {
    let env = Env::new();
    let forged = forged_subject_tokens(&env, 9);
    let names: HashSet<&str> = forged.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), forged.len());
}
