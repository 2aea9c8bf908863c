//! Dedup snapshots saved off the writer thread. A save has three steps:
//! a thread of its own makes room for the copy of the entries (allocating
//! and touching every page, which costs more than the copy itself); the
//! writer, at its next turn, copies the index into that room, the one step
//! that holds up ingest; the thread then sorts, encodes, writes and fsyncs.
//! One save at a time: one due while another runs is skipped, and the next
//! interval saves a later state.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::projection::dedup::{DedupIndex, Snapshot, SnapshotRoom};

/// Room for this many more identities than the index held when a save
/// began, so that claims made while the room is made still fit.
const ROOM_SLACK: usize = 4096;

#[derive(Default)]
pub(crate) struct DedupSaves {
    step: Step,
}

#[derive(Default)]
enum Step {
    #[default]
    Idle,
    /// The save thread is making room; it then waits for the copy.
    MakingRoom {
        room: Receiver<SnapshotRoom>,
        copy: SyncSender<Snapshot>,
        thread: JoinHandle<()>,
    },
    /// The save thread has the copy and is writing it.
    Writing { thread: JoinHandle<()> },
}

impl DedupSaves {
    /// Moves a save along: starts one if `due` and none is running, and
    /// hands the save thread its copy of `dedup` once its room is made.
    pub fn turn(&mut self, dedup: &DedupIndex, due: bool) {
        if due && !matches!(self.step, Step::Idle) {
            tracing::debug!("the last dedup snapshot is still being saved; skipping one");
        }
        self.step = match std::mem::take(&mut self.step) {
            Step::Idle if due => start(dedup.len()),
            Step::MakingRoom { room, copy, thread } => match room.try_recv() {
                Ok(room) => copy_into(dedup, room, copy, thread),
                Err(TryRecvError::Empty) => Step::MakingRoom { room, copy, thread },
                Err(TryRecvError::Disconnected) => {
                    join(thread);
                    Step::Idle
                }
            },
            Step::Writing { thread } if thread.is_finished() => {
                join(thread);
                Step::Idle
            }
            step => step,
        };
    }

    /// At shutdown: finishes a save under way with the state as it is now,
    /// or waits for one writing an older state and then saves on this
    /// thread, so the snapshot left behind is at the log head.
    pub fn finish(&mut self, dedup: &DedupIndex) {
        match std::mem::take(&mut self.step) {
            Step::MakingRoom { room, copy, thread } => match room.recv() {
                Ok(room) => {
                    if let Step::Writing { thread } = copy_into(dedup, room, copy, thread) {
                        join(thread);
                        return;
                    }
                }
                Err(_) => join(thread),
            },
            Step::Writing { thread } => join(thread),
            Step::Idle => {}
        }
        let started = Instant::now();
        let snapshot = dedup.snapshot();
        save(snapshot, started.elapsed().as_millis() as u64);
    }
}

/// A writer that stops on an error leaves no save running behind it.
impl Drop for DedupSaves {
    fn drop(&mut self) {
        match std::mem::take(&mut self.step) {
            Step::MakingRoom { copy, thread, .. } => {
                drop(copy);
                join(thread);
            }
            Step::Writing { thread } => join(thread),
            Step::Idle => {}
        }
    }
}

/// Starts the save thread: it makes room for `held` identities and some,
/// then saves the copy it is sent.
fn start(held: usize) -> Step {
    let (room_tx, room) = sync_channel(1);
    let (copy, copy_rx) = sync_channel::<Snapshot>(1);
    let spawned = std::thread::Builder::new()
        .name("keymeter-dedup-save".into())
        .spawn(move || {
            if room_tx
                .send(SnapshotRoom::touched(held + ROOM_SLACK))
                .is_err()
            {
                return;
            }
            if let Ok(snapshot) = copy_rx.recv() {
                save(snapshot, 0);
            }
        });
    match spawned {
        Ok(thread) => Step::MakingRoom { room, copy, thread },
        Err(e) => {
            tracing::warn!(error = %e, "cannot start saving the dedup snapshot");
            Step::Idle
        }
    }
}

/// The writer's step: copies `dedup` into `room` and sends it to the save
/// thread.
fn copy_into(
    dedup: &DedupIndex,
    room: SnapshotRoom,
    copy: SyncSender<Snapshot>,
    thread: JoinHandle<()>,
) -> Step {
    let started = Instant::now();
    let snapshot = dedup.snapshot_in(room);
    tracing::debug!(
        keys = snapshot.len(),
        copy_ms = started.elapsed().as_millis() as u64,
        "dedup snapshot copied"
    );
    if copy.send(snapshot).is_err() {
        join(thread);
        return Step::Idle;
    }
    Step::Writing { thread }
}

fn join(thread: JoinHandle<()>) {
    if thread.join().is_err() {
        tracing::warn!("saving the dedup snapshot panicked");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DedupKey;

    fn claim(d: &mut DedupIndex, from: u64, to: u64) {
        let keys = (from..=to).map(|n| (DedupKey::new("s", &n.to_string()), 0, 0));
        d.claim(keys, to);
    }

    fn saved(dir: &std::path::Path) -> (u64, usize) {
        let d = DedupIndex::open(dir, 100).unwrap();
        (d.applied(), d.len())
    }

    /// Waits, turning, until the save has left `step`.
    fn turn_until(saves: &mut DedupSaves, d: &DedupIndex, done: fn(&Step) -> bool) {
        while !done(&saves.step) {
            std::thread::sleep(std::time::Duration::from_millis(1));
            saves.turn(d, false);
        }
    }

    #[test]
    fn a_save_holds_the_index_as_it_was_at_the_writers_turn_after_the_room_was_made() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DedupIndex::open(dir.path(), 100).unwrap();
        let mut saves = DedupSaves::default();
        claim(&mut d, 1, 10);
        saves.turn(&d, true);
        assert!(matches!(saves.step, Step::MakingRoom { .. }));
        claim(&mut d, 11, 15);
        turn_until(&mut saves, &d, |s| !matches!(s, Step::MakingRoom { .. }));
        claim(&mut d, 16, 20);
        turn_until(&mut saves, &d, |s| matches!(s, Step::Idle));
        assert_eq!(saved(dir.path()), (15, 15));

        saves.turn(&d, true);
        claim(&mut d, 21, 22);
        saves.finish(&d);
        assert_eq!(saved(dir.path()), (22, 22));
        claim(&mut d, 23, 23);
        saves.finish(&d);
        assert_eq!(saved(dir.path()), (23, 23));
    }
}
