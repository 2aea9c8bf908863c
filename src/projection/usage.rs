//! The quota usage cache that lets validation answer from memory: a meter's
//! value for one subject over one quota period.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::reads::{read_states, Overlay};
use super::store::Store;
use super::{Applied, ProjectionError};
use crate::meter::{AggState, CounterKey, MeterSet};
use crate::record::Record;

/// Most cached quota usages; at the limit the cache starts over.
const USAGE_ENTRIES_MAX: usize = 100_000;

struct UsageEntry {
    meter: String,
    /// Counts windows whose start is in `[from_ms, to_ms)`.
    from_ms: i64,
    to_ms: i64,
    state: Option<AggState>,
}

#[derive(Default)]
pub struct UsageInner {
    by_subject: HashMap<String, Vec<UsageEntry>>,
    entries: usize,
}

/// Which usage to read: a meter, a subject, windows starting in `[from, to)`.
#[derive(Debug, Clone, Copy)]
pub struct UsageQuery<'a> {
    pub meter: &'a str,
    pub subject: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// A meter's value for one subject over one quota period, kept in memory so
/// validation does not scan counters. An entry is computed once from sled and
/// the overlay, then kept current by the projector, which adds each batch's
/// observations for cached subjects. Both happen under one lock, which the
/// projector also holds while it changes counters (fold and flush), so an
/// entry never misses or double-counts a batch.
#[derive(Default)]
pub struct UsageCache {
    inner: Mutex<UsageInner>,
}

impl UsageCache {
    pub fn lock(&self) -> MutexGuard<'_, UsageInner> {
        self.inner.lock().expect("usage cache lock")
    }

    /// The value of `q.meter` for `q.subject` over windows starting in
    /// `[q.from_ms, q.to_ms)`; 0 when there is no usage or no such meter.
    pub fn usage(
        &self,
        store: &Store,
        overlay: &Overlay,
        meters: &MeterSet,
        q: UsageQuery<'_>,
    ) -> Result<f64, ProjectionError> {
        let UsageQuery {
            meter,
            subject,
            from_ms,
            to_ms,
        } = q;
        let mut inner = self.lock();
        if let Some(e) = inner.by_subject.get(subject).and_then(|v| {
            v.iter()
                .find(|e| e.meter == meter && e.from_ms == from_ms && e.to_ms == to_ms)
        }) {
            return Ok(value(&e.state));
        }
        let state = if meters.get(meter).is_some() && !subject.contains('\0') {
            read_total(store, overlay, meter, subject, from_ms, to_ms)?
        } else {
            None
        };
        let v = value(&state);
        if inner.entries >= USAGE_ENTRIES_MAX {
            *inner = UsageInner::default();
        }
        inner.entries += 1;
        inner
            .by_subject
            .entry(subject.to_owned())
            .or_default()
            .push(UsageEntry {
                meter: meter.to_owned(),
                from_ms,
                to_ms,
                state,
            });
        Ok(v)
    }
}

fn value(state: &Option<AggState>) -> f64 {
    state.as_ref().and_then(AggState::value).unwrap_or(0.0)
}

fn read_total(
    store: &Store,
    overlay: &Overlay,
    meter: &str,
    subject: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Option<AggState>, ProjectionError> {
    let (lo, hi) = CounterKey::window_range_bounds(meter, subject, from_ms, to_ms);
    let states = read_states(&store.counters, overlay, &[lo..hi])?;
    Ok(states.into_values().reduce(|mut total, state| {
        total.merge(&state);
        total
    }))
}

impl UsageInner {
    /// Adds a live batch's observations to the cached entries of their
    /// subjects. A batch that changes meters empties the cache instead (a new
    /// meter counts older events; a deleted one counts nothing).
    pub fn observe(&mut self, records: &[Applied<'_>], meters: &MeterSet) {
        if self.entries == 0 {
            return;
        }
        let meters_changed = records.iter().any(|a| {
            matches!(
                a.record,
                Record::MeterCreated { .. } | Record::MeterDeleted { .. }
            )
        });
        if meters_changed {
            *self = UsageInner::default();
            return;
        }
        for a in records {
            let Some(_) = a.record.event() else {
                continue;
            };
            let Some(facts) = a.facts else {
                // Not parsed (replay): forget what this subject may have had.
                *self = UsageInner::default();
                return;
            };
            let Some(observations) = &facts.observations else {
                if let Some(gone) = self.by_subject.remove(&facts.subject) {
                    self.entries -= gone.len();
                }
                continue;
            };
            let Some(entries) = self.by_subject.get_mut(&facts.subject) else {
                continue;
            };
            for (meter, reading) in meters.for_type(&facts.ty).zip(observations) {
                let Ok(obs) = reading else {
                    continue; // skipped by this meter
                };
                if !meter.counts_time(facts.time_ms) {
                    continue; // before its eventFrom
                }
                let window_ms = meter.window_size().start_of(facts.time_ms);
                for e in entries.iter_mut() {
                    if e.meter != meter.slug() || window_ms < e.from_ms || window_ms >= e.to_ms {
                        continue;
                    }
                    let one = AggState::from_observation(
                        meter.def().aggregation,
                        &obs.value,
                        facts.time_ms,
                    );
                    match &mut e.state {
                        Some(s) => s.merge(&one),
                        None => e.state = Some(one),
                    }
                }
            }
        }
    }
}
