//! UNIQUE_COUNT identities: a keyed 128-bit hash of a value's canonical text.
//!
//! A value's identity is SipHash-2-4 with 128-bit output (the reference
//! implementation's `siphash` with `outlen = 16`) of its canonical text under
//! a 128-bit key that is secret and belongs to the data directory
//! (`crypto::Keys::unique_key`). Without the key nobody can construct two
//! values with the same identity offline, so a client cannot make distinct
//! values count once; by chance, n distinct values share an identity with
//! probability about n²/2^129 (below 10^-20 for a billion values).
//!
//! Stored sets depend on the key: the counters tree is stamped with the
//! key's [`UniqueKey::id`], and a store stamped with another key is rebuilt
//! from the log rather than folded into.

use std::fmt;
use std::hash::Hasher as _;

use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher24};
use zeroize::Zeroize;

/// Domain of [`UniqueKey::id`], so the id says nothing about the key.
const KEY_ID_DOMAIN: &[u8] = b"keymeter unique-count key id v1";

/// The secret key of UNIQUE_COUNT identities.
#[derive(Clone)]
pub struct UniqueKey([u8; 16]);

impl UniqueKey {
    pub const fn from_bytes(bytes: [u8; 16]) -> UniqueKey {
        UniqueKey(bytes)
    }

    /// The identity of a value's canonical text: a string's content, or a
    /// number's / boolean's JSON text as serde_json renders it (so the string
    /// `"7"` and the number `7` are one value, while `7` and `7.0` are two).
    pub fn hash(&self, canonical_text: &str) -> u128 {
        let mut hasher = self.hasher();
        hasher.write_bytes(canonical_text.as_bytes());
        hasher.finish()
    }

    pub(super) fn hasher(&self) -> UniqueHasher {
        UniqueHasher(SipHasher24::new_with_key(&self.0))
    }

    /// A keyed hash of a counter key's bytes, for where the counters tree
    /// starts a block (`projection::blocks`): clients choose subjects, so
    /// they must not be able to choose where blocks end. The leading 0xff
    /// byte, which no UTF-8 text holds, keeps it apart from [`Self::hash`].
    pub fn counter_key_hash(&self, key: &[u8]) -> u64 {
        let mut hasher = self.hasher();
        hasher.write_bytes(&[0xff]);
        hasher.write_bytes(key);
        hasher.finish() as u64
    }

    /// A name for the key that reveals nothing of it (8 bytes of SHA-256
    /// over a domain string and the key): what the counters store is stamped
    /// with, so states built under another key are recognised.
    pub fn id(&self) -> [u8; 8] {
        let digest = Sha256::new()
            .chain_update(KEY_ID_DOMAIN)
            .chain_update(self.0)
            .finalize();
        digest[..8].try_into().expect("8 bytes")
    }
}

impl fmt::Debug for UniqueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UniqueKey(id {})", hex::encode(self.id()))
    }
}

impl Drop for UniqueKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A value's canonical text fed in pieces (a number is rendered straight
/// into it); equal to hashing the pieces joined.
pub(super) struct UniqueHasher(SipHasher24);

impl UniqueHasher {
    pub(super) fn write_bytes(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    pub(super) fn finish(&self) -> u128 {
        self.0.finish128().into()
    }
}

impl fmt::Write for UniqueHasher {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference key `00 01 … 0f`.
    fn reference_key() -> UniqueKey {
        UniqueKey::from_bytes(std::array::from_fn(|i| i as u8))
    }

    /// The reference message of length `len`: `00 01 … len-1`.
    fn reference_message(len: u8) -> String {
        (0..len).map(char::from).collect()
    }

    #[test]
    fn hashes_are_siphash_2_4_128_as_in_the_reference_vectors() {
        // `vectors_sip128` of the SipHash reference implementation (output
        // bytes in order; the identity is that little-endian u128).
        let vectors: [(u8, &str); 5] = [
            (0, "a3817f04ba25a8e66df67214c7550293"),
            (1, "da87c1d86b99af4434765911 9b22fc45"),
            (7, "a1f1ebbed8dbc153c0b84aa61ff08239"),
            (15, "5493e99933b0a8117e08ec0f97cfc3d9"),
            (63, "5150d1772f50834a503e069a973fbd7c"),
        ];
        let key = reference_key();
        for (len, bytes) in vectors {
            let bytes: [u8; 16] = hex::decode(bytes.replace(' ', ""))
                .unwrap()
                .try_into()
                .unwrap();
            assert_eq!(
                key.hash(&reference_message(len)),
                u128::from_le_bytes(bytes),
                "message of {len} bytes"
            );
        }
    }

    #[test]
    fn text_fed_in_pieces_hashes_as_the_whole() {
        let key = reference_key();
        let text = "customer-000042@example.com";
        for split in 0..=text.len() {
            let mut hasher = key.hasher();
            hasher.write_bytes(&text.as_bytes()[..split]);
            hasher.write_bytes(&text.as_bytes()[split..]);
            assert_eq!(hasher.finish(), key.hash(text), "split at {split}");
        }
    }

    #[test]
    fn another_key_gives_other_identities_and_another_id() {
        let (a, b) = (reference_key(), UniqueKey::from_bytes([7; 16]));
        for text in ["", "alice", "7", "true"] {
            assert_ne!(a.hash(text), b.hash(text), "{text:?}");
        }
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id(), reference_key().id());
        assert_eq!(hex::encode(a.id()), "b8b2b76be8646ef7");
        assert!(!format!("{a:?}").contains("0001020304"));
    }
}
