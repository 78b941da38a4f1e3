//! X.509-SVID verification (SPIFFE X509-SVID spec, RFC 5280, RFC 8705) and the rustls
//! client-certificate verifier built on it.
//!
//! Order of checks (`X509SvidVerifier::verify`): the X509-SVID document rules on the
//! presented chain (`check_svid_structure`) → the leaf's SPIFFE ID selects the bundle of
//! **its** trust domain only (Trust Domain and Bundle §3; never every known root, see the
//! corpus cases `trust-domain-confusion` and `bundle-selected-by-root-san`) → RFC 5280
//! path validation at the injected `now` with rustls-webpki (client-auth usage).
//!
//! Both steps are needed: rustls-webpki does not check the SPIFFE leaf rules, and it does
//! not require keyCertSign on intermediates; go-spiffe's `Verify` does not either (corpus
//! README, "Spec points commonly got wrong" 5).
//!
//! An X.509-SVID is accepted only through a TLS handshake, which proves possession of
//! the leaf's private key; this module never parses a chain from a form field.
//!
//! This is the only file of `attest` that names rustls (the verifier trait); it imports
//! only `crate::domain`, `crate::clock` and `crate::jose`.

use super::{AttestError, BundleSource};
use crate::clock::{Clock, UnixSeconds};
use crate::domain::identity::VerifierProof;
use crate::domain::{CredentialKind, Principal, SpiffeId, VerifiedIdentity};
use crate::jose::{b64url, sha256};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use std::sync::Arc;
use std::time::Duration;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;

/// Tessera's own server certificate, chosen per handshake (the Workload API SVID). Kept
/// here so `service` can carry it without naming rustls.
pub type ServerCertResolver = std::sync::Arc<dyn LiveServerCert>;

/// A server certificate that arrives from outside (the Workload API) and may not be
/// there yet; `/readyz` waits for it.
pub trait LiveServerCert: rustls::server::ResolvesServerCert {
    fn has_certificate(&self) -> bool;
}

/// Longest chain we look at (leaf + intermediates). SPIRE chains are 1–3 certificates;
/// rustls-webpki has its own path-length budget on top of this.
const MAX_CHAIN_LEN: usize = 8;

fn parse_cert<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, AttestError> {
    match X509Certificate::from_der(der.as_ref()) {
        // A DER certificate followed by stray bytes is not a certificate (corpus
        // `trailing-garbage`): never silently truncate.
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(AttestError::BadCertificate(
            "trailing bytes after the certificate",
        )),
        Err(_) => Err(AttestError::BadCertificate(
            "certificate is not valid DER X.509",
        )),
    }
}

/// basicConstraints cA, refusing a duplicated or undecodable extension (x509-parser's
/// `basic_constraints()` would report an undecodable one as absent, i.e. "not a CA").
fn is_ca(cert: &X509Certificate<'_>) -> Result<bool, AttestError> {
    let ext = cert
        .get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS)
        .map_err(|_| AttestError::BadCertificate("duplicate basicConstraints extension"))?;
    match ext.map(|e| e.parsed_extension()) {
        None => Ok(false),
        Some(ParsedExtension::BasicConstraints(bc)) => Ok(bc.ca),
        Some(_) => Err(AttestError::BadCertificate(
            "basicConstraints extension does not decode",
        )),
    }
}

/// (digitalSignature, keyCertSign, cRLSign), or `None` without a keyUsage extension.
fn key_usage(cert: &X509Certificate<'_>) -> Result<Option<(bool, bool, bool)>, AttestError> {
    let ext = cert
        .get_extension_unique(&OID_X509_EXT_KEY_USAGE)
        .map_err(|_| AttestError::BadCertificate("duplicate keyUsage extension"))?;
    match ext.map(|e| e.parsed_extension()) {
        None => Ok(None),
        Some(ParsedExtension::KeyUsage(ku)) => Ok(Some((
            ku.digital_signature(),
            ku.key_cert_sign(),
            ku.crl_sign(),
        ))),
        Some(_) => Err(AttestError::BadCertificate(
            "keyUsage extension does not decode",
        )),
    }
}

/// X509-SVID §4.3/§5: exactly one URI SAN, of any scheme (a second, non-SPIFFE URI SAN
/// also disqualifies the leaf); DNS and other SAN types are allowed next to it.
fn leaf_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, AttestError> {
    let ext = cert
        .get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME)
        .map_err(|_| AttestError::BadCertificate("duplicate subjectAltName extension"))?
        .ok_or(AttestError::BadCertificate("leaf has no URI SAN"))?;
    let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
        return Err(AttestError::BadCertificate(
            "subjectAltName extension does not decode",
        ));
    };
    let mut uris = san.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris
        .next()
        .ok_or(AttestError::BadCertificate("leaf has no URI SAN"))?;
    if uris.next().is_some() {
        return Err(AttestError::BadCertificate(
            "leaf must have exactly one URI SAN",
        ));
    }
    let id = SpiffeId::parse(uri)
        .map_err(|_| AttestError::BadCertificate("leaf URI SAN is not a valid SPIFFE ID"))?;
    // X509-SVID §2: the leaf names a workload; the bare trust-domain ID is not one.
    if id.path().is_empty() {
        return Err(AttestError::BadCertificate(
            "leaf SPIFFE ID has no path (trust domain ID)",
        ));
    }
    Ok(id)
}

/// The trust domain an X.509 authority names in a `spiffe://` URI SAN, if it names one
/// (SPIRE's CAs carry the trust domain ID). Federation uses it to refuse a bundle
/// endpoint that serves another trust domain's bundle.
pub fn authority_trust_domain(der: &CertificateDer<'_>) -> Option<crate::domain::TrustDomain> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let ext = cert
        .get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME)
        .ok()??;
    let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
        return None;
    };
    san.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => SpiffeId::parse(u).ok().map(|id| id.trust_domain()),
        _ => None,
    })
}

/// X509-SVID §4.1–4.3: the leaf is not a CA, has keyUsage with digitalSignature and
/// without keyCertSign/cRLSign.
fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, AttestError> {
    let id = leaf_spiffe_id(cert)?;
    if is_ca(cert)? {
        return Err(AttestError::BadCertificate("leaf must not be a CA"));
    }
    let (digital_signature, key_cert_sign, crl_sign) =
        key_usage(cert)?.ok_or(AttestError::BadCertificate("leaf has no keyUsage"))?;
    if !digital_signature {
        return Err(AttestError::BadCertificate(
            "leaf keyUsage lacks digitalSignature",
        ));
    }
    if key_cert_sign {
        return Err(AttestError::BadCertificate("leaf keyUsage has keyCertSign"));
    }
    if crl_sign {
        return Err(AttestError::BadCertificate("leaf keyUsage has cRLSign"));
    }
    Ok(id)
}

/// X509-SVID §4.1/§4.3: every further certificate is a signing certificate, cA=true
/// with keyCertSign.
fn check_signing_cert(cert: &X509Certificate<'_>) -> Result<(), AttestError> {
    if !is_ca(cert)? {
        return Err(AttestError::BadCertificate(
            "intermediate certificate is not a CA",
        ));
    }
    match key_usage(cert)? {
        Some((_, true, _)) => Ok(()),
        _ => Err(AttestError::BadCertificate(
            "intermediate certificate lacks keyCertSign",
        )),
    }
}

/// Applies the SPIFFE X509-SVID document rules to a presented chain (leaf first), without
/// path validation and without a clock (go-spiffe `x509svid.Parse`, rust-spiffe
/// `X509Svid::parse_from_der`, less the private key). Returns the leaf's SPIFFE ID.
pub fn check_svid_structure(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, AttestError> {
    structure(chain).map(|(id, _)| id)
}

/// The structure rules; returns the leaf's SPIFFE ID and notAfter.
fn structure(chain: &[CertificateDer<'_>]) -> Result<(SpiffeId, UnixSeconds), AttestError> {
    let (leaf, rest) = chain
        .split_first()
        .ok_or(AttestError::BadCertificate("no certificate presented"))?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(AttestError::BadCertificate("certificate chain is too long"));
    }
    let leaf = parse_cert(leaf)?;
    let id = check_leaf(&leaf)?;
    for der in rest {
        check_signing_cert(&parse_cert(der)?)?;
    }
    Ok((id, leaf.validity().not_after.timestamp()))
}

fn unix_time(now: UnixSeconds) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)))
}

fn path_error(e: &webpki::Error) -> AttestError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => AttestError::CertExpired,
        E::CertNotValidYet { .. } => AttestError::CertNotYetValid,
        E::UnknownIssuer => AttestError::UntrustedChain("unknown issuer"),
        E::InvalidSignatureForPublicKey
        | E::SignatureAlgorithmMismatch
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            AttestError::UntrustedChain("bad certificate signature")
        }
        E::CaUsedAsEndEntity => AttestError::UntrustedChain("CA certificate used as leaf"),
        E::EndEntityUsedAsCa => AttestError::UntrustedChain("leaf certificate used as CA"),
        E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            AttestError::UntrustedChain("extendedKeyUsage does not allow client auth")
        }
        E::NameConstraintViolation => AttestError::UntrustedChain("name constraint violation"),
        E::PathLenConstraintViolated => {
            AttestError::UntrustedChain("path length constraint violated")
        }
        E::UnsupportedCriticalExtension => {
            AttestError::UntrustedChain("unsupported critical extension")
        }
        E::MaximumPathBuildCallsExceeded
        | E::MaximumPathDepthExceeded
        | E::MaximumSignatureChecksExceeded => {
            AttestError::UntrustedChain("path building budget exceeded")
        }
        _ => AttestError::UntrustedChain("path validation failed"),
    }
}

/// Verifies X.509-SVID chains presented by clients against the bundle of the leaf's
/// trust domain.
pub struct X509SvidVerifier {
    bundles: Arc<dyn BundleSource>,
}

impl std::fmt::Debug for X509SvidVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509SvidVerifier").finish_non_exhaustive()
    }
}

impl X509SvidVerifier {
    pub fn new(bundles: Arc<dyn BundleSource>) -> Self {
        Self { bundles }
    }

    /// Verifies `chain` (leaf first, then intermediates, as sent in the TLS Certificate
    /// message) at `now`. The bundle is read from the `BundleSource` on every call, so
    /// a reloaded bundle applies to the next verification.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixSeconds,
    ) -> Result<VerifiedIdentity, AttestError> {
        let (id, not_after) = structure(chain)?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(AttestError::BadCertificate("no certificate presented"))?;
        let td = id.trust_domain();
        let bundle = self
            .bundles
            .bundle(&td)
            .ok_or_else(|| AttestError::UnknownTrustDomain(td.clone()))?;
        if bundle.x509_authorities().is_empty() {
            // An empty bundle means "revoked" (Trust Domain and Bundle §4.1.3).
            return Err(AttestError::NoX509Authorities(td));
        }
        // Authorities that rustls-webpki cannot use as anchors are skipped; the others
        // still serve (one odd root must not revoke a trust domain).
        let anchors: Vec<TrustAnchor<'_>> = bundle
            .x509_authorities()
            .iter()
            .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
            .collect();
        if anchors.is_empty() {
            return Err(AttestError::NoX509Authorities(td));
        }
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|_| AttestError::BadCertificate("certificate is not valid DER X.509"))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            unix_time(now),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| path_error(&e))?;
        // RFC 8705 §3.1: `x5t#S256` is the base64url SHA-256 of the leaf's DER.
        let thumbprint = b64url(&sha256(leaf.as_ref()));
        Ok(VerifiedIdentity::new(
            VerifierProof::new(),
            Principal::Spiffe(id),
            CredentialKind::X509Svid,
            not_after,
            Some(thumbprint),
        ))
    }
}

/// rustls client-certificate verifier for SPIFFE mTLS: client authentication is
/// *offered but optional* (a caller without a certificate can still present a bearer
/// credential), and a presented certificate must be a valid X.509-SVID of a configured
/// trust domain at the injected clock's time.
///
/// Bundles are read from the `BundleSource` per handshake, so a bundle swap applies to
/// new connections without rebuilding the `ServerConfig`. No root hints are sent: the
/// roots are chosen by the client's SPIFFE ID, not by issuer name.
pub struct SpiffeClientCertVerifier {
    verifier: X509SvidVerifier,
    clock: Arc<dyn Clock>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for SpiffeClientCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeClientCertVerifier")
            .finish_non_exhaustive()
    }
}

impl SpiffeClientCertVerifier {
    /// Handshake signatures are checked with the ring provider's algorithms.
    pub fn new(bundles: Arc<dyn BundleSource>, clock: Arc<dyn Clock>) -> Self {
        Self {
            verifier: X509SvidVerifier::new(bundles),
            clock,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// The chain verifier, for re-deriving the identity of an accepted connection's
    /// peer certificates.
    pub fn x509_verifier(&self) -> &X509SvidVerifier {
        &self.verifier
    }
}

fn tls_error(e: AttestError) -> rustls::Error {
    let ce = match e {
        AttestError::CertExpired => CertificateError::Expired,
        AttestError::CertNotYetValid => CertificateError::NotValidYet,
        AttestError::UntrustedChain("unknown issuer")
        | AttestError::UnknownTrustDomain(_)
        | AttestError::NoX509Authorities(_) => CertificateError::UnknownIssuer,
        AttestError::UntrustedChain("bad certificate signature") => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ClientCertVerifier for SpiffeClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _rustls_now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        match self.verifier.verify(&chain, self.clock.now()) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                tracing::debug!(reason = e.reason(), error = %e, "client certificate refused");
                Err(tls_error(e))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::{StaticBundles, TrustBundle, parse_x509_der};
    use crate::clock::ManualClock;
    use crate::domain::TrustDomain;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType, date_time_ymd,
    };

    /// 2030-01-01T12:00:00Z: inside every test leaf's default validity below.
    fn noon() -> UnixSeconds {
        date_time_ymd(2030, 1, 1).unix_timestamp() + 12 * 3600
    }

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca_params(name: &str, key_usages: Vec<KeyUsagePurpose>) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        p.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{name}").as_str().try_into().unwrap(),
        )];
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = key_usages;
        p
    }

    /// A self-signed root for `spiffe://<name>`, valid 1975–4096 (rcgen's default).
    fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(
            name,
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        );
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    fn intermediate(parent: &Ca, name: &str, key_usages: Vec<KeyUsagePurpose>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params(name, key_usages);
        // A name of its own, so path building does not mistake the root for its issuer.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} intermediate"));
        let der = params
            .signed_by(&key, &parent.issuer)
            .unwrap()
            .der()
            .clone();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    struct Leaf {
        der: CertificateDer<'static>,
        key: KeyPair,
        not_after: UnixSeconds,
    }

    fn leaf_params(uris: &[&str]) -> CertificateParams {
        let mut p = CertificateParams::new(vec!["workload.local".to_owned()]).unwrap();
        p.subject_alt_names
            .extend(uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())));
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        // Valid for one day from 2030-01-01T00:00:00Z.
        p.not_before = date_time_ymd(2030, 1, 1);
        p.not_after = date_time_ymd(2030, 1, 2);
        p
    }

    fn sign(params: &CertificateParams, ca: &Ca) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let der = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
        Leaf {
            der,
            key,
            not_after: params.not_after.unix_timestamp(),
        }
    }

    fn workload(ca: &Ca) -> Leaf {
        sign(&leaf_params(&["spiffe://example.org/workload"]), ca)
    }

    fn bundle(name: &str, cas: &[&Ca]) -> TrustBundle {
        let der: Vec<u8> = cas.iter().flat_map(|c| c.der.to_vec()).collect();
        parse_x509_der(&td(name), &der).unwrap()
    }

    fn verifier(bundles: Vec<TrustBundle>) -> X509SvidVerifier {
        X509SvidVerifier::new(Arc::new(StaticBundles::new(bundles)))
    }

    fn verify_err(v: &X509SvidVerifier, chain: &[CertificateDer<'_>]) -> AttestError {
        v.verify(chain, noon()).unwrap_err()
    }

    #[test]
    fn good_leaf_yields_the_identity_thumbprint_and_expiry() {
        let ca = root("example.org");
        let leaf = workload(&ca);
        let v = verifier(vec![bundle("example.org", &[&ca])]);
        let id = v.verify(std::slice::from_ref(&leaf.der), noon()).unwrap();
        assert_eq!(
            id.spiffe_id().map(SpiffeId::as_str),
            Some("spiffe://example.org/workload")
        );
        assert_eq!(id.kind(), CredentialKind::X509Svid);
        assert_eq!(id.expires_at(), leaf.not_after);
        assert_eq!(id.expires_at(), noon() + 12 * 3600);
        // RFC 8705 §3.1: base64url(SHA-256(DER)), 43 characters, no padding.
        let want = b64url(&sha256(leaf.der.as_ref()));
        assert_eq!(id.cert_thumbprint(), Some(want.as_str()));
        assert_eq!(want.len(), 43);
        assert_eq!(
            check_svid_structure(std::slice::from_ref(&leaf.der))
                .unwrap()
                .as_str(),
            "spiffe://example.org/workload"
        );
    }

    #[test]
    fn validity_is_checked_at_the_given_time() {
        let ca = root("example.org");
        let leaf = workload(&ca);
        let v = verifier(vec![bundle("example.org", &[&ca])]);
        let chain = std::slice::from_ref(&leaf.der);
        assert_eq!(
            v.verify(chain, leaf.not_after + 1).unwrap_err(),
            AttestError::CertExpired
        );
        let before = date_time_ymd(2030, 1, 1).unix_timestamp() - 1;
        assert_eq!(
            v.verify(chain, before).unwrap_err(),
            AttestError::CertNotYetValid
        );
        assert_eq!(AttestError::CertExpired.reason(), "cert_expired");
        // Structure alone has no clock.
        assert!(check_svid_structure(chain).is_ok());
    }

    #[test]
    fn svid_rules_refuse_bad_leaves() {
        let ca = root("example.org");
        let v = verifier(vec![bundle("example.org", &[&ca])]);
        let mut ca_leaf = leaf_params(&["spiffe://example.org/workload"]);
        ca_leaf.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut cert_sign = leaf_params(&["spiffe://example.org/workload"]);
        cert_sign.key_usages.push(KeyUsagePurpose::KeyCertSign);
        let mut crl_sign = leaf_params(&["spiffe://example.org/workload"]);
        crl_sign.key_usages.push(KeyUsagePurpose::CrlSign);
        let mut no_ds = leaf_params(&["spiffe://example.org/workload"]);
        no_ds.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        let mut no_ku = leaf_params(&["spiffe://example.org/workload"]);
        no_ku.key_usages = vec![];
        let cases: Vec<(&str, CertificateParams, &str)> = vec![
            ("CA=true leaf", ca_leaf, "leaf must not be a CA"),
            (
                "two URI SANs",
                leaf_params(&["spiffe://example.org/a", "https://example.org/b"]),
                "leaf must have exactly one URI SAN",
            ),
            ("no URI SAN", leaf_params(&[]), "leaf has no URI SAN"),
            (
                "root path",
                leaf_params(&["spiffe://example.org"]),
                "leaf SPIFFE ID has no path (trust domain ID)",
            ),
            (
                "not a SPIFFE ID",
                leaf_params(&["spiffe://Example.org/a"]),
                "leaf URI SAN is not a valid SPIFFE ID",
            ),
            ("keyCertSign", cert_sign, "leaf keyUsage has keyCertSign"),
            ("cRLSign", crl_sign, "leaf keyUsage has cRLSign"),
            (
                "no digitalSignature",
                no_ds,
                "leaf keyUsage lacks digitalSignature",
            ),
            ("no keyUsage", no_ku, "leaf has no keyUsage"),
        ];
        for (name, params, why) in cases {
            let leaf = sign(&params, &ca);
            let chain = std::slice::from_ref(&leaf.der);
            assert_eq!(
                verify_err(&v, chain),
                AttestError::BadCertificate(why),
                "{name}"
            );
            assert_eq!(
                check_svid_structure(chain).unwrap_err(),
                AttestError::BadCertificate(why),
                "{name}"
            );
        }
        assert_eq!(
            check_svid_structure(&[]).unwrap_err(),
            AttestError::BadCertificate("no certificate presented")
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(
            check_svid_structure(&[garbage]).unwrap_err().reason(),
            "bad_certificate"
        );
    }

    #[test]
    fn roots_are_chosen_by_the_leaf_trust_domain_only() {
        // The other trust domain's CA issues a leaf claiming example.org; that CA is
        // trusted, but only for other.org.
        let ours = root("example.org");
        let theirs = root("other.org");
        let forged = workload(&theirs);
        let v = verifier(vec![
            bundle("example.org", &[&ours]),
            bundle("other.org", &[&theirs]),
        ]);
        assert_eq!(
            verify_err(&v, std::slice::from_ref(&forged.der)),
            AttestError::UntrustedChain("unknown issuer")
        );
        // The same CA in example.org's bundle would verify it: the refusal is by domain.
        let v = verifier(vec![bundle("example.org", &[&ours, &theirs])]);
        assert!(v.verify(std::slice::from_ref(&forged.der), noon()).is_ok());
    }

    #[test]
    fn intermediates_must_be_signing_certificates() {
        let ca = root("example.org");
        let good = intermediate(
            &ca,
            "example.org",
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        );
        let leaf = workload(&good);
        let v = verifier(vec![bundle("example.org", &[&ca])]);
        let chain = [leaf.der.clone(), good.der.clone()];
        assert!(v.verify(&chain, noon()).is_ok());
        // Without the intermediate there is no path.
        assert_eq!(
            verify_err(&v, std::slice::from_ref(&leaf.der)),
            AttestError::UntrustedChain("unknown issuer")
        );

        // rustls-webpki alone would accept this chain; the X509-SVID rules do not.
        let weak = intermediate(&ca, "example.org", vec![KeyUsagePurpose::CrlSign]);
        let leaf = workload(&weak);
        let chain = [leaf.der.clone(), weak.der.clone()];
        let anchors = [webpki::anchor_from_trusted_cert(&ca.der).unwrap()];
        let path_only = webpki::EndEntityCert::try_from(&leaf.der)
            .unwrap()
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &chain[1..],
                unix_time(noon()),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .is_ok();
        assert!(path_only, "rustls-webpki now checks keyCertSign itself");
        let want = AttestError::BadCertificate("intermediate certificate lacks keyCertSign");
        assert_eq!(verify_err(&v, &chain), want);
        assert_eq!(check_svid_structure(&chain).unwrap_err(), want);
    }

    #[test]
    fn missing_or_empty_bundle_rejects() {
        let ca = root("example.org");
        let leaf = workload(&ca);
        let chain = std::slice::from_ref(&leaf.der);
        let v = verifier(vec![bundle("other.org", &[&ca])]);
        assert_eq!(
            verify_err(&v, chain),
            AttestError::UnknownTrustDomain(td("example.org"))
        );
        let v = verifier(vec![bundle("example.org", &[])]);
        assert_eq!(
            verify_err(&v, chain),
            AttestError::NoX509Authorities(td("example.org"))
        );
        assert_eq!(
            AttestError::NoX509Authorities(td("example.org")).reason(),
            "no_x509_authorities"
        );
    }

    #[test]
    fn error_messages_never_carry_certificate_bytes() {
        let e = AttestError::BadCertificate("leaf has no URI SAN").to_string();
        assert_eq!(e, "bad certificate: leaf has no URI SAN");
        let e = AttestError::UntrustedChain("unknown issuer").to_string();
        assert_eq!(e, "certificate chain is not trusted: unknown issuer");
    }

    // ---- a real rustls handshake with the verifier ------------------------------------

    mod handshake {
        use super::*;
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        use rustls::{ClientConfig, RootCertStore, ServerConfig};
        use std::collections::HashMap;
        use std::sync::Mutex;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::{TlsAcceptor, TlsConnector};

        /// A bundle source a test can swap, like `FileBundles::reload`.
        #[derive(Default)]
        struct Swappable(Mutex<HashMap<TrustDomain, Arc<TrustBundle>>>);

        impl BundleSource for Swappable {
            fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
                self.0.lock().unwrap().get(td).cloned()
            }
        }

        impl Swappable {
            fn set(&self, b: TrustBundle) {
                self.0
                    .lock()
                    .unwrap()
                    .insert(b.trust_domain.clone(), Arc::new(b));
            }
        }

        fn key_der(k: &KeyPair) -> PrivateKeyDer<'static> {
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()))
        }

        struct Setup {
            acceptor: TlsAcceptor,
            server_ca: Ca,
        }

        fn server(bundles: Arc<dyn BundleSource>, clock: Arc<dyn Clock>) -> Setup {
            // The server's own certificate: rcgen's default validity (1975–4096), since
            // the client checks it against the wall clock.
            let server_ca = root("server.test");
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            let cert = params.signed_by(&key, &server_ca.issuer).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .unwrap()
                .with_client_cert_verifier(Arc::new(SpiffeClientCertVerifier::new(bundles, clock)))
                .with_single_cert(vec![cert.der().clone()], key_der(&key))
                .unwrap();
            Setup {
                acceptor: TlsAcceptor::from(Arc::new(config)),
                server_ca,
            }
        }

        fn client(
            server_ca: &Ca,
            version: &'static rustls::SupportedProtocolVersion,
            cert: Option<(&[CertificateDer<'static>], &KeyPair)>,
        ) -> TlsConnector {
            let mut roots = RootCertStore::empty();
            roots.add(server_ca.der.clone()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots);
            let config = match cert {
                Some((chain, key)) => builder
                    .with_client_auth_cert(chain.to_vec(), key_der(key))
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            TlsConnector::from(Arc::new(config))
        }

        /// Runs one handshake and a ping over a duplex pipe. Returns the server's view:
        /// `Ok(peer certificates)` or the server-side error.
        async fn connect(
            acceptor: &TlsAcceptor,
            connector: &TlsConnector,
        ) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
            let (c, s) = tokio::io::duplex(64 * 1024);
            let server = async {
                let mut tls = acceptor.accept(s).await.map_err(|e| e.to_string())?;
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|p| p.iter().map(|c| c.clone().into_owned()).collect());
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
                tls.shutdown().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(peer)
            };
            let client = async {
                let name = ServerName::try_from("localhost").unwrap();
                let mut tls = connector.connect(name, c).await.ok()?;
                tls.write_all(b"ping").await.ok()?;
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.ok()?;
                Some(buf)
            };
            let (server, client) = tokio::join!(server, client);
            if server.is_ok() {
                assert_eq!(client, Some(*b"pong"), "client did not complete");
            }
            server
        }

        #[tokio::test]
        async fn mtls_with_spiffe_client_certificates() {
            let ca = root("example.org");
            let bundles = Arc::new(Swappable::default());
            bundles.set(bundle("example.org", &[&ca]));
            // The wall clock is far from 2030: acceptance proves the injected clock
            // is what validity is checked against.
            let clock = ManualClock::new(noon());
            let Setup {
                acceptor,
                server_ca,
            } = server(bundles.clone(), clock.clone());
            let good = workload(&ca);

            for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
                // A good SVID: the handshake completes and the server sees the chain.
                let chain = [good.der.clone()];
                let conn = client(&server_ca, version, Some((&chain, &good.key)));
                let peer = connect(&acceptor, &conn).await.unwrap();
                assert_eq!(peer, Some(vec![good.der.clone()]), "{version:?}");
                let id = SpiffeClientCertVerifier::new(bundles.clone(), clock.clone())
                    .x509_verifier()
                    .verify(&peer.unwrap(), clock.now())
                    .unwrap();
                assert_eq!(id.subject(), "spiffe://example.org/workload");

                // No client certificate: optional client auth, still completes.
                let conn = client(&server_ca, version, None);
                assert_eq!(connect(&acceptor, &conn).await.unwrap(), None);

                // A CA=true leaf fails the handshake.
                let mut params = leaf_params(&["spiffe://example.org/workload"]);
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                let bad = sign(&params, &ca);
                let chain = [bad.der.clone()];
                let conn = client(&server_ca, version, Some((&chain, &bad.key)));
                let err = connect(&acceptor, &conn).await.unwrap_err();
                assert!(err.contains("leaf must not be a CA"), "{err}");
            }

            // Expired by the injected clock.
            clock.set(good.not_after + 1);
            let chain = [good.der.clone()];
            let conn = client(
                &server_ca,
                &rustls::version::TLS13,
                Some((&chain, &good.key)),
            );
            let err = connect(&acceptor, &conn).await.unwrap_err();
            assert!(err.to_lowercase().contains("expired"), "{err}");
            clock.set(noon());

            // Another trust domain's CA: untrusted until its bundle appears, then
            // trusted by the same ServerConfig (bundles are read per handshake).
            let other = root("other.org");
            let mut params = leaf_params(&["spiffe://other.org/workload"]);
            params.not_after = date_time_ymd(2030, 1, 2);
            let stranger = sign(&params, &other);
            let chain = [stranger.der.clone()];
            let conn = client(
                &server_ca,
                &rustls::version::TLS13,
                Some((&chain, &stranger.key)),
            );
            assert!(connect(&acceptor, &conn).await.is_err());
            bundles.set(bundle("other.org", &[&other]));
            assert!(connect(&acceptor, &conn).await.unwrap().is_some());
        }

        #[test]
        fn verifier_offers_optional_client_auth_without_hints() {
            let v = SpiffeClientCertVerifier::new(
                Arc::new(StaticBundles::default()),
                ManualClock::new(noon()),
            );
            assert!(v.offer_client_auth());
            assert!(!v.client_auth_mandatory());
            assert!(v.root_hint_subjects().is_empty());
            assert!(!v.supported_verify_schemes().is_empty());
        }
    }
}
