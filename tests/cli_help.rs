#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! `tessera --help` is complete: every subcommand says what it does and every option
//! what it means; `tessera completions SHELL` prints a script for that shell.

use clap::CommandFactory as _;
use std::process::Command;

/// Every subcommand, at any depth, with an `about`, and every argument with help.
#[test]
fn every_subcommand_and_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || arg.is_hide_set() {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} --{id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            walk(sub, &sub_path, missing);
        }
    }
    let mut missing = Vec::new();
    let cmd = tessera::cli::Cli::command();
    cmd.clone().debug_assert();
    walk(&cmd, "tessera", &mut missing);
    assert!(missing.is_empty(), "no help text for: {missing:#?}");
}

#[test]
fn help_of_every_subcommand_renders() {
    let bin = env!("CARGO_BIN_EXE_tessera");
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["policy", "check", "--help"],
        vec!["token", "exchange", "--help"],
        vec!["introspect", "--help"],
        vec!["admin", "revoke", "--help"],
        vec!["dev", "jwt-svid", "--help"],
        vec!["completions", "--help"],
    ] {
        let out = Command::new(bin).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: tessera"), "{args:?}: {text}");
    }
    let top = Command::new(bin).arg("--help").output().unwrap();
    let top = String::from_utf8(top.stdout).unwrap();
    for sub in [
        "serve",
        "policy",
        "token",
        "introspect",
        "admin",
        "dev",
        "completions",
    ] {
        assert!(top.contains(sub), "top-level help lists {sub}: {top}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let bin = env!("CARGO_BIN_EXE_tessera");
    for (shell, marker) in [
        ("bash", "complete -F _tessera"),
        ("zsh", "#compdef tessera"),
        ("fish", "complete -c tessera"),
    ] {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        // Subcommands and their options are in the script.
        assert!(script.contains("rotate-keys"), "{shell}");
        assert!(script.contains("subject-token-file"), "{shell}");
    }
    if Command::new("bash").arg("--version").output().is_ok() {
        // The bash script is valid bash (parses and defines the function).
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source <('{}' completions bash) && declare -F _tessera",
                env!("CARGO_BIN_EXE_tessera")
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad = Command::new(bin)
        .args(["completions", "powershell-9"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}

#[test]
fn dev_jwt_svid_refuses_a_ttl_out_of_range() {
    // u64::MAX seconds once wrapped to an exp one second before iat (now refused by
    // parse_duration itself); in-range durations beyond 24h are refused here.
    let bin = env!("CARGO_BIN_EXE_tessera");
    let data_dir = std::env::temp_dir().join("tessera-cli-ttl-no-such-dir");
    for ttl in ["0s", "25h", "36500d"] {
        let out = Command::new(bin)
            .args(["dev", "jwt-svid", "spiffe://dev.local/x", "--audience", "a"])
            .args(["--ttl", ttl, "--data-dir"])
            .arg(&data_dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "--ttl {ttl} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--ttl must be from 1s to 24h"), "{err}");
    }
}
