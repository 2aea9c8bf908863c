//! The engine: one writer, a syncer and a projector on their own threads.
//!
//! Requests reach the **writer** through a bounded queue ([`protocol`]). It
//! takes whatever is waiting (group commit), lets [`decide`] turn each
//! request into records against its state (dedup, meters, offsets, licenses,
//! seats), and hands the batch to the **syncer**, which appends it to the
//! log with one fdatasync. The **projector** then folds the durable batch
//! into the projections, republishes the readers' snapshots and only then
//! sends the answers: a 2xx means durable *and* visible to queries. The
//! three overlap: batch N+1 is decided while N syncs and N-1 is folded.
//!
//! The writer also decides when a signed checkpoint is due
//! ([`crate::audit`]); the syncer, which knows the chain hash after every
//! append, signs it and appends it as a batch of its own.
//!
//! - [`open`]: recovery, catch-up, key checks, wiring, bootstrap, rebuild.
//! - [`batch`]: what travels down the pipeline (a leaf).
//! - [`writer`], [`syncer`], [`projector`]: the stages (the shell).
//! - [`decide`]: the writer's state and decisions (pure).
//! - [`billing`]: the billing closer's ticker and the sources' watermarks.

pub mod batch;
mod billing;
pub mod decide;
mod dedup_saves;
mod handle;
mod open;
mod projector;
pub mod protocol;
mod syncer;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;

pub use crate::clock::{Clock, SystemClock};
pub use billing::Watermarks;
pub use handle::EngineHandle;
pub use open::{rebuild, rebuild_with};
pub use protocol::{
    EngineError, IngestOutcome, Origin, RejectedItem, Renewal, SeatLease, StageError, StartError,
};

use crate::api_keys::ApiKeyRing;
use crate::config::Config;
use crate::event::TimeWindow;
use crate::log::Seq;
use crate::meter::MeterSet;
use crate::metrics::metrics;
use crate::projection::licenses::PublishedLicenses;
use crate::projection::usage::UsageCache;
use crate::projection::{Overlay, ProjectionError, Store};

/// State readers use without waiting on the writer. The projections
/// publish into the handles (see [`crate::projection::Readers`]); the API
/// reads them through a [`crate::query::View`].
pub struct Shared {
    pub store: Store,
    pub meters: Arc<ArcSwap<MeterSet>>,
    pub keys: Arc<ArcSwap<ApiKeyRing>>,
    /// Counter states not yet flushed to sled; queries read them on top.
    pub overlay: Overlay,
    /// Meters whose past is still being counted (queries refuse them).
    pub backfills: crate::projection::Backfills,
    pub head_seq: AtomicU64,
    pub applied_seq: AtomicU64,
    pub failed: AtomicBool,
    pub clock: Arc<dyn Clock>,
    pub window: TimeWindow,
    pub request_events_max: usize,
    /// Licenses and seats as of `applied_seq`, by id and by key digest.
    pub licenses: Arc<PublishedLicenses>,
    /// Quota usage per license, kept current by the projector.
    pub usage: Arc<UsageCache>,
    /// Keys derived from the master key (lookup digests, sealing, signing).
    pub crypto: Arc<crate::crypto::Keys>,
    /// Products' signing secrets and API-key bindings, for request signatures.
    pub products: Arc<crate::product::SharedProducts>,
    /// The billing cycle and the last close, as the billing projection
    /// published them.
    pub billing: crate::projection::billing::PublishedBilling,
    /// The billing settings in force (grace, horizon).
    pub billing_settings: crate::billing::Settings,
    /// What billing closes wait for: each source's delivery.
    pub watermarks: Arc<Watermarks>,
}

pub struct Engine {
    handle: Option<EngineHandle>,
    writer: Option<JoinHandle<Result<(), StageError>>>,
    syncer: Option<JoinHandle<Result<(), StageError>>>,
    projector: Option<JoinHandle<Result<(), StageError>>>,
}

/// What `Engine::open` reports about the start.
pub struct Started {
    pub engine: Engine,
    /// The plaintext of an admin key created on this start, to show once.
    pub bootstrap_key: Option<String>,
    pub recovery: crate::log::Recovery,
    pub replayed_records: u64,
}

impl Engine {
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone().expect("engine is running")
    }

    /// Stops taking requests, lets the writer finish what is queued, waits
    /// for the syncer and the projector, and flushes sled.
    pub fn shutdown(mut self) -> Result<(), StartError> {
        let handle = self.handle.take().expect("engine is running");
        let store = handle.shared.store.clone();
        drop(handle);
        let w = self.writer.take().expect("writer").join();
        let s = self.syncer.take().expect("syncer").join();
        let p = self.projector.take().expect("projector").join();
        store.db.flush().map_err(ProjectionError::from)?;
        let results = [
            w.unwrap_or(Err(StageError::Panicked("writer"))),
            s.unwrap_or(Err(StageError::Panicked("log syncer"))),
            p.unwrap_or(Err(StageError::Panicked("projector"))),
        ];
        // The stage that failed first is the cause; the others stopped because it did.
        let mut errors: Vec<StageError> = results.into_iter().filter_map(Result::err).collect();
        match errors
            .iter()
            .position(|e| !matches!(e, StageError::PeerStopped(_)))
        {
            Some(cause) => Err(errors.swap_remove(cause).into()),
            None => errors.into_iter().next().map_or(Ok(()), |e| Err(e.into())),
        }
    }
}

/// Runs one pipeline stage on its own thread. A stage that fails marks the
/// engine failed (`/readyz` reports it and `serve` shuts down).
fn spawn_stage(
    name: &'static str,
    shared: &Arc<Shared>,
    run: impl FnOnce() -> Result<(), StageError> + Send + 'static,
) -> Result<JoinHandle<Result<(), StageError>>, StartError> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("keymeter-{name}"))
        .spawn(move || {
            let r = run();
            if let Err(e) = &r {
                // The gauge first: whoever sees the engine failed sees it too.
                metrics().ready.set(0);
                shared.failed.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, stage = name, "engine stage stopped");
            }
            r
        })
        .map_err(|source| StartError::Spawn { name, source })
}

/// Exports each projection's applied sequence number and its lag behind the
/// log head.
fn report_progress(head: Seq, projections: &[(&str, Seq)]) {
    let m = metrics();
    m.log_head_seq.set(head as i64);
    for &(name, seq) in projections {
        m.projection_applied_seq
            .with_label_values(&[name])
            .set(seq as i64);
        m.projection_lag_records
            .with_label_values(&[name])
            .set(head.saturating_sub(seq) as i64);
    }
}

/// Loads (or, by default, creates beside the data directory) the master key
/// and opens the keyring with it (see [`crate::crypto::keyring`]).
pub fn load_keys(cfg: &Config, log_is_empty: bool) -> Result<crate::crypto::Keys, StartError> {
    use crate::crypto::{load_master_key, open_keys, KeyringOrigin, MasterKeySource};
    let (master, source) = load_master_key(
        cfg.master_key.as_ref().map(|s| s.expose()),
        cfg.master_key_file.as_deref(),
        &cfg.data_dir,
    )
    .map_err(StartError::Keys)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (keys, origin) = open_keys(&cfg.data_dir, &master, log_is_empty, now_ms)
        .map_err(|e| StartError::Keys(e.to_string()))?;
    match origin {
        KeyringOrigin::Loaded => {}
        KeyringOrigin::Generated => tracing::info!(kid = keys.kid(), "created the keyring"),
        KeyringOrigin::Adopted => tracing::info!(
            kid = keys.kid(),
            "created the keyring with the keys this master key derived so far"
        ),
    }
    match source {
        MasterKeySource::Generated(path) => tracing::warn!(
            path = %path.display(),
            kid = keys.kid(),
            "generated a new master key (mode 0600) beside the data directory; back it up \
             separately: without it license keys cannot be recovered and signatures change"
        ),
        MasterKeySource::File(path) => {
            tracing::info!(path = %path.display(), kid = keys.kid(), "master key loaded")
        }
        MasterKeySource::Environment => {
            tracing::info!(
                kid = keys.kid(),
                "master key loaded from KEYMETER_MASTER_KEY"
            )
        }
    }
    Ok(keys)
}

/// The keys must open what the log sealed with them: a license key that no
/// longer unseals, or whose lookup digest no longer matches, means the
/// keyring was lost or replaced, and serving would answer NOT_FOUND for every
/// existing license instead of failing loudly.
fn check_keys_open_secrets(
    crypto: &crate::crypto::Keys,
    book: &crate::license::book::LicenseBook,
) -> Result<(), StartError> {
    let Some(state) = book.iter().next() else {
        return Ok(());
    };
    let id = &state.license.id;
    let opens = crypto
        .unseal(&state.secret.sealed_key, id.as_bytes())
        .ok()
        .and_then(|key| {
            std::str::from_utf8(&key)
                .ok()
                .map(|k| crypto.lookup_digest(k) == state.secret.lookup)
        });
    if opens == Some(true) {
        return Ok(());
    }
    Err(StartError::Keys(format!(
        "the keyring does not open license {id}'s sealed key: DATA/keys/keyring.json was lost \
         or replaced; restore it from the backup that matches this log"
    )))
}
