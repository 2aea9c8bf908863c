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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::backfill::{self, fold_event, Backfill};
use super::blocks::{self, Change};
use super::reads::Overlay;
use super::skips::Skips;
use super::usage::{UsageCache, UsageInner};
use super::{
    checkpoint, decode_json, put_checkpoint, Applied, EventFacts, OpenContext, Projection,
    ProjectionError,
};
use crate::log::Seq;
use crate::meter::{AggState, CompiledMeter, CounterKey, Fold, MeterDef, MeterSet, UniqueKey};
use crate::record::Record;

const METER_DEF_PREFIX: u8 = 0x01;
/// `0x02 slug` → the seq of the meter's creation, while its past is counted.
const BACKFILL_PREFIX: u8 = 0x02;
/// `0x03` → `[COUNTERS_FORMAT, unique-count key id (8 bytes)]`.
const FORMAT_KEY: &[u8] = &[0x03];
/// 3: states in blocks (see [`blocks`]) whose starts, like the unique sets'
/// identities, are keyed by the key stamped under [`FORMAT_KEY`].
/// 2: one sled key per counter. 1 (no stamp): as 2, with unique sets of
/// 64-bit FNV-1a hashes.
const COUNTERS_FORMAT: u8 = 3;
/// Flush early when this many counter states are waiting.
const OVERLAY_STATES_MAX: usize = 200_000;
/// During catch-up: flush when the fold holds this many counters (each
/// ~150 bytes in the fold and ~200 while it is written out).
const BULK_COUNTERS_MAX: usize = 1 << 20;

/// Meters whose past is still being counted, with the seq of their creation.
pub type Backfills = Arc<ArcSwap<BTreeMap<String, Seq>>>;

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
    /// Backfills merged whose marks go at the next write-back.
    unmark: Vec<String>,
    /// Parts of backfills merged: (slug, creation seq, last seq counted),
    /// for their marks at the next write-back.
    remark: Vec<(String, Seq, Seq)>,
    worker: backfill::Worker,
    /// Reused across batches: a warm fold is about twice as fast. While
    /// catching up it also holds what was applied since the last flush.
    fold: Fold,
    /// Catching up: nothing reads the counters, so chunks are folded in
    /// memory and written in key order at each flush (see [`Self::write_back`]).
    bulk: bool,
    /// Events each meter skipped, by reason.
    skips: Skips,
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
            remark: Vec::new(),
            worker: backfill::Worker::new(ctx.log, ctx.unique_key),
            fold: Fold::default(),
            bulk: false,
            skips: Skips::default(),
        };
        if counters.stale.is_some() {
            return Ok(counters); // to be emptied and rebuilt, not counted on
        }
        counters.skips = Skips::load(&counters.tree)?;
        counters.skips.export();
        // Backfills a stop interrupted resume after their last part written.
        for kv in counters.tree.scan_prefix([BACKFILL_PREFIX]) {
            let (k, v) = kv?;
            let slug = String::from_utf8_lossy(&k[1..]).into_owned();
            let (before, through) = parse_mark(&k, &v)?;
            counters.start_backfill(&slug, before, through + 1)?;
        }
        Ok(counters)
    }

    fn start_backfill(
        &mut self,
        slug: &str,
        before: Seq,
        from: Seq,
    ) -> Result<(), ProjectionError> {
        let meter = self
            .meters
            .get(slug)
            .cloned()
            .ok_or_else(|| ProjectionError::Value {
                tree: "counters",
                key: slug.to_owned(),
                reason: "backfill mark of a meter that does not exist".into(),
            })?;
        self.worker.start(Backfill {
            meter,
            before,
            from,
        })?;
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
            if done.last {
                self.backfills.remove(&done.slug);
                self.unmark.push(done.slug);
            } else {
                self.remark.push((done.slug, done.before, done.through));
            }
            if self.bulk {
                // Written with the rest of the catch-up fold and the mark's change.
                fold.merge_into(&mut self.fold)
                    .map_err(|e| ProjectionError::Backfill(e.to_string()))?;
            } else {
                // Written in key order straight to sled with the mark's
                // change, not through the overlay, which would hold every
                // counter of the part until the next flush.
                self.write_back(&mut fold)?;
            }
            merged = true;
        }
        if merged {
            // Cached quota usages of the meter were counted without (all) its past.
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
                    self.write_back(&mut fold)?;
                    self.create_meter(a.seq, meter)?;
                    meters_changed = true;
                }
                Record::MeterUpdated { meter, .. } => {
                    self.update_meter(meter)?;
                    meters_changed = true;
                }
                Record::MeterDeleted { slug, .. } => {
                    self.merge(&mut fold, last)?;
                    self.write_back(&mut fold)?;
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
    /// first time the overlay meets it); while catching up, leaves it in the
    /// fold for the next write-back.
    fn merge(&mut self, fold: &mut Fold, seq: Seq) -> Result<(), ProjectionError> {
        if seq <= self.applied {
            debug_assert!(
                fold.is_empty() || self.bulk,
                "records below the checkpoint were folded"
            );
            return Ok(());
        }
        if !self.bulk {
            self.skips.add(fold.take_skips());
            let deltas = fold.drain_encoded();
            self.merge_deltas(deltas)?;
        }
        self.applied = seq;
        Ok(())
    }

    fn merge_deltas(&mut self, deltas: Vec<blocks::Entry>) -> Result<(), ProjectionError> {
        let merged = self.merged_states(deltas)?;
        self.overlay.write().expect("overlay lock").extend(merged);
        Ok(())
    }

    /// Each delta (sorted by key) merged into its counter's current state:
    /// the overlay's, else sled's (each block read once).
    fn merged_states(
        &self,
        deltas: Vec<blocks::Entry>,
    ) -> Result<Vec<blocks::Entry>, ProjectionError> {
        let mut merged: Vec<(Vec<u8>, Option<AggState>, AggState)> = {
            let overlay = self.overlay.read().expect("overlay lock");
            deltas
                .into_iter()
                .map(|(k, delta)| {
                    let current = overlay.get(&k).cloned();
                    (k, current, delta)
                })
                .collect()
        };
        let missing: Vec<&[u8]> = (merged.iter())
            .filter(|(_, current, _)| current.is_none())
            .map(|(k, _, _)| k.as_slice())
            .collect();
        let mut stored = blocks::get_sorted(&self.tree, &missing)?.into_iter();
        for (_, current, _) in merged.iter_mut().filter(|(_, c, _)| c.is_none()) {
            *current = stored.next().expect("one answer per key");
        }
        Ok(merged
            .into_iter()
            .map(|(k, current, delta)| match current {
                Some(mut state) => {
                    state.merge(&delta);
                    (k, state)
                }
                None => (k, delta),
            })
            .collect())
    }

    /// Writes the overlay (and, catching up, `fold`) to sled with the
    /// checkpoint in one atomic batch, then empties it. Queries see the same
    /// states throughout: the overlay is cleared only after sled holds them.
    fn write_back(&mut self, fold: &mut Fold) -> Result<(), ProjectionError> {
        self.skips.add(fold.take_skips());
        let marks = !self.unmark.is_empty() || !self.remark.is_empty();
        if self.applied <= self.flushed && !marks && !self.skips.unstored() {
            return Ok(());
        }
        let deltas = fold.drain_encoded();
        let mut batch = sled::Batch::default();
        {
            // The fold's changes merged into the overlay's states or, for
            // counters the overlay does not hold, into the stored ones as
            // their blocks are rewritten (each block read once). Only this
            // thread writes the overlay: holding it for reading while the
            // blocks are made blocks no query.
            let overlay = self.overlay.read().expect("overlay lock");
            let changes = with_overlay(deltas, &overlay);
            blocks::write_changes(&self.tree, &self.unique_key, changes, &mut batch)?;
        }
        for (slug, before, through) in self.remark.drain(..) {
            let mut mark = before.to_be_bytes().to_vec();
            mark.extend_from_slice(&through.to_be_bytes());
            batch.insert(prefixed(BACKFILL_PREFIX, &slug), mark);
        }
        for slug in self.unmark.drain(..) {
            batch.remove(prefixed(BACKFILL_PREFIX, &slug));
        }
        self.skips.store(&mut batch);
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
        self.start_backfill(&def.slug, seq, 1)
    }

    /// A new name, description or metadata: the same measuring fields, so
    /// the counters and any backfill in progress go on as they are.
    /// Written at once, ahead of the checkpoint: replaying the record
    /// again writes the same bytes.
    fn update_meter(&mut self, def: &MeterDef) -> Result<(), ProjectionError> {
        let compiled = compile("counters", def)?;
        let json = serde_json::to_vec(def).expect("meter serializes");
        self.tree
            .insert(prefixed(METER_DEF_PREFIX, &def.slug), json)?;
        self.meters.insert(compiled);
        Ok(())
    }

    fn delete_meter(&mut self, seq: Seq, slug: &str) -> Result<(), ProjectionError> {
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix(CounterKey::meter_prefix(slug)) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        batch.remove(prefixed(METER_DEF_PREFIX, slug));
        batch.remove(prefixed(BACKFILL_PREFIX, slug));
        self.skips.remove_meter(&self.tree, slug, &mut batch)?;
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
        self.skips.export();
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
        self.write_back_all()?;
        self.skips.export();
        Ok(())
    }

    fn settle(&mut self) -> Result<(), ProjectionError> {
        let usage = self.usage.clone();
        let mut usage = usage.lock();
        self.finish_backfills(&mut usage, true)?;
        self.write_back_all()?;
        self.skips.export();
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.overlay.read().expect("overlay lock").len() > OVERLAY_STATES_MAX
            || self.fold.len() > BULK_COUNTERS_MAX
    }

    fn catching_up(&mut self, on: bool) {
        assert!(
            self.fold.is_empty(),
            "counters switched mode with unflushed counters"
        );
        self.bulk = on;
    }
}

impl Counters {
    /// [`Self::write_back`] of everything applied.
    fn write_back_all(&mut self) -> Result<(), ProjectionError> {
        let mut fold = std::mem::take(&mut self.fold);
        let written = self.write_back(&mut fold);
        self.fold = fold;
        written
    }
}

/// The changes a write-back makes, in key order: each delta (sorted) as a
/// change to the stored state, or merged into the overlay's state when the
/// overlay holds its counter, and the overlay's other states as they are.
fn with_overlay<'a>(
    deltas: Vec<blocks::Entry>,
    overlay: &'a BTreeMap<Vec<u8>, AggState>,
) -> impl Iterator<Item = (Cow<'a, [u8]>, Change<Cow<'a, AggState>>)> {
    let mut deltas = deltas.into_iter().peekable();
    let mut states = overlay.iter().peekable();
    std::iter::from_fn(move || {
        let take_state = match (deltas.peek(), states.peek()) {
            (None, None) => return None,
            (Some(d), Some(s)) => s.0 < &d.0,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if take_state {
            let (k, s) = states.next().expect("peeked");
            return Some((Cow::Borrowed(k.as_slice()), Change::State(Cow::Borrowed(s))));
        }
        let (k, delta) = deltas.next().expect("peeked");
        match states.next_if(|(s, _)| **s == k) {
            Some((_, state)) => {
                let mut state = state.clone();
                state.merge(&delta);
                Some((Cow::Owned(k), Change::State(Cow::Owned(state))))
            }
            None => Some((Cow::Owned(k), Change::Delta(Cow::Owned(delta)))),
        }
    })
}

fn format_stamp(key: &UniqueKey) -> [u8; 9] {
    let mut stamp = [COUNTERS_FORMAT; 9];
    stamp[1..].copy_from_slice(&key.id());
    stamp
}

/// Why the stored counters cannot be folded into: they were stored another
/// way than this build stores them, under `key`. A store without meters
/// holds no counter, so it is merely stamped.
fn stale_reason(
    tree: &sled::Tree,
    meters: &MeterSet,
    key: &UniqueKey,
) -> Result<Option<String>, ProjectionError> {
    let want = format_stamp(key);
    let found = tree.get(FORMAT_KEY)?;
    if found.as_deref() == Some(&want[..]) || meters.iter().next().is_none() {
        return Ok(None);
    }
    Ok(Some(match found.as_deref() {
        None => "it holds one key per counter and UNIQUE_COUNT sets of 64-bit FNV-1a hashes \
                 (counters format 1)"
            .into(),
        Some([2, ..]) => "it holds one key per counter (counters format 2)".into(),
        Some(v) if v.len() == want.len() && v[0] == COUNTERS_FORMAT => format!(
            "its blocks and UNIQUE_COUNT sets were made under another key (id {}, the data \
             directory's is {})",
            hex::encode(&v[1..]),
            hex::encode(&want[1..])
        ),
        Some(v) => format!("unknown counters format stamp {}", hex::encode(v)),
    }))
}

/// A backfill mark's value: the seq that created the meter, then (once a
/// part is written) the last seq counted.
fn parse_mark(key: &[u8], value: &[u8]) -> Result<(Seq, Seq), ProjectionError> {
    let seq = |bytes: &[u8]| Seq::from_be_bytes(bytes.try_into().expect("8 bytes"));
    match value.len() {
        8 => Ok((seq(value), 0)),
        16 => Ok((seq(&value[..8]), seq(&value[8..]))),
        _ => Err(ProjectionError::Value {
            tree: "counters",
            key: hex::encode(key),
            reason: "malformed backfill mark".into(),
        }),
    }
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
