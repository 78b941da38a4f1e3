//! Request, issuance, revocation and store metrics, rendered in the Prometheus text
//! exposition format (version 0.0.4) on the admin listener's `/metrics`.
//!
//! Label values come from closed sets (route templates, OAuth error codes, revocation
//! kinds, store operations) or from the operator's own policy (rule names), so no
//! caller can grow the label space. Durations are wall time (`Instant`), not the
//! injected clock: they measure work, not token lifetimes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: from a cached introspection
/// (sub-millisecond) to a request stuck behind an unreachable store.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    Http,
    Grpc,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// How a request ended, by class: 2xx/3xx (gRPC OK), 4xx (gRPC client codes), 5xx
/// (gRPC INTERNAL, UNAVAILABLE, UNKNOWN, DEADLINE_EXCEEDED, DATA_LOSS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestOutcome {
    Success,
    ClientError,
    ServerError,
}

impl RequestOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
        }
    }

    pub fn from_http_status(status: u16) -> Self {
        match status {
            500.. => Self::ServerError,
            400..=499 => Self::ClientError,
            _ => Self::Success,
        }
    }

    /// From a gRPC status code (`grpc-status`); absent means OK.
    pub fn from_grpc_status(code: Option<i32>) -> Self {
        match code {
            None | Some(0) => Self::Success,
            Some(2 | 4 | 13 | 14 | 15) => Self::ServerError,
            Some(_) => Self::ClientError,
        }
    }
}

/// A cumulative histogram over `LATENCY_BUCKETS`.
#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is above every bound.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[slot] += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[LATENCY_BUCKETS.len()];
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

type RequestKey = (Transport, &'static str);

/// Everything `/metrics` reports beyond the service's plain counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, ([u64; 3], Histogram)>>,
    tokens_issued: Mutex<BTreeMap<String, u64>>,
    denials: Mutex<BTreeMap<&'static str, u64>>,
    revocations: Mutex<BTreeMap<&'static str, u64>>,
    store: Mutex<BTreeMap<&'static str, Histogram>>,
    introspected_active: AtomicU64,
    introspected_inactive: AtomicU64,
}

/// A poisoned lock only means another thread panicked mid-update of a counter; the
/// numbers are still the best we have.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// One answered request; `endpoint` is a route template or `other`.
    pub fn observe_request(
        &self,
        transport: Transport,
        endpoint: &'static str,
        outcome: RequestOutcome,
        took: Duration,
    ) {
        let mut map = lock(&self.requests);
        let (counts, hist) = map.entry((transport, endpoint)).or_default();
        counts[outcome as usize] += 1;
        hist.observe(took);
    }

    pub fn token_issued(&self, rule: &str) {
        let mut map = lock(&self.tokens_issued);
        match map.get_mut(rule) {
            Some(n) => *n += 1,
            None => {
                map.insert(rule.to_owned(), 1);
            }
        }
    }

    /// A refused `/token` request, by OAuth error code.
    pub fn token_denied(&self, code: &'static str) {
        *lock(&self.denials).entry(code).or_default() += 1;
    }

    pub fn introspected(&self, active: bool) {
        let c = if active {
            &self.introspected_active
        } else {
            &self.introspected_inactive
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A stored revocation, by kind (`jti`, `subject`, `kid`).
    pub fn revoked(&self, kind: &'static str) {
        *lock(&self.revocations).entry(kind).or_default() += 1;
    }

    /// One call to the revocation store or inventory, failed or not.
    pub fn observe_store(&self, operation: &'static str, took: Duration) {
        lock(&self.store)
            .entry(operation)
            .or_default()
            .observe(took);
    }

    pub fn render(&self, out: &mut String) {
        let requests = lock(&self.requests).clone();
        family(
            out,
            "tessera_requests_total",
            "counter",
            "Requests answered, by transport, endpoint (route template) and outcome.",
        );
        for ((transport, endpoint), (counts, _)) in &requests {
            for outcome in [
                RequestOutcome::Success,
                RequestOutcome::ClientError,
                RequestOutcome::ServerError,
            ] {
                let _ = writeln!(
                    out,
                    "tessera_requests_total{{transport=\"{}\",endpoint=\"{}\",outcome=\"{}\"}} {}",
                    transport.as_str(),
                    escape(endpoint),
                    outcome.as_str(),
                    counts[outcome as usize]
                );
            }
        }
        family(
            out,
            "tessera_request_duration_seconds",
            "histogram",
            "Time from request received to response headers, by transport and endpoint.",
        );
        for ((transport, endpoint), (_, hist)) in &requests {
            let labels = format!(
                "transport=\"{}\",endpoint=\"{}\"",
                transport.as_str(),
                escape(endpoint)
            );
            hist.render(out, "tessera_request_duration_seconds", &labels);
        }
        family(
            out,
            "tessera_tokens_issued_total",
            "counter",
            "Access tokens issued, by the policy rule that allowed them.",
        );
        for (rule, n) in lock(&self.tokens_issued).iter() {
            let _ = writeln!(
                out,
                "tessera_tokens_issued_total{{rule=\"{}\"}} {n}",
                escape(rule)
            );
        }
        family(
            out,
            "tessera_token_denials_total",
            "counter",
            "Token requests refused, by OAuth error code.",
        );
        for (code, n) in lock(&self.denials).iter() {
            let _ = writeln!(out, "tessera_token_denials_total{{reason=\"{code}\"}} {n}");
        }
        family(
            out,
            "tessera_introspections_total",
            "counter",
            "Introspection answers given, by RFC 7662 active.",
        );
        for (active, c) in [
            ("true", &self.introspected_active),
            ("false", &self.introspected_inactive),
        ] {
            let _ = writeln!(
                out,
                "tessera_introspections_total{{active=\"{active}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        family(
            out,
            "tessera_revocations_total",
            "counter",
            "Revocations stored (admin API and RFC 7009), by kind.",
        );
        let revocations = lock(&self.revocations).clone();
        for kind in ["jti", "subject", "kid"] {
            let n = revocations.get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "tessera_revocations_total{{kind=\"{kind}\"}} {n}");
        }
        family(
            out,
            "tessera_store_operation_duration_seconds",
            "histogram",
            "Time of calls to the revocation store and token inventory, by operation.",
        );
        for (op, hist) in lock(&self.store).iter() {
            hist.render(
                out,
                "tessera_store_operation_duration_seconds",
                &format!("operation=\"{op}\""),
            );
        }
    }
}

/// The `# HELP` and `# TYPE` lines of one metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (text format: backslash, double quote and newline).
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(9));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn grpc_codes_map_to_outcome_classes() {
        assert_eq!(
            RequestOutcome::from_grpc_status(None),
            RequestOutcome::Success
        );
        assert_eq!(
            RequestOutcome::from_grpc_status(Some(16)),
            RequestOutcome::ClientError
        );
        assert_eq!(
            RequestOutcome::from_grpc_status(Some(14)),
            RequestOutcome::ServerError
        );
        assert_eq!(
            RequestOutcome::from_http_status(429),
            RequestOutcome::ClientError
        );
    }

    #[test]
    fn rule_names_are_escaped() {
        let m = Metrics::default();
        m.token_issued("a\"b");
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("tessera_tokens_issued_total{rule=\"a\\\"b\"} 1"),
            "{out}"
        );
    }
}
