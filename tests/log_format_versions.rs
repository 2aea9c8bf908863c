//! Segments written by an older format version stay readable and are never appended to:
//! a version 1 log (no BATCH_START marks) opens with its head and chain intact, and new
//! batches go to a new version 2 segment.

mod common;

use std::path::Path;

use common::log_files::{frames, modify, segments};
use keymeter::log::{read_range, verify, Log, LogConfig, Seq};

const CFG: LogConfig = LogConfig {
    segment_bytes_max: 400,
};
const FLAG_BATCH_START: u8 = 0b10;

/// Rewrites every segment of `dir` as format version 1 wrote it: version field 1 in the
/// header, no BATCH_START bit on any frame; both CRCs recomputed. The chain hashes do not
/// cover flags, so they stay valid.
fn downgrade_to_version_1(dir: &Path) {
    for segment in segments(dir) {
        let frame_list = frames(&segment);
        modify(&segment, |b| {
            b[8..12].copy_from_slice(&1u32.to_le_bytes());
            let crc = crc32c::crc32c(&b[..20]);
            b[20..24].copy_from_slice(&crc.to_le_bytes());
            for f in &frame_list {
                b[f.offset + 8] &= !FLAG_BATCH_START;
                let crc = crc32c::crc32c(&b[f.offset + 8..f.end()]);
                b[f.offset + 4..f.offset + 8].copy_from_slice(&crc.to_le_bytes());
            }
        });
    }
}

fn payloads(from: Seq, count: Seq) -> Vec<Vec<u8>> {
    (from..from + count)
        .map(|s| format!("record {s}").into_bytes())
        .collect()
}

fn all_payloads(dir: &Path, up_to: Seq) -> Vec<Vec<u8>> {
    read_range(dir, 1, up_to)
        .unwrap()
        .map(|e| e.unwrap().payload)
        .collect()
}

#[test]
fn a_version_1_log_opens_intact_and_appends_go_to_a_new_version_2_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (head_seq, head_hash) = {
        let (mut log, _) = Log::open(tmp.path(), CFG).unwrap();
        for b in 0..7 {
            log.append_batch(&payloads(b * 3 + 1, 3)).unwrap();
        }
        (log.head_seq(), log.head_hash())
    };
    downgrade_to_version_1(tmp.path());
    let old_segments = segments(tmp.path());
    let last_old = old_segments.last().unwrap().clone();
    let last_old_bytes = std::fs::read(&last_old).unwrap();
    assert_eq!(verify(tmp.path()).unwrap().head_seq, head_seq);

    let (mut log, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!((log.head_seq(), log.head_hash()), (head_seq, head_hash));
    assert_eq!(recovery.segments, old_segments.len() + 1);
    log.append_batch(&payloads(head_seq + 1, 2)).unwrap();
    drop(log);

    assert_eq!(
        std::fs::read(&last_old).unwrap(),
        last_old_bytes,
        "v1 segment changed"
    );
    let new_segment = segments(tmp.path()).pop().unwrap();
    assert_ne!(new_segment, last_old);
    let header = std::fs::read(&new_segment).unwrap();
    assert_eq!(u32::from_le_bytes(header[8..12].try_into().unwrap()), 2);
    let new_frames = frames(&new_segment);
    assert_eq!(new_frames.len(), 2);
    assert_eq!(new_frames[0].flags & FLAG_BATCH_START, FLAG_BATCH_START);
    assert_eq!(verify(tmp.path()).unwrap().head_seq, head_seq + 2);
    assert_eq!(
        all_payloads(tmp.path(), head_seq + 2),
        payloads(1, head_seq + 2)
    );
    let (log, _) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!(log.head_seq(), head_seq + 2);
}

#[test]
fn a_version_1_segment_holding_no_record_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Log::open(tmp.path(), CFG).unwrap());
    downgrade_to_version_1(tmp.path());
    let (mut log, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!(recovery.segments, 1);
    log.append_batch(&payloads(1, 1)).unwrap();
    drop(log);
    let only = segments(tmp.path());
    assert_eq!(only.len(), 1);
    assert_eq!(std::fs::read(&only[0]).unwrap()[8], 2);
    assert_eq!(frames(&only[0])[0].flags, 0b11);
}

#[test]
fn a_batch_start_mark_out_of_place_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(tmp.path(), CFG).unwrap();
        log.append_batch(&payloads(1, 3)).unwrap();
    }
    let segment = segments(tmp.path()).pop().unwrap();
    let second = frames(&segment)[1].clone();
    modify(&segment, |b| {
        b[second.offset + 8] |= FLAG_BATCH_START;
        let crc = crc32c::crc32c(&b[second.offset + 8..second.end()]);
        b[second.offset + 4..second.offset + 8].copy_from_slice(&crc.to_le_bytes());
    });
    let err = Log::open(tmp.path(), CFG).unwrap_err().to_string();
    assert!(err.contains("BATCH_START flag is set"), "{err}");
}
