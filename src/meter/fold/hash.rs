//! The fold's hashing: the keyed hash of serialised series, and the cheap
//! hasher for keys the fold chooses itself.

use std::hash::Hasher;

/// Keyed 64-bit hash of a byte string (folded 64×64→128 multiplies, as in wyhash and
/// foldhash). Only used inside a [`Fold`] with a per-process random key; never
/// persisted.
#[inline]
pub(super) fn seeded_hash(seed: [u64; 2], bytes: &[u8]) -> u64 {
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    #[inline]
    fn fold_mul(a: u64, b: u64) -> u64 {
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ ((product >> 64) as u64)
    }
    #[inline]
    fn word(bytes: &[u8]) -> u64 {
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
    }
    let mut state = seed[0] ^ fold_mul(bytes.len() as u64 ^ P0, seed[1] ^ P1);
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        state = fold_mul(word(chunk) ^ seed[1], word(&chunk[8..]) ^ state);
    }
    let tail = chunks.remainder();
    let (a, b) = match tail.len() {
        0 => (0, 0),
        1..=3 => (
            u64::from(tail[0]) << 16
                | u64::from(tail[tail.len() / 2]) << 8
                | u64::from(tail[tail.len() - 1]),
            0,
        ),
        4..=8 => (
            u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"))),
            u64::from(u32::from_le_bytes(
                tail[tail.len() - 4..].try_into().expect("4 bytes"),
            )),
        ),
        _ => (word(tail), word(&tail[tail.len() - 8..])),
    };
    state = fold_mul(a ^ seed[1] ^ P0, b ^ state ^ P1);
    fold_mul(state ^ P0, seed[0] ^ P1)
}

/// Hasher for keys this module chooses — dense ids, window starts and SipHash
/// outputs — never raw client strings, so a fast multiplicative mix is safe.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    #[inline]
    fn write_i64(&mut self, value: i64) {
        self.write_u64(value as u64);
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(K);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown takes bucket bits from the low end and
        // the control tag from the top.
        self.0 ^ (self.0 >> 29)
    }
}
