//! The read side: everything the HTTP layer reads of the engine's published
//! state goes through a [`View`]. Writes go through
//! [`crate::engine::EngineHandle::send`]; nothing here waits on the writer.
//!
//! - [`meters`]: usage queries, from the raw query string to rows
//!   ([`meters::QueryRequest`], [`meters::QueryError`]).
//! - [`billing`]: statements, the feed, periods and proofs.
//! - [`licenses`]: license validation, answered from the published licenses
//!   and the quota usage cache ([`licenses::Validation`]).

pub mod billing;
pub mod licenses;
pub mod meters;
mod plans;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::engine::Shared;
use crate::event::TimeWindow;
use crate::log::Seq;
use crate::meter::MeterDef;
use crate::product::Product;
use crate::projection::licenses::PublishedLicense;
use crate::projection::ProjectionError;
use crate::record::{ApiKeyRecord, RejectedRecord};
use crate::source::SourceHealth;

/// The engine's published state as readers see it, and the health of the
/// source feeding it. Cloning copies two `Arc`s.
#[derive(Clone)]
pub struct View {
    shared: Arc<Shared>,
    source: Option<Arc<SourceHealth>>,
}

impl View {
    /// Reads `shared`; `source` is the health of the Kafka source feeding
    /// this engine, if one runs.
    pub fn new(shared: Arc<Shared>, source: Option<Arc<SourceHealth>>) -> View {
        View { shared, source }
    }

    /// The engine's clock, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// The billing projection's reads, as of its last flush.
    pub fn billing(&self) -> Result<billing::BillingReads, ProjectionError> {
        let shared = &self.shared;
        let now_ms = shared.clock.now_ms();
        Ok(billing::BillingReads {
            tree: shared.store.db.open_tree("billing")?,
            view: shared.billing.load_full(),
            settings: shared.billing_settings,
            now_ms,
            watermark_ms: shared.watermarks.watermark_ms(now_ms),
        })
    }

    /// The accepted event-time window around the receive time.
    pub fn event_window(&self) -> TimeWindow {
        self.shared.window
    }

    /// Most events one ingest request may carry.
    pub fn request_events_max(&self) -> usize {
        self.shared.request_events_max
    }

    /// The keys derived from the master key (lookup digests, sealing,
    /// signing, the JWKS).
    pub fn crypto(&self) -> &crate::crypto::Keys {
        &self.shared.crypto
    }

    /// [`View::crypto`], for work that outlives the request's borrow.
    pub fn crypto_arc(&self) -> Arc<crate::crypto::Keys> {
        self.shared.crypto.clone()
    }

    /// The body of `/readyz`, or `None` when the engine stopped after an
    /// error. `kafka` is the source's state, or `not configured`.
    pub fn readiness(&self) -> Option<Value> {
        let shared = &self.shared;
        if shared.failed.load(Ordering::SeqCst) {
            return None;
        }
        let kafka = match &self.source {
            Some(health) => health.readiness(),
            None => json!({"state": "not configured"}),
        };
        Some(json!({
            "status": "ready",
            "logHeadSeq": shared.head_seq.load(Ordering::SeqCst),
            "appliedSeq": shared.applied_seq.load(Ordering::SeqCst),
            "kafka": kafka,
        }))
    }

    /// Every meter's definition, by slug.
    pub fn meter_defs(&self) -> Vec<MeterDef> {
        let meters = self.shared.meters.load();
        meters.iter().map(|m| m.def().clone()).collect()
    }

    /// The definition of meter `slug`, if it exists.
    pub fn meter(&self, slug: &str) -> Option<MeterDef> {
        self.shared.meters.load().get(slug).map(|m| m.def().clone())
    }

    /// The slug of the meter whose slug or id (OpenMeter's
    /// `meterIdOrSlug`) is `key`; `key` itself when there is none, so that
    /// what follows answers "meter not found" as for a slug.
    pub fn meter_slug(&self, key: &str) -> String {
        let meters = self.shared.meters.load();
        if meters.get(key).is_some() {
            return key.to_owned();
        }
        let by_id = meters.iter().find(|m| m.def().id.as_deref() == Some(key));
        by_id.map_or_else(|| key.to_owned(), |m| m.slug().to_owned())
    }

    /// Whether meter `slug` exists.
    pub fn has_meter(&self, slug: &str) -> bool {
        self.shared.meters.load().get(slug).is_some()
    }

    /// Whether meter `slug` is still counting the events logged before it.
    pub fn is_backfilling(&self, slug: &str) -> bool {
        self.shared.backfills.load().contains_key(slug)
    }

    /// The live API key presented as `presented`, if any.
    pub fn api_key(&self, presented: &str) -> Option<ApiKeyRecord> {
        self.shared.keys.load().lookup(presented).cloned()
    }

    /// Every live API key, as stored.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, ProjectionError> {
        self.shared.store.api_keys()
    }

    /// The product API key `api_key_id` is bound to, and whether that
    /// product requires signed calls.
    pub fn product_of_key(&self, api_key_id: &str) -> Option<(String, bool)> {
        let products = self.shared.products.load();
        products
            .product_of_key(api_key_id)
            .map(|(product, required)| (product.to_owned(), required))
    }

    /// The product that signing secret `secret_id` belongs to and the
    /// secret, for a call bound to `bound` (when bound, the secret must be
    /// that product's). One snapshot answers both.
    pub fn signing_secret(
        &self,
        secret_id: &str,
        bound: Option<&str>,
    ) -> Option<(String, zeroize::Zeroizing<Vec<u8>>)> {
        let products = self.shared.products.load();
        let (product, secret) = products.secret(secret_id)?;
        if bound.is_some_and(|b| b != product) {
            return None;
        }
        Some((product.to_owned(), zeroize::Zeroizing::new(secret.to_vec())))
    }

    /// Every product, as stored.
    pub fn products(&self) -> Result<Vec<Product>, ProjectionError> {
        self.shared.store.products()
    }

    /// Product `id` as stored, if it exists.
    pub fn product(&self, id: &str) -> Result<Option<Product>, ProjectionError> {
        self.shared.store.product(id)
    }

    /// Up to `limit` quarantined records after log seq `after`, oldest first.
    pub fn quarantine_page(
        &self,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, RejectedRecord)>, ProjectionError> {
        self.shared.store.quarantine_page(after, limit)
    }

    /// License `id` as published, if it exists.
    pub fn license(&self, id: &str) -> Option<Arc<PublishedLicense>> {
        self.shared.licenses.get(id)
    }

    /// Every published license, unordered.
    pub fn licenses(&self) -> Vec<Arc<PublishedLicense>> {
        self.shared.licenses.all()
    }
}
