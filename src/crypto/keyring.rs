//! Envelope encryption: the keyring.
//!
//! The secrets keymeter keeps (license keys, products' signing secrets) are
//! sealed in log records with a **data key**; license keys are found by an
//! HMAC **pepper**; verdicts, license files and audit checkpoints are signed
//! with Ed25519 **signing keys**. None of these is stored in the clear: each
//! is an entry of `DATA/keys/keyring.json`, wrapped (AES-256-GCM) by a key
//! derived from the **master key**, which lives outside the data directory.
//!
//! Rotating the master key re-wraps the keyring entries one by one (each
//! entry names the master key that wraps it, so an interrupted rotation
//! resumes where it stopped) and never touches the log: the records stay
//! sealed under the same data key, which is the point of the envelope.
//! Rotating the signing key adds a new current key; the previous one keeps
//! being published (JWKS) until every token and license file it signed has
//! expired.
//!
//! Wrapping: AES-256-GCM, key = HKDF-SHA256(master, "keymeter key wrapping
//! v1"), random 96-bit nonce, AAD = `keymeter-keyring/v1|<purpose>|<id>`,
//! stored as base64(nonce ‖ ciphertext ‖ tag). A master key is named by its
//! *kek id*: 16 hex characters of SHA-256(HKDF(master, "keymeter kek id v1")),
//! which reveals nothing about the key.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::MasterKey;

pub const KEYRING_FORMAT: &str = "keymeter-keyring/v1";
const WRAP_INFO: &[u8] = b"keymeter key wrapping v1";
const KEK_ID_INFO: &[u8] = b"keymeter kek id v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// HMAC key of license-key lookup digests.
    Pepper,
    /// AES-256-GCM key sealing secrets in log records.
    Data,
    /// Ed25519 seed.
    Signing,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Pepper => "pepper",
            Purpose::Data => "data",
            Purpose::Signing => "signing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub purpose: Purpose,
    /// The kek id of the master key that wraps this entry.
    pub kek: String,
    /// base64(nonce ‖ ciphertext ‖ tag).
    pub wrapped: String,
    pub created_ms: i64,
    /// Signing keys: when it stopped signing (`None`: the current key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_ms: Option<i64>,
    /// Signing keys: published for verification until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_until_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    pub format: String,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "keyring entry {purpose} {id} is wrapped by master key {entry_kek}, but the configured \
         master key is {configured}; use that master key (or finish `keymeter keys rotate`)"
    )]
    WrongMaster {
        purpose: &'static str,
        id: String,
        entry_kek: String,
        configured: String,
    },
    #[error(
        "keyring entry {purpose} {id} does not unwrap: it was altered or wrapped by another key"
    )]
    Unwrap { purpose: &'static str, id: String },
    #[error("keyring is incomplete: {0}")]
    Incomplete(String),
}

/// A master key ready to wrap and unwrap.
pub struct Kek {
    id: String,
    cipher: Aes256Gcm,
}

impl Kek {
    pub fn new(master: &MasterKey) -> Kek {
        let hk = hkdf::Hkdf::<Sha256>::new(None, master.bytes());
        let mut wrap = Zeroizing::new([0u8; 32]);
        let mut name = Zeroizing::new([0u8; 32]);
        hk.expand(WRAP_INFO, wrap.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hk.expand(KEK_ID_INFO, name.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Kek {
            id: hex::encode(Sha256::digest(name.as_ref()))[..16].to_owned(),
            cipher: Aes256Gcm::new(wrap.as_ref().into()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn aad(purpose: Purpose, id: &str) -> Vec<u8> {
        format!("{KEYRING_FORMAT}|{}|{id}", purpose.as_str()).into_bytes()
    }

    pub fn wrap(&self, purpose: Purpose, id: &str, key: &[u8; 32]) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = Kek::aad(purpose, id);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    pub fn unwrap(&self, entry: &Entry) -> Result<Zeroizing<[u8; 32]>, KeyringError> {
        if entry.kek != self.id {
            return Err(KeyringError::WrongMaster {
                purpose: entry.purpose.as_str(),
                id: entry.id.clone(),
                entry_kek: entry.kek.clone(),
                configured: self.id.clone(),
            });
        }
        let bad = || KeyringError::Unwrap {
            purpose: entry.purpose.as_str(),
            id: entry.id.clone(),
        };
        let raw = B64.decode(&entry.wrapped).map_err(|_| bad())?;
        if raw.len() < 12 {
            return Err(bad());
        }
        let (nonce, ct) = raw.split_at(12);
        let aad = Kek::aad(entry.purpose, &entry.id);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| bad())?,
        );
        let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| bad())?;
        Ok(Zeroizing::new(key))
    }
}

/// `DATA/keys/keyring.json`.
pub fn keyring_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("keyring.json")
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(k.as_mut());
    k
}

impl Keyring {
    /// A new keyring with the given key material, wrapped by `kek`.
    pub fn create(
        kek: &Kek,
        pepper: &[u8; 32],
        data: &[u8; 32],
        signing_seed: &[u8; 32],
        now_ms: i64,
    ) -> Keyring {
        let signing_id =
            super::key_id(&ed25519_dalek::SigningKey::from_bytes(signing_seed).verifying_key());
        let entry = |purpose, id: &str, key: &[u8; 32]| Entry {
            id: id.to_owned(),
            purpose,
            kek: kek.id().to_owned(),
            wrapped: kek.wrap(purpose, id, key),
            created_ms: now_ms,
            retired_ms: None,
            publish_until_ms: None,
        };
        Keyring {
            format: KEYRING_FORMAT.to_owned(),
            entries: vec![
                entry(Purpose::Pepper, "pepper-1", pepper),
                entry(Purpose::Data, "data-1", data),
                entry(Purpose::Signing, &signing_id, signing_seed),
            ],
        }
    }

    /// A keyring of fresh random keys.
    pub fn generate(kek: &Kek, now_ms: i64) -> Keyring {
        Keyring::create(kek, &random_key(), &random_key(), &random_key(), now_ms)
    }

    pub fn load(path: &Path) -> Result<Option<Keyring>, KeyringError> {
        let bad = |reason: String| KeyringError::File {
            path: path.to_owned(),
            reason,
        };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let ring: Keyring =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a keyring: {e}")))?;
        if ring.format != KEYRING_FORMAT {
            return Err(bad(format!("unknown format {:?}", ring.format)));
        }
        Ok(Some(ring))
    }

    /// Writes the keyring atomically: a temporary file, fsynced, renamed
    /// over the old one, and the directory fsynced. A crash leaves either
    /// the old or the new keyring, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        use std::os::unix::fs::OpenOptionsExt;
        let bad = |e: std::io::Error| KeyringError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let dir = path.parent().expect("keyring path has a parent");
        std::fs::create_dir_all(dir).map_err(bad)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(bad)?;
        let text = serde_json::to_vec_pretty(self).expect("keyring serializes");
        f.write_all(&text).and_then(|_| f.sync_all()).map_err(bad)?;
        std::fs::rename(&tmp, path).map_err(bad)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(bad)?;
        Ok(())
    }

    fn one(&self, purpose: Purpose) -> Result<&Entry, KeyringError> {
        self.entries
            .iter()
            .find(|e| e.purpose == purpose && e.retired_ms.is_none())
            .ok_or_else(|| KeyringError::Incomplete(format!("no current {} key", purpose.as_str())))
    }

    pub fn pepper(&self) -> Result<&Entry, KeyringError> {
        self.one(Purpose::Pepper)
    }

    pub fn data(&self) -> Result<&Entry, KeyringError> {
        self.one(Purpose::Data)
    }

    /// The signing key that signs now.
    pub fn current_signing(&self) -> Result<&Entry, KeyringError> {
        self.one(Purpose::Signing)
    }

    /// Every signing key, current and retired, oldest first.
    pub fn signing_keys(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.purpose == Purpose::Signing)
    }

    /// Retires the current signing key (published until
    /// `now + publish_for_ms`) and adds a new random one. Returns the new
    /// key's id.
    pub fn rotate_signing(
        &mut self,
        kek: &Kek,
        now_ms: i64,
        publish_for_ms: i64,
    ) -> Result<String, KeyringError> {
        let seed = random_key();
        let id = super::key_id(&ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key());
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.purpose == Purpose::Signing && e.retired_ms.is_none())
        {
            e.retired_ms = Some(now_ms);
            e.publish_until_ms = Some(now_ms.saturating_add(publish_for_ms));
        }
        self.entries.push(Entry {
            id: id.clone(),
            purpose: Purpose::Signing,
            kek: kek.id().to_owned(),
            wrapped: kek.wrap(Purpose::Signing, &id, &seed),
            created_ms: now_ms,
            retired_ms: None,
            publish_until_ms: None,
        });
        Ok(id)
    }

    /// Re-wraps entry `index` from `old` to `new` (no-op if `new` already
    /// wraps it).
    pub fn rewrap(&mut self, index: usize, old: &Kek, new: &Kek) -> Result<(), KeyringError> {
        let entry = &self.entries[index];
        if entry.kek == new.id() {
            return Ok(());
        }
        let key = old.unwrap(entry)?;
        let wrapped = new.wrap(entry.purpose, &entry.id, &key);
        let entry = &mut self.entries[index];
        entry.wrapped = wrapped;
        entry.kek = new.id().to_owned();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(b: u8) -> Kek {
        Kek::new(&MasterKey::from_bytes([b; 32]))
    }

    #[test]
    fn entries_unwrap_only_with_their_master_key_and_untampered() {
        let (a, b) = (kek(1), kek(2));
        let ring = Keyring::generate(&a, 0);
        let data = ring.data().unwrap();
        assert!(a.unwrap(data).is_ok());
        assert!(matches!(
            b.unwrap(data),
            Err(KeyringError::WrongMaster { .. })
        ));
        // An entry moved to another purpose or id does not unwrap.
        let mut moved = data.clone();
        moved.purpose = Purpose::Pepper;
        assert!(matches!(a.unwrap(&moved), Err(KeyringError::Unwrap { .. })));
        let mut flipped = data.clone();
        let mut raw = B64.decode(&flipped.wrapped).unwrap();
        raw[20] ^= 1;
        flipped.wrapped = B64.encode(raw);
        assert!(a.unwrap(&flipped).is_err());
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn rewrapping_keeps_every_key_and_can_resume() {
        let (old, new) = (kek(1), kek(2));
        let mut ring = Keyring::generate(&old, 0);
        ring.rotate_signing(&old, 10, 1000).unwrap();
        let before: Vec<_> = ring
            .entries
            .iter()
            .map(|e| *old.unwrap(e).unwrap())
            .collect();
        // Interrupted after the first entry, then resumed.
        ring.rewrap(0, &old, &new).unwrap();
        assert!(new.unwrap(&ring.entries[0]).is_ok());
        assert!(old.unwrap(&ring.entries[1]).is_ok());
        for i in 0..ring.entries.len() {
            ring.rewrap(i, &old, &new).unwrap();
        }
        let after: Vec<_> = ring
            .entries
            .iter()
            .map(|e| *new.unwrap(e).unwrap())
            .collect();
        assert_eq!(before, after);
        assert!(ring.entries.iter().all(|e| old.unwrap(e).is_err()));
    }

    #[test]
    fn signing_rotation_keeps_the_old_key_published_for_a_while() {
        let k = kek(1);
        let mut ring = Keyring::generate(&k, 0);
        let first = ring.current_signing().unwrap().id.clone();
        let second = ring.rotate_signing(&k, 100, 50).unwrap();
        assert_ne!(first, second);
        assert_eq!(ring.current_signing().unwrap().id, second);
        let old = ring.signing_keys().find(|e| e.id == first).unwrap();
        assert_eq!(
            (old.retired_ms, old.publish_until_ms),
            (Some(100), Some(150))
        );
    }

    #[test]
    fn saved_keyrings_load_back_and_hold_no_key_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = keyring_path(dir.path());
        let k = kek(1);
        let ring = Keyring::generate(&k, 0);
        ring.save(&path).unwrap();
        assert_eq!(Keyring::load(&path).unwrap().unwrap(), ring);
        let text = std::fs::read(&path).unwrap();
        for e in &ring.entries {
            let key = k.unwrap(e).unwrap();
            assert!(!text.windows(32).any(|w| w == key.as_ref()));
            assert!(!String::from_utf8_lossy(&text).contains(&B64.encode(key.as_ref())));
        }
        assert!(Keyring::load(&dir.path().join("none.json"))
            .unwrap()
            .is_none());
    }
}
