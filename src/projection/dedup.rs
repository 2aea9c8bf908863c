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
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{Applied, ProjectionError};
use crate::event::{DedupKey, DedupKeyBuildHasher};
use crate::log::Seq;
use crate::record::Record;

const SNAPSHOT_MAGIC: &[u8; 8] = b"KMDEDUP1";
const BUCKET_MS: i64 = 3_600_000;

pub struct DedupIndex {
    keys: HashMap<DedupKey, i64, DedupKeyBuildHasher>,
    /// Identities by the hour of their event time, for pruning.
    buckets: BTreeMap<i64, Vec<DedupKey>>,
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
            keys: HashMap::default(),
            buckets: BTreeMap::new(),
            applied: 0,
            keys_max,
            snapshot_path: state_dir.join("dedup.snapshot"),
        };
        match index.load_snapshot() {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %index.snapshot_path.display(),
                    "dedup snapshot unusable; rebuilding the index from the log");
                index.keys.clear();
                index.buckets.clear();
                index.applied = 0;
            }
        }
        Ok(index)
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

    /// Records claimed identities, written to the log up to `seq`.
    pub fn claim(&mut self, keys: impl IntoIterator<Item = (DedupKey, i64)>, seq: Seq) {
        if seq <= self.applied {
            return;
        }
        for (key, time_ms) in keys {
            self.claim_one(key, time_ms);
        }
        self.applied = seq;
    }

    /// Claims one identity unless it is already held; true if it was new.
    /// One hash-map probe: the writer's duplicate check and claim in one.
    /// The caller reports the seq the claims reach with [`Self::covered`].
    pub fn claim_one(&mut self, key: DedupKey, time_ms: i64) -> bool {
        match self.keys.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(time_ms);
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
            if let Record::Event(e) = a.record {
                let ident: LoggedIdentity<'_> =
                    serde_json::from_str(&e.raw).map_err(|err| ProjectionError::Value {
                        tree: "dedup",
                        key: format!("log seq {}", a.seq),
                        reason: format!("logged event is not valid JSON: {err}"),
                    })?;
                keys.push((DedupKey::new(&ident.source, &ident.id), e.time_ms));
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
                self.keys.remove(&key);
                removed += 1;
            }
        }
        removed
    }

    /// Writes the snapshot atomically: temporary file, fsync, rename, fsync
    /// of the directory.
    pub fn save_snapshot(&self) -> std::io::Result<()> {
        let tmp = self.snapshot_path.with_extension("snapshot.tmp");
        // Entries in the map's order: loading inserts them into a map again,
        // so sorting millions of them would only stall the writer.
        let mut body = Vec::with_capacity(16 + self.keys.len() * 24);
        body.extend_from_slice(&self.applied.to_le_bytes());
        body.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        for (k, t) in &self.keys {
            body.extend_from_slice(&k.0);
            body.extend_from_slice(&t.to_le_bytes());
        }
        let file = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        w.write_all(SNAPSHOT_MAGIC)?;
        w.write_all(&body)?;
        w.write_all(&crc32c::crc32c(&body).to_le_bytes())?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        std::fs::rename(&tmp, &self.snapshot_path)?;
        if let Some(dir) = self.snapshot_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn load_snapshot(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        std::fs::File::open(&self.snapshot_path)?.read_to_end(&mut bytes)?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        if bytes.len() < 8 + 16 + 4 || &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(bad("not a dedup snapshot"));
        }
        let (body, crc) = bytes[8..].split_at(bytes.len() - 8 - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(bad("checksum mismatch"));
        }
        let applied = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes")) as usize;
        let entries = &body[16..];
        if entries.len() != count * 24 {
            return Err(bad("length does not match the entry count"));
        }
        let mut claims = Vec::with_capacity(count);
        for e in entries.chunks_exact(24) {
            let mut k = [0u8; 16];
            k.copy_from_slice(&e[..16]);
            let t = i64::from_le_bytes(e[16..].try_into().expect("8 bytes"));
            claims.push((DedupKey(k), t));
        }
        self.keys.reserve(count);
        self.claim(claims, applied);
        self.applied = applied;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_forgets_only_identities_older_than_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DedupIndex::open(dir.path(), 100).unwrap();
        let old = DedupKey::new("s", "old");
        let new = DedupKey::new("s", "new");
        d.claim([(old, 1_000), (new, 10 * BUCKET_MS)], 2);
        assert_eq!(d.prune(5 * BUCKET_MS), 1);
        assert!(!d.contains(&old));
        assert!(d.contains(&new));
    }

    #[test]
    fn snapshot_round_trips_and_damage_falls_back_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DedupIndex::open(dir.path(), 100).unwrap();
        let keys: Vec<_> = (0..50)
            .map(|i| (DedupKey::new("s", &i.to_string()), i))
            .collect();
        d.claim(keys.clone(), 77);
        d.save_snapshot().unwrap();
        let loaded = DedupIndex::open(dir.path(), 100).unwrap();
        assert_eq!(loaded.applied(), 77);
        assert_eq!(loaded.len(), 50);
        assert!(keys.iter().all(|(k, _)| loaded.contains(k)));
        let path = dir.path().join("dedup.snapshot");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let damaged = DedupIndex::open(dir.path(), 100).unwrap();
        assert_eq!((damaged.applied(), damaged.len()), (0, 0));
    }
}
