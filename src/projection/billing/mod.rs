//! The billing projection: every counted event of a SUM or COUNT meter as a
//! leaf under its (period, subject), and the statements the writer's close
//! records call for (see [`crate::billing`] and ARCHITECTURE.md, "Billing").
//!
//! Decided from records alone: the cycle comes from the log's
//! `BillingSettings`, closes from `BillingClose`, so `keymeter replay`
//! rebuilds the same bytes. Every write is keyed by what it describes, and
//! statement positions continue from the last one stored, so applying a
//! close again after a crash writes the same keys with the same bytes.

mod close;
pub mod keys;

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{
    checkpoint, decode_json, Applied, EventFacts, OpenContext, Projection, ProjectionError,
};
use crate::billing::{Closed, Cycle, CycleKind};
use crate::log::Seq;
use crate::meter::{Aggregation, MeterDef, MeterSet, ObservedValue, UniqueKey, AMOUNT_SCALE};
use crate::record::Record;
use keys::{LastClose, StoredEvent, StoredLeaf};

/// Flush early when this many leaves wait in memory.
const PENDING_MAX: usize = 200_000;

/// What readers need besides the tree: the cycle and the last close.
#[derive(Debug, Clone, Default)]
pub struct BillingView {
    pub cycle: Cycle,
    pub last_close: Option<LastClose>,
    /// Leaves and statements up to here are in the tree.
    pub as_of: Seq,
}

pub type PublishedBilling = Arc<ArcSwap<BillingView>>;

pub struct Billing {
    tree: sled::Tree,
    applied: Seq,
    flushed: Seq,
    meters: MeterSet,
    unique_key: UniqueKey,
    cycle: Cycle,
    last_close: Option<LastClose>,
    /// Writes not yet in sled (`None`: a removal), in key order.
    pending: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The next statement position.
    next_position: u64,
    /// The close whose statements the tree holds beyond the checkpoint: a
    /// close a crash cut short, applied again by catch-up.
    resumed_close: Option<Seq>,
    published: PublishedBilling,
}

pub fn open(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let tree = ctx.store.db.open_tree("billing")?;
    let applied = checkpoint(&tree)?;
    let mut meters = MeterSet::default();
    for kv in tree.scan_prefix([keys::METER]) {
        let (k, v) = kv?;
        let def: MeterDef = decode_json("billing", &k, &v)?;
        meters.insert(def.validate().map_err(|e| ProjectionError::Value {
            tree: "billing",
            key: String::from_utf8_lossy(&k).into_owned(),
            reason: e.to_string(),
        })?);
    }
    let cycle = match tree.get(keys::META_SETTINGS)? {
        Some(v) => {
            let (kind, tz): (CycleKind, String) =
                postcard::from_bytes(&v).map_err(|e| ProjectionError::Value {
                    tree: "billing",
                    key: "Msettings".into(),
                    reason: e.to_string(),
                })?;
            Cycle::parse(kind.as_str(), &tz).map_err(|e| ProjectionError::Value {
                tree: "billing",
                key: "Msettings".into(),
                reason: e.to_string(),
            })?
        }
        None => Cycle::default(),
    };
    let last_close = tree
        .get(keys::META_CLOSED)?
        .and_then(|v| postcard::from_bytes(&v).ok());
    let (next_position, resumed_close) = match tree.scan_prefix([keys::STATEMENT]).next_back() {
        Some(kv) => {
            let (k, v) = kv?;
            let last: crate::billing::statement::Statement = decode_json("billing", &k, &v)?;
            let position = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
            (
                position + 1,
                (last.cut.seq > applied).then_some(last.cut.seq),
            )
        }
        None => (0, None),
    };
    Ok(Box::new(Billing {
        tree,
        applied,
        flushed: applied,
        meters,
        unique_key: ctx.unique_key.clone(),
        cycle,
        last_close,
        pending: Default::default(),
        next_position,
        resumed_close,
        published: ctx.readers.billing.clone(),
    }))
}

impl Billing {
    fn closed(&self) -> Closed {
        Closed {
            before_ms: self.last_close.map(|c| c.closed_before_ms),
        }
    }

    /// A leaf for each billed meter that reads the event.
    fn add_leaves(&mut self, seq: Seq, facts: &EventFacts) {
        let period = self.cycle.period_of(facts.time_ms);
        let closed = self.closed().is_closed(period);
        let mut leaves = Vec::new();
        for (i, meter) in self.meters.for_type(&facts.ty).enumerate() {
            let aggregation = meter.aggregation();
            if !matches!(aggregation, Aggregation::Sum | Aggregation::Count)
                || !meter.counts_time(facts.time_ms)
            {
                continue; // not billed, or before the meter's eventFrom
            }
            let obs = match &facts.observations {
                Some(all) => all.get(i).cloned().and_then(Result::ok),
                None => meter.extract(facts.data.as_deref(), &self.unique_key).ok(),
            };
            let Some(obs) = obs else { continue };
            let value = match (aggregation, obs.value) {
                (Aggregation::Count, _) => AMOUNT_SCALE,
                (_, ObservedValue::Amount(a)) => a.0,
                _ => continue,
            };
            leaves.push(StoredLeaf {
                meter: meter.slug().to_owned(),
                aggregation: aggregation.as_str().to_owned(),
                group: meter.group_keys().iter().cloned().zip(obs.group).collect(),
                value,
            });
        }
        if leaves.is_empty() {
            return;
        }
        let event = StoredEvent {
            identity: facts.identity.map_or([0; 16], |k| k.0),
            time_ms: facts.time_ms,
            leaves,
        };
        let key = keys::leaf_key(period.start_ms, &facts.subject, seq);
        let bytes = postcard::to_stdvec(&event).expect("a leaf serializes");
        self.pending.insert(key, Some(bytes));
        if closed {
            let dirty = keys::subject_key(keys::DIRTY, period.start_ms, &facts.subject);
            self.pending.insert(dirty, Some(Vec::new()));
        }
    }

    fn write_pending(&mut self, checkpoint_seq: Option<Seq>) -> Result<(), ProjectionError> {
        let mut batch = sled::Batch::default();
        for (k, v) in std::mem::take(&mut self.pending) {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        if let Some(seq) = checkpoint_seq {
            super::put_checkpoint(&mut batch, seq);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn publish_view(&self) {
        self.published.store(Arc::new(BillingView {
            cycle: self.cycle,
            last_close: self.last_close,
            as_of: self.flushed,
        }));
    }

    fn apply_one(&mut self, a: &Applied<'_>) -> Result<bool, ProjectionError> {
        match a.record {
            Record::Event(e) | Record::TenantEvent { event: e, .. } => {
                let parsed;
                let facts = match a.facts {
                    Some(f) => f,
                    None => match EventFacts::from_logged(&e.raw, e.time_ms) {
                        Ok(f) => {
                            parsed = f;
                            &parsed
                        }
                        Err(_) => return Ok(false),
                    },
                };
                self.add_leaves(a.seq, facts);
                Ok(false)
            }
            Record::MeterCreated { meter, .. } => {
                if let Ok(compiled) = meter.0.as_ref().clone().validate() {
                    let key = keys::prefixed(keys::METER, meter.slug.as_bytes());
                    let json = serde_json::to_vec(&*meter.0).expect("meter serializes");
                    self.pending.insert(key, Some(json));
                    self.meters.insert(compiled);
                }
                Ok(false)
            }
            Record::MeterDeleted { slug, .. } => {
                self.meters.remove(slug);
                let key = keys::prefixed(keys::METER, slug.as_bytes());
                self.pending.insert(key, None);
                Ok(false)
            }
            Record::BillingSettings { cycle, time_zone } => {
                if let Ok(c) = Cycle::parse(cycle.as_str(), time_zone) {
                    self.cycle = c;
                    let bytes = postcard::to_stdvec(&(cycle, time_zone)).expect("serializes");
                    self.pending
                        .insert(keys::META_SETTINGS.to_vec(), Some(bytes));
                }
                Ok(true)
            }
            Record::BillingClose {
                at_ms,
                closed_before_ms,
                restate,
            } => {
                self.close(a.seq, *at_ms, *closed_before_ms, *restate)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl Projection for Billing {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn applied(&self) -> Seq {
        self.applied
    }

    fn flushed(&self) -> Seq {
        self.flushed
    }

    fn apply(&mut self, records: &[Applied<'_>]) -> Result<bool, ProjectionError> {
        let mut changed = false;
        for a in records {
            if a.seq <= self.applied {
                continue;
            }
            changed |= self.apply_one(a)?;
            self.applied = a.seq;
        }
        Ok(changed)
    }

    fn publish(&mut self) -> Result<(), ProjectionError> {
        self.publish_view();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ProjectionError> {
        if self.flushed < self.applied {
            self.write_pending(Some(self.applied))?;
            self.flushed = self.applied;
            self.publish_view();
        }
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.pending.len() >= PENDING_MAX
    }
}
