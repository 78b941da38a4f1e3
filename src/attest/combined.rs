//! One `BundleSource` over several: bundle files, federated bundle endpoints and (later)
//! the Workload API. Each trust domain is owned by exactly one source, and a lookup asks
//! only that source (a verifier never searches other bundles).

use super::{BundleError, BundleSource, BundleStatus, FileBundles, TrustBundle};
use crate::clock::UnixSeconds;
use crate::domain::TrustDomain;
use std::collections::HashMap;
use std::sync::Arc;

/// Refresh health of one trust domain of a refreshing source, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshHealth {
    pub trust_domain: TrustDomain,
    /// Fetches since start, failed or not.
    pub fetches: u64,
    /// Failed fetches since start.
    pub failures: u64,
    /// When the bundle now served was fetched (`None`: never).
    pub last_success: Option<UnixSeconds>,
}

/// A bundle source that knows which trust domains it owns and how healthy they are.
pub trait ManagedBundleSource: BundleSource {
    /// The configured trust domains, in configuration order.
    fn owned(&self) -> Vec<TrustDomain>;
    fn status(&self) -> BundleStatus;
    /// Per trust domain refresh health; empty for sources that do not refresh by
    /// themselves.
    fn refresh_health(&self) -> Vec<RefreshHealth> {
        Vec::new()
    }
}

impl ManagedBundleSource for FileBundles {
    fn owned(&self) -> Vec<TrustDomain> {
        self.trust_domains().cloned().collect()
    }
    fn status(&self) -> BundleStatus {
        FileBundles::status(self)
    }
}

impl ManagedBundleSource for super::TrustBundles {
    fn owned(&self) -> Vec<TrustDomain> {
        self.trust_domains()
    }
    fn status(&self) -> BundleStatus {
        super::TrustBundles::status(self)
    }
}

/// The bundle source the verifiers read.
pub struct CombinedBundles {
    sources: Vec<Arc<dyn ManagedBundleSource>>,
    owner: HashMap<TrustDomain, usize>,
}

impl std::fmt::Debug for CombinedBundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CombinedBundles")
            .field("trust_domains", &self.owner.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CombinedBundles {
    /// Fails when two sources claim the same trust domain.
    pub fn new(sources: Vec<Arc<dyn ManagedBundleSource>>) -> Result<Self, BundleError> {
        let mut owner = HashMap::new();
        for (i, s) in sources.iter().enumerate() {
            for td in s.owned() {
                if owner.insert(td.clone(), i).is_some() {
                    return Err(BundleError::DuplicateTrustDomain(td));
                }
            }
        }
        Ok(Self { sources, owner })
    }

    /// Merged readiness of every source.
    pub fn status(&self) -> BundleStatus {
        let mut all = BundleStatus::default();
        for s in &self.sources {
            let st = s.status();
            all.configured += st.configured;
            all.missing.extend(st.missing);
            all.stale.extend(st.stale);
        }
        all
    }

    pub fn refresh_health(&self) -> Vec<RefreshHealth> {
        self.sources
            .iter()
            .flat_map(|s| s.refresh_health())
            .collect()
    }
}

impl BundleSource for CombinedBundles {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        let i = *self.owner.get(td)?;
        self.sources.get(i)?.bundle(td)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::{StaticBundles, parse_spiffe_bundle};

    struct Fixed(StaticBundles, Vec<TrustDomain>);
    impl BundleSource for Fixed {
        fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
            self.0.bundle(td)
        }
    }
    impl ManagedBundleSource for Fixed {
        fn owned(&self) -> Vec<TrustDomain> {
            self.1.clone()
        }
        fn status(&self) -> BundleStatus {
            BundleStatus {
                configured: self.1.len(),
                missing: self
                    .1
                    .iter()
                    .filter(|td| self.0.bundle(td).is_none())
                    .cloned()
                    .collect(),
                stale: Vec::new(),
            }
        }
    }

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    fn fixed(owned: &[&str], loaded: &[&str]) -> Arc<dyn ManagedBundleSource> {
        let bundles = loaded
            .iter()
            .map(|d| parse_spiffe_bundle(&td(d), br#"{"keys": []}"#).unwrap());
        Arc::new(Fixed(
            StaticBundles::new(bundles),
            owned.iter().map(|d| td(d)).collect(),
        ))
    }

    #[test]
    fn lookups_go_to_the_owner_only() {
        // b.org is owned by the second source; the first one happens to hold a b.org
        // bundle too, which must never be used.
        let c = CombinedBundles::new(vec![
            fixed(&["a.org"], &["a.org", "b.org"]),
            fixed(&["b.org", "c.org"], &[]),
        ])
        .unwrap();
        assert!(c.bundle(&td("a.org")).is_some());
        assert!(c.bundle(&td("b.org")).is_none());
        assert!(c.bundle(&td("x.org")).is_none());
        let st = c.status();
        assert_eq!(st.configured, 3);
        assert_eq!(st.missing, vec![td("b.org"), td("c.org")]);
        assert!(!st.is_ready());
    }

    #[test]
    fn a_trust_domain_has_one_owner() {
        let err =
            CombinedBundles::new(vec![fixed(&["a.org"], &[]), fixed(&["a.org"], &[])]).unwrap_err();
        assert!(matches!(err, BundleError::DuplicateTrustDomain(_)));
    }
}
