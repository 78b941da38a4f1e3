//! docs/security.md maps every control to the test that proves it; this keeps those
//! names true: a renamed or deleted test fails here instead of leaving the doc stale.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// `file::test` → tests/file.rs; `[tessera::]a::b::tests::test` → src/a/b.rs (or mod.rs).
fn source_of(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.trim_start_matches("tessera::").split("::").collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let integration = root.join("tests").join(format!("{}.rs", parts[0]));
    if parts.len() == 2 && integration.exists() {
        return std::fs::read_to_string(integration).ok();
    }
    let module = parts[..parts.len().saturating_sub(2)].join("/");
    [format!("src/{module}.rs"), format!("src/{module}/mod.rs")]
        .iter()
        .find_map(|p| std::fs::read_to_string(root.join(p)).ok())
}

fn has_fn(source: &str, name: &str) -> bool {
    source.match_indices(&format!("fn {name}")).any(|(i, m)| {
        source[i + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c == '(' || c == '<')
    })
}

#[test]
fn every_control_row_names_tests_that_exist() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/security.md"))
            .unwrap();
    let controls = doc.split("## Controls").nth(1).unwrap();
    let controls = controls.split("\n## ").next().unwrap();
    let mut rows = 0;
    for row in controls
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
    {
        rows += 1;
        let names: Vec<&str> = row
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| {
                s.contains("::")
                    && s.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':'
                    })
            })
            .collect();
        assert!(!names.is_empty(), "control row names no test: {row}");
        for name in names {
            let test = name.rsplit("::").next().unwrap();
            let source = source_of(name).unwrap_or_else(|| panic!("no source file for `{name}`"));
            assert!(
                has_fn(&source, test),
                "docs/security.md names `{name}`, which does not exist"
            );
        }
    }
    assert!(rows >= 20, "the controls table has {rows} rows");
}

#[test]
fn the_check_would_catch_a_missing_test() {
    let source = source_of("e2e::full_flow_exchange_introspect_admin_revoke_inventory").unwrap();
    assert!(has_fn(
        &source,
        "full_flow_exchange_introspect_admin_revoke_inventory"
    ));
    assert!(!has_fn(
        &source,
        "full_flow_exchange_introspect_admin_revoke_inventor"
    ));
    assert!(!has_fn(&source, "no_such_test_anywhere"));
}
