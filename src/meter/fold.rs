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

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use super::amount::Amount;
use super::def::{Aggregation, CompiledMeter};
use super::extract::{ExtractError, Observation};
use super::key::CounterKey;
use super::state::{AggState, MergeError};

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
    unique_sets: Vec<Vec<u64>>,
    counters: usize,
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

    pub fn is_empty(&self) -> bool {
        self.counters == 0
    }

    /// Forgets all counters, keeping the hashing key and some allocations.
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
    /// (`meter.window_size().start_of(event_time_ms)`) and group.
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

/// Extracts and folds a single event: its counter key and one-event state.
pub fn fold_event(
    meter: &CompiledMeter,
    subject: &str,
    event_time_ms: i64,
    data: Option<&str>,
) -> Result<(CounterKey, AggState), ExtractError> {
    let obs = meter.extract(data)?;
    let state = AggState::from_observation(meter.aggregation(), &obs.value, event_time_ms);
    let key = CounterKey {
        meter: meter.slug().to_owned(),
        subject: subject.to_owned(),
        window_start_ms: meter.window_size().start_of(event_time_ms),
        group: obs.group,
    };
    Ok((key, state))
}

/// A counter's state as the fold stores it: `Copy` (so dropping a fold with millions
/// of counters is one deallocation, not a walk), amounts split into two `u64`s (8-byte
/// alignment: 32 bytes instead of [`AggState`]'s 48) and unique sets kept aside. All
/// aggregation semantics stay in `AggState`: a cell is loaded, updated and stored.
#[derive(Debug, Clone, Copy)]
enum Cell {
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
struct Wide([u64; 2]);

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
    fn store(state: AggState, unique_sets: &mut Vec<Vec<u64>>) -> Cell {
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
    fn take(&self, unique_sets: &mut [Vec<u64>]) -> AggState {
        match *self {
            Cell::Unique(index) => {
                AggState::Unique(std::mem::take(&mut unique_sets[index as usize]))
            }
            other => other.load_scalar(),
        }
    }

    /// A copy of the state.
    fn load(&self, unique_sets: &[Vec<u64>]) -> AggState {
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
    fn update<R>(
        cell: &mut Cell,
        unique_sets: &mut [Vec<u64>],
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

/// (meter, subject, group) ↔ dense `u32` series ids.
///
/// Each lookup serialises the parts into a reused scratch buffer, hashes it once with
/// [`seeded_hash`] and compares the candidate byte-wise against a contiguous arena:
/// one table probe and one comparison, no allocation once a series is known. A series
/// whose 64-bit hash is already taken by another goes to a side list, so a collision
/// costs a scan, never a wrong counter.
#[derive(Debug, Clone)]
struct SeriesTable {
    seed: [u64; 2],
    /// Hash → the first series with that hash.
    by_hash: IdMap<u64, Series>,
    /// Series whose hash collided with an earlier one: (hash, series).
    collided: Vec<(u64, Series)>,
    /// Series id → series.
    entries: Vec<Series>,
    /// Serialised parts of every series, back to back.
    arena: Vec<u8>,
    scratch: Vec<u8>,
}

/// A series id and where its serialised parts sit in the arena.
#[derive(Debug, Clone, Copy)]
struct Series {
    id: u32,
    meter: u32,
    start: usize,
    len: usize,
}

impl Default for SeriesTable {
    fn default() -> Self {
        // A per-process random key, so clients cannot aim subjects at one bucket.
        let random = RandomState::new();
        SeriesTable {
            seed: [random.hash_one(0u64), random.hash_one(1u64)],
            by_hash: IdMap::default(),
            collided: Vec::new(),
            entries: Vec::new(),
            arena: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl SeriesTable {
    #[inline]
    fn holds(&self, series: &Series, serialised: &[u8]) -> bool {
        self.arena[series.start..series.start + series.len] == *serialised
    }

    #[inline]
    fn find(&self, hash: u64, serialised: &[u8]) -> Option<u32> {
        let first = self.by_hash.get(&hash)?;
        if self.holds(first, serialised) {
            return Some(first.id);
        }
        self.collided
            .iter()
            .find(|(h, series)| *h == hash && self.holds(series, serialised))
            .map(|(_, series)| series.id)
    }

    fn get(&self, meter: u32, subject: &str, group: &[Option<String>]) -> Option<u32> {
        let mut serialised = Vec::new();
        serialise(&mut serialised, meter, subject, group);
        self.find(seeded_hash(self.seed, &serialised), &serialised)
    }

    #[inline]
    fn intern(&mut self, meter: u32, subject: &str, group: &[Option<String>]) -> u32 {
        serialise(&mut self.scratch, meter, subject, group);
        let hash = seeded_hash(self.seed, &self.scratch);
        if let Some(id) = self.find(hash, &self.scratch) {
            return id;
        }
        let series = Series {
            id: u32::try_from(self.entries.len()).expect("fewer than 2^32 series per fold"),
            meter,
            start: self.arena.len(),
            len: self.scratch.len(),
        };
        self.arena.extend_from_slice(&self.scratch);
        self.entries.push(series);
        match self.by_hash.entry(hash) {
            Entry::Vacant(slot) => {
                slot.insert(series);
            }
            Entry::Occupied(_) => self.collided.push((hash, series)),
        }
        series.id
    }

    /// The parts of series `id`: (meter, subject, group).
    fn parts(&self, id: u32) -> (u32, String, Vec<Option<String>>) {
        let series = self.entries[id as usize];
        let mut reader = SerialisedReader {
            bytes: &self.arena[series.start..series.start + series.len],
        };
        reader.varint();
        let subject = reader.string().unwrap_or_default();
        let mut group = Vec::new();
        while !reader.bytes.is_empty() {
            group.push(reader.string());
        }
        (series.meter, subject, group)
    }

    fn clear(&mut self) {
        self.by_hash.clear();
        self.collided.clear();
        self.entries.clear();
        self.arena.clear();
    }
}

/// Serialises (meter, subject, group) into `out` with LEB128 varints: the meter id,
/// then `len + 1` and the bytes of the subject and of each `Some` group value, and a
/// single `0` for a `None` one. Unambiguous, so equal bytes mean equal parts.
#[inline]
fn serialise(out: &mut Vec<u8>, meter: u32, subject: &str, group: &[Option<String>]) {
    #[inline]
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push(value as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    out.clear();
    varint(out, u64::from(meter));
    varint(out, subject.len() as u64 + 1);
    out.extend_from_slice(subject.as_bytes());
    for value in group {
        match value {
            None => out.push(0),
            Some(text) => {
                varint(out, text.len() as u64 + 1);
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// Reads [`serialise`]'s output back (it holds only whole `&str`s).
struct SerialisedReader<'a> {
    bytes: &'a [u8],
}

impl SerialisedReader<'_> {
    fn varint(&mut self) -> u64 {
        let mut value = 0u64;
        for (i, byte) in self.bytes.iter().enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                break;
            }
        }
        value
    }

    fn string(&mut self) -> Option<String> {
        let len = self.varint().checked_sub(1)? as usize;
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(String::from_utf8_lossy(text).into_owned())
    }
}

/// Keyed 64-bit hash of a byte string (folded 64×64→128 multiplies, as in wyhash and
/// foldhash). Only used inside a [`Fold`] with a per-process random key; never
/// persisted.
#[inline]
fn seeded_hash(seed: [u64; 2], bytes: &[u8]) -> u64 {
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
struct IdHasher(u64);

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
