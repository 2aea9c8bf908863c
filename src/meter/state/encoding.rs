//! The byte encoding of aggregation states: deterministic and canonical, so
//! equal states have equal bytes and every accepted encoding re-encodes to
//! itself.

use super::AggState;
use crate::error_code::ErrorCode;
use crate::meter::amount::Amount;

/// Stored state bytes that are not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty aggregation state")]
    Empty,
    #[error("unsupported aggregation state version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown aggregation state tag {0}")]
    UnknownTag(u8),
    #[error("aggregation state truncated")]
    Truncated,
    #[error("aggregation state has a malformed or non-canonical varint")]
    BadVarint,
    #[error("aggregation state has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("unique set is not strictly increasing")]
    UniqueNotSorted,
    /// A set of 64-bit FNV-1a hashes, kept before identities were keyed: its
    /// values are gone, so it cannot be converted, only rebuilt from the log
    /// (which the counters projection does on open).
    #[error("unique set of 64-bit FNV-1a hashes from an older format; rebuild it from the log")]
    UniqueFnv64,
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::CorruptState
    }
}

/// Leading byte of every encoded state.
pub const STATE_ENCODING_VERSION: u8 = 1;

pub(super) const TAG_SUM: u8 = 1;
pub(super) const TAG_COUNT: u8 = 2;
pub(super) const TAG_AVG: u8 = 3;
pub(super) const TAG_MIN: u8 = 4;
pub(super) const TAG_MAX: u8 = 5;
/// A set of 64-bit FNV-1a hashes: recognised, never read or written.
pub(super) const TAG_UNIQUE_FNV64: u8 = 6;
pub(super) const TAG_LATEST: u8 = 7;
/// A set of keyed 128-bit identities (see `meter::unique`).
pub(super) const TAG_UNIQUE: u8 = 8;
const IDENTITY_BYTES: usize = 16;

impl AggState {
    /// Deterministic compact bytes: `[version=1, tag, payload…]` with LEB128 varints
    /// (zigzag for signed values); a unique set is its length, then each
    /// identity as 16 big-endian bytes in increasing order (random 128-bit
    /// values: deltas would save nothing below 65,536 values).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.push(STATE_ENCODING_VERSION);
        match self {
            AggState::Sum(a) => {
                out.push(TAG_SUM);
                put_i128(&mut out, a.0);
            }
            AggState::Count(n) => {
                out.push(TAG_COUNT);
                put_u128(&mut out, u128::from(*n));
            }
            AggState::Avg { sum, count } => {
                out.push(TAG_AVG);
                put_i128(&mut out, sum.0);
                put_u128(&mut out, u128::from(*count));
            }
            AggState::Min(a) => {
                out.push(TAG_MIN);
                put_i128(&mut out, a.0);
            }
            AggState::Max(a) => {
                out.push(TAG_MAX);
                put_i128(&mut out, a.0);
            }
            AggState::Unique(identities) => {
                out.push(TAG_UNIQUE);
                put_u128(&mut out, identities.len() as u128);
                debug_assert!(
                    identities.windows(2).all(|w| w[0] < w[1]),
                    "unsorted unique set"
                );
                out.reserve(identities.len() * IDENTITY_BYTES);
                for identity in identities {
                    out.extend_from_slice(&identity.to_be_bytes());
                }
            }
            AggState::Latest { time_ms, value } => {
                out.push(TAG_LATEST);
                put_i128(&mut out, i128::from(*time_ms));
                put_i128(&mut out, value.0);
            }
        }
        out
    }

    /// Inverse of [`encode`](Self::encode); accepts only canonical encodings, so
    /// `decode(b).encode() == b` for every accepted `b`.
    pub fn decode(bytes: &[u8]) -> Result<AggState, DecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != STATE_ENCODING_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let (&tag, payload) = rest.split_first().ok_or(DecodeError::Truncated)?;
        let mut reader = Reader { bytes: payload };
        let state = match tag {
            TAG_SUM => AggState::Sum(Amount(reader.i128()?)),
            TAG_COUNT => AggState::Count(reader.u64()?),
            TAG_AVG => AggState::Avg {
                sum: Amount(reader.i128()?),
                count: reader.u64()?,
            },
            TAG_MIN => AggState::Min(Amount(reader.i128()?)),
            TAG_MAX => AggState::Max(Amount(reader.i128()?)),
            TAG_UNIQUE => AggState::Unique(reader.unique_identities()?),
            TAG_UNIQUE_FNV64 => return Err(DecodeError::UniqueFnv64),
            TAG_LATEST => AggState::Latest {
                time_ms: i64::try_from(reader.i128()?).map_err(|_| DecodeError::BadVarint)?,
                value: Amount(reader.i128()?),
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        if !reader.bytes.is_empty() {
            return Err(DecodeError::TrailingBytes(reader.bytes.len()));
        }
        Ok(state)
    }
}

fn put_u128(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_i128(out: &mut Vec<u8>, value: i128) {
    put_u128(out, ((value << 1) ^ (value >> 127)) as u128);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    /// Canonical LEB128: no redundant trailing zero groups, no bits beyond 128.
    fn u128(&mut self) -> Result<u128, DecodeError> {
        let mut value = 0u128;
        for (i, &byte) in self.bytes.iter().enumerate() {
            let shift = 7 * i as u32;
            let group = u128::from(byte & 0x7f);
            if shift >= 128 || (shift > 0 && (group << shift) >> shift != group) {
                return Err(DecodeError::BadVarint);
            }
            value |= group << shift;
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(DecodeError::BadVarint);
                }
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(DecodeError::Truncated)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        u64::try_from(self.u128()?).map_err(|_| DecodeError::BadVarint)
    }

    fn i128(&mut self) -> Result<i128, DecodeError> {
        let zigzag = self.u128()?;
        Ok((zigzag >> 1) as i128 ^ -((zigzag & 1) as i128))
    }

    fn unique_identities(&mut self) -> Result<Vec<u128>, DecodeError> {
        let len = self.u64()?;
        // Bound the allocation by the input before trusting the length.
        let need = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_mul(IDENTITY_BYTES))
            .filter(|need| *need <= self.bytes.len())
            .ok_or(DecodeError::Truncated)?;
        let (set, rest) = self.bytes.split_at(need);
        self.bytes = rest;
        let identities: Vec<u128> = set
            .chunks_exact(IDENTITY_BYTES)
            .map(|b| u128::from_be_bytes(b.try_into().expect("16 bytes")))
            .collect();
        if identities.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DecodeError::UniqueNotSorted);
        }
        Ok(identities)
    }
}
