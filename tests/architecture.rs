#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! Keeps the dependency direction of docs/architecture.md true: a scan of every source
//! file's references to our own modules and to the heavy external crates.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`src/mint/keys.rs` → `mint`).
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_owned()
}

/// Code without comments, so doc text naming a module does not count as a dependency.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

const OURS: &[&str] = &[
    "app",
    "attest",
    "audit",
    "cli",
    "clock",
    "config",
    "domain",
    "federation",
    "grpc",
    "http",
    "jose",
    "metrics",
    "mint",
    "outbound",
    "policy",
    "revocation",
    "service",
    "workload",
];

/// Which of our modules each module may use.
fn allowed(module: &str) -> &'static [&'static str] {
    match module {
        "clock" | "jose" | "metrics" => &[],
        "domain" => &["clock"],
        "attest" | "policy" | "mint" | "revocation" | "audit" => &["domain", "clock", "jose"],
        "service" => &[
            "attest",
            "audit",
            "clock",
            "config",
            "domain",
            "jose",
            "metrics",
            "mint",
            "policy",
            "revocation",
        ],
        "config" => &["domain", "jose", "policy"],
        "federation" => &["attest", "clock", "config", "domain", "outbound"],
        "outbound" => &["attest"],
        // The two halves of the public listener's transport: `http` mounts the gRPC
        // service and counts requests; `grpc` reuses `http`'s header parsing, request
        // context and its one error mapping.
        "http" => &[
            "service",
            "clock",
            "mint",
            "revocation",
            "audit",
            "jose",
            "grpc",
            "metrics",
        ],
        "grpc" => &["service", "http", "audit", "mint"],
        "workload" => &["attest", "domain"],
        _ => OURS, // app, cli, lib, main wire everything
    }
}

/// External crates that only one place may name.
const CONFINED: &[(&str, &[&str])] = &[
    ("axum::", &["http"]),
    ("ring::", &["jose"]),
    ("josekit::", &["jose"]),
    ("redb::", &["revocation/embedded.rs"]),
    ("redis::", &["revocation/redis.rs"]),
    ("reqwest::", &["cli", "federation.rs", "outbound.rs"]),
    // TLS: the listeners, and the client-certificate verifier of attest.
    ("rustls::", &["attest/x509.rs", "http", "workload"]),
    // The Workload API client (spiffe crate) and the generated gRPC code.
    ("spiffe::", &["workload"]),
    ("tonic::", &["workload", "grpc"]),
    ("prost::", &["workload", "grpc"]),
    ("webpki::", &["attest/x509.rs"]),
    ("x509_parser::", &["attest/x509.rs"]),
    ("SystemTime::now", &["clock"]),
    ("VerifierProof::new", &["attest"]),
];

/// Whether `code` names `needle` as a path start (so `String::` is not `ring::`, and
/// `rustls::crypto::ring::` — TLS provider selection — is not a use of ring's signatures).
fn names(code: &str, needle: &str) -> bool {
    code.match_indices(needle).any(|(i, _)| {
        code[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
    })
}

#[test]
fn modules_only_import_what_the_architecture_allows() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 20, "found too few sources: {}", files.len());
    let mut violations = Vec::new();
    for file in &files {
        let module = module_of(&root, file);
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        // Unit tests inside a module may reach further than its production code.
        let code = code.split("#[cfg(test)]").next().unwrap_or("").to_owned();
        for other in OURS {
            if *other == module {
                continue;
            }
            let uses = code.contains(&format!("crate::{other}::"))
                || code.contains(&format!("crate::{other};"))
                || code.contains(&format!("crate::{other}::{{"))
                || code.contains(&format!("crate::{{{other}"));
            if uses && !allowed(&module).contains(other) {
                violations.push(format!("{rel}: module `{module}` must not use `{other}`"));
            }
        }
        for (needle, places) in CONFINED {
            if names(&code, needle) && !places.iter().any(|p| rel.starts_with(p) || module == *p) {
                // VerifiedIdentity's own definition names the proof type.
                if *needle == "VerifierProof::new" && rel.starts_with("domain/") {
                    continue;
                }
                violations.push(format!(
                    "{rel}: names `{needle}`, which only {places:?} may"
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "architecture violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scan_would_catch_a_violation() {
    // The rule table itself: a policy → mint import must be refused.
    assert!(!allowed("policy").contains(&"mint"));
    assert!(!allowed("domain").contains(&"attest"));
    assert!(code_of("use crate::mint::Minter; // x").contains("crate::mint::"));
    assert!(names("use ring::signature;", "ring::"));
    assert!(!names("String::new()", "ring::"));
    assert!(!code_of("// use crate::mint::Minter;").contains("crate::mint::"));
}
