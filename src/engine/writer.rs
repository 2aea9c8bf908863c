//! The writer shell: takes whatever requests are queued (group commit, up to
//! `batch_records_max` records), reads the clock once per request, lets
//! [`super::decide`] turn them into one batch, and hands the batch to the
//! syncer. Also the one place that wakes on timers (lease sweeps,
//! checkpoints), the dedup snapshot schedule and the checkpoint schedule.

use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::batch::{Batch, Job, Pending};
use super::decide::WriterState;
use super::handle::Command;
use super::protocol::{StageError, StartError, SweepLeases};
use crate::audit::CheckpointSchedule;
use crate::clock::Clock;
use crate::metrics::metrics;
use crate::projection::dedup::{DedupIndex, Snapshot};

/// How often the writer saves the dedup snapshot (also on shutdown).
const DEDUP_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);
/// How often the writer looks for lapsed seat leases to reclaim.
pub(crate) const LEASE_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct Writer {
    pub state: WriterState,
    pub batch_records_max: usize,
    pub clock: Arc<dyn Clock>,
    /// Records not yet covered by a checkpoint, and when one is due.
    pub checkpoints: CheckpointSchedule,
    pub syncer: SyncSender<Pending>,
    pub dedup_saves: DedupSaves,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) -> Result<(), StageError> {
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
                self.dedup_saves.start(&self.state.dedup);
                snapshot_at = Instant::now();
            }
        }
        self.checkpoint_if_due(true)?;
        self.dedup_saves.finish(&self.state.dedup);
        tracing::info!(next_seq = self.state.next_seq, "writer drained its queue");
        Ok(())
    }

    /// Asks the syncer for a checkpoint after everything sent so far, if one
    /// is due (`shutting_down`: if any record is uncovered).
    fn checkpoint_if_due(&mut self, shutting_down: bool) -> Result<(), StageError> {
        if !self.checkpoints.due(Instant::now(), shutting_down) {
            return Ok(());
        }
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        // A checkpoint holds no identity: the index covers it as it does a
        // batch it sealed, so the snapshot saved at shutdown is at the log
        // head, the same bytes `keymeter replay` writes.
        self.state.dedup.covered(seq);
        self.checkpoints.covered();
        self.syncer
            .send(Pending::Checkpoint { seq })
            .map_err(|_| StageError::PeerStopped("log syncer"))
    }

    fn write_batch(&mut self, commands: Vec<Command>) -> Result<(), StageError> {
        let records: usize = commands.iter().map(Command::records_max).sum();
        let mut batch = Batch::with_capacity(records);
        let mut answers = Vec::with_capacity(commands.len());
        for command in commands {
            if let Command::Call(call) = command {
                let now_ms = self.clock.now_ms();
                answers.push(call.run(&mut self.state, now_ms, &mut batch));
            }
        }
        let first_seq = self.state.seal(&batch, self.clock.now_ms());
        self.checkpoints
            .appended(batch.len() as u64, Instant::now());
        // Even a batch without records goes down the pipeline, so that its
        // answers (say, "all duplicates") wait for every earlier batch.
        let job = Job {
            first_seq,
            batch,
            answers,
        };
        self.syncer
            .send(Pending::Batch(job))
            .map_err(|_| StageError::PeerStopped("log syncer"))
    }
}

/// Dedup snapshots saved off the writer thread: the writer copies the index
/// (one pass over its slots); sorting, encoding, writing and the fsyncs
/// run on a thread of their own, one save at a time.
#[derive(Default)]
pub(crate) struct DedupSaves {
    running: Option<JoinHandle<()>>,
}

impl DedupSaves {
    /// Starts saving `dedup`, unless the last save is still running: then
    /// this one is skipped, and the next interval saves a later state.
    fn start(&mut self, dedup: &DedupIndex) {
        if self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::debug!("the last dedup snapshot is still being saved; skipping one");
            return;
        }
        self.wait();
        let started = Instant::now();
        let snapshot = dedup.snapshot();
        let copy_ms = started.elapsed().as_millis() as u64;
        let spawned = std::thread::Builder::new()
            .name("keymeter-dedup-save".into())
            .spawn(move || save(snapshot, copy_ms));
        match spawned {
            Ok(handle) => self.running = Some(handle),
            Err(e) => tracing::warn!(error = %e, "cannot start saving the dedup snapshot"),
        }
    }

    /// Waits for a running save to end.
    fn wait(&mut self) {
        if let Some(handle) = self.running.take() {
            if handle.join().is_err() {
                tracing::warn!("saving the dedup snapshot panicked");
            }
        }
    }

    /// At shutdown: waits for a running save, then saves `dedup` as it is
    /// now on this thread, so the snapshot left behind is at the log head.
    fn finish(&mut self, dedup: &DedupIndex) {
        self.wait();
        let started = Instant::now();
        let snapshot = dedup.snapshot();
        save(snapshot, started.elapsed().as_millis() as u64);
    }
}

/// A writer that stops on an error leaves no save running behind it.
impl Drop for DedupSaves {
    fn drop(&mut self) {
        self.wait();
    }
}

/// A failed snapshot costs only replay time on the next start.
fn save(snapshot: Snapshot, copy_ms: u64) {
    let started = Instant::now();
    let keys = snapshot.len();
    match snapshot.save() {
        Ok(()) => tracing::debug!(
            keys,
            copy_ms,
            save_ms = started.elapsed().as_millis() as u64,
            "dedup snapshot saved"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot save the dedup snapshot"),
    }
}

/// Sends `make()` to the writer every `every`, so that timed work (lease
/// sweeps, checkpoints due by time) happens while no request arrives. Holds
/// only a weak sender, so it never keeps the writer alive: it ends at the
/// first tick after the engine stops. A full queue skips a tick: the writer
/// is busy and wakes anyway.
pub(crate) fn spawn_ticker(
    name: &'static str,
    tx: mpsc::WeakSender<Command>,
    every: Duration,
    make: fn() -> Command,
) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name(format!("keymeter-{name}"))
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(tx) = tx.upgrade() else {
                return;
            };
            let _ = tx.try_send(make());
        })
        .map(|_| ())
        .map_err(|source| StartError::Spawn { name, source })
}

/// The lease sweeper's command.
pub(crate) fn sweep_leases() -> Command {
    Command::unanswered(SweepLeases)
}
