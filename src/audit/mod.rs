//! Audit events (contract §8): one JSON object per request on every exit path, written
//! as a line to stdout or a file. Events carry a jti or a token hash, never a token,
//! assertion or secret. Imports only `clock`.

use crate::clock::{UnixSeconds, rfc3339};
use serde::Serialize;
use std::io::Write;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// One audit record. Absent fields are omitted from the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    #[serde(serialize_with = "ser_ts")]
    pub ts: UnixSeconds,
    pub event: &'static str,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Lowercase hex SHA-256 of the subject credential as presented (the JWT-SVID or OIDC
    /// token string, the client assertion, or the client certificate's DER): links a
    /// token event to the credential without logging the credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_sha256: Option<String>,
    /// Who authenticated to `/introspect`, `/revoke` or the admin API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Introspection answer (RFC 7662 `active`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// What a revocation names: `jti`, `subject` or `kid` (with the value in the field
    /// of that name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_kind: Option<&'static str>,
    /// The revoked signing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The revocation record created or lifted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_id: Option<String>,
    /// The OAuth error code of a failure, for metrics (the record has `reason`).
    #[serde(skip)]
    pub error_code: Option<&'static str>,
}

fn ser_ts<S: serde::Serializer>(ts: &UnixSeconds, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ts))
}

impl AuditEvent {
    /// A failure event; the request path fills in what it learns and flips the outcome
    /// when it succeeds, so an early return still reports a failure.
    pub fn begin(event: &'static str, ts: UnixSeconds) -> Self {
        Self {
            ts,
            event,
            outcome: Outcome::Failure,
            subject: None,
            issuer_kind: None,
            audience: None,
            scope: None,
            jti: None,
            rule: None,
            reason: None,
            remote_addr: None,
            request_id: None,
            credential_sha256: None,
            caller: None,
            active: None,
            revocation_kind: None,
            kid: None,
            revocation_id: None,
            error_code: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Where audit lines go. `json` is `event.to_json()`, serialized once per request and
/// shared with the store's audit tail.
pub trait AuditSink: Send + Sync + 'static {
    fn emit(&self, event: &AuditEvent, json: &str);
}

/// JSON lines on any writer (stdout, a file, or a buffer in tests).
pub struct JsonLines {
    out: Mutex<Box<dyn Write + Send>>,
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }
    pub fn file(path: &std::path::Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::new(Box::new(f)))
    }
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }
}

impl AuditSink for JsonLines {
    fn emit(&self, _event: &AuditEvent, json: &str) {
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One write per line (O_APPEND keeps lines whole); a failure must not fail the
        // request, it is reported on stderr.
        if out
            .write_all(format!("{json}\n").as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            tracing::error!("audit write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_are_omitted_and_ts_is_rfc3339() {
        let mut ev = AuditEvent::begin("token.issued", 0);
        ev.jti = Some("abc".into());
        ev.outcome = Outcome::Success;
        let v: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00Z");
        assert_eq!(v["outcome"], "success");
        assert_eq!(v["jti"], "abc");
        assert!(v.get("subject").is_none());
    }
}
