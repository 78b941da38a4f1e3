//! Per-identity token-request limit (`[limits] per_identity`): a token bucket per
//! subject holding up to 2x the rate, refilled each second of the injected clock.

use crate::clock::UnixSeconds;
use std::collections::HashMap;
use std::sync::Mutex;

/// Beyond this many tracked subjects, idle (full) buckets are dropped.
const MAX_TRACKED: usize = 100_000;

pub struct RateLimiter {
    per_sec: u32,
    buckets: Mutex<HashMap<String, (f64, UnixSeconds)>>,
}

impl RateLimiter {
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `subject`; `Err(retry_after_secs)` when the bucket is empty.
    pub fn check(&self, subject: &str, now: UnixSeconds) -> Result<(), u64> {
        let cap = f64::from(self.per_sec) * 2.0;
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_TRACKED && !map.contains_key(subject) {
            let rate = f64::from(self.per_sec);
            map.retain(|_, (tokens, last)| *tokens + (now - *last) as f64 * rate < cap);
        }
        let (tokens, last) = map.entry(subject.to_owned()).or_insert((cap, now));
        let elapsed = (now - *last).max(0) as f64;
        *tokens = (*tokens + elapsed * f64::from(self.per_sec)).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_and_identities_are_independent() {
        let l = RateLimiter::new(2);
        for _ in 0..4 {
            assert!(l.check("a", 100).is_ok());
        }
        assert_eq!(l.check("a", 100), Err(1));
        assert!(l.check("b", 100).is_ok(), "another identity is unaffected");
        assert!(l.check("a", 101).is_ok(), "refilled after a second");
    }
}
