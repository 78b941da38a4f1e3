//! The proof type of attestation: a `VerifiedIdentity` exists only after a verifier in
//! `attest/` checked a credential. The minter and the policy accept nothing else.

use super::spiffe_id::SpiffeId;
use crate::clock::UnixSeconds;

/// How the caller proved its identity; recorded as `issuer_kind` in audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    JwtSvid,
    X509Svid,
    Oidc,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JwtSvid => "jwt-svid",
            Self::X509Svid => "x509-svid",
            Self::Oidc => "oidc",
        }
    }
}

/// The principal a verified credential names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Spiffe(SpiffeId),
    /// An OIDC subject: the issuer URL and its `sub`, plus the verified claims so policy
    /// can match on them.
    Oidc {
        issuer: String,
        subject: String,
        claims: serde_json::Map<String, serde_json::Value>,
    },
}

#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    principal: Principal,
    kind: CredentialKind,
    /// When the presented credential expires; issued tokens never outlive it.
    expires_at: UnixSeconds,
    /// SHA-256 of the client certificate, for certificate-bound tokens (RFC 8705 §3).
    cert_thumbprint: Option<String>,
}

/// Seal: only code that can name this type can build a `VerifiedIdentity`. It is
/// `pub(crate)` and used only by `attest/` (enforced by tests/architecture.rs).
pub(crate) struct VerifierProof(());

impl VerifierProof {
    pub(crate) fn new() -> Self {
        Self(())
    }
}

impl VerifiedIdentity {
    pub(crate) fn new(
        _proof: VerifierProof,
        principal: Principal,
        kind: CredentialKind,
        expires_at: UnixSeconds,
        cert_thumbprint: Option<String>,
    ) -> Self {
        Self {
            principal,
            kind,
            expires_at,
            cert_thumbprint,
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }
    pub fn kind(&self) -> CredentialKind {
        self.kind
    }
    pub fn expires_at(&self) -> UnixSeconds {
        self.expires_at
    }
    pub fn cert_thumbprint(&self) -> Option<&str> {
        self.cert_thumbprint.as_deref()
    }
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        match &self.principal {
            Principal::Spiffe(id) => Some(id),
            Principal::Oidc { .. } => None,
        }
    }
    /// The `sub` of tokens issued to this identity (contract §2): the SPIFFE ID, or
    /// `<iss>#<sub>` for OIDC subjects.
    pub fn subject(&self) -> String {
        match &self.principal {
            Principal::Spiffe(id) => id.to_string(),
            Principal::Oidc {
                issuer, subject, ..
            } => format!("{issuer}#{subject}"),
        }
    }
}
