//! Minting and checking our own access tokens (RFC 9068 JWT profile) and the key ring.
//! Imports only `domain`, `clock` and `jose`.

pub mod keys;

use crate::clock::UnixSeconds;
use crate::domain::{Audience, ScopeSet, SpiffeId, VerifiedIdentity};
use crate::jose::{self, UnverifiedJws};
use keys::KeyRing;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// RFC 9068 §2.1: access tokens carry `typ: at+jwt`.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token is not an access token of this issuer")]
    NotOurs,
    #[error("token was signed by an unknown or revoked key")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

/// Claims of an issued access token (contract §2 table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub iat: UnixSeconds,
    pub nbf: UnixSeconds,
    pub exp: UnixSeconds,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// RFC 8693 §4.1 `act`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
}

/// RFC 8705 §3.1 `cnf` with the certificate thumbprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

pub struct MintRequest<'a> {
    pub identity: &'a VerifiedIdentity,
    pub audience: &'a Audience,
    pub scopes: &'a ScopeSet,
    pub ttl: u64,
    pub actor: Option<&'a SpiffeId>,
    pub now: UnixSeconds,
    /// The policy rule's mapped subject (`grant.subject`, OIDC only); `None` means the
    /// identity's own subject (contract §2 `sub`).
    pub subject: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub kid: String,
    pub claims: AccessClaims,
}

/// A verified access token and the key that signed it.
#[derive(Debug, Clone)]
pub struct CheckedToken {
    pub kid: String,
    pub claims: AccessClaims,
}

#[derive(Debug)]
pub struct Minter {
    issuer: String,
    keys: Arc<KeyRing>,
}

impl Minter {
    pub fn new(issuer: String, keys: Arc<KeyRing>) -> Self {
        Self { issuer, keys }
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs a token for a verified identity. Only a `VerifiedIdentity` gets a token.
    pub fn mint(&self, req: &MintRequest<'_>) -> Result<Minted, MintError> {
        let jti =
            jose::b64url(&jose::random_bytes::<16>().map_err(|e| MintError::Sign(e.to_string()))?);
        let sub = req
            .subject
            .map_or_else(|| req.identity.subject(), str::to_owned);
        let scope = (!req.scopes.is_empty()).then(|| req.scopes.joined());
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            client_id: sub.clone(),
            sub,
            aud: req.audience.to_string(),
            scope,
            iat: req.now,
            nbf: req.now,
            exp: req.now.saturating_add(req.ttl as i64),
            jti,
            act: req.actor.map(|a| Actor { sub: a.to_string() }),
            cnf: req.identity.cert_thumbprint().map(|t| Confirmation {
                x5t_s256: t.to_owned(),
            }),
        };
        let key = self.keys.current();
        let token = key
            .key
            .sign_compact(ACCESS_TOKEN_TYP, &claims)
            .map_err(|e| MintError::Sign(e.to_string()))?;
        Ok(Minted {
            token,
            kid: key.key.kid().to_owned(),
            claims,
        })
    }

    /// Checks one of our tokens: structure, `typ`, a trusted `kid`, signature, issuer and
    /// time window. Revocation is the caller's next step.
    pub fn check(
        &self,
        unverified_token: &str,
        now: UnixSeconds,
        leeway: u64,
    ) -> Result<CheckedToken, MintError> {
        let jws = UnverifiedJws::parse(unverified_token)
            .map_err(|e| MintError::Malformed(e.to_string()))?;
        if jws.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(MintError::NotOurs);
        }
        let kid = jws.kid.clone().ok_or(MintError::NotOurs)?;
        let key = self
            .keys
            .find_or_refresh(&kid, now)
            .ok_or(MintError::UnknownKey)?;
        let claims = jws
            .verify(&key.verifier)
            .map_err(|_| MintError::BadSignature)?;
        let claims: AccessClaims = serde_json::from_value(serde_json::Value::Object(claims))
            .map_err(|e| MintError::Malformed(e.to_string()))?;
        if claims.iss != self.issuer {
            return Err(MintError::NotOurs);
        }
        if now >= claims.exp {
            return Err(MintError::Expired);
        }
        if claims.nbf > now.saturating_add(leeway as i64) {
            return Err(MintError::NotYetValid);
        }
        Ok(CheckedToken { kid, claims })
    }
}
