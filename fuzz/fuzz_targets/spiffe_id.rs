//! SPIFFE ID and trust domain parsing (src/domain/spiffe_id.rs) and the policy's SPIFFE
//! ID patterns (src/policy/spiffe_pattern.rs). Whatever parses must print back to the
//! same text, re-parse to an equal value, and obey SPIFFE-ID §2; a pattern must match
//! the ID its stars stand for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::domain::{SpiffeId, TrustDomain};
use tessera::policy::SpiffePattern;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        let printed = id.to_string();
        assert_eq!(printed, s);
        assert_eq!(SpiffeId::parse(&printed).as_ref(), Ok(&id));
        assert_eq!(
            format!("spiffe://{}{}", id.trust_domain_str(), id.path()),
            s
        );
        // SPIFFE-ID §2.1/§2.2, strict profile: no port, userinfo, query, fragment,
        // percent-encoding, upper-case trust domain, empty or dot segments.
        let rest = &s["spiffe://".len()..];
        assert!(!rest.contains([':', '@', '?', '#', '%']), "{s:?}");
        assert!(!rest.contains("//") && !rest.ends_with('/'), "{s:?}");
        assert!(!id.trust_domain_str().is_empty());
        assert!(
            !id.trust_domain_str()
                .bytes()
                .any(|b| b.is_ascii_uppercase())
        );
        assert!(!id.path().split('/').any(|seg| seg == "." || seg == ".."));
        assert!(s.len() <= 2048);
        let td = TrustDomain::parse(id.trust_domain_str()).expect("its trust domain parses");
        assert_eq!(td, id.trust_domain());
        assert_eq!(TrustDomain::parse(&td.id_string()).as_ref(), Ok(&td));
        assert_eq!(TrustDomain::parse(s).as_ref(), Ok(&td));
        if !s.contains('*') {
            let exact = SpiffePattern::parse(s).expect("an ID is an exact pattern");
            assert!(exact.is_exact() && exact.matches(&id));
        }
    }
    if let Ok(td) = TrustDomain::parse(s) {
        assert_eq!(TrustDomain::parse(td.as_str()).as_ref(), Ok(&td));
    }
    if let Ok(pattern) = SpiffePattern::parse(s) {
        // Each star may stand for "x", and a final `/**` for nothing or for one more
        // segment: those IDs must match.
        let base = s.strip_suffix("/**").unwrap_or(s);
        let instance = base.replace('*', "x");
        let id = SpiffeId::parse(&instance).expect("a pattern's instance is an ID");
        assert!(pattern.matches(&id), "{s:?} does not match {instance:?}");
        if base.len() < s.len()
            && let Ok(longer) = SpiffeId::parse(&format!("{instance}/xx"))
        {
            assert!(pattern.matches(&longer), "{s:?} does not match {longer}");
        }
    }
});
