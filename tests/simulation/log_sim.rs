//! The log alone on the simulated disk: random batches, a power loss at a random
//! operation (during appends, segment rolls or recovery itself), reopen, check.

use std::sync::Arc;

use keymeter::log::sim::SimDisk;
use keymeter::log::{Log, LogConfig, LogDir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LIVES: usize = 6;
const LOG_PATH: &str = "/sim/data/log";

#[test]
fn acknowledged_batches_survive_every_crash_and_the_batch_in_flight_is_all_or_nothing() {
    crate::for_each_seed("acknowledged_batches_survive_every_crash", 200, |seed| {
        let stats = run(seed);
        assert!(
            stats.crashes >= 2,
            "seed {seed}: too few crashes: {stats:?}"
        );
    });
}

fn run(seed: u64) -> keymeter::log::sim::SimStats {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x10_5eed);
    let disk = SimDisk::new(seed);
    let dir = LogDir::on(Arc::new(disk.clone()), LOG_PATH);
    let cfg = LogConfig {
        segment_bytes_max: rng.gen_range(4096..48 * 1024),
    };
    // The payload of every acknowledged record, in seq order (seq = index + 1).
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut in_flight: Option<Vec<Vec<u8>>> = None;
    for life in 0..LIVES {
        if rng.gen_bool(0.25) {
            // Power off during recovery itself.
            disk.crash_at_op(disk.stats().ops + rng.gen_range(1..=6));
        }
        let (mut log, recovery) = match Log::open_in(&dir, cfg) {
            Ok(opened) => opened,
            Err(_) if disk.is_crashed() => {
                disk.restart();
                continue;
            }
            Err(e) => {
                panic!("life {life}: recovery refused a log that only lost unsynced writes: {e}")
            }
        };
        let on_disk = read_all(&dir, recovery.head_seq);
        check_recovered(life, &mut acked, in_flight.take(), on_disk);
        disk.crash_at_op(disk.stats().ops + rng.gen_range(1..=80));
        for batch_no in 0.. {
            let batch = random_batch(&mut rng, life, batch_no);
            match log.append_batch(&batch) {
                Ok(seqs) => {
                    assert_eq!(seqs.start, acked.len() as u64 + 1, "life {life}: seq gap");
                    assert_durable(&disk, seqs.start, &batch);
                    acked.extend(batch);
                }
                Err(_) => {
                    assert!(
                        disk.is_crashed(),
                        "life {life}: append failed with power on"
                    );
                    in_flight = Some(batch);
                    break;
                }
            }
        }
        drop(log);
        disk.restart();
    }
    let (_, recovery) = Log::open_in(&dir, cfg).expect("the final reopen recovers");
    check_recovered(
        LIVES,
        &mut acked,
        in_flight,
        read_all(&dir, recovery.head_seq),
    );
    disk.stats()
}

/// What is on disk after a crash: every acknowledged record, in order, then either nothing
/// or the whole batch that was in flight. An in-flight batch that survived is part of the
/// log from now on.
fn check_recovered(
    life: usize,
    acked: &mut Vec<Vec<u8>>,
    in_flight: Option<Vec<Vec<u8>>>,
    on_disk: Vec<Vec<u8>>,
) {
    assert!(
        on_disk.len() >= acked.len(),
        "life {life}: {} acknowledged records, {} on disk after recovery",
        acked.len(),
        on_disk.len()
    );
    for (i, (want, got)) in acked.iter().zip(&on_disk).enumerate() {
        assert!(
            want == got,
            "life {life}: acknowledged record seq {} changed",
            i + 1
        );
    }
    let extra = &on_disk[acked.len()..];
    if extra.is_empty() {
        return;
    }
    let batch = in_flight.unwrap_or_else(|| {
        panic!(
            "life {life}: {} records on disk that were never written",
            extra.len()
        )
    });
    assert!(
        extra == batch.as_slice(),
        "life {life}: the unacknowledged batch survived only in part ({} of {} records)",
        extra.len(),
        batch.len()
    );
    acked.extend(batch);
}

/// The batch is in what the disk has synced: a crash now could not lose it.
fn assert_durable(disk: &SimDisk, first_seq: u64, batch: &[Vec<u8>]) {
    let synced = LogDir::on(Arc::new(disk.durable_copy()), LOG_PATH);
    let last_seq = first_seq + batch.len() as u64 - 1;
    let durable: Vec<Vec<u8>> = synced
        .read_range(first_seq, last_seq)
        .and_then(|r| r.map(|e| e.map(|e| e.payload)).collect())
        .unwrap_or_else(|e| {
            panic!("acknowledged seqs {first_seq}..={last_seq} are not synced: {e}")
        });
    assert!(
        durable == batch,
        "acknowledged batch differs on the synced disk"
    );
}

fn read_all(dir: &LogDir, head: u64) -> Vec<Vec<u8>> {
    dir.read_range(1, head)
        .and_then(|r| r.map(|e| e.map(|e| e.payload)).collect())
        .expect("the recovered log reads back")
}

/// 1 to 24 records of 0 to 3,000 random bytes (so batches span pages, chunks and
/// segments), each starting with its own name.
fn random_batch(rng: &mut StdRng, life: usize, batch_no: usize) -> Vec<Vec<u8>> {
    (0..rng.gen_range(1..=24))
        .map(|i| {
            let mut payload = format!("{life}/{batch_no}/{i}/").into_bytes();
            let start = payload.len();
            payload.resize(start + rng.gen_range(0..3000), 0);
            rng.fill(&mut payload[start..]);
            payload
        })
        .collect()
}
