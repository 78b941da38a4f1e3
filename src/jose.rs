//! Compact JWS (RFC 7515) and JWK (RFC 7517/7518/7638) on top of `ring`, the one place
//! that names a JOSE or signature library. `attest` (verifying foreign JWTs) and `mint`
//! (signing and verifying ours) both use it; neither imports the other.
//!
//! Rules from RFC 8725: the algorithm comes from our key, not the token (§3.1: the
//! header's `alg` must be one the key allows); `none` and HMAC are never accepted;
//! `jku`/`x5u`/`jwk`/`x5c` headers are ignored, never fetched or trusted (§3.10);
//! unknown `crit` is rejected (RFC 7515 §4.1.11); nested JWTs (`cty: JWT`) are refused.
//! ES512 is verified through josekit (OpenSSL) because ring has no P-521.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Upper bound on a compact token we are willing to parse (bytes).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    #[error("token is empty")]
    Empty,
    #[error("token is too long")]
    TooLong,
    #[error("token must have three dot-separated parts")]
    Segments,
    #[error("token part is not base64url")]
    Base64,
    #[error("token header is not a JSON object")]
    HeaderJson,
    #[error("token payload is not a JSON object")]
    PayloadJson,
    #[error("duplicate member {0:?} in token JSON")]
    DuplicateMember(String),
    #[error("algorithm {0:?} is not allowed")]
    AlgNotAllowed(String),
    #[error("token header has no alg")]
    MissingAlg,
    #[error("unsupported critical header {0:?}")]
    Crit(String),
    #[error("nested tokens are not accepted")]
    Nested,
    #[error("algorithm {alg} does not fit the key")]
    AlgKeyMismatch { alg: &'static str },
    #[error("signature does not verify")]
    BadSignature,
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    #[error("malformed key: {0}")]
    BadKey(String),
    #[error("signing failed")]
    Sign,
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url without padding (RFC 7515 §2).
pub fn b64url_decode(s: &str) -> Result<Vec<u8>, JoseError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| JoseError::Base64)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `n` bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], JoseError> {
    let mut buf = [0u8; N];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut buf).map_err(|_| JoseError::Sign)?;
    Ok(buf)
}

/// HMAC-SHA256 (RFC 2104) under a random key that never leaves this process: a keyed
/// fast hash for remembering that a secret verified (the static-client cache of
/// `service`) without keeping anything an offline guesser could test candidates
/// against. Local use only — never a JWS algorithm (HMAC tokens stay refused).
pub struct ProcessMac(ring::hmac::Key);

impl ProcessMac {
    /// A fresh key from the system CSPRNG (our copy of the bytes is wiped; ring keeps
    /// its own key schedule for the life of the value).
    pub fn random() -> Result<Self, JoseError> {
        let bytes = zeroize::Zeroizing::new(random_bytes::<32>()?);
        Ok(Self(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            bytes.as_ref(),
        )))
    }

    /// The tag of the concatenation of `parts` (fed in order, never copied into one
    /// buffer). Callers make the concatenation unambiguous (length prefixes).
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

impl fmt::Debug for ProcessMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProcessMac(redacted)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Es256,
    Es384,
    Es512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    EdDsa,
}

impl Alg {
    pub fn parse(s: &str) -> Result<Self, JoseError> {
        Ok(match s {
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "EdDSA" => Self::EdDsa,
            other => return Err(JoseError::AlgNotAllowed(truncate(other, 16))),
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::EdDsa => "EdDSA",
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A JSON object parsed with duplicate-member detection: RFC 7515 §5.2 lets us reject
/// duplicates, and a parser that keeps "the last one" is a confusion vector (RFC 8725 §2.6).
struct StrictObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<StrictObject, A::Error> {
                let mut m = Map::new();
                while let Some((k, v)) = a.next_entry::<String, Value>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate:{k}")));
                    }
                    m.insert(k, v);
                }
                Ok(StrictObject(m))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_object(bytes: &[u8], err: JoseError) -> Result<Map<String, Value>, JoseError> {
    match serde_json::from_slice::<StrictObject>(bytes) {
        Ok(o) => Ok(o.0),
        Err(e) => {
            let msg = e.to_string();
            match msg.strip_prefix("duplicate:") {
                Some(rest) => Err(JoseError::DuplicateMember(truncate(
                    rest.split(" at line").next().unwrap_or(rest),
                    32,
                ))),
                None => Err(err),
            }
        }
    }
}

/// A compact JWS whose structure and header have been checked, but whose signature has
/// not: the payload is `unverified` until `VerifyingKey::verify` accepted it.
#[derive(Debug)]
pub struct UnverifiedJws<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub header: Map<String, Value>,
    pub unverified_claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> UnverifiedJws<'a> {
    pub fn parse(token: &'a str) -> Result<Self, JoseError> {
        if token.is_empty() {
            return Err(JoseError::Empty);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(JoseError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoseError::Segments);
        };
        let header = parse_object(&b64url_decode(h)?, JoseError::HeaderJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => Alg::parse(a)?,
            Some(_) => return Err(JoseError::AlgNotAllowed("non-string".into())),
            None => return Err(JoseError::MissingAlg),
        };
        if let Some(crit) = header.get("crit") {
            // We implement no JWS extensions, so any crit entry is one we do not understand.
            let first = crit
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .unwrap_or("?");
            return Err(JoseError::Crit(truncate(first, 32)));
        }
        if let Some(cty) = header.get("cty").and_then(Value::as_str)
            && cty.eq_ignore_ascii_case("JWT")
        {
            return Err(JoseError::Nested);
        }
        let kid = match header.get("kid") {
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JoseError::HeaderJson),
            None => None,
        };
        let typ = match header.get("typ") {
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err(JoseError::HeaderJson),
            None => None,
        };
        let unverified_claims = parse_object(&b64url_decode(p)?, JoseError::PayloadJson)?;
        let signature = b64url_decode(s)?;
        Ok(Self {
            alg,
            kid,
            typ,
            header,
            unverified_claims,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature,
        })
    }

    /// Verifies the signature with `key`, returning the now-verified claims.
    pub fn verify(self, key: &VerifyingKey) -> Result<Map<String, Value>, JoseError> {
        key.verify(self.alg, self.signing_input.as_bytes(), &self.signature)?;
        Ok(self.unverified_claims)
    }

    /// Verifies with the first of `keys` whose signature checks, for issuers whose
    /// tokens carry no `kid` (RFC 7515 §4.1.4 makes it optional). Keys that cannot
    /// take this `alg` are skipped; `AlgKeyMismatch` when none could, else
    /// `BadSignature` when none verified.
    pub fn verify_any<'k>(
        self,
        keys: impl IntoIterator<Item = &'k VerifyingKey>,
    ) -> Result<Map<String, Value>, JoseError> {
        let mut error = JoseError::AlgKeyMismatch {
            alg: self.alg.as_str(),
        };
        for key in keys {
            match key.verify(self.alg, self.signing_input.as_bytes(), &self.signature) {
                Ok(()) => return Ok(self.unverified_claims),
                Err(JoseError::AlgKeyMismatch { .. }) => {}
                Err(e) => error = e,
            }
        }
        Err(error)
    }
}

/// A public key prepared once (at bundle or key load) for fast verification.
pub struct VerifyingKey {
    kind: KeyKind,
    /// The JWK's own `alg`, which, when present, must equal the token's (RFC 7517 §4.4).
    pinned_alg: Option<Alg>,
}

enum KeyKind {
    P256(Vec<u8>),
    P384(Vec<u8>),
    P521(Box<dyn josekit::jws::JwsVerifier>),
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ed25519(Vec<u8>),
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            KeyKind::P256(_) => "P-256",
            KeyKind::P384(_) => "P-384",
            KeyKind::P521(_) => "P-521",
            KeyKind::Rsa { .. } => "RSA",
            KeyKind::Ed25519(_) => "Ed25519",
        };
        write!(f, "VerifyingKey({kind})")
    }
}

fn member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, JoseError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| JoseError::BadKey(format!("missing {name}")))
}

fn coord(jwk: &Map<String, Value>, name: &str, len: usize) -> Result<Vec<u8>, JoseError> {
    let v = b64url_decode(member(jwk, name)?)?;
    if v.len() != len {
        return Err(JoseError::BadKey(format!("{name} has the wrong length")));
    }
    Ok(v)
}

fn uncompressed_point(jwk: &Map<String, Value>, len: usize) -> Result<Vec<u8>, JoseError> {
    let mut p = vec![0x04];
    p.extend(coord(jwk, "x", len)?);
    p.extend(coord(jwk, "y", len)?);
    Ok(p)
}

impl VerifyingKey {
    /// Builds a verifier from a public JWK; private members (`d`, `p`, …) are ignored.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<Self, JoseError> {
        let pinned_alg = match jwk.get("alg").and_then(Value::as_str) {
            Some(a) => Some(
                Alg::parse(a)
                    .map_err(|_| JoseError::UnsupportedKey(format!("alg {}", truncate(a, 16))))?,
            ),
            None => None,
        };
        let kind = match member(jwk, "kty")? {
            "EC" => match member(jwk, "crv")? {
                "P-256" => KeyKind::P256(uncompressed_point(jwk, 32)?),
                "P-384" => KeyKind::P384(uncompressed_point(jwk, 48)?),
                "P-521" => {
                    coord(jwk, "x", 66)?;
                    coord(jwk, "y", 66)?;
                    let mut public = Map::new();
                    for k in ["kty", "crv", "x", "y"] {
                        if let Some(v) = jwk.get(k) {
                            public.insert(k.to_owned(), v.clone());
                        }
                    }
                    let jk = josekit::jwk::Jwk::from_map(public)
                        .map_err(|e| JoseError::BadKey(e.to_string()))?;
                    let v = josekit::jws::ES512
                        .verifier_from_jwk(&jk)
                        .map_err(|e| JoseError::BadKey(e.to_string()))?;
                    KeyKind::P521(Box::new(v))
                }
                other => {
                    return Err(JoseError::UnsupportedKey(format!(
                        "curve {}",
                        truncate(other, 16)
                    )));
                }
            },
            "RSA" => {
                let n = b64url_decode(member(jwk, "n")?)?;
                let e = b64url_decode(member(jwk, "e")?)?;
                let n_trim: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
                if n_trim.len() < 256 {
                    return Err(JoseError::UnsupportedKey(
                        "RSA keys must have at least 2048 bits".into(),
                    ));
                }
                KeyKind::Rsa { n: n_trim, e }
            }
            "OKP" => match member(jwk, "crv")? {
                "Ed25519" => KeyKind::Ed25519(coord(jwk, "x", 32)?),
                other => {
                    return Err(JoseError::UnsupportedKey(format!(
                        "curve {}",
                        truncate(other, 16)
                    )));
                }
            },
            other => {
                return Err(JoseError::UnsupportedKey(format!(
                    "kty {}",
                    truncate(other, 16)
                )));
            }
        };
        let key = Self { kind, pinned_alg };
        if let Some(a) = pinned_alg
            && !key.fits(a)
        {
            return Err(JoseError::BadKey(format!(
                "alg {} does not fit the key type",
                a.as_str()
            )));
        }
        Ok(key)
    }

    /// Whether `alg` is one this key type can verify (RFC 8725 §3.1: bind alg to key).
    pub fn fits(&self, alg: Alg) -> bool {
        matches!(
            (&self.kind, alg),
            (KeyKind::P256(_), Alg::Es256)
                | (KeyKind::P384(_), Alg::Es384)
                | (KeyKind::P521(_), Alg::Es512)
                | (KeyKind::Ed25519(_), Alg::EdDsa)
                | (
                    KeyKind::Rsa { .. },
                    Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
                )
        )
    }

    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> Result<(), JoseError> {
        if !self.fits(alg) || self.pinned_alg.is_some_and(|p| p != alg) {
            return Err(JoseError::AlgKeyMismatch { alg: alg.as_str() });
        }
        let ok = match &self.kind {
            KeyKind::P256(pt) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pt)
                    .verify(msg, sig)
                    .is_ok()
            }
            KeyKind::P384(pt) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, pt)
                    .verify(msg, sig)
                    .is_ok()
            }
            KeyKind::P521(v) => v.verify(msg, sig).is_ok(),
            KeyKind::Ed25519(pk) => signature::UnparsedPublicKey::new(&signature::ED25519, pk)
                .verify(msg, sig)
                .is_ok(),
            KeyKind::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(JoseError::BadSignature)
        }
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) over the required public members in
/// lexicographic order.
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Result<String, JoseError> {
    let names: &[&str] = match member(jwk, "kty")? {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        other => {
            return Err(JoseError::UnsupportedKey(format!(
                "kty {}",
                truncate(other, 16)
            )));
        }
    };
    let mut canon = Map::new();
    for n in names {
        canon.insert((*n).to_owned(), Value::String(member(jwk, n)?.to_owned()));
    }
    // serde_json's Map is a BTreeMap (no preserve_order feature), so keys serialize sorted.
    let json = serde_json::to_vec(&canon).map_err(|e| JoseError::BadKey(e.to_string()))?;
    Ok(b64url(&sha256(&json)))
}

/// Signing algorithms we mint with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SigningAlg {
    ES256,
    EdDSA,
    RS256,
}

impl SigningAlg {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Self::ES256),
            "EdDSA" => Some(Self::EdDSA),
            "RS256" => Some(Self::RS256),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
            Self::RS256 => "RS256",
        }
    }
    fn jws_alg(self) -> Alg {
        match self {
            Self::ES256 => Alg::Es256,
            Self::EdDSA => Alg::EdDsa,
            Self::RS256 => Alg::Rs256,
        }
    }
}

/// A private signing key. `Debug` never prints key material.
pub struct SigningKey {
    alg: SigningAlg,
    pair: Pair,
    /// Wiped on drop. (ring's parsed key pair keeps its own copy, which ring does not wipe.)
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
    public_jwk: Map<String, Value>,
    kid: String,
}

enum Pair {
    Ec(signature::EcdsaKeyPair),
    Ed(signature::Ed25519KeyPair),
    Rsa(signature::RsaKeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg.as_str())
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    pub fn generate(alg: SigningAlg) -> Result<Self, JoseError> {
        let rng = SystemRandom::new();
        let pkcs8 = zeroize::Zeroizing::new(match alg {
            SigningAlg::ES256 => signature::EcdsaKeyPair::generate_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .map_err(|_| JoseError::Sign)?
            .as_ref()
            .to_vec(),
            SigningAlg::EdDSA => signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| JoseError::Sign)?
                .as_ref()
                .to_vec(),
            // ring cannot generate RSA keys; OpenSSL (via josekit) can.
            SigningAlg::RS256 => {
                use josekit::jwk::KeyPair as _;
                use josekit::jwk::alg::rsa::RsaKeyPair;
                RsaKeyPair::generate(2048)
                    .map_err(|e| JoseError::BadKey(e.to_string()))?
                    .to_der_private_key()
            }
        });
        Self::from_pkcs8(alg, &pkcs8)
    }

    pub fn from_pkcs8(alg: SigningAlg, pkcs8: &[u8]) -> Result<Self, JoseError> {
        let rng = SystemRandom::new();
        let bad = |e: ring::error::KeyRejected| JoseError::BadKey(e.to_string());
        let (pair, public_jwk) = match alg {
            SigningAlg::ES256 => {
                let kp = signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &rng,
                )
                .map_err(bad)?;
                let pt = kp.public_key().as_ref();
                let mut m = Map::new();
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), "P-256".into());
                m.insert("x".into(), b64url(&pt[1..33]).into());
                m.insert("y".into(), b64url(&pt[33..65]).into());
                (Pair::Ec(kp), m)
            }
            SigningAlg::EdDSA => {
                let kp =
                    signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(bad)?;
                let mut m = Map::new();
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), "Ed25519".into());
                m.insert("x".into(), b64url(kp.public_key().as_ref()).into());
                (Pair::Ed(kp), m)
            }
            SigningAlg::RS256 => {
                let kp = signature::RsaKeyPair::from_pkcs8(pkcs8).map_err(bad)?;
                let public: signature::RsaPublicKeyComponents<Vec<u8>> = kp.public().into();
                let mut m = Map::new();
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64url(&public.n).into());
                m.insert("e".into(), b64url(&public.e).into());
                (Pair::Rsa(kp), m)
            }
        };
        let kid = jwk_thumbprint(&public_jwk)?;
        Ok(Self {
            alg,
            pair,
            pkcs8: zeroize::Zeroizing::new(pkcs8.to_vec()),
            public_jwk,
            kid,
        })
    }

    pub fn alg(&self) -> SigningAlg {
        self.alg
    }
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// PKCS#8 DER of the private key, for persisting it (never log this).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public JWK with `kid`, `alg` and `use: "sig"` (for our JWKS).
    pub fn public_jwk(&self) -> Map<String, Value> {
        let mut m = self.public_jwk.clone();
        m.insert("kid".into(), self.kid.clone().into());
        m.insert("alg".into(), self.alg.as_str().into());
        m.insert("use".into(), "sig".into());
        m
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey, JoseError> {
        VerifyingKey::from_jwk(&self.public_jwk())
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JoseError> {
        match &self.pair {
            Pair::Ec(kp) => Ok(kp
                .sign(&SystemRandom::new(), msg)
                .map_err(|_| JoseError::Sign)?
                .as_ref()
                .to_vec()),
            Pair::Ed(kp) => Ok(kp.sign(msg).as_ref().to_vec()),
            Pair::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    msg,
                    &mut sig,
                )
                .map_err(|_| JoseError::Sign)?;
                Ok(sig)
            }
        }
    }

    /// Signs `claims` as a compact JWS with header `{typ, alg, kid}`.
    pub fn sign_compact(
        &self,
        typ: &str,
        claims: &impl serde::Serialize,
    ) -> Result<String, JoseError> {
        let header =
            serde_json::json!({"typ": typ, "alg": self.alg.jws_alg().as_str(), "kid": self.kid});
        let h = serde_json::to_vec(&header).map_err(|_| JoseError::Sign)?;
        let p = serde_json::to_vec(claims).map_err(|_| JoseError::Sign)?;
        let mut out = String::with_capacity((h.len() + p.len()) * 4 / 3 + 120);
        out.push_str(&b64url(&h));
        out.push('.');
        out.push_str(&b64url(&p));
        let sig = self.sign(out.as_bytes())?;
        out.push('.');
        out.push_str(&b64url(&sig));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn es256() -> SigningKey {
        SigningKey::generate(SigningAlg::ES256).unwrap()
    }

    #[test]
    fn sign_then_verify_round_trips_for_each_alg() {
        for alg in [SigningAlg::ES256, SigningAlg::EdDSA] {
            let k = SigningKey::generate(alg).unwrap();
            let t = k.sign_compact("at+jwt", &json!({"sub": "x"})).unwrap();
            let jws = UnverifiedJws::parse(&t).unwrap();
            assert_eq!(jws.kid.as_deref(), Some(k.kid()));
            let claims = jws.verify(&k.verifying_key().unwrap()).unwrap();
            assert_eq!(claims["sub"], "x");
        }
    }

    #[test]
    fn a_flipped_signature_bit_fails() {
        let k = es256();
        let t = k.sign_compact("JWT", &json!({"a": 1})).unwrap();
        let (si, sig) = t.rsplit_once('.').unwrap();
        let mut raw = b64url_decode(sig).unwrap();
        raw[5] ^= 1;
        let forged = format!("{si}.{}", b64url(&raw));
        let jws = UnverifiedJws::parse(&forged).unwrap();
        assert_eq!(
            jws.verify(&k.verifying_key().unwrap()),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn rejects_none_hmac_crit_nested_and_duplicates() {
        let enc = |h: &str| {
            format!(
                "{}.{}.{}",
                b64url(h.as_bytes()),
                b64url(b"{}"),
                b64url(b"sig")
            )
        };
        let cases = [
            (r#"{"alg":"none"}"#, "not allowed"),
            (r#"{"alg":"HS256"}"#, "not allowed"),
            (r#"{"alg":"ES256","crit":["exp"]}"#, "critical"),
            (r#"{"alg":"ES256","cty":"JWT"}"#, "nested"),
            (r#"{"alg":"ES256","alg":"none"}"#, "duplicate"),
            (r#"{"typ":"JWT"}"#, "no alg"),
            (r#"[1]"#, "JSON object"),
        ];
        for (h, want) in cases {
            let err = UnverifiedJws::parse(&enc(h)).unwrap_err().to_string();
            assert!(err.contains(want), "{h}: {err}");
        }
        assert_eq!(
            UnverifiedJws::parse("a.b").unwrap_err(),
            JoseError::Segments
        );
        assert_eq!(
            UnverifiedJws::parse("a.b.c.d").unwrap_err(),
            JoseError::Segments
        );
        assert_eq!(UnverifiedJws::parse("").unwrap_err(), JoseError::Empty);
        assert_eq!(
            UnverifiedJws::parse("e30=.e30.e30").unwrap_err(),
            JoseError::Base64
        );
    }

    #[test]
    fn alg_is_bound_to_key_type() {
        let k = es256();
        let vk = k.verifying_key().unwrap();
        assert!(matches!(
            vk.verify(Alg::Rs256, b"m", b"s"),
            Err(JoseError::AlgKeyMismatch { .. })
        ));
        assert!(matches!(
            vk.verify(Alg::Es384, b"m", b"s"),
            Err(JoseError::AlgKeyMismatch { .. })
        ));
        // ECDSA signature of zeros (r = s = 0) never verifies.
        assert_eq!(
            vk.verify(Alg::Es256, b"m", &[0u8; 64]),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 §3.1 example key and its thumbprint.
        let jwk = json!({"kty":"RSA","e":"AQAB","alg":"RS256","kid":"2011-04-29",
            "n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        let m = jwk.as_object().unwrap();
        assert_eq!(
            jwk_thumbprint(m).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let jwk = json!({"kty":"RSA","e":"AQAB","n": b64url(&[0xff; 128])});
        assert!(VerifyingKey::from_jwk(jwk.as_object().unwrap()).is_err());
    }

    #[test]
    fn process_mac_is_keyed_and_reads_the_parts_in_order() {
        let (a, b) = (ProcessMac::random().unwrap(), ProcessMac::random().unwrap());
        let t = a.tag(&[b"id", b"secret"]);
        assert_eq!(t, a.tag(&[b"ids", b"ecret"]), "the parts are concatenated");
        assert_eq!(t, a.tag(&[b"idsecret"]));
        assert_ne!(t, a.tag(&[b"id", b"secreT"]));
        assert_ne!(
            t,
            b.tag(&[b"id", b"secret"]),
            "another process, another key"
        );
        assert_ne!(t, sha256(b"idsecret"));
        assert_eq!(format!("{a:?}"), "ProcessMac(redacted)");
    }
}
