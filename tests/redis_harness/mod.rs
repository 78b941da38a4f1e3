//! Starts private `redis-server` processes for tests: standalone, a 3-master cluster
//! and master + replica + sentinel. Each listens on a free loopback port (never the
//! machine's 6379), keeps its files in a temp dir and is killed by pid on drop.
//!
//! Without a `redis-server` binary, [`available`] prints a loud SKIPPED line and the
//! test returns early, unless `TESSERA_REQUIRE_REDIS=1`, which turns that into a failure.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn server_bin() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

fn cli_bin() -> PathBuf {
    server_bin()
        .and_then(|s| s.parent().map(|d| d.join("redis-cli")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("redis-cli"))
}

/// Whether Redis tests can run; prints why not, or panics when Redis is required.
pub fn available(test: &str) -> bool {
    if server_bin().is_some() {
        return true;
    }
    if std::env::var("TESSERA_REQUIRE_REDIS").as_deref() == Ok("1") {
        panic!("{test}: redis-server not found and TESSERA_REQUIRE_REDIS=1");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: redis-server not found; {test} did not run. \
         Install redis-server (Debian: apt-get install redis-server) or set \
         TESSERA_REQUIRE_REDIS=1 to make this a failure. !!!!!!!!\n"
    );
    false
}

/// A port free right now (and, for cluster nodes, its bus port +10000 as well).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Sends one command over RESP and returns the raw reply text (enough for tests).
pub fn raw(port: u16, args: &[&str]) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(300),
    )
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(1000))).ok();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `redis-cli -p port args…`, stdout as text.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(cli_bin())
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[], false)
    }

    /// A server with extra arguments (`with_bus`: also keep port+10000 free).
    pub fn start_with(extra: &[&str], with_bus: bool) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..10 {
            let port = free_port(with_bus);
            let mut s = Self {
                port,
                child: None,
                dir: tempfile::tempdir().unwrap(),
                extra: extra.clone(),
            };
            if s.spawn().is_ok() {
                return s;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = server_bin().ok_or("no redis-server")?;
        let mut child = Command::new(bin)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited: {status}"));
            }
            if raw(self.port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG")) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("redis-server did not answer PING".into())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (retrying while the port is released).
    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if start.elapsed() > Duration::from_secs(5) => {
                    panic!("restart on {} failed: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .unwrap();
        }
    }

    pub fn used_memory(&self) -> i64 {
        let info = cli(self.port, &["INFO", "memory"]);
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three masters, no replicas, slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                    true,
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(cli_bin())
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_until("cluster_state:ok", Duration::from_secs(10), || {
                cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
        }
        Self { nodes }
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// A master, one replica and one sentinel watching them as `mymaster`.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel: RedisServer,
    _sentinel_dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> Self {
        let master = RedisServer::start();
        let mport = master.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &mport], false);
        wait_until("replica link up", Duration::from_secs(10), || {
            cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
        });
        // The sentinel rewrites its config file, so it gets its own in its own dir.
        let sentinel_dir = tempfile::tempdir().unwrap();
        let mut sentinel = None;
        for _ in 0..10 {
            let port = free_port(false);
            let conf = sentinel_dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\nprotected-mode no\n\
                     dir {dir}\n\
                     sentinel monitor mymaster 127.0.0.1 {mport} 1\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 3000\n",
                    dir = sentinel_dir.path().display()
                ),
            )
            .unwrap();
            let mut s = RedisServer {
                port,
                child: None,
                dir: tempfile::tempdir().unwrap(),
                extra: Vec::new(),
            };
            let child = Command::new(server_bin().unwrap())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            s.child = Some(child);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if raw(port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG")) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if raw(port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG")) {
                sentinel = Some(s);
                break;
            }
        }
        let sentinel = sentinel.expect("sentinel did not start");
        // Promotable: known, reachable, and with its link to the master up.
        wait_until(
            "sentinel to vet the replica",
            Duration::from_secs(20),
            || {
                let out = cli(sentinel.port, &["SENTINEL", "replicas", "mymaster"]);
                let lines: Vec<&str> = out.lines().map(str::trim).collect();
                let field = |name: &str| {
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1).copied())
                };
                field("port") == Some(replica.port.to_string().as_str())
                    && field("flags") == Some("slave")
                    && field("master-link-status") == Some("ok")
            },
        );
        Self {
            master,
            replica,
            sentinel,
            _sentinel_dir: sentinel_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/mymaster", self.sentinel.port)
    }

    pub fn master_port(&self) -> Option<u16> {
        let out = cli(
            self.sentinel.port,
            &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        );
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}
