//! Counter cells: the compact `Copy` form a counter's [`AggState`] takes
//! inside a fold, and the moves between the two.

use crate::meter::amount::Amount;
use crate::meter::state::AggState;

/// A counter's state as the fold stores it: `Copy` (so dropping a fold with millions
/// of counters is one deallocation, not a walk), amounts split into two `u64`s (8-byte
/// alignment: 32 bytes instead of [`AggState`]'s 48) and unique sets kept aside. All
/// aggregation semantics stay in `AggState`: a cell is loaded, updated and stored.
#[derive(Debug, Clone, Copy)]
pub(super) enum Cell {
    Sum(Wide),
    Count(u64),
    Avg(Wide, u64),
    Min(Wide),
    Max(Wide),
    /// Index into `Fold::unique_sets`.
    Unique(u32),
    Latest(i64, Wide),
}

/// An `i128` stored as two `u64`s.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wide([u64; 2]);

impl From<Amount> for Wide {
    #[inline]
    fn from(amount: Amount) -> Wide {
        let bits = amount.0 as u128;
        Wide([bits as u64, (bits >> 64) as u64])
    }
}

impl From<Wide> for Amount {
    #[inline]
    fn from(wide: Wide) -> Amount {
        Amount((u128::from(wide.0[1]) << 64 | u128::from(wide.0[0])) as i128)
    }
}

impl Cell {
    /// Stores `state`, moving a unique set into `unique_sets`.
    #[inline]
    pub(super) fn store(state: AggState, unique_sets: &mut Vec<Vec<u128>>) -> Cell {
        match state {
            AggState::Unique(set) => {
                let index = u32::try_from(unique_sets.len()).expect("fewer than 2^32 sets");
                unique_sets.push(set);
                Cell::Unique(index)
            }
            scalar => Cell::store_scalar(scalar),
        }
    }

    #[inline]
    fn store_scalar(state: AggState) -> Cell {
        match state {
            AggState::Sum(a) => Cell::Sum(a.into()),
            AggState::Count(n) => Cell::Count(n),
            AggState::Avg { sum, count } => Cell::Avg(sum.into(), count),
            AggState::Min(a) => Cell::Min(a.into()),
            AggState::Max(a) => Cell::Max(a.into()),
            AggState::Latest { time_ms, value } => Cell::Latest(time_ms, value.into()),
            AggState::Unique(_) => unreachable!("unique sets are stored through `store`"),
        }
    }

    /// The state, moving a unique set out of `unique_sets` (its slot is left empty).
    #[inline]
    pub(super) fn take(&self, unique_sets: &mut [Vec<u128>]) -> AggState {
        match *self {
            Cell::Unique(index) => {
                AggState::Unique(std::mem::take(&mut unique_sets[index as usize]))
            }
            other => other.load_scalar(),
        }
    }

    /// A copy of the state.
    pub(super) fn load(&self, unique_sets: &[Vec<u128>]) -> AggState {
        match *self {
            Cell::Unique(index) => AggState::Unique(unique_sets[index as usize].clone()),
            other => other.load_scalar(),
        }
    }

    #[inline]
    fn load_scalar(self) -> AggState {
        match self {
            Cell::Sum(a) => AggState::Sum(a.into()),
            Cell::Count(n) => AggState::Count(n),
            Cell::Avg(sum, count) => AggState::Avg {
                sum: sum.into(),
                count,
            },
            Cell::Min(a) => AggState::Min(a.into()),
            Cell::Max(a) => AggState::Max(a.into()),
            Cell::Latest(time_ms, value) => AggState::Latest {
                time_ms,
                value: value.into(),
            },
            Cell::Unique(_) => unreachable!("unique cells load through their set"),
        }
    }

    /// Runs `change` on the cell's state in place.
    #[inline]
    pub(super) fn update<R>(
        cell: &mut Cell,
        unique_sets: &mut [Vec<u128>],
        change: impl FnOnce(&mut AggState) -> R,
    ) -> R {
        let mut state = cell.take(unique_sets);
        let result = change(&mut state);
        // `AggState` never changes kind in place, so a unique cell stays unique.
        *cell = match (state, *cell) {
            (AggState::Unique(set), Cell::Unique(index)) => {
                unique_sets[index as usize] = set;
                Cell::Unique(index)
            }
            (state, _) => Cell::store_scalar(state),
        };
        result
    }
}
