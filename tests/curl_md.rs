#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! `examples/curl.md` works: its `sh` blocks, run in order as one `bash -euo pipefail`
//! script against a real `tessera serve --dev` (on free loopback ports, through
//! `--listen`/`--admin-listen`), succeed and print what the prose says they print.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// Waits for the child to exit, killing it after `limit`.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lines of every ```sh block, in order.
fn sh_blocks(markdown: &str) -> String {
    let mut script = String::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        match line.trim_end() {
            "```sh" if !in_sh => in_sh = true,
            "```" if in_sh => in_sh = false,
            _ if in_sh => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!in_sh, "examples/curl.md: an sh block is not closed");
    script
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Each needle is found on a line after the previous needle's line; a needle starting
/// with `=` must be the whole line. Returns the matched line numbers.
fn in_order(stdout: &str, needles: &[&str]) -> Vec<usize> {
    let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    let mut from = 0;
    let mut found = Vec::new();
    for needle in needles {
        let hit = lines[from..]
            .iter()
            .position(|l| match needle.strip_prefix('=') {
                Some(whole) => *l == whole,
                None => l.contains(needle),
            });
        let at = from
            + hit.unwrap_or_else(|| {
                panic!("no line with {needle:?} after line {from} of the output:\n{stdout}")
            });
        found.push(at);
        from = at + 1;
    }
    found
}

#[test]
fn the_curl_walkthrough_runs_against_the_dev_server() {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is not installed; examples/curl.md needs it"
    );
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tessera"));
    let dir = tempfile::tempdir().unwrap();
    let server_log = dir.path().join("server.log");
    let (public, admin) = (free_port(), free_port());
    let tessera = format!("http://127.0.0.1:{public}");
    let admin_url = format!("http://127.0.0.1:{admin}");
    let mut server = KillOnDrop(
        Command::new(&bin)
            .args(["serve", "--dev", "--listen"])
            .arg(format!("127.0.0.1:{public}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .current_dir(dir.path())
            .stdout(std::fs::File::create(&server_log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options()
                    .append(true)
                    .open(&server_log)
                    .unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!(
                "tessera serve --dev exited ({status}) before it was ready (ports {public}/{admin} taken?):\n{}",
                log(&server_log)
            );
        }
        let ready = Command::new("curl")
            .args(["-sf", "--max-time", "2", &format!("{tessera}/readyz")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dev server not ready after 60 s:\n{}",
            log(&server_log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let script = sh_blocks(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/curl.md"))
            .unwrap(),
    );
    assert!(script.contains("curl "), "no sh blocks found");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut bash = KillOnDrop(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .env("PATH", path)
            .env("TESSERA", &tessera)
            .env("ADMIN", &admin_url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = bash.wait_for(Duration::from_secs(120));
    let (stdout, stderr) = (log(&out_path), log(&err_path));
    assert!(
        status.is_some_and(|s| s.success()),
        "examples/curl.md failed ({status:?}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server\n{}",
        log(&server_log)
    );
    drop(server);

    let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    let at = in_order(
        &stdout,
        &[
            // Exchange, refusal, introspection, self-revocation.
            r#""token_type":"Bearer""#,
            r#""error":"invalid_target""#,
            r#""active":true"#,
            r#"={"active":false}"#,
            // Admin jti revocation.
            r#""kind":"jti""#,
            r#"={"active":false}"#,
            // Subject revocation with block_new, then the blocked exchange.
            r#""kind":"subject""#,
            r#"={"active":false}"#,
            r#""error":"invalid_grant""#,
            // Listing, lifting, and a token again.
            r#"{"items":[{"#,
            "=204",
            r#""token_type":"Bearer""#,
            // Operator views.
            r#""keys":[{"#,
            "tessera_tokens_issued_total{rule=",
            " 401",
            "www-authenticate: ",
            // Discovery and health.
            r#"{"keys":[{"#,
            &format!(r#""issuer":"{tessera}""#),
            &format!("={tessera}/jwks.json"),
            r#"={"status":"ok"}"#,
            r#"={"status":"ready"}"#,
        ],
    );
    let active = lines[at[2]];
    assert!(
        active.contains(r#""sub":"spiffe://dev.local/ns/demo/sa/app""#)
            && active.contains(r#""scope":"ledger:read""#),
        "{active}"
    );
    // Each revocation answer is followed directly by the inactive introspection.
    assert_eq!(at[5], at[4] + 1, "{stdout}");
    assert_eq!(at[7], at[6] + 1, "{stdout}");
    assert_eq!(at[8], at[7] + 1, "{stdout}");
    assert!(lines[at[6]].contains(r#""block_until":"#), "{stdout}");
    assert_eq!(at[11], at[10] + 1, "{stdout}");
}
