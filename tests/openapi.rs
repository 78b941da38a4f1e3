#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! `docs/openapi.yaml` describes the router, both ways: every operation it lists is
//! served by a real server (not the unknown-route 404, not 405), and every route the
//! router registers (`.route(..)` in `src/http/mod.rs`, read as text on purpose: axum
//! cannot list its routes) is in the spec with the same methods. Schema validity and
//! response conformance are checked by `openapi-spec-validator` and schemathesis
//! (docs/operations.md, API schema testing).

mod common;

use common::Env;
use std::collections::BTreeSet;
use std::path::Path;

type Operations = BTreeSet<(String, String)>;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// (METHOD, path) of every operation under `paths:`: path keys are indented two
/// spaces, methods four (the file's own layout; a YAML reformat that breaks this fails
/// loudly, below).
fn spec_operations(yaml: &str) -> Operations {
    let mut ops = Operations::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = Some(format!("/{}", p.trim_matches('\'')));
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            && !m.starts_with(' ')
            && ["get", "post", "put", "delete", "patch"].contains(&m)
        {
            ops.insert((m.to_uppercase(), path.clone().unwrap()));
        }
    }
    assert!(ops.len() > 10, "parsed too few operations: {ops:?}");
    ops
}

/// (METHOD, path) of every `.route("PATH", get(..).post(..))` in the router source.
fn router_operations(source: &str) -> Operations {
    let mut ops = Operations::new();
    for chunk in source.split(".route(").skip(1) {
        // The route's arguments end where the next builder call starts.
        let args = chunk
            .split(['\n'])
            .take_while(|l| !l.trim_start().starts_with(".route") && !l.contains(".fallback("))
            .collect::<Vec<_>>()
            .join(" ");
        let path = args.split('"').nth(1).unwrap().to_owned();
        let mut found = false;
        for method in ["get", "post", "put", "delete", "patch"] {
            let token = format!("{method}(");
            let hit = args.match_indices(&token).any(|(i, _)| {
                i == 0
                    || !args.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && args.as_bytes()[i - 1] != b'_'
            });
            if hit {
                ops.insert((method.to_uppercase(), path.clone()));
                found = true;
            }
        }
        assert!(found, "no method found for route {path}: {args}");
    }
    ops
}

#[test]
fn every_router_route_is_in_the_spec_and_nothing_else() {
    let spec = spec_operations(&read("docs/openapi.yaml"));
    let router = router_operations(&read("src/http/mod.rs"));
    assert!(
        router.contains(&("POST".into(), "/token".into())),
        "{router:?}"
    );
    assert!(
        router.contains(&("DELETE".into(), "/admin/v1/revocations/{id}".into())),
        "{router:?}"
    );
    let missing: Vec<_> = router.difference(&spec).collect();
    let extra: Vec<_> = spec.difference(&router).collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/openapi.yaml: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/openapi.yaml lists what the router does not serve: {extra:?}"
    );
}

#[tokio::test]
async fn every_spec_operation_is_served_by_the_real_server() {
    let srv = Env::new().start().await;
    for (method, path) in spec_operations(&read("docs/openapi.yaml")) {
        let base = if path.starts_with("/admin/") || path == "/metrics" {
            &srv.admin
        } else {
            &srv.public
        };
        let url = format!("{base}{}", path.replace("{id}", "0000000000000000"));
        let resp = srv
            .client
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "{method} {path} is not routed: {body}"
        );
        assert!(
            status < 500 || path == "/readyz",
            "{method} {path}: {status} {body}"
        );
    }
}
