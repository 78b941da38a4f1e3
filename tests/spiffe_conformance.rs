#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! Data-driven run of the shared SPIFFE conformance corpus
//! (`../shared/conformance/spiffe/cases.json`, see its README) under the strict profile:
//! `expected` is checked, `alt_expected` ignored. `x509-svid` cases are out of scope for
//! now (X.509-SVID verification is a later issue) and are counted as skipped.
//!
//! The corpus must exist: a missing corpus fails the test, it is never skipped.
//!
//! One deliberate deviation from the strict profile, adopted as the README allows (match
//! on the `alt_expected` `when` prefix and document it): `domain::SpiffeId` caps IDs at
//! 2048 bytes (`MAX_SPIFFE_ID_LEN`, SPIFFE-ID §2.3: longer IDs SHOULD NOT be generated),
//! so `spiffe-id/length-2049` is checked against its "2048-byte cap" alternative. Such
//! cases are listed in the summary, never silently folded into the pass count.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera::attest::{self, BundleError, JwtSvidVerifier, StaticBundles, TrustBundle};
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
    Skipped,
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
    for c in &corpus.cases {
        let run = match c.kind.as_str() {
            "spiffe-id" => run_spiffe_id(c),
            "bundle" => run_bundle(&dir, c),
            "jwt-svid" => run_jwt(&dir, c),
            // X.509-SVID verification is a later issue.
            "x509-svid" => Run::Skipped,
            other => panic!("{}: unknown kind {other:?}", c.id),
        };
        let t = tally.entry(c.kind.clone()).or_default();
        if let (Run::Rejected(why), "bundle" | "jwt-svid") = (&run, c.kind.as_str()) {
            println!("  {} rejected: {why}", c.id);
        }
        let (expected, alternative) = c.expectation();
        let verdict = match (run, expected) {
            (Run::Skipped, _) => {
                t.skipped += 1;
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
