//! The single writer and the projector.
//!
//! Requests reach the **writer** thread through a bounded queue. It takes
//! whatever is waiting (up to `batch_records_max` records: group commit),
//! checks events against the meters and the dedup index, appends everything
//! as one log batch with one fdatasync, then claims the batch's event
//! identities in the dedup tree. The batch then goes to the **projector**
//! thread, which folds it into the sled projections, republishes the readers'
//! snapshots and only then answers the requests: a 2xx means durable *and*
//! visible to queries. Writer and projector overlap, so the next batch's
//! fsync runs while the previous one is being folded.
//!
//! The writer also decides when a signed checkpoint is due
//! ([`crate::audit`]); the syncer, which knows the chain hash after every
//! append, signs it and appends it as a batch of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, AnchorFile, CheckpointSchedule};
use crate::auth::{self, KeyRing, Scope};
use crate::config::Config;
use crate::event::{Decoded, Rejection, TimeWindow};
use crate::log::{Log, LogConfig, Seq};
use crate::meter::MeterDef;
use crate::metrics::metrics;
use crate::projection::dedup::DedupIndex;
use crate::projection::{
    self, Applied, Counters, Documents, EventFacts, MeterSet, Overlay, ProjectionError, Store,
};

/// How often the projector writes its overlay and checkpoints to sled.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Flush early when this many counter states are waiting.
const OVERLAY_STATES_MAX: usize = 200_000;
/// How often the writer saves the dedup snapshot (also on shutdown).
const DEDUP_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);
/// The syncer keeps its encoding buffer between batches up to this size.
const ENCODED_RETAINED_BYTES: usize = 32 << 20;
use std::collections::HashMap;

use crate::record::{
    ApiKeyRecord, Audit, EventRecord, OffsetDelta, Record, RejectedRecord, SourcePosition,
};

use crate::license::model::{LicenseUpdate, StatusAction};
use crate::license::seats::CheckoutPlan;
use crate::license::{License, LicenseBook, Refusal};
use crate::projection::licenses::{Licenses, PublishedLicenses, UsageCache};
use crate::record::{LicenseSecret, SeatRecord};

/// How often the writer looks for lapsed seat leases to reclaim.
const LEASE_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Most lapsed leases reclaimed by one sweep (the next sweep takes the rest).
const LEASE_SWEEP_RECORDS_MAX: usize = 1_000;

/// Where "now" comes from. Only the shell reads the system clock; tests may
/// pass their own.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(Rejection),
    #[error("the engine has stopped; the request was not recorded")]
    Stopped,
    #[error("{0}")]
    Overloaded(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("event log: {0}")]
    Log(#[from] crate::log::LogError),
    #[error("projections: {0}")]
    Projection(#[from] ProjectionError),
    #[error("{0}")]
    Other(String),
}

/// What became of each event of one ingest request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejected: Vec<RejectedItem>,
    /// Highest log sequence number written for this request (0 if none).
    pub last_seq: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedItem {
    pub index: u32,
    pub code: String,
    pub message: String,
}

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

enum Command {
    Ingest {
        items: Vec<Decoded>,
        received_ms: i64,
        origin: &'static str,
        reply: Reply<IngestOutcome>,
    },
    /// A whole body that could not be read as events; it is quarantined.
    RejectBody {
        rejection: Rejection,
        raw: Vec<u8>,
        received_ms: i64,
        origin: &'static str,
        reply: Reply<Seq>,
    },
    CreateMeter {
        def: MeterDef,
        audit: Audit,
        reply: Reply<MeterDef>,
    },
    DeleteMeter {
        slug: String,
        audit: Audit,
        reply: Reply<()>,
    },
    CreateApiKey {
        key: ApiKeyRecord,
        audit: Audit,
        reply: Reply<ApiKeyRecord>,
    },
    RevokeApiKey {
        id: String,
        audit: Audit,
        reply: Reply<()>,
    },
    /// Messages from one source partition, with the offset range they cover.
    SourceBatch {
        items: Vec<Decoded>,
        /// Per item: its offset in `delta`'s partition (for the quarantine).
        offsets: Vec<i64>,
        delta: OffsetDelta,
        received_ms: i64,
        reply: Reply<IngestOutcome>,
    },
    /// The next offset of every source partition, after every command
    /// queued before this one.
    SourcePositions {
        reply: Reply<HashMap<(String, i32), i64>>,
    },
    CreateLicense {
        license: Box<License>,
        secret: LicenseSecret,
        audit: Audit,
        reply: Reply<Result<License, Refusal>>,
    },
    UpdateLicense {
        id: String,
        update: Box<LicenseUpdate>,
        audit: Audit,
        reply: Reply<Result<License, Refusal>>,
    },
    ChangeLicenseStatus {
        id: String,
        action: StatusAction,
        reason: Option<String>,
        audit: Audit,
        reply: Reply<Result<License, Refusal>>,
    },
    RenewLicense {
        id: String,
        renewal: Renewal,
        audit: Audit,
        reply: Reply<Result<License, Refusal>>,
    },
    CheckoutSeat {
        license_id: String,
        fingerprint: String,
        audit: Audit,
        reply: Reply<Result<SeatLease, Refusal>>,
    },
    HeartbeatSeat {
        license_id: String,
        seat_id: String,
        reply: Reply<Result<SeatLease, Refusal>>,
    },
    ReleaseSeat {
        license_id: String,
        seat_id: String,
        audit: Audit,
        reply: Reply<Result<(), Refusal>>,
    },
    /// Reclaim lapsed seat leases (sent periodically by the sweeper).
    SweepLeases,
    /// Record that a license file was issued.
    LicenseFileIssued {
        issue: crate::record::LicenseFileIssue,
        audit: Audit,
        reply: Reply<()>,
    },
    /// Create (`version` 1) or change a product; refused unless `version`
    /// is one more than the stored one.
    SaveProduct {
        product: Box<crate::product::Product>,
        audit: Audit,
        reply: Reply<crate::product::Product>,
    },
    /// Look at the clock: a checkpoint may be due (sent periodically; no
    /// records of its own).
    CheckpointTick,
}

/// How a renewal sets the new expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// This expiry (`None`: perpetual).
    Until(Option<chrono::DateTime<chrono::Utc>>),
    /// The later of the current expiry and now, plus this many seconds.
    Extend(u64),
}

/// A seat as a checkout or heartbeat leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatLease {
    pub seat_id: String,
    pub fingerprint: String,
    /// Lease end; `None` for a node-locked seat.
    pub expires_ms: Option<i64>,
    /// A seat was taken by this checkout (not an existing one returned).
    pub new: bool,
}

impl Command {
    fn records_max(&self) -> usize {
        match self {
            Command::Ingest { items, .. } | Command::SourceBatch { items, .. } => items.len() + 1,
            _ => 1,
        }
    }
}

/// State readers use without waiting on the writer.
pub struct Shared {
    pub store: Store,
    pub meters: ArcSwap<MeterSet>,
    pub keys: ArcSwap<KeyRing>,
    /// Counter states not yet flushed to sled; queries read them on top.
    pub overlay: Overlay,
    pub head_seq: AtomicU64,
    pub applied_seq: AtomicU64,
    pub failed: AtomicBool,
    pub clock: Arc<dyn Clock>,
    pub window: TimeWindow,
    pub request_events_max: usize,
    /// Licenses and seats as of `applied_seq`, by id and by key digest.
    pub licenses: PublishedLicenses,
    /// Quota usage per license, kept current by the projector.
    pub usage: UsageCache,
    /// Keys derived from the master key (lookup digests, sealing, signing).
    pub crypto: Arc<crate::crypto::Keys>,
    /// Products' signing secrets and API-key bindings, for request signatures.
    pub products: crate::product::SharedProducts,
}

/// A cheap, cloneable way in: commands to the writer, reads from `shared`.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    pub shared: Arc<Shared>,
}

pub struct Engine {
    handle: Option<EngineHandle>,
    writer: Option<JoinHandle<Result<(), StartError>>>,
    syncer: Option<JoinHandle<Result<(), StartError>>>,
    projector: Option<JoinHandle<Result<(), StartError>>>,
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
    /// Opens the log (recovering a torn tail), catches every projection up
    /// with the log, starts the writer and projector, and creates the first
    /// admin key if there is none.
    pub fn open(cfg: &Config, clock: Arc<dyn Clock>) -> Result<Started, StartError> {
        let (log, recovery) = Log::open(
            &cfg.log_dir(),
            LogConfig {
                segment_bytes_max: cfg.segment_bytes_max,
            },
        )?;
        let head = log.head_seq();
        let store = Store::open(&cfg.state_dir())?;
        let mut counters = Counters::open(&store, &cfg.log_dir())?;
        let mut docs = Documents::open(&store)?;
        let mut licenses = Licenses::open(&store)?;
        let ahead = docs
            .applied()
            .into_iter()
            .chain([
                ("counters", counters.applied()),
                ("licenses", licenses.applied()),
            ])
            .find(|(_, seq)| *seq > head);
        if let Some((name, seq)) = ahead {
            // The projections describe records the log no longer has (a
            // restored backup, or a lost log tail). The log is the truth:
            // start them over from it.
            tracing::warn!(
                projection = name,
                applied_seq = seq,
                log_head_seq = head,
                "projections are ahead of the log; rebuilding them from the log"
            );
            store.clear_all()?;
            counters = Counters::open(&store, &cfg.log_dir())?;
            docs = Documents::open(&store)?;
            licenses = Licenses::open(&store)?;
        }
        let mut dedup = DedupIndex::open(&cfg.state_dir(), cfg.dedup_keys_max)?;
        if dedup.applied() > head {
            tracing::warn!(
                snapshot_seq = dedup.applied(),
                head,
                "dedup snapshot is ahead of the log; rebuilding it from the log"
            );
            std::fs::remove_file(cfg.state_dir().join("dedup.snapshot"))
                .map_err(|e| StartError::Other(format!("cannot remove dedup snapshot: {e}")))?;
            dedup = DedupIndex::open(&cfg.state_dir(), cfg.dedup_keys_max)?;
        }
        let from = counters
            .applied()
            .min(docs.min_applied())
            .min(dedup.applied())
            .min(licenses.applied())
            + 1;
        let replayed_records = head.saturating_sub(from - 1);
        if replayed_records > 0 {
            tracing::info!(from, to = head, "catching projections up with the log");
        }
        projection::replay_log(&cfg.log_dir(), from, head, 10_000, |chunk| {
            counters.apply(chunk)?;
            docs.apply(chunk)?;
            dedup.apply(chunk)?;
            licenses.apply(chunk)?;
            if counters.overlay_len() > OVERLAY_STATES_MAX {
                counters.flush()?;
            }
            Ok(())
        })?;
        counters.flush()?;
        docs.flush()?;
        licenses.flush()?;
        let crypto = Arc::new(load_keys(cfg, head == 0)?);
        check_keys_open_secrets(&crypto, licenses.book())?;

        let meters = MeterSet::from_defs(store.meter_defs()?)
            .map_err(|e| StartError::Other(format!("stored meter is invalid: {e}")))?;
        let api_keys = store.api_keys()?;
        let key_ids = api_keys.iter().map(|k| k.id.clone()).collect();
        let keys = KeyRing::from_records(api_keys);
        let products = store.products()?;
        let product_versions = products.iter().map(|p| (p.id.clone(), p.version)).collect();
        let product_ring =
            crate::product::ProductRing::build(&products, &crypto).map_err(StartError::Other)?;
        let shared = Arc::new(Shared {
            store: store.clone(),
            meters: ArcSwap::from_pointee(meters.clone()),
            keys: ArcSwap::from_pointee(keys.clone()),
            overlay: counters.overlay(),
            head_seq: AtomicU64::new(head),
            applied_seq: AtomicU64::new(head),
            failed: AtomicBool::new(false),
            clock: clock.clone(),
            window: cfg.time_window(),
            request_events_max: cfg.request_events_max,
            licenses: PublishedLicenses::from_book(licenses.book()),
            usage: UsageCache::default(),
            crypto,
            products: ArcSwap::from_pointee(product_ring),
        });
        let mut progress = vec![
            ("counters", counters.applied()),
            ("dedup", dedup.applied()),
            ("licenses", licenses.applied()),
        ];
        progress.extend(docs.applied());
        report_progress(head, &progress);

        let mut checkpoints =
            CheckpointSchedule::new(cfg.audit_checkpoint_records, cfg.audit_checkpoint_interval);
        if !log_ends_with_checkpoint(&cfg.log_dir(), head)? {
            // Records of an earlier run (a crash, or a log from before
            // checkpoints) wait no longer than new ones.
            checkpoints.appended(1, Instant::now());
        }
        let anchor = match &cfg.audit_anchor_file {
            None => None,
            Some(path) => Some(AnchorFile::open(path).map_err(|e| {
                StartError::Other(format!(
                    "cannot open the audit anchor file {}: {e}",
                    path.display()
                ))
            })?),
        };

        let (tx, rx) = mpsc::channel(cfg.writer_queue_max);
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(4);
        let (pending_tx, pending_rx) = std::sync::mpsc::sync_channel::<Pending>(2);
        let syncer = Syncer {
            log,
            jobs: jobs_tx,
            keys: shared.crypto.clone(),
            clock: clock.clone(),
            anchor,
            encoded: Vec::new(),
            ends: Vec::new(),
        };
        let checkpoint_tick = checkpoints.tick();
        let writer = Writer {
            next_seq: head + 1,
            positions: store.source_positions()?,
            dedup,
            meters,
            key_ids,
            product_versions,
            licenses: licenses.book().clone(),
            window: cfg.time_window(),
            batch_records_max: cfg.batch_records_max,
            dedup_keys_max: cfg.dedup_keys_max,
            clock,
            checkpoints,
            syncer: pending_tx,
        };
        let projector = Projector {
            counters,
            docs,
            licenses,
            shared: shared.clone(),
        };
        spawn_lease_sweeper(tx.downgrade())?;
        spawn_checkpoint_ticker(tx.downgrade(), checkpoint_tick)?;
        let writer = spawn_stage("writer", &shared, move || writer.run(rx))?;
        let syncer = spawn_stage("syncer", &shared, move || syncer.run(pending_rx))?;
        let projector = spawn_stage("projector", &shared, move || projector.run(jobs_rx))?;
        let engine = Engine {
            handle: Some(EngineHandle { tx, shared }),
            writer: Some(writer),
            syncer: Some(syncer),
            projector: Some(projector),
        };
        let bootstrap_key = engine.bootstrap(cfg)?;
        Ok(Started {
            engine,
            bootstrap_key,
            recovery,
            replayed_records,
        })
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone().expect("engine is running")
    }

    fn bootstrap(&self, cfg: &Config) -> Result<Option<String>, StartError> {
        let handle = self.handle();
        let keys = handle.shared.keys.load();
        if !keys.is_empty() {
            if let Some(k) = &cfg.bootstrap_admin_key {
                if keys.lookup(k).is_none() {
                    tracing::warn!(
                        "bootstrap admin key ignored: API keys already exist; manage keys through /api/v1/api-keys"
                    );
                }
            }
            return Ok(None);
        }
        let (id, key, generated) = match &cfg.bootstrap_admin_key {
            Some(k) => (auth::generate_id(), k.clone(), false),
            None => {
                let (id, key) = auth::generate_key();
                (id, key, true)
            }
        };
        let now = handle.shared.clock.now_ms();
        let record = ApiKeyRecord {
            id,
            name: "bootstrap-admin".into(),
            scopes: vec![Scope::Admin],
            key_sha256: auth::key_digest(&key),
            created_ms: now,
        };
        let audit = Audit {
            actor: None,
            at_ms: now,
            request_id: Some("bootstrap".into()),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StartError::Other(e.to_string()))?;
        rt.block_on(handle.create_api_key(record, audit))
            .map_err(|e| StartError::Other(format!("cannot create the bootstrap key: {e}")))?;
        Ok(generated.then_some(key))
    }

    /// Stops taking commands, lets the writer finish what is queued, waits for
    /// the projector, and flushes sled.
    pub fn shutdown(mut self) -> Result<(), StartError> {
        let handle = self.handle.take().expect("engine is running");
        let store = handle.shared.store.clone();
        drop(handle);
        let w = self.writer.take().expect("writer").join();
        let s = self.syncer.take().expect("syncer").join();
        let p = self.projector.take().expect("projector").join();
        store.db.flush().map_err(ProjectionError::from)?;
        w.map_err(|_| StartError::Other("writer panicked".into()))??;
        s.map_err(|_| StartError::Other("log syncer panicked".into()))??;
        p.map_err(|_| StartError::Other("projector panicked".into()))??;
        Ok(())
    }
}

/// Runs one pipeline stage on its own thread. A stage that fails marks the
/// engine failed (`/readyz` reports it and `serve` shuts down).
fn spawn_stage(
    name: &'static str,
    shared: &Arc<Shared>,
    run: impl FnOnce() -> Result<(), StartError> + Send + 'static,
) -> Result<JoinHandle<Result<(), StartError>>, StartError> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("keymeter-{name}"))
        .spawn(move || {
            let r = run();
            if let Err(e) = &r {
                shared.failed.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, stage = name, "engine stage stopped");
            }
            r
        })
        .map_err(|e| StartError::Other(format!("cannot start the {name} thread: {e}")))
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
    .map_err(StartError::Other)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (keys, origin) = open_keys(&cfg.data_dir, &master, log_is_empty, now_ms)
        .map_err(|e| StartError::Other(e.to_string()))?;
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
    Err(StartError::Other(format!(
        "the keyring does not open license {id}'s sealed key: DATA/keys/keyring.json was lost \
         or replaced; restore it from the backup that matches this log"
    )))
}

/// Asks the writer to reclaim lapsed leases every [`LEASE_SWEEP_INTERVAL`].
/// Holds only a weak sender, so it never keeps the writer alive: it ends at
/// the first tick after the engine stops.
fn spawn_lease_sweeper(tx: mpsc::WeakSender<Command>) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name("keymeter-lease-sweeper".into())
        .spawn(move || loop {
            std::thread::sleep(LEASE_SWEEP_INTERVAL);
            let Some(tx) = tx.upgrade() else {
                return;
            };
            // A full queue means the writer is busy; the next tick will do.
            let _ = tx.try_send(Command::SweepLeases);
        })
        .map(|_| ())
        .map_err(|e| StartError::Other(format!("cannot start lease sweeper thread: {e}")))
}

/// Wakes the writer every `tick` so that a checkpoint due by time is written
/// while no request arrives. Like the lease sweeper, it holds only a weak
/// sender.
fn spawn_checkpoint_ticker(
    tx: mpsc::WeakSender<Command>,
    tick: Duration,
) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name("keymeter-checkpoint-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            let Some(tx) = tx.upgrade() else {
                return;
            };
            // A full queue wakes the writer anyway.
            let _ = tx.try_send(Command::CheckpointTick);
        })
        .map(|_| ())
        .map_err(|e| StartError::Other(format!("cannot start checkpoint ticker thread: {e}")))
}

/// Whether the last record of the log is a checkpoint (an empty log needs none).
fn log_ends_with_checkpoint(log_dir: &std::path::Path, head: Seq) -> Result<bool, StartError> {
    if head == 0 {
        return Ok(true);
    }
    let Some(last) = crate::log::read_range(log_dir, head, head)?.next() else {
        return Ok(false);
    };
    let last = last?;
    Ok(matches!(
        Record::decode(&last.payload),
        Ok(Record::Checkpoint(_))
    ))
}

impl EngineHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        metrics()
            .writer_queue_depth
            .set((self.tx.max_capacity() - self.tx.capacity()) as i64);
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    pub async fn ingest(
        &self,
        items: Vec<Decoded>,
        received_ms: i64,
        origin: &'static str,
    ) -> Result<IngestOutcome, EngineError> {
        self.call(|reply| Command::Ingest {
            items,
            received_ms,
            origin,
            reply,
        })
        .await
    }

    pub async fn reject_body(
        &self,
        rejection: Rejection,
        raw: Vec<u8>,
        received_ms: i64,
        origin: &'static str,
    ) -> Result<Seq, EngineError> {
        self.call(|reply| Command::RejectBody {
            rejection,
            raw,
            received_ms,
            origin,
            reply,
        })
        .await
    }

    pub async fn create_meter(&self, def: MeterDef, audit: Audit) -> Result<MeterDef, EngineError> {
        self.call(|reply| Command::CreateMeter { def, audit, reply })
            .await
    }

    pub async fn delete_meter(&self, slug: String, audit: Audit) -> Result<(), EngineError> {
        self.call(|reply| Command::DeleteMeter { slug, audit, reply })
            .await
    }

    pub async fn create_api_key(
        &self,
        key: ApiKeyRecord,
        audit: Audit,
    ) -> Result<ApiKeyRecord, EngineError> {
        self.call(|reply| Command::CreateApiKey { key, audit, reply })
            .await
    }

    /// Ingests messages of one source partition together with the offset
    /// range they cover, in one log batch. Refused (`Conflict`) unless
    /// `delta.from` is where the stored position of that partition ends (or
    /// the partition has no stored position yet).
    pub async fn ingest_source(
        &self,
        items: Vec<Decoded>,
        offsets: Vec<i64>,
        delta: OffsetDelta,
        received_ms: i64,
    ) -> Result<IngestOutcome, EngineError> {
        assert_eq!(items.len(), offsets.len(), "one offset per item");
        self.call(|reply| Command::SourceBatch {
            items,
            offsets,
            delta,
            received_ms,
            reply,
        })
        .await
    }

    /// Queues a source batch like [`EngineHandle::ingest_source`] and returns
    /// once it is in the writer's queue, with the receiver of its answer.
    /// The queue is FIFO, so batches of one partition queued in offset order
    /// from one task are written in that order, and several can be in flight.
    pub async fn submit_source(
        &self,
        items: Vec<Decoded>,
        offsets: Vec<i64>,
        delta: OffsetDelta,
        received_ms: i64,
    ) -> Result<oneshot::Receiver<Result<IngestOutcome, EngineError>>, EngineError> {
        assert_eq!(items.len(), offsets.len(), "one offset per item");
        let (reply, rx) = oneshot::channel();
        metrics()
            .writer_queue_depth
            .set((self.tx.max_capacity() - self.tx.capacity()) as i64);
        self.tx
            .send(Command::SourceBatch {
                items,
                offsets,
                delta,
                received_ms,
                reply,
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        Ok(rx)
    }

    /// The next offset to consume for every source partition keymeter has
    /// seen, including every batch queued before this call.
    pub async fn source_positions(&self) -> Result<HashMap<(String, i32), i64>, EngineError> {
        self.call(|reply| Command::SourcePositions { reply }).await
    }

    /// Appends the record of an issued license file.
    pub async fn record_license_file(
        &self,
        issue: crate::record::LicenseFileIssue,
        audit: Audit,
    ) -> Result<(), EngineError> {
        self.call(|reply| Command::LicenseFileIssued {
            issue,
            audit,
            reply,
        })
        .await
    }

    /// Stores a product document; `product.version` must be one more than
    /// the stored version (1 to create).
    pub async fn save_product(
        &self,
        product: crate::product::Product,
        audit: Audit,
    ) -> Result<crate::product::Product, EngineError> {
        self.call(|reply| Command::SaveProduct {
            product: Box::new(product),
            audit,
            reply,
        })
        .await
    }

    pub async fn revoke_api_key(&self, id: String, audit: Audit) -> Result<(), EngineError> {
        self.call(|reply| Command::RevokeApiKey { id, audit, reply })
            .await
    }

    pub async fn create_license(
        &self,
        license: License,
        secret: LicenseSecret,
        audit: Audit,
    ) -> Result<Result<License, Refusal>, EngineError> {
        self.call(|reply| Command::CreateLicense {
            license: Box::new(license),
            secret,
            audit,
            reply,
        })
        .await
    }

    pub async fn update_license(
        &self,
        id: String,
        update: LicenseUpdate,
        audit: Audit,
    ) -> Result<Result<License, Refusal>, EngineError> {
        self.call(|reply| Command::UpdateLicense {
            id,
            update: Box::new(update),
            audit,
            reply,
        })
        .await
    }

    pub async fn change_license_status(
        &self,
        id: String,
        action: StatusAction,
        reason: Option<String>,
        audit: Audit,
    ) -> Result<Result<License, Refusal>, EngineError> {
        self.call(|reply| Command::ChangeLicenseStatus {
            id,
            action,
            reason,
            audit,
            reply,
        })
        .await
    }

    pub async fn renew_license(
        &self,
        id: String,
        renewal: Renewal,
        audit: Audit,
    ) -> Result<Result<License, Refusal>, EngineError> {
        self.call(|reply| Command::RenewLicense {
            id,
            renewal,
            audit,
            reply,
        })
        .await
    }

    /// Takes a seat for `fingerprint`, or returns (and renews) the one it
    /// holds. Linearizable: only the writer allocates seats.
    pub async fn checkout_seat(
        &self,
        license_id: String,
        fingerprint: String,
        audit: Audit,
    ) -> Result<Result<SeatLease, Refusal>, EngineError> {
        self.call(|reply| Command::CheckoutSeat {
            license_id,
            fingerprint,
            audit,
            reply,
        })
        .await
    }

    pub async fn heartbeat_seat(
        &self,
        license_id: String,
        seat_id: String,
    ) -> Result<Result<SeatLease, Refusal>, EngineError> {
        self.call(|reply| Command::HeartbeatSeat {
            license_id,
            seat_id,
            reply,
        })
        .await
    }

    pub async fn release_seat(
        &self,
        license_id: String,
        seat_id: String,
        audit: Audit,
    ) -> Result<Result<(), Refusal>, EngineError> {
        self.call(|reply| Command::ReleaseSeat {
            license_id,
            seat_id,
            audit,
            reply,
        })
        .await
    }
}

/// Work handed from the writer to the projector: a durable batch, the parsed
/// events (so they are not parsed twice) and the answers to send once it is
/// applied.
struct Job {
    first_seq: Seq,
    records: Vec<Record>,
    facts: Vec<Option<EventFacts>>,
    answers: Vec<Box<dyn FnOnce() + Send>>,
}

/// Work on its way to the log, in log order.
enum Pending {
    /// A prepared batch.
    Batch { job: Job },
    /// Sign the chain through the current head and append that checkpoint
    /// as a batch of its own, at `seq` (reserved by the writer).
    Checkpoint { seq: Seq },
}

/// Appends prepared batches to the log (one write + fdatasync each) and
/// hands them to the projector. Runs beside the writer so that the next
/// batch is prepared while this one syncs. Signs checkpoints, since it holds
/// the chain hash after every append.
struct Syncer {
    log: Log,
    jobs: std::sync::mpsc::SyncSender<Job>,
    keys: Arc<crate::crypto::Keys>,
    clock: Arc<dyn Clock>,
    anchor: Option<AnchorFile>,
    /// The current batch's records, encoded back to back, and where each
    /// ends; reused from batch to batch.
    encoded: Vec<u8>,
    ends: Vec<usize>,
}

impl Syncer {
    fn run(mut self, pending: std::sync::mpsc::Receiver<Pending>) -> Result<(), StartError> {
        while let Ok(next) = pending.recv() {
            let job = match next {
                Pending::Batch { job } => {
                    self.append(&job)?;
                    job
                }
                Pending::Checkpoint { seq } => self.checkpoint(seq)?,
            };
            self.jobs
                .send(job)
                .map_err(|_| StartError::Other("projector stopped".into()))?;
        }
        Ok(())
    }

    /// Encodes the job's records into the syncer's own buffer (no
    /// allocation per record) and appends them as one batch.
    fn append(&mut self, job: &Job) -> Result<(), StartError> {
        if job.records.is_empty() {
            return Ok(());
        }
        self.encoded.clear();
        self.ends.clear();
        for record in &job.records {
            record.encode_into(&mut self.encoded);
            self.ends.push(self.encoded.len());
        }
        let mut start = 0;
        let payloads: Vec<&[u8]> = self
            .ends
            .iter()
            .map(|&end| {
                let payload = &self.encoded[start..end];
                start = end;
                payload
            })
            .collect();
        let bytes = self.encoded.len();
        let started = Instant::now();
        let range = self.log.append_batch(&payloads)?;
        drop(payloads);
        if self.encoded.capacity() > ENCODED_RETAINED_BYTES {
            self.encoded = Vec::new();
        }
        let records = job.records.len();
        let m = metrics();
        m.log_fsync_seconds.observe(started.elapsed().as_secs_f64());
        m.log_batches_total.inc();
        m.log_records_total.inc_by(records as u64);
        m.log_bytes_total.inc_by(bytes as u64);
        m.log_batch_records.observe(records as f64);
        m.log_head_seq.set(range.end as i64 - 1);
        assert_eq!(
            (range.start, range.end - range.start),
            (job.first_seq, job.records.len() as u64),
            "the log must assign the sequence numbers the writer planned"
        );
        Ok(())
    }

    /// Signs the chain through the head, appends the checkpoint at `seq`,
    /// copies it to the anchor file, and returns its job for the projector.
    fn checkpoint(&mut self, seq: Seq) -> Result<Job, StartError> {
        let covered = self.log.head_seq();
        assert_eq!(covered + 1, seq, "a checkpoint follows what it covers");
        let checkpoint = audit::sign_checkpoint(
            &self.keys,
            covered,
            self.log.head_hash(),
            self.clock.now_ms(),
        );
        let record = Record::Checkpoint(checkpoint.clone());
        let job = Job {
            first_seq: seq,
            records: vec![record.clone()],
            facts: vec![None],
            answers: Vec::new(),
        };
        self.append(&job)?;
        metrics().audit_checkpoints_total.inc();
        if let Some(anchor) = &mut self.anchor {
            // The checkpoint is durable in the log; a missing anchor weakens
            // the evidence but loses nothing, so ingest goes on.
            if let Err(e) = anchor.append(&checkpoint) {
                metrics().audit_anchor_errors_total.inc();
                tracing::error!(
                    error = %e,
                    path = %anchor.path().display(),
                    seq = covered,
                    "cannot append the checkpoint to the audit anchor file"
                );
            }
        }
        tracing::debug!(seq, covered, "checkpoint appended");
        Ok(job)
    }
}

struct Writer {
    next_seq: Seq,
    /// Next offset per source partition, as of `next_seq`.
    positions: HashMap<(String, i32), i64>,
    dedup: DedupIndex,
    meters: MeterSet,
    key_ids: std::collections::HashSet<String>,
    /// Stored version of every product.
    product_versions: HashMap<String, u64>,
    /// Authoritative license and seat state as of `next_seq`.
    licenses: LicenseBook,
    window: TimeWindow,
    batch_records_max: usize,
    dedup_keys_max: usize,
    clock: Arc<dyn Clock>,
    /// Records not yet covered by a checkpoint, and when one is due.
    checkpoints: CheckpointSchedule,
    syncer: std::sync::mpsc::SyncSender<Pending>,
}

/// One batch being assembled by the writer.
struct Batch {
    records: Vec<Record>,
    facts: Vec<Option<EventFacts>>,
    answers: Vec<Box<dyn FnOnce() + Send>>,
}

impl Batch {
    /// Room for `records` records, so that assembling a batch does not
    /// grow (and copy) its vectors.
    fn with_capacity(records: usize) -> Batch {
        Batch {
            records: Vec::with_capacity(records),
            facts: Vec::with_capacity(records),
            answers: Vec::new(),
        }
    }

    fn push(&mut self, record: Record, facts: Option<EventFacts>) {
        self.records.push(record);
        self.facts.push(facts);
    }

    fn answer<T: Send + 'static>(&mut self, reply: Reply<T>, value: Result<T, EngineError>) {
        self.answers.push(Box::new(move || {
            let _ = reply.send(value);
        }));
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) -> Result<(), StartError> {
        let mut snapshot_at = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            let mut records = first.records_max();
            let mut commands = vec![first];
            while records < self.batch_records_max {
                match rx.try_recv() {
                    Ok(c) => {
                        records += c.records_max();
                        commands.push(c);
                    }
                    Err(_) => break,
                }
            }
            metrics().writer_queue_depth.set(rx.len() as i64);
            commands.retain(|c| !matches!(c, Command::CheckpointTick));
            if !commands.is_empty() {
                self.write_batch(commands)?;
            }
            self.checkpoint_if_due(false)?;
            if snapshot_at.elapsed() >= DEDUP_SNAPSHOT_INTERVAL {
                self.save_dedup();
                snapshot_at = Instant::now();
            }
        }
        self.checkpoint_if_due(true)?;
        self.save_dedup();
        tracing::info!(next_seq = self.next_seq, "writer drained its queue");
        Ok(())
    }

    /// Asks the syncer for a checkpoint after everything sent so far, if
    /// one is due (`shutting_down`: if any record is uncovered).
    fn checkpoint_if_due(&mut self, shutting_down: bool) -> Result<(), StartError> {
        if !self.checkpoints.due(Instant::now(), shutting_down) {
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.checkpoints.covered();
        self.syncer
            .send(Pending::Checkpoint { seq })
            .map_err(|_| StartError::Other("log syncer stopped".into()))
    }

    /// A failed snapshot costs only replay time on the next start.
    fn save_dedup(&self) {
        let started = Instant::now();
        match self.dedup.save_snapshot() {
            Ok(()) => tracing::debug!(
                keys = self.dedup.len(),
                ms = started.elapsed().as_millis() as u64,
                "dedup snapshot saved"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot save the dedup snapshot"),
        }
    }

    fn write_batch(&mut self, commands: Vec<Command>) -> Result<(), StartError> {
        let now_ms = self.clock.now_ms();
        let records: usize = commands.iter().map(Command::records_max).sum();
        let mut batch = Batch::with_capacity(records);
        for command in commands {
            self.prepare(command, &mut batch)?;
        }
        let first_seq = self.next_seq;
        self.next_seq += batch.records.len() as u64;
        self.checkpoints
            .appended(batch.records.len() as u64, Instant::now());
        // The batch's identities were claimed as it was assembled, before it
        // is durable, so the next batch (built while this one syncs) sees
        // them. Safe because nothing is answered before the sync, a failed
        // sync stops the engine, and a dedup snapshot that is ahead of the
        // log is discarded on start.
        self.dedup.covered(self.next_seq - 1);
        // Identities older than the window can never meet a duplicate that
        // would be accepted, so the index tracks the window, not all time.
        let horizon_ms = now_ms - self.window.back_ms - self.window.ahead_ms;
        self.dedup.prune(horizon_ms);
        metrics().dedup_keys.set(self.dedup.len() as i64);
        // Even a batch without records goes down the pipeline, so that its
        // answers (say, "all duplicates") wait for every earlier batch.
        let pending = Pending::Batch {
            job: Job {
                first_seq,
                records: batch.records,
                facts: batch.facts,
                answers: batch.answers,
            },
        };
        self.syncer
            .send(pending)
            .map_err(|_| StartError::Other("log syncer stopped".into()))
    }

    fn audit_record(&self, mut audit: Audit) -> Audit {
        audit.at_ms = self.clock.now_ms();
        audit
    }

    /// Refuses `incoming` events (HTTP or Kafka alike) when claiming them
    /// could take the dedup index past its bound.
    fn dedup_room(&self, incoming: usize) -> Result<(), EngineError> {
        if self.dedup.len() + incoming <= self.dedup_keys_max {
            return Ok(());
        }
        metrics()
            .events_rejected_total
            .with_label_values(&["DEDUP_CAPACITY"])
            .inc_by(incoming as u64);
        Err(EngineError::Overloaded(format!(
            "the dedup index holds {} identities, its limit is {}; raise dedup_keys_max or shorten event_time_back",
            self.dedup.len(),
            self.dedup_keys_max
        )))
    }

    /// Turns one command into records of `batch`, with its answer.
    fn prepare(&mut self, command: Command, batch: &mut Batch) -> Result<(), StartError> {
        match command {
            Command::Ingest {
                items,
                received_ms,
                origin,
                reply,
            } => {
                if let Err(full) = self.dedup_room(items.len()) {
                    batch.answer(reply, Err(full));
                    return Ok(());
                }
                let outcome = self.prepare_ingest(items, received_ms, origin, batch)?;
                batch.answer(reply, Ok(outcome));
            }
            Command::SourceBatch {
                items,
                offsets,
                delta,
                received_ms,
                reply,
            } => {
                let key = (delta.topic.clone(), delta.partition);
                let stored = self.positions.get(&key).copied();
                if delta.to < delta.from || stored.is_some_and(|next| next != delta.from) {
                    let msg = format!(
                        "offsets {}..{} of {}/{} do not continue the stored position {:?}",
                        delta.from, delta.to, delta.topic, delta.partition, stored
                    );
                    batch.answer(reply, Err(EngineError::Conflict(msg)));
                    return Ok(());
                }
                if let Err(full) = self.dedup_room(items.len()) {
                    batch.answer(reply, Err(full));
                    return Ok(());
                }
                let first = batch.records.len();
                let outcome = self.prepare_ingest(items, received_ms, "kafka", batch)?;
                // Attach each quarantined message's topic/partition/offset.
                for record in &mut batch.records[first..] {
                    if let Record::Rejected(r) = record {
                        if let Some(i) = r.index {
                            r.position = offsets.get(i as usize).map(|&offset| SourcePosition {
                                topic: delta.topic.clone(),
                                partition: delta.partition,
                                offset,
                            });
                        }
                    }
                }
                self.positions.insert(key, delta.to);
                batch.push(Record::SourceOffsets(delta), None);
                batch.answer(reply, Ok(outcome));
            }
            Command::SourcePositions { reply } => {
                batch.answer(reply, Ok(self.positions.clone()));
            }
            Command::RejectBody {
                rejection,
                raw,
                received_ms,
                origin,
                reply,
            } => {
                metrics()
                    .events_rejected_total
                    .with_label_values(&[rejection.code])
                    .inc();
                batch.push(
                    Record::Rejected(RejectedRecord::new(
                        received_ms,
                        origin,
                        None,
                        rejection.code,
                        &rejection.message,
                        &raw,
                    )),
                    None,
                );
                let seq = self.next_seq + batch.records.len() as u64 - 1;
                batch.answer(reply, Ok(seq));
            }
            Command::CreateMeter { def, audit, reply } => {
                if self.meters.get(&def.slug).is_some() {
                    let msg = format!("meter `{}` already exists", def.slug);
                    batch.answer(reply, Err(EngineError::Conflict(msg)));
                    return Ok(());
                }
                match def.validate() {
                    Err(e) => batch.answer(
                        reply,
                        Err(EngineError::Invalid(Rejection::new(
                            e.code(),
                            e.to_string(),
                        ))),
                    ),
                    Ok(compiled) => {
                        self.meters.insert(compiled);
                        let audit = self.audit_record(audit);
                        batch.push(
                            Record::MeterCreated {
                                meter: crate::record::AsJson::new(def.clone()),
                                audit,
                            },
                            None,
                        );
                        batch.answer(reply, Ok(def));
                    }
                }
            }
            Command::DeleteMeter { slug, audit, reply } => {
                if self.meters.remove(&slug).is_none() {
                    let msg = format!("meter `{slug}` does not exist");
                    batch.answer(reply, Err(EngineError::NotFound(msg)));
                    return Ok(());
                }
                let audit = self.audit_record(audit);
                batch.push(Record::MeterDeleted { slug, audit }, None);
                batch.answer(reply, Ok(()));
            }
            Command::CreateApiKey { key, audit, reply } => {
                if !self.key_ids.insert(key.id.clone()) {
                    let msg = format!("API key id `{}` already exists", key.id);
                    batch.answer(reply, Err(EngineError::Conflict(msg)));
                    return Ok(());
                }
                let audit = self.audit_record(audit);
                batch.push(
                    Record::ApiKeyCreated {
                        key: key.clone(),
                        audit,
                    },
                    None,
                );
                batch.answer(reply, Ok(key));
            }
            Command::LicenseFileIssued {
                issue,
                audit,
                reply,
            } => {
                let audit = self.audit_record(audit);
                batch.push(Record::LicenseFileIssued { issue, audit }, None);
                batch.answer(reply, Ok(()));
            }
            Command::SaveProduct {
                mut product,
                audit,
                reply,
            } => {
                let stored = self.product_versions.get(&product.id).copied();
                let expected = stored.unwrap_or(0) + 1;
                if product.version != expected {
                    let msg = match stored {
                        None => format!("product `{}` does not exist", product.id),
                        Some(_) if product.version == 1 => {
                            format!("product `{}` already exists", product.id)
                        }
                        Some(v) => format!(
                            "product `{}` changed meanwhile (version {v}); read it and retry",
                            product.id
                        ),
                    };
                    let err = if stored.is_none() {
                        EngineError::NotFound(msg)
                    } else {
                        EngineError::Conflict(msg)
                    };
                    batch.answer(reply, Err(err));
                    return Ok(());
                }
                let audit = self.audit_record(audit);
                product.updated_ms = audit.at_ms;
                if product.version == 1 {
                    product.created_ms = audit.at_ms;
                }
                self.product_versions
                    .insert(product.id.clone(), product.version);
                batch.push(
                    Record::ProductSaved {
                        product: crate::record::AsJson::new((*product).clone()),
                        audit,
                    },
                    None,
                );
                batch.answer(reply, Ok(*product));
            }
            Command::RevokeApiKey { id, audit, reply } => {
                if !self.key_ids.remove(&id) {
                    let msg = format!("API key `{id}` does not exist");
                    batch.answer(reply, Err(EngineError::NotFound(msg)));
                    return Ok(());
                }
                let audit = self.audit_record(audit);
                batch.push(Record::ApiKeyRevoked { id, audit }, None);
                batch.answer(reply, Ok(()));
            }
            Command::CreateLicense {
                license,
                secret,
                audit,
                reply,
            } => {
                let outcome = self.create_license(*license, secret, audit, batch);
                batch.answer(reply, Ok(outcome));
            }
            Command::UpdateLicense {
                id,
                update,
                audit,
                reply,
            } => {
                let outcome = self.update_license(&id, *update, audit, batch);
                batch.answer(reply, Ok(outcome));
            }
            Command::ChangeLicenseStatus {
                id,
                action,
                reason,
                audit,
                reply,
            } => {
                let outcome = self.change_license_status(&id, action, reason, audit, batch);
                batch.answer(reply, Ok(outcome));
            }
            Command::RenewLicense {
                id,
                renewal,
                audit,
                reply,
            } => {
                let outcome = self.renew_license(&id, renewal, audit, batch);
                batch.answer(reply, Ok(outcome));
            }
            Command::CheckoutSeat {
                license_id,
                fingerprint,
                audit,
                reply,
            } => {
                let outcome = self.checkout_seat(&license_id, fingerprint, audit, batch);
                seat_metric("checkout", &outcome);
                batch.answer(reply, Ok(outcome));
            }
            Command::HeartbeatSeat {
                license_id,
                seat_id,
                reply,
            } => {
                let outcome = self.heartbeat_seat(&license_id, &seat_id, batch);
                seat_metric("heartbeat", &outcome);
                batch.answer(reply, Ok(outcome));
            }
            Command::ReleaseSeat {
                license_id,
                seat_id,
                audit,
                reply,
            } => {
                let outcome = self.release_seat(&license_id, &seat_id, audit, batch);
                seat_metric("release", &outcome);
                batch.answer(reply, Ok(outcome));
            }
            Command::SweepLeases => {
                let now_ms = self.clock.now_ms();
                let lapsed = self.licenses.lapsed_leases(now_ms);
                for (license_id, seat_id) in lapsed.into_iter().take(LEASE_SWEEP_RECORDS_MAX) {
                    self.push_license_record(
                        Record::SeatLeaseExpired {
                            license_id,
                            seat_id,
                            at_ms: now_ms,
                        },
                        batch,
                    );
                }
            }
            // Handled in `run`, between batches.
            Command::CheckpointTick => {}
        }
        Ok(())
    }

    /// Logs a license or seat record and applies it to the writer's book, so
    /// later commands of the same batch see it.
    fn push_license_record(&mut self, record: Record, batch: &mut Batch) {
        if let Record::SeatLeaseExpired { .. } = record {
            metrics()
                .seat_operations_total
                .with_label_values(&["lease_expired", "ok"])
                .inc();
        }
        self.licenses.apply(&record);
        batch.push(record, None);
    }

    fn create_license(
        &mut self,
        license: License,
        secret: LicenseSecret,
        audit: Audit,
        batch: &mut Batch,
    ) -> Result<License, Refusal> {
        license.validate()?;
        if self.licenses.get(&license.id).is_some() || self.licenses.contains_digest(&secret.lookup)
        {
            return Err(Refusal::new(
                "CONFLICT",
                format!("license `{}` already exists", license.id),
            ));
        }
        let audit = self.audit_record(audit);
        let record = Record::LicenseCreated {
            license: crate::record::AsJson::new(license.clone()),
            secret,
            audit,
        };
        self.push_license_record(record, batch);
        Ok(license)
    }

    fn license(&self, id: &str) -> Result<&License, Refusal> {
        self.licenses
            .get(id)
            .map(|s| &s.license)
            .ok_or_else(|| Refusal::new("NOT_FOUND", format!("license `{id}` does not exist")))
    }

    fn updated_license(&self, id: &str) -> License {
        self.licenses.get(id).expect("just changed").license.clone()
    }

    fn update_license(
        &mut self,
        id: &str,
        update: LicenseUpdate,
        audit: Audit,
        batch: &mut Batch,
    ) -> Result<License, Refusal> {
        let now = crate::license::utc_ms(self.clock.now_ms());
        let license = self.license(id)?.updated(update, now)?;
        let audit = self.audit_record(audit);
        let record = Record::LicenseChanged {
            license: crate::record::AsJson::new(license.clone()),
            audit,
        };
        self.push_license_record(record, batch);
        Ok(license)
    }

    fn change_license_status(
        &mut self,
        id: &str,
        action: StatusAction,
        reason: Option<String>,
        audit: Audit,
        batch: &mut Batch,
    ) -> Result<License, Refusal> {
        crate::license::model::transition(self.license(id)?.status, action)?;
        let audit = self.audit_record(audit);
        let id = id.to_owned();
        let record = match action {
            StatusAction::Suspend => Record::LicenseSuspended {
                id: id.clone(),
                reason,
                audit,
            },
            StatusAction::Reinstate => Record::LicenseReinstated {
                id: id.clone(),
                audit,
            },
            StatusAction::Revoke => Record::LicenseRevoked {
                id: id.clone(),
                reason,
                audit,
            },
        };
        self.push_license_record(record, batch);
        Ok(self.updated_license(&id))
    }

    fn renew_license(
        &mut self,
        id: &str,
        renewal: Renewal,
        audit: Audit,
        batch: &mut Batch,
    ) -> Result<License, Refusal> {
        let now_ms = self.clock.now_ms();
        let license = self.license(id)?;
        if license.status == crate::license::Status::Revoked {
            return Err(Refusal::new(
                "REVOKED",
                "a revoked license cannot be renewed",
            ));
        }
        let expires_at_ms = match renewal {
            Renewal::Until(t) => t.map(|t| t.timestamp_millis()),
            Renewal::Extend(s) => {
                let base = license
                    .expires_at
                    .map_or(now_ms, |e| e.timestamp_millis().max(now_ms));
                Some(base.saturating_add((s as i64).saturating_mul(1000)))
            }
        };
        if expires_at_ms.is_some_and(|e| e <= license.starts_at.timestamp_millis()) {
            return Err(Refusal::new(
                "INVALID_LICENSE",
                "the new expiry must be after starts_at",
            ));
        }
        let audit = self.audit_record(audit);
        let record = Record::LicenseRenewed {
            id: id.to_owned(),
            expires_at_ms,
            audit,
        };
        self.push_license_record(record, batch);
        Ok(self.updated_license(id))
    }

    /// The license must be usable now for seat operations.
    fn seat_license(&self, id: &str, now_ms: i64) -> Result<crate::license::SeatPolicy, Refusal> {
        let license = self.license(id)?;
        if let Err((code, detail)) =
            crate::license::decide::availability(license, crate::license::utc_ms(now_ms))
        {
            return Err(Refusal::new(code.as_str(), detail));
        }
        license.policy.seats.clone().ok_or_else(|| {
            Refusal::new(
                "NO_SEAT_POLICY",
                format!("license `{id}` has no seat policy"),
            )
        })
    }

    fn reclaim_lapsed(&mut self, license_id: &str, now_ms: i64, batch: &mut Batch) {
        let lapsed = self
            .licenses
            .get(license_id)
            .map(|s| s.seats.lapsed(now_ms))
            .unwrap_or_default();
        for seat_id in lapsed {
            let record = Record::SeatLeaseExpired {
                license_id: license_id.to_owned(),
                seat_id,
                at_ms: now_ms,
            };
            self.push_license_record(record, batch);
        }
    }

    fn checkout_seat(
        &mut self,
        license_id: &str,
        fingerprint: String,
        audit: Audit,
        batch: &mut Batch,
    ) -> Result<SeatLease, Refusal> {
        let now_ms = self.clock.now_ms();
        let policy = self.seat_license(license_id, now_ms)?;
        self.reclaim_lapsed(license_id, now_ms, batch);
        let seats = &self.licenses.get(license_id).expect("checked").seats;
        match seats.plan_checkout(&policy, &fingerprint, now_ms) {
            CheckoutPlan::Full => Err(Refusal::new(
                "SEAT_LIMIT_EXCEEDED",
                format!("all {} seats are taken", policy.max),
            )),
            CheckoutPlan::Existing { seat_id, renew_to } => {
                if renew_to.is_some() {
                    let record = Record::SeatHeartbeat {
                        license_id: license_id.to_owned(),
                        seat_id: seat_id.clone(),
                        at_ms: now_ms,
                        expires_ms: renew_to,
                    };
                    self.push_license_record(record, batch);
                }
                let seat = self
                    .licenses
                    .get(license_id)
                    .expect("checked")
                    .seats
                    .get(&seat_id);
                Ok(SeatLease {
                    seat_id,
                    fingerprint,
                    expires_ms: seat.and_then(|s| s.expires_ms),
                    new: false,
                })
            }
            CheckoutPlan::New { expires_ms } => {
                let seat_id = format!("seat_{}", crate::auth::generate_id());
                let audit = self.audit_record(audit);
                let record = Record::SeatCheckedOut {
                    license_id: license_id.to_owned(),
                    seat: SeatRecord {
                        seat_id: seat_id.clone(),
                        fingerprint: fingerprint.clone(),
                        at_ms: now_ms,
                        expires_ms,
                    },
                    audit,
                };
                self.push_license_record(record, batch);
                Ok(SeatLease {
                    seat_id,
                    fingerprint,
                    expires_ms,
                    new: true,
                })
            }
        }
    }

    fn heartbeat_seat(
        &mut self,
        license_id: &str,
        seat_id: &str,
        batch: &mut Batch,
    ) -> Result<SeatLease, Refusal> {
        let now_ms = self.clock.now_ms();
        let policy = self.seat_license(license_id, now_ms)?;
        let seat = self
            .licenses
            .get(license_id)
            .and_then(|s| s.seats.get(seat_id))
            .cloned()
            .ok_or_else(|| Refusal::new("NO_SEAT", format!("seat `{seat_id}` does not exist")))?;
        if !seat.is_live(now_ms) {
            self.reclaim_lapsed(license_id, now_ms, batch);
            return Err(Refusal::new(
                "NO_SEAT",
                format!("the lease of seat `{seat_id}` lapsed; check out again"),
            ));
        }
        let expires_ms = crate::license::SeatTable::renewal(&policy, now_ms);
        let record = Record::SeatHeartbeat {
            license_id: license_id.to_owned(),
            seat_id: seat_id.to_owned(),
            at_ms: now_ms,
            expires_ms,
        };
        self.push_license_record(record, batch);
        Ok(SeatLease {
            seat_id: seat.seat_id,
            fingerprint: seat.fingerprint,
            expires_ms,
            new: false,
        })
    }

    fn release_seat(
        &mut self,
        license_id: &str,
        seat_id: &str,
        audit: Audit,
        batch: &mut Batch,
    ) -> Result<(), Refusal> {
        self.license(license_id)?;
        if self
            .licenses
            .get(license_id)
            .and_then(|s| s.seats.get(seat_id))
            .is_none()
        {
            return Err(Refusal::new(
                "NO_SEAT",
                format!("seat `{seat_id}` does not exist"),
            ));
        }
        let audit = self.audit_record(audit);
        let record = Record::SeatReleased {
            license_id: license_id.to_owned(),
            seat_id: seat_id.to_owned(),
            audit,
        };
        self.push_license_record(record, batch);
        Ok(())
    }

    fn prepare_ingest(
        &mut self,
        items: Vec<Decoded>,
        received_ms: i64,
        origin: &'static str,
        batch: &mut Batch,
    ) -> Result<IngestOutcome, StartError> {
        let m = metrics();
        let mut outcome = IngestOutcome::default();
        let base_seq = self.next_seq;
        for (index, item) in items.into_iter().enumerate() {
            let index = index as u32;
            let (rejection, raw) = match item {
                Decoded::Invalid { rejection, raw } => (rejection, raw),
                Decoded::Valid(event) => match self.check_meters(&event) {
                    Err(rejection) => (rejection, event.raw.into_bytes()),
                    Ok(observations) => {
                        let key = event.key;
                        if !self.dedup.claim_one(key, event.time_ms) {
                            outcome.duplicates += 1;
                            continue;
                        }
                        let facts = EventFacts {
                            ty: event.ty,
                            subject: event.subject,
                            time_ms: event.time_ms,
                            data: None,
                            observations: Some(observations),
                        };
                        batch.push(
                            Record::Event(EventRecord {
                                received_ms,
                                time_ms: event.time_ms,
                                raw: event.raw,
                            }),
                            Some(facts),
                        );
                        outcome.accepted += 1;
                        outcome.last_seq = base_seq + batch.records.len() as u64 - 1;
                        continue;
                    }
                },
            };
            m.events_rejected_total
                .with_label_values(&[rejection.code])
                .inc();
            batch.push(
                Record::Rejected(RejectedRecord::new(
                    received_ms,
                    origin,
                    Some(index),
                    rejection.code,
                    &rejection.message,
                    &raw,
                )),
                None,
            );
            outcome.last_seq = base_seq + batch.records.len() as u64 - 1;
            outcome.rejected.push(RejectedItem {
                index,
                code: rejection.code.to_owned(),
                message: rejection.message,
            });
        }
        m.events_accepted_total.inc_by(u64::from(outcome.accepted));
        m.events_duplicate_total
            .inc_by(u64::from(outcome.duplicates));
        Ok(outcome)
    }

    /// Every meter of the event's type must be able to read it; what they
    /// read is handed to the projector so it is not extracted twice.
    fn check_meters(
        &self,
        event: &crate::event::UsageEvent,
    ) -> Result<Vec<crate::meter::Observation>, Rejection> {
        let mut observations = Vec::new();
        for meter in self.meters.for_type(&event.ty) {
            match meter.extract(event.data()) {
                Ok(obs) => observations.push(obs),
                Err(e) => {
                    return Err(Rejection::new(
                        e.code(),
                        format!("meter `{}`: {e}", meter.def().slug),
                    ))
                }
            }
        }
        Ok(observations)
    }
}

struct Projector {
    counters: Counters,
    docs: Documents,
    licenses: Licenses,
    shared: Arc<Shared>,
}

fn seat_metric<T>(op: &str, outcome: &Result<T, Refusal>) {
    let result = match outcome {
        Ok(_) => "ok",
        Err(r) => r.code,
    };
    metrics()
        .seat_operations_total
        .with_label_values(&[op, result])
        .inc();
}

impl Projector {
    fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) -> Result<(), StartError> {
        let mut flushed_at = Instant::now();
        loop {
            let wait = FLUSH_INTERVAL.saturating_sub(flushed_at.elapsed());
            match jobs.recv_timeout(wait) {
                Ok(job) => self.apply(job)?,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if flushed_at.elapsed() >= FLUSH_INTERVAL
                || self.counters.overlay_len() > OVERLAY_STATES_MAX
            {
                self.flush()?;
                flushed_at = Instant::now();
            }
        }
        self.flush()?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StartError> {
        {
            // Usage cache entries read sled + overlay under this lock.
            let _usage = self.shared.usage.lock();
            self.counters.flush()?;
        }
        self.docs.flush()?;
        self.licenses.flush()?;
        let head = self.shared.head_seq.load(Ordering::SeqCst);
        let mut progress = vec![
            ("counters", self.counters.flushed()),
            ("licenses", self.licenses.applied()),
        ];
        progress.extend(self.docs.applied());
        report_progress(head, &progress);
        Ok(())
    }

    fn apply(&mut self, job: Job) -> Result<(), StartError> {
        if job.records.is_empty() {
            for answer in job.answers {
                answer();
            }
            return Ok(());
        }
        let applied: Vec<Applied<'_>> = job
            .records
            .iter()
            .zip(&job.facts)
            .enumerate()
            .map(|(i, (record, facts))| Applied {
                seq: job.first_seq + i as u64,
                record,
                facts: facts.as_ref(),
            })
            .collect();
        let last = job.first_seq + job.records.len() as u64 - 1;
        {
            let mut usage = self.shared.usage.lock();
            self.counters.apply(&applied)?;
            usage.observe(&applied, self.counters.meters());
        }
        let changed = self.licenses.apply(&applied)?;
        if !changed.is_empty() {
            self.shared.licenses.publish(self.licenses.book(), &changed);
        }
        let changed_docs = self.docs.apply(&applied)?;
        if changed_docs.products {
            let ring = crate::product::ProductRing::build(
                &self.shared.store.products()?,
                &self.shared.crypto,
            )
            .map_err(StartError::Other)?;
            crate::product::publish(&self.shared.products, ring);
        }
        if changed_docs.meters {
            self.shared
                .meters
                .store(Arc::new(self.counters.meters().clone()));
        }
        if changed_docs.keys {
            let keys = KeyRing::from_records(self.shared.store.api_keys()?);
            self.shared.keys.store(Arc::new(keys));
        }
        self.shared.head_seq.store(last, Ordering::SeqCst);
        self.shared.applied_seq.store(last, Ordering::SeqCst);
        for answer in job.answers {
            answer();
        }
        Ok(())
    }
}

/// Drops every projection and rebuilds it from the log, reporting progress.
pub fn rebuild(cfg: &Config, progress: impl Fn(Seq, Seq)) -> Result<Seq, StartError> {
    let report = crate::log::verify(&cfg.log_dir())?;
    let head = report.head_seq;
    let store = Store::open(&cfg.state_dir())?;
    store.clear_all()?;
    let mut counters = Counters::open(&store, &cfg.log_dir())?;
    let mut docs = Documents::open(&store)?;
    match std::fs::remove_file(cfg.state_dir().join("dedup.snapshot")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StartError::Other(format!(
                "cannot remove dedup snapshot: {e}"
            )))
        }
        _ => {}
    }
    let mut dedup = DedupIndex::open(&cfg.state_dir(), usize::MAX)?;
    let mut licenses = Licenses::open(&store)?;
    projection::replay_log(&cfg.log_dir(), 1, head, 10_000, |chunk| {
        counters.apply(chunk)?;
        docs.apply(chunk)?;
        dedup.apply(chunk)?;
        licenses.apply(chunk)?;
        if counters.overlay_len() > OVERLAY_STATES_MAX {
            counters.flush()?;
        }
        progress(chunk.last().map(|a| a.seq).unwrap_or(0), head);
        Ok(())
    })?;
    counters.flush()?;
    docs.flush()?;
    licenses.flush()?;
    dedup
        .save_snapshot()
        .map_err(|e| StartError::Other(format!("cannot save dedup snapshot: {e}")))?;
    store.db.flush().map_err(ProjectionError::from)?;
    Ok(head)
}
