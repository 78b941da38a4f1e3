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

/// Longest chain we look at (leaf + intermediates). SPIRE chains are 1–3 certificates;
/// rustls-webpki has its own path-length budget on top of this.
const MAX_CHAIN_LEN: usize = 8;

fn parse_cert<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, AttestError> {
    match X509Certificate::from_der(der.as_ref()) {
        // A DER certificate followed by stray bytes is not a certificate (corpus
        // `trailing-garbage`): never silently truncate.
        Ok((rest, cert)) if rest.is_empty() => Ok(cert),
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
    let (leaf, rest) = chain
        .split_first()
        .ok_or(AttestError::BadCertificate("no certificate presented"))?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(AttestError::BadCertificate("certificate chain is too long"));
    }
    let id = check_leaf(&parse_cert(leaf)?)?;
    for der in rest {
        check_signing_cert(&parse_cert(der)?)?;
    }
    Ok(id)
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
        let id = check_svid_structure(chain)?;
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
        let expires_at = parse_cert(leaf)?.validity().not_after.timestamp();
        // RFC 8705 §3.1: `x5t#S256` is the base64url SHA-256 of the leaf's DER.
        let thumbprint = b64url(&sha256(leaf.as_ref()));
        Ok(VerifiedIdentity::new(
            VerifierProof::new(),
            Principal::Spiffe(id),
            CredentialKind::X509Svid,
            expires_at,
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
