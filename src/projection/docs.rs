//! Document projections: small trees of keyed documents, each written by a
//! function from a record to a change. One [`DocTree`] serves the meters,
//! API keys, products, quarantine and source positions; what differs between
//! them is the record→change function and what readers get on a change.
//!
//! A tree is written (changes and checkpoint in one sled batch) when a
//! record changes it; otherwise its checkpoint moves forward at
//! [`Projection::flush`], so a tree that rarely changes costs nothing per
//! batch.

use std::sync::Arc;

use super::store::{documents, source_key};
use super::{checkpoint, put_checkpoint, Applied, OpenContext, Projection, ProjectionError};
use crate::api_keys::ApiKeyRing;
use crate::log::Seq;
use crate::record::Record;

/// What one record does to a document tree.
pub enum DocChange {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// Hands readers the tree's documents after it changed.
type Publish = Box<dyn Fn(&sled::Tree) -> Result<(), ProjectionError> + Send>;

pub struct DocTree {
    name: &'static str,
    tree: sled::Tree,
    change: fn(Seq, &Record) -> Option<DocChange>,
    publish: Option<Publish>,
    /// Checkpoint in sled.
    applied: Seq,
    /// Highest seq seen; the tree is logically at least here.
    seen: Seq,
}

impl DocTree {
    pub fn open(
        name: &'static str,
        tree: &sled::Tree,
        change: fn(Seq, &Record) -> Option<DocChange>,
        publish: Option<Publish>,
    ) -> Result<DocTree, ProjectionError> {
        let applied = checkpoint(tree)?;
        Ok(DocTree {
            name,
            tree: tree.clone(),
            change,
            publish,
            applied,
            seen: applied,
        })
    }
}

impl Projection for DocTree {
    fn name(&self) -> &'static str {
        self.name
    }

    fn applied(&self) -> Seq {
        self.applied.max(self.seen)
    }

    fn apply(&mut self, records: &[Applied<'_>]) -> Result<bool, ProjectionError> {
        let Some(last) = records.last().map(|a| a.seq) else {
            return Ok(false);
        };
        let mut batch = sled::Batch::default();
        let mut changed = false;
        for a in records.iter().filter(|a| a.seq > self.seen) {
            match (self.change)(a.seq, a.record) {
                Some(DocChange::Put(k, v)) => batch.insert(k, v),
                Some(DocChange::Remove(k)) => batch.remove(k),
                None => continue,
            }
            changed = true;
        }
        self.seen = self.seen.max(last);
        if changed {
            put_checkpoint(&mut batch, last);
            self.tree.apply_batch(batch)?;
            self.applied = last;
        }
        Ok(changed)
    }

    fn publish(&mut self) -> Result<(), ProjectionError> {
        match &self.publish {
            Some(publish) => publish(&self.tree),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), ProjectionError> {
        super::advance_checkpoint(&self.tree, &mut self.applied, self.seen)
    }
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("document serializes")
}

/// Meter definitions for the API, by slug.
pub fn open_meters(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let change = |_: Seq, r: &Record| match r {
        Record::MeterCreated { meter, .. } | Record::MeterUpdated { meter, .. } => Some(
            DocChange::Put(meter.slug.as_bytes().to_vec(), json(&**meter)),
        ),
        Record::MeterDeleted { slug, .. } => Some(DocChange::Remove(slug.as_bytes().to_vec())),
        _ => None,
    };
    Ok(Box::new(DocTree::open(
        "meters",
        &ctx.store.meters,
        change,
        None,
    )?))
}

/// Live API keys (digests only), by id; readers get a new [`ApiKeyRing`].
pub fn open_api_keys(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let change = |_: Seq, r: &Record| match r {
        Record::ApiKeyCreated { key, .. } => {
            Some(DocChange::Put(key.id.as_bytes().to_vec(), json(key)))
        }
        Record::ApiKeyRevoked { id, .. } => Some(DocChange::Remove(id.as_bytes().to_vec())),
        _ => None,
    };
    let keys = ctx.readers.keys.clone();
    let publish: Publish = Box::new(move |tree| {
        let ring = ApiKeyRing::from_records(documents(tree, "api_keys")?);
        keys.store(Arc::new(ring));
        Ok(())
    });
    Ok(Box::new(DocTree::open(
        "api_keys",
        &ctx.store.api_keys,
        change,
        Some(publish),
    )?))
}

/// Product documents (signing secrets sealed), by id; readers get a new
/// [`crate::product::ProductRing`].
pub fn open_products(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let change = |_: Seq, r: &Record| match r {
        Record::ProductSaved { product, .. } => Some(DocChange::Put(
            product.id.as_bytes().to_vec(),
            json(&**product),
        )),
        _ => None,
    };
    let (products, crypto) = (ctx.readers.products.clone(), ctx.readers.crypto.clone());
    let publish: Publish = Box::new(move |tree| {
        let crypto = crypto.as_ref().ok_or_else(|| {
            ProjectionError::Publish("product secrets cannot be opened without the keys".into())
        })?;
        let ring = crate::product::ProductRing::build(&documents(tree, "products")?, crypto)
            .map_err(ProjectionError::Publish)?;
        crate::product::publish(&products, ring);
        Ok(())
    });
    Ok(Box::new(DocTree::open(
        "products",
        &ctx.store.products,
        change,
        Some(publish),
    )?))
}

/// Every rejected input, keyed by its log sequence number.
pub fn open_quarantine(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let change = |seq: Seq, r: &Record| match r {
        Record::Rejected(r) => Some(DocChange::Put(
            seq.to_be_bytes().to_vec(),
            postcard::to_allocvec(r).expect("record serializes"),
        )),
        _ => None,
    };
    Ok(Box::new(DocTree::open(
        "quarantine",
        &ctx.store.quarantine,
        change,
        None,
    )?))
}

/// The next offset to consume per source partition.
pub fn open_sources(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let change = |_: Seq, r: &Record| match r {
        Record::SourceOffsets(d) => Some(DocChange::Put(
            source_key(&d.topic, d.partition),
            d.to.to_be_bytes().to_vec(),
        )),
        _ => None,
    };
    Ok(Box::new(DocTree::open(
        "sources",
        &ctx.store.sources,
        change,
        None,
    )?))
}
