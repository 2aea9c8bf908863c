//! Where each source partition stands: the next offset to consume, as of a
//! log position. A pure value with one rule (Quickwit's): a delta must start
//! exactly where the stored position ends, so a replayed or reordered batch
//! is refused instead of counted twice or leaving a hole.

use std::collections::HashMap;

use crate::record::OffsetDelta;

/// A source partition: (topic, partition).
pub type PartitionId = (String, i32);

/// The next offset of every source partition seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCheckpoint {
    next: HashMap<PartitionId, i64>,
}

/// Why a delta does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "offsets {from}..{to} of {topic}/{partition} do not continue the stored position {stored:?}"
)]
pub struct DeltaRefused {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    pub stored: Option<i64>,
}

impl SourceCheckpoint {
    pub fn from_positions(next: HashMap<PartitionId, i64>) -> SourceCheckpoint {
        SourceCheckpoint { next }
    }

    /// Moves the partition's position from `delta.from` to `delta.to`.
    /// Refused when `to < from`, or when the partition has a position and
    /// `from` is not it. A partition without a position starts anywhere
    /// (its first batch, or `auto.offset.reset`).
    pub fn try_apply_delta(&mut self, delta: &OffsetDelta) -> Result<(), DeltaRefused> {
        self.check_delta(delta)?;
        self.next
            .insert((delta.topic.clone(), delta.partition), delta.to);
        Ok(())
    }

    /// Whether [`SourceCheckpoint::try_apply_delta`] would accept `delta`.
    pub fn check_delta(&self, delta: &OffsetDelta) -> Result<(), DeltaRefused> {
        let stored = self.next_offset(&delta.topic, delta.partition);
        if delta.to < delta.from || stored.is_some_and(|next| next != delta.from) {
            return Err(DeltaRefused {
                topic: delta.topic.clone(),
                partition: delta.partition,
                from: delta.from,
                to: delta.to,
                stored,
            });
        }
        Ok(())
    }

    pub fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.next.get(&(topic.to_owned(), partition)).copied()
    }

    pub fn positions(&self) -> &HashMap<PartitionId, i64> {
        &self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn delta(partition: i32, from: i64, to: i64) -> OffsetDelta {
        OffsetDelta {
            topic: "t".into(),
            partition,
            from,
            to,
        }
    }

    #[test]
    fn a_delta_must_continue_the_stored_position() {
        let mut c = SourceCheckpoint::default();
        c.try_apply_delta(&delta(0, 5, 10)).unwrap();
        assert_eq!(c.next_offset("t", 0), Some(10));
        let replay = c.try_apply_delta(&delta(0, 5, 10)).unwrap_err();
        assert_eq!(replay.stored, Some(10));
        assert!(c.try_apply_delta(&delta(0, 11, 12)).is_err(), "a hole");
        assert!(c.try_apply_delta(&delta(0, 10, 9)).is_err(), "backwards");
        c.try_apply_delta(&delta(0, 10, 10)).unwrap();
        c.try_apply_delta(&delta(1, 0, 3)).unwrap();
        assert_eq!(c.next_offset("t", 0), Some(10));
        assert_eq!(c.next_offset("t", 1), Some(3));
    }

    proptest! {
        /// Whatever deltas are offered, the accepted ones of a partition
        /// tile one contiguous range: no offset is skipped or taken twice
        /// after the first accepted delta.
        #[test]
        fn accepted_deltas_never_skip_or_overlap(
            offers in proptest::collection::vec((0..3i32, 0..40i64, 0..8i64), 1..200)
        ) {
            let mut c = SourceCheckpoint::default();
            let mut model: HashMap<i32, (i64, i64)> = HashMap::new();
            for (partition, from, len) in offers {
                let d = delta(partition, from, from + len);
                let accepted = c.try_apply_delta(&d).is_ok();
                let expected = model.get(&partition).is_none_or(|&(_, next)| next == from);
                prop_assert_eq!(accepted, expected);
                if accepted {
                    let start = model.get(&partition).map_or(from, |&(s, _)| s);
                    model.insert(partition, (start, from + len));
                }
            }
            for (partition, (_, next)) in model {
                prop_assert_eq!(c.next_offset("t", partition), Some(next));
            }
        }
    }
}
