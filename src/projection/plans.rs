//! The plan and license-history projections, both [`DocTree`]s:
//!
//! - `plans`: every plan version, keyed `name 0x00 version` (big-endian, so
//!   versions sort by number), JSON documents.
//! - `license_history`: one [`TermsChange`] per record that changed a
//!   license's terms, keyed `license id 0x00 seq` (big-endian), so one
//!   license's history is one key range in log order.
//! - `migrations`: each migration document under `id 0x00`, and each
//!   license it migrated under `id 0x01 license id` (an [`Entry`]).

use super::docs::{DocChange, DocTree};
use super::{OpenContext, Projection, ProjectionError};
use crate::license::history::{change_of, TermsChange};
use crate::license::migration_book::{Entry, Migration, MigrationBook};
use crate::log::Seq;
use crate::record::Record;

pub fn plan_key(name: &str, version: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 5);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn history_prefix(license_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(license_id.len() + 9);
    k.extend_from_slice(license_id.as_bytes());
    k.push(0);
    k
}

pub fn open_plans(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let change = |_: Seq, r: &Record| match r {
        Record::PlanSaved { plan, .. } => Some(DocChange::Put(
            plan_key(&plan.name, plan.version),
            serde_json::to_vec(&**plan).expect("plan serializes"),
        )),
        _ => None,
    };
    Ok(Box::new(DocTree::open(
        "plans",
        &ctx.store.plans,
        change,
        None,
    )?))
}

pub fn open_history(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let change = |seq: Seq, r: &Record| {
        let (id, entry) = change_of(seq, r)?;
        let mut key = history_prefix(&id);
        key.extend_from_slice(&seq.to_be_bytes());
        Some(DocChange::Put(
            key,
            serde_json::to_vec(&entry).expect("history entry serializes"),
        ))
    };
    Ok(Box::new(DocTree::open(
        "license_history",
        &ctx.store.license_history,
        change,
        None,
    )?))
}

/// License `license_id`'s history entries, in log order.
pub fn history(tree: &sled::Tree, license_id: &str) -> Result<Vec<TermsChange>, ProjectionError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(history_prefix(license_id)) {
        let (k, v) = kv?;
        out.push(super::decode_json("license_history", &k, &v)?);
    }
    Ok(out)
}

fn migration_key(id: &str, kind: u8, license: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + license.len() + 1);
    k.extend_from_slice(id.as_bytes());
    k.push(kind);
    k.extend_from_slice(license.as_bytes());
    k
}

pub fn open_migrations(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let change = |_: Seq, r: &Record| match r {
        Record::MigrationSaved { migration, .. } => Some(DocChange::Put(
            migration_key(&migration.id, 0, ""),
            serde_json::to_vec(&**migration).expect("migration serializes"),
        )),
        Record::LicenseMigrated { .. } => {
            let (m, entry) = Entry::of(r)?;
            Some(DocChange::Put(
                migration_key(m, 1, &entry.license_id),
                serde_json::to_vec(&entry).expect("entry serializes"),
            ))
        }
        _ => None,
    };
    Ok(Box::new(DocTree::open(
        "migrations",
        &ctx.store.migrations,
        change,
        None,
    )?))
}

/// Migration `id`'s document, if it exists.
pub fn migration(tree: &sled::Tree, id: &str) -> Result<Option<Migration>, ProjectionError> {
    let key = migration_key(id, 0, "");
    match tree.get(&key)? {
        Some(v) if !id.is_empty() => Ok(Some(super::decode_json("migrations", &key, &v)?)),
        _ => Ok(None),
    }
}

/// Migration `id`'s entries, by license id.
pub fn migration_entries(tree: &sled::Tree, id: &str) -> Result<Vec<Entry>, ProjectionError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(migration_key(id, 1, "")) {
        let (k, v) = kv?;
        out.push(super::decode_json("migrations", &k, &v)?);
    }
    Ok(out)
}

/// Every migration with its entries, as the writer starts with them.
pub fn migration_book(tree: &sled::Tree) -> Result<MigrationBook, ProjectionError> {
    let mut docs = Vec::new();
    let mut entries = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        if k.is_empty() {
            continue;
        }
        match k.iter().position(|&b| b <= 1) {
            Some(i) if k[i] == 0 => {
                docs.push(super::decode_json::<Migration>("migrations", &k, &v)?)
            }
            Some(i) => {
                let id = String::from_utf8_lossy(&k[..i]).into_owned();
                entries.push((id, super::decode_json::<Entry>("migrations", &k, &v)?));
            }
            None => {}
        }
    }
    Ok(MigrationBook::from_parts(docs, entries))
}

/// Every migration document, by id.
pub fn migrations(tree: &sled::Tree) -> Result<Vec<Migration>, ProjectionError> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        if k.last() == Some(&0) && !k[..k.len() - 1].contains(&1) {
            out.push(super::decode_json("migrations", &k, &v)?);
        }
    }
    Ok(out)
}
