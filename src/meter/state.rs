//! Aggregation state: what one counter (meter × subject × window × group) stores.
//!
//! Every `merge` is commutative and associative, so folding the same events in any
//! order, or merging partial folds in any grouping, gives identical state and bytes.

use super::amount::Amount;
use super::def::Aggregation;
use super::extract::ObservedValue;
use crate::error_code::ErrorCode;

/// Per-counter aggregation state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AggState {
    Sum(Amount),
    Count(u64),
    Avg {
        sum: Amount,
        count: u64,
    },
    Min(Amount),
    Max(Amount),
    /// Sorted, deduplicated value hashes.
    Unique(Vec<u64>),
    /// The value with the greatest event time; on equal times the greater value.
    Latest {
        time_ms: i64,
        value: Amount,
    },
}

/// Two states of different aggregations cannot merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot merge {right} aggregation state into {left} state")]
pub struct MergeError {
    pub left: &'static str,
    pub right: &'static str,
}

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
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::CorruptState
    }
}

/// Leading byte of every encoded state.
pub const STATE_ENCODING_VERSION: u8 = 1;

const TAG_SUM: u8 = 1;
const TAG_COUNT: u8 = 2;
const TAG_AVG: u8 = 3;
const TAG_MIN: u8 = 4;
const TAG_MAX: u8 = 5;
const TAG_UNIQUE: u8 = 6;
const TAG_LATEST: u8 = 7;

impl AggState {
    /// State for a single observation.
    ///
    /// # Panics
    /// If `value` is not the kind `extract` produces for `aggregation` (an amount for
    /// SUM/AVG/MIN/MAX/LATEST, a hash for UNIQUE_COUNT; COUNT accepts any): that is
    /// a caller bug, not bad input.
    pub fn from_observation(
        aggregation: Aggregation,
        value: &ObservedValue,
        event_time_ms: i64,
    ) -> AggState {
        match (aggregation, *value) {
            (Aggregation::Count, _) => AggState::Count(1),
            (Aggregation::Sum, ObservedValue::Amount(a)) => AggState::Sum(a),
            (Aggregation::Avg, ObservedValue::Amount(a)) => AggState::Avg { sum: a, count: 1 },
            (Aggregation::Min, ObservedValue::Amount(a)) => AggState::Min(a),
            (Aggregation::Max, ObservedValue::Amount(a)) => AggState::Max(a),
            (Aggregation::Latest, ObservedValue::Amount(a)) => AggState::Latest {
                time_ms: event_time_ms,
                value: a,
            },
            (Aggregation::UniqueCount, ObservedValue::Unique(h)) => AggState::Unique(vec![h]),
            (aggregation, value) => panic!(
                "observation {value:?} does not fit aggregation {}",
                aggregation.as_str()
            ),
        }
    }

    /// The aggregation this state belongs to.
    pub fn aggregation(&self) -> Aggregation {
        match self {
            AggState::Sum(_) => Aggregation::Sum,
            AggState::Count(_) => Aggregation::Count,
            AggState::Avg { .. } => Aggregation::Avg,
            AggState::Min(_) => Aggregation::Min,
            AggState::Max(_) => Aggregation::Max,
            AggState::Unique(_) => Aggregation::UniqueCount,
            AggState::Latest { .. } => Aggregation::Latest,
        }
    }

    /// Adds one observation in place (same result as merging its
    /// [`from_observation`](Self::from_observation) state, without allocating).
    ///
    /// # Panics
    /// Like `from_observation`, on an observation of the wrong kind.
    #[inline]
    pub fn observe(&mut self, value: &ObservedValue, event_time_ms: i64) {
        match (self, *value) {
            (AggState::Count(n), _) => *n = n.saturating_add(1),
            (AggState::Sum(sum), ObservedValue::Amount(a)) => *sum = sum.saturating_add(a),
            (AggState::Avg { sum, count }, ObservedValue::Amount(a)) => {
                *sum = sum.saturating_add(a);
                *count = count.saturating_add(1);
            }
            (AggState::Min(min), ObservedValue::Amount(a)) => *min = (*min).min(a),
            (AggState::Max(max), ObservedValue::Amount(a)) => *max = (*max).max(a),
            (AggState::Latest { time_ms, value }, ObservedValue::Amount(a)) => {
                if (event_time_ms, a) > (*time_ms, *value) {
                    *time_ms = event_time_ms;
                    *value = a;
                }
            }
            (AggState::Unique(hashes), ObservedValue::Unique(h)) => {
                if let Err(at) = hashes.binary_search(&h) {
                    hashes.insert(at, h);
                }
            }
            (state, value) => panic!(
                "observation {value:?} does not fit aggregation {}",
                state.aggregation().as_str()
            ),
        }
    }

    /// Merges `other` into `self`.
    ///
    /// # Panics
    /// If the states belong to different aggregations (a caller bug; use
    /// [`try_merge`](Self::try_merge) on states read from storage).
    pub fn merge(&mut self, other: &AggState) {
        if let Err(e) = self.try_merge(other) {
            panic!("{e}");
        }
    }

    /// Merges `other` into `self`, refusing states of another aggregation.
    pub fn try_merge(&mut self, other: &AggState) -> Result<(), MergeError> {
        match (self, other) {
            (AggState::Sum(a), AggState::Sum(b)) => *a = a.saturating_add(*b),
            (AggState::Count(a), AggState::Count(b)) => *a = a.saturating_add(*b),
            (
                AggState::Avg { sum, count },
                AggState::Avg {
                    sum: other_sum,
                    count: other_count,
                },
            ) => {
                *sum = sum.saturating_add(*other_sum);
                *count = count.saturating_add(*other_count);
            }
            (AggState::Min(a), AggState::Min(b)) => *a = (*a).min(*b),
            (AggState::Max(a), AggState::Max(b)) => *a = (*a).max(*b),
            (
                AggState::Latest { time_ms, value },
                AggState::Latest {
                    time_ms: other_time,
                    value: other_value,
                },
            ) => {
                if (*other_time, *other_value) > (*time_ms, *value) {
                    *time_ms = *other_time;
                    *value = *other_value;
                }
            }
            (AggState::Unique(a), AggState::Unique(b)) => *a = union_sorted(a, b),
            (left, right) => {
                return Err(MergeError {
                    left: left.aggregation().as_str(),
                    right: right.aggregation().as_str(),
                })
            }
        }
        Ok(())
    }

    /// The reported value: AVG is sum / count, UNIQUE_COUNT the number of distinct
    /// values. `None` only for an AVG over zero events (no defined mean).
    pub fn value(&self) -> Option<f64> {
        match self {
            AggState::Sum(a) | AggState::Min(a) | AggState::Max(a) => Some(a.to_f64()),
            AggState::Latest { value, .. } => Some(value.to_f64()),
            AggState::Count(n) => Some(*n as f64),
            AggState::Avg { count: 0, .. } => None,
            AggState::Avg { sum, count } => Some(sum.to_f64() / *count as f64),
            AggState::Unique(hashes) => Some(hashes.len() as f64),
        }
    }

    /// Deterministic compact bytes: `[version=1, tag, payload…]` with LEB128 varints
    /// (zigzag for signed values) and delta-encoded unique hashes.
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
            AggState::Unique(hashes) => {
                out.push(TAG_UNIQUE);
                put_u128(&mut out, hashes.len() as u128);
                let mut previous = 0u64;
                debug_assert!(
                    hashes.windows(2).all(|w| w[0] < w[1]),
                    "unsorted unique set"
                );
                for (i, hash) in hashes.iter().enumerate() {
                    let delta = if i == 0 {
                        *hash
                    } else {
                        hash.wrapping_sub(previous)
                    };
                    put_u128(&mut out, u128::from(delta));
                    previous = *hash;
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
            TAG_UNIQUE => AggState::Unique(reader.unique_hashes()?),
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

fn union_sorted(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
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

    fn unique_hashes(&mut self) -> Result<Vec<u64>, DecodeError> {
        let len = self.u64()?;
        // Each hash takes at least one byte: bound the allocation by the input.
        if len > self.bytes.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        let mut hashes = Vec::with_capacity(len as usize);
        let mut previous = 0u64;
        for i in 0..len {
            let delta = self.u64()?;
            let hash = if i == 0 {
                delta
            } else {
                if delta == 0 {
                    return Err(DecodeError::UniqueNotSorted);
                }
                previous
                    .checked_add(delta)
                    .ok_or(DecodeError::UniqueNotSorted)?
            };
            hashes.push(hash);
            previous = hash;
        }
        Ok(hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AGGREGATIONS: [Aggregation; 7] = [
        Aggregation::Sum,
        Aggregation::Count,
        Aggregation::Avg,
        Aggregation::Min,
        Aggregation::Max,
        Aggregation::UniqueCount,
        Aggregation::Latest,
    ];

    fn amount() -> impl Strategy<Value = Amount> {
        prop_oneof![
            (-1000i128..1000).prop_map(Amount),
            any::<i64>().prop_map(|v| Amount(i128::from(v) * 1000)),
        ]
    }

    /// A state of the given aggregation, as produced by folding observations.
    fn state_of(aggregation: Aggregation) -> BoxedStrategy<AggState> {
        match aggregation {
            Aggregation::Sum => amount().prop_map(AggState::Sum).boxed(),
            Aggregation::Count => (1u64..1_000_000).prop_map(AggState::Count).boxed(),
            Aggregation::Avg => (amount(), 1u64..1000)
                .prop_map(|(sum, count)| AggState::Avg { sum, count })
                .boxed(),
            Aggregation::Min => amount().prop_map(AggState::Min).boxed(),
            Aggregation::Max => amount().prop_map(AggState::Max).boxed(),
            Aggregation::UniqueCount => {
                prop::collection::btree_set(prop_oneof![0u64..20, any::<u64>()], 1..8)
                    .prop_map(|set| AggState::Unique(set.into_iter().collect()))
                    .boxed()
            }
            // Few distinct times so equal-time tie-breaks get exercised.
            Aggregation::Latest => (-3i64..3, amount())
                .prop_map(|(time_ms, value)| AggState::Latest { time_ms, value })
                .boxed(),
        }
    }

    fn three_states() -> impl Strategy<Value = (AggState, AggState, AggState)> {
        (0..AGGREGATIONS.len()).prop_flat_map(|i| {
            let s = state_of(AGGREGATIONS[i]);
            (s.clone(), s.clone(), s)
        })
    }

    fn any_state() -> impl Strategy<Value = AggState> {
        (0..AGGREGATIONS.len()).prop_flat_map(|i| state_of(AGGREGATIONS[i]))
    }

    fn merged(a: &AggState, b: &AggState) -> AggState {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    #[test]
    fn latest_prefers_later_time_then_larger_value() {
        let mut state = AggState::Latest {
            time_ms: 10,
            value: Amount(5),
        };
        state.observe(&ObservedValue::Amount(Amount(1)), 9);
        assert_eq!(
            state,
            AggState::Latest {
                time_ms: 10,
                value: Amount(5)
            }
        );
        state.observe(&ObservedValue::Amount(Amount(7)), 10);
        assert_eq!(
            state,
            AggState::Latest {
                time_ms: 10,
                value: Amount(7)
            }
        );
        state.observe(&ObservedValue::Amount(Amount(-1)), 11);
        assert_eq!(state.value(), Some(-0.000000001));
    }

    #[test]
    fn values_report_means_and_distinct_counts() {
        let avg = AggState::Avg {
            sum: Amount::from_int(3),
            count: 2,
        };
        assert_eq!(avg.value(), Some(1.5));
        assert_eq!(
            AggState::Avg {
                sum: Amount::ZERO,
                count: 0
            }
            .value(),
            None
        );
        assert_eq!(AggState::Unique(vec![1, 5, 9]).value(), Some(3.0));
        assert_eq!(AggState::Count(4).value(), Some(4.0));
    }

    #[test]
    fn merging_different_aggregations_is_refused() {
        let mut sum = AggState::Sum(Amount::ZERO);
        let err = sum.try_merge(&AggState::Count(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot merge COUNT aggregation state into SUM state"
        );
    }

    #[test]
    fn corrupt_bytes_are_refused() {
        let good = AggState::Unique(vec![3, 9]).encode();
        assert_eq!(AggState::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            AggState::decode(&[2, 1, 0]),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(AggState::decode(&[1, 99]), Err(DecodeError::UnknownTag(99)));
        assert_eq!(AggState::decode(&[1, TAG_SUM]), Err(DecodeError::Truncated));
        assert_eq!(
            AggState::decode(&[1, TAG_SUM, 0x80, 0x00]),
            Err(DecodeError::BadVarint)
        );
        assert_eq!(
            AggState::decode(&[1, TAG_COUNT, 1, 0]),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            AggState::decode(&[1, TAG_UNIQUE, 2, 3, 0]),
            Err(DecodeError::UniqueNotSorted)
        );
        assert_eq!(
            AggState::decode(&[1, TAG_UNIQUE, 200, 1]),
            Err(DecodeError::Truncated)
        );
        let too_long = [&[1, TAG_COUNT][..], &[0xff; 10], &[0x01]].concat();
        assert_eq!(AggState::decode(&too_long), Err(DecodeError::BadVarint));
        assert_eq!(AggState::decode(&good), Ok(AggState::Unique(vec![3, 9])));
        assert_eq!(good, vec![1, TAG_UNIQUE, 2, 3, 6]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn merge_is_commutative_and_associative((a, b, c) in three_states()) {
            prop_assert_eq!(merged(&a, &b).encode(), merged(&b, &a).encode());
            prop_assert_eq!(
                merged(&merged(&a, &b), &c).encode(),
                merged(&a, &merged(&b, &c)).encode()
            );
        }

        #[test]
        fn observe_equals_merging_a_single_observation_state(
            (state, other) in (0..AGGREGATIONS.len()).prop_flat_map(|i| (state_of(AGGREGATIONS[i]), state_of(AGGREGATIONS[i]))),
        ) {
            // Turn `other` into one observation of the same aggregation.
            let (observed, time_ms) = match &other {
                AggState::Sum(a) | AggState::Min(a) | AggState::Max(a) | AggState::Avg { sum: a, .. } => (ObservedValue::Amount(*a), 0),
                AggState::Latest { time_ms, value } => (ObservedValue::Amount(*value), *time_ms),
                AggState::Unique(h) => (ObservedValue::Unique(h[0]), 0),
                AggState::Count(_) => (ObservedValue::None, 0),
            };
            let mut in_place = state.clone();
            in_place.observe(&observed, time_ms);
            let single = AggState::from_observation(state.aggregation(), &observed, time_ms);
            prop_assert_eq!(in_place, merged(&state, &single));
        }

        #[test]
        fn encoding_round_trips(state in any_state()) {
            let bytes = state.encode();
            prop_assert_eq!(bytes[0], STATE_ENCODING_VERSION);
            prop_assert_eq!(AggState::decode(&bytes), Ok(state));
        }

        #[test]
        fn extreme_values_round_trip(v in any::<i128>(), t in any::<i64>(), n in any::<u64>()) {
            for state in [
                AggState::Sum(Amount(v)),
                AggState::Avg { sum: Amount(v), count: n },
                AggState::Latest { time_ms: t, value: Amount(v) },
                AggState::Count(n),
                AggState::Unique(vec![0, n.max(1)]),
            ] {
                prop_assert_eq!(AggState::decode(&state.encode()), Ok(state));
            }
        }

        #[test]
        fn decode_never_panics_and_accepts_only_canonical_bytes(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
            let mut input = bytes;
            if input.len() > 1 {
                input[0] = STATE_ENCODING_VERSION;
                input[1] %= 8;
            }
            if let Ok(state) = AggState::decode(&input) {
                prop_assert_eq!(state.encode(), input);
            }
        }
    }
}
