//! The signing key ring: one current key (signs), one next key (published ahead of use,
//! contract §2 `signing.prepublish`), and retired keys kept in the JWKS until the last
//! token they signed has expired. Persisted as one file, written atomically, mode 0600.
//!
//! Replicas share `signing.key_dir`: changes (rotation, kid revocation) happen under an
//! exclusive file lock on the freshest file, and every replica re-reads the file when it
//! changed — on a token with an unknown kid (at most once a second) and periodically.

use crate::clock::UnixSeconds;
use crate::jose::{self, SigningAlg, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use zeroize::{Zeroize as _, Zeroizing};

pub const RING_FILE: &str = "keyring.json";
const LOCK_FILE: &str = "keyring.lock";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key ring {path}: {cause}")]
    Io { path: String, cause: String },
    #[error("key ring {path} is damaged: {cause}")]
    Corrupt { path: String, cause: String },
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("key {0} is not in the key ring")]
    UnknownKid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Current,
    Next,
    Retired,
    /// Removed by a kid revocation: neither published nor trusted, kept only so that
    /// lifting the revocation can bring it back (until no token of it can be alive).
    Revoked,
}

/// A key with its life-cycle times.
pub struct ManagedKey {
    pub key: SigningKey,
    pub verifier: VerifyingKey,
    pub state: KeyState,
    pub created_at: UnixSeconds,
    pub activated_at: Option<UnixSeconds>,
    pub retired_at: Option<UnixSeconds>,
}

impl std::fmt::Debug for ManagedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedKey")
            .field("key", &self.key)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    alg: SigningAlg,
    state: KeyState,
    created_at: UnixSeconds,
    #[serde(default)]
    activated_at: Option<UnixSeconds>,
    #[serde(default)]
    retired_at: Option<UnixSeconds>,
    /// base64url PKCS#8 DER.
    pkcs8: String,
}

/// The private key text is wiped when the serialized form is dropped.
impl Drop for StoredKey {
    fn drop(&mut self) {
        self.pkcs8.zeroize();
    }
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg.as_str())
            .field("state", &self.state)
            .field("pkcs8", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredRing {
    version: u32,
    keys: Vec<StoredKey>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: &'static str,
    pub state: KeyState,
    pub created_at: UnixSeconds,
}

struct RingState {
    current: Arc<ManagedKey>,
    next: Arc<ManagedKey>,
    retired: Vec<Arc<ManagedKey>>,
    revoked: Vec<Arc<ManagedKey>>,
}

pub struct KeyRing {
    dir: PathBuf,
    alg: SigningAlg,
    /// How long a retired key must stay verifiable: the longest token life plus leeway.
    retain_for: u64,
    state: RwLock<RingState>,
    /// SHA-256 of the file contents the in-memory ring was read from or written as.
    loaded_digest: std::sync::Mutex<[u8; 32]>,
    last_refresh: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({})", self.dir.display())
    }
}

fn managed(
    key: SigningKey,
    state: KeyState,
    created_at: UnixSeconds,
    activated_at: Option<UnixSeconds>,
    retired_at: Option<UnixSeconds>,
) -> Result<Arc<ManagedKey>, KeyError> {
    let verifier = key
        .verifying_key()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(Arc::new(ManagedKey {
        key,
        verifier,
        state,
        created_at,
        activated_at,
        retired_at,
    }))
}

fn fresh(alg: SigningAlg, state: KeyState, now: UnixSeconds) -> Result<Arc<ManagedKey>, KeyError> {
    let key = SigningKey::generate(alg).map_err(|e| KeyError::Generate(e.to_string()))?;
    let activated = (state == KeyState::Current).then_some(now);
    managed(key, state, now, activated, None)
}

impl KeyRing {
    /// Loads the ring from `dir`, or creates one (current + next) if there is none.
    pub fn open(
        dir: &Path,
        alg: SigningAlg,
        retain_for: u64,
        now: UnixSeconds,
    ) -> Result<Self, KeyError> {
        std::fs::create_dir_all(dir).map_err(|e| KeyError::Io {
            path: dir.display().to_string(),
            cause: e.to_string(),
        })?;
        let _lock = lock_dir(dir)?;
        let path = dir.join(RING_FILE);
        let (state, digest) = match std::fs::read(&path).map(Zeroizing::new) {
            Ok(bytes) => (Self::decode(&path, &bytes)?, jose::sha256(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                RingState {
                    current: fresh(alg, KeyState::Current, now)?,
                    next: fresh(alg, KeyState::Next, now)?,
                    retired: Vec::new(),
                    revoked: Vec::new(),
                },
                [0; 32],
            ),
            Err(e) => {
                return Err(KeyError::Io {
                    path: path.display().to_string(),
                    cause: e.to_string(),
                });
            }
        };
        let ring = Self {
            dir: dir.to_owned(),
            alg,
            retain_for,
            state: RwLock::new(state),
            loaded_digest: std::sync::Mutex::new(digest),
            last_refresh: std::sync::atomic::AtomicI64::new(now),
        };
        // A changed `signing.algorithm` takes effect through the next key, so the
        // published-ahead rule still holds.
        {
            let mut st = ring.write();
            if st.next.key.alg() != alg {
                st.next = fresh(alg, KeyState::Next, now)?;
            }
        }
        ring.persist()?;
        Ok(ring)
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<RingState, KeyError> {
        let corrupt = |cause: String| KeyError::Corrupt {
            path: path.display().to_string(),
            cause,
        };
        let stored: StoredRing =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let (mut current, mut next, mut retired, mut revoked) =
            (None, None, Vec::new(), Vec::new());
        for k in &stored.keys {
            let der =
                Zeroizing::new(jose::b64url_decode(&k.pkcs8).map_err(|e| corrupt(e.to_string()))?);
            let key = SigningKey::from_pkcs8(k.alg, &der).map_err(|e| corrupt(e.to_string()))?;
            if key.kid() != k.kid {
                return Err(corrupt(format!("key {} does not match its kid", k.kid)));
            }
            let m = managed(key, k.state, k.created_at, k.activated_at, k.retired_at)?;
            match k.state {
                KeyState::Current => current = Some(m),
                KeyState::Next => next = Some(m),
                KeyState::Retired => retired.push(m),
                KeyState::Revoked => revoked.push(m),
            }
        }
        match (current, next) {
            (Some(current), Some(next)) => Ok(RingState {
                current,
                next,
                retired,
                revoked,
            }),
            _ => Err(corrupt("needs exactly one current and one next key".into())),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RingState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RingState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the ring to a temp file, fsyncs, renames over the old one: a crash leaves
    /// either the old or the new ring, never half of one.
    fn persist(&self) -> Result<(), KeyError> {
        let st = self.read();
        let keys = std::iter::once(&st.current)
            .chain(std::iter::once(&st.next))
            .chain(st.retired.iter())
            .chain(st.revoked.iter())
            .map(|m| StoredKey {
                kid: m.key.kid().to_owned(),
                alg: m.key.alg(),
                state: m.state,
                created_at: m.created_at,
                activated_at: m.activated_at,
                retired_at: m.retired_at,
                pkcs8: jose::b64url(m.key.pkcs8()),
            })
            .collect();
        let json = Zeroizing::new(
            serde_json::to_vec_pretty(&StoredRing { version: 1, keys }).map_err(|e| {
                KeyError::Io {
                    path: self.dir.display().to_string(),
                    cause: e.to_string(),
                }
            })?,
        );
        drop(st);
        write_private_file(&self.dir.join(RING_FILE), &json).map_err(|e| KeyError::Io {
            path: self.dir.join(RING_FILE).display().to_string(),
            cause: e.to_string(),
        })?;
        *self
            .loaded_digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = jose::sha256(&json);
        Ok(())
    }

    /// Re-reads the ring file if another replica changed it. Without `force`, at most
    /// once per second. Returns whether the in-memory ring changed.
    pub fn refresh(&self, now: UnixSeconds, force: bool) -> Result<bool, KeyError> {
        use std::sync::atomic::Ordering;
        if !force && now <= self.last_refresh.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.last_refresh.store(now, Ordering::Relaxed);
        let path = self.dir.join(RING_FILE);
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            cause: e.to_string(),
        })?);
        let digest = jose::sha256(&bytes);
        let mut loaded = self
            .loaded_digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *loaded == digest {
            return Ok(false);
        }
        let state = Self::decode(&path, &bytes)?;
        *self.write() = state;
        *loaded = digest;
        Ok(true)
    }

    /// `find`, re-reading the shared file once if the kid is unknown (another replica
    /// may have rotated).
    pub fn find_or_refresh(&self, kid: &str, now: UnixSeconds) -> Option<Arc<ManagedKey>> {
        if let Some(k) = self.find(kid) {
            return Some(k);
        }
        match self.refresh(now, false) {
            Ok(true) => self.find(kid),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, "key ring refresh failed");
                None
            }
        }
    }

    pub fn current(&self) -> Arc<ManagedKey> {
        self.read().current.clone()
    }

    /// The key that signed a token with this `kid`, if it is still trusted.
    pub fn find(&self, kid: &str) -> Option<Arc<ManagedKey>> {
        let st = self.read();
        std::iter::once(&st.current)
            .chain(std::iter::once(&st.next))
            .chain(st.retired.iter())
            .find(|m| m.key.kid() == kid)
            .cloned()
    }

    /// Public keys for the JWKS: current, next, and retired keys still needed.
    pub fn public_jwks(&self, now: UnixSeconds) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let st = self.read();
        std::iter::once(&st.current)
            .chain(std::iter::once(&st.next))
            .chain(st.retired.iter().filter(|m| self.still_needed(m, now)))
            .map(|m| m.key.public_jwk())
            .collect()
    }

    fn still_needed(&self, m: &ManagedKey, now: UnixSeconds) -> bool {
        m.retired_at
            .is_none_or(|r| r.saturating_add(self.retain_for as i64) > now)
    }

    pub fn info(&self) -> Vec<KeyInfo> {
        let st = self.read();
        std::iter::once(&st.current)
            .chain(std::iter::once(&st.next))
            .chain(st.retired.iter())
            .map(|m| KeyInfo {
                kid: m.key.kid().to_owned(),
                alg: m.key.alg().as_str(),
                state: m.state,
                created_at: m.created_at,
            })
            .collect()
    }

    /// Promotes next to current, retires current, creates a new next (admin rotate and
    /// scheduled rotation).
    pub fn rotate(&self, now: UnixSeconds) -> Result<(), KeyError> {
        let _lock = lock_dir(&self.dir)?;
        self.refresh(now, true)?;
        self.rotate_locked(now)
    }

    fn rotate_locked(&self, now: UnixSeconds) -> Result<(), KeyError> {
        let new_next = fresh(self.alg, KeyState::Next, now)?;
        {
            let mut st = self.write();
            let old = st.current.clone();
            let promoted = &st.next;
            let current = Arc::new(ManagedKey {
                key: SigningKey::from_pkcs8(promoted.key.alg(), promoted.key.pkcs8())
                    .map_err(|e| KeyError::Generate(e.to_string()))?,
                verifier: promoted
                    .key
                    .verifying_key()
                    .map_err(|e| KeyError::Generate(e.to_string()))?,
                state: KeyState::Current,
                created_at: promoted.created_at,
                activated_at: Some(now),
                retired_at: None,
            });
            let retired = restate(&old, KeyState::Retired, Some(now))?;
            st.retired.retain(|m| self.still_needed(m, now));
            st.revoked.retain(|m| self.still_needed(m, now));
            st.retired.push(retired);
            st.current = current;
            st.next = new_next;
        }
        self.persist()
    }

    /// Scheduled rotation: under the lock and on the freshest file, so replicas that
    /// notice at the same moment rotate once, not once each. Returns whether it rotated.
    pub fn rotate_if_due(
        &self,
        now: UnixSeconds,
        rotate_every: u64,
        prepublish: u64,
    ) -> Result<bool, KeyError> {
        if !self.rotation_due(now, rotate_every, prepublish) {
            return Ok(false);
        }
        let _lock = lock_dir(&self.dir)?;
        self.refresh(now, true)?;
        if !self.rotation_due(now, rotate_every, prepublish) {
            return Ok(false);
        }
        self.rotate_locked(now)?;
        Ok(true)
    }

    /// Scheduled rotation is due when the current key has signed for `rotate_every` and
    /// the next key has been published for at least `prepublish`.
    pub fn rotation_due(&self, now: UnixSeconds, rotate_every: u64, prepublish: u64) -> bool {
        let st = self.read();
        let active_since = st.current.activated_at.unwrap_or(st.current.created_at);
        now >= active_since.saturating_add(rotate_every as i64)
            && now >= st.next.created_at.saturating_add(prepublish as i64)
    }

    /// Takes a key out of use (kid revocation, contract §3): no longer published or
    /// trusted. Revoking the current key first rotates, so issuance never stops; revoking
    /// the next key replaces it. The key is kept aside so `restore` can undo this.
    pub fn remove(&self, kid: &str, now: UnixSeconds) -> Result<(), KeyError> {
        let _lock = lock_dir(&self.dir)?;
        self.refresh(now, true)?;
        let (is_current, is_next, is_retired) = {
            let st = self.read();
            (
                st.current.key.kid() == kid,
                st.next.key.kid() == kid,
                st.retired.iter().any(|m| m.key.kid() == kid),
            )
        };
        if is_current {
            self.rotate_locked(now)?;
        } else if is_next {
            let replacement = fresh(self.alg, KeyState::Next, now)?;
            let mut st = self.write();
            let old = std::mem::replace(&mut st.next, replacement);
            st.retired
                .push(restate(&old, KeyState::Retired, Some(now))?);
        } else if !is_retired {
            return Err(KeyError::UnknownKid(kid.to_owned()));
        }
        {
            let mut st = self.write();
            if let Some(pos) = st.retired.iter().position(|m| m.key.kid() == kid) {
                let m = st.retired.remove(pos);
                let retired_at = m.retired_at.or(Some(now));
                st.revoked.push(restate(&m, KeyState::Revoked, retired_at)?);
            }
        }
        self.persist()
    }

    /// Undoes `remove` (a lifted kid revocation): the key is published and trusted again
    /// as a retired key. Returns whether the key was found.
    pub fn restore(&self, kid: &str, now: UnixSeconds) -> Result<bool, KeyError> {
        let _lock = lock_dir(&self.dir)?;
        self.refresh(now, true)?;
        {
            let mut st = self.write();
            let Some(pos) = st.revoked.iter().position(|m| m.key.kid() == kid) else {
                return Ok(false);
            };
            let m = st.revoked.remove(pos);
            st.retired
                .push(restate(&m, KeyState::Retired, m.retired_at)?);
        }
        self.persist()?;
        Ok(true)
    }
}

/// A copy of `m` in another life-cycle state (signing keys are not `Clone`).
fn restate(
    m: &ManagedKey,
    state: KeyState,
    retired_at: Option<UnixSeconds>,
) -> Result<Arc<ManagedKey>, KeyError> {
    let key = SigningKey::from_pkcs8(m.key.alg(), m.key.pkcs8())
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    managed(key, state, m.created_at, m.activated_at, retired_at)
}

/// Serialises ring changes across processes sharing the directory (released on drop).
fn lock_dir(dir: &Path) -> Result<std::fs::File, KeyError> {
    let path = dir.join(LOCK_FILE);
    let io = |e: std::io::Error| KeyError::Io {
        path: path.display().to_string(),
        cause: e.to_string(),
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    f.lock().map_err(io)?;
    Ok(f)
}

/// Atomically replaces `path` with `bytes`, readable by the owner only.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text form the secret could take in a log: hex, base64url, base64 (the body
    /// of a PEM file, also line by line), and 16-character pieces of each.
    fn assert_no_secret(debug: &str, secret: &[u8]) {
        use base64::Engine as _;
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let forms = [jose::hex(secret), jose::b64url(secret), std_b64.clone()];
        for form in &forms {
            let chars: Vec<char> = form.chars().collect();
            for piece in chars.chunks(16).filter(|c| c.len() == 16) {
                let piece: String = piece.iter().collect();
                assert!(
                    !debug.contains(&piece),
                    "{debug:?} shows secret text {piece}"
                );
            }
        }
        for line in std_b64.as_bytes().chunks(64) {
            let line = String::from_utf8_lossy(line);
            assert!(!debug.contains(line.as_ref()), "{debug:?} shows a PEM line");
        }
        assert!(
            !String::from_utf8_lossy(secret).contains(debug),
            "Debug output is part of the secret"
        );
    }

    #[test]
    fn debug_of_key_material_is_redacted() {
        for alg in [SigningAlg::ES256, SigningAlg::EdDSA, SigningAlg::RS256] {
            let key = SigningKey::generate(alg).unwrap();
            let secret = key.pkcs8().to_vec();
            let shown = format!("{key:?}");
            assert_no_secret(&shown, &secret);
            // The check itself sees each form a leak could take.
            use base64::Engine as _;
            let pem = base64::engine::general_purpose::STANDARD.encode(&secret);
            for leak in [
                jose::hex(&secret),
                jose::b64url(&secret),
                pem[..64].to_owned(),
            ] {
                let leaked = format!("SigningKey {{ private: {leak} }}");
                let caught = std::panic::catch_unwind(|| assert_no_secret(&leaked, &secret));
                assert!(caught.is_err(), "missed {leaked}");
            }
            assert!(
                shown.contains("<redacted>") && shown.contains(key.kid()),
                "{shown}"
            );
            assert!(shown.contains(alg.as_str()), "{shown}");
            let m = managed(key, KeyState::Current, 0, Some(0), None).unwrap();
            assert_no_secret(&format!("{m:?} {m:#?}"), &secret);
            let stored = StoredKey {
                kid: m.key.kid().to_owned(),
                alg,
                state: KeyState::Current,
                created_at: 0,
                activated_at: None,
                retired_at: None,
                pkcs8: jose::b64url(&secret),
            };
            assert_no_secret(&format!("{stored:?}"), &secret);
        }
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), SigningAlg::ES256, 600, 1000).unwrap();
        let file = std::fs::read_to_string(dir.path().join(RING_FILE)).unwrap();
        let shown = format!("{ring:?} {:?} {:?}", ring.current(), ring.info());
        for k in [ring.current(), ring.read().next.clone()] {
            assert_no_secret(&shown, k.key.pkcs8());
        }
        // The file itself does hold the keys (the check above would see them).
        assert!(file.contains(&jose::b64url(ring.current().key.pkcs8())));
    }

    #[test]
    fn ring_persists_rotates_and_retires() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), SigningAlg::ES256, 900, 1000).unwrap();
        let (k1, n1) = (
            ring.current().key.kid().to_owned(),
            ring.info()[1].kid.clone(),
        );
        assert_ne!(k1, n1);
        assert_eq!(ring.public_jwks(1000).len(), 2);
        let mode = std::fs::metadata(dir.path().join(RING_FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);

        ring.rotate(2000).unwrap();
        assert_eq!(ring.current().key.kid(), n1, "next became current");
        assert!(ring.find(&k1).is_some(), "retired key still verifies");
        assert_eq!(ring.public_jwks(2000).len(), 3);
        assert_eq!(
            ring.public_jwks(2900).len(),
            2,
            "retired key leaves the JWKS after retain_for"
        );

        let reopened = KeyRing::open(dir.path(), SigningAlg::ES256, 900, 2001).unwrap();
        assert_eq!(reopened.current().key.kid(), n1, "same kid after restart");
    }

    #[test]
    fn removing_the_current_key_rotates_first() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), SigningAlg::EdDSA, 900, 1000).unwrap();
        let cur = ring.current().key.kid().to_owned();
        ring.remove(&cur, 1100).unwrap();
        assert_ne!(ring.current().key.kid(), cur);
        assert!(ring.find(&cur).is_none());
        assert!(
            ring.public_jwks(1100)
                .iter()
                .all(|j| j["kid"] != cur.as_str())
        );
        assert!(matches!(
            ring.remove("nope", 1100),
            Err(KeyError::UnknownKid(_))
        ));
    }

    #[test]
    fn a_second_replica_sees_rotation_through_the_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyRing::open(dir.path(), SigningAlg::ES256, 900, 1000).unwrap();
        let b = KeyRing::open(dir.path(), SigningAlg::ES256, 900, 1000).unwrap();
        assert_eq!(a.current().key.kid(), b.current().key.kid());
        a.rotate(1100).unwrap();
        let new_kid = a.current().key.kid().to_owned();
        assert!(
            b.find(&new_kid).is_some(),
            "the promoted key was b's next key too"
        );
        // A kid b has never seen (a's new next key) is found after a refresh.
        let next = a
            .info()
            .into_iter()
            .find(|k| k.state == KeyState::Next)
            .unwrap()
            .kid;
        assert!(b.find(&next).is_none());
        assert!(b.find_or_refresh(&next, 1101).is_some());
        assert_eq!(b.current().key.kid(), new_kid);
        // Rotation on b starts from the file, so both agree afterwards.
        b.rotate(1200).unwrap();
        a.refresh(1201, false).unwrap();
        assert_eq!(a.current().key.kid(), b.current().key.kid());
        assert_eq!(a.current().key.kid(), next);
    }

    #[test]
    fn rotation_waits_for_prepublish() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), SigningAlg::ES256, 900, 0).unwrap();
        assert!(!ring.rotation_due(100, 86_400, 3600));
        assert!(ring.rotation_due(86_400, 86_400, 3600));
    }
}
