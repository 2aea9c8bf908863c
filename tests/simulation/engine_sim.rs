//! The whole engine (writer, syncer, projector) on the simulated disk: random ingest with
//! duplicates, seat checkouts and releases, API keys created and revoked; a power loss at
//! a random log operation (or during the restart itself), a restart with or without the
//! projection store, and checks against a model after every answer and every restart.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keymeter::engine::EngineError;
use keymeter::log::sim::{SimDisk, SimStats};
use keymeter::log::{LogDir, Seq};
use rand::Rng;

use crate::engine_world::{scan_identities, Op, World};

const LIVES: usize = 5;

#[test]
fn acknowledged_requests_survive_power_loss_exactly_once_and_projections_match_a_model() {
    crate::for_each_seed("acknowledged_requests_survive_power_loss", 30, |seed| {
        let stats = run(seed);
        assert!(
            stats.crashes >= 2,
            "seed {seed}: too few crashes: {stats:?}"
        );
    });
}

fn run(seed: u64) -> SimStats {
    let mut w = World::new(seed);
    w.open().expect("the first start");
    w.setup();
    for life in 0..LIVES {
        let in_flight = live(&mut w, life);
        restart(&mut w, life);
        resolve_in_flight(&mut w, life, in_flight);
        w.check_projections(&format!("life {life}, after the restart"));
        resend_acknowledged(&mut w, life);
    }
    let engine = w.engine.take().unwrap();
    engine.shutdown().expect("a clean shutdown");
    w.open().expect("a start after a clean shutdown");
    w.check_projections("after a clean restart");
    w.disk.stats()
}

/// One life of the engine: ops until the power goes (armed at a random log operation) or,
/// sometimes, a clean shutdown. Every answer is checked against the synced log. Returns
/// the op in flight when the power went.
fn live(w: &mut World, life: usize) -> Option<Op> {
    // Each op is at least a write and a sync: a power loss is armed within the life's ops,
    // except in the lives that end with a clean shutdown.
    let ops = w.rng.gen_range(20..80);
    if w.rng.gen_bool(0.85) {
        let at = w.disk.stats().ops + w.rng.gen_range(1..=2 * ops);
        w.disk.crash_at_op(at);
    }
    let mut synced = SyncedLog::new(w);
    let mut in_flight = None;
    for _ in 0..ops {
        let op = w.model.random_op(&mut w.rng);
        match w.send(&op) {
            Ok(()) => {
                synced.catch_up(&w.disk);
                for id in op.identities() {
                    assert_eq!(
                        synced.counts.get(&id),
                        Some(&1),
                        "life {life}: acknowledged {op:?}, but {id} is not in the synced log \
                         exactly once"
                    );
                }
                w.model.adopt(&op);
            }
            Err(e) => {
                assert!(
                    w.disk.is_crashed(),
                    "life {life}: {op:?} failed with the power on: {e}"
                );
                assert!(
                    matches!(e, EngineError::Stopped),
                    "life {life}: a request in flight at a log failure is answered {e:?}"
                );
                in_flight = Some(op);
                break;
            }
        }
    }
    if in_flight.is_some() {
        wait_until_failed(w, life);
    }
    let engine = w.engine.take().unwrap();
    let stopped = engine.shutdown();
    if !w.disk.is_crashed() {
        stopped.unwrap_or_else(|e| panic!("life {life}: shutdown with the power on: {e}"));
    }
    in_flight
}

/// After a log failure the engine reports itself failed (`/readyz` answers 503 and
/// `serve` exits on it).
fn wait_until_failed(w: &World, life: usize) {
    let shared = w.handle().shared;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shared.failed.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "life {life}: the engine did not report itself failed after a log failure"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Power on; sometimes without the projection store (so it is rebuilt from the log), and
/// sometimes with another power loss during the start.
fn restart(w: &mut World, life: usize) {
    w.disk.restart();
    if w.rng.gen_bool(0.25) {
        std::fs::remove_dir_all(w.cfg.state_dir()).unwrap();
    }
    loop {
        if w.rng.gen_bool(0.2) {
            let at = w.disk.stats().ops + w.rng.gen_range(1..=8);
            w.disk.crash_at_op(at);
        }
        match w.open() {
            Ok(()) => break,
            Err(e) => {
                assert!(w.disk.is_crashed(), "life {life}: start failed: {e}");
                w.disk.restart();
            }
        }
    }
    w.disk.crash_at_op(u64::MAX);
}

/// The recovered log holds every recorded identity exactly once and nothing else but,
/// all or nothing, the op that was in flight. An ingest in flight is then sent again: its
/// events count once whether or not they survived.
fn resolve_in_flight(w: &mut World, life: usize, in_flight: Option<Op>) {
    let log = LogDir::on(Arc::new(w.disk.clone()), w.cfg.log_dir());
    let head = w.handle().shared.head_seq.load(Ordering::SeqCst);
    let mut counts = BTreeMap::new();
    scan_identities(&log, 1, head, &mut counts);
    let pending = in_flight.as_ref().map(Op::identities).unwrap_or_default();
    for (id, n) in &counts {
        assert_eq!(*n, 1, "life {life}: {id} is in the recovered log {n} times");
        assert!(
            w.model.recorded.contains(id) || pending.contains(id),
            "life {life}: {id} is in the log but was never sent"
        );
    }
    for id in &w.model.recorded {
        assert!(
            counts.contains_key(id),
            "life {life}: acknowledged {id} is missing after the restart"
        );
    }
    let Some(op) = in_flight else { return };
    let survived = pending.iter().filter(|id| counts.contains_key(*id)).count();
    assert!(
        survived == 0 || survived == pending.len(),
        "life {life}: {survived} of the {} records of the op in flight survived: {op:?}",
        pending.len()
    );
    if survived > 0 {
        w.model.adopt(&op);
    }
    if let Op::Ingest { texts, new } = op {
        let again = Op::Ingest {
            texts,
            new: if survived > 0 { Vec::new() } else { new },
        };
        w.send(&again)
            .unwrap_or_else(|e| panic!("life {life}: resend: {e}"));
        w.model.adopt(&again);
    }
}

/// Acknowledged ingest requests sent again are all duplicates.
fn resend_acknowledged(w: &mut World, life: usize) {
    for _ in 0..2 {
        let batches: Vec<&Vec<String>> = w.model.batches.iter().filter(|b| !b.is_empty()).collect();
        if batches.is_empty() {
            return;
        }
        let ids = batches[w.rng.gen_range(0..batches.len())].clone();
        let texts = ids.iter().map(|id| w.model.events[id].2.clone()).collect();
        let again = Op::Ingest {
            texts,
            new: Vec::new(),
        };
        w.send(&again)
            .unwrap_or_else(|e| panic!("life {life}: resend of an acknowledged batch: {e}"));
    }
}

/// What the synced part of the log holds: the log as any power loss now would leave it.
struct SyncedLog {
    path: std::path::PathBuf,
    counts: BTreeMap<String, u32>,
    scanned: Seq,
}

impl SyncedLog {
    fn new(w: &World) -> SyncedLog {
        SyncedLog {
            path: w.cfg.log_dir(),
            counts: BTreeMap::new(),
            scanned: 0,
        }
    }

    /// Reads the records synced since the last call.
    fn catch_up(&mut self, disk: &SimDisk) {
        let dir = LogDir::on(Arc::new(disk.durable_copy()), &self.path);
        let head = dir
            .verify()
            .unwrap_or_else(|e| panic!("the synced log does not verify: {e}"))
            .head_seq;
        scan_identities(&dir, self.scanned + 1, head, &mut self.counts);
        self.scanned = head;
    }
}
