//! HTTP transport: routes, request decoding, response rendering. Translates only;
//! every decision is made in `service`. The only module that names axum.

pub mod error;
pub mod server;

use crate::clock::rfc3339;
use crate::mint::keys::KeyInfo;
use crate::revocation::{AuditFilter, IssuedToken, Page, RevocationRecord, TokenFilter};
use crate::service::admin::{RevocationRequest, page_request};
use crate::service::{
    CallerCredentials, Params, PeerCertificates, RequestContext, Service, ServiceError,
};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use error::{ApiError, payload_too_large};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Contract §2: bodies above 64 KiB are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;
/// More form fields than any grant needs is an attack, not a request.
const MAX_FORM_FIELDS: usize = 32;

/// Connection facts our accept loop puts into each request's extensions.
#[derive(Clone)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    /// The client certificate chain, when the TLS client sent one (checked by the TLS
    /// client verifier during the handshake).
    pub certificates: Option<Arc<PeerCertificates>>,
}

type AppState = Arc<Service>;

pub fn public_router(svc: AppState) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/introspect", post(introspect))
        .route("/revoke", post(revoke))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Contract §7: gRPC next to the HTTP routes, on the same listener (HTTP/2).
        .route_service(
            "/tessera.v1.TokenService/{*method}",
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    svc.clone(),
                    grpc_refusals,
                ))
                .service(crate::grpc::token_service(svc.clone())),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(svc)
}

pub fn admin_router(svc: AppState) -> Router {
    Router::new()
        .route(
            "/admin/v1/revocations",
            post(admin_revoke).get(admin_revocations),
        )
        .route("/admin/v1/revocations/{id}", delete(admin_lift))
        .route("/admin/v1/tokens", get(admin_tokens))
        .route("/admin/v1/keys/rotate", post(admin_rotate))
        .route("/admin/v1/policy/reload", post(admin_reload))
        .route("/admin/v1/audit", get(admin_audit))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(svc)
}

/// Route templates that request metrics name as `endpoint`; any other path is
/// `other`, so scanners cannot grow the label space.
const METRIC_ENDPOINTS: &[&str] = &[
    "/token",
    "/introspect",
    "/revoke",
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
    "/jwks.json",
    "/healthz",
    "/readyz",
    "/tessera.v1.TokenService/Exchange",
    "/tessera.v1.TokenService/Introspect",
    "/tessera.v1.TokenService/Revoke",
    "/admin/v1/revocations",
    "/admin/v1/tokens",
    "/admin/v1/keys/rotate",
    "/admin/v1/policy/reload",
    "/admin/v1/audit",
    "/metrics",
];

fn metric_endpoint(path: &str) -> &'static str {
    if let Some(known) = METRIC_ENDPOINTS.iter().find(|e| **e == path) {
        return known;
    }
    match path.strip_prefix("/admin/v1/revocations/") {
        Some(id) if !id.is_empty() && !id.contains('/') => "/admin/v1/revocations/{id}",
        _ => "other",
    }
}

/// Audits and rewrites what tonic refuses before a handler runs (unknown method,
/// oversized or undecodable message): every request is audited, and bad input is never
/// answered as a server error.
async fn grpc_refusals(
    State(svc): State<AppState>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    let ran = crate::grpc::HandlerRan::default();
    req.extensions_mut().insert(ran.clone());
    let peer = req.extensions().get::<PeerInfo>().cloned();
    let ctx = context(peer.as_ref(), req.headers());
    let event = crate::grpc::event_for(req.uri().path());
    let resp = next.run(req).await;
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|c| *c != 0);
    let Some(code) = code.filter(|_| !ran.ran()) else {
        return resp;
    };
    let (status, reason) = crate::grpc::refused_before_handler(code);
    let mut ev = crate::audit::AuditEvent::begin(event, svc.now());
    ev.reason = Some(format!("refused before processing: {reason}"));
    ev.error_code = Some("invalid_request");
    svc.audit(&ctx, ev);
    status.into_http::<axum::body::Body>()
}

/// Wraps a router so that a request not answered within `limit` (body read included:
/// a client trickling its body is cut off too) gets 503 `temporarily_unavailable`,
/// audited like any refusal; and counts every answered request, a timed-out one with
/// its 503 and its full time. One middleware for both: each layer costs a boxed future
/// per request on the hot path.
pub fn with_deadline_and_metrics(
    router: Router,
    svc: AppState,
    limit: std::time::Duration,
) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        (svc, limit),
        deadline_and_metrics,
    ))
}

async fn deadline_and_metrics(
    State((svc, limit)): State<(AppState, std::time::Duration)>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let peer = req.extensions().get::<PeerInfo>().cloned();
    let mut ids = HeaderMap::new();
    if let Some(rid) = req.headers().get("x-request-id") {
        ids.insert("x-request-id", rid.clone());
    }
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let method = req.method().clone();
    let endpoint = metric_endpoint(req.uri().path());
    let event = match endpoint {
        "/token" => "token.denied",
        "/introspect" => "token.introspected",
        "/revoke" => "token.revoked",
        _ => "request.rejected",
    };
    let resp = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => {
            // Method, route and status only: headers and bodies carry credentials.
            tracing::debug!(%method, endpoint, status = resp.status().as_u16(), "request answered");
            resp
        }
        Err(_) => {
            tracing::warn!(
                event,
                limit_ms = limit.as_millis() as u64,
                "request timed out"
            );
            let ctx = context(peer.as_ref(), &ids);
            let resp = ApiError(ServiceError::TemporarilyUnavailable).into_response();
            audit_refusal(&svc, &ctx, event, resp)
        }
    };
    count_request(&svc, grpc, endpoint, &resp, started);
    resp
}

fn count_request(
    svc: &Service,
    grpc: bool,
    endpoint: &'static str,
    resp: &Response,
    started: std::time::Instant,
) {
    use crate::metrics::{RequestOutcome, Transport};
    let (transport, outcome) = if grpc && resp.status() == StatusCode::OK {
        // A failed unary call is a trailers-only response: `grpc-status` is a header.
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        (Transport::Grpc, RequestOutcome::from_grpc_status(code))
    } else {
        let transport = if grpc {
            Transport::Grpc
        } else {
            Transport::Http
        };
        (
            transport,
            RequestOutcome::from_http_status(resp.status().as_u16()),
        )
    };
    svc.metrics
        .observe_request(transport, endpoint, outcome, started.elapsed());
}

/// Unknown paths and wrong methods get an OAuth-style JSON error and an audit event.
fn refuse(svc: &Service, i: &AdminInput, status: StatusCode, what: &str) -> Response {
    let body = json!({"error": "invalid_request", "error_description": what});
    audit_refusal(
        svc,
        &i.ctx,
        "request.rejected",
        json_no_store(status, &body),
    )
}

async fn unknown_route(State(svc): State<AppState>, i: AdminInput) -> Response {
    refuse(&svc, &i, StatusCode::NOT_FOUND, "no such endpoint")
}

async fn wrong_method(State(svc): State<AppState>, i: AdminInput) -> Response {
    refuse(
        &svc,
        &i,
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// A query string that does not decode: 400, audited.
fn bad_query(svc: &Service, ctx: &RequestContext, event: &'static str) -> Response {
    let resp = ApiError(ServiceError::InvalidRequest("bad query string".into())).into_response();
    audit_refusal(svc, ctx, event, resp)
}

pub(crate) fn context(peer: Option<&PeerInfo>, headers: &HeaderMap) -> RequestContext {
    // A caller-supplied request id is kept only if it is short and plain.
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            crate::jose::random_bytes::<8>()
                .map(|b| crate::jose::hex(&b))
                .unwrap_or_default()
        });
    RequestContext {
        remote_addr: peer.map(|p| p.remote_addr),
        request_id,
    }
}

/// Reads `Authorization: Basic` (RFC 7617; RFC 6749 §2.3.1 form-encodes id and secret)
/// and `Authorization: Bearer`.
pub(crate) fn credentials(headers: &HeaderMap) -> Result<CallerCredentials, ServiceError> {
    let mut creds = CallerCredentials::default();
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(creds);
    };
    let bad = || ServiceError::InvalidClient("malformed Authorization header".into());
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    if scheme.eq_ignore_ascii_case("basic") {
        // The decoded header holds the client secret: wiped once split.
        let raw = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map_err(|_| bad())?,
        );
        let text = std::str::from_utf8(&raw).map_err(|_| bad())?;
        let (id, secret) = text.split_once(':').ok_or_else(bad)?;
        let decode = |s: &str| {
            form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        creds.basic = Some((decode(id), decode(secret)));
    } else if scheme.eq_ignore_ascii_case("bearer") {
        creds.bearer = Some(rest.trim().to_owned());
    } else {
        return Err(bad());
    }
    Ok(creds)
}

/// Decodes an `application/x-www-form-urlencoded` body, refusing duplicates.
fn form(headers: &HeaderMap, body: &[u8]) -> Result<Params, ServiceError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ServiceError::InvalidRequest(
            "body must be application/x-www-form-urlencoded".into(),
        ));
    }
    // RFC 6749 Appendix B: names and values are UTF-8. The decoder would replace bad
    // bytes with U+FFFD, so check the decoded bytes first (a real U+FFFD is fine).
    if !body
        .split(|b| *b == b'&' || *b == b'=')
        .all(decodes_to_utf8)
    {
        return Err(ServiceError::InvalidRequest(
            "form field is not valid UTF-8".into(),
        ));
    }
    let mut map = BTreeMap::new();
    for (i, (k, v)) in form_urlencoded::parse(body).enumerate() {
        if i >= MAX_FORM_FIELDS {
            return Err(ServiceError::InvalidRequest("too many form fields".into()));
        }
        let key = k.into_owned();
        if map.contains_key(&key) {
            let shown: String = key.chars().take(64).collect();
            return Err(ServiceError::InvalidRequest(format!(
                "duplicated parameter {shown}"
            )));
        }
        map.insert(key, v.into_owned());
    }
    Ok(Params(map))
}

/// Whether one `application/x-www-form-urlencoded` name or value (`+` is a space,
/// `%XX` a byte) decodes to valid UTF-8.
fn decodes_to_utf8(part: &[u8]) -> bool {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut bytes = Vec::with_capacity(part.len());
    let mut i = 0;
    while i < part.len() {
        let escaped = match (part[i], part.get(i + 1), part.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)),
            _ => None,
        };
        match escaped {
            Some((h, l)) => {
                bytes.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
            }
            None => {
                bytes.push(if part[i] == b'+' { b' ' } else { part[i] });
                i += 1;
            }
        }
    }
    std::str::from_utf8(&bytes).is_ok()
}

fn body_or_413(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            payload_too_large()
        } else {
            ApiError(ServiceError::InvalidRequest(
                "could not read the request body".into(),
            ))
            .into_response()
        }
    })
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json_no_store<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    no_store((status, Json(body)).into_response())
}

/// Decodes form + credentials, the shared front half of `/token`, `/introspect`, `/revoke`.
fn oauth_input(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Params, CallerCredentials), Response> {
    let body = body_or_413(body)?;
    let params = form(headers, &body).map_err(|e| ApiError(e).into_response())?;
    let creds = credentials(headers).map_err(|e| ApiError(e).into_response())?;
    let creds = creds.with_form_assertion(&params);
    Ok((params, creds))
}

/// Transport-level refusals still produce an audit event (contract §8: every request).
fn audit_refusal(
    svc: &Service,
    ctx: &RequestContext,
    event: &'static str,
    resp: Response,
) -> Response {
    let mut ev = crate::audit::AuditEvent::begin(event, svc.now());
    ev.reason = Some(format!(
        "refused before processing: HTTP {}",
        resp.status().as_u16()
    ));
    ev.error_code = Some(match resp.status() {
        StatusCode::SERVICE_UNAVAILABLE => "temporarily_unavailable",
        StatusCode::UNAUTHORIZED => "invalid_client",
        _ => "invalid_request",
    });
    svc.audit(ctx, ev);
    resp
}

/// Form body, caller credentials and request context of `/token`, `/introspect` and
/// `/revoke`. A request refused while decoding is answered and audited here.
struct OAuthInput {
    ctx: RequestContext,
    params: Params,
    creds: CallerCredentials,
}

impl FromRequest<AppState> for OAuthInput {
    type Rejection = Response;

    async fn from_request(req: Request, svc: &AppState) -> Result<Self, Response> {
        let event = match req.uri().path() {
            "/introspect" => "token.introspected",
            "/revoke" => "token.revoked",
            _ => "token.denied",
        };
        let headers = req.headers().clone();
        let peer = req.extensions().get::<PeerInfo>().cloned();
        let ctx = context(peer.as_ref(), &headers);
        let body = Bytes::from_request(req, svc).await;
        match oauth_input(&headers, body) {
            Ok((params, mut creds)) => {
                creds.peer = peer.and_then(|p| p.certificates);
                Ok(Self { ctx, params, creds })
            }
            Err(resp) => Err(audit_refusal(svc, &ctx, event, resp)),
        }
    }
}

/// Request context and credentials of an admin call (a malformed header is no credential).
struct AdminInput {
    ctx: RequestContext,
    creds: CallerCredentials,
}

impl FromRequestParts<AppState> for AdminInput {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<PeerInfo>();
        let ctx = context(peer, &parts.headers);
        let mut creds = credentials(&parts.headers).unwrap_or_default();
        creds.peer = peer.and_then(|p| p.certificates.clone());
        Ok(Self { ctx, creds })
    }
}

/// Renders a service result: JSON with `no-store`, or the one error mapping.
fn respond<T: serde::Serialize>(status: StatusCode, result: Result<T, ServiceError>) -> Response {
    match result {
        Ok(v) => json_no_store(status, &v),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn token(State(svc): State<AppState>, i: OAuthInput) -> Response {
    respond(
        StatusCode::OK,
        svc.exchange(&i.ctx, &i.params, &i.creds).await,
    )
}

async fn introspect(State(svc): State<AppState>, i: OAuthInput) -> Response {
    respond(
        StatusCode::OK,
        svc.introspect(&i.ctx, &i.params, &i.creds).await,
    )
}

/// RFC 7009 §2.2: 200 with an empty body.
async fn revoke(State(svc): State<AppState>, i: OAuthInput) -> Response {
    match svc.revoke_token(&i.ctx, &i.params, &i.creds).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn metadata(State(svc): State<AppState>) -> Response {
    let iss = svc.minter().issuer().to_owned();
    // RFC 8705 client certificates exist only on TLS listeners (not in dev mode).
    let mtls = svc.settings().serves_tls();
    let with_mtls = |methods: &[&str]| {
        let mut m: Vec<String> = methods.iter().map(|s| (*s).to_owned()).collect();
        if mtls {
            m.push("tls_client_auth".into());
        }
        m
    };
    let body = json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}/token"),
        "introspection_endpoint": format!("{iss}/introspect"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "jwks_uri": format!("{iss}/jwks.json"),
        "grant_types_supported": [
            crate::service::exchange::GRANT_TOKEN_EXCHANGE,
            crate::service::exchange::GRANT_CLIENT_CREDENTIALS,
        ],
        "token_endpoint_auth_methods_supported": with_mtls(&["private_key_jwt"]),
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"],
        "client_assertion_types_supported": [crate::service::JWT_SPIFFE_ASSERTION],
        "introspection_endpoint_auth_methods_supported": with_mtls(&["private_key_jwt", "client_secret_basic"]),
        "revocation_endpoint_auth_methods_supported": with_mtls(&["private_key_jwt"]),
        "scopes_supported": svc.policy().policy.scopes_supported(),
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [svc.settings().signing_alg.as_str()],
        "tls_client_certificate_bound_access_tokens": true,
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn jwks(State(svc): State<AppState>) -> Response {
    let keys = svc.minter().keys().public_jwks(svc.now());
    // Contract §2: max-age at most half of `signing.prepublish`, so a client that
    // cached the JWKS sees a next key before it signs.
    let max_age = (svc.settings().prepublish / 2).min(300);
    let mut resp = (StatusCode::OK, Json(json!({ "keys": keys }))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        resp.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    resp
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

async fn readyz(State(svc): State<AppState>) -> Response {
    match svc.readiness().await {
        Ok(warnings) if warnings.is_empty() => {
            (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
        }
        Ok(warnings) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "warnings": warnings})),
        )
            .into_response(),
        Err(detail) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "detail": detail})),
        )
            .into_response(),
    }
}

fn revocation_json(r: &RevocationRecord) -> Value {
    let mut v = json!({
        "id": r.id,
        "kind": r.kind.as_str(),
        "value": r.value,
        "reason": r.reason,
        "actor": r.actor,
        "created_at": rfc3339(r.created_at),
        "expires_at": rfc3339(r.expires_at),
    });
    if let (Some(b), Some(m)) = (r.block_until, v.as_object_mut()) {
        m.insert("block_until".into(), rfc3339(b).into());
    }
    v
}

fn token_json(t: &IssuedToken) -> Value {
    let mut v = json!({
        "jti": t.jti, "sub": t.sub, "aud": t.aud, "kid": t.kid,
        "iat": rfc3339(t.iat), "exp": rfc3339(t.exp),
    });
    if let (Some(s), Some(m)) = (&t.scope, v.as_object_mut()) {
        m.insert("scope".into(), s.clone().into());
    }
    v
}

fn key_json(k: &KeyInfo) -> Value {
    json!({"kid": k.kid, "alg": k.alg, "state": k.state, "created_at": rfc3339(k.created_at)})
}

async fn admin_revoke(
    State(svc): State<AppState>,
    i: AdminInput,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body_or_413(body) {
        Ok(b) => b,
        Err(resp) => return audit_refusal(&svc, &i.ctx, "admin.revoke", resp),
    };
    // Authenticate before parsing, so an anonymous caller learns nothing from errors.
    if let Err(e) = svc.admin_preflight(&i.ctx, &i.creds, "admin.revoke") {
        return ApiError(e).into_response();
    }
    let req: RevocationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!(
                "body must be a JSON revocation request: {}",
                e.to_string().chars().take(120).collect::<String>()
            );
            let resp = ApiError(ServiceError::InvalidRequest(msg)).into_response();
            return audit_refusal(&svc, &i.ctx, "admin.revoke", resp);
        }
    };
    let result = svc.admin_revoke(&i.ctx, &i.creds, req).await;
    respond(StatusCode::CREATED, result.map(|r| revocation_json(&r)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    kind: Option<String>,
    subject: Option<String>,
    audience: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn page_json<T>(page: Page<T>, render: fn(&T) -> Value) -> Value {
    json!({"items": page.items.iter().map(render).collect::<Vec<_>>(), "next_cursor": page.next_cursor})
}

async fn admin_revocations(
    State(svc): State<AppState>,
    i: AdminInput,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_query(&svc, &i.ctx, "admin.revocations.list");
    };
    let page = page_request(q.limit, q.cursor);
    let result = svc
        .admin_list_revocations(&i.ctx, &i.creds, q.kind.as_deref(), page)
        .await;
    respond(
        StatusCode::OK,
        result.map(|p| page_json(p, revocation_json)),
    )
}

async fn admin_lift(
    State(svc): State<AppState>,
    i: AdminInput,
    Path(id): Path<String>,
) -> Response {
    match svc.admin_lift(&i.ctx, &i.creds, &id).await {
        Ok(()) => no_store(StatusCode::NO_CONTENT.into_response()),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn admin_tokens(
    State(svc): State<AppState>,
    i: AdminInput,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_query(&svc, &i.ctx, "admin.tokens.list");
    };
    let filter = TokenFilter {
        subject: q.subject.filter(|s| !s.is_empty()),
        audience: q.audience.filter(|s| !s.is_empty()),
    };
    let result = svc
        .admin_tokens(&i.ctx, &i.creds, filter, page_request(q.limit, q.cursor))
        .await;
    respond(StatusCode::OK, result.map(|p| page_json(p, token_json)))
}

async fn admin_rotate(State(svc): State<AppState>, i: AdminInput) -> Response {
    let result = svc.admin_rotate_keys(&i.ctx, &i.creds).await;
    respond(
        StatusCode::OK,
        result.map(|keys| json!({"keys": keys.iter().map(key_json).collect::<Vec<_>>()})),
    )
}

async fn admin_reload(State(svc): State<AppState>, i: AdminInput) -> Response {
    let result = svc.admin_reload(&i.ctx, &i.creds).await.map(|o| {
        let failed: Vec<Value> = o
            .bundles_failed
            .iter()
            .map(|(td, e)| json!({"trust_domain": td, "error": e}))
            .collect();
        json!({"rules": o.rules, "bundles_failed": failed})
    });
    respond(StatusCode::OK, result)
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    since: Option<String>,
    subject: Option<String>,
    outcome: Option<String>,
    limit: Option<usize>,
}

async fn admin_audit(
    State(svc): State<AppState>,
    i: AdminInput,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_query(&svc, &i.ctx, "admin.audit.query");
    };
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => match crate::clock::parse_rfc3339(s) {
            Some(t) => Some(t),
            None => {
                let e = ServiceError::InvalidRequest("since must be an RFC 3339 time".into());
                return audit_refusal(
                    &svc,
                    &i.ctx,
                    "admin.audit.query",
                    ApiError(e).into_response(),
                );
            }
        },
        None => None,
    };
    let filter = AuditFilter {
        since,
        subject: q.subject.filter(|s| !s.is_empty()),
        outcome: q.outcome.filter(|s| !s.is_empty()),
    };
    let result = svc
        .admin_audit(&i.ctx, &i.creds, filter, q.limit)
        .await
        .map(|events| {
            let items: Vec<Value> = events
                .iter()
                .map(|e| serde_json::from_str::<Value>(&e.json).unwrap_or(Value::Null))
                .collect();
            json!({"items": items, "next_cursor": null})
        });
    respond(StatusCode::OK, result)
}

async fn metrics(State(svc): State<AppState>, i: AdminInput) -> Response {
    // A refused scrape is a failed authentication and is audited; a served one is not.
    if svc.settings().metrics_auth
        && let Err(e) = svc.admin_authorized(&i.creds)
    {
        return audit_refusal(&svc, &i.ctx, "admin.metrics", ApiError(e).into_response());
    }
    let mut resp = svc.render_metrics().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// The body decoder of `/token`, `/introspect` and `/revoke` (media type, duplicates,
/// field count) on its own, so fuzz/ and tests/properties.rs reach it without a server.
pub fn decode_form(content_type: &str, body: &[u8]) -> Result<Params, ServiceError> {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    form(&headers, body)
}

#[cfg(test)]
mod tests {
    use super::decodes_to_utf8;

    #[test]
    fn form_parts_are_checked_as_decoded_utf8() {
        assert!(decodes_to_utf8(b"plain+text%20ok"));
        assert!(decodes_to_utf8("%EF%BF%BD and é".as_bytes()));
        assert!(decodes_to_utf8(b"100%"));
        assert!(!decodes_to_utf8(b"%FF"));
        assert!(!decodes_to_utf8(b"%E2%82"));
        assert!(!decodes_to_utf8(&[b'a', 0xC3]));
    }
}
