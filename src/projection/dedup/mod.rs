//! The dedup index: every claimed (source, id) identity whose event time is
//! still inside the accepted window, held in memory by the single writer.
//!
//! Why memory and not sled: a claim happens for every accepted event, and
//! sled 0.34 sustains only ~30k random inserts/s on our 2-core machine, an
//! order of magnitude below the ingest target. Reads and writes here are
//! hash-map operations.
//!
//! Bounded: an identity is kept while its event time is within the window
//! (an older event is refused anyway, so pruning never lets a duplicate
//! through), and the total is capped by `keys_max`; at the cap new events
//! are refused with a clear error instead of growing without limit.
//!
//! Durable: the index is a projection of the log. It is saved to a snapshot
//! file (entries, CRC32C, written to a temporary file, fsynced and
//! renamed) together with the sequence number it covers; on start the
//! snapshot is loaded and the log after it replayed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{Applied, ProjectionError};
use crate::event::{DedupKey, DedupKeyBuildHasher};
use crate::log::Seq;

mod snapshot;
pub mod tenants;

pub use tenants::{room, NoRoom, TenantIx, Tenants, UNATTRIBUTED};

const BUCKET_MS: i64 = 3_600_000;

/// An identity's event time and the tenant that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    time_ms: i64,
    tenant: TenantIx,
}

pub struct DedupIndex {
    keys: HashMap<DedupKey, Claim, DedupKeyBuildHasher>,
    /// Identities by the hour of their event time, for pruning.
    buckets: BTreeMap<i64, Vec<DedupKey>>,
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
                index.keys.clear();
                index.buckets.clear();
                index.tenants = Tenants::default();
                index.applied = 0;
            }
        }
        Ok(index)
    }

    /// An empty index that lives in memory only (no snapshot file): for
    /// reading snapshot bytes with [`Self::read_snapshot`].
    pub fn in_memory(keys_max: usize) -> DedupIndex {
        DedupIndex {
            keys: HashMap::default(),
            buckets: BTreeMap::new(),
            tenants: Tenants::default(),
            applied: 0,
            keys_max,
            snapshot_path: PathBuf::new(),
        }
    }

    /// Every identity with its event time and tenant name, sorted.
    pub fn entries(&self) -> Vec<(DedupKey, i64, &str)> {
        let mut out: Vec<_> = (self.keys.iter())
            .map(|(k, c)| (*k, c.time_ms, self.tenants.name(c.tenant)))
            .collect();
        out.sort_unstable_by_key(|e| e.0 .0);
        out
    }

    pub fn applied(&self) -> Seq {
        self.applied
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.keys.len() >= self.keys_max
    }

    pub fn contains(&self, key: &DedupKey) -> bool {
        self.keys.contains_key(key)
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
        for (key, time_ms, tenant) in keys {
            self.claim_one(key, time_ms, tenant);
        }
        self.applied = seq;
    }

    /// Claims one identity for `tenant` unless it is already held; true if
    /// it was new. One hash-map probe: the writer's duplicate check and
    /// claim in one. The caller reports the seq the claims reach with
    /// [`Self::covered`].
    pub fn claim_one(&mut self, key: DedupKey, time_ms: i64, tenant: TenantIx) -> bool {
        match self.keys.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Claim { time_ms, tenant });
                self.tenants.add(tenant);
                self.buckets
                    .entry(time_ms.div_euclid(BUCKET_MS))
                    .or_default()
                    .push(key);
                true
            }
        }
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

    /// Forgets identities whose event time is before `horizon_ms` (whole
    /// hours at a time). Returns how many were removed.
    pub fn prune(&mut self, horizon_ms: i64) -> usize {
        let mut removed = 0;
        let horizon_bucket = horizon_ms.div_euclid(BUCKET_MS);
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() >= horizon_bucket {
                break;
            }
            for key in entry.remove() {
                if let Some(claim) = self.keys.remove(&key) {
                    self.tenants.remove(claim.tenant);
                }
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_forgets_only_identities_older_than_the_horizon_and_their_tenants_shares() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DedupIndex::open(dir.path(), 100).unwrap();
        let acme = d.tenant("product:acme");
        let old = DedupKey::new("s", "old");
        let new = DedupKey::new("s", "new");
        d.claim([(old, 1_000, acme), (new, 10 * BUCKET_MS, acme)], 2);
        assert_eq!(d.tenants().held(acme), 2);
        assert_eq!(d.prune(5 * BUCKET_MS), 1);
        assert!(!d.contains(&old));
        assert!(d.contains(&new));
        assert_eq!(d.tenants().held(acme), 1);
    }

    #[test]
    fn snapshot_round_trips_with_tenants_and_damage_falls_back_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DedupIndex::open(dir.path(), 100).unwrap();
        let (zeta, acme) = (d.tenant("product:zeta"), d.tenant("key:0a1b"));
        let keys: Vec<_> = (0..50)
            .map(|i| {
                let tenant = [UNATTRIBUTED, zeta, acme][i % 3];
                (DedupKey::new("s", &i.to_string()), i as i64, tenant)
            })
            .collect();
        d.claim(keys.clone(), 77);
        d.save_snapshot().unwrap();
        let mut loaded = DedupIndex::open(dir.path(), 100).unwrap();
        assert_eq!(loaded.applied(), 77);
        assert_eq!(loaded.len(), 50);
        assert!(keys.iter().all(|(k, _, _)| loaded.contains(k)));
        for (name, held) in [("", 17), ("product:zeta", 17), ("key:0a1b", 16)] {
            let ix = loaded.tenant(name);
            assert_eq!(loaded.tenants().held(ix), held, "{name:?}");
        }
        let path = dir.path().join("dedup.snapshot");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let damaged = DedupIndex::open(dir.path(), 100).unwrap();
        assert_eq!((damaged.applied(), damaged.len()), (0, 0));
    }

    #[test]
    fn a_snapshot_from_before_tenants_loads_as_unattributed() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        for (id, t) in [("a", 5i64), ("b", 6)] {
            body.extend_from_slice(&DedupKey::new("s", id).0);
            body.extend_from_slice(&t.to_le_bytes());
        }
        let mut file = b"KMDEDUP1".to_vec();
        file.extend_from_slice(&body);
        file.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        std::fs::write(dir.path().join("dedup.snapshot"), file).unwrap();
        let d = DedupIndex::open(dir.path(), 100).unwrap();
        assert_eq!((d.applied(), d.len()), (9, 2));
        assert!(d.contains(&DedupKey::new("s", "b")));
        assert_eq!(d.tenants().held(UNATTRIBUTED), 2);
    }
}
