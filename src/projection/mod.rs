//! Projections of the log. Each projection owns its state (sled trees, or
//! memory with a snapshot), folds records into it in log order, and stores
//! the last sequence number it applied under the empty key of its tree, in
//! the same atomic `apply_batch` as the change it checkpoints. A projection
//! is caught up by replaying the log from its own checkpoint, so a crash
//! between two trees' batches is harmless, and deleting a tree and replaying
//! gives the same bytes.
//!
//! Every projection implements [`Projection`] and is listed once, in
//! [`registry::Registry::standard`]; opening, catch-up on start, the
//! projector's live fold and `keymeter replay` all walk that list.
//!
//! - `counters`: aggregation states per meter/subject/window/group: see
//!   [`counters`].
//! - `meters`, `api_keys`, `products`, `quarantine`, `sources`: keyed
//!   documents: see [`docs`].
//! - `licenses`: licenses with their sealed keys and seats: see [`licenses`].
//! - `billing`: billed events as Merkle leaves, and statements: see [`billing`].
//! - the dedup index is the writer's, not the projector's: it lives in memory
//!   with a snapshot file (see [`dedup`]) and is fed by the same catch-up.

pub mod backfill;
pub mod billing;
pub mod blocks;
pub mod counters;
pub mod dedup;
pub mod docs;
pub mod licenses;
pub mod plans;
pub mod reads;
pub mod registry;
mod skips;
pub mod store;
pub mod usage;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::api_keys::ApiKeyRing;
use crate::log::{self, LogDir, Seq};
pub use crate::meter::MeterSet;
use crate::product::ProductRing;
use crate::record::Record;
pub use counters::Backfills;
pub use reads::Overlay;
pub use registry::{replay_log, ProjectionSpec, Registry};
pub use store::{source_key, KeyValue, Store};

/// Key of the checkpoint in every projection tree.
pub const CHECKPOINT_KEY: &[u8] = b"";

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
    #[error("cannot publish to readers: {0}")]
    Publish(String),
    #[error("meter backfill: {0}")]
    Backfill(String),
}

/// A fold of the log into state that readers use.
///
/// The engine calls, in log order and from one thread: [`Projection::apply`]
/// with each batch (live) or chunk (catch-up, replay); [`Projection::publish`]
/// when `apply` says readers' view changed, and once after catch-up;
/// [`Projection::flush`] about once a second and at shutdown. A projection
/// decides from records alone (time comes from the records, never a clock),
/// so replaying the same log gives the same bytes.
pub trait Projection: Send {
    /// Its name in logs and in `keymeter_projection_applied_seq`.
    fn name(&self) -> &'static str;

    /// Everything up to here is applied (in sled or in memory).
    fn applied(&self) -> Seq;

    /// Everything up to here survives a crash; at most [`Projection::applied`].
    fn flushed(&self) -> Seq {
        self.applied()
    }

    /// Applies records in log order, skipping those at or below
    /// [`Projection::applied`] (catch-up hands every projection the range
    /// the least advanced one needs). Returns whether readers' view changed.
    fn apply(&mut self, records: &[Applied<'_>]) -> Result<bool, ProjectionError>;

    /// Hands readers the current state.
    fn publish(&mut self) -> Result<(), ProjectionError> {
        Ok(())
    }

    /// Makes everything applied durable, with its checkpoint.
    fn flush(&mut self) -> Result<(), ProjectionError>;

    /// Finishes work deferred off the live path and flushes; `keymeter
    /// replay` calls it so that what it leaves is complete.
    fn settle(&mut self) -> Result<(), ProjectionError> {
        self.flush()
    }

    /// Whether it holds enough unflushed state to flush before the interval.
    fn wants_flush(&self) -> bool {
        false
    }

    /// Told `true` before catch-up or a rebuild and `false` after it
    /// settled. In between nothing reads the projection, so it may keep what
    /// it applied in memory until [`Projection::flush`] (which catch-up calls
    /// when [`Projection::wants_flush`] says so) and write it in bulk.
    fn catching_up(&mut self, _on: bool) {}

    /// Why its stored state cannot be continued (written in a format this
    /// build no longer folds into, or under another key), checked right
    /// after it is opened: the engine then empties its trees and rebuilds
    /// it from the log. A stale projection must not start work on open.
    fn stale(&self) -> Option<String> {
        None
    }
}

/// What projections publish and readers read, each behind its own lock-free
/// or short-held handle.
#[derive(Clone)]
pub struct Readers {
    pub meters: Arc<ArcSwap<MeterSet>>,
    pub keys: Arc<ArcSwap<ApiKeyRing>>,
    pub products: Arc<ArcSwap<ProductRing>>,
    pub licenses: Arc<licenses::PublishedLicenses>,
    pub usage: Arc<usage::UsageCache>,
    /// Counter states not yet flushed to sled; queries read them on top.
    pub overlay: Overlay,
    /// Meters whose past is still being counted.
    pub backfills: counters::Backfills,
    /// The billing cycle and the last close.
    pub billing: billing::PublishedBilling,
    /// Opens sealed secrets (product signing secrets, license keys); absent
    /// when projections are only rebuilt, which publishes nothing.
    pub crypto: Option<Arc<crate::crypto::Keys>>,
}

impl Readers {
    /// Empty handles; the projections fill them at their first publish.
    pub fn new(crypto: Option<Arc<crate::crypto::Keys>>) -> Readers {
        Readers {
            meters: Default::default(),
            keys: Default::default(),
            products: Default::default(),
            licenses: Default::default(),
            usage: Default::default(),
            overlay: Default::default(),
            backfills: Default::default(),
            billing: Default::default(),
            crypto,
        }
    }
}

/// What a projection is opened with.
pub struct OpenContext<'a> {
    pub store: &'a Store,
    pub log: &'a LogDir,
    pub readers: &'a Readers,
    /// The data directory's UNIQUE_COUNT key (`crypto::Keys::unique_key`):
    /// stored unique sets are only comparable under it.
    pub unique_key: &'a crate::meter::UniqueKey,
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

/// Moves a tree's checkpoint from `applied` up to `seen` (records that did
/// not change the tree still count as applied).
fn advance_checkpoint(
    tree: &sled::Tree,
    applied: &mut Seq,
    seen: Seq,
) -> Result<(), ProjectionError> {
    if *applied < seen {
        tree.insert(CHECKPOINT_KEY, &seen.to_be_bytes())?;
        *applied = seen;
    }
    Ok(())
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
    /// On the live path: what each meter of `ty` read from `data` (or why it
    /// skipped the event), in [`MeterSet::for_type`] order, already
    /// extracted by the writer when it checked the event (the writer's meter set at that seq is the same as
    /// the projector's, since both change only through logged records).
    pub observations: Option<Vec<crate::meter::Reading>>,
    /// The event's dedup identity: the one the writer claimed on the live
    /// path, hashed while it is parsed on replay.
    pub identity: Option<crate::event::DedupKey>,
}

#[derive(serde::Deserialize)]
struct LoggedEvent<'a> {
    #[serde(rename = "type")]
    ty: String,
    subject: String,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    source: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
}

impl EventFacts {
    /// The facts of a logged event, with its identity when it has one.
    pub fn from_logged(raw: &str, time_ms: i64) -> Result<EventFacts, serde_json::Error> {
        let e: LoggedEvent = serde_json::from_str(raw)?;
        let identity = match (&e.source, &e.id) {
            (Some(source), Some(id)) => Some(crate::event::DedupKey::new(source, id)),
            _ => None,
        };
        Ok(EventFacts {
            ty: e.ty,
            subject: e.subject,
            time_ms,
            data: e.data.map(|d| d.get().to_owned()),
            observations: None,
            identity,
        })
    }
}

/// A record with its sequence number and, on the live path, its parsed event.
pub struct Applied<'a> {
    pub seq: Seq,
    pub record: &'a Record,
    pub facts: Option<&'a EventFacts>,
}
