//! `POST /token`: RFC 8693 token exchange, and `client_credentials` with a JWT-SVID
//! client assertion. Path: parse → attest → rate limit → quarantine → policy → mint →
//! inventory → audit.

use super::limiter::Verdict;
use super::{CallerCredentials, Params, RequestContext, Service, ServiceError};
use crate::attest::OneTimeUse;
use crate::audit::AuditEvent;
use crate::domain::{Audience, ScopeSet, SpiffeId, VerifiedIdentity};
use crate::mint::MintRequest;
use crate::policy::{AccessRequest, Decision, Deny};
use crate::revocation::IssuedToken;
use serde::Serialize;
use std::sync::atomic::Ordering;

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// RFC 8693 §2.2.1 response.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub issued_token_type: &'static str,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The request after parsing: typed, capped, nothing verified yet.
struct ParsedRequest<'a> {
    unverified_subject_token: Option<&'a str>,
    unverified_actor_token: Option<&'a str>,
    audience: Audience,
    scopes: ScopeSet,
}

fn parse_request<'a>(p: &'a Params) -> Result<ParsedRequest<'a>, ServiceError> {
    let grant_type = p.require("grant_type")?;
    let (unverified_subject_token, unverified_actor_token) = match grant_type {
        GRANT_TOKEN_EXCHANGE => {
            let token = p.require("subject_token")?;
            match p.require("subject_token_type")? {
                TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN => {}
                _ => {
                    return Err(ServiceError::InvalidRequest(
                        "unsupported subject_token_type".into(),
                    ));
                }
            }
            let actor = match (p.get("actor_token"), p.get("actor_token_type")) {
                (Some(t), Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN)) => Some(t),
                (Some(_), Some(_)) => {
                    return Err(ServiceError::InvalidRequest(
                        "unsupported actor_token_type".into(),
                    ));
                }
                // RFC 8693 §2.1: actor_token_type is required with actor_token, and only then.
                (Some(_), None) => {
                    return Err(ServiceError::InvalidRequest(
                        "missing parameter actor_token_type".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(ServiceError::InvalidRequest(
                        "actor_token_type without actor_token".into(),
                    ));
                }
                (None, None) => None,
            };
            (Some(token), actor)
        }
        GRANT_CLIENT_CREDENTIALS => (None, None),
        _ => return Err(ServiceError::UnsupportedGrantType),
    };
    if let Some(t) = p.get("requested_token_type")
        && t != TOKEN_TYPE_ACCESS_TOKEN
        && t != TOKEN_TYPE_JWT
    {
        return Err(ServiceError::InvalidRequest(
            "unsupported requested_token_type".into(),
        ));
    }
    let target = match (p.get("audience"), p.get("resource")) {
        (Some(a), None) | (None, Some(a)) => a,
        (Some(_), Some(_)) => {
            return Err(ServiceError::InvalidRequest(
                "give exactly one of audience and resource".into(),
            ));
        }
        (None, None) => {
            return Err(ServiceError::InvalidRequest(
                "missing parameter audience".into(),
            ));
        }
    };
    let audience =
        Audience::parse(target).map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
    let scopes = match p.get("scope") {
        Some(s) => ScopeSet::parse(s).map_err(|e| ServiceError::InvalidScope(e.to_string()))?,
        None => ScopeSet::default(),
    };
    Ok(ParsedRequest {
        unverified_subject_token,
        unverified_actor_token,
        audience,
        scopes,
    })
}

/// The `/token` parameter checks alone (grant and token types, audience, scope), for
/// fuzz/ and tests/properties.rs; `exchange` runs them first on every request.
pub fn check_token_request(p: &Params) -> Result<(), ServiceError> {
    parse_request(p).map(|_| ())
}

impl Service {
    /// Quarantine (`block_new`). If the store is down, issuance continues (contract §6).
    async fn check_quarantine(&self, subject: &str, now: i64) -> Result<(), ServiceError> {
        match self
            .store_call(
                "blocked_until",
                self.revocations.blocked_until(subject, now),
            )
            .await
        {
            Ok(Some(_)) => Err(ServiceError::InvalidGrant("subject is quarantined".into())),
            Ok(None) => Ok(()),
            Err(e) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "quarantine check skipped: store unavailable");
                Ok(())
            }
        }
    }

    pub async fn exchange(
        &self,
        ctx: &RequestContext,
        params: &Params,
        creds: &CallerCredentials,
    ) -> Result<TokenResponse, ServiceError> {
        let mut ev = AuditEvent::begin("token.denied", self.now());
        let result = self.exchange_inner(&mut ev, params, creds).await;
        if result.is_ok() {
            ev.event = "token.issued";
        }
        self.finish(ctx, ev, result)
    }

    async fn exchange_inner(
        &self,
        ev: &mut AuditEvent,
        params: &Params,
        creds: &CallerCredentials,
    ) -> Result<TokenResponse, ServiceError> {
        let now = self.now();
        let req = parse_request(params)?;
        ev.audience = Some(req.audience.to_string());
        let (identity, one_time): (VerifiedIdentity, Option<OneTimeUse>) =
            match req.unverified_subject_token {
                Some(token) => {
                    ev.credential_sha256 = Some(super::sha256_hex(token.as_bytes()));
                    let verified = self.verified_subject_token(token, now).await?;
                    (verified.identity, verified.one_time)
                }
                None => {
                    // client_credentials: the client authentication is the identity — a
                    // JWT-SVID assertion, else the X.509-SVID of the TLS connection (RFC 8705
                    // tls_client_auth; the token is then certificate-bound).
                    ev.credential_sha256 = creds.client_credential_sha256();
                    match self
                        .assertion_identity(creds)
                        .or_else(|| self.peer_identity(creds))
                    {
                        Some(identity) => (identity?, None),
                        None => {
                            return Err(ServiceError::InvalidClient(
                                "client_credentials needs a client credential".into(),
                            ));
                        }
                    }
                }
            };
        let subject = identity.subject();
        ev.subject = Some(subject.clone());
        ev.issuer_kind = Some(identity.kind().as_str());
        let actor = match req.unverified_actor_token {
            Some(t) => Some(
                self.jwt_svids
                    .verify(t, now)
                    .map_err(|e| ServiceError::InvalidGrant(format!("actor token: {e}")))?,
            ),
            None => None,
        };
        let actor_id: Option<&SpiffeId> = actor.as_ref().and_then(VerifiedIdentity::spiffe_id);

        if let Some(limiter) = &self.limiter {
            let refused = match limiter.check(&subject).await {
                Verdict::Allowed => None,
                Verdict::Refused(r) => Some(r),
                Verdict::LocalFallback(r) => {
                    // Fail open to this replica's own limit: issuance goes on while the
                    // store is down (contract §6), and is still limited per replica.
                    self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .rate_limit_fallbacks
                        .fetch_add(1, Ordering::Relaxed);
                    r
                }
            };
            if let Some(r) = refused {
                self.counters
                    .rate_limited_per_identity
                    .fetch_add(1, Ordering::Relaxed);
                ev.reason = Some("rate_limited: per_identity".to_owned());
                return Err(ServiceError::SlowDown {
                    retry_after: r.retry_after_secs,
                });
            }
        }
        let policy = self.policy();
        let access = AccessRequest {
            audience: &req.audience,
            scopes: &req.scopes,
            actor: actor_id,
        };
        let grant = match policy.policy.decide(identity.principal(), &access) {
            Decision::Grant(g) => g,
            Decision::Deny(d) => {
                ev.reason = Some(d.reason().to_owned());
                return Err(match d {
                    Deny::NoRule => ServiceError::InvalidTarget,
                    Deny::ScopeNotAllowed { rule_id } => {
                        ev.rule = Some(rule_id);
                        ServiceError::InvalidScope("a requested scope is not allowed".into())
                    }
                    Deny::ActorNotAllowed { rule_id } => {
                        ev.rule = Some(rule_id);
                        ServiceError::InvalidGrant("the actor may not act for this subject".into())
                    }
                });
            }
        };
        ev.rule = Some(grant.rule_id.clone());
        // The issued token's subject: the rule's mapping (OIDC `grant.subject`) or the
        // identity's own. Quarantine applies to both names of the caller.
        let token_subject = grant.subject.as_deref().unwrap_or(&subject);
        if token_subject != subject {
            ev.subject = Some(token_subject.to_owned());
            self.check_quarantine(&subject, now).await?;
        }
        self.check_quarantine(token_subject, now).await?;

        // Lifetime = min(rule or default, global max, remaining life of every credential).
        let s = &self.settings;
        let mut ttl = grant.max_ttl.unwrap_or(s.default_ttl).min(s.max_ttl) as i64;
        ttl = ttl.min(identity.expires_at() - now);
        if let Some(a) = &actor {
            ttl = ttl.min(a.expires_at() - now);
        }
        if ttl <= 0 {
            return Err(ServiceError::InvalidGrant(
                "subject token has expired".into(),
            ));
        }
        // One-time subject tokens (`one_time` issuers) are spent only once everything else
        // allowed the exchange, so a refused request does not burn the caller's token.
        if let Some(once) = &one_time {
            match self.replay.first_use(&once.key, once.until, now).await {
                Ok(true) => {}
                Ok(false) => {
                    ev.reason = Some("replayed".to_owned());
                    return Err(ServiceError::InvalidGrant(
                        "this subject token was already exchanged".into(),
                    ));
                }
                Err(e) => {
                    // Fail closed: without the store we cannot tell a replay from a first use.
                    self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "one-time token check failed: store unavailable");
                    return Err(ServiceError::TemporarilyUnavailable);
                }
            }
        }
        let minted = self
            .minter
            .mint(&MintRequest {
                identity: &identity,
                audience: &grant.audience,
                scopes: &grant.scopes,
                ttl: ttl as u64,
                actor: grant.actor.as_ref(),
                now,
                subject: grant.subject.as_deref(),
            })
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let c = &minted.claims;
        ev.jti = Some(c.jti.clone());
        ev.scope = c.scope.clone();
        let entry = IssuedToken {
            jti: c.jti.clone(),
            sub: c.sub.clone(),
            aud: c.aud.clone(),
            scope: c.scope.clone(),
            kid: minted.kid.clone(),
            iat: c.iat,
            exp: c.exp,
        };
        // The inventory is informational: a failed write is logged and counted, not fatal.
        if let Err(e) = self
            .store_call("record_issued", self.inventory.record_issued(&entry))
            .await
        {
            self.counters
                .inventory_write_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, jti = %c.jti, "token inventory write failed");
        }
        Ok(TokenResponse {
            issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
            token_type: "Bearer",
            expires_in: ttl as u64,
            scope: c.scope.clone(),
            access_token: minted.token,
        })
    }
}
