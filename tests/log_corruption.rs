//! What the log does with damaged files: damage stops the engine with the exact record named,
//! a torn tail is cut (and kept aside), and nothing else is ever cut. Also: a second process
//! cannot open a log directory that is in use (which would interleave two writers' frames).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::log_files::{
    frames, modify, segments, torn_files, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use keymeter::log::frame::encode_batch;
use keymeter::log::{read_range, verify, Log, LogConfig, LogError, Seq};

/// Small segments so a handful of batches spans several files (2 batches of 3 per segment).
const CFG: LogConfig = LogConfig {
    segment_bytes_max: 400,
};
const RECORDS_PER_BATCH: usize = 3;

fn payload_for(seq: Seq) -> Vec<u8> {
    format!("{{\"seq\":{seq:05},\"meter\":\"api.calls\"}}").into_bytes()
}

/// Appends `batches` batches; record seq `s` carries `payload_for(s)`.
fn build_log(dir: &Path, batches: usize) -> Log {
    let (mut log, _) = Log::open(dir, CFG).unwrap();
    for _ in 0..batches {
        let first = log.head_seq() + 1;
        let batch: Vec<Vec<u8>> = (first..first + RECORDS_PER_BATCH as Seq)
            .map(payload_for)
            .collect();
        log.append_batch(&batch).unwrap();
    }
    log
}

fn expect_corrupt(err: LogError) -> (PathBuf, u64, Option<Seq>, String) {
    match err {
        LogError::Corrupt {
            segment,
            offset,
            seq,
            reason,
        } => (segment, offset, seq, reason),
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn flipped_payload_byte_in_sealed_segment_names_segment_and_seq_in_verify_and_open() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 8));
    let segs = segments(tmp.path());
    assert!(segs.len() >= 3, "need a sealed middle segment: {segs:?}");
    let sealed = &segs[1];
    let target = frames(sealed)[4].clone();
    modify(sealed, |b| b[target.payload_start() + 3] ^= 0x01);
    let len_before = fs::metadata(sealed).unwrap().len();

    for err in [
        verify(tmp.path()).unwrap_err(),
        Log::open(tmp.path(), CFG).unwrap_err(),
    ] {
        let message = err.to_string();
        let (segment, offset, seq, reason) = expect_corrupt(err);
        assert_eq!(segment, *sealed);
        assert_eq!(offset, target.offset as u64);
        assert_eq!(seq, Some(target.seq));
        assert!(reason.contains("crc"), "{reason}");
        let file_name = sealed.file_name().unwrap().to_str().unwrap();
        assert!(message.contains(file_name), "{message}");
        assert!(
            message.contains(&format!(
                "offset {} (record seq {})",
                target.offset, target.seq
            )),
            "{message}"
        );
    }
    assert_eq!(
        fs::metadata(sealed).unwrap().len(),
        len_before,
        "sealed segment was changed"
    );
    assert!(torn_files(tmp.path()).is_empty());
}

/// Rewrites the payload of `target` (its seq digits) and recomputes its CRC, so only the
/// hash chain can tell.
fn rewrite_with_crc(target: &common::log_files::Frame) {
    modify(&target.segment, |b| {
        let at = target.payload_start();
        b[at + 7..at + 12].copy_from_slice(b"99999");
        let crc = crc32c::crc32c(&b[target.offset + 8..target.end()]);
        b[target.offset + 4..target.offset + 8].copy_from_slice(&crc.to_le_bytes());
    });
}

/// `verify` and `Log::open` both refuse the log at `target` for a broken hash chain.
fn assert_chain_broken_at(dir: &Path, target: &common::log_files::Frame) {
    for err in [verify(dir).unwrap_err(), Log::open(dir, CFG).unwrap_err()] {
        let (segment, offset, seq, reason) = expect_corrupt(err);
        assert_eq!(
            (segment, offset, seq),
            (
                target.segment.clone(),
                target.offset as u64,
                Some(target.seq)
            )
        );
        assert!(reason.contains("chain"), "{reason}");
    }
}

#[test]
fn damage_in_several_segments_is_reported_at_the_first_in_log_order() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 12));
    let segs = segments(tmp.path());
    assert!(segs.len() >= 5, "need several sealed segments: {segs:?}");
    // The later damage is the cheaper to find: a scan that reported whichever damage it
    // met first in time rather than in the log would name it.
    let first = frames(&segs[1]).last().unwrap().clone();
    rewrite_with_crc(&first);
    for later in [&segs[2], &segs[3]] {
        modify(later, |b| b[SEGMENT_HEADER_LEN + 2] ^= 0x40);
    }
    assert_chain_broken_at(tmp.path(), &first);
}

#[test]
fn first_record_of_a_segment_rewritten_with_its_crc_breaks_the_link_to_the_segment_before() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 8));
    let segs = segments(tmp.path());
    assert!(segs.len() >= 3, "need a sealed middle segment: {segs:?}");
    // Its stored hash is unchanged, so the frames after it still chain to it: only the
    // link from the segment before can tell.
    let target = frames(&segs[1])[0].clone();
    rewrite_with_crc(&target);
    assert_chain_broken_at(tmp.path(), &target);
}

#[test]
fn damaged_frame_in_last_segment_with_valid_frames_after_it_is_refused_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 6));
    let last = segments(tmp.path()).pop().unwrap();
    let target = frames(&last)[1].clone();
    modify(&last, |b| b[target.payload_start()] ^= 0x80);
    let len_before = fs::metadata(&last).unwrap().len();

    let (segment, offset, seq, reason) = expect_corrupt(Log::open(tmp.path(), CFG).unwrap_err());
    assert_eq!(
        (segment, offset, seq),
        (last.clone(), target.offset as u64, Some(target.seq))
    );
    assert!(reason.contains("not a torn tail"), "{reason}");
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        len_before,
        "damage must not be cut"
    );
    assert!(torn_files(tmp.path()).is_empty());
    let (_, _, verify_seq, _) = expect_corrupt(verify(tmp.path()).unwrap_err());
    assert_eq!(verify_seq, Some(target.seq));
}

#[test]
fn damaged_length_field_in_last_segment_with_valid_frames_after_it_is_refused_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 6));
    let last = segments(tmp.path()).pop().unwrap();
    let target = frames(&last)[0].clone();
    // The length now runs past the end of the file, which alone would look like a torn frame.
    modify(&last, |b| b[target.offset + 2] = 0x7f);
    let len_before = fs::metadata(&last).unwrap().len();

    let (_, offset, seq, _) = expect_corrupt(Log::open(tmp.path(), CFG).unwrap_err());
    assert_eq!((offset, seq), (target.offset as u64, Some(target.seq)));
    assert_eq!(fs::metadata(&last).unwrap().len(), len_before);
}

#[test]
fn rewritten_payload_with_recomputed_crc_is_caught_by_the_hash_chain() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 6));
    let last = segments(tmp.path()).pop().unwrap();
    let target = frames(&last)[2].clone();
    modify(&last, |b| {
        let at = target.payload_start();
        b[at..at + 7].copy_from_slice(b"{\"seq\":");
        b[at + 7..at + 12].copy_from_slice(b"99999");
        let crc = crc32c::crc32c(&b[target.offset + 8..target.end()]);
        b[target.offset + 4..target.offset + 8].copy_from_slice(&crc.to_le_bytes());
    });

    assert_chain_broken_at(tmp.path(), &target);
    assert!(torn_files(tmp.path()).is_empty());
}

#[test]
fn last_segment_truncated_mid_frame_is_cut_to_last_complete_batch_and_appends_continue() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 6));
    let last = segments(tmp.path()).pop().unwrap();
    let last_frames = frames(&last);
    assert_eq!(last_frames.len(), 2 * RECORDS_PER_BATCH);
    let original = fs::read(&last).unwrap();
    // Crash inside the second frame of the segment's second batch.
    let torn_frame = &last_frames[RECORDS_PER_BATCH + 1];
    let torn_len = torn_frame.payload_start() + 5;
    let batch_end = &last_frames[RECORDS_PER_BATCH - 1];
    let expected_head = batch_end.seq;
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(torn_len as u64)
        .unwrap();

    let report = verify(tmp.path()).unwrap();
    let torn = report.torn_tail.expect("verify reports the torn tail");
    assert_eq!(
        (torn.segment, torn.offset),
        (last.clone(), batch_end.end() as u64)
    );
    assert_eq!(report.head_seq, expected_head);
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        torn_len as u64,
        "verify must not cut"
    );

    let (mut log, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!(recovery.head_seq, expected_head);
    assert_eq!(log.head_seq(), expected_head);
    assert_eq!(
        recovery.torn_tail_bytes,
        (torn_len - batch_end.end()) as u64
    );
    let saved = recovery.torn_tail_saved_to.expect("cut bytes are saved");
    assert_eq!(
        fs::read(&saved).unwrap(),
        original[batch_end.end()..torn_len]
    );
    assert_eq!(fs::metadata(&last).unwrap().len(), batch_end.end() as u64);

    let entries: Vec<_> = read_range(tmp.path(), 1, expected_head)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(entries.len() as Seq, expected_head);
    for (entry, seq) in entries.iter().zip(1..) {
        assert_eq!((entry.seq, &entry.payload), (seq, &payload_for(seq)));
    }

    let next: Vec<Vec<u8>> = (expected_head + 1..expected_head + 3)
        .map(payload_for)
        .collect();
    assert_eq!(
        log.append_batch(&next).unwrap(),
        expected_head + 1..expected_head + 3
    );
    let head_hash = log.head_hash();
    drop(log);
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(
        (report.head_seq, report.head_hash),
        (expected_head + 2, head_hash)
    );
    let (_, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!(
        (recovery.torn_tail_bytes, recovery.head_seq),
        (0, expected_head + 2)
    );
}

#[test]
fn half_written_batch_without_batch_end_is_cut_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let log = build_log(tmp.path(), 5);
    let (head_seq, head_hash) = (log.head_seq(), log.head_hash());
    drop(log);
    let last = segments(tmp.path()).pop().unwrap();
    // Two valid frames of a three-frame batch reached the disk; the BATCH_END frame did not.
    let batch: Vec<Vec<u8>> = (head_seq + 1..head_seq + 4).map(payload_for).collect();
    let mut encoded = Vec::new();
    encode_batch(head_hash, head_seq + 1, &batch, &mut encoded);
    let two_frames = 2 * FRAME_HEADER_LEN + batch[0].len() + batch[1].len();
    let len_before = fs::metadata(&last).unwrap().len();
    modify(&last, |b| b.extend_from_slice(&encoded[..two_frames]));

    let torn = verify(tmp.path())
        .unwrap()
        .torn_tail
        .expect("incomplete batch reported");
    assert!(torn.reason.contains("incomplete batch"), "{}", torn.reason);

    let (log, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!((log.head_seq(), log.head_hash()), (head_seq, head_hash));
    assert_eq!(recovery.torn_tail_bytes, two_frames as u64);
    assert_eq!(
        fs::read(recovery.torn_tail_saved_to.unwrap()).unwrap(),
        encoded[..two_frames]
    );
    assert_eq!(fs::metadata(&last).unwrap().len(), len_before);
    assert_eq!(verify(tmp.path()).unwrap().torn_tail, None);
}

#[test]
fn unfinished_batch_whose_pages_landed_out_of_order_is_cut_not_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = build_log(tmp.path(), 5);
    let (head_seq, head_hash) = (log.head_seq(), log.head_hash());
    drop(log);
    let last = segments(tmp.path()).pop().unwrap();
    // Four frames of a five-frame batch reached the disk, but a page in the middle of the
    // first one did not (zeros), while the next three did; the BATCH_END frame never did.
    let batch: Vec<Vec<u8>> = (head_seq + 1..head_seq + 6).map(payload_for).collect();
    let mut encoded = Vec::new();
    encode_batch(head_hash, head_seq + 1, &batch, &mut encoded);
    let frame_len = |i: usize| FRAME_HEADER_LEN + batch[i].len();
    let four_frames: usize = (0..4).map(frame_len).sum();
    let mut landed = encoded[..four_frames].to_vec();
    for b in &mut landed[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 8] {
        *b = 0;
    }
    let len_before = fs::metadata(&last).unwrap().len();
    modify(&last, |b| b.extend_from_slice(&landed));

    let (log, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!((log.head_seq(), log.head_hash()), (head_seq, head_hash));
    assert_eq!(recovery.torn_tail_bytes, four_frames as u64);
    assert_eq!(fs::metadata(&last).unwrap().len(), len_before);
}

/// Appends to the last segment the frames of the batch that comes next, as `land` leaves
/// them (the pages that reached the disk before the power went). Returns the head before it
/// and the bytes appended.
fn land_next_batch(dir: &Path, records: usize, land: impl FnOnce(&mut Vec<u8>)) -> (Seq, usize) {
    let log = build_log(dir, 5);
    let (head_seq, head_hash) = (log.head_seq(), log.head_hash());
    drop(log);
    let batch: Vec<Vec<u8>> = (head_seq + 1..=head_seq + records as Seq)
        .map(payload_for)
        .collect();
    let mut encoded = Vec::new();
    encode_batch(head_hash, head_seq + 1, &batch, &mut encoded);
    land(&mut encoded);
    let len = encoded.len();
    let last = segments(dir).pop().unwrap();
    modify(&last, |b| b.extend_from_slice(&encoded));
    (head_seq, len)
}

#[test]
fn unfinished_batch_whose_end_landed_before_its_first_page_is_cut_not_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // The whole batch was written but not synced: its last page (with BATCH_END) reached
    // the disk, a page inside its first frame did not.
    let (head_seq, appended) = land_next_batch(tmp.path(), 5, |b| {
        b[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 8].fill(0);
    });
    let last = segments(tmp.path()).pop().unwrap();
    let len_before = fs::metadata(&last).unwrap().len();

    let torn = verify(tmp.path()).unwrap().torn_tail.expect("reported");
    assert!(torn.reason.contains("crc"), "{}", torn.reason);
    let (log, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!(log.head_seq(), head_seq);
    assert_eq!(recovery.torn_tail_bytes, appended as u64);
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        len_before - appended as u64
    );
}

#[test]
fn damage_followed_by_the_start_of_a_later_batch_is_refused_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    // A one-record batch with damage, then a batch that began after it: the first batch
    // had been synced (the second was started), so this is damage, not a torn write.
    let (head_seq, _) = land_next_batch(tmp.path(), 1, |_| {});
    let log_end = {
        let (mut log, _) = Log::open(tmp.path(), CFG).unwrap();
        log.append_batch(&[payload_for(head_seq + 2)]).unwrap();
        log.head_seq()
    };
    let last = segments(tmp.path()).pop().unwrap();
    let target = frames(&last)
        .into_iter()
        .find(|f| f.seq == head_seq + 1)
        .unwrap();
    modify(&last, |b| b[target.payload_start()] ^= 0x10);
    let len_before = fs::metadata(&last).unwrap().len();

    let (_, offset, seq, reason) = expect_corrupt(Log::open(tmp.path(), CFG).unwrap_err());
    assert_eq!((offset, seq), (target.offset as u64, Some(head_seq + 1)));
    assert!(
        reason.contains(&format!("later batch (from seq {log_end})")),
        "{reason}"
    );
    assert_eq!(fs::metadata(&last).unwrap().len(), len_before);
}

#[test]
fn damage_in_a_long_batch_followed_by_its_end_and_a_later_batch_is_refused_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    // Batch 1..=1, then a ten-record batch 2..=11 whose first frame is damaged, then batch
    // 12: the later batch was begun, so the damaged batch had been synced and batch 12 may
    // have been acknowledged. Cutting would silently drop both.
    let cfg = LogConfig {
        segment_bytes_max: 1 << 20,
    };
    let (mut log, _) = Log::open(tmp.path(), cfg).unwrap();
    log.append_batch(&[payload_for(1)]).unwrap();
    let long: Vec<Vec<u8>> = (2..=11).map(payload_for).collect();
    log.append_batch(&long).unwrap();
    log.append_batch(&[payload_for(12)]).unwrap();
    drop(log);
    let last = segments(tmp.path()).pop().unwrap();
    let target = frames(&last).into_iter().find(|f| f.seq == 2).unwrap();
    modify(&last, |b| b[target.payload_start()] ^= 0x10);
    let len_before = fs::metadata(&last).unwrap().len();

    for err in [
        verify(tmp.path()).unwrap_err(),
        Log::open(tmp.path(), cfg).unwrap_err(),
    ] {
        let (_, offset, seq, reason) = expect_corrupt(err);
        assert_eq!((offset, seq), (target.offset as u64, Some(2)));
        assert!(reason.contains("record 12, after batch end 11"), "{reason}");
    }
    assert_eq!(fs::metadata(&last).unwrap().len(), len_before);
}

#[test]
fn crc_failure_in_the_final_frame_with_nothing_after_it_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 6));
    let last = segments(tmp.path()).pop().unwrap();
    let last_frames = frames(&last);
    let final_frame = last_frames.last().unwrap();
    modify(&last, |b| b[final_frame.end() - 1] ^= 0x01);
    let previous_batch_end = &last_frames[RECORDS_PER_BATCH - 1];

    let (log, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!(log.head_seq(), previous_batch_end.seq);
    assert_eq!(
        recovery.torn_tail_bytes,
        (final_frame.end() - previous_batch_end.end()) as u64
    );
    assert!(recovery.torn_tail_saved_to.unwrap().exists());
}

#[test]
fn truncated_sealed_segment_is_corrupt_and_never_cut() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 6));
    let sealed = segments(tmp.path())[0].clone();
    let target = frames(&sealed).pop().unwrap();
    let cut_len = (target.payload_start() + 2) as u64;
    fs::OpenOptions::new()
        .write(true)
        .open(&sealed)
        .unwrap()
        .set_len(cut_len)
        .unwrap();

    let (segment, offset, seq, _) = expect_corrupt(Log::open(tmp.path(), CFG).unwrap_err());
    assert_eq!(
        (segment, offset, seq),
        (sealed.clone(), target.offset as u64, Some(target.seq))
    );
    assert_eq!(fs::metadata(&sealed).unwrap().len(), cut_len);
}

#[test]
fn missing_middle_segment_is_a_seq_gap() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 8));
    let segs = segments(tmp.path());
    let first_of_missing = frames(&segs[1])[0].seq;
    fs::remove_file(&segs[1]).unwrap();

    let (segment, _, seq, reason) = expect_corrupt(verify(tmp.path()).unwrap_err());
    assert_eq!((segment, seq), (segs[2].clone(), Some(first_of_missing)));
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn read_range_from_the_middle_of_a_later_segment_returns_exactly_the_requested_records() {
    let tmp = tempfile::tempdir().unwrap();
    let log = build_log(tmp.path(), 10);
    let segs = segments(tmp.path());
    assert!(segs.len() >= 4, "{segs:?}");
    let from = frames(&segs[2])[2].seq;
    let up_to = frames(&segs[3])[1].seq;

    let entries: Vec<_> = read_range(log.dir(), from, up_to)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let seqs: Vec<Seq> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (from..=up_to).collect::<Vec<_>>());
    for entry in &entries {
        assert_eq!(entry.payload, payload_for(entry.seq));
    }
}

#[test]
fn read_range_does_not_read_earlier_segments() {
    let tmp = tempfile::tempdir().unwrap();
    drop(build_log(tmp.path(), 8));
    let segs = segments(tmp.path());
    // Damage an earlier segment beyond recognition: a read that starts later must not care.
    fs::write(&segs[0], b"garbage").unwrap();
    let from = frames(&segs[2])[1].seq;

    let first = read_range(tmp.path(), from, from)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!((first.seq, first.payload), (from, payload_for(from)));
}

/// Set only in the child process the lock test starts: the log directory its parent holds open.
const LOCKED_LOG_DIR_ENV: &str = "KEYMETER_TEST_LOCKED_LOG_DIR";

#[test]
fn a_second_process_cannot_open_a_log_in_use_but_can_verify_and_read_it() {
    if let Some(dir) = std::env::var_os(LOCKED_LOG_DIR_ENV) {
        // The child process: its parent holds the log open.
        let dir = PathBuf::from(dir);
        match Log::open(&dir, CFG) {
            Err(LogError::Locked { dir: locked }) => assert_eq!(locked, dir),
            other => panic!("expected Locked, got {other:?}"),
        }
        assert_eq!(verify(&dir).unwrap().head_seq, 6);
        assert_eq!(read_range(&dir, 1, 6).unwrap().count(), 6);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = build_log(tmp.path(), 2);
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_process_cannot_open_a_log_in_use_but_can_verify_and_read_it",
            "--test-threads=1",
        ])
        .env(LOCKED_LOG_DIR_ENV, tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child process: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    drop(log);
    let (_, recovery) = Log::open(tmp.path(), CFG).unwrap();
    assert_eq!(recovery.head_seq, 6);
}
