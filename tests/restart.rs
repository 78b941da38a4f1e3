#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real binary: `serve --config` survives `kill -9` with its revocations and keys;
//! start-up refusals; `policy check`; and the README walkthrough against `serve --dev`
//! (`dev jwt-svid`, `token exchange`, `introspect --assertion-file`, `admin revoke`).

mod common;

use common::*;
use serde_json::{Value, json};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tessera::clock::{Clock as _, SystemClock};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn tessera(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_remove("TESSERA_URL")
        .env_remove("TESSERA_ADMIN_URL")
        .env_remove("TESSERA_ADMIN_TOKEN_FILE")
        .env_remove("TESSERA_CA_FILE")
        .env("TESSERA_LOG", "warn");
    c
}

/// Runs a command to completion, failing the test if it takes longer than `secs`.
fn run(mut cmd: Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "command did not finish in {secs}s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed (SIGKILL, by its own pid) when dropped.
struct Proc {
    child: Child,
    stderr_file: std::path::PathBuf,
}

impl Proc {
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "killed by SIGKILL, not a clean exit"
        );
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` and polls `health_url` until it answers 200. `None` if the process
/// exited first (e.g. the port was taken meanwhile), so the caller can retry.
async fn spawn_until_healthy(
    mut cmd: Command,
    client: &reqwest::Client,
    health_url: &str,
    log: &Path,
) -> Option<Proc> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc {
        child,
        stderr_file: log.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            eprintln!("server exited early ({status}): {}", proc.stderr());
            return None;
        }
        if let Ok(r) = client.get(health_url).send().await
            && r.status() == 200
        {
            return Some(proc);
        }
        assert!(
            Instant::now() < deadline,
            "server never became healthy: {}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tls_client(env: &Env) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(env.pki.ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `serve --config` with the listeners set through the environment overlay.
async fn serve_config(
    env: &Env,
    client: &reqwest::Client,
    ports: Option<(u16, u16)>,
) -> (Proc, u16, u16) {
    for attempt in 0..5 {
        let (p, a) = ports.unwrap_or_else(|| (free_port(), free_port()));
        let mut cmd = tessera(env.path());
        cmd.args(["serve", "--config"])
            .arg(&env.config_path)
            .env("TESSERA_SERVER__LISTEN", format!("127.0.0.1:{p}"))
            .env("TESSERA_ADMIN__LISTEN", format!("127.0.0.1:{a}"))
            .env("TESSERA_LOG", "tessera=trace,warn");
        let log = env.path().join(format!("server-{attempt}-{p}.log"));
        let url = format!("https://127.0.0.1:{p}/healthz");
        if let Some(proc) = spawn_until_healthy(cmd, client, &url, &log).await {
            return (proc, p, a);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("could not start the server");
}

async fn post(client: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = client.post(url).form(form).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn revocations_and_keys_survive_kill_9() {
    let env = Env::new();
    // The binary runs on the system clock; SVIDs are minted against it.
    env.clock.set(SystemClock.now());
    let client = tls_client(&env);
    let (mut proc, p, a) = serve_config(&env, &client, None).await;
    let public = format!("https://127.0.0.1:{p}");
    let exchange = |svid: String| {
        let client = client.clone();
        let url = format!("{public}/token");
        async move {
            post(
                &client,
                &url,
                &[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", &svid),
                    ("subject_token_type", JWT_TYPE),
                    ("audience", LEDGER),
                ],
            )
            .await
        }
    };
    let introspect = |token: String| {
        let client = client.clone();
        let url = format!("{public}/introspect");
        let rs = env.svid(RS, 300);
        async move {
            let (status, v) = post(
                &client,
                &url,
                &[
                    ("token", &token),
                    ("client_assertion_type", JWT_SPIFFE),
                    ("client_assertion", &rs),
                ],
            )
            .await;
            assert_eq!(status, 200, "{v}");
            v
        }
    };
    let jwks_kids = || {
        let client = client.clone();
        let url = format!("{public}/jwks.json");
        async move {
            let v: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };

    let (status, body) = exchange(env.svid(PAYMENTS, 600)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let keep = exchange(env.svid(PAYMENTS_WORKER, 600)).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let kid = jws_part(&token, 0)["kid"].as_str().unwrap().to_owned();
    let jti = jws_part(&token, 1)["jti"].as_str().unwrap().to_owned();
    assert_eq!(introspect(token.clone()).await["active"], true);
    let kids_before = jwks_kids().await;

    let r = client
        .post(format!("https://127.0.0.1:{a}/admin/v1/revocations"))
        .bearer_auth(&env.admin_token)
        .json(&json!({"jti": jti, "reason": "kill -9 test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(introspect(token.clone()).await, json!({"active": false}));

    proc.kill9();
    drop(proc);
    let (proc, _, _) = serve_config(&env, &client, Some((p, a))).await;

    assert_eq!(
        introspect(token.clone()).await,
        json!({"active": false}),
        "the revocation survived the crash"
    );
    assert_eq!(
        introspect(keep.clone()).await["active"],
        true,
        "an unrevoked token is still valid"
    );
    let kids_after = jwks_kids().await;
    assert_eq!(kids_after, kids_before, "the same keys are published");
    let (status, body) = exchange(env.svid(PAYMENTS, 600)).await;
    assert_eq!(status, 200, "{body}");
    let fresh = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jws_part(&fresh, 0)["kid"], kid.as_str(), "same current key");
    assert_eq!(introspect(fresh.clone()).await["active"], true);

    // The process's own audit file and logs (both runs) name jtis, never tokens.
    let audit = std::fs::read_to_string(env.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains(&jti), "the revocation is audited by jti");
    let mut logs = proc.stderr();
    for e in std::fs::read_dir(env.path()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "log") {
            logs.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    for secret in [&token, &keep, &fresh, &env.admin_token] {
        let sig = secret.rsplit('.').next().unwrap();
        assert!(!audit.contains(sig), "a secret in the audit file");
        assert!(!logs.contains(sig), "a secret in the server log");
    }
}

#[test]
fn dev_mode_refuses_a_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tessera(dir.path());
    cmd.args([
        "serve",
        "--dev",
        "--data-dir",
        "data",
        "--listen",
        "0.0.0.0:0",
    ]);
    let out = run(cmd, 20);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--listen 0.0.0.0:0") && err.contains("non-loopback"),
        "{err}"
    );
    let mut cmd = tessera(dir.path());
    cmd.args([
        "serve",
        "--dev",
        "--data-dir",
        "data",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "0.0.0.0:0",
    ]);
    let out = run(cmd, 20);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--admin-listen"), "{}", stderr(&out));
}

#[test]
fn unknown_config_key_stops_start_up_naming_it() {
    let env = Env::new();
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    let bad = env.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("[signing]\n", "[signing]\nrotate_evrey = \"1h\"\n"),
    )
    .unwrap();
    let mut cmd = tessera(env.path());
    cmd.args(["serve", "--config"]).arg(&bad);
    let out = run(cmd, 20);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("rotate_evrey"), "{}", stderr(&out));
    // Control: the unmodified file passes this point (it is the one the other tests serve).
    assert!(tessera::config::load(&env.config_path, &[]).is_ok());
}

#[test]
fn policy_check_prints_the_decision_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let check = |identity: &str, audience: &str, scope: &str| {
        let mut cmd = tessera(dir.path());
        cmd.args([
            "policy",
            "check",
            "--policy",
            "policy.toml",
            "--identity",
            identity,
            "--audience",
            audience,
            "--scope",
            scope,
        ]);
        run(cmd, 20)
    };
    let out = check(PAYMENTS, LEDGER, "ledger:read");
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(
        s.starts_with("GRANT") && s.contains("payments-ledger"),
        "{s}"
    );

    let out = check(PAYMENTS, LEDGER, "ledger:admin");
    assert!(!out.status.success());
    let s = stdout(&out);
    assert!(
        s.starts_with("DENY") && s.contains("invalid_scope") && s.contains("payments-ledger"),
        "{s}"
    );
    let out = check(PAYMENTS, API, "");
    assert!(!out.status.success());
    let s = stdout(&out);
    assert!(s.starts_with("DENY") && s.contains("invalid_target"), "{s}");
}

/// Mirrors the README walkthrough, command for command.
#[tokio::test]
async fn readme_walkthrough_against_a_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client = reqwest::Client::new();
    let mut server = None;
    for attempt in 0..5 {
        let (p, a) = (free_port(), free_port());
        let mut cmd = tessera(d);
        cmd.args([
            "serve",
            "--dev",
            "--listen",
            &format!("127.0.0.1:{p}"),
            "--admin-listen",
            &format!("127.0.0.1:{a}"),
        ]);
        let log = d.join(format!("dev-{attempt}.log"));
        let url = format!("http://127.0.0.1:{p}/healthz");
        if let Some(proc) = spawn_until_healthy(cmd, &client, &url, &log).await {
            server = Some((proc, p, a));
            break;
        }
    }
    let (proc, p, a) = server.expect("dev server started");
    assert!(proc.stderr().contains("DEV MODE"), "the loud warning");
    let url = format!("http://127.0.0.1:{p}");
    let admin_url = format!("http://127.0.0.1:{a}");

    let cli = |args: &[&str]| {
        let mut cmd = tessera(d);
        cmd.args(args);
        let out = run(cmd, 30);
        assert!(
            out.status.success(),
            "tessera {args:?} failed: {}",
            stderr(&out)
        );
        stdout(&out)
    };
    // tessera dev jwt-svid spiffe://dev.local/ns/demo/sa/app --audience http://127.0.0.1:8080 > svid.jwt
    let svid = cli(&[
        "dev",
        "jwt-svid",
        "spiffe://dev.local/ns/demo/sa/app",
        "--audience",
        &url,
    ]);
    std::fs::write(d.join("svid.jwt"), &svid).unwrap();
    // tessera token exchange --subject-token-file svid.jwt --audience https://ledger.dev.local --scope ledger:read > token.jwt
    let token = cli(&[
        "token",
        "exchange",
        "--subject-token-file",
        "svid.jwt",
        "--audience",
        "https://ledger.dev.local",
        "--scope",
        "ledger:read",
        "--url",
        &url,
    ]);
    std::fs::write(d.join("token.jwt"), &token).unwrap();
    let token = token.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a bare JWT on stdout: {token}");
    // tessera dev jwt-svid spiffe://dev.local/ns/demo/sa/resource-server --audience http://127.0.0.1:8080 > rs.jwt
    let rs = cli(&[
        "dev",
        "jwt-svid",
        "spiffe://dev.local/ns/demo/sa/resource-server",
        "--audience",
        &url,
    ]);
    std::fs::write(d.join("rs.jwt"), &rs).unwrap();
    // tessera introspect --assertion-file rs.jwt "$(cat token.jwt)"
    let out = cli(&[
        "introspect",
        "--assertion-file",
        "rs.jwt",
        &token,
        "--url",
        &url,
    ]);
    assert!(out.lines().any(|l| l == "active: true"), "{out}");
    assert!(
        out.contains("sub: spiffe://dev.local/ns/demo/sa/app"),
        "{out}"
    );
    assert!(out.contains("scope: ledger:read"), "{out}");
    let jti = out
        .lines()
        .find_map(|l| l.strip_prefix("jti: "))
        .expect("jti line")
        .to_owned();
    assert_eq!(jws_part(&token, 1)["jti"], jti.as_str());
    // tessera admin revoke --jti "$JTI" --reason "demo"
    let out = cli(&[
        "admin", "revoke", "--jti", &jti, "--reason", "demo", "--url", &admin_url,
    ]);
    assert!(out.contains(&jti), "{out}");
    let out = cli(&[
        "introspect",
        "--assertion-file",
        "rs.jwt",
        &token,
        "--url",
        &url,
    ]);
    assert_eq!(out.trim(), "active: false");
    drop(proc);
}

/// SIGHUP reloads the policy of a running server (and a broken one is refused, keeping
/// the running policy).
#[tokio::test]
async fn sighup_reloads_the_policy() {
    let env = Env::new();
    env.clock.set(SystemClock.now());
    let client = tls_client(&env);
    let (proc, p, _) = serve_config(&env, &client, None).await;
    let url = format!("https://127.0.0.1:{p}/token");
    let new_audience = "https://sighup.example.org";
    let exchange = || {
        let (client, url, svid) = (client.clone(), url.clone(), env.svid(PAYMENTS, 600));
        async move {
            post(
                &client,
                &url,
                &[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", &svid),
                    ("subject_token_type", JWT_TYPE),
                    ("audience", new_audience),
                ],
            )
            .await
        }
    };
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &proc.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP failed");
    };
    let (status, body) = exchange().await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );

    // A broken policy is refused on SIGHUP: the running one still answers.
    let policy = env.path().join("policy.toml");
    let good = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, "[[rule]]\nid = \n").unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exchange().await.0, 400);

    std::fs::write(
        &policy,
        format!(
            "{good}\n[[rule]]\nid = \"sighup-added\"\nmatch.spiffe_id = \"{PAYMENTS}\"\ngrant.audiences = [\"{new_audience}\"]\n"
        ),
    )
    .unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = exchange().await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        proc.stderr().contains("reload on SIGHUP refused"),
        "the refused reload is logged: {}",
        proc.stderr()
    );
}
