//! The writer shell: takes whatever requests are queued (group commit, up to
//! `batch_records_max` records), reads the clock once per request, lets
//! [`super::decide`] turn them into one batch, and hands the batch to the
//! syncer. Also the one place that wakes on timers (lease sweeps,
//! checkpoints), the dedup snapshot schedule and the checkpoint schedule.

use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::batch::{Batch, Job, Pending};
use super::decide::WriterState;
use super::dedup_saves::DedupSaves;
use super::handle::Command;
use super::protocol::{StageError, StartError, SweepLeases};
use crate::audit::CheckpointSchedule;
use crate::clock::Clock;
use crate::metrics::metrics;

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
            let due = snapshot_at.elapsed() >= DEDUP_SNAPSHOT_INTERVAL;
            if due {
                snapshot_at = Instant::now();
            }
            self.dedup_saves.turn(&self.state.dedup, due);
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
