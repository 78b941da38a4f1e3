//! Admin operations (contract §3): revocations, token inventory, key rotation, policy
//! reload, audit query. Every call is audited, including refused ones.

use super::{CallerCredentials, RequestContext, Service, ServiceError, allowed, matches_sha256};
use crate::audit::AuditEvent;
use crate::clock::UnixSeconds;
use crate::domain::{SpiffeId, parse_duration};
use crate::mint::keys::KeyInfo;
use crate::policy::CompiledPolicy;
use crate::revocation::{
    AuditFilter, IssuedToken, LiftOutcome, NewRevocation, Page, PageRequest, RevocationKind,
    RevocationRecord, StoreError, StoredAuditEvent, TokenFilter,
};
use std::sync::atomic::Ordering;

/// `POST /admin/v1/revocations` body, already decoded from JSON by the transport.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    pub jti: Option<String>,
    pub subject: Option<String>,
    pub kid: Option<String>,
    pub reason: Option<String>,
    pub block_new: Option<String>,
}

const MAX_REASON_LEN: usize = 512;
const MAX_PAGE: usize = 1000;
/// A quarantine longer than a year is an operator typo, and an unbounded one would
/// overflow the timestamp it is stored as.
const MAX_BLOCK_NEW_SECS: u64 = 365 * 86_400;

/// Parses `block_new` into seconds, from 1s to 365d.
fn block_new_secs(d: &str) -> Result<i64, ServiceError> {
    let secs =
        parse_duration(d).map_err(|e| ServiceError::InvalidRequest(format!("block_new: {e}")))?;
    if secs == 0 || secs > MAX_BLOCK_NEW_SECS {
        return Err(ServiceError::InvalidRequest(format!(
            "block_new: {d:?} is out of range; give a duration from 1s to 365d"
        )));
    }
    // Bounded above, so the cast is exact.
    Ok(secs as i64)
}

#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub rules: usize,
    pub bundles_failed: Vec<(String, String)>,
}

fn store_err(svc: &Service, e: StoreError) -> ServiceError {
    match e {
        StoreError::BadCursor => ServiceError::InvalidRequest("bad cursor".into()),
        other => {
            svc.counters.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %other, "admin call failed: store unavailable");
            ServiceError::TemporarilyUnavailable
        }
    }
}

pub fn page_request(limit: Option<usize>, cursor: Option<String>) -> PageRequest {
    PageRequest {
        limit: limit.unwrap_or(100).clamp(1, MAX_PAGE),
        cursor,
    }
}

impl Service {
    /// Bearer admin token (constant-time hash compare) or a JWT-SVID bearer whose SPIFFE
    /// ID is in `admin.allowed`: 401 without a valid credential, 403 for a workload
    /// identity that is not listed.
    pub(crate) fn authenticate_admin(
        &self,
        creds: &CallerCredentials,
    ) -> Result<String, ServiceError> {
        let failed = || ServiceError::InvalidClient("admin authentication failed".into());
        let workload = match &creds.bearer {
            Some(bearer) => {
                if let Some(h) = &self.policy().admin_token_sha256
                    && matches_sha256(bearer, h)
                {
                    return Ok("admin-token".into());
                }
                // Otherwise only a JWT-SVID bearer can authenticate.
                if bearer.split('.').count() != 3 {
                    return Err(failed());
                }
                let identity = self.verified_jwt_svid(bearer).map_err(|_| failed())?;
                identity.spiffe_id().cloned().ok_or_else(failed)?
            }
            // No bearer: the connection's X.509-SVID (mTLS), if any.
            None => match self.peer_identity(creds) {
                Some(identity) => identity?.spiffe_id().cloned().ok_or_else(failed)?,
                None => return Err(ServiceError::Unauthenticated),
            },
        };
        if allowed(&self.settings.admin_allowed, &workload) {
            Ok(workload.to_string())
        } else {
            Err(ServiceError::Forbidden)
        }
    }

    /// Opens the audit event of an admin call and authenticates the caller, unless its
    /// address used up its failed authentications.
    fn admin_begin(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
        event: &'static str,
    ) -> (AuditEvent, Result<String, ServiceError>) {
        let mut ev = AuditEvent::begin(event, self.now());
        let auth = self
            .failed_auth_gate(ctx, &mut ev)
            .and_then(|()| self.authenticate_admin(creds));
        self.note_auth_result(ctx, &auth);
        if let Ok(actor) = &auth {
            ev.caller = Some(actor.clone());
        }
        (ev, auth)
    }

    pub async fn admin_revoke(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
        req: RevocationRequest,
    ) -> Result<RevocationRecord, ServiceError> {
        let (mut ev, auth) = self.admin_begin(ctx, creds, "admin.revoke");
        let result = match auth {
            Ok(actor) => self.admin_revoke_inner(actor, &mut ev, req).await,
            Err(e) => Err(e),
        };
        self.finish(ctx, ev, result)
    }

    async fn admin_revoke_inner(
        &self,
        actor: String,
        ev: &mut AuditEvent,
        req: RevocationRequest,
    ) -> Result<RevocationRecord, ServiceError> {
        let reason = req.reason.unwrap_or_default();
        if reason.trim().is_empty() {
            return Err(ServiceError::InvalidRequest("reason is required".into()));
        }
        if reason.len() > MAX_REASON_LEN {
            return Err(ServiceError::InvalidRequest("reason is too long".into()));
        }
        let now = self.now();
        let s = &self.settings;
        let horizon = now + (s.max_ttl + s.leeway) as i64;
        let (kind, value, expires_at, block_until) = match (req.jti, req.subject, req.kid) {
            (Some(jti), None, None) => {
                if req.block_new.is_some() {
                    return Err(ServiceError::InvalidRequest(
                        "block_new applies to subject revocations only".into(),
                    ));
                }
                crate::domain::Jti::parse(&jti)
                    .map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
                // Known tokens are remembered until their exp (+ leeway); unknown ones until
                // the longest possible lifetime has passed.
                let exp = match self.inventory.get_issued(&jti).await {
                    Ok(Some(t)) => t.exp + s.leeway as i64,
                    _ => horizon,
                };
                (RevocationKind::Jti, jti, exp, None)
            }
            (None, Some(subject), None) => {
                valid_subject(&subject)?;
                let block_until = match req.block_new.as_deref() {
                    Some(d) => Some(now + block_new_secs(d)?),
                    None => None,
                };
                let exp = horizon.max(block_until.unwrap_or(0));
                (RevocationKind::Subject, subject, exp, block_until)
            }
            (None, None, Some(kid)) => {
                if req.block_new.is_some() {
                    return Err(ServiceError::InvalidRequest(
                        "block_new applies to subject revocations only".into(),
                    ));
                }
                crate::domain::Kid::parse(&kid)
                    .map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
                (RevocationKind::Kid, kid, horizon, None)
            }
            _ => {
                return Err(ServiceError::InvalidRequest(
                    "give exactly one of jti, subject and kid".into(),
                ));
            }
        };
        ev.reason = Some(reason.clone());
        ev.revocation_kind = Some(kind.as_str());
        let named = match kind {
            RevocationKind::Jti => &mut ev.jti,
            RevocationKind::Subject => &mut ev.subject,
            RevocationKind::Kid => &mut ev.kid,
        };
        *named = Some(value.clone());
        let stored = self.revocations.revoke(NewRevocation {
            kind,
            value: value.clone(),
            reason,
            actor,
            created_at: now,
            expires_at,
            block_until,
        });
        let record = self
            .store_call("revoke", stored)
            .await
            .map_err(|e| store_err(self, e))?;
        ev.revocation_id = Some(record.id.clone());
        // Only after the revocation is durable does the key leave the JWKS; revoking the
        // current key rotates first so issuance never stops.
        if kind == RevocationKind::Kid && self.minter.keys().find(&value).is_some() {
            self.minter
                .keys()
                .remove(&value, now)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        Ok(record)
    }

    pub async fn admin_list_revocations(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
        kind: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<RevocationRecord>, ServiceError> {
        let (ev, auth) = self.admin_begin(ctx, creds, "admin.revocations.list");
        let result = async {
            auth?;
            let kind = match kind.filter(|k| !k.is_empty()) {
                Some(k) => Some(RevocationKind::parse(k).ok_or_else(|| {
                    ServiceError::InvalidRequest("kind must be jti, subject or kid".into())
                })?),
                None => None,
            };
            self.revocations
                .list_revocations(kind, &page, self.now())
                .await
                .map_err(|e| store_err(self, e))
        }
        .await;
        self.finish(ctx, ev, result)
    }

    pub async fn admin_lift(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
        id: &str,
    ) -> Result<(), ServiceError> {
        let (mut ev, auth) = self.admin_begin(ctx, creds, "admin.revocation.lift");
        ev.reason = Some(format!("lift {}", id.chars().take(64).collect::<String>()));
        ev.revocation_id = Some(id.chars().take(64).collect());
        let result = async {
            auth?;
            let now = self.now();
            let kid = self.revoked_kid(id, now).await?;
            match self
                .revocations
                .lift(id, now)
                .await
                .map_err(|e| store_err(self, e))?
            {
                LiftOutcome::Lifted => {
                    // A lifted kid revocation puts the key back into the JWKS and trust.
                    if let Some(kid) = kid {
                        self.minter
                            .keys()
                            .restore(&kid, now)
                            .map_err(|e| ServiceError::Internal(e.to_string()))?;
                    }
                    Ok(())
                }
                LiftOutcome::NotFound => {
                    Err(ServiceError::NotFound("no such live revocation".into()))
                }
                LiftOutcome::NotLiftable => Err(ServiceError::Conflict(
                    "a jti revocation cannot be lifted".into(),
                )),
            }
        }
        .await;
        self.finish(ctx, ev, result)
    }

    /// The kid of the live key revocation with this record id, if it is one.
    async fn revoked_kid(
        &self,
        id: &str,
        now: UnixSeconds,
    ) -> Result<Option<String>, ServiceError> {
        let mut page = page_request(Some(MAX_PAGE), None);
        loop {
            let found = self
                .revocations
                .list_revocations(Some(RevocationKind::Kid), &page, now)
                .await
                .map_err(|e| store_err(self, e))?;
            if let Some(r) = found.items.iter().find(|r| r.id == id) {
                return Ok(Some(r.value.clone()));
            }
            match found.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => return Ok(None),
            }
        }
    }

    pub async fn admin_tokens(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
        filter: TokenFilter,
        page: PageRequest,
    ) -> Result<Page<IssuedToken>, ServiceError> {
        let (ev, auth) = self.admin_begin(ctx, creds, "admin.tokens.list");
        let result = async {
            auth?;
            self.inventory
                .list_live(&filter, &page, self.now())
                .await
                .map_err(|e| store_err(self, e))
        }
        .await;
        self.finish(ctx, ev, result)
    }

    pub async fn admin_rotate_keys(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
    ) -> Result<Vec<KeyInfo>, ServiceError> {
        let (ev, auth) = self.admin_begin(ctx, creds, "keys.rotated");
        let result = auth.and_then(|_| {
            self.minter
                .keys()
                .rotate(self.now())
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            Ok(self.minter.keys().info())
        });
        self.finish(ctx, ev, result)
    }

    pub async fn admin_reload(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
    ) -> Result<ReloadOutcome, ServiceError> {
        let (mut ev, auth) = self.admin_begin(ctx, creds, "policy.reloaded");
        let result = auth.and_then(|_| self.reload().map_err(ServiceError::InvalidRequest));
        if let Ok(o) = &result
            && !o.bundles_failed.is_empty()
        {
            ev.reason = Some(format!(
                "{} trust bundle(s) kept their last good version",
                o.bundles_failed.len()
            ));
        }
        self.finish(ctx, ev, result)
    }

    /// Reloads policy, trust bundles and the admin token hash (admin API and SIGHUP). A
    /// policy that fails to compile is refused and the old one stays.
    pub fn reload(&self) -> Result<ReloadOutcome, String> {
        let policy = CompiledPolicy::load(&self.settings.policy_file)
            .map_err(|e| format!("policy rejected: {e}"))?;
        crate::policy::log_lint_warnings(&policy, self.settings.max_ttl);
        let admin_token_sha256 = match &self.settings.admin_token_hash_file {
            Some(p) => Some(read_token_hash(p)?),
            None => None,
        };
        let report = self.bundles.reload();
        for (td, err) in &report.failed {
            tracing::warn!(trust_domain = %td, error = %err, "trust bundle reload failed; keeping the last good bundle");
        }
        for err in self.oidc.reload_files(self.now()) {
            tracing::warn!(error = %err, "OIDC jwks_file reload failed; keeping the last good keys");
        }
        let rules = policy.rule_count();
        self.reloadable
            .store(std::sync::Arc::new(super::Reloadable {
                policy,
                admin_token_sha256,
            }));
        Ok(ReloadOutcome {
            rules,
            bundles_failed: report
                .failed
                .iter()
                .map(|(td, e)| (td.to_string(), e.clone()))
                .collect(),
        })
    }

    pub async fn admin_audit(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
        filter: AuditFilter,
        limit: Option<usize>,
    ) -> Result<Vec<StoredAuditEvent>, ServiceError> {
        let limit = limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let (ev, auth) = self.admin_begin(ctx, creds, "admin.audit.query");
        let result = async {
            auth?;
            self.audit_tail
                .recent_audit(&filter, limit)
                .await
                .map_err(|e| store_err(self, e))
        }
        .await;
        self.finish(ctx, ev, result)
    }

    /// Authenticates an admin call before its body is parsed (`POST
    /// /admin/v1/revocations`). A refusal is audited here as `event`; a success is
    /// audited by the call itself.
    pub fn admin_preflight(
        &self,
        ctx: &RequestContext,
        creds: &CallerCredentials,
        event: &'static str,
    ) -> Result<(), ServiceError> {
        let (ev, auth) = self.admin_begin(ctx, creds, event);
        match auth {
            Ok(_) => Ok(()),
            Err(e) => self.finish(ctx, ev, Err(e)),
        }
    }

    /// `/metrics` auth when `admin.metrics_auth` is set.
    pub fn admin_authorized(&self, creds: &CallerCredentials) -> Result<(), ServiceError> {
        self.authenticate_admin(creds).map(|_| ())
    }
}

/// A subject is a SPIFFE ID or, for OIDC subjects, `<iss>#<sub>`.
/// The subjects tokens are issued to (contract §2): a SPIFFE ID, `<iss>#<sub>` for an
/// OIDC identity, or a subject mapped by a rule's `grant.subject`. A malformed SPIFFE ID
/// is refused rather than taken as a mapped subject: it is a typo, and revoking it would
/// revoke nothing.
fn valid_subject(s: &str) -> Result<(), ServiceError> {
    if SpiffeId::parse(s).is_ok() {
        return Ok(());
    }
    if let Some((iss, sub)) = s.split_once('#')
        && iss.starts_with("https://")
        && !sub.is_empty()
        && s.len() <= 2048
    {
        return Ok(());
    }
    if crate::policy::is_valid_mapped_subject(s) {
        return Ok(());
    }
    let problem = if s
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("spiffe:"))
    {
        match SpiffeId::parse(s) {
            Err(e) => format!("{s:?} is not a valid SPIFFE ID ({e})"),
            Ok(_) => format!("{s:?} is not a valid SPIFFE ID"),
        }
    } else {
        "subject is empty, longer than 1024 bytes, or holds whitespace or control characters"
            .to_owned()
    };
    Err(ServiceError::InvalidRequest(format!(
        "{problem}; subject must be a SPIFFE ID, <issuer>#<sub>, or a subject mapped by grant.subject (1 to 1024 bytes, no whitespace, not starting with spiffe:)"
    )))
}

/// Reads `admin.token_hash_file`: lowercase hex SHA-256, a trailing newline allowed.
pub fn read_token_hash(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin.token_hash_file {}: {e}", path.display()))?;
    let h = text.trim_end_matches(['\n', '\r']).to_owned();
    if h.len() != 64
        || !h
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "admin.token_hash_file {}: expected the lowercase hex SHA-256 of the admin token (64 characters); create it with `printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1`",
            path.display()
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::valid_subject;

    #[test]
    fn valid_subject_table() {
        let long = format!("gha:{}", "a".repeat(1021));
        // (name, subject, accepted)
        let cases = [
            ("spiffe id", "spiffe://example.org/ns/a/sa/b", true),
            (
                "oidc default",
                "https://k8s.example.org#system:serviceaccount:a:b",
                true,
            ),
            ("mapped k8s", "system:serviceaccount:payments:api", true),
            ("mapped gha", "gha:acme/deploy@refs/heads/main", true),
            ("mapped at the limit", &long[..1024], true),
            ("mapped over the limit", &long, false),
            ("empty", "", false),
            ("whitespace", "gha:acme deploy", false),
            ("control char", "gha:acme\u{7}", false),
            ("malformed spiffe id", "spiffe://Example.org/a", false),
            ("spiffe prefix any case", "SPIFFE:x", false),
            ("url-shaped, not https", "http://k8s#a", false),
        ];
        for (name, subject, accepted) in cases {
            assert_eq!(valid_subject(subject).is_ok(), accepted, "case {name:?}");
        }
        let msg = valid_subject("spiffe://Example.org/a")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a valid SPIFFE ID"), "{msg}");
        assert!(msg.contains("grant.subject"), "{msg}");
    }
}
