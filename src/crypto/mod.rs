//! Secrets and signatures: the master key, the keys derived from it, license
//! keys at rest (HMAC lookup digest + AES-256-GCM envelope), and Ed25519
//! signing of verdict tokens (JWT, RFC 8037) and license files.
//!
//! The working keys (pepper, data key, signing keys) live wrapped in the
//! keyring (see [`keyring`]), which the **master key** opens. Data
//! directories created before the keyring existed adopt the keys that
//! HKDF-SHA256 derived from the master key, each purpose under its own
//! `info` string:
//!
//! | info | use |
//! |---|---|
//! | `keymeter license-key pepper v1` | HMAC-SHA256 key of the license-key lookup digest |
//! | `keymeter license-key envelope v1` | AES-256-GCM key sealing license keys at rest |
//! | `keymeter signing key v1` | Ed25519 seed of the verdict / license-file signing key |
//!
//! The key id (`kid`) is the first 16 hex characters of SHA-256 of the public
//! key, so a rotated key gets a new kid and verifiers pick the key by kid.
//!
//! The UNIQUE_COUNT key (128 bits) is HKDF-SHA256 of the pepper with `info`
//! `keymeter unique-count key v1`. It needs no keyring entry of its own: the
//! pepper is as secret, lives exactly as long as the data directory (the
//! log's lookup digests depend on it, so it never changes), and is kept
//! through a master-key rotation, which re-wraps it unchanged. So every
//! fold of one data directory, live, after a restart or in `keymeter
//! replay`, hashes under the same key.

pub mod keyring;
mod master;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use master::{
    default_key_path, generate_key_file, is_inside, load_master_key, MasterKey, MasterKeySource,
    SecretString,
};

/// `format` of a license file, and the first field of what its signature covers.
pub const LICENSE_FILE_FORMAT: &str = "keymeter-license-file/v1";
/// HKDF info of a license file's encryption key (the fingerprint follows when bound).
pub const LICENSE_FILE_KDF_INFO: &[u8] = b"keymeter license file v1";
/// Prefix of every license key.
pub const LICENSE_KEY_PREFIX: &str = "lk_";

const PEPPER_INFO: &[u8] = b"keymeter license-key pepper v1";
const ENVELOPE_INFO: &[u8] = b"keymeter license-key envelope v1";
const SIGNING_INFO: &[u8] = b"keymeter signing key v1";
const UNIQUE_INFO: &[u8] = b"keymeter unique-count key v1";
const NONCE_BYTES: usize = 12;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed value is malformed or was not sealed under this master key")]
    Unseal,
}

/// The working keys, unwrapped from the keyring. Cheap to share behind an `Arc`.
pub struct Keys {
    /// HMAC keyed with the pepper, cloned per digest (saves re-keying).
    pepper: HmacSha256,
    envelope: Aes256Gcm,
    signing: SigningKey,
    /// The key of UNIQUE_COUNT identities, derived from the pepper.
    unique: crate::meter::UniqueKey,
    kid: String,
    /// `b64url(header)` of every token this key signs.
    jwt_header_b64: String,
    /// Retired signing keys still published for verification, with the
    /// time (ms) until which they are.
    retired: Vec<(String, VerifyingKey, i64)>,
}

fn derive(master: &MasterKey, info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(None, master.bytes())
        .expand(info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The UNIQUE_COUNT key of a data directory, from its pepper.
fn unique_key(pepper: &[u8; 32]) -> crate::meter::UniqueKey {
    let mut out = Zeroizing::new([0u8; 16]);
    hkdf::Hkdf::<Sha256>::new(None, pepper)
        .expand(UNIQUE_INFO, out.as_mut())
        .expect("16 bytes is a valid HKDF-SHA256 output length");
    crate::meter::UniqueKey::from_bytes(*out)
}

/// The key id of a public key: 16 hex characters of its SHA-256.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(public.as_bytes()))[..16].to_owned()
}

impl Keys {
    /// The keys a master key derived before keys were kept in a keyring
    /// (data directories created then keep them, wrapped, in their keyring).
    pub fn derive(master: &MasterKey) -> Keys {
        let [pepper, data, seed] = legacy_material(master);
        Keys::from_material(&pepper, &data, &seed, Vec::new())
    }

    fn from_material(
        pepper: &[u8; 32],
        data: &[u8; 32],
        seed: &[u8; 32],
        retired: Vec<(String, VerifyingKey, i64)>,
    ) -> Keys {
        let signing = SigningKey::from_bytes(seed);
        let kid = key_id(&signing.verifying_key());
        let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#);
        Keys {
            pepper: <HmacSha256 as Mac>::new_from_slice(pepper).expect("HMAC takes any key length"),
            envelope: Aes256Gcm::new(data.into()),
            signing,
            unique: unique_key(pepper),
            jwt_header_b64: B64.encode(header),
            kid,
            retired,
        }
    }

    /// Unwraps the keyring's current keys with `kek`. Retired signing keys
    /// published until after `now_ms` are kept for the JWKS.
    pub fn from_keyring(
        ring: &keyring::Keyring,
        kek: &keyring::Kek,
        now_ms: i64,
    ) -> Result<Keys, keyring::KeyringError> {
        let pepper = kek.unwrap(ring.pepper()?)?;
        let data = kek.unwrap(ring.data()?)?;
        let seed = kek.unwrap(ring.current_signing()?)?;
        let mut retired = Vec::new();
        for e in ring.signing_keys() {
            match e.publish_until_ms {
                Some(until) if e.retired_ms.is_some() && until > now_ms => {
                    let old = SigningKey::from_bytes(&*kek.unwrap(e)?);
                    retired.push((e.id.clone(), old.verifying_key(), until));
                }
                _ => {}
            }
        }
        Ok(Keys::from_material(&pepper, &data, &seed, retired))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The key every UNIQUE_COUNT identity of this data directory is made
    /// under: the writer's extraction, every fold and `keymeter replay`.
    pub fn unique_key(&self) -> &crate::meter::UniqueKey {
        &self.unique
    }

    /// HMAC-SHA256(pepper, key): how a license key is found without storing it.
    pub fn lookup_digest(&self, license_key: &str) -> [u8; 32] {
        let mut mac = self.pepper.clone();
        mac.update(license_key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// AES-256-GCM under the envelope key: `nonce ‖ ciphertext ‖ tag`, with a
    /// random nonce; `aad` binds the value to its owner (the license id).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .envelope
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of a small value cannot fail");
        let mut out = Vec::with_capacity(NONCE_BYTES + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_BYTES {
            return Err(CryptoError::Unseal);
        }
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        self.envelope
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Unseal)
    }

    /// Every published public key: the current one first, then retired
    /// ones whose tokens and files may still be valid.
    pub fn published_keys(&self) -> Vec<(String, VerifyingKey)> {
        std::iter::once((self.kid.clone(), self.verifying_key()))
            .chain(self.retired.iter().map(|(kid, k, _)| (kid.clone(), *k)))
            .collect()
    }

    /// The public keys as a JWK Set (RFC 7517, OKP keys per RFC 8037).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .published_keys()
            .into_iter()
            .map(|(kid, k)| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": kid,
                    "x": B64.encode(k.as_bytes()),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// A compact JWS: `b64url(header).b64url(claims).b64url(Ed25519 signature)`.
    pub fn sign_jwt(&self, claims_json: &[u8]) -> String {
        let claims_len = base64::encoded_len(claims_json.len(), false).unwrap_or(0);
        let mut token = String::with_capacity(self.jwt_header_b64.len() + claims_len + 90);
        token.push_str(&self.jwt_header_b64);
        token.push('.');
        B64.encode_string(claims_json, &mut token);
        let signature = self.signing.sign(token.as_bytes());
        token.push('.');
        B64.encode_string(signature.to_bytes(), &mut token);
        token
    }

    /// Signs arbitrary bytes (license files).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// Pepper, data key and signing seed as HKDF derived them from the master
/// key before the keyring existed.
fn legacy_material(master: &MasterKey) -> [Zeroizing<[u8; 32]>; 3] {
    [
        derive(master, PEPPER_INFO),
        derive(master, ENVELOPE_INFO),
        derive(master, SIGNING_INFO),
    ]
}

/// How the keyring was found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyringOrigin {
    Loaded,
    /// Created with fresh random keys (new data directory).
    Generated,
    /// Created from the keys the master key derived before keyrings
    /// existed (a data directory whose log already seals secrets with them).
    Adopted,
}

/// Opens `DATA/keys/keyring.json` with the master key, creating it when
/// missing: with random keys for a new data directory (`log_is_empty`), or
/// with the formerly derived keys for an existing one, so its sealed
/// records and published signatures stay valid.
pub fn open_keys(
    data_dir: &std::path::Path,
    master: &MasterKey,
    log_is_empty: bool,
    now_ms: i64,
) -> Result<(Keys, KeyringOrigin), keyring::KeyringError> {
    let path = keyring::keyring_path(data_dir);
    let kek = keyring::Kek::new(master);
    let (ring, origin) = match keyring::Keyring::load(&path)? {
        Some(ring) => (ring, KeyringOrigin::Loaded),
        None => {
            let ring = if log_is_empty {
                keyring::Keyring::generate(&kek, now_ms)
            } else {
                let [pepper, data, seed] = legacy_material(master);
                keyring::Keyring::create(&kek, &pepper, &data, &seed, now_ms)
            };
            ring.save(&path)?;
            let origin = if log_is_empty {
                KeyringOrigin::Generated
            } else {
                KeyringOrigin::Adopted
            };
            (ring, origin)
        }
    };
    Ok((Keys::from_keyring(&ring, &kek, now_ms)?, origin))
}

/// The public key of every signing key the keyring has ever held, current
/// and retired, for checking old signatures (audit checkpoints). Reads the
/// keyring; never creates one.
pub fn all_signing_keys(
    data_dir: &std::path::Path,
    master: &MasterKey,
) -> Result<Vec<(String, VerifyingKey)>, keyring::KeyringError> {
    let path = keyring::keyring_path(data_dir);
    let ring = keyring::Keyring::load(&path)?.ok_or_else(|| {
        keyring::KeyringError::Incomplete(format!("no keyring at {}", path.display()))
    })?;
    let kek = keyring::Kek::new(master);
    ring.signing_keys()
        .map(|e| {
            let seed = kek.unwrap(e)?;
            Ok((e.id.clone(), SigningKey::from_bytes(&seed).verifying_key()))
        })
        .collect()
}

/// A new license key: `lk_` + base64url of 32 random bytes.
pub fn generate_license_key() -> Zeroizing<String> {
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(secret.as_mut());
    Zeroizing::new(format!(
        "{LICENSE_KEY_PREFIX}{}",
        B64.encode(secret.as_ref())
    ))
}

/// The AES-256-GCM key of a license file: HKDF-SHA256 over the license key,
/// salted, with the fingerprint appended to the info when the file is bound.
pub fn license_file_key(
    license_key: &str,
    salt: &[u8],
    fingerprint: Option<&str>,
) -> Zeroizing<[u8; 32]> {
    let mut info = LICENSE_FILE_KDF_INFO.to_vec();
    if let Some(fp) = fingerprint {
        info.extend_from_slice(fp.as_bytes());
    }
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(Some(salt), license_key.as_bytes())
        .expand(&info, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// Encrypts and signs a license file (see README, "License files").
pub fn seal_license_file(
    keys: &Keys,
    license_id: &str,
    license_key: &str,
    fingerprint: Option<&str>,
    plaintext: &[u8],
) -> serde_json::Value {
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut salt);
    rand::thread_rng().fill_bytes(&mut nonce);
    let key = license_file_key(license_key, &salt, fingerprint);
    let ct = Aes256Gcm::new(key.as_ref().into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: license_id.as_bytes(),
            },
        )
        .expect("AES-GCM encryption cannot fail");
    let bound = fingerprint.is_some();
    let (salt, nonce, ct) = (B64.encode(salt), B64.encode(nonce), B64.encode(ct));
    let signing_input = format!(
        "{LICENSE_FILE_FORMAT}.{}.{license_id}.{bound}.{salt}.{nonce}.{ct}",
        keys.kid()
    );
    let signature = B64.encode(keys.sign(signing_input.as_bytes()));
    serde_json::json!({
        "format": LICENSE_FILE_FORMAT,
        "kid": keys.kid(),
        "license_id": license_id,
        "fingerprint_bound": bound,
        "salt": salt,
        "nonce": nonce,
        "ciphertext": ct,
        "signature": signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    fn keys(byte: u8) -> Keys {
        Keys::derive(&MasterKey::from_bytes([byte; 32]))
    }

    #[test]
    fn derived_keys_are_stable_for_one_master_key_and_differ_across_keys() {
        let (a, b, c) = (keys(1), keys(1), keys(2));
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.lookup_digest("lk_x"), b.lookup_digest("lk_x"));
        assert_ne!(a.kid(), c.kid());
        assert_ne!(a.lookup_digest("lk_x"), c.lookup_digest("lk_x"));
        assert_eq!(a.kid().len(), 16);
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_owner() {
        let (a, c) = (keys(1), keys(2));
        let sealed = a.seal(b"lk_secret", b"lic_1");
        assert!(!sealed.windows(9).any(|w| w == b"lk_secret"));
        assert_eq!(&a.unseal(&sealed, b"lic_1").unwrap()[..], b"lk_secret");
        assert!(a.unseal(&sealed, b"lic_2").is_err());
        assert!(c.unseal(&sealed, b"lic_1").is_err());
        assert_ne!(sealed, a.seal(b"lk_secret", b"lic_1"), "nonces are random");
    }

    #[test]
    fn jwt_signature_verifies_over_header_and_claims() {
        let k = keys(3);
        let token = k.sign_jwt(br#"{"sub":"lic_1"}"#);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], k.kid());
        let sig = ed25519_dalek::Signature::from_slice(&B64.decode(parts[2]).unwrap()).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(k.verifying_key().verify(input.as_bytes(), &sig).is_ok());
        let x = k.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
        assert_eq!(B64.decode(x).unwrap(), k.verifying_key().as_bytes());
    }

    #[test]
    fn a_keyring_adopted_from_a_master_key_gives_the_derived_keys() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([5; 32]);
        let (adopted, origin) = open_keys(dir.path(), &master, false, 0).unwrap();
        assert_eq!(origin, KeyringOrigin::Adopted);
        let derived = Keys::derive(&master);
        assert_eq!(adopted.kid(), derived.kid());
        assert_eq!(adopted.lookup_digest("lk_x"), derived.lookup_digest("lk_x"));
        let sealed = derived.seal(b"secret", b"id");
        assert_eq!(&adopted.unseal(&sealed, b"id").unwrap()[..], b"secret");
        let (again, origin) = open_keys(dir.path(), &master, true, 0).unwrap();
        assert_eq!(origin, KeyringOrigin::Loaded);
        assert_eq!(again.kid(), derived.kid());
        // A new data directory gets random keys, not derivable from the master.
        let fresh_dir = tempfile::tempdir().unwrap();
        let (fresh, origin) = open_keys(fresh_dir.path(), &master, true, 0).unwrap();
        assert_eq!(origin, KeyringOrigin::Generated);
        assert_ne!(fresh.kid(), derived.kid());
        assert_ne!(fresh.lookup_digest("lk_x"), derived.lookup_digest("lk_x"));
        // Another master key cannot open it.
        assert!(open_keys(fresh_dir.path(), &MasterKey::from_bytes([6; 32]), true, 0).is_err());
    }

    #[test]
    fn retired_signing_keys_stay_published_until_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([7; 32]);
        let (first, _) = open_keys(dir.path(), &master, true, 0).unwrap();
        let path = keyring::keyring_path(dir.path());
        let kek = keyring::Kek::new(&master);
        let mut ring = keyring::Keyring::load(&path).unwrap().unwrap();
        ring.rotate_signing(&kek, 1_000, 500).unwrap();
        let during = Keys::from_keyring(&ring, &kek, 1_200).unwrap();
        assert_ne!(during.kid(), first.kid());
        let kids: Vec<String> = during
            .published_keys()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kids, vec![during.kid().to_owned(), first.kid().to_owned()]);
        assert_eq!(during.jwks()["keys"].as_array().unwrap().len(), 2);
        let after = Keys::from_keyring(&ring, &kek, 1_500).unwrap();
        assert_eq!(after.published_keys().len(), 1);
    }

    #[test]
    fn the_unique_count_key_survives_reloads_and_a_master_key_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            MasterKey::from_bytes([8; 32]),
            MasterKey::from_bytes([9; 32]),
        );
        let (first, _) = open_keys(dir.path(), &old, true, 0).unwrap();
        let (again, _) = open_keys(dir.path(), &old, false, 0).unwrap();
        assert_eq!(again.unique_key().hash("u"), first.unique_key().hash("u"));
        let path = keyring::keyring_path(dir.path());
        let mut ring = keyring::Keyring::load(&path).unwrap().unwrap();
        let (old_kek, new_kek) = (keyring::Kek::new(&old), keyring::Kek::new(&new));
        for i in 0..ring.entries.len() {
            ring.rewrap(i, &old_kek, &new_kek).unwrap();
        }
        ring.save(&path).unwrap();
        let (rotated, origin) = open_keys(dir.path(), &new, false, 0).unwrap();
        assert_eq!(origin, KeyringOrigin::Loaded);
        assert_eq!(rotated.unique_key().id(), first.unique_key().id());
        assert_eq!(rotated.unique_key().hash("u"), first.unique_key().hash("u"));
        // Another data directory has its own, even under the same master key.
        let other = tempfile::tempdir().unwrap();
        let (fresh, _) = open_keys(other.path(), &new, true, 0).unwrap();
        assert_ne!(fresh.unique_key().id(), first.unique_key().id());
        assert_ne!(fresh.unique_key().hash("u"), first.unique_key().hash("u"));
    }

    #[test]
    fn license_keys_are_prefixed_and_random() {
        let (a, b) = (generate_license_key(), generate_license_key());
        assert!(a.starts_with(LICENSE_KEY_PREFIX));
        assert_eq!(a.len(), 3 + 43);
        assert_ne!(*a, *b);
    }
}
