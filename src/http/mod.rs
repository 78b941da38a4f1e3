//! HTTP transport: routes, request decoding, response rendering. Translates only;
//! every decision is made in `service`. The only module that names axum.

pub mod error;
pub mod server;

use crate::clock::rfc3339;
use crate::mint::keys::KeyInfo;
use crate::revocation::{AuditFilter, IssuedToken, RevocationRecord, TokenFilter};
use crate::service::admin::{RevocationRequest, page_request};
use crate::service::{CallerCredentials, Params, RequestContext, Service, ServiceError};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
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
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
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
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(svc)
}

fn context(peer: Option<Extension<PeerInfo>>, headers: &HeaderMap) -> RequestContext {
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
        remote_addr: peer.map(|Extension(p)| p.remote_addr),
        request_id,
    }
}

/// Reads `Authorization: Basic` (RFC 7617; RFC 6749 §2.3.1 form-encodes id and secret)
/// and `Authorization: Bearer`.
fn credentials(headers: &HeaderMap) -> Result<CallerCredentials, ServiceError> {
    let mut creds = CallerCredentials::default();
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(creds);
    };
    let bad = || ServiceError::InvalidClient("malformed Authorization header".into());
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
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
    let mut map = BTreeMap::new();
    for (i, (k, v)) in form_urlencoded::parse(body).enumerate() {
        if i >= MAX_FORM_FIELDS {
            return Err(ServiceError::InvalidRequest("too many form fields".into()));
        }
        let key: String = k.chars().take(64).collect();
        if map.insert(key.clone(), v.into_owned()).is_some() {
            return Err(ServiceError::InvalidRequest(format!(
                "duplicated parameter {key}"
            )));
        }
    }
    Ok(Params(map))
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
    svc.audit(ctx, ev);
    resp
}

async fn token(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = context(peer, &headers);
    let (params, creds) = match oauth_input(&headers, body) {
        Ok(v) => v,
        Err(resp) => return audit_refusal(&svc, &ctx, "token.denied", resp),
    };
    match svc.exchange(&ctx, &params, &creds).await {
        Ok(r) => json_no_store(StatusCode::OK, &r),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn introspect(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = context(peer, &headers);
    let (params, creds) = match oauth_input(&headers, body) {
        Ok(v) => v,
        Err(resp) => return audit_refusal(&svc, &ctx, "token.introspected", resp),
    };
    match svc.introspect(&ctx, &params, &creds).await {
        Ok(r) => json_no_store(StatusCode::OK, &r),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn revoke(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = context(peer, &headers);
    let (params, creds) = match oauth_input(&headers, body) {
        Ok(v) => v,
        Err(resp) => return audit_refusal(&svc, &ctx, "token.revoked", resp),
    };
    match svc.revoke_token(&ctx, &params, &creds).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn metadata(State(svc): State<AppState>) -> Response {
    let iss = svc.minter().issuer().to_owned();
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
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "tls_client_auth"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"],
        "client_assertion_types_supported": [crate::service::JWT_SPIFFE_ASSERTION],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "tls_client_auth"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "tls_client_auth"],
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
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
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

fn list(items: Vec<Value>, next_cursor: Option<String>) -> Response {
    json_no_store(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next_cursor}),
    )
}

/// Admin preamble: request context and credentials (a malformed header is a 401).
fn admin_input(
    peer: Option<Extension<PeerInfo>>,
    headers: &HeaderMap,
) -> (RequestContext, CallerCredentials) {
    let ctx = context(peer, headers);
    (ctx, credentials(headers).unwrap_or_default())
}

async fn admin_revoke(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (ctx, creds) = admin_input(peer, &headers);
    let body = match body_or_413(body) {
        Ok(b) => b,
        Err(resp) => return audit_refusal(&svc, &ctx, "admin.revoke", resp),
    };
    // Authenticate before parsing, so an anonymous caller learns nothing from errors.
    if let Err(e) = svc.admin_authorized(&creds) {
        let resp = ApiError(e).into_response();
        return audit_refusal(&svc, &ctx, "admin.revoke", resp);
    }
    let req: RevocationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!(
                "body must be a JSON revocation request: {}",
                e.to_string().chars().take(120).collect::<String>()
            );
            let resp = ApiError(ServiceError::InvalidRequest(msg)).into_response();
            return audit_refusal(&svc, &ctx, "admin.revoke", resp);
        }
    };
    match svc.admin_revoke(&ctx, &creds, req).await {
        Ok(rec) => json_no_store(StatusCode::CREATED, &revocation_json(&rec)),
        Err(e) => ApiError(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    kind: Option<String>,
    subject: Option<String>,
    audience: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn admin_revocations(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let (ctx, creds) = admin_input(peer, &headers);
    let Ok(Query(q)) = query else {
        let resp =
            ApiError(ServiceError::InvalidRequest("bad query string".into())).into_response();
        return audit_refusal(&svc, &ctx, "admin.revocations.list", resp);
    };
    match svc
        .admin_list_revocations(
            &ctx,
            &creds,
            q.kind.as_deref(),
            page_request(q.limit, q.cursor),
        )
        .await
    {
        Ok(page) => list(
            page.items.iter().map(revocation_json).collect(),
            page.next_cursor,
        ),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn admin_lift(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (ctx, creds) = admin_input(peer, &headers);
    match svc.admin_lift(&ctx, &creds, &id).await {
        Ok(()) => no_store(StatusCode::NO_CONTENT.into_response()),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn admin_tokens(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let (ctx, creds) = admin_input(peer, &headers);
    let Ok(Query(q)) = query else {
        let resp =
            ApiError(ServiceError::InvalidRequest("bad query string".into())).into_response();
        return audit_refusal(&svc, &ctx, "admin.tokens.list", resp);
    };
    let filter = TokenFilter {
        subject: q.subject.filter(|s| !s.is_empty()),
        audience: q.audience.filter(|s| !s.is_empty()),
    };
    match svc
        .admin_tokens(&ctx, &creds, filter, page_request(q.limit, q.cursor))
        .await
    {
        Ok(page) => list(
            page.items.iter().map(token_json).collect(),
            page.next_cursor,
        ),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn admin_rotate(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
) -> Response {
    let (ctx, creds) = admin_input(peer, &headers);
    match svc.admin_rotate_keys(&ctx, &creds).await {
        Ok(keys) => json_no_store(
            StatusCode::OK,
            &json!({"keys": keys.iter().map(key_json).collect::<Vec<_>>()}),
        ),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn admin_reload(
    State(svc): State<AppState>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
) -> Response {
    let (ctx, creds) = admin_input(peer, &headers);
    match svc.admin_reload(&ctx, &creds).await {
        Ok(o) => {
            let failed: Vec<Value> = o
                .bundles_failed
                .iter()
                .map(|(td, e)| json!({"trust_domain": td, "error": e}))
                .collect();
            json_no_store(
                StatusCode::OK,
                &json!({"rules": o.rules, "bundles_failed": failed}),
            )
        }
        Err(e) => ApiError(e).into_response(),
    }
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
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let (ctx, creds) = admin_input(peer, &headers);
    let Ok(Query(q)) = query else {
        let resp =
            ApiError(ServiceError::InvalidRequest("bad query string".into())).into_response();
        return audit_refusal(&svc, &ctx, "admin.audit.query", resp);
    };
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => match crate::clock::parse_rfc3339(s) {
            Some(t) => Some(t),
            None => {
                let resp = ApiError(ServiceError::InvalidRequest(
                    "since must be an RFC 3339 time".into(),
                ))
                .into_response();
                return audit_refusal(&svc, &ctx, "admin.audit.query", resp);
            }
        },
        None => None,
    };
    let filter = AuditFilter {
        since,
        subject: q.subject.filter(|s| !s.is_empty()),
        outcome: q.outcome.filter(|s| !s.is_empty()),
    };
    match svc.admin_audit(&ctx, &creds, filter, q.limit).await {
        Ok(events) => {
            let items = events
                .iter()
                .map(|e| serde_json::from_str::<Value>(&e.json).unwrap_or(Value::Null))
                .collect();
            list(items, None)
        }
        Err(e) => ApiError(e).into_response(),
    }
}

async fn metrics(State(svc): State<AppState>, headers: HeaderMap) -> Response {
    if svc.settings().metrics_auth {
        let creds = credentials(&headers).unwrap_or_default();
        if let Err(e) = svc.admin_authorized(&creds) {
            return ApiError(e).into_response();
        }
    }
    let mut resp = svc.render_metrics().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
