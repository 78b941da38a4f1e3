//! gRPC transport (contract §7): `tessera.v1.TokenService` on the public listener.
//! Translates only, like `http`: the same `Params`, credentials and request context go
//! to the same service calls, so authentication, audit events and outcomes are the
//! HTTP endpoints' own. The only module that serves tonic.

pub mod pb;

use crate::http::error::status_and_code;
use crate::http::{PeerInfo, context, credentials};
use crate::service::exchange::GRANT_TOKEN_EXCHANGE;
use crate::service::introspect::IntrospectionResponse;
use crate::service::{
    CallerCredentials, JWT_SPIFFE_ASSERTION, Params, RequestContext, Service, ServiceError,
};
use pb::token_service_server::{TokenService, TokenServiceServer};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tonic::codegen::http::{HeaderMap, StatusCode};
use tonic::{Code, Request, Response, Status};

/// Metadata carrying a JWT-SVID client assertion (the form's `client_assertion`).
const ASSERTION_METADATA: &str = "client-assertion";
/// Its type (the form's `client_assertion_type`); absent means `jwt-spiffe`.
const ASSERTION_TYPE_METADATA: &str = "client-assertion-type";

/// The gRPC service over `svc`, with the HTTP endpoints' 64 KiB body limit.
pub fn token_service(svc: Arc<Service>) -> TokenServiceServer<Grpc> {
    TokenServiceServer::new(Grpc { svc })
        .max_decoding_message_size(crate::http::MAX_BODY)
        .max_encoding_message_size(crate::http::MAX_BODY)
}

/// Set by a handler when it starts: a call that ends without it was refused by tonic
/// itself (unknown method, oversized or undecodable message).
#[derive(Clone, Default)]
pub struct HandlerRan(Arc<AtomicBool>);

impl HandlerRan {
    pub fn ran(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the transport answers for a call tonic refused before any handler ran: the
/// caller's fault, so never INTERNAL (a malformed message is `INVALID_ARGUMENT`), with
/// the OAuth code first in the message like every other error.
pub fn refused_before_handler(code: i32) -> (Status, &'static str) {
    let code = Code::from_i32(code);
    let code = match code {
        Code::OutOfRange | Code::Unimplemented => code,
        _ => Code::InvalidArgument,
    };
    let reason = match code {
        Code::OutOfRange => "request message is larger than 64 KiB",
        Code::Unimplemented => "no such method",
        _ => "malformed request message",
    };
    let status = Status::new(code, format!("invalid_request: {reason}"));
    (status, reason)
}

/// The audit event a refused call to `path` is recorded under.
pub fn event_for(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("Exchange") => "token.denied",
        Some("Introspect") => "token.introspected",
        Some("Revoke") => "token.revoked",
        _ => "request.rejected",
    }
}

pub struct Grpc {
    svc: Arc<Service>,
}

/// Request context and credentials of one call; a malformed `authorization` is refused
/// and audited as the HTTP endpoints do (`audit_event` names the event).
fn caller<T>(
    svc: &Service,
    req: &Request<T>,
    audit_event: &'static str,
) -> Result<(RequestContext, CallerCredentials), Status> {
    if let Some(flag) = req.extensions().get::<HandlerRan>() {
        flag.0.store(true, Ordering::Relaxed);
    }
    let headers: HeaderMap = req.metadata().clone().into_headers();
    let peer = req.extensions().get::<PeerInfo>();
    let ctx = context(peer, &headers);
    let mut creds = match credentials(&headers) {
        Ok(c) => c,
        Err(e) => {
            let mut ev = crate::audit::AuditEvent::begin(audit_event, svc.now());
            ev.reason = Some(format!("refused before processing: {e}"));
            ev.error_code = Some(e.oauth_code());
            svc.audit(&ctx, ev);
            return Err(to_status(e));
        }
    };
    if let Some(assertion) = metadata_str(&headers, ASSERTION_METADATA) {
        let kind = metadata_str(&headers, ASSERTION_TYPE_METADATA).unwrap_or(JWT_SPIFFE_ASSERTION);
        creds.assertion = Some((kind.to_owned(), assertion.to_owned()));
    }
    creds.peer = peer.and_then(|p| p.certificates.clone());
    Ok((ctx, creds))
}

fn metadata_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Form parameters from message fields; an empty field is an absent parameter.
fn params<'a>(fields: impl IntoIterator<Item = (&'a str, String)>) -> Params {
    let map: BTreeMap<String, String> = fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Params(map)
}

/// The one error mapping, through HTTP's: the gRPC code matching the HTTP status, and
/// the OAuth error code first in the message (contract §7).
pub fn to_status(e: ServiceError) -> Status {
    let (http, oauth_code) = status_and_code(&e);
    let code = match http {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT => Code::FailedPrecondition,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    };
    let description = match &e {
        // 5xx causes were logged by the service; the caller learns nothing more.
        ServiceError::Internal(_) => "internal error".to_owned(),
        other => other.to_string(),
    };
    let mut status = Status::new(code, format!("{oauth_code}: {description}"));
    if let ServiceError::SlowDown { retry_after } = e
        && let Ok(v) = retry_after.to_string().parse()
    {
        status.metadata_mut().insert("retry-after", v);
    }
    status
}

#[tonic::async_trait]
impl TokenService for Grpc {
    async fn exchange(
        &self,
        req: Request<pb::ExchangeRequest>,
    ) -> Result<Response<pb::ExchangeResponse>, Status> {
        let (ctx, creds) = caller(&self.svc, &req, "token.denied")?;
        let m = req.into_inner();
        let grant_type = if m.grant_type.is_empty() {
            GRANT_TOKEN_EXCHANGE.to_owned()
        } else {
            m.grant_type
        };
        let params = params([
            ("grant_type", grant_type),
            ("subject_token", m.subject_token),
            ("subject_token_type", m.subject_token_type),
            ("audience", m.audience),
            ("resource", m.resource),
            ("scope", m.scope),
            ("requested_token_type", m.requested_token_type),
            ("actor_token", m.actor_token),
            ("actor_token_type", m.actor_token_type),
        ]);
        let t = self
            .svc
            .exchange(&ctx, &params, &creds)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ExchangeResponse {
            access_token: t.access_token,
            issued_token_type: t.issued_token_type.to_owned(),
            token_type: t.token_type.to_owned(),
            expires_in: t.expires_in,
            scope: t.scope,
        }))
    }

    async fn introspect(
        &self,
        req: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let (ctx, creds) = caller(&self.svc, &req, "token.introspected")?;
        let m = req.into_inner();
        let params = params([("token", m.token), ("token_type_hint", m.token_type_hint)]);
        let answer = self
            .svc
            .introspect(&ctx, &params, &creds)
            .await
            .map_err(to_status)?;
        Ok(Response::new(introspection(answer)))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let (ctx, creds) = caller(&self.svc, &req, "token.revoked")?;
        let m = req.into_inner();
        let params = params([("token", m.token), ("token_type_hint", m.token_type_hint)]);
        self.svc
            .revoke_token(&ctx, &params, &creds)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RevokeResponse {}))
    }
}

/// RFC 7662 §2.2: an inactive answer carries `active = false` and nothing else.
fn introspection(answer: IntrospectionResponse) -> pb::IntrospectResponse {
    let Some(d) = answer.details.filter(|_| answer.active) else {
        return pb::IntrospectResponse::default();
    };
    pb::IntrospectResponse {
        active: true,
        iss: d.iss,
        sub: d.sub,
        aud: d.aud,
        client_id: d.client_id,
        scope: d.scope,
        token_type: d.token_type.to_owned(),
        exp: d.exp,
        iat: d.iat,
        nbf: d.nbf,
        jti: d.jti,
        act_sub: d.act.map(|a| a.sub),
        cnf_x5t_s256: d.cnf.map(|c| c.x5t_s256),
    }
}
