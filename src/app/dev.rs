//! `tessera serve --dev`: everything needed to try Tessera on one machine, generated
//! under a data directory — signing keys, a dev trust domain (its JWT-SVID key and
//! bundle), the embedded store, an admin token, a demo policy. Loopback only.

use super::AppError;
use crate::clock::UnixSeconds;
use crate::config::Settings;
use crate::domain::{SpiffeId, TrustDomain};
use crate::jose::{self, SigningAlg, SigningKey};
use crate::mint::keys::write_private_file;
use crate::policy::SpiffePattern;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEV_TRUST_DOMAIN: &str = "dev.local";
pub const DEFAULT_DATA_DIR: &str = "./tessera-data";
pub const DEFAULT_PUBLIC: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9080";

const DEMO_POLICY: &str = r#"# Demo policy written by `tessera serve --dev`. Deny by default; edit and
# reload with `tessera admin reload-policy` or SIGHUP.
[[rule]]
id = "dev-demo"
match.spiffe_id = "spiffe://dev.local/**"
grant.audiences = ["https://api.dev.local", "https://ledger.dev.local"]
grant.scopes = ["read", "write", "ledger:read", "ledger:write"]
grant.default_scopes = ["read"]
grant.max_ttl = "5m"
"#;

pub struct DevPaths {
    pub dir: PathBuf,
}

impl DevPaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    pub fn svid_key(&self) -> PathBuf {
        self.dir.join("dev-trust-domain").join("jwt-svid-key.pk8")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("dev-trust-domain").join("bundle.json")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin-token")
    }
    pub fn admin_token_hash(&self) -> PathBuf {
        self.dir.join("admin-token.sha256")
    }
    pub fn policy(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }
}

fn io(what: &Path, e: std::io::Error) -> AppError {
    AppError::Config(format!("dev data {}: {e}", what.display()))
}

/// Creates (or reuses) the dev data directory and returns settings for it.
pub fn prepare(dir: &Path, public: SocketAddr, admin: SocketAddr) -> Result<Settings, AppError> {
    for (flag, addr) in [("--listen", public), ("--admin-listen", admin)] {
        if !addr.ip().is_loopback() {
            return Err(AppError::Config(format!(
                "{flag} {addr}: dev mode serves plain HTTP with a demo policy and refuses non-loopback addresses; use 127.0.0.1, or run with --config for production"
            )));
        }
    }
    let p = DevPaths::new(dir);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    if !p.svid_key().exists() {
        let key =
            SigningKey::generate(SigningAlg::ES256).map_err(|e| AppError::Keys(e.to_string()))?;
        write_private_file(&p.svid_key(), key.pkcs8()).map_err(|e| io(&p.svid_key(), e))?;
    }
    let key = load_svid_key(&p)?;
    let mut jwk = key.public_jwk();
    jwk.insert("use".into(), "jwt-svid".into());
    jwk.remove("alg");
    let bundle = serde_json::json!({"keys": [jwk], "spiffe_refresh_hint": 300});
    std::fs::write(
        p.bundle(),
        serde_json::to_vec_pretty(&bundle).unwrap_or_default(),
    )
    .map_err(|e| io(&p.bundle(), e))?;
    if !p.admin_token().exists() || !p.admin_token_hash().exists() {
        let token = zeroize::Zeroizing::new(jose::b64url(
            &jose::random_bytes::<32>().map_err(|e| AppError::Keys(e.to_string()))?,
        ));
        let line = zeroize::Zeroizing::new(format!("{}\n", token.as_str()));
        write_private_file(&p.admin_token(), line.as_bytes())
            .map_err(|e| io(&p.admin_token(), e))?;
        let hash = jose::hex(&jose::sha256(token.as_bytes()));
        write_private_file(&p.admin_token_hash(), format!("{hash}\n").as_bytes())
            .map_err(|e| io(&p.admin_token_hash(), e))?;
    }
    if !p.policy().exists() {
        std::fs::write(p.policy(), DEMO_POLICY).map_err(|e| io(&p.policy(), e))?;
    }
    let td = TrustDomain::parse(DEV_TRUST_DOMAIN).map_err(|e| AppError::Config(e.to_string()))?;
    let pattern = |s: &str| SpiffePattern::parse(s).map_err(|e| AppError::Config(e.to_string()));
    let issuer = format!("http://{public}");
    Ok(Settings {
        accept_audiences: vec![issuer.clone()],
        issuer,
        policy_file: p.policy(),
        public_listen: public,
        admin_listen: admin,
        tls: None,
        admin_allowed: vec![pattern("spiffe://dev.local/ops/**")?],
        admin_token_hash_file: Some(p.admin_token_hash()),
        metrics_auth: false,
        default_ttl: 300,
        max_ttl: 900,
        leeway: 30,
        signing_alg: SigningAlg::ES256,
        key_dir: dir.join("keys"),
        rotate_every: 86_400,
        prepublish: 3600,
        store_path: dir.join("store.redb"),
        redis: None,
        trust_domains: vec![(td, p.bundle())],
        federation: Vec::new(),
        federation_min_refresh: crate::config::DEFAULT_FEDERATION_MIN_REFRESH,
        agent_trust_domains: Vec::new(),
        svid_workload_api: None,
        introspection_allowed: vec![pattern("spiffe://dev.local/**")?],
        introspection_clients: Vec::new(),
        per_identity_limit: None,
        failed_auth_limit: crate::config::Rate::parse(crate::config::DEFAULT_FAILED_AUTH_LIMIT)
            .ok(),
        audit_file: None,
        dev_mode: true,
        oidc_issuers: Vec::new(),
    })
}

fn load_svid_key(p: &DevPaths) -> Result<SigningKey, AppError> {
    let der = zeroize::Zeroizing::new(std::fs::read(p.svid_key()).map_err(|e| {
        AppError::Config(format!(
            "{}: {e}; start `tessera serve --dev` once to create the dev trust domain",
            p.svid_key().display()
        ))
    })?);
    SigningKey::from_pkcs8(SigningAlg::ES256, &der).map_err(|e| AppError::Keys(e.to_string()))
}

/// Mints a JWT-SVID for `id` from the dev trust domain (SPIFFE JWT-SVID §3: ES256,
/// `typ: JWT`, `sub`, `aud`, `exp`, `iat`).
pub fn mint_jwt_svid(
    dir: &Path,
    id: &SpiffeId,
    audiences: &[String],
    ttl: u64,
    now: UnixSeconds,
) -> Result<String, AppError> {
    if id.trust_domain_str() != DEV_TRUST_DOMAIN {
        return Err(AppError::Config(format!(
            "{id} is not in the dev trust domain; use spiffe://{DEV_TRUST_DOMAIN}/…"
        )));
    }
    let key = load_svid_key(&DevPaths::new(dir))?;
    let claims = serde_json::json!({
        "sub": id.as_str(),
        "aud": audiences,
        "iat": now,
        "exp": now + ttl as i64,
    });
    key.sign_compact("JWT", &claims)
        .map_err(|e| AppError::Keys(e.to_string()))
}

/// The loud banner of dev mode.
pub fn warning(dir: &Path) -> String {
    let p = DevPaths::new(dir);
    format!(
        "\n  ***********************************************************************\n  *  DEV MODE: plain HTTP, generated keys, a permissive demo policy.    *\n  *  NOT FOR PRODUCTION. Use `tessera serve --config FILE` for that.    *\n  ***********************************************************************\n  data dir:     {}\n  admin token:  {} (mode 0600)\n  trust domain: spiffe://{DEV_TRUST_DOMAIN} (mint a JWT-SVID: tessera dev jwt-svid spiffe://{DEV_TRUST_DOMAIN}/app --audience ISSUER)\n",
        dir.display(),
        p.admin_token().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prepares_private_files_and_refuses_non_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let s = prepare(dir.path(), addr("127.0.0.1:18080"), addr("127.0.0.1:19080")).unwrap();
        assert!(s.dev_mode && s.tls.is_none());
        assert_eq!(s.issuer, "http://127.0.0.1:18080");
        let p = DevPaths::new(dir.path());
        for secret in [p.admin_token(), p.admin_token_hash(), p.svid_key()] {
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }
        let token = std::fs::read_to_string(p.admin_token()).unwrap();
        let hash = std::fs::read_to_string(p.admin_token_hash()).unwrap();
        assert_eq!(
            hash.trim(),
            jose::hex(&jose::sha256(token.trim().as_bytes()))
        );
        // A second start keeps the same admin token and trust domain key.
        prepare(dir.path(), addr("127.0.0.1:18080"), addr("127.0.0.1:19080")).unwrap();
        assert_eq!(std::fs::read_to_string(p.admin_token()).unwrap(), token);

        for (public, admin) in [
            ("0.0.0.0:8080", "127.0.0.1:9080"),
            ("127.0.0.1:8080", "10.0.0.1:9080"),
        ] {
            let err = prepare(dir.path(), addr(public), addr(admin))
                .unwrap_err()
                .to_string();
            assert!(err.contains("non-loopback"), "{err}");
        }
    }

    #[test]
    fn minted_svids_are_only_for_the_dev_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), addr("127.0.0.1:18080"), addr("127.0.0.1:19080")).unwrap();
        let id = SpiffeId::parse("spiffe://dev.local/app").unwrap();
        let aud = vec!["http://127.0.0.1:18080".to_owned()];
        let t = mint_jwt_svid(dir.path(), &id, &aud, 300, 1000).unwrap();
        let claims = jose::UnverifiedJws::parse(&t).unwrap().unverified_claims;
        assert_eq!(claims["sub"], "spiffe://dev.local/app");
        assert_eq!(claims["exp"], 1300);
        let other = SpiffeId::parse("spiffe://example.org/app").unwrap();
        assert!(mint_jwt_svid(dir.path(), &other, &aud, 300, 1000).is_err());
    }
}
