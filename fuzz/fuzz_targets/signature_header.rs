//! The request-signature header,
//! `Keymeter-Signature: k=<secret id>, t=<unix seconds>, n=<nonce>, v1=<hex>`.
//!
//! Input: the header value. Properties: never panics; a refused value is
//! SIGNATURE_MALFORMED; an accepted one keeps every field within its
//! documented alphabet and bounds (so the canonical request keeps its eight
//! lines), prints back to a value that parses to the same header, and its
//! `v1` verifies exactly when it is the HMAC the server computes.

#![no_main]

use keymeter::signing::{
    canonical_request, check_time, sign, verify_mac, RequestParts, SignatureError, SignatureHeader,
    HEADER_BYTES_MAX, NONCE_CHARS_MAX, NONCE_CHARS_MIN,
};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "kss_fuzz0123456789abcdefghijklmnop";
/// 2026-01-01T00:00:00Z.
const NOW_S: i64 = 1_767_225_600;

fn in_alphabet(s: &str, extra: &[u8]) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let header = match SignatureHeader::parse(value) {
        Ok(header) => header,
        Err(e) => {
            let e = SignatureError::from(e);
            assert_eq!(e.code(), "SIGNATURE_MALFORMED");
            assert!(matches!(e, SignatureError::Malformed(_)));
            return;
        }
    };
    assert!(value.len() <= HEADER_BYTES_MAX);
    assert!((1..=64).contains(&header.key_id.len()));
    assert!(in_alphabet(&header.key_id, b""), "{header:?}");
    assert!((NONCE_CHARS_MIN..=NONCE_CHARS_MAX).contains(&header.nonce.len()));
    assert!(in_alphabet(&header.nonce, b"."), "{header:?}");
    assert!((0..1_000_000_000_000).contains(&header.timestamp));

    let printed = header.to_header_value();
    assert!(printed.len() <= HEADER_BYTES_MAX);
    assert_eq!(SignatureHeader::parse(&printed).as_ref(), Ok(&header));

    let req = RequestParts {
        method: "POST",
        path: "/api/v1/licenses/validate",
        query: "a=1",
        body: data,
    };
    let canonical = canonical_request(&header.key_id, header.timestamp, &header.nonce, &req);
    assert_eq!(canonical.split('\n').count(), 8, "{canonical:?}");

    let expected = sign(
        SECRET,
        &header.key_id,
        header.timestamp,
        &header.nonce,
        &req,
    );
    assert!(verify_mac(SECRET.as_bytes(), &expected, &req).is_ok());
    assert_eq!(
        verify_mac(SECRET.as_bytes(), &header, &req).is_ok(),
        header.v1 == expected.v1
    );

    let _ = check_time(header.timestamp, NOW_S, 300, NOW_S - 3600);
});
