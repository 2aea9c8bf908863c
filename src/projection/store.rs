//! The sled database and the reads of its trees that more than one module
//! needs. Each tree belongs to one projection (see [`super::registry`]);
//! only that projection writes it.

use std::collections::HashMap;
use std::path::Path;

use super::{decode_json, ProjectionError};
use crate::license::LicenseState;
use crate::log::Seq;
use crate::meter::{AggState, MeterDef};
use crate::product::Product;
use crate::record::{ApiKeyRecord, RejectedRecord};

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
    /// Licenses with their sealed keys and seats: see [`super::licenses`].
    pub licenses: sled::Tree,
    /// Product documents (signing secrets sealed), by id.
    pub products: sled::Tree,
    /// Plan versions: see [`super::plans`].
    pub plans: sled::Tree,
    /// What terms applied to each license when: see [`super::plans`].
    pub license_history: sled::Tree,
    /// Migration documents and the licenses they migrated: see [`super::plans`].
    pub migrations: sled::Tree,
}

impl Store {
    /// Opens the store with the default page cache (128 MiB).
    pub fn open(dir: &Path) -> Result<Store, ProjectionError> {
        Store::open_with_cache(dir, 128 << 20)
    }

    /// Opens the store with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Store, ProjectionError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        Ok(Store {
            counters: db.open_tree("counters")?,
            meters: db.open_tree("meters")?,
            api_keys: db.open_tree("api_keys")?,
            quarantine: db.open_tree("quarantine")?,
            sources: db.open_tree("sources")?,
            licenses: db.open_tree("licenses")?,
            products: db.open_tree("products")?,
            plans: db.open_tree("plans")?,
            license_history: db.open_tree("license_history")?,
            migrations: db.open_tree("migrations")?,
            db,
        })
    }

    /// Every key/value of the counters tree, checkpoint excluded, in key order.
    pub fn counters_dump(&self) -> Result<Vec<KeyValue>, ProjectionError> {
        tree_dump(&self.counters)
    }

    /// Every counter's encoded key and state, decoded from the blocks that
    /// hold them (see [`super::blocks`]), in key order.
    pub fn counter_states(&self) -> Result<Vec<(Vec<u8>, AggState)>, ProjectionError> {
        let mut out = Vec::new();
        for kv in self.counters.iter() {
            let (k, v) = kv?;
            if super::blocks::is_block_key(&k) {
                out.extend(super::blocks::decode_block(&k, &v)?);
            }
        }
        Ok(out)
    }

    pub fn meter_defs(&self) -> Result<Vec<MeterDef>, ProjectionError> {
        documents(&self.meters, "meters")
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, ProjectionError> {
        documents(&self.api_keys, "api_keys")
    }

    pub fn products(&self) -> Result<Vec<Product>, ProjectionError> {
        documents(&self.products, "products")
    }

    /// Every plan version, by name then version.
    pub fn plans(&self) -> Result<Vec<crate::license::plan::Plan>, ProjectionError> {
        documents(&self.plans, "plans")
    }

    /// Every license state, in id order.
    pub fn licenses(&self) -> Result<Vec<LicenseState>, ProjectionError> {
        documents(&self.licenses, "licenses")
    }

    /// One product document, by id.
    pub fn product(&self, id: &str) -> Result<Option<Product>, ProjectionError> {
        match self.products.get(id.as_bytes())? {
            Some(v) if !id.is_empty() => Ok(Some(decode_json("products", id.as_bytes(), &v)?)),
            _ => Ok(None),
        }
    }

    /// The stored next offset of every source partition.
    pub fn source_positions(&self) -> Result<HashMap<(String, i32), i64>, ProjectionError> {
        let mut out = HashMap::new();
        for (k, v) in tree_dump(&self.sources)? {
            let bad = || ProjectionError::Value {
                tree: "sources",
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "malformed source position".into(),
            };
            let (topic, partition) = decode_source_key(&k).ok_or_else(bad)?;
            let next: [u8; 8] = v.as_slice().try_into().map_err(|_| bad())?;
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

/// Every key/value of a projection tree, checkpoint excluded, in key order.
pub fn tree_dump(tree: &sled::Tree) -> Result<Vec<KeyValue>, ProjectionError> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        if !k.is_empty() {
            out.push((k.to_vec(), v.to_vec()));
        }
    }
    Ok(out)
}

/// Every JSON document of a projection tree, in key order.
pub fn documents<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
) -> Result<Vec<T>, ProjectionError> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        if !k.is_empty() {
            out.push(decode_json(name, &k, &v)?);
        }
    }
    Ok(out)
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
