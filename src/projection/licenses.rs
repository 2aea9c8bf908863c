//! The licenses projection: every license with its sealed key and seats,
//! folded from the log by [`LicenseBook`], persisted in the sled tree
//! `licenses` (id → JSON state, checkpoint under the empty key, written in
//! the same batch), and published to readers as immutable snapshots.
//!
//! Also here: the quota usage cache that lets validation answer from memory.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::counters::{read_states, Overlay};
use super::store::{documents, Store};
use super::{checkpoint, put_checkpoint, Applied, OpenContext, Projection, ProjectionError};
use crate::license::{LicenseBook, LicenseState};
use crate::log::Seq;
use crate::meter::MeterSet;
use crate::meter::{AggState, CounterKey};
use crate::record::Record;

pub struct Licenses {
    tree: sled::Tree,
    book: LicenseBook,
    /// Checkpoint in sled.
    applied: Seq,
    /// Highest seq seen; the tree is logically at least here.
    seen: Seq,
    /// Where readers find the licenses.
    published: Arc<PublishedLicenses>,
    /// Licenses changed since they were last published; `None`: all of them.
    unpublished: Option<Vec<String>>,
}

pub fn open(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let tree = ctx.store.licenses.clone();
    let states = documents::<LicenseState>(&tree, "licenses")?;
    let applied = checkpoint(&tree)?;
    Ok(Box::new(Licenses {
        tree,
        book: LicenseBook::from_states(states),
        applied,
        seen: applied,
        published: ctx.readers.licenses.clone(),
        unpublished: None,
    }))
}

impl Projection for Licenses {
    fn name(&self) -> &'static str {
        "licenses"
    }

    fn applied(&self) -> Seq {
        self.applied.max(self.seen)
    }

    /// Applies records in log order (skipping what the tree has) and writes
    /// the changed licenses with the checkpoint.
    fn apply(&mut self, records: &[Applied<'_>]) -> Result<bool, ProjectionError> {
        let Some(last) = records.last().map(|a| a.seq) else {
            return Ok(false);
        };
        let mut changed = Vec::new();
        for a in records.iter().filter(|a| a.seq > self.seen) {
            if let Some(id) = self.book.apply(a.record) {
                changed.push(id);
            }
        }
        self.seen = self.seen.max(last);
        if changed.is_empty() {
            return Ok(false);
        }
        changed.sort();
        changed.dedup();
        let mut batch = sled::Batch::default();
        for id in &changed {
            match self.book.get(id) {
                Some(state) => batch.insert(
                    id.as_bytes(),
                    serde_json::to_vec(state).expect("license state serializes"),
                ),
                None => batch.remove(id.as_bytes()),
            }
        }
        put_checkpoint(&mut batch, self.seen);
        self.tree.apply_batch(batch)?;
        self.applied = self.seen;
        if let Some(unpublished) = &mut self.unpublished {
            unpublished.extend(changed);
        }
        Ok(true)
    }

    fn publish(&mut self) -> Result<(), ProjectionError> {
        let changed = match self.unpublished.replace(Vec::new()) {
            Some(changed) => changed,
            None => self.book.iter().map(|s| s.license.id.clone()).collect(),
        };
        self.published.publish(&self.book, &changed);
        Ok(())
    }

    /// Moves the checkpoint up to the last record seen.
    fn flush(&mut self) -> Result<(), ProjectionError> {
        if self.applied < self.seen {
            self.tree
                .insert(super::CHECKPOINT_KEY, &self.seen.to_be_bytes())?;
            self.applied = self.seen;
        }
        Ok(())
    }
}

const SHARDS: usize = 64;

/// A map published to readers as immutable snapshots, split in shards so
/// that a change copies one shard, not the whole map. One writer (the
/// projector) replaces shards; readers load them without locks.
pub struct ShardedMap<K, V> {
    shards: Vec<ArcSwap<HashMap<K, V>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn new() -> Self {
        ShardedMap {
            shards: (0..SHARDS)
                .map(|_| ArcSwap::from_pointee(HashMap::new()))
                .collect(),
            hasher: Default::default(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(key)].load().get(key).cloned()
    }

    /// Applies `changes` (`None` removes), copying each touched shard once.
    fn update(&self, changes: Vec<(K, Option<V>)>) {
        let mut by_shard: BTreeMap<usize, Vec<(K, Option<V>)>> = BTreeMap::new();
        for (k, v) in changes {
            by_shard.entry(self.shard(&k)).or_default().push((k, v));
        }
        for (i, changes) in by_shard {
            let mut map = HashMap::clone(&self.shards[i].load());
            for (k, v) in changes {
                match v {
                    Some(v) => map.insert(k, v),
                    None => map.remove(&k),
                };
            }
            self.shards[i].store(Arc::new(map));
        }
    }

    fn values(&self) -> Vec<V> {
        self.shards
            .iter()
            .flat_map(|s| s.load().values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// A license as published to readers, with its JSON form rendered once at
/// publication (validation answers embed it without re-serializing).
pub struct PublishedLicense {
    pub state: LicenseState,
    /// `serde_json` text of `state.license`.
    pub license_json: String,
}

impl std::ops::Deref for PublishedLicense {
    type Target = LicenseState;
    fn deref(&self) -> &LicenseState {
        &self.state
    }
}

/// The licenses as readers see them: by id and by key digest.
pub struct PublishedLicenses {
    by_id: ShardedMap<String, Arc<PublishedLicense>>,
    by_digest: ShardedMap<[u8; 32], Arc<PublishedLicense>>,
}

impl Default for PublishedLicenses {
    fn default() -> PublishedLicenses {
        PublishedLicenses {
            by_id: ShardedMap::new(),
            by_digest: ShardedMap::new(),
        }
    }
}

impl PublishedLicenses {
    pub fn get(&self, id: &str) -> Option<Arc<PublishedLicense>> {
        self.by_id.get(id)
    }

    pub fn by_key_digest(&self, digest: &[u8; 32]) -> Option<Arc<PublishedLicense>> {
        self.by_digest.get(digest)
    }

    /// Every license (unordered).
    pub fn all(&self) -> Vec<Arc<PublishedLicense>> {
        self.by_id.values()
    }

    /// Republishes the licenses `changed` as they now are in `book`.
    pub fn publish(&self, book: &LicenseBook, changed: &[String]) {
        let mut ids = Vec::with_capacity(changed.len());
        let mut digests = Vec::with_capacity(changed.len());
        for id in changed {
            match book.get(id) {
                Some(state) => {
                    let state = Arc::new(PublishedLicense {
                        license_json: serde_json::to_string(&state.license)
                            .expect("license serializes"),
                        state: state.clone(),
                    });
                    digests.push((state.secret.lookup, Some(state.clone())));
                    ids.push((id.clone(), Some(state)));
                }
                None => ids.push((id.clone(), None)),
            }
        }
        self.by_id.update(ids);
        self.by_digest.update(digests);
    }
}

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
            let Record::Event(_) = a.record else {
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
            for (meter, obs) in meters.for_type(&facts.ty).zip(observations) {
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
