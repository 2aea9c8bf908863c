//! Starting the engine: recovery of the log, catch-up of every projection,
//! the key checks, the stages' wiring and the first admin key; and
//! `keymeter replay`, which rebuilds every projection from the log.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::batch::{Job, Pending};
use super::decide::WriterState;
use super::handle::{Command, EngineHandle};
use super::projector::Projector;
use super::protocol::{CreateApiKey, StartError};
use super::syncer::Syncer;
use super::writer::{self, Writer, LEASE_SWEEP_INTERVAL};
use super::{report_progress, spawn_stage, Engine, Shared, Started};
use crate::api_keys;
use crate::audit::{AnchorFile, CheckpointSchedule};
use crate::clock::Clock;
use crate::config::Config;
use crate::license::LicenseBook;
use crate::log::{Log, LogConfig, LogDir, Seq};
use crate::meter::{MeterSet, UniqueKey};
use crate::projection::dedup::DedupIndex;
use crate::projection::{self, OpenContext, Projection, ProjectionError, Readers, Registry, Store};
use crate::record::{ApiKeyRecord, Audit, Record};
use crate::scope::Scope;
use crate::source::checkpoint::SourceCheckpoint;

/// Records per chunk when replaying the log into the projections.
const REPLAY_CHUNK_RECORDS: usize = 10_000;

/// The projections of a registry, opened from their stores, and the
/// writer's dedup index, which catch-up feeds from the same log.
struct Projections {
    store: Store,
    registry: Registry,
    readers: Readers,
    unique_key: UniqueKey,
    list: Vec<Box<dyn Projection>>,
    dedup: DedupIndex,
}

impl Projections {
    fn open(
        cfg: &Config,
        registry: &Registry,
        readers: Readers,
        unique_key: &UniqueKey,
        dedup: DedupIndex,
    ) -> Result<Projections, StartError> {
        let store = Store::open_with_cache(&cfg.state_dir(), (cfg.store_cache_mb as u64) << 20)?;
        let list = open_list(cfg, &store, registry, &readers, unique_key)?;
        Ok(Projections {
            list,
            dedup,
            store,
            registry: registry.clone(),
            readers,
            unique_key: unique_key.clone(),
        })
    }

    /// Rebuilds from the log, alone, each projection whose stored state
    /// cannot be continued ([`Projection::stale`]): its trees are emptied,
    /// so catch-up replays the whole log into it.
    fn rebuild_stale(&mut self, cfg: &Config) -> Result<(), StartError> {
        let stale: Vec<(&'static str, String)> = self
            .list
            .iter()
            .filter_map(|p| Some((p.name(), p.stale()?)))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        self.list.clear();
        for (name, reason) in &stale {
            tracing::warn!(
                projection = name,
                reason = reason.as_str(),
                "the projection's stored state cannot be continued; rebuilding it from the log"
            );
            self.registry.clear_projection(&self.store, name)?;
        }
        self.list = open_list(
            cfg,
            &self.store,
            &self.registry,
            &self.readers,
            &self.unique_key,
        )?;
        match self.list.iter().find_map(|p| Some((p.name(), p.stale()?))) {
            Some((name, reason)) => Err(StartError::Other(format!(
                "projection {name} is still stale after being emptied: {reason}"
            ))),
            None => Ok(()),
        }
    }

    /// Each projection's name and applied sequence number.
    fn applied(&self) -> Vec<(&'static str, Seq)> {
        let mut out: Vec<_> = self.list.iter().map(|p| (p.name(), p.applied())).collect();
        out.push(("dedup", self.dedup.applied()));
        out
    }

    /// Deletes every projection's state.
    fn clear(mut self, cfg: &Config, dedup_keys_max: usize) -> Result<Projections, StartError> {
        self.list.clear();
        self.registry.clear(&self.store)?;
        remove_dedup_snapshot(cfg)?;
        self.list = open_list(
            cfg,
            &self.store,
            &self.registry,
            &self.readers,
            &self.unique_key,
        )?;
        self.dedup = DedupIndex::open(&cfg.state_dir(), dedup_keys_max)?;
        Ok(self)
    }

    /// Replays the log from the lowest checkpoint through `head` (each
    /// projection skips what it has) and settles. Nothing is published.
    fn catch_up(
        &mut self,
        cfg: &Config,
        head: Seq,
        progress: impl Fn(Seq, Seq),
    ) -> Result<(), StartError> {
        let from = self.applied().iter().map(|(_, s)| *s).min().unwrap_or(0) + 1;
        for p in &mut self.list {
            p.catching_up(true);
        }
        projection::replay_log(&cfg.log(), from, head, REPLAY_CHUNK_RECORDS, |chunk| {
            for p in &mut self.list {
                p.apply(chunk)?;
                if p.wants_flush() {
                    p.flush()?;
                }
            }
            self.dedup.apply(chunk)?;
            progress(chunk.last().map(|a| a.seq).unwrap_or(0), head);
            Ok(())
        })?;
        // What is caught up is complete: deferred work (a new meter's
        // backfill) finishes before serving or before replay returns.
        for p in &mut self.list {
            p.settle()?;
            p.catching_up(false);
        }
        Ok(())
    }

    /// Every projection hands readers its state.
    fn publish(&mut self) -> Result<(), StartError> {
        for p in &mut self.list {
            p.publish()?;
        }
        Ok(())
    }
}

fn open_list(
    cfg: &Config,
    store: &Store,
    registry: &Registry,
    readers: &Readers,
    unique_key: &UniqueKey,
) -> Result<Vec<Box<dyn Projection>>, StartError> {
    let ctx = OpenContext {
        store,
        log: &cfg.log(),
        readers,
        unique_key,
    };
    Ok(registry.open(&ctx)?)
}

fn remove_dedup_snapshot(cfg: &Config) -> Result<(), StartError> {
    match std::fs::remove_file(cfg.state_dir().join("dedup.snapshot")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StartError::Other(format!(
            "cannot remove dedup snapshot: {e}"
        ))),
        _ => Ok(()),
    }
}

/// Opens the projections and brings them to the log head. Projections that
/// describe records the log no longer has (a restored backup, a lost log
/// tail) start over from the log, which is the truth.
fn open_projections(
    cfg: &Config,
    registry: &Registry,
    readers: Readers,
    unique_key: &UniqueKey,
    (head, dedup): (Seq, DedupIndex),
) -> Result<(Projections, u64), StartError> {
    let mut p = Projections::open(cfg, registry, readers, unique_key, dedup)?;
    if let Some((name, seq)) = p.applied().into_iter().find(|(_, seq)| *seq > head) {
        tracing::warn!(
            projection = name,
            applied_seq = seq,
            log_head_seq = head,
            "projections are ahead of the log; rebuilding them from the log"
        );
        p = p.clear(cfg, cfg.dedup_keys_max)?;
    }
    p.rebuild_stale(cfg)?;
    let from = p.applied().iter().map(|(_, s)| *s).min().unwrap_or(0) + 1;
    let replayed = head.saturating_sub(from - 1);
    if replayed > 0 {
        tracing::info!(from, to = head, "catching projections up with the log");
    }
    p.catch_up(cfg, head, |_, _| {})?;
    Ok((p, replayed))
}

impl Engine {
    /// Opens the log (recovering a torn tail), catches every projection up
    /// with the log, starts the writer, syncer and projector, and creates
    /// the first admin key if there is none.
    pub fn open(cfg: &Config, clock: Arc<dyn Clock>) -> Result<Started, StartError> {
        Engine::open_with(cfg, clock, &Registry::standard())
    }

    /// [`Engine::open`] with the projections of `registry`.
    pub fn open_with(
        cfg: &Config,
        clock: Arc<dyn Clock>,
        registry: &Registry,
    ) -> Result<Started, StartError> {
        let ((log, recovery), dedup) = open_log_and_dedup(cfg)?;
        check_data_format(cfg)?;
        let head = log.head_seq();
        let crypto = Arc::new(super::load_keys(cfg, head == 0)?);
        let readers = Readers::new(Some(crypto.clone()));
        let (mut projections, replayed_records) =
            open_projections(cfg, registry, readers, crypto.unique_key(), (head, dedup))?;
        let licenses = LicenseBook::from_states(projections.store.licenses()?);
        super::check_keys_open_secrets(&crypto, &licenses)?;
        projections.publish()?;
        let shared = shared(cfg, &projections, clock.clone(), head);
        report_progress(head, &projections.applied());
        let engine = start_stages(cfg, log, projections, licenses, shared, clock)?;
        let m = crate::metrics::metrics();
        if cfg.log_storage.is_none() {
            m.watch_data_dir(&cfg.data_dir, &cfg.log_dir());
        }
        m.ready.set(1);
        let bootstrap_key = engine.bootstrap(cfg, head)?;
        Ok(Started {
            engine,
            bootstrap_key,
            recovery,
            replayed_records,
        })
    }

    /// Creates the first admin key, only into a log that never held an API
    /// key: once every key is revoked, a bootstrap key left in the
    /// environment must not bring one back. `--recover-admin-key` (a flag,
    /// never a variable or a file setting) is the operator's deliberate way
    /// back in.
    fn bootstrap(&self, cfg: &Config, head: Seq) -> Result<Option<String>, StartError> {
        let handle = self.handle();
        let keys = handle.shared.keys.load();
        if keys.is_empty() && !cfg.recover_admin_key && log_ever_held_a_key(cfg, head)? {
            tracing::warn!(
                "every API key has been revoked; no bootstrap admin key is created into a log \
                 that held keys. Start once with --recover-admin-key to create a new admin key"
            );
            return Ok(None);
        }
        if !keys.is_empty() {
            if let Some(k) = &cfg.bootstrap_admin_key {
                if keys.lookup(k.expose()).is_none() {
                    tracing::warn!(
                        "bootstrap admin key ignored: API keys already exist; manage keys through /api/v1/api-keys"
                    );
                }
            }
            return Ok(None);
        }
        let (id, key, generated) = match &cfg.bootstrap_admin_key {
            Some(k) => (api_keys::generate_id(), k.expose().to_owned(), false),
            None => {
                let (id, key) = api_keys::generate_key();
                (id, key, true)
            }
        };
        let now = handle.shared.clock.now_ms();
        let key_record = ApiKeyRecord {
            id: id.into(),
            name: "bootstrap-admin".into(),
            scopes: vec![Scope::Admin],
            key_sha256: api_keys::key_digest(&key),
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
        let request = CreateApiKey {
            key: key_record,
            product: None,
            audit,
        };
        rt.block_on(handle.send(request))
            .map_err(|e| StartError::Other(format!("cannot create the bootstrap key: {e}")))?;
        Ok(generated.then_some(key))
    }
}

/// Opens the log (its full check) while another thread loads the dedup
/// index's snapshot: the two are the bulk of a start, and independent.
/// Refuses a data directory from a newer release (see
/// [`crate::data_format`]); runs with the log's lock held. A log on a
/// simulated disk has no directory to mark.
fn check_data_format(cfg: &Config) -> Result<(), StartError> {
    if cfg.log_storage.is_some() {
        return Ok(());
    }
    crate::data_format::check_and_mark(&cfg.data_dir).map_err(StartError::Other)
}

fn open_log_and_dedup(
    cfg: &Config,
) -> Result<((Log, crate::log::Recovery), DedupIndex), StartError> {
    let log_cfg = LogConfig {
        segment_bytes_max: cfg.segment_bytes_max,
    };
    std::thread::scope(|scope| {
        let dedup = std::thread::Builder::new()
            .name("keymeter-dedup-load".into())
            .spawn_scoped(scope, || {
                DedupIndex::open(&cfg.state_dir(), cfg.dedup_keys_max)
            })
            .map_err(|e| StartError::Other(format!("cannot start the dedup loader: {e}")))?;
        let log = Log::open_in(&cfg.log(), log_cfg);
        let dedup = dedup
            .join()
            .expect("loading the dedup index does not panic");
        Ok((log?, dedup?))
    })
}

/// Whether records `1..=head` include an API key's creation. Read only when
/// no key is live: on a fresh log (empty) or after every key was revoked.
fn log_ever_held_a_key(cfg: &Config, head: Seq) -> Result<bool, StartError> {
    let cannot = |e: String| StartError::Other(format!("cannot read the log for API keys: {e}"));
    for entry in cfg
        .log()
        .read_range(1, head)
        .map_err(|e| cannot(e.to_string()))?
    {
        let entry = entry.map_err(|e| cannot(e.to_string()))?;
        let record = Record::decode(&entry.payload).map_err(|e| cannot(e.to_string()))?;
        if matches!(record, Record::ApiKeyCreated { .. }) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The state readers use, as of the log head.
fn shared(cfg: &Config, p: &Projections, clock: Arc<dyn Clock>, head: Seq) -> Arc<Shared> {
    let r = p.readers.clone();
    Arc::new(Shared {
        store: p.store.clone(),
        meters: r.meters,
        keys: r.keys,
        overlay: r.overlay,
        backfills: r.backfills,
        head_seq: AtomicU64::new(head),
        applied_seq: AtomicU64::new(head),
        failed: AtomicBool::new(false),
        clock,
        window: cfg.time_window(),
        request_events_max: cfg.request_events_max,
        licenses: r.licenses,
        usage: r.usage,
        crypto: r.crypto.expect("an engine opens with its keys"),
        products: r.products,
        billing: r.billing,
        billing_settings: cfg
            .billing
            .settings()
            .expect("validated with the configuration"),
        watermarks: Arc::new(super::Watermarks::new(usize::from(cfg.kafka.is_some()))),
    })
}

/// The writer's state as of the log head.
fn writer_state(
    cfg: &Config,
    store: &Store,
    licenses: LicenseBook,
    dedup: DedupIndex,
    unique_key: &UniqueKey,
    head: Seq,
) -> Result<WriterState, StartError> {
    let meters = MeterSet::from_defs(store.meter_defs()?)
        .map_err(|e| StartError::Other(format!("stored meter is invalid: {e}")))?;
    Ok(WriterState {
        next_seq: head + 1,
        sources: SourceCheckpoint::from_positions(store.source_positions()?),
        dedup,
        meters,
        unique_key: unique_key.clone(),
        key_ids: store.api_keys()?.into_iter().map(|k| k.id).collect(),
        products: store
            .products()?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect(),
        licenses,
        plans: crate::license::plan::PlanBook::from_plans(store.plans()?),
        migrations: crate::projection::plans::migration_book(&store.migrations)?,
        window: cfg.time_window(),
        dedup_keys_max: cfg.dedup_keys_max,
        dedup_tenant_keys_max: cfg.dedup_keys_max * usize::from(cfg.dedup_tenant_share_pct) / 100,
        billing: super::billing::billing_writer(cfg, store)?,
    })
}

/// Wires writer → syncer → projector with bounded queues and starts them,
/// with the tickers that wake the writer.
fn start_stages(
    cfg: &Config,
    log: Log,
    p: Projections,
    licenses: LicenseBook,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
) -> Result<Engine, StartError> {
    let head = log.head_seq();
    let mut checkpoints =
        CheckpointSchedule::new(cfg.audit_checkpoint_records, cfg.audit_checkpoint_interval);
    if !log_ends_with_checkpoint(&cfg.log(), head)? {
        // Records of an earlier run (a crash, or a log from before
        // checkpoints) are signed at the first chance, so the unsigned
        // stretches of several crashes never add up (`audit verify` bounds
        // that stretch).
        checkpoints.appended(cfg.audit_checkpoint_records, Instant::now());
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
        state: writer_state(
            cfg,
            &p.store,
            licenses,
            p.dedup,
            shared.crypto.unique_key(),
            head,
        )?,
        batch_records_max: cfg.batch_records_max,
        clock,
        checkpoints,
        syncer: pending_tx,
        dedup_saves: Default::default(),
    };
    let projector = Projector {
        projections: p.list,
        shared: shared.clone(),
    };
    writer::spawn_ticker(
        "lease-sweeper",
        tx.downgrade(),
        LEASE_SWEEP_INTERVAL,
        writer::sweep_leases,
    )?;
    writer::spawn_ticker("checkpoint-ticker", tx.downgrade(), checkpoint_tick, || {
        Command::CheckpointTick
    })?;
    super::billing::spawn_closer(
        tx.downgrade(),
        cfg.billing.close_interval,
        shared.clock.clone(),
        shared.watermarks.clone(),
    )?;
    let writer = spawn_stage("writer", &shared, move || writer.run(rx))?;
    let syncer = spawn_stage("syncer", &shared, move || syncer.run(pending_rx))?;
    let projector = spawn_stage("projector", &shared, move || projector.run(jobs_rx))?;
    Ok(Engine {
        handle: Some(EngineHandle { tx, shared }),
        writer: Some(writer),
        syncer: Some(syncer),
        projector: Some(projector),
    })
}

/// Whether the last record of the log is a checkpoint (an empty log needs none).
fn log_ends_with_checkpoint(log: &LogDir, head: Seq) -> Result<bool, StartError> {
    if head == 0 {
        return Ok(true);
    }
    let Some(last) = log.read_range(head, head)?.next() else {
        return Ok(false);
    };
    let last = last?;
    Ok(matches!(
        Record::decode(&last.payload),
        Ok(Record::Checkpoint(_))
    ))
}

/// Drops every projection and rebuilds it from the log, reporting progress.
pub fn rebuild(cfg: &Config, progress: impl Fn(Seq, Seq)) -> Result<Seq, StartError> {
    rebuild_with(cfg, &Registry::standard(), progress)
}

/// [`rebuild`] for the projections of `registry`.
pub fn rebuild_with(
    cfg: &Config,
    registry: &Registry,
    progress: impl Fn(Seq, Seq),
) -> Result<Seq, StartError> {
    let report = cfg.log().verify()?;
    check_data_format(cfg)?;
    let head = report.head_seq;
    // The keys a start would use: UNIQUE_COUNT sets are rebuilt under the
    // data directory's key, so a later start continues them.
    let keys = super::load_keys(cfg, head == 0)?;
    // Cleared below: its snapshot is not worth loading.
    let dedup = DedupIndex::in_memory(usize::MAX);
    let p = Projections::open(cfg, registry, Readers::new(None), keys.unique_key(), dedup)?;
    let mut p = p.clear(cfg, usize::MAX)?;
    p.catch_up(cfg, head, progress)?;
    p.dedup
        .save_snapshot()
        .map_err(|e| StartError::Other(format!("cannot save dedup snapshot: {e}")))?;
    p.store.db.flush().map_err(ProjectionError::from)?;
    Ok(head)
}
