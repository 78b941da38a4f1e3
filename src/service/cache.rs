//! A small bounded cache of verification results keyed by a 32-byte digest, each entry
//! valid for a window of injected time. The hot-path caches of `Service` (verified
//! access tokens for introspection, verified JWT-SVID client assertions, static-client
//! secrets that passed argon2id) are instances of it; see docs/architecture.md
//! "Hot-path caches".
//!
//! An entry answers only while `valid_from <= now < expires_at`. `valid_from` is the
//! `now` at which the value was verified: the time checks of our verifiers (`exp`,
//! `nbf`, `iat` with leeway) that pass at `valid_from` also pass at any later `now`
//! before `exp`, so within that window a cached answer is the one the verifier would
//! give on time grounds. A clock that moves backwards only turns entries into misses.
//!
//! Bounded: never more than `capacity` entries. An insert into a full cache first drops
//! the expired entries; if that frees nothing, it evicts the soonest-expiring eighth of
//! the entries (they carry the least remaining life, and would leave soonest anyway), so
//! the O(n) selection runs at most once per `capacity / 8` inserts.
//!
//! One `std::sync::Mutex` around a `HashMap`: the critical sections are a hash lookup
//! or insert, never I/O or an `.await`, so a lock is cheaper than anything cleverer on
//! the few cores this runs on. Imports only `clock`.

use crate::clock::UnixSeconds;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The cache key: a digest of the cached credential (SHA-256 or an HMAC-SHA256).
pub(crate) type CacheKey = [u8; 32];

struct Entry<V> {
    value: V,
    valid_from: UnixSeconds,
    expires_at: UnixSeconds,
}

impl<V> Entry<V> {
    fn live(&self, now: UnixSeconds) -> bool {
        self.valid_from <= now && now < self.expires_at
    }
}

pub(crate) struct ExpiringCache<V> {
    capacity: usize,
    map: Mutex<HashMap<CacheKey, Entry<V>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<V> std::fmt::Debug for ExpiringCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiringCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<V: Clone> ExpiringCache<V> {
    /// A cache of at most `capacity` entries (0 caches nothing).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Entry<V>>> {
        // A panic elsewhere cannot leave the map half-updated in a way that matters:
        // every entry is complete, and the worst case is a missing one.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value under `key` if it is live at `now`; counts a hit or a miss.
    pub(crate) fn get(&self, key: &CacheKey, now: UnixSeconds) -> Option<V> {
        self.get_if(key, now, |_| true)
    }

    /// As `get`, and only if `still_valid` accepts the value; an entry it refuses is
    /// dropped and counted as a miss.
    pub(crate) fn get_if(
        &self,
        key: &CacheKey,
        now: UnixSeconds,
        still_valid: impl FnOnce(&V) -> bool,
    ) -> Option<V> {
        let found = {
            let mut map = self.lock();
            match map.get(key) {
                Some(e) if e.live(now) => Some(e.value.clone()),
                Some(_) => {
                    map.remove(key);
                    None
                }
                None => None,
            }
        };
        let found = match found {
            Some(v) if still_valid(&v) => Some(v),
            Some(_) => {
                self.remove(key);
                None
            }
            None => None,
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remembers `value`, verified at `now`, until `expires_at` (exclusive). An entry that
    /// would already be dead is not stored.
    pub(crate) fn insert(
        &self,
        key: CacheKey,
        value: V,
        now: UnixSeconds,
        expires_at: UnixSeconds,
    ) {
        if expires_at <= now || self.capacity == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            make_room(&mut map, self.capacity, now);
        }
        map.insert(
            key,
            Entry {
                value,
                valid_from: now,
                expires_at,
            },
        );
    }

    pub(crate) fn remove(&self, key: &CacheKey) {
        self.lock().remove(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// (hits, misses) since start.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// Frees at least one slot of a full map: drops expired entries, else the
/// soonest-expiring eighth (at least one entry).
fn make_room<V>(map: &mut HashMap<CacheKey, Entry<V>>, capacity: usize, now: UnixSeconds) {
    map.retain(|_, e| e.expires_at > now);
    if map.len() < capacity {
        return;
    }
    let evict = (capacity / 8).max(1).min(map.len());
    let mut expiries: Vec<UnixSeconds> = map.values().map(|e| e.expires_at).collect();
    let (_, cutoff, _) = expiries.select_nth_unstable(evict - 1);
    let cutoff = *cutoff;
    // Everything expiring before the cutoff goes (fewer than `evict` entries), then
    // entries at the cutoff until exactly `evict` are gone.
    let below = expiries.iter().filter(|&&e| e < cutoff).count();
    let mut at_cutoff = evict.saturating_sub(below);
    map.retain(|_, e| {
        if e.expires_at < cutoff {
            return false;
        }
        if e.expires_at == cutoff && at_cutoff > 0 {
            at_cutoff -= 1;
            return false;
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> CacheKey {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn an_entry_lives_from_its_verification_until_just_before_its_expiry() {
        let c = ExpiringCache::new(8);
        c.insert(key(1), "a", 100, 160);
        assert_eq!(c.get(&key(1), 100), Some("a"));
        assert_eq!(c.get(&key(1), 159), Some("a"));
        assert_eq!(c.get(&key(1), 160), None, "expiry is exclusive");
        assert_eq!(c.len(), 0, "a dead entry is dropped when found");
        c.insert(key(2), "b", 100, 160);
        assert_eq!(c.get(&key(2), 99), None, "not before it was verified");
        assert_eq!(c.get(&key(2), 161), None);
        assert_eq!(c.stats(), (2, 3));
    }

    #[test]
    fn dead_on_arrival_is_not_stored() {
        let c = ExpiringCache::new(8);
        c.insert(key(1), 1, 100, 100);
        c.insert(key(2), 2, 100, 99);
        assert_eq!(c.len(), 0);
        let none = ExpiringCache::new(0);
        none.insert(key(1), 1, 100, 200);
        assert_eq!(none.get(&key(1), 100), None);
    }

    #[test]
    fn distinct_keys_are_distinct_entries() {
        let c = ExpiringCache::new(8);
        c.insert(key(1), "one", 0, 10);
        c.insert(key(2), "two", 0, 10);
        assert_eq!(c.get(&key(1), 5), Some("one"));
        assert_eq!(c.get(&key(2), 5), Some("two"));
        assert_eq!(c.get(&key(3), 5), None);
        c.insert(key(1), "uno", 5, 20);
        assert_eq!(c.get(&key(1), 15), Some("uno"), "a re-insert replaces");
        assert_eq!(c.get(&key(2), 15), None);
    }

    #[test]
    fn a_refused_entry_is_a_miss_and_is_dropped() {
        let c = ExpiringCache::new(8);
        c.insert(key(1), 7, 0, 10);
        assert_eq!(c.get_if(&key(1), 1, |v| *v == 8), None);
        assert_eq!(c.len(), 0);
        assert_eq!(c.stats(), (0, 1));
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let c = ExpiringCache::new(64);
        for i in 0..10_000u64 {
            // Mixed lifetimes, time moving forward slowly.
            let now = (i / 100) as i64;
            c.insert(key(i), i, now, now + 1 + (i % 37) as i64);
            assert!(c.len() <= 64, "len {} after {i}", c.len());
        }
        // The newest entry always made it in.
        assert_eq!(c.get(&key(9_999), 99), Some(9_999));
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_then_the_soonest_expiring() {
        let c = ExpiringCache::new(16);
        for i in 0..8 {
            c.insert(key(i), i, 0, 5);
        }
        for i in 8..16 {
            c.insert(key(i), i, 0, 100 + i as i64);
        }
        // Full; at t = 10 the first eight are dead and make the room.
        c.insert(key(100), 100, 10, 50);
        assert_eq!(c.len(), 9);
        for i in 8..16 {
            assert_eq!(c.get(&key(i), 10), Some(i));
        }
        // Fill again with long-lived entries; the next insert evicts the soonest to
        // expire (key 100, exp 50, and key 8, exp 108: 16 / 8 = 2 entries).
        for i in 200..207 {
            c.insert(key(i), i, 10, 1_000);
        }
        assert_eq!(c.len(), 16);
        c.insert(key(300), 300, 10, 1_000);
        assert_eq!(c.len(), 15);
        assert_eq!(c.get(&key(100), 10), None);
        assert_eq!(c.get(&key(8), 10), None);
        assert_eq!(c.get(&key(9), 10), Some(9));
        assert_eq!(c.get(&key(300), 10), Some(300));
    }

    #[test]
    fn replacing_a_key_in_a_full_cache_evicts_nothing() {
        let c = ExpiringCache::new(4);
        for i in 0..4 {
            c.insert(key(i), i, 0, 100);
        }
        c.insert(key(2), 22, 0, 100);
        assert_eq!(c.len(), 4);
        assert_eq!(c.get(&key(0), 1), Some(0));
        assert_eq!(c.get(&key(2), 1), Some(22));
    }
}
