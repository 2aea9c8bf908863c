//! The dedup index: every claimed (source, id) identity whose event time is
//! still inside the accepted window, held in memory by the single writer.
//!
//! Why memory and not sled: a claim happens for every accepted event, and
//! sled 0.34 sustains only ~30k random inserts/s on our 2-core machine, an
//! order of magnitude below the ingest target. Reads and writes here are
//! probes of an open-addressing table of 20-byte entries ([`table`]).
//!
//! Bounded: an identity is kept while its event time is within the window
//! (an older event is refused anyway, so pruning never lets a duplicate
//! through), and the total is capped by `keys_max`; at the cap new events
//! are refused with a clear error instead of growing without limit.
//!
//! An identity is kept with the hour of its event time only, and pruned by
//! whole hours; who claimed it is counted per hour and tenant
//! ([`HourCounts`]), not kept per identity.
//!
//! Durable: the index is a projection of the log. It is saved to a snapshot
//! file (entries, CRC32C, written to a temporary file, fsynced and
//! renamed) together with the sequence number it covers; on start the
//! snapshot is loaded and the log after it replayed.

use std::path::{Path, PathBuf};

use super::{Applied, ProjectionError};
use crate::event::DedupKey;
use crate::log::Seq;

mod snapshot;
mod table;
pub mod tenants;
#[cfg(test)]
mod tests;

pub use snapshot::{Snapshot, SnapshotRoom};
use table::Table;
pub use tenants::{room, HourCounts, NoRoom, TenantIx, Tenants, UNATTRIBUTED};

const HOUR_MS: i64 = 3_600_000;

/// How many identities ahead of its claims a loop asks for their slots
/// ([`DedupIndex::prefetch`]): enough to cover a cache miss with the work
/// of a few claims, few enough to stay in the first-level cache.
pub const PREFETCH_AHEAD: usize = 8;

/// The hour (since the Unix epoch) holding `time_ms`; times outside the
/// hours a `u32` counts are held in its first or last, which any window
/// has long left or not yet reached.
fn hour_of(time_ms: i64) -> u32 {
    time_ms.div_euclid(HOUR_MS).clamp(0, i64::from(u32::MAX)) as u32
}

/// Where `hour` starts, in ms since the epoch.
pub fn hour_start_ms(hour: u32) -> i64 {
    i64::from(hour) * HOUR_MS
}

pub struct DedupIndex {
    table: Table,
    hours: HourCounts,
    tenants: Tenants,
    applied: Seq,
    keys_max: usize,
    snapshot_path: PathBuf,
}

#[derive(serde::Deserialize)]
struct LoggedIdentity<'a> {
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

impl DedupIndex {
    /// Loads the snapshot in `state_dir` if there is a valid one; an absent
    /// or damaged snapshot means replaying the log from the start.
    pub fn open(state_dir: &Path, keys_max: usize) -> Result<DedupIndex, ProjectionError> {
        let mut index = DedupIndex {
            snapshot_path: state_dir.join("dedup.snapshot"),
            ..DedupIndex::in_memory(keys_max)
        };
        match index.load_snapshot() {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %index.snapshot_path.display(),
                    "dedup snapshot unusable; rebuilding the index from the log");
                index = DedupIndex {
                    snapshot_path: index.snapshot_path,
                    ..DedupIndex::in_memory(keys_max)
                };
            }
        }
        Ok(index)
    }

    /// An empty index that lives in memory only (no snapshot file): for
    /// reading snapshot bytes with [`Self::read_snapshot`].
    pub fn in_memory(keys_max: usize) -> DedupIndex {
        DedupIndex {
            table: Table::default(),
            hours: HourCounts::default(),
            tenants: Tenants::default(),
            applied: 0,
            keys_max,
            snapshot_path: PathBuf::new(),
        }
    }

    /// Every identity with the start of its event time's hour, sorted.
    pub fn entries(&self) -> Vec<(DedupKey, i64)> {
        let mut out: Vec<_> = (self.table.entries().iter())
            .map(|e| (DedupKey(table::identity(e)), hour_start_ms(table::hour(e))))
            .collect();
        out.sort_unstable();
        out
    }

    /// How many identities each tenant holds of each hour: `(hour start
    /// ms, tenant name, identities)`, by hour then name.
    pub fn hour_counts(&self) -> Vec<(i64, &str, u64)> {
        let mut out: Vec<_> = (self.hours.iter())
            .map(|(h, t, n)| (hour_start_ms(h), self.tenants.name(t), n))
            .collect();
        out.sort_unstable();
        out
    }

    /// Bytes of the table's slots per identity held.
    pub fn bytes_per_identity(&self) -> f64 {
        self.table.bytes_per_identity()
    }

    pub fn applied(&self) -> Seq {
        self.applied
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.table.len() >= self.keys_max
    }

    pub fn contains(&self, key: &DedupKey) -> bool {
        self.table.get(&key.0).is_some()
    }

    /// The tenant called `name` (`""`: unattributed), added if new.
    pub fn tenant(&mut self, name: &str) -> TenantIx {
        self.tenants.intern(name)
    }

    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// Records claimed identities, written to the log up to `seq`.
    pub fn claim(&mut self, keys: impl IntoIterator<Item = (DedupKey, i64, TenantIx)>, seq: Seq) {
        if seq <= self.applied {
            return;
        }
        let keys: Vec<_> = keys.into_iter().collect();
        for k in keys.iter().take(PREFETCH_AHEAD) {
            self.prefetch(&k.0);
        }
        for (i, &(key, time_ms, tenant)) in keys.iter().enumerate() {
            if let Some(ahead) = keys.get(i + PREFETCH_AHEAD) {
                self.prefetch(&ahead.0);
            }
            self.claim_one(key, time_ms, tenant);
        }
        self.applied = seq;
    }

    /// Starts loading the slots a claim of `key` will probe. Claims land on
    /// random slots of a table far larger than the caches, so a loop that
    /// knows its next identities asks for them [`PREFETCH_AHEAD`] claims
    /// early and its claims wait on memory far less.
    pub fn prefetch(&self, key: &DedupKey) {
        self.table.prefetch(&key.0);
    }

    /// Claims one identity for `tenant` unless it is already held; true if
    /// it was new. One probe of the table: the writer's duplicate check
    /// and claim in one. The caller reports the seq the claims reach with
    /// [`Self::covered`].
    pub fn claim_one(&mut self, key: DedupKey, time_ms: i64, tenant: TenantIx) -> bool {
        let hour = hour_of(time_ms);
        if !self.table.claim(&key.0, hour) {
            return false;
        }
        self.tenants.add(tenant, 1);
        self.hours.add(hour, tenant, 1);
        true
    }

    /// Every identity of the log up to `seq` is claimed.
    pub fn covered(&mut self, seq: Seq) {
        self.applied = self.applied.max(seq);
    }

    /// Catch-up from logged records.
    pub fn apply(&mut self, records: &[Applied<'_>]) -> Result<(), ProjectionError> {
        let Some(last) = records.last().map(|a| a.seq) else {
            return Ok(());
        };
        let mut keys = Vec::new();
        for a in records.iter().filter(|a| a.seq > self.applied) {
            if let Some((e, tenant)) = a.record.event() {
                let key = match a.facts.and_then(|f| f.identity) {
                    Some(key) => key,
                    None => {
                        let ident: LoggedIdentity<'_> =
                            serde_json::from_str(&e.raw).map_err(|err| ProjectionError::Value {
                                tree: "dedup",
                                key: format!("log seq {}", a.seq),
                                reason: format!("logged event is not valid JSON: {err}"),
                            })?;
                        DedupKey::new(&ident.source, &ident.id)
                    }
                };
                let tenant = self.tenants.intern(tenant);
                keys.push((key, e.time_ms, tenant));
            }
        }
        self.claim(keys, last);
        Ok(())
    }

    /// Forgets identities whose event time is in an hour before the one
    /// holding `horizon_ms`. Returns how many were removed. The hour counts
    /// tell whether any is that old, so the table is swept once per hour
    /// the horizon crosses, not once per call.
    pub fn prune(&mut self, horizon_ms: i64) -> usize {
        let horizon = hour_of(horizon_ms);
        let old = self.hours.split_before(horizon);
        if old.is_empty() {
            return 0;
        }
        let removed = self.table.retain(|hour| hour >= horizon);
        let mut released = 0;
        for (_, tenant, n) in old.iter() {
            self.tenants.release(tenant, n);
            released += n;
        }
        assert_eq!(
            released, removed as u64,
            "the dedup index's hour counts disagree with its identities"
        );
        removed
    }
}
