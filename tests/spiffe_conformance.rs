#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! Data-driven run of the shared SPIFFE conformance corpus
//! (`../shared/conformance/spiffe/cases.json`, see its README) under the strict profile:
//! `expected` is checked, `alt_expected` ignored. `x509-svid` cases run both modes:
//! `structure` through `attest::check_svid_structure` (no clock), `verify` through
//! `X509SvidVerifier::verify` at the case's pinned `at`, with the authorities of
//! `bundles[<leaf trust domain>]` only. The 4 `needs_private_key` cases are skipped and
//! listed by id: an STS receives certificates only (key possession is proven by the TLS
//! handshake, not by a key file), as the corpus README prescribes.
//!
//! The corpus must exist: a missing corpus fails the test, it is never skipped.
//!
//! One deliberate deviation from the strict profile, adopted as the README allows (match
//! on the `alt_expected` `when` prefix and document it): `domain::SpiffeId` caps IDs at
//! 2048 bytes (`MAX_SPIFFE_ID_LEN`, SPIFFE-ID §2.3: longer IDs SHOULD NOT be generated),
//! so `spiffe-id/length-2049` is checked against its "2048-byte cap" alternative. Such
//! cases are listed in the summary, never silently folded into the pass count.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera::attest::{
    self, BundleError, JwtSvidVerifier, StaticBundles, TrustBundle, X509SvidVerifier,
};
use tessera::clock::parse_rfc3339;
use tessera::domain::{SpiffeId, TrustDomain};

/// `alt_expected` readings this implementation deliberately adopts (`when` prefixes).
const ADOPTED_ALTERNATIVES: &[&str] = &["implementation enforces a 2048-byte cap"];

fn corpus_dir() -> PathBuf {
    if let Ok(p) = std::env::var("SPIFFE_CONFORMANCE_DIR") {
        return p.into();
    }
    // Beside the checkout (the workplace layout), else the workplace's fixed location, so a
    // fresh clone elsewhere (CI) still finds it; a missing corpus fails below, never skips.
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/spiffe");
    let fixed = PathBuf::from("/work/shared/conformance/spiffe");
    if !beside.exists() && fixed.exists() {
        return fixed;
    }
    beside
}

#[derive(Deserialize)]
struct Corpus {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    kind: String,
    mode: Option<String>,
    op: Option<String>,
    format: Option<String>,
    inputs: Value,
    trust_domain: Option<String>,
    bundles: Option<BTreeMap<String, Value>>,
    audience: Option<Vec<String>>,
    at: Option<String>,
    expected: String,
    expected_spiffe_id: Option<String>,
    expected_trust_domain: Option<String>,
    expected_path: Option<String>,
    expected_x509_authorities: Option<usize>,
    expected_jwt_kids: Option<Vec<String>>,
    expected_refresh_hint_s: Option<u64>,
    expected_sequence: Option<u64>,
    #[serde(default)]
    needs_private_key: bool,
    #[serde(default)]
    alt_expected: Vec<AltExpected>,
}

#[derive(Deserialize)]
struct AltExpected {
    when: String,
    expected: String,
}

impl Case {
    /// The outcome to check, and the adopted alternative it comes from, if any.
    fn expectation(&self) -> (&str, Option<&str>) {
        for alt in &self.alt_expected {
            if ADOPTED_ALTERNATIVES.iter().any(|p| alt.when.starts_with(p)) {
                return (&alt.expected, Some(&alt.when));
            }
        }
        (&self.expected, None)
    }
}

/// `Ok(())` accepted and every stated expectation matched; `Err(why)` otherwise.
type Outcome = Result<(), String>;

enum Run {
    Accepted(Outcome),
    Rejected(String),
    Skipped(Option<&'static str>),
}

fn check<T: PartialEq + std::fmt::Debug>(what: &str, want: Option<T>, got: T) -> Outcome {
    match want {
        Some(w) if w != got => Err(format!("{what}: expected {w:?}, got {got:?}")),
        _ => Ok(()),
    }
}

fn run_spiffe_id(c: &Case) -> Run {
    let value = c.inputs["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no value", c.id));
    match c.op.as_deref() {
        Some("parse_id") => match SpiffeId::parse(value) {
            Ok(id) => Run::Accepted(
                check("id", c.expected_spiffe_id.as_deref(), id.as_str())
                    .and(check(
                        "trust domain",
                        c.expected_trust_domain.as_deref(),
                        id.trust_domain_str(),
                    ))
                    .and(check("path", c.expected_path.as_deref(), id.path())),
            ),
            Err(e) => Run::Rejected(e.to_string()),
        },
        Some("parse_trust_domain") => match TrustDomain::parse(value) {
            Ok(td) => Run::Accepted(check(
                "trust domain",
                c.expected_trust_domain.as_deref(),
                td.as_str(),
            )),
            Err(e) => Run::Rejected(e.to_string()),
        },
        other => panic!("{}: unknown spiffe-id op {other:?}", c.id),
    }
}

fn load_bundle(
    dir: &Path,
    td: &TrustDomain,
    file: &str,
    format: &str,
) -> Result<TrustBundle, BundleError> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("corpus file {} unreadable: {e}", path.display()));
    match format {
        "spiffe-bundle" => attest::parse_spiffe_bundle(td, &bytes),
        "jwks" => attest::parse_jwks(td, &bytes),
        "x509-pem" => attest::parse_x509_pem(td, &bytes),
        "x509-der" => attest::parse_x509_der(td, &bytes),
        other => panic!("unknown bundle format {other:?}"),
    }
}

fn run_bundle(dir: &Path, c: &Case) -> Run {
    let td = TrustDomain::parse(c.trust_domain.as_deref().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: bad trust_domain: {e}", c.id));
    let file = c.inputs["file"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no file", c.id));
    let format = c
        .format
        .as_deref()
        .unwrap_or_else(|| panic!("{}: no format", c.id));
    match load_bundle(dir, &td, file, format) {
        Ok(b) => {
            let mut want_kids = c.expected_jwt_kids.clone();
            if let Some(k) = want_kids.as_mut() {
                k.sort();
            }
            Run::Accepted(
                check(
                    "x509 authorities",
                    c.expected_x509_authorities,
                    b.x509_authorities().len(),
                )
                .and(check("jwt kids", want_kids, b.jwt_kids()))
                .and(check(
                    "refresh hint",
                    Some(c.expected_refresh_hint_s),
                    b.refresh_hint,
                ))
                .and(check("sequence", Some(c.expected_sequence), b.sequence)),
            )
        }
        Err(e) => Run::Rejected(e.to_string()),
    }
}

fn run_jwt(dir: &Path, c: &Case) -> Run {
    let token = c.inputs["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no token", c.id));
    let mut bundles = Vec::new();
    for (name, spec) in c.bundles.iter().flatten() {
        let td = TrustDomain::parse(name).unwrap_or_else(|e| panic!("{}: {e}", c.id));
        let file = spec["file"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no file", c.id));
        let format = spec["format"].as_str().unwrap_or("spiffe-bundle");
        let b = load_bundle(dir, &td, file, format)
            .unwrap_or_else(|e| panic!("{}: bundle {file} does not load: {e}", c.id));
        bundles.push(b);
    }
    let at =
        c.at.as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or_else(|| panic!("{}: jwt case needs an `at`", c.id));
    let audiences = c.audience.clone().unwrap_or_default();
    let verifier = JwtSvidVerifier::new(Arc::new(StaticBundles::new(bundles)), audiences, 0);
    match verifier.verify(token, at) {
        Ok(identity) => Run::Accepted(check(
            "spiffe id",
            c.expected_spiffe_id.as_deref(),
            identity
                .spiffe_id()
                .map(SpiffeId::as_str)
                .unwrap_or_default(),
        )),
        Err(e) => Run::Rejected(format!("{} ({e})", e.reason())),
    }
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("bad hex"))
        .collect()
}

/// Length of the DER TLV at the start of `b`, if it is one.
fn tlv_len(b: &[u8]) -> Option<usize> {
    let (_tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, hdr) = if l0 < 0x80 {
        (usize::from(l0), 2)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, 2 + n)
    };
    let total = hdr.checked_add(len)?;
    (total <= b.len()).then_some(total)
}

/// Splits DER certificates concatenated back to back (the Workload API wire form).
/// Bytes that do not form a TLV are passed on as one last "certificate", so that the
/// verifier, not the harness, is what refuses them (`trailing-garbage`).
fn split_der(mut bytes: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = tlv_len(bytes).unwrap_or(bytes.len());
        out.push(CertificateDer::from(bytes[..n].to_vec()));
        bytes = &bytes[n..];
    }
    out
}

/// Loads the certificates of one corpus file reference (README "File references").
/// `td` is the trust domain a `spiffe-bundle` document is loaded for.
fn load_certs(
    dir: &Path,
    id: &str,
    td: Option<&TrustDomain>,
    r: &Value,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = r["file"]
        .as_str()
        .unwrap_or_else(|| panic!("{id}: file ref without file"));
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{id}: corpus file {} unreadable: {e}", path.display()));
    if let Some(h) = r["append_hex"].as_str() {
        bytes.extend(hex(h));
    }
    let certs = match r["format"].as_str() {
        Some("pem") => CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("PEM does not decode ({e:?}); nothing reaches the verifier"))?,
        Some("der") => split_der(&bytes),
        Some("spiffe-bundle") => {
            let td = td.unwrap_or_else(|| panic!("{id}: spiffe-bundle ref outside bundles"));
            attest::parse_spiffe_bundle(td, &bytes)
                .unwrap_or_else(|e| panic!("{id}: bundle {file} does not load: {e}"))
                .x509_authorities()
                .to_vec()
        }
        other => panic!("{id}: unknown file format {other:?}"),
    };
    Ok(match r["index"].as_u64() {
        Some(i) => {
            let i = usize::try_from(i).unwrap();
            vec![
                certs
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| panic!("{id}: {file} has no certificate {i}")),
            ]
        }
        None => certs,
    })
}

fn run_x509(dir: &Path, c: &Case) -> Run {
    if c.needs_private_key {
        return Run::Skipped(Some(
            "needs_private_key: an STS receives certificates only; key possession is \
             proven by the TLS handshake",
        ));
    }
    let mut chain = Vec::new();
    for r in c.inputs["chain"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no chain", c.id))
    {
        match load_certs(dir, &c.id, None, r) {
            Ok(certs) => chain.extend(certs),
            Err(why) => return Run::Rejected(why),
        }
    }
    let want_id = |id: &SpiffeId| check("spiffe id", c.expected_spiffe_id.as_deref(), id.as_str());
    match c.mode.as_deref() {
        Some("structure") => match attest::check_svid_structure(&chain) {
            Ok(id) => Run::Accepted(want_id(&id)),
            Err(e) => Run::Rejected(format!("{} ({e})", e.reason())),
        },
        Some("verify") => {
            // Every trust domain of the case gets its bundle (an empty list is a bundle
            // without authorities); the verifier must pick the leaf's one by itself.
            let mut bundles = Vec::new();
            for (name, refs) in c.bundles.iter().flatten() {
                let td = TrustDomain::parse(name).unwrap_or_else(|e| panic!("{}: {e}", c.id));
                let mut der = Vec::new();
                for r in refs
                    .as_array()
                    .unwrap_or_else(|| panic!("{}: bundle {name} is not a list", c.id))
                {
                    let certs = load_certs(dir, &c.id, Some(&td), r)
                        .unwrap_or_else(|e| panic!("{}: bundle {name}: {e}", c.id));
                    for cert in certs {
                        der.extend_from_slice(cert.as_ref());
                    }
                }
                let b = attest::parse_x509_der(&td, &der)
                    .unwrap_or_else(|e| panic!("{}: bundle {name} does not load: {e}", c.id));
                bundles.push(b);
            }
            let at =
                c.at.as_deref()
                    .and_then(parse_rfc3339)
                    .unwrap_or_else(|| panic!("{}: verify case needs an `at`", c.id));
            let verifier = X509SvidVerifier::new(Arc::new(StaticBundles::new(bundles)));
            match verifier.verify(&chain, at) {
                Ok(identity) => Run::Accepted(match identity.spiffe_id() {
                    Some(id) => want_id(id),
                    None => Err("identity is not a SPIFFE ID".to_owned()),
                }),
                Err(e) => Run::Rejected(format!("{} ({e})", e.reason())),
            }
        }
        other => panic!("{}: unknown x509-svid mode {other:?}", c.id),
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

#[test]
fn spiffe_conformance() {
    let dir = corpus_dir();
    let raw = std::fs::read_to_string(dir.join("cases.json")).unwrap_or_else(|e| {
        panic!(
            "SPIFFE conformance corpus missing at {} ({e}); set SPIFFE_CONFORMANCE_DIR",
            dir.display()
        )
    });
    let corpus: Corpus = serde_json::from_str(&raw).expect("cases.json does not parse");
    assert!(!corpus.cases.is_empty(), "cases.json holds no cases");

    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut via_alternative = Vec::new();
    let mut skipped = Vec::new();
    for c in &corpus.cases {
        let run = match c.kind.as_str() {
            "spiffe-id" => run_spiffe_id(c),
            "bundle" => run_bundle(&dir, c),
            "jwt-svid" => run_jwt(&dir, c),
            "x509-svid" => run_x509(&dir, c),
            other => panic!("{}: unknown kind {other:?}", c.id),
        };
        let what = c.mode.as_deref().or(c.op.as_deref()).unwrap_or("-");
        let t = tally.entry(format!("{} {what}", c.kind)).or_default();
        if let (Run::Rejected(why), "bundle" | "jwt-svid" | "x509-svid") = (&run, c.kind.as_str()) {
            println!("  {} rejected: {why}", c.id);
        }
        let (expected, alternative) = c.expectation();
        let verdict = match (run, expected) {
            (Run::Skipped(why), _) => {
                t.skipped += 1;
                if let Some(why) = why {
                    skipped.push(format!("  {} ({why})", c.id));
                }
                continue;
            }
            (Run::Accepted(Ok(())), "accept") | (Run::Rejected(_), "reject") => Ok(()),
            (Run::Accepted(Err(why)), "accept") => Err(format!("accepted, but {why}")),
            (Run::Accepted(_), _) => Err("accepted, expected reject".to_owned()),
            (Run::Rejected(why), _) => Err(format!("rejected ({why}), expected accept")),
        };
        if let Some(when) = alternative {
            via_alternative.push(format!("  {} (alternative: {when})", c.id));
        }
        match verdict {
            Ok(()) => t.passed += 1,
            Err(why) => {
                t.failed += 1;
                failures.push(format!("  {}: {why}", c.id));
            }
        }
    }
    for (kind, t) in &tally {
        println!(
            "spiffe conformance {kind}: passed {} failed {} skipped {}",
            t.passed, t.failed, t.skipped
        );
    }
    if !skipped.is_empty() {
        println!("skipped ({}):\n{}", skipped.len(), skipped.join("\n"));
    }
    if !via_alternative.is_empty() {
        println!(
            "checked against a deliberately adopted alt_expected ({}):\n{}",
            via_alternative.len(),
            via_alternative.join("\n")
        );
    }
    assert!(
        failures.is_empty(),
        "{} SPIFFE conformance failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
