//! The writer's state and decisions: `(state, request, now_ms) → records +
//! answer`. No threads, channels, files or clock here: the writer shell
//! ([`super::writer`]) reads the clock, hands each request in, and sends what
//! comes out down the pipeline, so every rule below is unit-testable.
//!
//! - [`ingest`]: the meter check, dedup, offset deltas, the quarantine.
//! - [`licenses`]: licenses and seats.
//! - [`migrations`]: migrations of many licenses, a chunk per request.
//! - [`admin`]: products, API keys, meters.
//! - [`billing`]: billing closes, late events.
//!
//! Decisions apply what they decide to the state at once, so later requests
//! of the same batch see it (a seat taken, an identity claimed). Metrics are
//! counted here: they are observations, never inputs.

mod admin;
mod billing;
mod ingest;
mod licenses;
mod migrations;

pub use migrations::{ChunkOutcome, MIGRATION_CHUNK_MAX};
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

pub use billing::{BillingWriter, CloseBilling};

use super::batch::Batch;
use super::protocol::EngineError;
use crate::event::TimeWindow;
use crate::id::{ApiKeyId, ProductId};
use crate::license::LicenseBook;
use crate::log::Seq;
use crate::meter::{MeterSet, UniqueKey};
use crate::metrics::metrics;
use crate::product::Product;
use crate::projection::dedup::DedupIndex;
use crate::record::Audit;
use crate::source::checkpoint::SourceCheckpoint;

/// Most lapsed leases reclaimed by one sweep (the next sweep takes the rest).
pub const LEASE_SWEEP_RECORDS_MAX: usize = 1_000;

/// A request the writer decides. Implemented by every request type of
/// [`super::protocol`].
pub trait Request: Send + 'static {
    type Output: Send + 'static;

    /// The most records deciding this request can add (for group commit).
    fn records_max(&self) -> usize {
        1
    }

    /// Decides the request against `state` at `now_ms`, adding its records
    /// to `batch` and applying them to `state`.
    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<Self::Output, EngineError>;
}

/// Everything the writer decides with, as of `next_seq`: the log's records
/// before it, folded.
pub struct WriterState {
    /// The sequence number the next batch starts at.
    pub next_seq: Seq,
    pub sources: SourceCheckpoint,
    pub dedup: DedupIndex,
    pub meters: MeterSet,
    /// The data directory's UNIQUE_COUNT key, which the projector's fold
    /// of the observations extracted here also uses.
    pub unique_key: UniqueKey,
    pub key_ids: HashSet<ApiKeyId>,
    /// Every product as stored.
    pub products: HashMap<ProductId, Product>,
    /// Authoritative license and seat state.
    pub licenses: LicenseBook,
    /// Every plan version.
    pub plans: crate::license::plan::PlanBook,
    /// Every migration and the licenses it holds.
    pub migrations: crate::license::migration_book::MigrationBook,
    pub window: TimeWindow,
    pub dedup_keys_max: usize,
    /// The most identities one tenant may hold (`dedup_tenant_share_pct`).
    pub dedup_tenant_keys_max: usize,
    /// Billing closes and late events.
    pub billing: BillingWriter,
}

impl WriterState {
    /// Decides one request (the writer shell does the same through the
    /// queue; tests call this directly).
    pub fn decide<R: Request>(
        &mut self,
        request: R,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<R::Output, EngineError> {
        request.decide(self, now_ms, batch)
    }

    /// Closes an assembled batch: its records take the next sequence numbers
    /// (returned: the first), and the dedup index forgets identities that
    /// left the accepted window.
    pub fn seal(&mut self, batch: &Batch, now_ms: i64) -> Seq {
        let first_seq = self.next_seq;
        self.next_seq += batch.len() as u64;
        // The batch's identities were claimed as it was assembled, before it
        // is durable, so the next batch (built while this one syncs) sees
        // them. Safe because nothing is answered before the sync, a failed
        // sync stops the engine, and a dedup snapshot that is ahead of the
        // log is discarded on start.
        self.dedup.covered(self.next_seq - 1);
        self.prune_dedup(now_ms);
        first_seq
    }

    /// Identities older than the window can never meet a duplicate that
    /// would be accepted, so the index tracks the window, not all time.
    fn prune_dedup(&mut self, now_ms: i64) {
        let horizon_ms = now_ms - self.window.back_ms - self.window.ahead_ms;
        self.dedup.prune(horizon_ms);
        let m = metrics();
        m.dedup_keys.set(self.dedup.len() as i64);
        m.dedup_keys_limit.set(self.dedup_keys_max as i64);
        m.dedup_tenant_keys_limit
            .set(self.dedup_tenant_keys_max as i64);
        m.dedup_tenant_keys_held_max
            .set(self.dedup.tenants().held_max() as i64);
    }

    /// The sequence number the last record pushed to `batch` will get.
    fn last_seq(&self, batch: &Batch) -> Seq {
        self.next_seq + batch.len() as u64 - 1
    }
}

/// An admin record's audit, stamped with the writer's time.
fn stamped(mut audit: Audit, now_ms: i64) -> Audit {
    audit.at_ms = now_ms;
    audit
}
