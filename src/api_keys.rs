//! API keys: generation, digests, the live key ring, and what a
//! [`Scope`] allows.
//!
//! A key is 32 random bytes, shown once as `km_<id>_<secret>`. Only its
//! SHA-256 is stored (in the log and in sled). A fast hash is enough here:
//! the keys carry 256 bits of entropy, so there is nothing to brute-force;
//! slow password hashes (argon2) exist for low-entropy human passwords.
//! Operator-supplied bootstrap keys must be at least 24 characters.

use std::collections::HashMap;

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::record::ApiKeyRecord;
use crate::scope::Scope;

/// Shortest operator-supplied key accepted (e.g. `KEYMETER_BOOTSTRAP_ADMIN_KEY`).
pub const SUPPLIED_KEY_CHARS_MIN: usize = 24;

/// Does a key holding `held` pass a route that needs `needed`? Admin implies
/// every other scope.
pub fn allows(held: &[Scope], needed: Scope) -> bool {
    held.iter().any(|&s| s == needed || s == Scope::Admin)
}

/// SHA-256 of a high-entropy secret (an API key, a seat's lease token):
/// 256 random bits need no slow hash.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// 32 random bytes as URL-safe base64 (43 characters): the secret part of
/// an API key, a seat's lease token.
pub fn random_secret() -> String {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
}

/// A new random key id (12 hex chars) and full key.
pub fn generate_key() -> (String, String) {
    let id = generate_id();
    let key = format!("km_{id}_{}", random_secret());
    (id, key)
}

/// A fresh random key id, for operator-supplied keys.
pub fn generate_id() -> String {
    let mut id = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut id);
    hex::encode(id)
}

/// The published set of live keys, looked up by digest.
#[derive(Debug, Default, Clone)]
pub struct ApiKeyRing {
    by_digest: HashMap<[u8; 32], ApiKeyRecord>,
}

impl ApiKeyRing {
    pub fn from_records(records: impl IntoIterator<Item = ApiKeyRecord>) -> ApiKeyRing {
        ApiKeyRing {
            by_digest: records.into_iter().map(|r| (r.key_sha256, r)).collect(),
        }
    }

    pub fn lookup(&self, presented: &str) -> Option<&ApiKeyRecord> {
        self.by_digest.get(&key_digest(presented))
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_all_scopes_but_others_do_not() {
        assert!(allows(&[Scope::Admin], Scope::Ingest));
        assert!(allows(&[Scope::Admin], Scope::Read));
        assert!(!allows(&[Scope::Read], Scope::Ingest));
        assert!(!allows(&[Scope::Ingest], Scope::Read));
        assert!(!allows(&[Scope::Ingest, Scope::Read], Scope::Admin));
    }

    #[test]
    fn keys_are_found_by_full_key_only() {
        let (id, key) = generate_key();
        let ring = ApiKeyRing::from_records([ApiKeyRecord {
            id: id.clone().into(),
            name: "k".into(),
            scopes: vec![Scope::Read],
            key_sha256: key_digest(&key),
            created_ms: 0,
        }]);
        assert_eq!(ring.lookup(&key).unwrap().id.as_str(), id);
        assert!(ring.lookup(&key[..key.len() - 1]).is_none());
        assert!(key.starts_with(&format!("km_{id}_")));
    }
}
