//! JWT-SVID verification (SPIFFE JWT-SVID spec, RFC 7519, RFC 8725, contract §2).
//!
//! Order of checks: structure and header (alg, typ, kid) → `sub` as a workload SPIFFE ID
//! → the bundle of **that** trust domain only (Trust Domain and Bundle §3: validators
//! choose the bundle of the trust domain the SVID resides in; contract §2; never another
//! trust domain's key that happens to share a kid) → the key by kid → signature → `exp`/`nbf`/`iat` against `now` with leeway →
//! `aud`. `sub` is read before the signature is checked because it selects the bundle;
//! nothing else from the unverified payload is trusted.
//!
//! Key-carrying headers (`jwk`, `jku`, `x5c`, `x5u`) are never consulted: keys come
//! from the trust bundle alone (RFC 8725 §3.10).

use super::{AttestError, BundleSource, TrustBundle};
use crate::clock::UnixSeconds;
use crate::domain::identity::VerifierProof;
use crate::domain::{CredentialKind, Principal, SpiffeId, VerifiedIdentity};
use crate::jose::{Alg, JoseError, UnverifiedJws};
use serde_json::{Map, Value};
use std::sync::Arc;

pub struct JwtSvidVerifier {
    bundles: Arc<dyn BundleSource>,
    accept_audiences: Vec<String>,
    leeway: i64,
}

impl std::fmt::Debug for JwtSvidVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvidVerifier")
            .field("accept_audiences", &self.accept_audiences)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// JWT-SVID §2.1: "alg" MUST be one of RS256/384/512, ES256/384/512, PS256/384/512,
/// whatever the bundle key could verify. EdDSA, HMAC and `none` are out.
fn alg_allowed(alg: Alg) -> bool {
    !matches!(alg, Alg::EdDsa)
}

impl JwtSvidVerifier {
    /// `accept_audiences`: the `aud` of a token must contain one of these (contract §4
    /// `[tokens] accept_audiences`, already defaulted to `[issuer]` by configuration).
    /// An empty list accepts no token. `leeway`: seconds of clock skew tolerated.
    pub fn new(
        bundles: Arc<dyn BundleSource>,
        accept_audiences: Vec<String>,
        leeway_secs: u64,
    ) -> Self {
        Self {
            bundles,
            accept_audiences,
            leeway: i64::try_from(leeway_secs).unwrap_or(i64::MAX),
        }
    }

    /// The configured audiences (`[tokens] accept_audiences`).
    pub fn accept_audiences(&self) -> &[String] {
        &self.accept_audiences
    }

    /// Verifies a JWT-SVID presented at `now` against the configured audiences.
    pub fn verify(
        &self,
        unverified_token: &str,
        now: UnixSeconds,
    ) -> Result<VerifiedIdentity, AttestError> {
        self.verify_with_audiences(unverified_token, &self.accept_audiences, now)
    }

    /// As `verify`, with the audiences given per call (e.g. a client assertion, whose
    /// `aud` is the token endpoint).
    pub fn verify_with_audiences(
        &self,
        unverified_token: &str,
        audiences: &[String],
        now: UnixSeconds,
    ) -> Result<VerifiedIdentity, AttestError> {
        let jws = parse_jws(unverified_token)?;
        self.verify_parsed(jws, audiences, now)
    }

    /// As `verify_with_audiences`, for a token the caller already parsed (the subject
    /// token dispatch reads `iss` first, see `attest::verify_subject_token`).
    pub fn verify_parsed(
        &self,
        jws: UnverifiedJws<'_>,
        audiences: &[String],
        now: UnixSeconds,
    ) -> Result<VerifiedIdentity, AttestError> {
        self.verify_parsed_with_bundle(jws, audiences, now)
            .map(|(identity, _)| identity)
    }

    /// As `verify`, also returning the bundle whose key verified the signature: a caller
    /// that remembers the result can tell later whether that trust domain's bundle is
    /// still the same one (`Arc::ptr_eq` against `BundleSource::bundle`; every source
    /// swaps in a new `Arc` when a bundle changes).
    pub fn verify_keeping_bundle(
        &self,
        unverified_token: &str,
        now: UnixSeconds,
    ) -> Result<(VerifiedIdentity, Arc<TrustBundle>), AttestError> {
        let jws = parse_jws(unverified_token)?;
        self.verify_parsed_with_bundle(jws, &self.accept_audiences, now)
    }

    pub(crate) fn verify_parsed_with_bundle(
        &self,
        jws: UnverifiedJws<'_>,
        audiences: &[String],
        now: UnixSeconds,
    ) -> Result<(VerifiedIdentity, Arc<TrustBundle>), AttestError> {
        if !alg_allowed(jws.alg) {
            return Err(AttestError::AlgNotAllowed(jws.alg.as_str().to_owned()));
        }
        // JWT-SVID §2.3: typ, if present, is JWT or JOSE (this also refuses `at+jwt`,
        // our own access tokens, being replayed as SVIDs: RFC 8725 §3.11).
        if let Some(typ) = jws.typ.as_deref()
            && typ != "JWT"
            && typ != "JOSE"
        {
            return Err(AttestError::BadTyp);
        }
        // JWT-SVID §2.2 makes kid optional; go-spiffe requires it, and without it we would
        // have to try every key of the bundle.
        let kid = jws.kid.as_deref().ok_or(AttestError::NoKid)?;
        let sub = match jws.unverified_claims.get("sub") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(AttestError::InvalidClaim("sub")),
            None => return Err(AttestError::NoSubject),
        };
        let id = SpiffeId::parse(sub).map_err(AttestError::NotASpiffeId)?;
        // JWT-SVID §3.1: sub is the SPIFFE ID of the workload; the bare trust-domain
        // ID names no workload (as for an X509-SVID leaf), so it is refused.
        if id.path().is_empty() {
            return Err(AttestError::SubjectNotWorkload);
        }
        let td = id.trust_domain();
        let bundle = self
            .bundles
            .bundle(&td)
            .ok_or_else(|| AttestError::UnknownTrustDomain(td.clone()))?;
        let key = bundle
            .jwt_authority(kid)
            .ok_or_else(|| AttestError::UnknownKid(td.clone()))?;
        let claims = jws.verify(key).map_err(|e| match e {
            JoseError::BadSignature => AttestError::BadSignature,
            JoseError::AlgKeyMismatch { .. } => AttestError::AlgKeyMismatch,
            other => AttestError::Malformed(other),
        })?;
        let expires_at = check_times(&claims, now, self.leeway)?;
        check_audience(&claims, audiences)?;
        let identity = VerifiedIdentity::new(
            VerifierProof::new(),
            Principal::Spiffe(id),
            CredentialKind::JwtSvid,
            expires_at,
            None,
        );
        Ok((identity, bundle))
    }
}

/// Parses a compact JWS, keeping the algorithm refusal distinct from malformation.
pub(crate) fn parse_jws(unverified_token: &str) -> Result<UnverifiedJws<'_>, AttestError> {
    UnverifiedJws::parse(unverified_token).map_err(|e| match e {
        JoseError::AlgNotAllowed(a) => AttestError::AlgNotAllowed(a),
        other => AttestError::Malformed(other),
    })
}

/// RFC 7519 §4.1.4–4.1.6 with leeway: expired when `now >= exp + leeway`; `nbf` and
/// `iat` may be at most `leeway` in the future (contract §2). Returns `exp`.
/// Shared by JWT-SVIDs and OIDC tokens.
pub(super) fn check_times(
    claims: &Map<String, Value>,
    now: UnixSeconds,
    leeway: i64,
) -> Result<UnixSeconds, AttestError> {
    // JWT-SVID §3.3/§4 and OIDC Core §2: exp is REQUIRED. Fractional NumericDates are
    // rounded towards the stricter side: exp down, nbf/iat up.
    let exp = numeric_date(claims, "exp", f64::floor)?.ok_or(AttestError::MissingExp)?;
    if now >= exp.saturating_add(leeway) {
        return Err(AttestError::Expired);
    }
    let horizon = now.saturating_add(leeway);
    if numeric_date(claims, "nbf", f64::ceil)?.is_some_and(|nbf| nbf > horizon) {
        return Err(AttestError::NotYetValid);
    }
    if numeric_date(claims, "iat", f64::ceil)?.is_some_and(|iat| iat > horizon) {
        return Err(AttestError::IssuedInFuture);
    }
    Ok(exp)
}

fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
    round: fn(f64) -> f64,
) -> Result<Option<UnixSeconds>, AttestError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(n) = v else {
        return Err(AttestError::InvalidClaim(name));
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64().map(round) {
        // i64 range in f64 terms; `as` is exact for integral values inside it.
        #[allow(clippy::cast_possible_truncation)]
        Some(f) if f.is_finite() && f.abs() < 9.0e18 => Ok(Some(f as i64)),
        _ => Err(AttestError::InvalidClaim(name)),
    }
}

/// JWT-SVID §3.2: aud is REQUIRED (a string or an array of strings) and the validator
/// MUST reject a token that does not name it.
pub(super) fn check_audience(
    claims: &Map<String, Value>,
    accepted: &[String],
) -> Result<(), AttestError> {
    let hit = |a: &str| accepted.iter().any(|x| x == a);
    match claims.get("aud") {
        None => Err(AttestError::MissingAud),
        Some(Value::String(a)) => {
            if hit(a) {
                Ok(())
            } else {
                Err(AttestError::WrongAudience)
            }
        }
        Some(Value::Array(list)) => {
            let mut found = false;
            for a in list {
                let a = a.as_str().ok_or(AttestError::InvalidClaim("aud"))?;
                found |= hit(a);
            }
            if list.is_empty() {
                Err(AttestError::MissingAud)
            } else if found {
                Ok(())
            } else {
                Err(AttestError::WrongAudience)
            }
        }
        Some(_) => Err(AttestError::InvalidClaim("aud")),
    }
}
