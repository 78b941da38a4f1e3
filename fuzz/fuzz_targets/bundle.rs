//! Trust bundle parsing (src/attest/bundle.rs): SPIFFE bundle JSON, plain JWKS, PEM and
//! concatenated DER. Whatever loads must respect the caps, index every key by its kid,
//! and no loaded key may accept an all-zero signature (RFC 8725 §3.1; ECDSA r = s = 0).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tessera::attest::bundle::MAX_BUNDLE_ENTRIES;
use tessera::attest::{
    TrustBundle, parse_jwks, parse_spiffe_bundle, parse_x509_der, parse_x509_pem,
};
use tessera::domain::TrustDomain;
use tessera::jose::Alg;

static TD: LazyLock<TrustDomain> =
    LazyLock::new(|| TrustDomain::parse("example.org").expect("trust domain"));

const ALGS: [Alg; 10] = [
    Alg::Es256,
    Alg::Es384,
    Alg::Es512,
    Alg::Rs256,
    Alg::Rs384,
    Alg::Rs512,
    Alg::Ps256,
    Alg::Ps384,
    Alg::Ps512,
    Alg::EdDsa,
];

fn check(bundle: &TrustBundle) {
    assert_eq!(bundle.trust_domain, *TD);
    assert!(bundle.jwt_authority_count() <= MAX_BUNDLE_ENTRIES);
    assert!(bundle.x509_authorities().len() <= MAX_BUNDLE_ENTRIES);
    let kids = bundle.jwt_kids();
    assert_eq!(kids.len(), bundle.jwt_authority_count());
    for kid in &kids {
        let key = bundle.jwt_authority(kid).expect("a listed kid has a key");
        for alg in ALGS {
            for len in [64, 96, 132, 256, 512] {
                assert!(key.verify(alg, b"a.b", &vec![0u8; len]).is_err());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = parse_spiffe_bundle(&TD, data) {
        check(&b);
    }
    if let Ok(b) = parse_jwks(&TD, data) {
        check(&b);
        assert_eq!(b.x509_authorities().len(), 0);
    }
    if let Ok(b) = parse_x509_pem(&TD, data) {
        check(&b);
    }
    if let Ok(b) = parse_x509_der(&TD, data) {
        check(&b);
        assert_eq!(b.x509_authorities().is_empty(), data.is_empty());
    }
});
