//! What an end-user application sends to make license calls: the
//! `Authorization` header (an API key, `Bearer …`, or its license key,
//! `License …`), the seat's `fingerprint` and a proposed `lease_token`.
//!
//! Input: three byte strings (see `keymeter_fuzz::input::split3`).
//! Properties: never panics; a header is read as a license key or as a
//! bearer token, never both, and the key is exactly the text after the
//! scheme, trimmed; a lease token or a fingerprint is accepted exactly when
//! an independent statement of its documented rule accepts it.

#![no_main]

use http::{HeaderMap, HeaderValue};
use keymeter::api::auth::bearer_token;
use keymeter::api::client::license_key;
use keymeter::license::seats::{check_fingerprint, check_lease_token};
use libfuzzer_sys::fuzz_target;

fn lease_token_rule(t: &str) -> bool {
    (22..=128).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

fn fingerprint_rule(f: &str) -> bool {
    let n = f.chars().count();
    (1..=256).contains(&n) && !f.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    let (header, fingerprint, token) = keymeter_fuzz::input::split3(data);
    if let Ok(value) = HeaderValue::from_bytes(header) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        let text = headers[http::header::AUTHORIZATION].to_str().ok();
        match (license_key(&headers), bearer_token(&headers)) {
            (Some(_), Some(_)) => panic!("both a license key and a bearer token: {text:?}"),
            (Some(key), None) => {
                let text = text.expect("a license key comes from text");
                let rest = text
                    .strip_prefix("License ")
                    .or_else(|| text.strip_prefix("license "))
                    .expect("the license scheme");
                assert_eq!(key, rest.trim());
            }
            (None, Some(key)) => {
                let text = text.expect("a bearer token comes from text");
                assert!(text.starts_with("Bearer ") || text.starts_with("bearer "));
                assert_eq!(key, text[7..].trim());
            }
            (None, None) => {}
        }
    }
    if let Ok(token) = std::str::from_utf8(token) {
        assert_eq!(
            check_lease_token(token).is_ok(),
            lease_token_rule(token),
            "{token:?}"
        );
    }
    if let Ok(fp) = std::str::from_utf8(fingerprint) {
        assert_eq!(
            check_fingerprint(fp).is_ok(),
            fingerprint_rule(fp),
            "{fp:?}"
        );
    }
});
