//! sled-backed projections of the log. Each projection owns one tree, folds
//! records into it, and stores the last sequence number it applied under the
//! empty key of that tree, in the same atomic `apply_batch` as the change it
//! checkpoints. A projection is caught up by replaying the log from its own
//! checkpoint, so a crash between two trees' batches is harmless, and deleting
//! a tree and replaying gives the same bytes.
//!
//! - `counters`: aggregation states per meter/subject/window/group. It keeps
//!   its own copy of the meter definitions (under `0x01 slug`) so its fold
//!   never depends on another tree's progress.
//! - `meters`: meter definitions for the API.
//! - `api_keys`: live API keys (digests only).
//! - `quarantine`: every rejected input, keyed by its log sequence number.
//! - `licenses`: licenses with their sealed keys and seats: see [`licenses`].
//! - the dedup index lives in memory with a snapshot file: see [`dedup`].
//!
//! Counters are written back, not written through: the projector merges each
//! batch into an in-memory overlay that queries read on top of sled, and
//! flushes the overlay to sled with its checkpoint about once a second. sled
//! then sees one write per distinct counter per interval instead of one per
//! event; a crash loses only overlay state, which replay restores.

pub mod dedup;
pub mod licenses;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::log::{self, Seq};
pub use crate::meter::MeterSet;
use crate::meter::{AggState, CompiledMeter, CounterKey, Fold, MeterDef};
use crate::metrics::metrics;
use crate::record::{ApiKeyRecord, Record, RejectedRecord};

/// Key of the checkpoint in every projection tree.
pub const CHECKPOINT_KEY: &[u8] = b"";
const METER_DEF_PREFIX: u8 = 0x01;

/// The sled-backed projections.
pub const PROJECTIONS: [&str; 7] = [
    "counters",
    "meters",
    "api_keys",
    "quarantine",
    "sources",
    "licenses",
    "products",
];

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("log: {0}")]
    Log(#[from] log::LogError),
    #[error("log record {seq} does not decode: {source}")]
    Record {
        seq: Seq,
        source: crate::record::RecordError,
    },
    #[error("projection {tree} holds an undecodable value at key {key}: {reason}")]
    Value {
        tree: &'static str,
        key: String,
        reason: String,
    },
}

/// One stored key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
    pub db: sled::Db,
    pub counters: sled::Tree,
    pub meters: sled::Tree,
    pub api_keys: sled::Tree,
    pub quarantine: sled::Tree,
    /// Next offset to consume per source partition (`topic 0x00 partition`).
    pub sources: sled::Tree,
    /// Licenses with their sealed keys and seats: see [`licenses`].
    pub licenses: sled::Tree,
    /// Product documents (signing secrets sealed), by id.
    pub products: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, ProjectionError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
            .open()?;
        Ok(Store {
            counters: db.open_tree("counters")?,
            meters: db.open_tree("meters")?,
            api_keys: db.open_tree("api_keys")?,
            quarantine: db.open_tree("quarantine")?,
            sources: db.open_tree("sources")?,
            licenses: db.open_tree("licenses")?,
            products: db.open_tree("products")?,
            db,
        })
    }

    pub fn tree(&self, name: &str) -> Option<&sled::Tree> {
        match name {
            "counters" => Some(&self.counters),
            "meters" => Some(&self.meters),
            "api_keys" => Some(&self.api_keys),
            "quarantine" => Some(&self.quarantine),
            "sources" => Some(&self.sources),
            "licenses" => Some(&self.licenses),
            "products" => Some(&self.products),
            _ => None,
        }
    }

    /// Empties every projection so the next start replays the whole log.
    pub fn clear_all(&self) -> Result<(), ProjectionError> {
        for name in PROJECTIONS {
            self.tree(name).expect("known tree").clear()?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Every key/value of the counters tree, checkpoint excluded, in key order.
    pub fn counters_dump(&self) -> Result<Vec<KeyValue>, ProjectionError> {
        let mut out = Vec::new();
        for kv in self.counters.iter() {
            let (k, v) = kv?;
            if k.is_empty() {
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    pub fn meter_defs(&self) -> Result<Vec<MeterDef>, ProjectionError> {
        let mut out = Vec::new();
        for kv in self.meters.iter() {
            let (k, v) = kv?;
            if k.is_empty() {
                continue;
            }
            out.push(decode_json("meters", &k, &v)?);
        }
        Ok(out)
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, ProjectionError> {
        let mut out = Vec::new();
        for kv in self.api_keys.iter() {
            let (k, v) = kv?;
            if k.is_empty() {
                continue;
            }
            out.push(decode_json("api_keys", &k, &v)?);
        }
        Ok(out)
    }

    pub fn products(&self) -> Result<Vec<crate::product::Product>, ProjectionError> {
        let mut out = Vec::new();
        for kv in self.products.iter() {
            let (k, v) = kv?;
            if k.is_empty() {
                continue;
            }
            out.push(decode_json("products", &k, &v)?);
        }
        Ok(out)
    }

    /// One product document, by id.
    pub fn product(&self, id: &str) -> Result<Option<crate::product::Product>, ProjectionError> {
        match self.products.get(id.as_bytes())? {
            Some(v) if !id.is_empty() => Ok(Some(decode_json("products", id.as_bytes(), &v)?)),
            _ => Ok(None),
        }
    }

    /// The stored next offset of every source partition.
    pub fn source_positions(
        &self,
    ) -> Result<std::collections::HashMap<(String, i32), i64>, ProjectionError> {
        let mut out = std::collections::HashMap::new();
        for kv in self.sources.iter() {
            let (k, v) = kv?;
            if k.is_empty() {
                continue;
            }
            let bad = || ProjectionError::Value {
                tree: "sources",
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "malformed source position".into(),
            };
            let (topic, partition) = decode_source_key(&k).ok_or_else(bad)?;
            let next: [u8; 8] = v.as_ref().try_into().map_err(|_| bad())?;
            out.insert((topic, partition), i64::from_be_bytes(next));
        }
        Ok(out)
    }

    /// Quarantined inputs with seq > `after`, oldest first.
    pub fn quarantine_page(
        &self,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, RejectedRecord)>, ProjectionError> {
        let mut out = Vec::new();
        let start = after.saturating_add(1).to_be_bytes();
        for kv in self.quarantine.range(start..) {
            let (k, v) = kv?;
            if out.len() >= limit {
                break;
            }
            let seq =
                Seq::from_be_bytes(k.as_ref().try_into().map_err(|_| ProjectionError::Value {
                    tree: "quarantine",
                    key: hex::encode(&k),
                    reason: "key is not a sequence number".into(),
                })?);
            let record = postcard::from_bytes(&v).map_err(|e| ProjectionError::Value {
                tree: "quarantine",
                key: seq.to_string(),
                reason: e.to_string(),
            })?;
            out.push((seq, record));
        }
        Ok(out)
    }
}

pub fn source_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn decode_source_key(k: &[u8]) -> Option<(String, i32)> {
    let split = k.iter().position(|&b| b == 0)?;
    let topic = std::str::from_utf8(&k[..split]).ok()?.to_owned();
    let partition = i32::from_be_bytes(k[split + 1..].try_into().ok()?);
    Some((topic, partition))
}

fn decode_json<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, ProjectionError> {
    serde_json::from_slice(value).map_err(|e| ProjectionError::Value {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

pub fn checkpoint(tree: &sled::Tree) -> Result<Seq, ProjectionError> {
    Ok(match tree.get(CHECKPOINT_KEY)? {
        Some(v) if v.len() == 8 => Seq::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
        _ => 0,
    })
}

fn put_checkpoint(batch: &mut sled::Batch, seq: Seq) {
    batch.insert(CHECKPOINT_KEY, &seq.to_be_bytes());
}

/// The parts of a usage event the fold needs. Live batches hand these over
/// already parsed; replay parses them from the logged JSON.
#[derive(Debug, Clone)]
pub struct EventFacts {
    pub ty: String,
    pub subject: String,
    pub time_ms: i64,
    /// `data` as JSON text (replay only; the live path has `observations`).
    pub data: Option<String>,
    /// On the live path: what each meter of `ty` read from `data`, in
    /// [`MeterSet::for_type`] order, already extracted by the writer when it
    /// checked the event (the writer's meter set at that seq is the same as
    /// the projector's, since both change only through logged records).
    pub observations: Option<Vec<crate::meter::Observation>>,
}

#[derive(serde::Deserialize)]
struct LoggedEvent<'a> {
    #[serde(rename = "type")]
    ty: String,
    subject: String,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

impl EventFacts {
    pub fn from_logged(raw: &str, time_ms: i64) -> Result<EventFacts, serde_json::Error> {
        let e: LoggedEvent = serde_json::from_str(raw)?;
        Ok(EventFacts {
            ty: e.ty,
            subject: e.subject,
            time_ms,
            data: e.data.map(|d| d.get().to_owned()),
            observations: None,
        })
    }
}

/// A record with its sequence number and, on the live path, its parsed event.
pub struct Applied<'a> {
    pub seq: Seq,
    pub record: &'a Record,
    pub facts: Option<&'a EventFacts>,
}

/// Folds one event into `fold` for every meter of its type; events a meter
/// cannot read are counted and skipped (they were checked against the meters
/// that existed when they arrived; a later meter may want other fields).
fn fold_event(meters: &MeterSet, facts: &EventFacts, fold: &mut Fold) {
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
        fold_one(meter, facts, fold);
    }
}

fn fold_one(meter: &CompiledMeter, facts: &EventFacts, fold: &mut Fold) {
    match meter.extract(facts.data.as_deref()) {
        Ok(obs) => fold.apply(meter, &facts.subject, facts.time_ms, &obs),
        Err(e) => metrics()
            .fold_skipped_total
            .with_label_values(&[e.code()])
            .inc(),
    }
}

/// Counter states changed since the last flush, shared with queries.
pub type Overlay = Arc<RwLock<BTreeMap<Vec<u8>, AggState>>>;

/// The counters projection.
pub struct Counters {
    tree: sled::Tree,
    log_dir: std::path::PathBuf,
    /// Checkpoint in sled: everything up to here is flushed.
    flushed: Seq,
    /// Everything up to here is in sled plus the overlay.
    applied: Seq,
    meters: MeterSet,
    overlay: Overlay,
    /// Reused across batches: a warm fold is about twice as fast.
    fold: Fold,
}

impl Counters {
    pub fn open(store: &Store, log_dir: &Path) -> Result<Counters, ProjectionError> {
        let tree = store.counters.clone();
        let mut meters = MeterSet::default();
        for kv in tree.scan_prefix([METER_DEF_PREFIX]) {
            let (k, v) = kv?;
            let def: MeterDef = decode_json("counters", &k, &v)?;
            let compiled = def.validate().map_err(|e| ProjectionError::Value {
                tree: "counters",
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })?;
            meters.insert(compiled);
        }
        let flushed = checkpoint(&tree)?;
        Ok(Counters {
            flushed,
            applied: flushed,
            tree,
            log_dir: log_dir.to_owned(),
            meters,
            overlay: Overlay::default(),
            fold: Fold::default(),
        })
    }

    pub fn applied(&self) -> Seq {
        self.applied
    }

    pub fn flushed(&self) -> Seq {
        self.flushed
    }

    /// The meters as of the checkpoint.
    pub fn meters(&self) -> &MeterSet {
        &self.meters
    }

    /// The unflushed states, for queries to read on top of sled.
    pub fn overlay(&self) -> Overlay {
        self.overlay.clone()
    }

    /// Counter states not yet flushed.
    pub fn overlay_len(&self) -> usize {
        self.overlay.read().expect("overlay lock").len()
    }

    /// Applies records in log order. Records at or below the checkpoint are
    /// skipped, so handing over an overlapping range is harmless.
    pub fn apply(&mut self, records: &[Applied<'_>]) -> Result<(), ProjectionError> {
        let mut fold = std::mem::take(&mut self.fold);
        let start = self.applied;
        let mut last = start;
        for a in records.iter().filter(|a| a.seq > start) {
            match a.record {
                Record::Event(e) => {
                    let parsed;
                    let facts = match a.facts {
                        Some(f) => f,
                        None => match EventFacts::from_logged(&e.raw, e.time_ms) {
                            Ok(f) => {
                                parsed = f;
                                &parsed
                            }
                            Err(err) => {
                                return Err(ProjectionError::Value {
                                    tree: "counters",
                                    key: format!("log seq {}", a.seq),
                                    reason: format!("logged event is not valid JSON: {err}"),
                                })
                            }
                        },
                    };
                    fold_event(&self.meters, facts, &mut fold);
                }
                Record::MeterCreated { meter, .. } => {
                    self.merge(&mut fold, last)?;
                    self.flush()?;
                    self.create_meter(a.seq, meter)?;
                }
                Record::MeterDeleted { slug, .. } => {
                    self.merge(&mut fold, last)?;
                    self.flush()?;
                    self.delete_meter(a.seq, slug)?;
                }
                _ => {}
            }
            last = a.seq;
        }
        let merged = self.merge(&mut fold, last);
        self.fold = fold;
        merged
    }

    /// Merges a batch's fold into the overlay (reading a state from sled the
    /// first time the overlay meets it).
    fn merge(&mut self, fold: &mut Fold, seq: Seq) -> Result<(), ProjectionError> {
        let deltas = fold.drain_sorted();
        if seq <= self.applied {
            return Ok(());
        }
        let mut merged = Vec::with_capacity(deltas.len());
        {
            let overlay = self.overlay.read().expect("overlay lock");
            for (key, delta) in deltas {
                let k = key.encode();
                let state = match overlay.get(&k) {
                    Some(s) => Some(s.clone()),
                    None => match self.tree.get(&k)? {
                        Some(old) => {
                            Some(AggState::decode(&old).map_err(|e| ProjectionError::Value {
                                tree: "counters",
                                key: hex::encode(&k),
                                reason: e.to_string(),
                            })?)
                        }
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
        self.applied = seq;
        Ok(())
    }

    /// Writes the overlay to sled with the checkpoint in one atomic batch,
    /// then empties it. Queries see the same states throughout: the overlay
    /// is cleared only after sled holds them.
    pub fn flush(&mut self) -> Result<(), ProjectionError> {
        if self.applied <= self.flushed {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, state) in self.overlay.read().expect("overlay lock").iter() {
            batch.insert(k.as_slice(), state.encode());
        }
        put_checkpoint(&mut batch, self.applied);
        self.tree.apply_batch(batch)?;
        self.overlay.write().expect("overlay lock").clear();
        self.flushed = self.applied;
        Ok(())
    }

    /// A new meter counts every event already in the log (like a query over
    /// raw events would), so results do not depend on when it was defined.
    fn create_meter(&mut self, seq: Seq, def: &MeterDef) -> Result<(), ProjectionError> {
        let compiled = def.validate().map_err(|e| ProjectionError::Value {
            tree: "counters",
            key: def.slug.clone(),
            reason: e.to_string(),
        })?;
        let mut fold = Fold::default();
        for entry in log::read_range(&self.log_dir, 1, seq.saturating_sub(1))? {
            let entry = entry?;
            let record =
                Record::decode(&entry.payload).map_err(|source| ProjectionError::Record {
                    seq: entry.seq,
                    source,
                })?;
            if let Record::Event(e) = record {
                let Ok(facts) = EventFacts::from_logged(&e.raw, e.time_ms) else {
                    continue;
                };
                if facts.ty == def.event_type {
                    fold_one(&compiled, &facts, &mut fold);
                }
            }
        }
        let mut batch = sled::Batch::default();
        for (key, state) in fold.into_sorted() {
            batch.insert(key.encode(), state.encode());
        }
        let mut def_key = vec![METER_DEF_PREFIX];
        def_key.extend_from_slice(def.slug.as_bytes());
        batch.insert(def_key, serde_json::to_vec(def).expect("meter serializes"));
        put_checkpoint(&mut batch, seq);
        self.tree.apply_batch(batch)?;
        self.meters.insert(compiled);
        self.applied = seq;
        self.flushed = seq;
        Ok(())
    }

    fn delete_meter(&mut self, seq: Seq, slug: &str) -> Result<(), ProjectionError> {
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix(CounterKey::meter_prefix(slug)) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        let mut def_key = vec![METER_DEF_PREFIX];
        def_key.extend_from_slice(slug.as_bytes());
        batch.remove(def_key);
        put_checkpoint(&mut batch, seq);
        self.tree.apply_batch(batch)?;
        self.meters.remove(slug);
        self.applied = seq;
        self.flushed = seq;
        Ok(())
    }
}

/// Which document projections a call to [`Documents::apply`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DocChanges {
    pub meters: bool,
    pub keys: bool,
    pub products: bool,
}

/// The meters, API keys, products and quarantine projections: small, keyed documents.
/// A tree is written when a record changes it; the checkpoints of untouched
/// trees move forward at [`Documents::flush`].
pub struct Documents {
    store: Store,
    meters_applied: Seq,
    keys_applied: Seq,
    products_applied: Seq,
    quarantine_applied: Seq,
    sources_applied: Seq,
    /// Highest seq seen; trees are logically at least here.
    seen: Seq,
}

impl Documents {
    pub fn open(store: &Store) -> Result<Documents, ProjectionError> {
        let meters_applied = checkpoint(&store.meters)?;
        let keys_applied = checkpoint(&store.api_keys)?;
        let products_applied = checkpoint(&store.products)?;
        let quarantine_applied = checkpoint(&store.quarantine)?;
        let sources_applied = checkpoint(&store.sources)?;
        Ok(Documents {
            seen: meters_applied
                .min(keys_applied)
                .min(products_applied)
                .min(quarantine_applied)
                .min(sources_applied),
            sources_applied,
            meters_applied,
            keys_applied,
            products_applied,
            quarantine_applied,
            store: store.clone(),
        })
    }

    pub fn applied(&self) -> [(&'static str, Seq); 5] {
        [
            ("meters", self.meters_applied.max(self.seen)),
            ("api_keys", self.keys_applied.max(self.seen)),
            ("products", self.products_applied.max(self.seen)),
            ("quarantine", self.quarantine_applied.max(self.seen)),
            ("sources", self.sources_applied.max(self.seen)),
        ]
    }

    pub fn min_applied(&self) -> Seq {
        self.meters_applied
            .min(self.keys_applied)
            .min(self.products_applied)
            .min(self.quarantine_applied)
            .min(self.sources_applied)
            .max(self.seen)
    }

    /// Applies records in log order; each tree skips what it already has.
    /// Returns which documents changed (readers' snapshots must be
    /// republished).
    pub fn apply(&mut self, records: &[Applied<'_>]) -> Result<DocChanges, ProjectionError> {
        let Some(last) = records.last().map(|a| a.seq) else {
            return Ok(DocChanges::default());
        };
        let mut products = sled::Batch::default();
        let mut products_changed = false;
        let mut meters = sled::Batch::default();
        let mut keys = sled::Batch::default();
        let mut quarantine = sled::Batch::default();
        let mut sources = sled::Batch::default();
        let (mut meters_changed, mut keys_changed, mut quarantine_changed) = (false, false, false);
        let mut sources_changed = false;
        for a in records.iter().filter(|a| a.seq > self.seen) {
            match a.record {
                Record::Rejected(r) if a.seq > self.quarantine_applied => {
                    quarantine.insert(
                        &a.seq.to_be_bytes(),
                        postcard::to_allocvec(r).expect("record serializes"),
                    );
                    quarantine_changed = true;
                }
                Record::SourceOffsets(d) if a.seq > self.sources_applied => {
                    sources.insert(source_key(&d.topic, d.partition), &d.to.to_be_bytes());
                    sources_changed = true;
                }
                Record::MeterCreated { meter, .. } if a.seq > self.meters_applied => {
                    meters.insert(
                        meter.slug.as_bytes(),
                        serde_json::to_vec(&**meter).expect("meter serializes"),
                    );
                    meters_changed = true;
                }
                Record::MeterDeleted { slug, .. } if a.seq > self.meters_applied => {
                    meters.remove(slug.as_bytes());
                    meters_changed = true;
                }
                Record::ApiKeyCreated { key, .. } if a.seq > self.keys_applied => {
                    keys.insert(
                        key.id.as_bytes(),
                        serde_json::to_vec(key).expect("key serializes"),
                    );
                    keys_changed = true;
                }
                Record::ApiKeyRevoked { id, .. } if a.seq > self.keys_applied => {
                    keys.remove(id.as_bytes());
                    keys_changed = true;
                }
                Record::ProductSaved { product, .. } if a.seq > self.products_applied => {
                    products.insert(
                        product.id.as_bytes(),
                        serde_json::to_vec(&**product).expect("product serializes"),
                    );
                    products_changed = true;
                }
                _ => {}
            }
        }
        if meters_changed {
            put_checkpoint(&mut meters, last);
            self.store.meters.apply_batch(meters)?;
            self.meters_applied = last;
        }
        if keys_changed {
            put_checkpoint(&mut keys, last);
            self.store.api_keys.apply_batch(keys)?;
            self.keys_applied = last;
        }
        if products_changed {
            put_checkpoint(&mut products, last);
            self.store.products.apply_batch(products)?;
            self.products_applied = last;
        }
        if quarantine_changed {
            put_checkpoint(&mut quarantine, last);
            self.store.quarantine.apply_batch(quarantine)?;
            self.quarantine_applied = last;
        }
        if sources_changed {
            put_checkpoint(&mut sources, last);
            self.store.sources.apply_batch(sources)?;
            self.sources_applied = last;
        }
        self.seen = self.seen.max(last);
        Ok(DocChanges {
            meters: meters_changed,
            keys: keys_changed,
            products: products_changed,
        })
    }

    /// Moves every tree's checkpoint up to the last applied record.
    pub fn flush(&mut self) -> Result<(), ProjectionError> {
        let seen = self.seen;
        for (tree, applied) in [
            (&self.store.meters, &mut self.meters_applied),
            (&self.store.api_keys, &mut self.keys_applied),
            (&self.store.products, &mut self.products_applied),
            (&self.store.quarantine, &mut self.quarantine_applied),
            (&self.store.sources, &mut self.sources_applied),
        ] {
            if *applied < seen {
                tree.insert(CHECKPOINT_KEY, &seen.to_be_bytes())?;
                *applied = seen;
            }
        }
        Ok(())
    }
}

/// Reads the log from `from` through `to` in chunks and hands each chunk to
/// `apply`. Used for catch-up on start and by `keymeter replay`.
pub fn replay_log(
    log_dir: &Path,
    from: Seq,
    to: Seq,
    chunk_records: usize,
    mut apply: impl FnMut(&[Applied<'_>]) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    if from > to {
        return Ok(());
    }
    let mut chunk: Vec<(Seq, Record)> = Vec::with_capacity(chunk_records);
    let run = |chunk: &mut Vec<(Seq, Record)>,
               apply: &mut dyn FnMut(&[Applied<'_>]) -> Result<(), ProjectionError>|
     -> Result<(), ProjectionError> {
        let applied: Vec<Applied<'_>> = chunk
            .iter()
            .map(|(seq, record)| Applied {
                seq: *seq,
                record,
                facts: None,
            })
            .collect();
        apply(&applied)?;
        chunk.clear();
        Ok(())
    };
    for entry in log::read_range(log_dir, from, to)? {
        let entry = entry?;
        let record = Record::decode(&entry.payload).map_err(|source| ProjectionError::Record {
            seq: entry.seq,
            source,
        })?;
        chunk.push((entry.seq, record));
        if chunk.len() >= chunk_records {
            run(&mut chunk, &mut apply)?;
        }
    }
    if !chunk.is_empty() {
        run(&mut chunk, &mut apply)?;
    }
    Ok(())
}
