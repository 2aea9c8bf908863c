use super::*;
use aes_gcm::aead::Aead;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;

const NOW: i64 = 1_790_000_000;

struct Issuer {
    key: SigningKey,
    kid: String,
}

impl Issuer {
    fn new() -> Issuer {
        Issuer {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
            kid: "k1".into(),
        }
    }

    fn jwks(&self) -> Keys {
        let x = B64.encode(self.key.verifying_key().to_bytes());
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "other", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid, "x": x}
        ]});
        Keys::from_jwks(&doc.to_string()).unwrap()
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        let h = B64.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid}).to_string());
        let c = B64.encode(claims.to_string());
        let input = format!("{h}.{c}");
        let sig = B64.encode(self.key.sign(input.as_bytes()).to_bytes());
        format!("{input}.{sig}")
    }

    fn file(
        &self,
        license_key: &str,
        fingerprint: Option<&str>,
        issued: i64,
        expires: i64,
    ) -> String {
        let salt = [7u8; 16];
        let nonce = [9u8; 12];
        let key = license_file_key(license_key, &salt, fingerprint);
        let plaintext = json!({"license": {"id": "lic_1", "product": "p"}, "issued_at": issued, "expires_at": expires});
        let ct = Aes256Gcm::new(&key.into())
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.to_string().as_bytes(),
                    aad: b"lic_1",
                },
            )
            .unwrap();
        let mut f = LicenseFile {
            format: LICENSE_FILE_FORMAT.into(),
            kid: self.kid.clone(),
            license_id: "lic_1".into(),
            fingerprint_bound: fingerprint.is_some(),
            salt: B64.encode(salt),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ct),
            signature: String::new(),
        };
        f.signature = B64.encode(
            self.key
                .sign(license_file_signing_input(&f).as_bytes())
                .to_bytes(),
        );
        serde_json::to_string(&f).unwrap()
    }
}

fn claims(iat: i64, exp: i64, valid: bool) -> serde_json::Value {
    json!({"iss": "keymeter", "sub": "lic_1", "iat": iat, "exp": exp, "nonce": "n-1",
           "valid": valid, "code": if valid { "VALID" } else { "SUSPENDED" },
           "entitlements": ["pro"], "quota": null, "seats": {"used": 1, "max": 10}, "expires_at": null,
           "product": "ide", "fingerprint": "m1"})
}

fn asked() -> Asked {
    Asked {
        license_id: "lic_1".into(),
        product: Some("ide".into()),
        fingerprint: Some("m1".into()),
    }
}

/// Any valid verdict used to be cached, whatever it answered: now only one
/// for this request (nonce), license, product and machine stands in, and
/// never past the license's own expiry.
#[test]
fn the_cache_keeps_only_a_verdict_about_our_own_request() {
    let i = Issuer::new();
    let keys = i.jwks();
    let mut cache = VerdictCache::new(asked(), 3600);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims(NOW, NOW + 300, true);
        c[k] = v;
        i.token(&c)
    };
    for (token, claim) in [
        (with("sub", json!("lic_2")), "license"),
        (with("product", json!("cad")), "product"),
        (with("product", json!(null)), "product"),
        (with("fingerprint", json!("m2")), "fingerprint"),
    ] {
        assert!(
            matches!(
                cache.accept(&token, &keys, NOW, "n-1"),
                Err(ClientError::NotOurs { claim: c, .. }) if c == claim
            ),
            "{claim}"
        );
        assert!(cache.fallback(NOW).is_none(), "{claim}");
    }
    let ours = i.token(&claims(NOW, NOW + 300, true));
    assert!(matches!(
        cache.accept(&ours, &keys, NOW, "n-2"),
        Err(ClientError::NonceMismatch { .. })
    ));
    assert!(cache.fallback(NOW).is_none());
    cache.accept(&ours, &keys, NOW, "n-1").unwrap();
    assert!(cache.fallback(NOW + 60).is_some());

    // A license that expires within the grace window stops at its expiry.
    let expiring = with("expires_at", json!("2026-09-21T14:23:20Z"));
    let expiry = NOW + 600;
    let mut cache = VerdictCache::new(asked(), 3600);
    cache.accept(&expiring, &keys, NOW, "n-1").unwrap();
    assert!(cache.fallback(expiry - 1).is_some());
    assert!(cache.fallback(expiry).is_none());
}

#[test]
fn a_good_token_verifies_and_carries_its_claims() {
    let i = Issuer::new();
    let c = verify_token_for_nonce(
        &i.token(&claims(NOW, NOW + 300, true)),
        &i.jwks(),
        NOW,
        "n-1",
    )
    .unwrap();
    assert_eq!(
        (c.sub.as_str(), c.code.as_str(), c.valid),
        ("lic_1", "VALID", true)
    );
    assert_eq!(c.seats, Some(Seats { used: 1, max: 10 }));
}

#[test]
fn tampered_replayed_or_foreign_tokens_are_refused() {
    let i = Issuer::new();
    let keys = i.jwks();
    let t = i.token(&claims(NOW, NOW + 300, false));
    // Flip the verdict in the claims, keep the signature.
    let parts: Vec<&str> = t.split('.').collect();
    let forged = B64.encode(claims(NOW, NOW + 300, true).to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    assert_eq!(
        verify_token(&tampered, &keys, NOW),
        Err(ClientError::BadSignature)
    );
    // Signed by someone else with the same kid.
    let other = Issuer::new();
    assert_eq!(
        verify_token(&other.token(&claims(NOW, NOW + 300, true)), &keys, NOW),
        Err(ClientError::BadSignature)
    );
    // Unknown key id.
    let stranger = Issuer {
        kid: "k9".into(),
        ..Issuer::new()
    };
    assert!(matches!(
        verify_token(&stranger.token(&claims(NOW, NOW + 1, true)), &keys, NOW),
        Err(ClientError::UnknownKey(_))
    ));
    // Another request's answer.
    assert!(matches!(
        verify_token_for_nonce(&i.token(&claims(NOW, NOW + 300, true)), &keys, NOW, "n-2"),
        Err(ClientError::NonceMismatch { .. })
    ));
    // alg=none and garbage.
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","kid":"k1"}"#),
        parts[1]
    );
    assert!(matches!(
        verify_token(&none, &keys, NOW),
        Err(ClientError::Unsupported(_))
    ));
    assert!(matches!(
        verify_token("a.b", &keys, NOW),
        Err(ClientError::Malformed(_))
    ));
}

#[test]
fn clock_set_back_and_expiry_are_refused() {
    let i = Issuer::new();
    let keys = i.jwks();
    let t = i.token(&claims(NOW, NOW + 300, true));
    assert!(matches!(
        verify_token(&t, &keys, NOW - 3600),
        Err(ClientError::IssuedInFuture { .. })
    ));
    assert!(verify_token(&t, &keys, NOW - CLOCK_SKEW_S).is_ok());
    assert!(matches!(
        verify_token(&t, &keys, NOW + 300),
        Err(ClientError::Expired { .. })
    ));
}

#[test]
fn license_files_open_only_with_the_right_key_and_fingerprint() {
    let i = Issuer::new();
    let keys = i.jwks();
    let file = i.file("lk_secret", Some("machine-a"), NOW, NOW + 86_400);
    let c = open_license_file(&file, "lk_secret", Some("machine-a"), &keys, NOW).unwrap();
    assert_eq!(c.license["id"], "lic_1");
    assert_eq!(
        open_license_file(&file, "lk_secret", Some("machine-b"), &keys, NOW),
        Err(ClientError::Decrypt)
    );
    assert_eq!(
        open_license_file(&file, "lk_wrong", Some("machine-a"), &keys, NOW),
        Err(ClientError::Decrypt)
    );
    assert!(matches!(
        open_license_file(&file, "lk_secret", Some("machine-a"), &keys, NOW + 86_400),
        Err(ClientError::Expired { .. })
    ));
    assert!(matches!(
        open_license_file(&file, "lk_secret", Some("machine-a"), &keys, NOW - 7200),
        Err(ClientError::IssuedInFuture { .. })
    ));
    // Any edit of the envelope breaks the signature before decryption.
    let mut f: LicenseFile = serde_json::from_str(&file).unwrap();
    f.fingerprint_bound = false;
    let edited = serde_json::to_string(&f).unwrap();
    assert_eq!(
        open_license_file(&edited, "lk_secret", None, &keys, NOW),
        Err(ClientError::BadSignature)
    );
    let unbound = i.file("lk_secret", None, NOW, NOW + 60);
    assert!(open_license_file(&unbound, "lk_secret", Some("anything"), &keys, NOW).is_ok());
}

#[test]
fn the_cache_falls_back_within_grace_and_forgets_on_a_no() {
    let i = Issuer::new();
    let keys = i.jwks();
    let mut cache = VerdictCache::new(asked(), 3600);
    assert!(cache.fallback(NOW).is_none());
    cache
        .accept(&i.token(&claims(NOW, NOW + 300, true)), &keys, NOW, "n-1")
        .unwrap();
    assert_eq!(
        cache.fallback(NOW + 1800).map(|c| c.code.as_str()),
        Some("VALID")
    );
    assert!(cache.fallback(NOW + 3601).is_none(), "grace is over");
    assert!(cache.fallback(NOW - 3600).is_none(), "clock set back");
    cache
        .accept(
            &i.token(&claims(NOW + 10, NOW + 300, false)),
            &keys,
            NOW + 10,
            "n-1",
        )
        .unwrap();
    assert!(cache.fallback(NOW + 20).is_none());
}

#[test]
fn a_verdict_issued_at_the_start_of_time_is_no_fallback() {
    // Found by the verdict_token fuzz target: a signed verdict with `iat`
    // near i64::MIN overflowed the grace computation (and, without overflow
    // checks, wrapped into "within grace").
    let i = Issuer::new();
    let keys = i.jwks();
    let mut cache = VerdictCache::new(asked(), 0);
    let t = i.token(&claims(-9_223_372_036_837_998_593, NOW + 11_777, true));
    assert!(cache.accept(&t, &keys, NOW, "n-1").unwrap().valid);
    assert!(cache.fallback(NOW).is_none());
    assert!(cache.fallback(i64::MIN).is_none());
}

#[test]
fn extreme_clocks_are_refused_not_overflowed() {
    // The same overflow with the caller's clock at the ends of the range.
    let i = Issuer::new();
    let keys = i.jwks();
    let t = i.token(&claims(NOW, NOW + 300, true));
    assert!(matches!(
        verify_token(&t, &keys, i64::MAX),
        Err(ClientError::Expired { .. })
    ));
    let mut cache = VerdictCache::new(asked(), 3600);
    cache.accept(&t, &keys, NOW, "n-1").unwrap();
    assert!(cache.fallback(i64::MAX).is_none());
    assert!(cache.fallback(i64::MIN).is_none());
}
