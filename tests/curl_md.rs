#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! `examples/curl.md` works: its `sh` blocks, run in order by bash against a real
//! `tessera serve --dev` (on free loopback ports), succeed and print what the prose
//! says they print.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sh_blocks(markdown: &str) -> String {
    let mut script = String::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        if line.trim() == "```sh" {
            in_sh = true;
        } else if line.trim() == "```" && in_sh {
            in_sh = false;
        } else if in_sh {
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

#[test]
fn the_curl_walkthrough_runs_against_the_dev_server() {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is not installed; examples/curl.md needs it (apt-get install curl)");
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_tessera"));
    let dir = tempfile::tempdir().unwrap();
    let (public, admin) = (free_port(), free_port());
    let server = Killed(
        Command::new(bin)
            .args(["serve", "--dev", "--listen"])
            .arg(format!("127.0.0.1:{public}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let tessera = format!("http://127.0.0.1:{public}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new("curl")
        .args(["-sf", &format!("{tessera}/readyz")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "dev server did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let script = sh_blocks(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/curl.md"))
            .unwrap(),
    );
    assert!(script.contains("curl"), "no sh blocks found");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("TESSERA", &tessera)
        .env("ADMIN", format!("http://127.0.0.1:{admin}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl.md failed:\n{stdout}\n{stderr}");
    drop(server);

    let lines: Vec<&str> = stdout.lines().collect();
    let find = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle} in:\n{stdout}"))
    };
    // Exchange, refusal, introspection, self-revocation, in that order.
    let issued = find(r#""token_type":"Bearer""#);
    let refused = find(r#""error":"invalid_target""#);
    let active = find(r#""active":true"#);
    let inactive = find(r#"{"active":false}"#);
    assert!(
        issued < refused && refused < active && active < inactive,
        "{stdout}"
    );
    // The subject revocation with block_new, then the blocked exchange.
    let subject = find(r#""kind":"subject""#);
    assert!(lines[subject].contains("block_until"), "{stdout}");
    assert_eq!(lines[subject + 1], r#"{"active":false}"#);
    assert!(
        lines[subject + 2].contains(r#""error":"invalid_grant""#),
        "{stdout}"
    );
    // Operator views and discovery.
    assert!(stdout.contains(r#""keys":[{"#), "{stdout}");
    assert!(
        stdout.contains("tessera_tokens_issued_total{rule="),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(r#""issuer":"{tessera}""#)),
        "{stdout}"
    );
    assert!(stdout.contains(r#"{"status":"ready"}"#), "{stdout}");
}
