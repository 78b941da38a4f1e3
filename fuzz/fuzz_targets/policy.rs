//! The policy file compiler (src/policy/compile.rs) from arbitrary TOML text, then lint
//! and decisions for a few fixed requests on whatever compiled: no panic, and every
//! grant stays inside what was asked and what the contract allows (§2: TTL ceiling).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tessera::domain::{Audience, Principal, ScopeSet, SpiffeId};
use tessera::policy::{
    AccessRequest, CompiledPolicy, Decision, HARD_MAX_TTL_SECS, is_valid_mapped_subject,
};

struct Fixture {
    principals: Vec<Principal>,
    audiences: Vec<Audience>,
    scopes: Vec<ScopeSet>,
    actors: Vec<SpiffeId>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let id = |s: &str| SpiffeId::parse(s).expect("SPIFFE ID");
    let claims = serde_json::json!({
        "iss": "https://token.actions.githubusercontent.com",
        "sub": "repo:acme/api:ref:refs/heads/main",
        "repository": "acme/api",
        "ref": "refs/heads/main",
        "groups": ["dev", "ops"],
        "n": 7,
    });
    let claims = claims.as_object().cloned().unwrap_or_default();
    Fixture {
        principals: vec![
            Principal::Spiffe(id("spiffe://example.org/ns/payments/sa/api")),
            Principal::Spiffe(id("spiffe://example.org/ns/web/sa/frontend")),
            Principal::Spiffe(id("spiffe://other.org/a")),
            Principal::Oidc {
                issuer: "https://token.actions.githubusercontent.com".into(),
                subject: "repo:acme/api:ref:refs/heads/main".into(),
                claims,
            },
        ],
        audiences: ["https://ledger.example.org", "https://api.example.org", "x"]
            .iter()
            .map(|a| Audience::parse(a).expect("audience"))
            .collect(),
        scopes: ["", "ledger:read", "ledger:read ledger:write", "api:read"]
            .iter()
            .map(|s| ScopeSet::parse(s).expect("scopes"))
            .collect(),
        actors: vec![id("spiffe://example.org/ns/gateway/sa/edge")],
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = CompiledPolicy::from_toml(src) else {
        return;
    };
    let _ = policy.lint(HARD_MAX_TTL_SECS);
    let _ = policy.scopes_supported();
    let rule_ids: Vec<&str> = policy.rule_ids().collect();
    let f = &*FIXTURE;
    let actors: Vec<Option<&SpiffeId>> = std::iter::once(None)
        .chain(f.actors.iter().map(Some))
        .collect();
    for principal in &f.principals {
        for audience in &f.audiences {
            for scopes in &f.scopes {
                for actor in &actors {
                    let req = AccessRequest {
                        audience,
                        scopes,
                        actor: *actor,
                    };
                    let decision = policy.decide(principal, &req);
                    if let Some(rule) = decision.rule_id() {
                        assert!(rule_ids.contains(&rule), "unknown rule {rule:?}");
                    }
                    if let Decision::Grant(g) = decision {
                        assert_eq!(&g.audience, audience);
                        if !scopes.is_empty() {
                            assert_eq!(&g.scopes, scopes);
                        }
                        assert!(g.max_ttl.is_none_or(|t| t <= HARD_MAX_TTL_SECS));
                        assert_eq!(g.actor.as_ref(), *actor);
                        if let Some(subject) = &g.subject {
                            assert!(is_valid_mapped_subject(subject), "{subject:?}");
                        }
                    }
                }
            }
        }
    }
});
