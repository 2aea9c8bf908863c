//! Offline checks for products that use keymeter licenses, without the
//! server: verify a signed verdict token or a license file with the server's
//! published keys (`GET /.well-known/jwks.json`), and fall back to the last
//! good verdict for a bounded time when the server cannot be reached.
//!
//! Formats (specified here; the server produces exactly these):
//!
//! - **Verdict token**: a JWT signed with EdDSA/Ed25519 (RFC 8037), compact
//!   form `b64url(header).b64url(claims).b64url(signature)` without padding;
//!   header `{"alg":"EdDSA","typ":"JWT","kid":…}`; claims as [`Claims`].
//! - **License file**: JSON [`LicenseFile`]. The payload is encrypted with
//!   AES-256-GCM under a key derived by HKDF-SHA256 from the license key
//!   (salt from the file, info `"keymeter license file v1"` followed by the
//!   machine fingerprint when the file is bound to one), AAD = license id;
//!   the whole envelope is signed with Ed25519 (see [`license_file_signing_input`]).
//!
//! - **Billing statements**: see [`statements`] and [`merkle`].
//!
//! Time is a parameter (`now_unix_s`), never read here, so callers decide
//! which clock they trust. A token or file issued in the future (beyond
//! [`CLOCK_SKEW_S`]) means the local clock was set back: it is refused.

pub mod merkle;
pub mod signing;
pub mod statements;

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Tolerated difference between the issuer's clock and ours.
pub const CLOCK_SKEW_S: i64 = 60;
/// The `format` of a license file this crate reads.
pub const LICENSE_FILE_FORMAT: &str = "keymeter-license-file/v1";
/// HKDF `info` prefix for the license-file key.
pub const LICENSE_FILE_KDF_INFO: &[u8] = b"keymeter license file v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("unsupported algorithm or format: {0}")]
    Unsupported(String),
    #[error("no published key has id {0}")]
    UnknownKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("issued at {iat}, which is in the future (now {now}): the local clock may have been set back")]
    IssuedInFuture { iat: i64, now: i64 },
    #[error("expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("the verdict answers nonce {found:?}, not ours ({expected:?})")]
    NonceMismatch {
        expected: String,
        found: Option<String>,
    },
    #[error("cannot decrypt: wrong license key or fingerprint, or the file was altered")]
    Decrypt,
    #[error("the verdict is about {claim} {found:?}, not ours ({expected:?})")]
    NotOurs {
        claim: &'static str,
        expected: String,
        found: Option<String>,
    },
}

/// Quota snapshot carried by a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    pub meter: String,
    pub used: f64,
    pub limit: f64,
    pub period_end: Option<String>,
}

/// Seat usage carried by a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seats {
    pub used: u32,
    pub max: u32,
}

/// The claims of a verdict token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// License id.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub nonce: Option<String>,
    pub valid: bool,
    /// `VALID`, `IN_GRACE`, `EXPIRED`, …
    pub code: String,
    #[serde(default)]
    pub entitlements: Vec<String>,
    pub quota: Option<Quota>,
    pub seats: Option<Seats>,
    pub expires_at: Option<String>,
    /// The license's product (servers before this claim omit it).
    #[serde(default)]
    pub product: Option<String>,
    /// The machine fingerprint the validation was asked for, if any.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The plan version (`pro@2`) whose terms decided the verdict; absent
    /// for a license with an inline policy (and from older servers).
    #[serde(default)]
    pub plan: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    crv: Option<String>,
    kid: Option<String>,
    x: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// The server's published verifying keys, by key id.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    by_kid: HashMap<String, VerifyingKey>,
}

impl Keys {
    /// Parses a JWKS document; keys other than OKP/Ed25519 are ignored.
    pub fn from_jwks(jwks_json: &str) -> Result<Keys, ClientError> {
        let set: JwkSet = serde_json::from_str(jwks_json)
            .map_err(|e| ClientError::Malformed(format!("JWKS: {e}")))?;
        let mut by_kid = HashMap::new();
        for k in set.keys {
            if k.kty != "OKP" || k.crv.as_deref() != Some("Ed25519") {
                continue;
            }
            let (Some(kid), Some(x)) = (k.kid, k.x) else {
                continue;
            };
            let bytes: [u8; 32] = B64
                .decode(x)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ClientError::Malformed(format!("JWK {kid}: x is not 32 bytes")))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| ClientError::Malformed(format!("JWK {kid}: not an Ed25519 point")))?;
            by_kid.insert(kid, key);
        }
        Ok(Keys { by_kid })
    }

    fn get(&self, kid: &str) -> Result<&VerifyingKey, ClientError> {
        self.by_kid
            .get(kid)
            .ok_or_else(|| ClientError::UnknownKey(kid.to_owned()))
    }

    fn verify(&self, kid: &str, message: &[u8], signature: &[u8]) -> Result<(), ClientError> {
        let signature = Signature::from_slice(signature).map_err(|_| ClientError::BadSignature)?;
        self.get(kid)?
            .verify_strict(message, &signature)
            .map_err(|_| ClientError::BadSignature)
    }
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, ClientError> {
    B64.decode(part)
        .map_err(|e| ClientError::Malformed(format!("{what} is not base64url: {e}")))
}

fn check_times(iat: i64, exp: i64, now: i64) -> Result<(), ClientError> {
    // Saturating: `now` is the caller's and `iat` the issuer's; neither may overflow.
    if iat > now.saturating_add(CLOCK_SKEW_S) {
        return Err(ClientError::IssuedInFuture { iat, now });
    }
    if now >= exp {
        return Err(ClientError::Expired { exp, now });
    }
    Ok(())
}

/// Verifies a verdict token's signature, issue time and expiry.
pub fn verify_token(token: &str, keys: &Keys, now_unix_s: i64) -> Result<Claims, ClientError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ClientError::Malformed("a JWT has three parts".into()));
    };
    let header: Header = serde_json::from_slice(&b64(h, "header")?)
        .map_err(|e| ClientError::Malformed(format!("header: {e}")))?;
    if header.alg != "EdDSA" {
        return Err(ClientError::Unsupported(format!("alg {}", header.alg)));
    }
    let kid = header
        .kid
        .ok_or_else(|| ClientError::Malformed("header has no kid".into()))?;
    let signing_input = &token[..h.len() + 1 + c.len()];
    keys.verify(&kid, signing_input.as_bytes(), &b64(s, "signature")?)?;
    let claims: Claims = serde_json::from_slice(&b64(c, "claims")?)
        .map_err(|e| ClientError::Malformed(format!("claims: {e}")))?;
    check_times(claims.iat, claims.exp, now_unix_s)?;
    Ok(claims)
}

/// [`verify_token`], and the verdict must answer our own request nonce, so
/// a replayed or substituted server answer is detected.
pub fn verify_token_for_nonce(
    token: &str,
    keys: &Keys,
    now_unix_s: i64,
    nonce: &str,
) -> Result<Claims, ClientError> {
    let claims = verify_token(token, keys, now_unix_s)?;
    if claims.nonce.as_deref() != Some(nonce) {
        return Err(ClientError::NonceMismatch {
            expected: nonce.to_owned(),
            found: claims.nonce,
        });
    }
    Ok(claims)
}

/// A license file as issued by `POST /api/v1/licenses/{id}/license-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseFile {
    pub format: String,
    pub kid: String,
    pub license_id: String,
    pub fingerprint_bound: bool,
    pub salt: String,
    pub nonce: String,
    pub ciphertext: String,
    pub signature: String,
}

/// The decrypted content of a license file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseFileContents {
    /// The license as the server describes it (no secrets).
    pub license: serde_json::Value,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// The bytes a license file's signature covers.
pub fn license_file_signing_input(f: &LicenseFile) -> String {
    format!(
        "{}.{}.{}.{}.{}.{}.{}",
        f.format, f.kid, f.license_id, f.fingerprint_bound, f.salt, f.nonce, f.ciphertext
    )
}

/// The AES-256-GCM key of a license file.
pub fn license_file_key(license_key: &str, salt: &[u8], fingerprint: Option<&str>) -> [u8; 32] {
    let mut info = LICENSE_FILE_KDF_INFO.to_vec();
    if let Some(fp) = fingerprint {
        info.extend_from_slice(fp.as_bytes());
    }
    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), license_key.as_bytes())
        .expand(&info, &mut key)
        .expect("32 bytes is a valid HKDF output length");
    key
}

/// Verifies and decrypts a license file. The signature is checked before
/// anything is decrypted; a file bound to a fingerprint opens only with it.
pub fn open_license_file(
    file_json: &str,
    license_key: &str,
    fingerprint: Option<&str>,
    keys: &Keys,
    now_unix_s: i64,
) -> Result<LicenseFileContents, ClientError> {
    let f: LicenseFile = serde_json::from_str(file_json)
        .map_err(|e| ClientError::Malformed(format!("license file: {e}")))?;
    if f.format != LICENSE_FILE_FORMAT {
        return Err(ClientError::Unsupported(format!("format {}", f.format)));
    }
    keys.verify(
        &f.kid,
        license_file_signing_input(&f).as_bytes(),
        &b64(&f.signature, "signature")?,
    )?;
    let salt = b64(&f.salt, "salt")?;
    let nonce = b64(&f.nonce, "nonce")?;
    if nonce.len() != 12 {
        return Err(ClientError::Malformed("nonce must be 12 bytes".into()));
    }
    let ciphertext = b64(&f.ciphertext, "ciphertext")?;
    let fp = if f.fingerprint_bound {
        fingerprint
    } else {
        None
    };
    let key = license_file_key(license_key, &salt, fp);
    let plaintext = Aes256Gcm::new(&key.into())
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad: f.license_id.as_bytes(),
            },
        )
        .map_err(|_| ClientError::Decrypt)?;
    let contents: LicenseFileContents = serde_json::from_slice(&plaintext)
        .map_err(|e| ClientError::Malformed(format!("license file payload: {e}")))?;
    check_times(contents.issued_at, contents.expires_at, now_unix_s)?;
    Ok(contents)
}

/// What a product asked the server: a verdict is only about this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The license id (`sub`).
    pub license_id: String,
    /// The product's id, checked against the `product` claim when set.
    pub product: Option<String>,
    /// The machine fingerprint sent, checked against the `fingerprint`
    /// claim when set.
    pub fingerprint: Option<String>,
}

/// Remembers the last good verdict about one license on one machine, so a
/// product keeps working for a bounded time while the server is
/// unreachable. Only a verdict that answers this product's own request (its
/// nonce, license, product and fingerprint) is remembered, and it stands in
/// neither beyond the grace window nor past the license's own expiry.
#[derive(Debug, Clone)]
pub struct VerdictCache {
    asked: Asked,
    grace_s: i64,
    last_good: Option<Claims>,
}

impl VerdictCache {
    /// `grace_s`: how long after the last good verdict was issued it may
    /// stand in for the server.
    pub fn new(asked: Asked, grace_s: i64) -> VerdictCache {
        VerdictCache {
            asked,
            grace_s,
            last_good: None,
        }
    }

    /// Verifies a fresh token: signature and times, then that it answers
    /// `nonce` (the one sent with this request) and is about the license,
    /// product and machine asked. When it says the license is valid it is
    /// remembered; an explicit "no" forgets any earlier "yes". Returns the
    /// claims either way.
    pub fn accept(
        &mut self,
        token: &str,
        keys: &Keys,
        now_unix_s: i64,
        nonce: &str,
    ) -> Result<Claims, ClientError> {
        let claims = verify_token_for_nonce(token, keys, now_unix_s, nonce)?;
        let a = &self.asked;
        check_claim("license", Some(&a.license_id), Some(&claims.sub))?;
        check_claim("product", a.product.as_ref(), claims.product.as_ref())?;
        check_claim(
            "fingerprint",
            a.fingerprint.as_ref(),
            claims.fingerprint.as_ref(),
        )?;
        if claims.valid {
            self.last_good = Some(claims.clone());
        } else {
            self.last_good = None;
        }
        Ok(claims)
    }

    /// The verdict to use when the server cannot be reached: the last good
    /// one, if it was issued within the grace window, not in the future,
    /// and the license has not expired since.
    pub fn fallback(&self, now_unix_s: i64) -> Option<&Claims> {
        let c = self.last_good.as_ref()?;
        if c.iat > now_unix_s.saturating_add(CLOCK_SKEW_S)
            || now_unix_s.saturating_sub(c.iat) > self.grace_s
        {
            return None;
        }
        if let Some(expires_at) = &c.expires_at {
            let expiry = chrono::DateTime::parse_from_rfc3339(expires_at).ok()?;
            if now_unix_s >= expiry.timestamp() {
                return None;
            }
        }
        Some(c)
    }
}

/// `expected` (when set) must be what the verdict says.
fn check_claim(
    claim: &'static str,
    expected: Option<&String>,
    found: Option<&String>,
) -> Result<(), ClientError> {
    match expected {
        Some(e) if found != Some(e) => Err(ClientError::NotOurs {
            claim,
            expected: e.clone(),
            found: found.cloned(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
