//! The token request as the HTTP layer decodes it (src/http/mod.rs `decode_form`: media
//! type, duplicates, field count) and the `/token` parameter checks on the result
//! (src/service/exchange.rs `check_token_request`, RFC 6749 §3.2, RFC 8693 §2.1).
//!
//! Input: up to the first newline is the Content-Type, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::http::decode_form;
use tessera::service::CallerCredentials;
use tessera::service::exchange::{
    GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, check_token_request,
};

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let content_type = String::from_utf8_lossy(content_type);
    let Ok(params) = decode_form(&content_type, body) else {
        return;
    };
    assert!(params.0.len() <= 32, "field cap not enforced");
    let creds = CallerCredentials::default().with_form_assertion(&params);
    if let Some((kind, assertion)) = &creds.assertion {
        assert_eq!(params.get("client_assertion_type"), Some(kind.as_str()));
        assert_eq!(params.get("client_assertion"), Some(assertion.as_str()));
    }
    if check_token_request(&params).is_ok() {
        let grant = params.get("grant_type");
        assert!(
            grant == Some(GRANT_TOKEN_EXCHANGE) || grant == Some(GRANT_CLIENT_CREDENTIALS),
            "{grant:?}"
        );
        if grant == Some(GRANT_TOKEN_EXCHANGE) {
            assert!(params.get("subject_token").is_some());
            assert!(params.get("subject_token_type").is_some());
        }
        assert!(params.get("audience").is_some() != params.get("resource").is_some());
    }
});
