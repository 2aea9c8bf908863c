//! The counters projection: aggregation states per meter/subject/window/group,
//! and the one place that reads them back (sled plus the unflushed overlay).
//!
//! It keeps its own copy of the meter definitions (under `0x01 slug`) so its
//! fold never depends on another tree's progress.
//!
//! Counters are written back, not written through: each batch is merged into
//! an in-memory overlay that queries read on top of sled, and the overlay is
//! flushed to sled with the checkpoint about once a second. sled then sees
//! one write per distinct counter per interval instead of one per event; a
//! crash loses only overlay state, which replay restores.
//!
//! UNIQUE_COUNT sets hold identities made under the data directory's key, so
//! the tree is stamped (`0x03`) with its format and that key's id. Sets of
//! another format (64-bit FNV-1a hashes, before the stamp) or key cannot be
//! converted, their values being gone: such a store says so through
//! [`Projection::stale`] and is rebuilt from the log on open.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::backfill::{self, fold_one, Backfill};
use super::reads::{decode_state, Overlay};
use super::usage::{UsageCache, UsageInner};
use super::{
    checkpoint, decode_json, put_checkpoint, Applied, EventFacts, OpenContext, Projection,
    ProjectionError,
};
use crate::log::Seq;
use crate::meter::{
    AggState, Aggregation, CompiledMeter, CounterKey, Fold, MeterDef, MeterSet, UniqueKey,
};
use crate::record::Record;

const METER_DEF_PREFIX: u8 = 0x01;
/// `0x02 slug` → the seq of the meter's creation, while its past is counted.
const BACKFILL_PREFIX: u8 = 0x02;
/// `0x03` → `[COUNTERS_FORMAT, unique-count key id (8 bytes)]`.
const FORMAT_KEY: &[u8] = &[0x03];
/// 2: unique sets of keyed 128-bit identities, stamped under [`FORMAT_KEY`].
/// 1 (no stamp): unique sets of 64-bit FNV-1a hashes.
const COUNTERS_FORMAT: u8 = 2;
/// Flush early when this many counter states are waiting.
const OVERLAY_STATES_MAX: usize = 200_000;

/// Meters whose past is still being counted, with the seq of their creation.
pub type Backfills = Arc<ArcSwap<BTreeMap<String, Seq>>>;

/// Folds one event into `fold` for every meter of its type; events a meter
/// cannot read are counted and skipped (they were checked against the meters
/// that existed when they arrived; a later meter may want other fields).
fn fold_event(meters: &MeterSet, key: &UniqueKey, facts: &EventFacts, fold: &mut Fold) {
    if let Some(observations) = &facts.observations {
        let mut n = 0;
        for (meter, obs) in meters.for_type(&facts.ty).zip(observations) {
            fold.apply(meter, &facts.subject, facts.time_ms, obs);
            n += 1;
        }
        assert_eq!(
            n,
            observations.len(),
            "writer and projector disagree on the meters of {:?}",
            facts.ty
        );
        return;
    }
    for meter in meters.for_type(&facts.ty) {
        fold_one(meter, key, facts, fold);
    }
}

/// The counters projection.
pub struct Counters {
    tree: sled::Tree,
    /// Checkpoint in sled: everything up to here is flushed.
    flushed: Seq,
    /// Everything up to here is in sled plus the overlay.
    applied: Seq,
    meters: MeterSet,
    /// What UNIQUE_COUNT identities are made under (the data directory's).
    unique_key: UniqueKey,
    /// Why the stored state cannot be folded into, if it cannot.
    stale: Option<String>,
    overlay: Overlay,
    /// Quota usages kept current with each batch, under the same lock as
    /// every change to the counters (see [`UsageCache`]).
    usage: Arc<UsageCache>,
    /// Where readers find the meters.
    published_meters: Arc<ArcSwap<MeterSet>>,
    /// Meters whose past is being counted (see [`backfill`]), by slug.
    backfills: BTreeMap<String, Seq>,
    /// Where readers find `backfills`.
    published_backfills: Backfills,
    /// Backfills merged into the overlay whose marks go at the next write-back.
    unmark: Vec<String>,
    worker: backfill::Worker,
    /// Reused across batches: a warm fold is about twice as fast.
    fold: Fold,
}

pub fn open(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    Ok(Box::new(Counters::open(ctx)?))
}

impl Counters {
    fn open(ctx: &OpenContext<'_>) -> Result<Counters, ProjectionError> {
        let tree = ctx.store.counters.clone();
        let mut meters = MeterSet::default();
        for kv in tree.scan_prefix([METER_DEF_PREFIX]) {
            let (k, v) = kv?;
            let def: MeterDef = decode_json("counters", &k, &v)?;
            meters.insert(compile("counters", &def)?);
        }
        let stale = stale_reason(&tree, &meters, ctx.unique_key)?;
        let stamp = format_stamp(ctx.unique_key);
        if stale.is_none() && tree.get(FORMAT_KEY)?.as_deref() != Some(&stamp[..]) {
            tree.insert(FORMAT_KEY, &stamp)?;
        }
        let flushed = checkpoint(&tree)?;
        let mut counters = Counters {
            flushed,
            applied: flushed,
            tree,
            meters,
            unique_key: ctx.unique_key.clone(),
            stale,
            overlay: ctx.readers.overlay.clone(),
            usage: ctx.readers.usage.clone(),
            published_meters: ctx.readers.meters.clone(),
            backfills: BTreeMap::new(),
            published_backfills: ctx.readers.backfills.clone(),
            unmark: Vec::new(),
            worker: backfill::Worker::new(ctx.log, ctx.unique_key),
            fold: Fold::default(),
        };
        if counters.stale.is_some() {
            return Ok(counters); // to be emptied and rebuilt, not counted on
        }
        // Backfills a stop interrupted start over.
        for kv in counters.tree.scan_prefix([BACKFILL_PREFIX]) {
            let (k, v) = kv?;
            let slug = String::from_utf8_lossy(&k[1..]).into_owned();
            let before =
                Seq::from_be_bytes(v.as_ref().try_into().map_err(|_| ProjectionError::Value {
                    tree: "counters",
                    key: hex::encode(&k),
                    reason: "malformed backfill mark".into(),
                })?);
            counters.start_backfill(&slug, before)?;
        }
        Ok(counters)
    }

    fn start_backfill(&mut self, slug: &str, before: Seq) -> Result<(), ProjectionError> {
        let meter = self
            .meters
            .get(slug)
            .cloned()
            .ok_or_else(|| ProjectionError::Value {
                tree: "counters",
                key: slug.to_owned(),
                reason: "backfill mark of a meter that does not exist".into(),
            })?;
        self.worker.start(Backfill { meter, before })?;
        self.backfills.insert(slug.to_owned(), before);
        self.published_backfills
            .store(Arc::new(self.backfills.clone()));
        Ok(())
    }

    /// Merges finished backfills into the overlay; with `wait`, waits for
    /// every pending one. Returns whether any was merged.
    fn finish_backfills(
        &mut self,
        usage: &mut UsageInner,
        wait: bool,
    ) -> Result<bool, ProjectionError> {
        let mut merged = false;
        while !self.backfills.is_empty() {
            let done = if wait {
                self.worker.wait_done()
            } else {
                match self.worker.try_done() {
                    Some(done) => done,
                    None => break,
                }
            };
            if self.backfills.get(&done.slug) != Some(&done.before) {
                continue; // the meter was deleted meanwhile
            }
            let mut fold = done.fold?;
            self.merge_deltas(fold.drain_sorted())?;
            self.backfills.remove(&done.slug);
            self.unmark.push(done.slug);
            merged = true;
        }
        if merged {
            // Cached quota usages of the meter were counted without its past.
            *usage = UsageInner::default();
            self.published_backfills
                .store(Arc::new(self.backfills.clone()));
        }
        Ok(merged)
    }

    /// Folds `records` in log order; returns whether the meters changed.
    /// Records at or below the checkpoint are skipped, so handing over an
    /// overlapping range is harmless.
    fn fold(&mut self, records: &[Applied<'_>]) -> Result<bool, ProjectionError> {
        let mut fold = std::mem::take(&mut self.fold);
        let start = self.applied;
        let mut last = start;
        let mut meters_changed = false;
        for a in records.iter().filter(|a| a.seq > start) {
            match a.record {
                Record::Event(e) | Record::TenantEvent { event: e, .. } => {
                    let parsed;
                    let facts = match a.facts {
                        Some(f) => f,
                        None => {
                            parsed = EventFacts::from_logged(&e.raw, e.time_ms).map_err(|err| {
                                ProjectionError::Value {
                                    tree: "counters",
                                    key: format!("log seq {}", a.seq),
                                    reason: format!("logged event is not valid JSON: {err}"),
                                }
                            })?;
                            &parsed
                        }
                    };
                    fold_event(&self.meters, &self.unique_key, facts, &mut fold);
                }
                Record::MeterCreated { meter, .. } => {
                    self.merge(&mut fold, last)?;
                    self.write_back()?;
                    self.create_meter(a.seq, meter)?;
                    meters_changed = true;
                }
                Record::MeterDeleted { slug, .. } => {
                    self.merge(&mut fold, last)?;
                    self.write_back()?;
                    self.delete_meter(a.seq, slug)?;
                    meters_changed = true;
                }
                _ => {}
            }
            last = a.seq;
        }
        let merged = self.merge(&mut fold, last);
        self.fold = fold;
        merged.map(|()| meters_changed)
    }

    /// Merges a batch's fold into the overlay (reading a state from sled the
    /// first time the overlay meets it).
    fn merge(&mut self, fold: &mut Fold, seq: Seq) -> Result<(), ProjectionError> {
        let deltas = fold.drain_sorted();
        if seq <= self.applied {
            return Ok(());
        }
        self.merge_deltas(deltas)?;
        self.applied = seq;
        Ok(())
    }

    fn merge_deltas(&mut self, deltas: Vec<(CounterKey, AggState)>) -> Result<(), ProjectionError> {
        let mut merged = Vec::with_capacity(deltas.len());
        {
            let overlay = self.overlay.read().expect("overlay lock");
            for (key, delta) in deltas {
                let k = key.encode();
                let state = match overlay.get(&k) {
                    Some(s) => Some(s.clone()),
                    None => match self.tree.get(&k)? {
                        Some(old) => Some(decode_state(&k, &old)?),
                        None => None,
                    },
                };
                let state = match state {
                    Some(mut s) => {
                        s.merge(&delta);
                        s
                    }
                    None => delta,
                };
                merged.push((k, state));
            }
        }
        self.overlay.write().expect("overlay lock").extend(merged);
        Ok(())
    }

    /// Writes the overlay to sled with the checkpoint in one atomic batch,
    /// then empties it. Queries see the same states throughout: the overlay
    /// is cleared only after sled holds them.
    fn write_back(&mut self) -> Result<(), ProjectionError> {
        if self.applied <= self.flushed && self.unmark.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, state) in self.overlay.read().expect("overlay lock").iter() {
            batch.insert(k.as_slice(), state.encode());
        }
        for slug in self.unmark.drain(..) {
            batch.remove(prefixed(BACKFILL_PREFIX, &slug));
        }
        put_checkpoint(&mut batch, self.applied);
        self.tree.apply_batch(batch)?;
        self.overlay.write().expect("overlay lock").clear();
        self.flushed = self.applied;
        Ok(())
    }

    /// A new meter counts every event already in the log (like a query over
    /// raw events would), so results do not depend on when it was defined:
    /// events after `seq` are folded as they come, and those before by a
    /// backfill off this thread.
    fn create_meter(&mut self, seq: Seq, def: &MeterDef) -> Result<(), ProjectionError> {
        let compiled = compile("counters", def)?;
        let mut batch = sled::Batch::default();
        batch.insert(
            prefixed(METER_DEF_PREFIX, &def.slug),
            serde_json::to_vec(def).expect("meter serializes"),
        );
        batch.insert(prefixed(BACKFILL_PREFIX, &def.slug), &seq.to_be_bytes());
        put_checkpoint(&mut batch, seq);
        self.tree.apply_batch(batch)?;
        self.meters.insert(compiled);
        self.applied = seq;
        self.flushed = seq;
        self.start_backfill(&def.slug, seq)
    }

    fn delete_meter(&mut self, seq: Seq, slug: &str) -> Result<(), ProjectionError> {
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix(CounterKey::meter_prefix(slug)) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        batch.remove(prefixed(METER_DEF_PREFIX, slug));
        batch.remove(prefixed(BACKFILL_PREFIX, slug));
        put_checkpoint(&mut batch, seq);
        self.tree.apply_batch(batch)?;
        self.meters.remove(slug);
        if self.backfills.remove(slug).is_some() {
            self.published_backfills
                .store(Arc::new(self.backfills.clone()));
        }
        self.applied = seq;
        self.flushed = seq;
        Ok(())
    }
}

impl Projection for Counters {
    fn name(&self) -> &'static str {
        "counters"
    }

    fn applied(&self) -> Seq {
        self.applied
    }

    fn flushed(&self) -> Seq {
        self.flushed
    }

    fn stale(&self) -> Option<String> {
        self.stale.clone()
    }

    fn apply(&mut self, records: &[Applied<'_>]) -> Result<bool, ProjectionError> {
        let usage = self.usage.clone();
        let mut usage = usage.lock();
        self.finish_backfills(&mut usage, false)?;
        let meters_changed = self.fold(records)?;
        usage.observe(records, &self.meters);
        Ok(meters_changed)
    }

    /// Readers get the meters as of the last applied record.
    fn publish(&mut self) -> Result<(), ProjectionError> {
        self.published_meters.store(Arc::new(self.meters.clone()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ProjectionError> {
        // Usage cache entries read sled + overlay under this lock.
        let usage = self.usage.clone();
        let mut usage = usage.lock();
        self.finish_backfills(&mut usage, false)?;
        self.write_back()
    }

    fn settle(&mut self) -> Result<(), ProjectionError> {
        let usage = self.usage.clone();
        let mut usage = usage.lock();
        self.finish_backfills(&mut usage, true)?;
        self.write_back()
    }

    fn wants_flush(&self) -> bool {
        self.overlay.read().expect("overlay lock").len() > OVERLAY_STATES_MAX
    }
}

fn format_stamp(key: &UniqueKey) -> [u8; 9] {
    let mut stamp = [COUNTERS_FORMAT; 9];
    stamp[1..].copy_from_slice(&key.id());
    stamp
}

/// Why the stored counters cannot be folded into: their unique sets were made
/// another way than this build, under `key`, makes them. Only unique sets
/// depend on the format and the key, so a store without a UNIQUE_COUNT
/// meter (states go with their meter) is merely stamped.
fn stale_reason(
    tree: &sled::Tree,
    meters: &MeterSet,
    key: &UniqueKey,
) -> Result<Option<String>, ProjectionError> {
    let want = format_stamp(key);
    let found = tree.get(FORMAT_KEY)?;
    if found.as_deref() == Some(&want[..])
        || !meters
            .iter()
            .any(|m| m.aggregation() == Aggregation::UniqueCount)
    {
        return Ok(None);
    }
    Ok(Some(match found {
        None => "its UNIQUE_COUNT sets hold 64-bit FNV-1a hashes (counters format 1)".into(),
        Some(v) if v.len() == want.len() && v[0] == COUNTERS_FORMAT => format!(
            "its UNIQUE_COUNT sets were made under another key (id {}, the data directory's is {})",
            hex::encode(&v[1..]),
            hex::encode(&want[1..])
        ),
        Some(v) => format!("unknown counters format stamp {}", hex::encode(v)),
    }))
}

fn prefixed(prefix: u8, slug: &str) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(slug.as_bytes());
    k
}

fn compile(tree: &'static str, def: &MeterDef) -> Result<CompiledMeter, ProjectionError> {
    def.validate().map_err(|e| ProjectionError::Value {
        tree,
        key: def.slug.to_string(),
        reason: e.to_string(),
    })
}
