//! The licenses projection: every license with its sealed key and seats,
//! folded from the log by [`LicenseBook`], persisted in the sled tree
//! `licenses` (id → JSON state, checkpoint under the empty key, written in
//! the same batch), and published to readers as immutable snapshots.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::store::documents;
use super::{checkpoint, put_checkpoint, Applied, OpenContext, Projection, ProjectionError};
use crate::id::LicenseId;
use crate::license::{LicenseBook, LicenseState};
use crate::log::Seq;

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
    unpublished: Option<Vec<LicenseId>>,
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
        super::advance_checkpoint(&self.tree, &mut self.applied, self.seen)
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
    by_id: ShardedMap<LicenseId, Arc<PublishedLicense>>,
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
    pub fn publish(&self, book: &LicenseBook, changed: &[LicenseId]) {
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
