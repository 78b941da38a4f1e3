//! SPIFFE trust bundles (SPIFFE Trust Domain and Bundle spec §4) and the two simpler
//! forms upstream libraries also load: a plain JWKS (go-spiffe `jwtbundle`) and a list
//! of X.509 authorities (PEM, or DER certificates back to back as on the Workload API).
//!
//! Parsing is strict where a lenient parser would be a confusion vector (duplicate JSON
//! members are refused at every level, spec README point 8 / RFC 8725 §2.6) and lenient
//! exactly where the spec says so: entries with a missing or unknown `use`, or a key type
//! that cannot serve that use, are ignored (Trust Domain and Bundle §4.1.3, §4.2.1,
//! §4.2.2). An entry whose
//! `use` we support but which is malformed (a `jwt-svid` key without `kid`, an
//! `x509-svid` entry without a usable `x5c[0]`) fails the whole bundle, as go-spiffe and
//! java-spiffe do: a half-loaded bundle would silently drop an authority the operator
//! believes is trusted.
//!
//! Key material is converted once, at load, with `jose::VerifyingKey::from_jwk`; error
//! messages name entries by index and never echo key material.

use crate::domain::TrustDomain;
use crate::jose::VerifyingKey;
use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Bundle documents are operator- or federation-supplied; cap what we read.
pub const MAX_BUNDLE_BYTES: usize = 4 * 1024 * 1024;
/// Cap on the number of entries so a hostile federation peer cannot make us build
/// millions of keys.
pub const MAX_BUNDLE_ENTRIES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("bundle has more than {MAX_BUNDLE_ENTRIES} entries")]
    TooManyEntries,
    #[error("bundle is not valid JSON ({0})")]
    Json(String),
    #[error("duplicate member {0:?} in bundle JSON")]
    DuplicateMember(String),
    #[error("bundle is not a JSON object")]
    NotAnObject,
    #[error("bundle has no \"keys\" member")]
    MissingKeys,
    #[error("bundle member \"keys\" is not an array")]
    KeysNotArray,
    #[error("bundle member {0:?} is not a non-negative integer")]
    BadNumber(&'static str),
    #[error("key entry {index} is not a JSON object")]
    EntryNotObject { index: usize },
    #[error("key entry {index} has no \"kty\"")]
    MissingKty { index: usize },
    #[error("key entry {index} (JWT authority) has no \"kid\"")]
    MissingKid { index: usize },
    #[error("key entry {index} repeats kid {kid:?}")]
    DuplicateKid { index: usize, kid: String },
    #[error("key entry {index} is not a usable JWT-SVID key: {reason}")]
    BadJwtKey { index: usize, reason: String },
    #[error("key entry {index} (X.509 authority) has a bad x5c: {reason}")]
    BadX5c { index: usize, reason: &'static str },
    #[error("no CERTIFICATE block found")]
    NoCertificates,
    #[error("PEM is malformed: {0}")]
    Pem(String),
    #[error("certificate {index} is not a well-formed DER certificate")]
    BadCertificate { index: usize },
    #[error("trust domain {0} is configured twice")]
    DuplicateTrustDomain(TrustDomain),
    #[error("cannot read trust bundle file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trust bundle file {path} for {trust_domain}: {source}")]
    File {
        path: std::path::PathBuf,
        trust_domain: TrustDomain,
        #[source]
        source: Box<BundleError>,
    },
}

/// The authorities of one trust domain.
pub struct TrustBundle {
    pub trust_domain: TrustDomain,
    jwt_authorities: HashMap<String, Arc<VerifyingKey>>,
    x509_authorities: Vec<CertificateDer<'static>>,
    /// `spiffe_refresh_hint` in seconds (§4.1.2), when the document carries one.
    pub refresh_hint: Option<u64>,
    /// `spiffe_sequence` (§4.1.1), when the document carries one.
    pub sequence: Option<u64>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("jwt_kids", &self.jwt_kids())
            .field("x509_authorities", &self.x509_authorities.len())
            .field("refresh_hint", &self.refresh_hint)
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl TrustBundle {
    fn empty(td: &TrustDomain) -> Self {
        Self {
            trust_domain: td.clone(),
            jwt_authorities: HashMap::new(),
            x509_authorities: Vec::new(),
            refresh_hint: None,
            sequence: None,
        }
    }

    /// One bundle from the JWT authorities of `jwt` and the X.509 authorities of `x509`
    /// (the Workload API sends the two kinds in separate streams). Either may be absent.
    pub fn combine(
        td: &TrustDomain,
        jwt: Option<&TrustBundle>,
        x509: Option<&TrustBundle>,
    ) -> TrustBundle {
        let mut b = TrustBundle::empty(td);
        if let Some(j) = jwt {
            b.jwt_authorities = j.jwt_authorities.clone();
        }
        if let Some(x) = x509 {
            b.x509_authorities = x.x509_authorities.clone();
        }
        b
    }

    /// The JWT authority with this `kid`, if the bundle has one.
    pub fn jwt_authority(&self, kid: &str) -> Option<&VerifyingKey> {
        self.jwt_authorities.get(kid).map(Arc::as_ref)
    }

    /// The `kid`s of all JWT authorities, sorted.
    pub fn jwt_kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.jwt_authorities.keys().cloned().collect();
        kids.sort();
        kids
    }

    pub fn jwt_authority_count(&self) -> usize {
        self.jwt_authorities.len()
    }

    /// X.509 authorities (trust anchors) as DER.
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    /// A bundle with no authorities at all: every SVID of this trust domain is
    /// rejected (an empty `keys` array means "revoked", §4.1.3).
    pub fn is_empty(&self) -> bool {
        self.jwt_authorities.is_empty() && self.x509_authorities.is_empty()
    }

    fn add_jwt(&mut self, index: usize, kid: &str, key: VerifyingKey) -> Result<(), BundleError> {
        if self.jwt_authorities.contains_key(kid) {
            // kid selects the key (RFC 7517 §4.5), so within one bundle it must be unique.
            return Err(BundleError::DuplicateKid {
                index,
                kid: truncate(kid, 64),
            });
        }
        self.jwt_authorities.insert(kid.to_owned(), Arc::new(key));
        Ok(())
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Parses a SPIFFE bundle document (Trust Domain and Bundle §4): a JWK Set whose entries
/// carry `use: "jwt-svid"` or `use: "x509-svid"`, plus optional `spiffe_refresh_hint`
/// and `spiffe_sequence`.
pub fn parse_spiffe_bundle(td: &TrustDomain, json: &[u8]) -> Result<TrustBundle, BundleError> {
    let (top, keys) = parse_jwk_set(json)?;
    let mut bundle = TrustBundle::empty(td);
    bundle.refresh_hint = optional_u64(&top, "spiffe_refresh_hint")?;
    bundle.sequence = optional_u64(&top, "spiffe_sequence")?;
    for (index, entry) in keys.iter().enumerate() {
        let jwk = entry
            .as_object()
            .ok_or(BundleError::EntryNotObject { index })?;
        // §4.2.2: `use` is case-sensitive; a missing or unknown use (including
        // `wit-svid`, which we do not support) means the entry is ignored.
        match jwk.get("use").and_then(Value::as_str) {
            Some("jwt-svid") => {
                if let Some((kid, key)) = jwt_entry(index, jwk, true)? {
                    bundle.add_jwt(index, kid, key)?;
                }
            }
            Some("x509-svid") => {
                if let Some(cert) = x509_entry(index, jwk)? {
                    bundle.x509_authorities.push(cert);
                }
            }
            _ => {}
        }
    }
    Ok(bundle)
}

/// Parses a plain JWKS (RFC 7517 §5) as go-spiffe `jwtbundle` does: every key is a JWT
/// authority indexed by its `kid`, `use` is not consulted, and a key that cannot be a
/// JWT-SVID authority (no `kid`, or a type no JWT-SVID algorithm uses) fails the load.
pub fn parse_jwks(td: &TrustDomain, json: &[u8]) -> Result<TrustBundle, BundleError> {
    let (_, keys) = parse_jwk_set(json)?;
    let mut bundle = TrustBundle::empty(td);
    for (index, entry) in keys.iter().enumerate() {
        let jwk = entry
            .as_object()
            .ok_or(BundleError::EntryNotObject { index })?;
        if let Some((kid, key)) = jwt_entry(index, jwk, false)? {
            bundle.add_jwt(index, kid, key)?;
        }
    }
    Ok(bundle)
}

/// Parses X.509 authorities from PEM: every `CERTIFICATE` block, other blocks ignored.
/// Empty input is an empty bundle (go-spiffe `x509bundle.Parse`); non-empty input
/// without a certificate block is an error.
pub fn parse_x509_pem(td: &TrustDomain, bytes: &[u8]) -> Result<TrustBundle, BundleError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    let mut bundle = TrustBundle::empty(td);
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = section.map_err(|e| BundleError::Pem(pem_error(&e)))?;
        if kind != SectionKind::Certificate {
            continue;
        }
        let index = bundle.x509_authorities.len();
        push_cert(&mut bundle, index, der)?;
    }
    if bundle.x509_authorities.is_empty() && !bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(BundleError::NoCertificates);
    }
    Ok(bundle)
}

/// Parses X.509 authorities from one or more DER certificates concatenated back to back
/// (the Workload API `X509SVIDResponse.bundle` wire form).
pub fn parse_x509_der(td: &TrustDomain, bytes: &[u8]) -> Result<TrustBundle, BundleError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    let mut bundle = TrustBundle::empty(td);
    let mut rest = bytes;
    while !rest.is_empty() {
        let index = bundle.x509_authorities.len();
        let (_, _, after) = der_tlv(rest).ok_or(BundleError::BadCertificate { index })?;
        let one = &rest[..rest.len() - after.len()];
        push_cert(&mut bundle, index, one.to_vec())?;
        rest = after;
    }
    Ok(bundle)
}

fn push_cert(bundle: &mut TrustBundle, index: usize, der: Vec<u8>) -> Result<(), BundleError> {
    if bundle.x509_authorities.len() >= MAX_BUNDLE_ENTRIES {
        return Err(BundleError::TooManyEntries);
    }
    if !is_certificate_der(&der) {
        return Err(BundleError::BadCertificate { index });
    }
    bundle.x509_authorities.push(CertificateDer::from(der));
    Ok(())
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    // The variants carry at most section labels or byte positions, never the body.
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a section has no END line".into(),
        E::IllegalSectionStart { .. } => "illegal BEGIN line".into(),
        E::Base64Decode(_) => "section body is not base64".into(),
        _ => "unreadable PEM".into(),
    }
}

/// The top-level object of a JWK Set and its `keys` array (`keys` MUST be present, it
/// may be empty: §4.1.3).
pub(super) fn parse_jwk_set(json: &[u8]) -> Result<(Map<String, Value>, Vec<Value>), BundleError> {
    if json.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    let StrictValue(value) = serde_json::from_slice(json).map_err(json_error)?;
    let Value::Object(mut top) = value else {
        return Err(BundleError::NotAnObject);
    };
    let keys = match top.remove("keys") {
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(BundleError::KeysNotArray),
        None => return Err(BundleError::MissingKeys),
    };
    if keys.len() > MAX_BUNDLE_ENTRIES {
        return Err(BundleError::TooManyEntries);
    }
    Ok((top, keys))
}

fn optional_u64(top: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, BundleError> {
    match top.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(BundleError::BadNumber(name)),
    }
}

/// Key types a JWT-SVID authority can have: the JWT-SVID algorithms are RS*, PS* and
/// ES* only (JWT-SVID §2.1), so only `RSA` and `EC` keys can ever verify one.
fn is_jwt_svid_kty(kty: &str) -> bool {
    matches!(kty, "EC" | "RSA")
}

/// A JWT authority entry: `Ok(None)` when the SPIFFE bundle rules say to ignore it
/// (`skip_unknown_kty`), an error when it is malformed.
fn jwt_entry(
    index: usize,
    jwk: &Map<String, Value>,
    skip_unknown_kty: bool,
) -> Result<Option<(&str, VerifyingKey)>, BundleError> {
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or(BundleError::MissingKty { index })?;
    if !is_jwt_svid_kty(kty) {
        // §4.1.3/§4.2.1: an unknown key type MUST be ignored in a SPIFFE bundle; for the
        // jwt-svid use, a kty no JWT-SVID algorithm can use (OKP, oct) counts as unknown.
        // A plain JWKS has no such rule; java-spiffe refuses it, and so do we.
        if skip_unknown_kty {
            return Ok(None);
        }
        return Err(BundleError::BadJwtKey {
            index,
            reason: format!("key type {} is not used by JWT-SVIDs", truncate(kty, 16)),
        });
    }
    // Every JWT authority carries a kid (go-spiffe, java-spiffe; the corpus strict
    // profile); tokens select keys by it and we require kid on tokens too.
    let kid = match jwk.get("kid").and_then(Value::as_str) {
        Some(k) if !k.is_empty() => k,
        _ => return Err(BundleError::MissingKid { index }),
    };
    let key = VerifyingKey::from_jwk(jwk).map_err(|e| BundleError::BadJwtKey {
        index,
        reason: e.to_string(),
    })?;
    Ok(Some((kid, key)))
}

/// An X.509 authority entry: X509-SVID §6.2, only `x5c[0]` is used ("all but the first
/// MUST be ignored"). `x5c` values are standard base64 DER (RFC 7517 §4.7).
fn x509_entry(
    index: usize,
    jwk: &Map<String, Value>,
) -> Result<Option<CertificateDer<'static>>, BundleError> {
    match jwk.get("kty").and_then(Value::as_str) {
        None => return Err(BundleError::MissingKty { index }),
        Some("EC" | "RSA" | "OKP") => {}
        Some(_) => return Ok(None), // §4.2.1: unknown kty is ignored
    }
    let bad = |reason| BundleError::BadX5c { index, reason };
    let first = match jwk.get("x5c") {
        Some(Value::Array(certs)) => certs.first().ok_or(bad("x5c is empty"))?,
        Some(_) => return Err(bad("x5c is not an array")),
        None => return Err(bad("x5c is missing")),
    };
    let b64 = first.as_str().ok_or(bad("x5c[0] is not a string"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad("x5c[0] is not base64"))?;
    if !is_certificate_der(&der) {
        return Err(bad("x5c[0] is not a DER certificate"));
    }
    Ok(Some(CertificateDer::from(der)))
}

/// Reads one DER TLV (X.690 §10: definite, minimal lengths) and returns
/// `(tag, contents, rest)`.
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers do not occur in a certificate's structure
    }
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        // 0x80 is BER's indefinite length; more than 4 length bytes is absurd here.
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(n);
        if len_bytes.first() == Some(&0) {
            return None;
        }
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return None;
        }
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// A structural check that `der` is exactly one X.509 `Certificate` (RFC 5280 §4.1):
/// `SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE, signature BIT
/// STRING }` with nothing trailing, and a TBSCertificate made of well-formed elements
/// starting with the optional `[0]` version and the serial number INTEGER. Full
/// certificate parsing is the job of X.509 path validation, which uses these anchors.
fn is_certificate_der(der: &[u8]) -> bool {
    const SEQUENCE: u8 = 0x30;
    let Some((SEQUENCE, body, [])) = der_tlv(der) else {
        return false;
    };
    let Some((SEQUENCE, tbs, rest)) = der_tlv(body) else {
        return false;
    };
    let Some((SEQUENCE, _, rest)) = der_tlv(rest) else {
        return false;
    };
    let Some((0x03, _, [])) = der_tlv(rest) else {
        return false;
    };
    let mut tags = Vec::with_capacity(10);
    let mut rest = tbs;
    while !rest.is_empty() {
        let Some((tag, _, after)) = der_tlv(rest) else {
            return false;
        };
        tags.push(tag);
        rest = after;
    }
    // version? serial signature issuer validity subject subjectPublicKeyInfo ...
    let fields = match tags.first() {
        Some(0xa0) => &tags[1..],
        _ => &tags[..],
    };
    matches!(
        fields,
        [0x02, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE, ..]
    )
}

fn json_error(e: serde_json::Error) -> BundleError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix("duplicate:") {
        let name = rest.split(" at line").next().unwrap_or(rest);
        return BundleError::DuplicateMember(truncate(name, 64));
    }
    // Only the category and position: serde messages can quote input, and input may be
    // key material.
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    BundleError::Json(format!("{what} at line {} column {}", e.line(), e.column()))
}

/// A JSON value parsed with duplicate-member detection at every nesting level.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = a.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = a.next_key::<String>()? {
            let StrictValue(v) = a.next_value()?;
            if m.contains_key(&k) {
                return Err(serde::de::Error::custom(format!("duplicate:{k}")));
            }
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P256: (&str, &str) = (
        "ngLYQnlfF6GsojUwqtcEE3WgTNG2RUlsGhK73RNEl5k",
        "tKbiDSUSsQ3F1P7wteeHNXIcU-cx6CgSbroeQrQHTLM",
    );

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn jwt_key(kid: &str) -> Value {
        json!({"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": kid,
            "x": P256.0, "y": P256.1})
    }

    fn cert_der() -> Vec<u8> {
        let ck = rcgen::generate_simple_self_signed(vec!["ca.example.org".to_owned()]).unwrap();
        ck.cert.der().to_vec()
    }

    fn x509_entry_json(certs: &[&[u8]]) -> Value {
        let std = base64::engine::general_purpose::STANDARD;
        let x5c: Vec<String> = certs.iter().map(|c| std.encode(c)).collect();
        json!({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": P256.0, "y": P256.1,
            "x5c": x5c})
    }

    fn spiffe(doc: &Value) -> Result<TrustBundle, BundleError> {
        parse_spiffe_bundle(&td(), &serde_json::to_vec(doc).unwrap())
    }

    #[test]
    fn selects_entries_by_use_and_ignores_the_rest() {
        let cert = cert_der();
        let other = cert_der();
        let doc = json!({"spiffe_refresh_hint": 300, "spiffe_sequence": 7, "keys": [
            jwt_key("b"), jwt_key("a"),
            x509_entry_json(&[&cert, &other]),
            {"kty": "EC", "crv": "P-256", "x": P256.0, "y": P256.1, "kid": "no-use"},
            {"use": "JWT-SVID", "kty": "EC", "kid": "upper"},
            {"use": "wit-svid", "kty": "EC", "kid": "wit", "crv": "P-256", "x": P256.0, "y": P256.1},
            {"use": "jwt-svid", "kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"use": "jwt-svid", "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "c2Rmc2Zk"},
            {"use": "x509-svid", "kty": "weird", "x5c": ["!!"]},
        ]});
        let b = spiffe(&doc).unwrap();
        assert_eq!(b.jwt_kids(), ["a", "b"]);
        assert!(b.jwt_authority("a").is_some());
        assert!(b.jwt_authority("upper").is_none());
        // X509-SVID §6.2: only x5c[0].
        assert_eq!(b.x509_authorities().len(), 1);
        assert_eq!(b.x509_authorities()[0].as_ref(), cert.as_slice());
        assert_eq!((b.refresh_hint, b.sequence), (Some(300), Some(7)));
        assert!(!b.is_empty());
    }

    #[test]
    fn empty_keys_is_an_empty_bundle_but_keys_is_required() {
        let b = spiffe(&json!({"keys": []})).unwrap();
        assert!(b.is_empty());
        assert!(matches!(spiffe(&json!({})), Err(BundleError::MissingKeys)));
        assert!(matches!(
            spiffe(&json!({"keys": {}})),
            Err(BundleError::KeysNotArray)
        ));
        assert!(matches!(spiffe(&json!([])), Err(BundleError::NotAnObject)));
    }

    #[test]
    fn malformed_supported_entries_fail_the_bundle() {
        let cases = [
            json!({"keys": [{"use": "jwt-svid", "kty": "EC", "crv": "P-256", "x": P256.0, "y": P256.1}]}),
            json!({"keys": [jwt_key("")]}),
            json!({"keys": [jwt_key("a"), jwt_key("a")]}),
            json!({"keys": [{"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "a", "x": "AAAA", "y": P256.1}]}),
            json!({"keys": [{"use": "jwt-svid", "kid": "a"}]}),
            json!({"keys": [{"use": "x509-svid", "kty": "EC"}]}),
            json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": []}]}),
            json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["not base64!"]}]}),
            json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["MAA="]}]}),
            json!({"keys": ["jwt-svid"]}),
            json!({"keys": [], "spiffe_refresh_hint": -1}),
            json!({"keys": [], "spiffe_sequence": "1"}),
        ];
        for doc in cases {
            assert!(spiffe(&doc).is_err(), "{doc}");
        }
    }

    #[test]
    fn duplicate_members_are_refused_at_every_level() {
        let k = r#"{"use":"jwt-svid","kty":"EC","crv":"P-256","kid":"a","x":"X","y":"Y"}"#
            .replace("\"X\"", &format!("{:?}", P256.0))
            .replace("\"Y\"", &format!("{:?}", P256.1));
        let ok = format!(r#"{{"keys":[{k}]}}"#);
        assert!(parse_spiffe_bundle(&td(), ok.as_bytes()).is_ok());
        let top = format!(r#"{{"keys":[],"keys":[{k}]}}"#);
        let nested = format!(
            r#"{{"keys":[{}]}}"#,
            k.replace(r#""kid":"a""#, r#""kid":"a","kid":"b""#)
        );
        for doc in [top, nested] {
            assert!(
                matches!(
                    parse_spiffe_bundle(&td(), doc.as_bytes()),
                    Err(BundleError::DuplicateMember(_))
                ),
                "{doc}"
            );
        }
    }

    #[test]
    fn errors_never_echo_key_material() {
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LW11c3Qtbm90LWxlYWs";
        let docs = [
            format!(
                r#"{{"keys":[{{"use":"jwt-svid","kty":"EC","crv":"P-256","kid":"a","x":"{secret}","y":"{secret}"}}]}}"#
            ),
            format!(
                r#"{{"keys":[{{"use":"jwt-svid","kty":"RSA","kid":"a","n":"{secret}","e":"AQAB"}}]}}"#
            ),
            format!(r#"{{"keys":[{{"use":"x509-svid","kty":"EC","x5c":["{secret}"]}}]}}"#),
            format!(r#"{{"keys":[{{"d":"{secret}" "#),
            format!(r#"{{"keys":[{{"d":{secret}}}]}}"#),
        ];
        for doc in docs {
            let err = parse_spiffe_bundle(&td(), doc.as_bytes()).unwrap_err();
            assert!(!err.to_string().contains(secret), "{err}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
    }

    #[test]
    fn jwks_requires_kid_and_jwt_svid_key_types() {
        let ok = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "a", "x": P256.0, "y": P256.1, "use": "sig"}]});
        let b = parse_jwks(&td(), &serde_json::to_vec(&ok).unwrap()).unwrap();
        assert_eq!(b.jwt_kids(), ["a"]);
        assert_eq!(b.refresh_hint, None);
        for bad in [
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": P256.0, "y": P256.1}]}),
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "e", "x": "c2Rmc2Zk"}]}),
            json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}),
        ] {
            assert!(
                parse_jwks(&td(), &serde_json::to_vec(&bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn x509_pem_and_der() {
        let (a, b) = (cert_der(), cert_der());
        let pem = |der: &[u8]| {
            let body = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        };
        let key = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
        let both = format!("{key}{}{}", pem(&a), pem(&b));
        let bundle = parse_x509_pem(&td(), both.as_bytes()).unwrap();
        assert_eq!(bundle.x509_authorities().len(), 2);
        assert_eq!(bundle.jwt_authority_count(), 0);
        assert!(parse_x509_pem(&td(), b"  \n").unwrap().is_empty());
        assert!(parse_x509_pem(&td(), key.as_bytes()).is_err());
        assert!(parse_x509_pem(&td(), b"hello").is_err());

        let concat = [a.as_slice(), b.as_slice()].concat();
        assert_eq!(
            parse_x509_der(&td(), &concat)
                .unwrap()
                .x509_authorities()
                .len(),
            2
        );
        assert!(parse_x509_der(&td(), &[concat.as_slice(), &[0x00]].concat()).is_err());
        assert!(parse_x509_der(&td(), &a[..a.len() - 1]).is_err());
    }

    #[test]
    fn der_structure_check() {
        let c = cert_der();
        assert!(is_certificate_der(&c));
        assert!(!is_certificate_der(&[&c[..], &[0]].concat()));
        assert!(!is_certificate_der(&c[..c.len() - 1]));
        assert!(!is_certificate_der(b""));
        assert!(!is_certificate_der(&[0x30, 0x80, 0, 0])); // BER indefinite length
        assert!(!is_certificate_der(&[0x30, 0x81, 0x01, 0x00])); // non-minimal length
        // A SEQUENCE of three SEQUENCEs is not a certificate.
        assert!(!is_certificate_der(&[
            0x30, 0x06, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00
        ]));
    }
}
