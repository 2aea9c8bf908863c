//! Tests of the append path, recovery at open and the offline check.

use std::fs;
use std::io;
use std::ops::Range;
use std::path::Path;

use super::segment::LOCK_FILE_NAME;
use super::*;

/// Test-only fault injection on the append path.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Fail the chunk write after this many more succeed; the failing one writes half
    /// its bytes first, like a write cut short by a full disk.
    pub fail_write_after: Option<usize>,
    /// Fail the next batch `fdatasync` (without syncing).
    pub fail_sync: bool,
}

impl Faults {
    pub(super) fn take_write_fault(&mut self) -> bool {
        match self.fail_write_after {
            Some(0) => {
                self.fail_write_after = None;
                true
            }
            Some(n) => {
                self.fail_write_after = Some(n - 1);
                false
            }
            None => false,
        }
    }
}

pub(super) fn injected_error() -> io::Error {
    io::Error::other("injected fault")
}

/// `count` payloads of `len` bytes, each filled with its index.
fn big_payloads(count: usize, len: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| vec![i as u8; len]).collect()
}

fn expect_io(err: LogError, expected_op: &str) {
    match err {
        LogError::Io { op, .. } => assert_eq!(op, expected_op),
        other => panic!("expected an i/o error from {expected_op}, got {other}"),
    }
}

fn payloads(range: Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("event-{i}").into_bytes()).collect()
}

fn read_all(dir: &Path, up_to: Seq) -> Vec<LogEntry> {
    read_range(dir, 1, up_to)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn appended_batches_read_back_in_order_with_contiguous_seqs() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, recovery) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!((recovery.head_seq, recovery.segments), (0, 1));

    assert_eq!(log.append_batch(&payloads(0..3)).unwrap(), 1..4);
    assert_eq!(log.append_batch(&payloads(3..5)).unwrap(), 4..6);
    assert_eq!(log.head_seq(), 5);

    let entries = read_all(tmp.path(), 5);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        entries
            .iter()
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>(),
        payloads(0..5)
    );
    assert_eq!(entries[4].hash, log.head_hash());
}

#[test]
fn seqs_and_chain_stay_contiguous_across_segment_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_bytes_max: 200,
    };
    let (mut log, _) = Log::open(tmp.path(), cfg).unwrap();
    for i in 0..6 {
        log.append_batch(&payloads(i * 2..i * 2 + 2)).unwrap();
    }

    let report = verify(tmp.path()).unwrap();
    assert!(report.segments >= 3, "tiny segments must roll: {report:?}");
    assert_eq!((report.records, report.head_seq), (12, 12));
    assert_eq!(report.head_hash, log.head_hash());
    assert_eq!(report.torn_tail, None);
    let seqs: Vec<Seq> = read_all(tmp.path(), 12).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
}

#[test]
fn reopen_continues_the_chain_where_it_left_off() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_bytes_max: 150,
    };
    let (mut log, _) = Log::open(tmp.path(), cfg).unwrap();
    log.append_batch(&payloads(0..4)).unwrap();
    let (head_seq, head_hash) = (log.head_seq(), log.head_hash());
    drop(log);

    let (mut log, recovery) = Log::open(tmp.path(), cfg).unwrap();
    assert_eq!(recovery.head_seq, head_seq);
    assert_eq!((log.head_seq(), log.head_hash()), (head_seq, head_hash));
    assert_eq!(recovery.torn_tail_saved_to, None);
    assert_eq!(log.append_batch(&payloads(4..6)).unwrap(), 5..7);
    drop(log);

    let report = verify(tmp.path()).unwrap();
    assert_eq!((report.head_seq, report.segments), (6, 2));
    let entries = read_all(tmp.path(), 6);
    assert_eq!(
        entries[4].hash,
        frame::chain_hash(&head_hash, 5, b"event-4")
    );
}

#[test]
fn empty_batch_assigns_nothing_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    log.append_batch(&payloads(0..2)).unwrap();
    let before = verify(tmp.path()).unwrap();

    let empty: [&[u8]; 0] = [];
    assert_eq!(log.append_batch(&empty).unwrap(), 3..3);
    assert_eq!(log.head_seq(), 2);
    assert_eq!(verify(tmp.path()).unwrap(), before);
}

#[test]
fn oversized_payload_is_refused_without_touching_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    let batch = vec![vec![1u8; 10], vec![0u8; PAYLOAD_BYTES_MAX + 1]];
    let err = log.append_batch(&batch).unwrap_err();
    assert!(
        matches!(err, LogError::PayloadTooLarge { index: 1, .. }),
        "{err}"
    );
    assert_eq!(log.append_batch(&payloads(0..1)).unwrap(), 1..2);
    assert_eq!(verify(tmp.path()).unwrap().records, 1);
}

#[test]
fn read_range_past_the_head_on_disk_is_an_error_not_a_short_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    log.append_batch(&payloads(0..3)).unwrap();
    let results: Vec<_> = read_range(tmp.path(), 2, 5).unwrap().collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1].as_ref().unwrap().seq, 3);
    assert!(matches!(
        results[2],
        Err(LogError::BeyondHead {
            up_to: 5,
            last_on_disk: 3
        })
    ));
    assert_eq!(read_range(tmp.path(), 3, 2).unwrap().count(), 0);
}

#[test]
fn stale_tmp_segment_from_a_crashed_roll_is_removed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    log.append_batch(&payloads(0..2)).unwrap();
    drop(log);
    let stale = tmp.path().join("00000000000000000003.seg.tmp");
    fs::write(&stale, b"KMLOG").unwrap();

    let (log, recovery) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!((recovery.head_seq, recovery.segments), (2, 1));
    assert_eq!(log.head_seq(), 2);
    assert!(!stale.exists());
}

#[test]
fn batch_spanning_several_chunks_with_a_frame_larger_than_a_chunk_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    let mut batch = big_payloads(6, APPEND_CHUNK_BYTES / 3);
    batch.insert(2, vec![0xEE; APPEND_CHUNK_BYTES + APPEND_CHUNK_BYTES / 2]);
    batch.push(b"tail".to_vec());
    assert_eq!(log.append_batch(&batch).unwrap(), 1..9);
    assert_eq!(log.append_batch(&payloads(0..2)).unwrap(), 9..11);
    let head_hash = log.head_hash();
    drop(log);

    let mut expected_hash = frame::GENESIS_HASH;
    let entries = read_all(tmp.path(), 10);
    for (entry, payload) in entries.iter().zip(batch.iter().chain(&payloads(0..2))) {
        assert_eq!(&entry.payload, payload, "seq {}", entry.seq);
        expected_hash = frame::chain_hash(&expected_hash, entry.seq, payload);
        assert_eq!(entry.hash, expected_hash);
    }
    let report = verify(tmp.path()).unwrap();
    assert_eq!((report.records, report.head_hash), (10, head_hash));
    assert_eq!(report.torn_tail, None);
    let (_, recovery) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!((recovery.head_seq, recovery.torn_tail_bytes), (10, 0));
}

#[test]
fn second_open_of_a_locked_directory_fails_until_the_writer_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    log.append_batch(&payloads(0..3)).unwrap();

    let err = Log::open(tmp.path(), LogConfig::default()).unwrap_err();
    assert!(
        matches!(&err, LogError::Locked { dir } if dir == tmp.path()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("is in use by another process"),
        "{message}"
    );
    assert!(
        message.contains(&tmp.path().display().to_string()),
        "{message}"
    );

    // Readers take no lock, and the LOCK file is no segment.
    assert!(tmp.path().join(LOCK_FILE_NAME).exists());
    let report = verify(tmp.path()).unwrap();
    assert_eq!((report.records, report.segments), (3, 1));
    assert_eq!(read_all(tmp.path(), 3).len(), 3);
    // The refused open changed nothing: the writer carries on.
    assert_eq!(log.append_batch(&payloads(3..4)).unwrap(), 4..5);

    drop(log);
    let (log, recovery) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!((recovery.head_seq, recovery.segments), (4, 1));
    assert!(matches!(
        Log::open(tmp.path(), LogConfig::default()),
        Err(LogError::Locked { .. })
    ));
    drop(log);
}

#[test]
fn failed_fsync_poisons_the_log_and_reopen_decides_what_is_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    log.append_batch(&payloads(0..2)).unwrap();
    let (head_seq, head_hash) = (log.head_seq(), log.head_hash());

    log.faults.fail_sync = true;
    expect_io(
        log.append_batch(&payloads(2..5)).unwrap_err(),
        "fdatasync batch",
    );
    assert_eq!((log.head_seq(), log.head_hash()), (head_seq, head_hash));
    assert!(matches!(
        log.append_batch(&payloads(5..6)),
        Err(LogError::Poisoned)
    ));
    assert!(matches!(
        log.append_batch(&payloads(5..5)),
        Err(LogError::Poisoned)
    ));
    assert_eq!(log.head_seq(), head_seq);
    drop(log);

    // The write itself succeeded, so the page cache (which the reopen reads) holds the
    // whole batch: recovery keeps it. What matters is that the reopen, not the poisoned
    // writer, decided.
    let (mut log, recovery) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!((recovery.head_seq, recovery.torn_tail_bytes), (5, 0));
    assert_eq!(log.append_batch(&payloads(5..6)).unwrap(), 6..7);
    assert_eq!(verify(tmp.path()).unwrap().head_seq, 6);
}

#[test]
fn failed_write_mid_batch_poisons_and_reopen_cuts_the_partial_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    log.append_batch(&payloads(0..2)).unwrap();
    let (head_seq, head_hash) = (log.head_seq(), log.head_hash());
    let segment = log.segment_path.clone();
    let committed_len = fs::metadata(&segment).unwrap().len();

    // 3 frames fill the first chunk; the second (frames 4 to 6) is cut inside frame 5.
    let batch = big_payloads(6, APPEND_CHUNK_BYTES * 2 / 5);
    let frame_len = (FRAME_HEADER_LEN + batch[0].len()) as u64;
    log.faults.fail_write_after = Some(1);
    expect_io(log.append_batch(&batch).unwrap_err(), "write batch");
    assert_eq!((log.head_seq(), log.head_hash()), (head_seq, head_hash));
    assert!(matches!(
        log.append_batch(&payloads(2..3)),
        Err(LogError::Poisoned)
    ));
    drop(log);

    let written = 3 * frame_len + 3 * frame_len / 2; // chunk one, then half of chunk two
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        committed_len + written
    );
    let torn = verify(tmp.path())
        .unwrap()
        .torn_tail
        .expect("torn tail reported");
    assert_eq!((torn.offset, torn.bytes), (committed_len, written));
    assert!(torn.reason.contains("incomplete batch"), "{}", torn.reason);

    let (mut log, recovery) = Log::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!((log.head_seq(), log.head_hash()), (head_seq, head_hash));
    assert_eq!(recovery.torn_tail_bytes, written);
    assert_eq!(fs::metadata(&segment).unwrap().len(), committed_len);
    assert_eq!(log.append_batch(&payloads(2..4)).unwrap(), 3..5);
    drop(log);
    let report = verify(tmp.path()).unwrap();
    assert_eq!((report.head_seq, report.torn_tail), (4, None));
}
