//! The fold: observations in, one aggregation state per counter out.
//!
//! Subjects and group tuples are interned to `u32` ids, so the per-event path hashes
//! the borrowed strings once each and never allocates for a counter it has seen; the
//! counter map itself is keyed by four integers.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use serde_json::Value;

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
    subjects: Interner<Box<str>>,
    groups: Interner<Vec<Option<String>>>,
    states: HashMap<SlotKey, AggState, BuildHasherDefault<IdHasher>>,
}

#[derive(Debug, Clone)]
struct FoldMeter {
    slug: Box<str>,
    aggregation: Aggregation,
}

/// A counter identity in interned form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SlotKey {
    meter: u32,
    subject: u32,
    group: u32,
    window_start_ms: i64,
}

impl Fold {
    pub fn new() -> Fold {
        Fold::default()
    }

    /// Number of counters.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Forgets all counters, keeping allocations for the next batch.
    pub fn clear(&mut self) {
        self.meters.clear();
        self.last_meter = 0;
        self.subjects.clear();
        self.groups.clear();
        self.states.clear();
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
        let slot = SlotKey {
            meter: self.meter_id(meter.slug(), meter.aggregation()),
            subject: self.subjects.intern(subject),
            group: self.groups.intern(obs.group.as_slice()),
            window_start_ms: meter.window_size().start_of(event_time_ms),
        };
        match self.states.entry(slot) {
            Entry::Occupied(state) => state.into_mut().observe(&obs.value, event_time_ms),
            Entry::Vacant(slot) => {
                slot.insert(AggState::from_observation(
                    meter.aggregation(),
                    &obs.value,
                    event_time_ms,
                ));
            }
        }
    }

    /// Merges an already aggregated state (e.g. one read back from storage) into the
    /// counter `key`.
    pub fn merge_state(&mut self, key: &CounterKey, state: &AggState) -> Result<(), MergeError> {
        let meter = self.meter_id_checked(&key.meter, state.aggregation())?;
        let slot = SlotKey {
            meter,
            subject: self.subjects.intern(key.subject.as_str()),
            group: self.groups.intern(key.group.as_slice()),
            window_start_ms: key.window_start_ms,
        };
        match self.states.entry(slot) {
            Entry::Occupied(existing) => existing.into_mut().try_merge(state),
            Entry::Vacant(slot) => {
                slot.insert(state.clone());
                Ok(())
            }
        }
    }

    /// Merges every counter of `self` into `target`.
    pub fn merge_into(self, target: &mut Fold) -> Result<(), MergeError> {
        for (key, state) in self.into_unsorted() {
            target.merge_state(&key, &state)?;
        }
        Ok(())
    }

    /// The state of counter `key`, if any event reached it.
    pub fn get(&self, key: &CounterKey) -> Option<&AggState> {
        let slot = SlotKey {
            meter: self.meters.iter().position(|m| *m.slug == *key.meter)? as u32,
            subject: self.subjects.get(key.subject.as_str())?,
            group: self.groups.get(key.group.as_slice())?,
            window_start_ms: key.window_start_ms,
        };
        self.states.get(&slot)
    }

    /// All counters in key (= encoded byte) order.
    pub fn into_sorted(self) -> Vec<(CounterKey, AggState)> {
        let mut counters = self.into_unsorted();
        counters.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        counters
    }

    fn into_unsorted(self) -> Vec<(CounterKey, AggState)> {
        let Fold {
            meters,
            subjects,
            groups,
            states,
            ..
        } = self;
        states
            .into_iter()
            .map(|(slot, state)| {
                let key = CounterKey {
                    meter: meters[slot.meter as usize].slug.to_string(),
                    subject: subjects.value(slot.subject).to_string(),
                    window_start_ms: slot.window_start_ms,
                    group: groups.value(slot.group).clone(),
                };
                (key, state)
            })
            .collect()
    }

    #[inline]
    fn meter_id(&mut self, slug: &str, aggregation: Aggregation) -> u32 {
        match self.meter_id_checked(slug, aggregation) {
            Ok(id) => id,
            Err(e) => panic!("meter {slug}: {e}"),
        }
    }

    #[inline]
    fn meter_id_checked(
        &mut self,
        slug: &str,
        aggregation: Aggregation,
    ) -> Result<u32, MergeError> {
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
    data: Option<&Value>,
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

/// Values ↔ dense `u32` ids; lookups take the borrowed form, so a known value costs
/// one hash and no allocation.
#[derive(Debug, Clone)]
struct Interner<T> {
    ids: HashMap<T, u32>,
    values: Vec<T>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            ids: HashMap::new(),
            values: Vec::new(),
        }
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    #[inline]
    fn intern<Q>(&mut self, value: &Q) -> u32
    where
        T: std::borrow::Borrow<Q> + for<'q> From<&'q Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        let id = u32::try_from(self.values.len()).expect("more than u32::MAX interned values");
        let owned = T::from(value);
        self.ids.insert(owned.clone(), id);
        self.values.push(owned);
        id
    }

    fn get<Q>(&self, value: &Q) -> Option<u32>
    where
        T: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.ids.get(value).copied()
    }

    fn value(&self, id: u32) -> &T {
        &self.values[id as usize]
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.values.clear();
    }
}

/// Hasher for [`SlotKey`]: its fields are dense ids and aligned window starts chosen
/// by this module, not by clients, so a fast multiplicative mix is safe here (the
/// string interners keep std's keyed SipHash).
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
