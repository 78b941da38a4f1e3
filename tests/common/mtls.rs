//! rcgen SPIFFE certificate authorities and X.509-SVIDs for mTLS tests and benchmarks.

use super::{Env, Server};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use tessera::clock::{Clock as _, SystemClock};

/// A SPIFFE CA for one trust domain.
pub struct SpiffeCa {
    issuer: Issuer<'static, KeyPair>,
    pub der: Vec<u8>,
    pub pem: String,
}

pub fn ca(trust_domain: &str) -> SpiffeCa {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, trust_domain);
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}").try_into().unwrap(),
    )];
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    SpiffeCa {
        der: cert.der().to_vec(),
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A client certificate: PEM of cert + key for reqwest, and the leaf DER.
pub struct Leaf {
    pub identity_pem: String,
    pub der: Vec<u8>,
    /// PKCS#8 DER of the leaf's key (what the Workload API sends).
    pub key_der: Vec<u8>,
}

pub fn leaf(ca: &SpiffeCa, uris: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "workload");
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    tweak(&mut p);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        identity_pem: format!("{}{}", cert.pem(), key.serialize_pem()),
        der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

pub fn x509_entry(ca: &SpiffeCa) -> Value {
    use base64::Engine as _;
    json!({"use": "x509-svid", "kty": "EC", "crv": "P-256",
           "x5c": [base64::engine::general_purpose::STANDARD.encode(&ca.der)]})
}

/// Adds X.509 authorities to the two trust domains' bundle files (keeping their JWT keys).
pub fn add_x509_authorities(env: &Env, example: &SpiffeCa, other: &SpiffeCa) {
    for (file, ca) in [("example.org.json", example), ("other.org.json", other)] {
        let path = env.path().join("bundles").join(file);
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let entry = x509_entry(ca);
        // The JWK members of an x509-svid entry come from the certificate.
        let pk = &doc["keys"][0];
        let mut e = entry.as_object().unwrap().clone();
        for k in ["x", "y"] {
            e.insert(k.into(), pk[k].clone());
        }
        doc["keys"].as_array_mut().unwrap().push(Value::Object(e));
        std::fs::write(&path, doc.to_string()).unwrap();
    }
}

/// A server and the X.509 authorities of its two trust domains.
pub struct X509Setup {
    pub srv: Server,
    pub example: SpiffeCa,
    pub other: SpiffeCa,
}

/// A server whose trust domains also have X.509 authorities, on the real clock
/// (certificates are checked against the server's clock).
pub async fn x509_server() -> X509Setup {
    let env = Env::new();
    env.clock.set(SystemClock.now());
    let (example, other) = (ca("example.org"), ca("other.org"));
    add_x509_authorities(&env, &example, &other);
    X509Setup {
        srv: env.start().await,
        example,
        other,
    }
}
