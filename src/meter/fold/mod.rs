//! The fold: observations in, one aggregation state per counter out.
//!
//! Layout, chosen for the per-event path (see `benches/fold.rs`):
//! - a *series* is a (meter, subject, group) triple, interned to a dense `u32` by
//!   hashing its serialised parts once with a keyed hash (random per process, so
//!   clients cannot aim crafted subjects at one bucket) and comparing bytes against a
//!   contiguous arena — no allocation once a series has been seen;
//! - counters live in one small map per window, keyed by series id. Events arrive
//!   roughly in time order, so the windows being written stay cache-resident even
//!   when a fold holds millions of counters;
//! - a counter is stored as a `Copy` [`Cell`]; every aggregation rule stays in
//!   [`AggState`], which a cell is loaded into and stored back from.

mod cell;
mod hash;
mod series;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::def::{Aggregation, CompiledMeter};
use super::extract::{ExtractError, Observation};
use super::key::CounterKey;
use super::state::{AggState, MergeError};
use super::unique::UniqueKey;
use crate::error_code::ErrorCode;
use cell::Cell;
use hash::IdHasher;
use series::SeriesTable;

/// Aggregation states keyed by counter, built from events in any order.
#[derive(Debug, Default, Clone)]
pub struct Fold {
    meters: Vec<FoldMeter>,
    /// Index into `meters` of the most recently used meter.
    last_meter: usize,
    series: SeriesTable,
    windows: Vec<WindowCells>,
    window_index: IdMap<i64, usize>,
    /// Index into `windows` of the most recently used window.
    last_window: usize,
    /// Emptied window maps kept by [`Fold::clear`] for reuse.
    spare_maps: Vec<IdMap<u32, Cell>>,
    /// UNIQUE_COUNT sets, indexed by [`Cell::Unique`].
    unique_sets: Vec<Vec<u128>>,
    counters: usize,
    /// Events a meter skipped: (meter slug, reason, events). Kept apart from
    /// the counters: [`Fold::clear`] and the drains leave them to
    /// [`Fold::take_skips`].
    skips: Vec<(Box<str>, ErrorCode, u64)>,
}

#[derive(Debug, Clone)]
struct FoldMeter {
    slug: Box<str>,
    aggregation: Aggregation,
}

#[derive(Debug, Clone)]
struct WindowCells {
    start_ms: i64,
    cells: IdMap<u32, Cell>,
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

impl Fold {
    pub fn new() -> Fold {
        Fold::default()
    }

    /// Number of counters.
    pub fn len(&self) -> usize {
        self.counters
    }

    /// No counter and no skip.
    pub fn is_empty(&self) -> bool {
        self.counters == 0 && self.skips.is_empty()
    }

    /// Counts an event `meter` could not read, for `reason` (an
    /// [`super::ExtractError::code`]): it is skipped by that meter only.
    pub fn skip(&mut self, meter: &str, reason: ErrorCode) {
        self.add_skips(meter, reason, 1);
    }

    fn add_skips(&mut self, meter: &str, reason: ErrorCode, events: u64) {
        let known = (self.skips.iter_mut()).find(|(m, r, _)| *r == reason && **m == *meter);
        match known {
            Some((_, _, n)) => *n += events,
            None => self.skips.push((meter.into(), reason, events)),
        }
    }

    /// The skips counted since the last call: (meter slug, reason, events).
    pub fn take_skips(&mut self) -> Vec<(Box<str>, ErrorCode, u64)> {
        std::mem::take(&mut self.skips)
    }

    /// Forgets all counters (not the skips), keeping the hashing key and
    /// some allocations.
    pub fn clear(&mut self) {
        self.meters.clear();
        self.last_meter = 0;
        self.series.clear();
        for mut window in self.windows.drain(..) {
            window.cells.clear();
            self.spare_maps.push(window.cells);
        }
        self.unique_sets.clear();
        self.window_index.clear();
        self.last_window = 0;
        self.counters = 0;
    }

    /// Folds one observation into the counter of its meter, subject, window
    /// (`meter.window_size().start_of(event_time_ms)`) and group; an event
    /// before the meter's `eventFrom` is not counted.
    ///
    /// # Panics
    /// If `obs` was not extracted by a meter shaped like `meter` (group arity or value
    /// kind differ), or if another meter with the same slug but a different
    /// aggregation was folded into this `Fold` before.
    #[inline]
    pub fn apply(
        &mut self,
        meter: &CompiledMeter,
        subject: &str,
        event_time_ms: i64,
        obs: &Observation,
    ) {
        assert_eq!(
            obs.group.len(),
            meter.group_keys().len(),
            "observation group arity does not match meter {}",
            meter.slug()
        );
        if !meter.counts_time(event_time_ms) {
            return; // before the meter's eventFrom
        }
        let meter_id = match self.meter_id(meter.slug(), meter.aggregation()) {
            Ok(id) => id,
            Err(e) => panic!("meter {}: {e}", meter.slug()),
        };
        let series = self.series.intern(meter_id, subject, &obs.group);
        let start_ms = meter.window_size().start_of(event_time_ms);
        let window = self.window(start_ms);
        match self.windows[window].cells.entry(series) {
            Entry::Occupied(cell) => {
                Cell::update(cell.into_mut(), &mut self.unique_sets, |state| {
                    state.observe(&obs.value, event_time_ms)
                })
            }
            Entry::Vacant(slot) => {
                let state =
                    AggState::from_observation(meter.aggregation(), &obs.value, event_time_ms);
                slot.insert(Cell::store(state, &mut self.unique_sets));
                self.counters += 1;
            }
        }
    }

    /// Merges an already aggregated state (e.g. one read back from storage) into the
    /// counter `key`.
    pub fn merge_state(&mut self, key: &CounterKey, state: &AggState) -> Result<(), MergeError> {
        let meter_id = self.meter_id(&key.meter, state.aggregation())?;
        let series = self.series.intern(meter_id, &key.subject, &key.group);
        let window = self.window(key.window_start_ms);
        match self.windows[window].cells.entry(series) {
            Entry::Occupied(cell) => Cell::update(cell.into_mut(), &mut self.unique_sets, |mine| {
                mine.try_merge(state)
            }),
            Entry::Vacant(slot) => {
                slot.insert(Cell::store(state.clone(), &mut self.unique_sets));
                self.counters += 1;
                Ok(())
            }
        }
    }

    /// Merges every counter of `self` into `target`.
    pub fn merge_into(mut self, target: &mut Fold) -> Result<(), MergeError> {
        for (meter, reason, events) in self.take_skips() {
            target.add_skips(&meter, reason, events);
        }
        for (key, state) in self.drain_unsorted() {
            target.merge_state(&key, &state)?;
        }
        Ok(())
    }

    /// The state of counter `key`, if any event reached it.
    pub fn get(&self, key: &CounterKey) -> Option<AggState> {
        let meter_id = self.meters.iter().position(|m| *m.slug == *key.meter)? as u32;
        let series = self.series.get(meter_id, &key.subject, &key.group)?;
        let window = self.window_index.get(&key.window_start_ms)?;
        let cell = self.windows[*window].cells.get(&series)?;
        Some(cell.load(&self.unique_sets))
    }

    /// All counters in key (= encoded byte) order.
    pub fn into_sorted(mut self) -> Vec<(CounterKey, AggState)> {
        self.drain_sorted()
    }

    /// All counters in key (= encoded byte) order, leaving the fold empty but keeping
    /// its allocations for the next batch (cheaper than a new `Fold` per batch).
    pub fn drain_sorted(&mut self) -> Vec<(CounterKey, AggState)> {
        let mut counters = self.drain_unsorted();
        counters.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        counters
    }

    /// All counters as (encoded key, state) in key order, leaving the fold
    /// empty like [`Self::drain_sorted`]; no [`CounterKey`] is built.
    pub fn drain_encoded(&mut self) -> Vec<(Vec<u8>, AggState)> {
        let mut out = Vec::with_capacity(self.counters);
        for window in &self.windows {
            for (series, cell) in &window.cells {
                let meter = self.series.meter_of(*series);
                let mut key = Vec::with_capacity(48);
                let slug = &self.meters[meter as usize].slug;
                self.series
                    .encode_key(*series, slug, window.start_ms, &mut key);
                out.push((key, cell.take(&mut self.unique_sets)));
            }
        }
        self.clear();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn drain_unsorted(&mut self) -> Vec<(CounterKey, AggState)> {
        let mut out = Vec::with_capacity(self.counters);
        for window in &self.windows {
            for (series, cell) in &window.cells {
                let (meter, subject, group) = self.series.parts(*series);
                let key = CounterKey {
                    meter: self.meters[meter as usize].slug.to_string(),
                    subject,
                    window_start_ms: window.start_ms,
                    group,
                };
                out.push((key, cell.take(&mut self.unique_sets)));
            }
        }
        self.clear();
        out
    }

    /// Index into `windows` of the window starting at `start_ms`, created if new.
    #[inline]
    fn window(&mut self, start_ms: i64) -> usize {
        let cached = self
            .windows
            .get(self.last_window)
            .is_some_and(|w| w.start_ms == start_ms);
        if !cached {
            let windows = &mut self.windows;
            let spare_maps = &mut self.spare_maps;
            self.last_window = *self.window_index.entry(start_ms).or_insert_with(|| {
                windows.push(WindowCells {
                    start_ms,
                    cells: spare_maps.pop().unwrap_or_default(),
                });
                windows.len() - 1
            });
        }
        self.last_window
    }

    #[inline]
    fn meter_id(&mut self, slug: &str, aggregation: Aggregation) -> Result<u32, MergeError> {
        let index = match self.meters.get(self.last_meter) {
            Some(last) if *last.slug == *slug => self.last_meter,
            _ => match self.meters.iter().position(|m| *m.slug == *slug) {
                Some(index) => index,
                None => {
                    self.meters.push(FoldMeter {
                        slug: slug.into(),
                        aggregation,
                    });
                    self.meters.len() - 1
                }
            },
        };
        self.last_meter = index;
        let known = self.meters[index].aggregation;
        if known != aggregation {
            return Err(MergeError {
                left: known.as_str(),
                right: aggregation.as_str(),
            });
        }
        Ok(index as u32)
    }
}

/// Extracts and folds a single event: its counter key and one-event state
/// (whatever the meter's `eventFrom`: the caller decides whether it counts).
pub fn fold_event(
    meter: &CompiledMeter,
    key: &UniqueKey,
    subject: &str,
    event_time_ms: i64,
    data: Option<&str>,
) -> Result<(CounterKey, AggState), ExtractError> {
    let obs = meter.extract(data, key)?;
    let state = AggState::from_observation(meter.aggregation(), &obs.value, event_time_ms);
    let key = CounterKey {
        meter: meter.slug().to_owned(),
        subject: subject.to_owned(),
        window_start_ms: meter.window_size().start_of(event_time_ms),
        group: obs.group,
    };
    Ok((key, state))
}
