#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic
//! The revocation conformance suite against the embedded (redb) store, plus what only an
//! on-disk store has to prove: state survives a reopen and a `kill -9`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use tessera::revocation::conformance::{self, T};
use tessera::revocation::embedded::EmbeddedStore;
use tessera::revocation::{
    AuditFilter, AuditTail, IssuedToken, NewRevocation, RevocationKind, RevocationStore,
    StoredAuditEvent, TokenInventory, TokenRef,
};

/// Set in the child process of `survives_kill_9`: the store path it writes to.
const CHILD_ENV: &str = "TESSERA_STORE_CRASH_CHILD";
const CHILD_DONE: &str = "CRASH-CHILD-DONE";
/// `revoke`: informative writes, then a revocation (durable). `checkpoint`: one
/// informative write on a store whose checkpoint is due at every commit, no revocation.
const CHILD_MODE: &str = "TESSERA_STORE_CRASH_MODE";

fn jti_rev(jti: &str) -> NewRevocation {
    NewRevocation {
        kind: RevocationKind::Jti,
        value: jti.to_owned(),
        reason: "test".to_owned(),
        actor: "test".to_owned(),
        created_at: T,
        expires_at: T + 3600,
        block_until: None,
    }
}

fn token_ref(jti: &str) -> TokenRef<'_> {
    TokenRef {
        jti,
        subject: "spiffe://example.org/workload",
        kid: "k1",
        iat: T - 10,
    }
}

#[tokio::test]
async fn conformance_suite_passes_on_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let results = conformance::run_all(&store).await;
    let mut failed = Vec::new();
    for (name, result) in &results {
        match result {
            Ok(()) => println!("ok      {name}"),
            Err(why) => {
                println!("FAILED  {name}: {why}");
                failed.push(*name);
            }
        }
    }
    assert!(
        results.len() >= 19,
        "suite ran only {} cases",
        results.len()
    );
    assert!(failed.is_empty(), "conformance cases failed: {failed:?}");
}

#[tokio::test]
async fn revocations_survive_reopen_and_ids_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    // A nested path also proves parent directories are created.
    let path = dir.path().join("nested/dir/store.redb");
    let first = {
        let store = EmbeddedStore::open(&path).unwrap();
        let rec = store.revoke(jti_rev("before-restart")).await.unwrap();
        assert!(
            store
                .is_revoked(&token_ref("before-restart"), T)
                .await
                .unwrap()
        );
        rec
    };
    let store = EmbeddedStore::open(&path).unwrap();
    assert!(
        store
            .is_revoked(&token_ref("before-restart"), T)
            .await
            .unwrap(),
        "revocation lost across a reopen"
    );
    let second = store.revoke(jti_rev("after-restart")).await.unwrap();
    assert!(
        second.id > first.id,
        "ids must keep creation order across restarts: {} then {}",
        first.id,
        second.id
    );
    let page = store
        .list_revocations(None, &Default::default(), T)
        .await
        .unwrap();
    let ids: Vec<&str> = page.items.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [first.id.as_str(), second.id.as_str()]);
}

#[test]
fn second_open_of_the_same_file_names_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _held = EmbeddedStore::open(&path).unwrap();
    let err = EmbeddedStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("store unavailable"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("locked by another tessera process?"), "{err}");
}

/// A revocation acknowledged before a SIGKILL is on disk afterwards, and so are the
/// non-durable inventory and audit writes that the durable revoke commit followed.
#[test]
fn survives_kill_9_after_revoke() {
    after_kill_9("revoke", async |store| {
        assert!(
            store.is_revoked(&token_ref("crash-jti"), T).await.unwrap(),
            "revocation acknowledged before the kill is lost"
        );
        let token = store.get_issued("crash-issued").await.unwrap();
        assert!(
            token.is_some(),
            "inventory write before the durable commit is lost"
        );
        let events = store
            .recent_audit(&AuditFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(
            events.len(),
            1,
            "audit write before the durable commit: {events:?}"
        );
    });
}

/// Runs `crash_child` in `mode` on a new store, SIGKILLs it once it says done, and
/// hands the reopened store to `check`.
fn after_kill_9(mode: &str, check: impl AsyncFnOnce(EmbeddedStore)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    run_and_kill_child(&path, mode);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(check(EmbeddedStore::open(&path).unwrap()));
}

fn run_and_kill_child(path: &std::path::Path, mode: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains(CHILD_DONE);
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains(CHILD_DONE)),
        "child ended without finishing: {seen:?}"
    );
    child.kill().unwrap(); // SIGKILL on Unix: no destructors, no clean close
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "child was meant to be killed, exited {status}"
    );
}

/// An inventory write with no revocation after it survives a crash once its checkpoint
/// was due: the writer thread's periodic durable commit is what bounds the loss (with
/// a checkpoint an hour away the same write is lost to the kill).
#[test]
fn informative_write_survives_kill_9_when_its_checkpoint_was_due() {
    after_kill_9("checkpoint", async |store| {
        assert!(
            store.get_issued("crash-issued").await.unwrap().is_some(),
            "inventory write committed at a due checkpoint was lost"
        );
    });
}

/// The child half of the kill -9 tests; does nothing useful on its own.
#[tokio::test]
#[ignore = "run by the kill -9 tests as a child process"]
async fn crash_child() {
    let path = std::env::var_os(CHILD_ENV).expect("crash_child runs only as a child process");
    let checkpoint = std::env::var(CHILD_MODE).as_deref() == Ok("checkpoint");
    let store = if checkpoint {
        EmbeddedStore::open_with(std::path::Path::new(&path), 100, std::time::Duration::ZERO)
    } else {
        EmbeddedStore::open(std::path::Path::new(&path))
    }
    .unwrap();
    let issued = IssuedToken {
        jti: "crash-issued".to_owned(),
        sub: "spiffe://example.org/workload".to_owned(),
        aud: "api".to_owned(),
        scope: None,
        kid: "k1".to_owned(),
        iat: T,
        exp: T + 3600,
    };
    store.record_issued(&issued).await.unwrap();
    if checkpoint {
        println!("{CHILD_DONE}");
        std::thread::sleep(std::time::Duration::from_secs(600));
        panic!("crash_child was not killed");
    }
    let event = StoredAuditEvent {
        ts: T,
        subject: None,
        outcome: "ok".to_owned(),
        json: "{}".to_owned(),
    };
    store.append_audit(&event).await.unwrap();
    store.revoke(jti_rev("crash-jti")).await.unwrap();
    println!("{CHILD_DONE}");
    // Wait to be killed; never close the store cleanly.
    std::thread::sleep(std::time::Duration::from_secs(600));
    panic!("crash_child was not killed");
}
