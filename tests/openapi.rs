#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! `docs/openapi.yaml` describes the router, both ways, listener by listener:
//!
//! - the file is YAML whose local `$ref`s all resolve, with unique `operationId`s and
//!   declared path parameters;
//! - every route `public_router` and `admin_router` register (`.route(..)` in
//!   `src/http/mod.rs`, read as text on purpose: axum cannot list its routes) is in the
//!   spec with the same methods, on the listener the path's `servers` name, and the spec
//!   lists nothing else;
//! - every operation the spec lists is served by a real server on that listener (not the
//!   unknown-route 404, not 405, never a 5xx).
//!
//! OpenAPI validity and response conformance are checked by `openapi-spec-validator`
//! (`.ci/run`) and schemathesis (docs/operations.md, API schema testing).

mod common;

use common::Env;
use serde_norway::Value;
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Listener {
    Public,
    Admin,
}

/// (listener, METHOD, path template).
type Operations = BTreeSet<(Listener, String, String)>;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn spec() -> Value {
    serde_norway::from_str(&read("docs/openapi.yaml"))
        .unwrap_or_else(|e| panic!("docs/openapi.yaml is not valid YAML: {e}"))
}

/// The listener a server URL belongs to, by port: contract §1 fixes 8443/9443 as the
/// defaults and 8080/9080 as `serve --dev`.
fn listener_of(server: &Value) -> Listener {
    let url = server["url"].as_str().expect("a server without url");
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    match port {
        "8443" | "8080" => Listener::Public,
        "9443" | "9080" => Listener::Admin,
        _ => panic!("server {url}: not a public (8443/8080) or admin (9443/9080) listener"),
    }
}

fn listeners(servers: &Value) -> BTreeSet<Listener> {
    servers
        .as_sequence()
        .expect("servers is a list")
        .iter()
        .map(listener_of)
        .collect()
}

/// Every operation under `paths`, on each listener its `servers` (or the top-level
/// `servers`) name.
fn spec_operations(spec: &Value) -> Operations {
    let default = listeners(&spec["servers"]);
    let mut ops = Operations::new();
    for (path, item) in spec["paths"].as_mapping().expect("paths is a mapping") {
        let path = path.as_str().unwrap();
        assert!(path.starts_with('/'), "path {path:?}");
        let on = match item.get("servers") {
            Some(s) => listeners(s),
            None => default.clone(),
        };
        let item = item.as_mapping().unwrap();
        let methods: Vec<&str> = item
            .keys()
            .filter_map(Value::as_str)
            .filter(|k| METHODS.contains(k))
            .collect();
        assert!(!methods.is_empty(), "{path} has no operation");
        for m in methods {
            for l in &on {
                ops.insert((*l, m.to_uppercase(), path.to_owned()));
            }
        }
    }
    ops
}

/// Every `{"$ref": "#/…"}` names a node of the document.
fn check_refs(root: &Value, node: &Value, at: &str) {
    match node {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().unwrap_or("?");
                if k == "$ref" {
                    let target = v.as_str().expect("$ref is a string");
                    let pointer = target
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("{at}: external $ref {target}"));
                    let mut cur = root;
                    for part in pointer.split('/').skip(1) {
                        let part = part.replace("~1", "/").replace("~0", "~");
                        cur = cur
                            .get(part.as_str())
                            .unwrap_or_else(|| panic!("{at}: $ref {target} does not resolve"));
                    }
                } else {
                    check_refs(root, v, &format!("{at}/{k}"));
                }
            }
        }
        Value::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                check_refs(root, v, &format!("{at}/{i}"));
            }
        }
        _ => {}
    }
}

#[test]
fn the_spec_is_yaml_with_resolving_refs_unique_ids_and_declared_path_parameters() {
    let spec = spec();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3."),
        "not OpenAPI 3"
    );
    check_refs(&spec, &spec, "#");
    let mut ids = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if !METHODS.contains(&method) {
                continue;
            }
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            assert!(
                op["responses"].as_mapping().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            let declared: BTreeSet<&str> = op
                .get("parameters")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter(|p| p["in"].as_str() == Some("path"))
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            let templated: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, templated, "{method} {path}: path parameters");
        }
    }
}

/// The text of `fn NAME(` up to the first line that is exactly `}`.
fn function_body<'a>(source: &'a str, name: &str) -> &'a str {
    let start = source
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name} in src/http/mod.rs"));
    let len = source[start..].find("\n}\n").expect("end of function");
    &source[start..start + len]
}

/// The text between the parenthesis at `open` and its match, skipping string literals.
fn balanced(text: &str, open: usize) -> &str {
    let bytes = text.as_bytes();
    assert_eq!(bytes[open], b'(');
    let (mut depth, mut i, mut in_str) = (0usize, open, false);
    while i < bytes.len() {
        match (in_str, bytes[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') => in_str = false,
            (true, _) => {}
            (false, b'"') => in_str = true,
            (false, b'(') => depth += 1,
            (false, b')') => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..i];
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced parentheses in {}", &text[open..]);
}

/// The calls at nesting depth 0 of a method router expression such as
/// `post(admin_revoke).get(admin_revocations)`: `["post", "get"]`.
fn top_level_calls(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut calls = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'(' {
            i += balanced(expr, i).len() + 2;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            if bytes.get(i) == Some(&b'(') {
                calls.push(expr[start..i].to_owned());
            }
            continue;
        }
        i += 1;
    }
    calls
}

/// (listener, METHOD, path) of every `.route("PATH", get(..).post(..))` in one router
/// function. Any other way of adding HTTP routes fails here, so that it gets read too.
fn router_operations(source: &str, function: &str, listener: Listener) -> Operations {
    let body = function_body(source, function);
    for builder in [".nest(", ".nest_service(", ".merge("] {
        assert!(
            !body.contains(builder),
            "{function} uses {builder}..): teach tests/openapi.rs to read it"
        );
    }
    let mut ops = Operations::new();
    for (at, _) in body.match_indices(".route_service(") {
        let args = balanced(body, at + ".route_service".len());
        let path = args.split('"').nth(1).expect("a path literal");
        assert!(
            path.starts_with("/tessera.v1."),
            "{function}: route_service {path} is not gRPC; describe it in the spec and here"
        );
    }
    for (at, _) in body.match_indices(".route(") {
        let args = balanced(body, at + ".route".len());
        let mut parts = args.splitn(3, '"');
        let (_, path, rest) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let mut methods = 0;
        for call in top_level_calls(rest) {
            let call = call.rsplit("::").next().unwrap().to_owned();
            if METHODS.contains(&call.as_str()) {
                ops.insert((listener, call.to_uppercase(), path.to_owned()));
                methods += 1;
            } else if !["layer", "route_layer"].contains(&call.as_str()) {
                panic!("{function}: route {path}: unknown method router call {call}(..)");
            }
        }
        assert!(methods > 0, "{function}: no method found for route {path}");
    }
    ops
}

fn router() -> Operations {
    let source = read("src/http/mod.rs");
    let mut ops = router_operations(&source, "public_router", Listener::Public);
    ops.extend(router_operations(&source, "admin_router", Listener::Admin));
    ops
}

#[test]
fn the_source_parser_reads_route_chains() {
    let src = r#"
pub fn r(svc: S) -> Router {
    Router::new()
        .route("/a", post(a))
        .route(
            "/b/{id}",
            axum::routing::get(b).delete(with(c, "x)")).layer(l),
        )
        .route_service("/tessera.v1.T/{*m}", svc(x))
        .with_state(svc)
}
"#;
    let ops = router_operations(src, "r", Listener::Admin);
    let want: Operations = [
        (Listener::Admin, "POST".into(), "/a".into()),
        (Listener::Admin, "GET".into(), "/b/{id}".into()),
        (Listener::Admin, "DELETE".into(), "/b/{id}".into()),
    ]
    .into();
    assert_eq!(ops, want);
}

#[test]
fn every_router_route_is_in_the_spec_on_its_listener_and_nothing_else() {
    let spec = spec_operations(&spec());
    let router = router();
    for must in [
        (Listener::Public, "POST", "/token"),
        (Listener::Public, "GET", "/healthz"),
        (Listener::Admin, "GET", "/healthz"),
        (Listener::Admin, "DELETE", "/admin/v1/revocations/{id}"),
        (Listener::Admin, "GET", "/metrics"),
    ] {
        let must = (must.0, must.1.to_owned(), must.2.to_owned());
        assert!(router.contains(&must), "parser missed {must:?}: {router:?}");
    }
    let missing: Vec<_> = router.difference(&spec).collect();
    let extra: Vec<_> = spec.difference(&router).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/openapi.yaml and src/http/mod.rs differ:\n  routed but not in the spec: {missing:?}\n  in the spec but not routed: {extra:?}"
    );
}

#[tokio::test]
async fn every_spec_operation_is_served_on_its_listener() {
    let srv = Env::new().start().await;
    let base = |l: Listener| match l {
        Listener::Public => &srv.public,
        Listener::Admin => &srv.admin,
    };
    // The two answers this test tells apart from a served route.
    for l in [Listener::Public, Listener::Admin] {
        let resp = srv
            .client
            .get(format!("{}/no/such/route", base(l)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        assert!(resp.text().await.unwrap().contains("no such endpoint"));
    }
    let resp = srv
        .client
        .get(format!("{}/token", srv.public))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);

    let ops = spec_operations(&spec());
    assert!(ops.len() >= 17, "{ops:?}");
    for (listener, method, path) in ops {
        let url = format!(
            "{}{}",
            base(listener),
            path.replace("{id}", "0000000000000000")
        );
        let resp = srv
            .client
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        let what = format!("{method} {path} on the {listener:?} listener: {status} {body}");
        assert_ne!(status, 405, "{what}");
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "not routed: {what}"
        );
        assert!(status < 500, "{what}");
    }
}
