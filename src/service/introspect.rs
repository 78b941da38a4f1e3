//! `POST /introspect` (RFC 7662) and `POST /revoke` (RFC 7009).

use super::{
    CallerCredentials, Params, RequestContext, Service, ServiceError, allowed, matches_sha256,
    verify_static_client,
};
use crate::audit::AuditEvent;
use crate::mint::{Actor, Confirmation};
use crate::revocation::{NewRevocation, RevocationKind, TokenRef};
use serde::Serialize;
use std::sync::atomic::Ordering;

/// RFC 7662 §2.2. An inactive answer is `{"active":false}` and nothing more.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IntrospectionResponse {
    pub active: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub details: Option<ActiveDetails>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActiveDetails {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub token_type: &'static str,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// Who is calling `/introspect` or `/revoke`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    Workload(String),
    StaticClient(String),
    Admin,
}

impl Caller {
    fn name(&self) -> String {
        match self {
            Self::Workload(id) => id.clone(),
            Self::StaticClient(id) => format!("client:{id}"),
            Self::Admin => "admin-token".into(),
        }
    }
}

impl Service {
    /// Authenticates a caller of the introspection endpoint (contract §2).
    async fn introspection_caller(
        &self,
        creds: &CallerCredentials,
    ) -> Result<Caller, ServiceError> {
        // Explicit credentials first (a JWT-SVID assertion, HTTP Basic), then the
        // connection's X.509-SVID.
        if let Some((id, secret)) = creds.basic.as_ref().filter(|_| creds.assertion.is_none()) {
            // The same id and secret passed argon2id moments ago: not again (only
            // successes are remembered, so a wrong secret always pays argon2id below).
            if self.static_client_recently_verified(id, secret) {
                return Ok(Caller::StaticClient(id.clone()));
            }
            self.counters
                .argon2id_verifications
                .fetch_add(1, Ordering::Relaxed);
            // argon2id is deliberately slow (tens of ms): keep it off the async workers.
            let (clients, id2, secret2) = (
                self.settings.introspection_clients.clone(),
                id.clone(),
                zeroize::Zeroizing::new(secret.clone()),
            );
            let ok =
                tokio::task::spawn_blocking(move || verify_static_client(&clients, &id2, &secret2))
                    .await
                    .unwrap_or(false);
            if ok {
                self.remember_static_client(id, secret);
                return Ok(Caller::StaticClient(id.clone()));
            }
            return Err(ServiceError::InvalidClient(
                "client authentication failed".into(),
            ));
        }
        match self.workload_caller(creds) {
            Some(id) => {
                let id = id?;
                if !allowed(&self.settings.introspection_allowed, &id) {
                    return Err(ServiceError::Forbidden);
                }
                Ok(Caller::Workload(id.to_string()))
            }
            None => Err(ServiceError::Unauthenticated),
        }
    }

    pub async fn introspect(
        &self,
        ctx: &RequestContext,
        params: &Params,
        creds: &CallerCredentials,
    ) -> Result<IntrospectionResponse, ServiceError> {
        let mut ev = AuditEvent::begin("token.introspected", self.now());
        let result = match self.failed_auth_gate(ctx, &mut ev) {
            Ok(()) => self.introspect_inner(&mut ev, params, creds).await,
            Err(e) => Err(e),
        };
        // Only the caller authentication answers invalid_client here.
        self.note_auth_result(ctx, &result);
        self.finish(ctx, ev, result)
    }

    async fn introspect_inner(
        &self,
        ev: &mut AuditEvent,
        params: &Params,
        creds: &CallerCredentials,
    ) -> Result<IntrospectionResponse, ServiceError> {
        let caller = self.introspection_caller(creds).await?;
        ev.caller = Some(caller.name());
        let token = params.require("token")?;
        let now = self.now();
        // Signature, issuer and time window, from the verified-token cache when this
        // token verified before; the revocation check below runs on every request.
        let checked = match self.checked_token(token, now) {
            Ok(c) => c,
            Err(e) => {
                ev.reason = Some(format!("inactive: {e}"));
                ev.active = Some(false);
                return Ok(IntrospectionResponse::default());
            }
        };
        let c = checked.claims;
        // Only a token whose signature verified names its jti and subject here.
        ev.jti = Some(c.jti.clone());
        ev.subject = Some(c.sub.clone());
        ev.audience = Some(c.aud.clone());
        let token_ref = TokenRef {
            jti: &c.jti,
            subject: &c.sub,
            kid: &checked.kid,
            iat: c.iat,
        };
        // Fail closed: an unchecked token is never reported active (contract §6).
        match self
            .store_call("is_revoked", self.revocations.is_revoked(&token_ref, now))
            .await
        {
            Ok(true) => {
                ev.reason = Some("inactive: revoked".into());
                ev.active = Some(false);
                Ok(IntrospectionResponse::default())
            }
            Ok(false) => {
                ev.active = Some(true);
                Ok(IntrospectionResponse {
                    active: true,
                    details: Some(ActiveDetails {
                        iss: c.iss,
                        sub: c.sub,
                        aud: c.aud,
                        client_id: c.client_id,
                        scope: c.scope,
                        token_type: "Bearer",
                        exp: c.exp,
                        iat: c.iat,
                        nbf: c.nbf,
                        jti: c.jti,
                        act: c.act,
                        cnf: c.cnf,
                    }),
                })
            }
            Err(e) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "introspection failed closed: store unavailable");
                Err(ServiceError::TemporarilyUnavailable)
            }
        }
    }

    /// RFC 7009. The caller is the token's own subject (JWT-SVID assertion) or an admin.
    pub async fn revoke_token(
        &self,
        ctx: &RequestContext,
        params: &Params,
        creds: &CallerCredentials,
    ) -> Result<(), ServiceError> {
        let mut ev = AuditEvent::begin("token.revoked", self.now());
        let result = match self.failed_auth_gate(ctx, &mut ev) {
            Ok(()) => self.revoke_inner(&mut ev, params, creds).await,
            Err(e) => Err(e),
        };
        // Only the caller authentication answers invalid_client here.
        self.note_auth_result(ctx, &result);
        self.finish(ctx, ev, result)
    }

    async fn revoke_inner(
        &self,
        ev: &mut AuditEvent,
        params: &Params,
        creds: &CallerCredentials,
    ) -> Result<(), ServiceError> {
        // The admin token, or the token's own subject (JWT-SVID assertion or mTLS).
        let caller = if let Some(bearer) = &creds.bearer {
            match &self.policy().admin_token_sha256 {
                Some(h) if matches_sha256(bearer, h) => Caller::Admin,
                _ => {
                    return Err(ServiceError::InvalidClient(
                        "client authentication failed".into(),
                    ));
                }
            }
        } else if let Some(result) = self.workload_caller(creds) {
            Caller::Workload(result?.to_string())
        } else {
            return Err(ServiceError::Unauthenticated);
        };
        ev.caller = Some(caller.name());
        let token = params.require("token")?;
        let now = self.now();
        // RFC 7009 §2.2: an invalid or expired token needs no revocation; answer 200.
        let Ok(checked) = self.minter.check(token, now, self.settings.leeway) else {
            ev.reason = Some("token not valid; nothing to revoke".into());
            return Ok(());
        };
        let c = checked.claims;
        ev.jti = Some(c.jti.clone());
        ev.subject = Some(c.sub.clone());
        ev.revocation_kind = Some(RevocationKind::Jti.as_str());
        if let Caller::Workload(id) = &caller
            && *id != c.sub
        {
            return Err(ServiceError::UnauthorizedClient(
                "only the token's subject or an admin may revoke it".into(),
            ));
        }
        let stored = self.revocations.revoke(NewRevocation {
            kind: RevocationKind::Jti,
            value: c.jti.clone(),
            reason: "revoked via /revoke (RFC 7009)".into(),
            actor: caller.name(),
            created_at: now,
            expires_at: c.exp.saturating_add(self.settings.leeway as i64),
            block_until: None,
        });
        let record = self.store_call("revoke", stored).await.map_err(|e| {
            self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "revocation not stored");
            ServiceError::TemporarilyUnavailable
        })?;
        ev.revocation_id = Some(record.id);
        Ok(())
    }
}
