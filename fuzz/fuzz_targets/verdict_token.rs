//! Offline verification in keymeter-client: verdict tokens (JWT, EdDSA),
//! license files, JWKS documents and the verdict cache.
//!
//! Two fixed test keys are published (`k1`, `k2`). Properties: never panics;
//! whatever verifies carries a signature that checks with ed25519 directly
//! under the key its `kid` names; a token or file signed here verifies exactly
//! when its content is well-formed and current; a token altered after signing
//! never verifies; the verdict cache serves a verdict exactly when it said yes
//! and `later` is within its grace window (issued at most `grace_s` before,
//! and not after `later` beyond the clock skew).

#![no_main]

use std::sync::OnceLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use keymeter_client::{
    license_file_key, license_file_signing_input, open_license_file, verify_token,
    verify_token_for_nonce, Asked, Claims, ClientError, Keys, LicenseFile, LicenseFileContents,
    VerdictCache, CLOCK_SKEW_S, LICENSE_FILE_FORMAT,
};
use keymeter_fuzz::input::token::{signing_key, ClaimsText, FilePlaintext, HeaderText, Input, Kid};
use libfuzzer_sys::fuzz_target;

fn published() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let x = |kid: &str| B64.encode(signing_key(kid).unwrap().verifying_key().to_bytes());
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": x("k1")},
            {"kty": "OKP", "crv": "Ed25519", "kid": "k2", "x": x("k2")},
        ]});
        Keys::from_jwks(&doc.to_string()).unwrap()
    })
}

fn verifying_key(kid: &str) -> VerifyingKey {
    signing_key(kid)
        .unwrap_or_else(|| panic!("verified under unpublished kid {kid:?}"))
        .verifying_key()
}

/// A verified token must carry a valid signature by the key its header names.
fn assert_token_signed(token: &str) {
    let (input, sig) = token.rsplit_once('.').expect("three parts");
    let (h, _) = input.split_once('.').expect("three parts");
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(h).unwrap()).unwrap();
    let kid = header["kid"].as_str().expect("a kid");
    let sig = Signature::from_slice(&B64.decode(sig).unwrap()).unwrap();
    verifying_key(kid)
        .verify_strict(input.as_bytes(), &sig)
        .expect("a verified token's signature checks directly");
}

fn assert_current(iat: i64, exp: i64, now: i64) {
    assert!(i128::from(iat) <= i128::from(now) + i128::from(CLOCK_SKEW_S));
    assert!(now < exp);
}

trait Bytes {
    fn bytes(&self) -> Vec<u8>;
}

impl Bytes for ClaimsText {
    fn bytes(&self) -> Vec<u8> {
        match self {
            ClaimsText::Raw(b) => b.clone(),
            ClaimsText::Fields {
                iat,
                exp,
                nonce,
                valid,
                code,
                entitlements,
                quota,
                seats,
            } => serde_json::json!({
                "iss": "keymeter", "sub": "lic_1", "iat": iat.get(), "exp": exp.get(),
                "nonce": nonce, "valid": valid, "code": code, "entitlements": entitlements,
                "quota": quota.as_ref().map(|(meter, used, limit, end)| serde_json::json!(
                    {"meter": meter, "used": used, "limit": limit, "period_end": end})),
                "seats": seats.map(|(used, max)| serde_json::json!({"used": used, "max": max})),
                "expires_at": null,
            })
            .to_string()
            .into_bytes(),
        }
    }
}

impl Bytes for HeaderText {
    fn bytes(&self) -> Vec<u8> {
        match self {
            HeaderText::EdDsa(kid) => {
                serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid.name()})
                    .to_string()
                    .into_bytes()
            }
            HeaderText::Raw(b) => b.clone(),
        }
    }
}

fn token_of(header: &[u8], claims: &[u8], signer: &Kid) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let key = signing_key(signer.name()).unwrap_or_else(|| SigningKey::from_bytes(&[9; 32]));
    let sig = B64.encode(key.sign(input.as_bytes()).to_bytes());
    format!("{input}.{sig}")
}

fn check_token(token: &str, keys: &Keys, now: i64) -> Result<Claims, ClientError> {
    let result = verify_token(token, keys, now);
    if let Ok(claims) = &result {
        assert_token_signed(token);
        assert_current(claims.iat, claims.exp, now);
    }
    result
}

#[derive(serde::Deserialize)]
struct HeaderFields {
    alg: String,
    kid: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn signed(
    keys: &Keys,
    header: &HeaderText,
    claims: &ClaimsText,
    signer: &Kid,
    now: i64,
    tamper: Option<(u16, u8)>,
    grace_s: i64,
    later: i64,
) {
    let (header, claims_bytes) = (header.bytes(), claims.bytes());
    let token = token_of(&header, &claims_bytes, signer);
    if let Some((at, mask)) = tamper.filter(|&(_, mask)| mask != 0) {
        let mut bytes = token.clone().into_bytes();
        let at = usize::from(at) % bytes.len();
        bytes[at] ^= mask;
        if let Ok(altered) = String::from_utf8(bytes) {
            assert!(
                check_token(&altered, keys, now).is_err(),
                "an altered token verified: {altered}"
            );
        }
        return;
    }

    let result = check_token(&token, keys, now);
    // It verifies exactly when it is well-formed, current and signed by the key it names.
    let parsed_header = serde_json::from_slice::<HeaderFields>(&header).ok();
    let named = parsed_header
        .as_ref()
        .filter(|h| h.alg == "EdDSA")
        .and_then(|h| h.kid.as_deref());
    let expected = named == Some(signer.name())
        && signing_key(signer.name()).is_some()
        && serde_json::from_slice::<Claims>(&claims_bytes).is_ok_and(|c| {
            i128::from(c.iat) <= i128::from(now) + i128::from(CLOCK_SKEW_S) && now < c.exp
        });
    assert_eq!(result.is_ok(), expected, "{result:?}");

    // The cache asks about exactly what the token answers, so a verified
    // token is accepted; one asked about another license is refused.
    let Ok(parsed) = serde_json::from_slice::<Claims>(&claims_bytes) else {
        return;
    };
    let asked = Asked {
        license_id: parsed.sub.clone(),
        product: parsed.product.clone(),
        fingerprint: parsed.fingerprint.clone(),
    };
    let nonce = parsed.nonce.clone().unwrap_or_default();
    let mut elsewhere = VerdictCache::new(
        Asked {
            license_id: format!("{}-other", parsed.sub),
            ..asked.clone()
        },
        grace_s,
    );
    assert!(elsewhere.accept(&token, keys, now, &nonce).is_err());
    assert!(elsewhere.fallback(later).is_none());
    let mut cache = VerdictCache::new(asked, grace_s);
    let accepted = cache.accept(&token, keys, now, &nonce);
    assert_eq!(
        accepted.is_ok(),
        result.is_ok() && parsed.nonce.is_some(),
        "{accepted:?}"
    );
    if let Ok(claims) = accepted {
        // Served from the cache exactly when the verdict said yes, was
        // issued no later than `later` (give or take the clock skew) and no
        // more than the grace before it, and the license had not expired by
        // then; computed without overflow.
        let (iat, later_wide) = (i128::from(claims.iat), i128::from(later));
        let before_expiry = claims.expires_at.as_deref().is_none_or(|e| {
            chrono::DateTime::parse_from_rfc3339(e).is_ok_and(|e| later < e.timestamp())
        });
        let within_grace = claims.valid
            && before_expiry
            && iat <= later_wide + i128::from(CLOCK_SKEW_S)
            && later_wide - iat <= i128::from(grace_s);
        match cache.fallback(later) {
            Some(fallback) => {
                assert!(
                    within_grace,
                    "served at {later}: {claims:?}, grace {grace_s}"
                );
                assert_eq!(fallback, &claims);
            }
            None => assert!(
                !within_grace,
                "not served at {later} within grace {grace_s}: {claims:?}"
            ),
        }
        // An explicit "no" from the server, signed the same way, ends the grace.
        let mut no: serde_json::Value = serde_json::from_slice(&claims_bytes).unwrap();
        no["valid"] = false.into();
        let no = token_of(&header, no.to_string().as_bytes(), signer);
        if cache.accept(&no, keys, now, &nonce).is_ok() {
            assert!(
                cache.fallback(later).is_none(),
                "a cached yes outlived a no"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn signed_file(
    keys: &Keys,
    kid: &Kid,
    license_id: &str,
    bind: Option<&str>,
    salt: &[u8],
    nonce: &[u8],
    plaintext: &FilePlaintext,
    license_key: &str,
    open_with: Option<&str>,
    now: i64,
) {
    let text = match plaintext {
        FilePlaintext::Raw(b) => b.clone(),
        FilePlaintext::Fields {
            issued_at,
            expires_at,
        } => serde_json::json!({"license": {"id": license_id}, "issued_at": issued_at.get(),
                                "expires_at": expires_at.get()})
        .to_string()
        .into_bytes(),
    };
    let aes_nonce = if nonce.len() == 12 { nonce } else { &[0; 12] };
    let key = license_file_key(license_key, salt, bind);
    let ct = Aes256Gcm::new(&key.into())
        .encrypt(
            Nonce::from_slice(aes_nonce),
            Payload {
                msg: &text,
                aad: license_id.as_bytes(),
            },
        )
        .unwrap();
    let mut f = LicenseFile {
        format: LICENSE_FILE_FORMAT.into(),
        kid: kid.name().to_owned(),
        license_id: license_id.to_owned(),
        fingerprint_bound: bind.is_some(),
        salt: B64.encode(salt),
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ct),
        signature: String::new(),
    };
    let signer = signing_key(kid.name()).unwrap_or_else(|| SigningKey::from_bytes(&[9; 32]));
    f.signature = B64.encode(
        signer
            .sign(license_file_signing_input(&f).as_bytes())
            .to_bytes(),
    );
    let json = serde_json::to_string(&f).unwrap();
    let result = check_file(&json, license_key, open_with, keys, now);
    let opens = signing_key(kid.name()).is_some()
        && nonce.len() == 12
        // The fingerprint only extends the KDF info: an empty one is the same as none.
        && bind.is_none_or(|b| open_with.unwrap_or("") == b)
        && serde_json::from_slice::<LicenseFileContents>(&text).is_ok_and(|c| {
            i128::from(c.issued_at) <= i128::from(now) + i128::from(CLOCK_SKEW_S)
                && now < c.expires_at
        });
    assert_eq!(result.is_ok(), opens, "{result:?}");
}

fn check_file(
    json: &str,
    license_key: &str,
    fingerprint: Option<&str>,
    keys: &Keys,
    now: i64,
) -> Result<LicenseFileContents, ClientError> {
    let result = open_license_file(json, license_key, fingerprint, keys, now);
    if let Ok(contents) = &result {
        let f: LicenseFile = serde_json::from_str(json).unwrap();
        let sig = Signature::from_slice(&B64.decode(&f.signature).unwrap()).unwrap();
        verifying_key(&f.kid)
            .verify_strict(license_file_signing_input(&f).as_bytes(), &sig)
            .expect("an opened file's signature checks directly");
        assert_current(contents.issued_at, contents.expires_at, now);
    }
    result
}

fuzz_target!(|input: Input| {
    let keys = published();
    match input {
        Input::Token { token, now, nonce } => {
            let now = now.get();
            let _ = check_token(&token, keys, now);
            if let Some(nonce) = nonce {
                if let Ok(c) = verify_token_for_nonce(&token, keys, now, &nonce) {
                    assert_eq!(c.nonce.as_deref(), Some(nonce.as_str()));
                    assert_token_signed(&token);
                }
            }
        }
        Input::Signed {
            header,
            claims,
            signer,
            now,
            tamper,
            grace_s,
            later,
        } => signed(
            keys,
            &header,
            &claims,
            &signer,
            now.get(),
            tamper,
            grace_s,
            later.get(),
        ),
        Input::File {
            json,
            license_key,
            fingerprint,
            now,
        } => {
            let _ = check_file(&json, &license_key, fingerprint.as_deref(), keys, now.get());
        }
        Input::SignedFile {
            kid,
            license_id,
            bind,
            salt,
            nonce,
            plaintext,
            license_key,
            open_with,
            now,
        } => signed_file(
            keys,
            &kid,
            &license_id,
            bind.as_deref(),
            &salt,
            &nonce,
            &plaintext,
            &license_key,
            open_with.as_deref(),
            now.get(),
        ),
        Input::Jwks(json) => {
            let _ = Keys::from_jwks(&json);
        }
    }
});
