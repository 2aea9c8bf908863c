//! Aggregation state: what one counter (meter × subject × window × group) stores.
//!
//! Every `merge` is commutative and associative, so folding the same events in any
//! order, or merging partial folds in any grouping, gives identical state and bytes.

mod encoding;
#[cfg(test)]
mod tests;

use super::amount::{Amount, AMOUNT_SCALE};
use super::def::Aggregation;
use super::extract::ObservedValue;

pub use encoding::{DecodeError, STATE_ENCODING_VERSION};

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
    /// Sorted, deduplicated value identities (keyed 128-bit hashes).
    Unique(Vec<u128>),
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

impl AggState {
    /// State for a single observation.
    ///
    /// # Panics
    /// If `value` is not the kind `extract` produces for `aggregation` (an amount for
    /// SUM/AVG/MIN/MAX/LATEST, an identity for UNIQUE_COUNT; COUNT accepts any): that is
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

    /// The reported value, exact: amounts as kept, counts as integers, AVG
    /// the sum / count rounded half to even at 9 decimals (the precision of
    /// every amount), UNIQUE_COUNT the number of distinct values. `None`
    /// only for an AVG over zero events (no defined mean).
    pub fn amount(&self) -> Option<Amount> {
        let count = |n: u64| Amount(i128::from(n).saturating_mul(AMOUNT_SCALE));
        match self {
            AggState::Sum(a) | AggState::Min(a) | AggState::Max(a) => Some(*a),
            AggState::Latest { value, .. } => Some(*value),
            AggState::Count(n) => Some(count(*n)),
            AggState::Avg { count: 0, .. } => None,
            AggState::Avg { sum, count } => Some(sum.div_round_half_even(*count)),
            AggState::Unique(hashes) => Some(count(hashes.len() as u64)),
        }
    }

    /// The reported value as the nearest `f64` (quota checks): AVG is sum /
    /// count, UNIQUE_COUNT the number of distinct values. `None` only for an
    /// AVG over zero events (no defined mean).
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
}

fn union_sorted(a: &[u128], b: &[u128]) -> Vec<u128> {
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
