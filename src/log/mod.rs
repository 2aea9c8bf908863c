//! The event log: append-only segment files in `DATA/log/`, the durable truth every
//! projection is rebuilt from. This module owns their byte format, appending, recovery at
//! open, offline verification and replay reads.
//!
//! # Files
//!
//! - `{first_seq:020}.seg` — a segment. Starts with a 24-byte header, then frames:
//!   ```text
//!   segment header: [u8; 8] magic "KMLOGSEG" | u32 LE version (1) | u64 LE first_seq
//!                   | u32 LE crc32c over the previous 20 bytes
//!   frame:          u32 LE payload_len | u32 LE crc32c over flags, seq, hash, payload
//!                   | u8 flags (bit0 BATCH_END) | u64 LE seq | [u8; 32] hash | payload
//!   hash = SHA-256(prev_hash || seq as u64 LE || payload), prev_hash of seq 1 = 32 zero bytes
//!   ```
//!   Seqs start at 1 and are contiguous across segments; the chain runs across segments.
//! - `{first_seq:020}.seg.tmp` — a segment being created; removed by [`Log::open`].
//! - `torn-{segment_first_seq:020}-{offset}.bin` — bytes cut from a torn tail, kept for
//!   inspection (a `.N` is added before `.bin` if a different cut already used the name).
//!
//! # Durability
//!
//! [`Log::append_batch`] encodes the whole batch into one reused buffer, issues one `write`
//! and one `fdatasync`; the batch's last frame carries BATCH_END. Only after the sync
//! returns do `head_seq`/`head_hash` move. A failed write or sync poisons the `Log` (further
//! appends return [`LogError::Poisoned`]): after a failed fsync the page cache state is
//! unknown, and only a reopen (which re-runs recovery) may decide what is on disk.
//! A segment is rolled only between batches, once it holds at least one record and is
//! `>= segment_bytes_max` bytes; so a batch never spans segments and a sealed segment ends
//! with BATCH_END. New segments are created under a tmp name, header fsynced, renamed and
//! the directory fsynced, so every `*.seg` has a complete header. A sealed segment is never
//! written again. There is one writer per directory; nothing locks against a second one.
//!
//! # Recovery rules ([`Log::open`])
//!
//! Every frame of every segment is checked: framing, CRC, known flags, seq contiguity (also
//! across segment boundaries and against file names), and the hash chain.
//!
//! - Sealed segments (all but the last): any defect — CRC, short or oversized frame, seq
//!   gap, chain mismatch, trailing bytes, no records, or a last frame without BATCH_END —
//!   is [`LogError::Corrupt`]. A sealed segment is never truncated.
//! - Last segment: a frame that is truncated (header shorter than 49 bytes, or declared
//!   length running past end of file), declares a length over [`PAYLOAD_BYTES_MAX`], or
//!   fails its CRC is a *torn tail* only if no valid frame exists anywhere after it (every
//!   later byte offset is tried; a candidate must fit, have a plausible seq and a valid
//!   CRC). If one exists, it is [`LogError::Corrupt`]: a crash loses the end of a file,
//!   it does not leave intact records behind a damaged one.
//! - A frame whose CRC is valid but whose seq, flags or chain hash are wrong is always
//!   Corrupt, wherever it is (a rewritten record with a recomputed CRC fails the chain).
//! - Frames after the last BATCH_END of the last segment are an incomplete batch: batches
//!   are all-or-nothing, so they are cut too, together with any torn frame.
//! - Cutting: the cut bytes are first copied to a `torn-*.bin` file and fsynced (and the
//!   directory), then the segment is truncated to the end of its last complete batch and
//!   fsynced, and a `tracing::warn!` names the segment, offset, byte count and copy.
//!
//! A torn write of the last, unsynced batch that persisted pages out of order (a damaged
//! frame followed by an intact one of the same batch) is indistinguishable from damage to an
//! acknowledged batch, and is therefore refused, not cut: refusing never loses an
//! acknowledged record, cutting could. The error names the record; an operator decides.
//!
//! [`verify`] runs the same checks read-only: damage is an `Err(Corrupt)` naming the first
//! bad position; a torn tail is not an error but is reported in [`VerifyReport::torn_tail`]
//! (what `open` would cut). [`read_range`] reads a seq range for replay.
//!
//! # Limits
//!
//! Payloads are at most [`PAYLOAD_BYTES_MAX`] (16 MiB), an encoded batch at most
//! [`BATCH_BYTES_MAX`] (256 MiB); a length field beyond the payload limit is a defect, never
//! an allocation. The append buffer keeps at most [`APPEND_BUFFER_RETAINED_BYTES`] between
//! batches.

pub mod frame;
mod reader;
mod scan;
mod segment;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use frame::{FRAME_HEADER_LEN, PAYLOAD_BYTES_MAX, SEGMENT_HEADER_LEN};
pub use reader::{read_range, LogReader};

use frame::encode_batch;
use scan::{scan_log, ChainPos, LastSegment};
use segment::{create_segment, fsync_dir, read_bytes, remove_stale_tmp_files};

/// A record's position in the log; 1 is the first record, 0 means "none".
pub type Seq = u64;

/// Largest encoded batch (frames included) one `append_batch` may write.
pub const BATCH_BYTES_MAX: usize = 256 * 1024 * 1024;
/// The append buffer is shrunk back to this after an unusually large batch.
pub const APPEND_BUFFER_RETAINED_BYTES: usize = 16 * 1024 * 1024;
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is sealed (at a batch boundary) once it reaches this size.
    pub segment_bytes_max: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: Seq,
    pub hash: [u8; 32],
    pub payload: Vec<u8>,
}

/// What [`Log::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Last seq of the last complete batch; 0 for an empty log.
    pub head_seq: Seq,
    pub segments: usize,
    /// Bytes cut from the end of the last segment (torn frame and/or incomplete batch).
    pub torn_tail_bytes: u64,
    /// Where the cut bytes were copied before truncating.
    pub torn_tail_saved_to: Option<PathBuf>,
}

/// Result of [`verify`]: the log is intact up to `head_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records in complete batches.
    pub records: u64,
    pub segments: usize,
    /// Size of all segment files, torn tail included.
    pub bytes: u64,
    pub head_seq: Seq,
    pub head_hash: [u8; 32],
    /// A torn tail `Log::open` would cut. Not damage: a crash during an append leaves one.
    pub torn_tail: Option<TornTail>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Where the cut starts: the end of the last complete batch.
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log i/o error ({op}) on {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log is damaged: the engine must not run on it. Names the first bad position.
    #[error(
        "log corrupt at {} offset {offset}{}: {reason}",
        .segment.display(),
        seq_suffix(.seq)
    )]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        /// The bad record's seq, or the seq it should have when its own cannot be trusted.
        seq: Option<Seq>,
        reason: String,
    },
    #[error("payload {index} of the batch is {len} bytes, over the limit of {PAYLOAD_BYTES_MAX}")]
    PayloadTooLarge { index: usize, len: usize },
    #[error("batch encodes to {bytes} bytes, over the limit of {BATCH_BYTES_MAX}")]
    BatchTooLarge { bytes: usize },
    #[error("log refuses appends after a failed write or fsync; reopen it to recover")]
    Poisoned,
    #[error("requested records up to seq {up_to}, but the log on disk ends at seq {last_on_disk}")]
    BeyondHead { up_to: Seq, last_on_disk: Seq },
}

fn seq_suffix(seq: &Option<Seq>) -> String {
    seq.map(|s| format!(" (record seq {s})"))
        .unwrap_or_default()
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The single writer of a log directory.
pub struct Log {
    dir: PathBuf,
    cfg: LogConfig,
    /// The last segment, open for writing, positioned at its end.
    file: File,
    segment_path: PathBuf,
    segment_len: u64,
    head: ChainPos,
    /// Reused batch encoding buffer.
    buf: Vec<u8>,
    poisoned: bool,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("segment", &self.segment_path)
            .field("segment_len", &self.segment_len)
            .field("head_seq", &self.head_seq())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Log {
    /// Opens (creating the directory if missing) and recovers; see the module doc for the
    /// rules. Verifies every frame of every segment.
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<(Log, Recovery), LogError> {
        create_dir_durably(dir)?;
        remove_stale_tmp_files(dir)?;
        let scan = scan_log(dir)?;
        let mut recovery = Recovery {
            head_seq: scan.head.head_seq(),
            segments: scan.segment_count,
            torn_tail_bytes: 0,
            torn_tail_saved_to: None,
        };
        let (file, segment_path, segment_len) = match scan.last {
            None => {
                let (file, path) = create_segment(dir, 1)?;
                recovery.segments = 1;
                (file, path, SEGMENT_HEADER_LEN as u64)
            }
            Some(last) => {
                let path = &last.segment.path;
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("open segment for append", path))?;
                if let Some(reason) = &last.tail_reason {
                    let saved_to = cut_torn_tail(dir, &file, &last, reason)?;
                    recovery.torn_tail_bytes = last.file_len - last.committed_end;
                    recovery.torn_tail_saved_to = Some(saved_to);
                }
                file.seek(SeekFrom::Start(last.committed_end))
                    .map_err(io_err("seek segment end", path))?;
                (file, last.segment.path, last.committed_end)
            }
        };
        let log = Log {
            dir: dir.to_path_buf(),
            cfg,
            file,
            segment_path,
            segment_len,
            head: scan.head,
            buf: Vec::new(),
            poisoned: false,
        };
        Ok((log, recovery))
    }

    /// Appends `payloads` as one batch (all-or-nothing across a crash) with one write and one
    /// `fdatasync`, and returns the seqs assigned. An empty batch does no I/O.
    pub fn append_batch<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<Range<Seq>, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let first_seq = self.head.next_seq;
        if payloads.is_empty() {
            return Ok(first_seq..first_seq);
        }
        let batch_bytes = encoded_batch_len(payloads)?;
        self.buf.clear();
        self.buf.reserve(batch_bytes);
        let last_hash = encode_batch(self.head.prev_hash, first_seq, payloads, &mut self.buf);
        assert_eq!(self.buf.len(), batch_bytes, "encoded batch length");

        if let Err(err) = self.write_buffered_batch() {
            self.poisoned = true;
            return Err(err);
        }
        let end_seq = first_seq + payloads.len() as Seq;
        self.head = ChainPos {
            next_seq: end_seq,
            prev_hash: last_hash,
        };
        if self.buf.capacity() > APPEND_BUFFER_RETAINED_BYTES {
            self.buf = Vec::new();
        }
        Ok(first_seq..end_seq)
    }

    /// Seq of the last durable record; 0 when the log is empty.
    pub fn head_seq(&self) -> Seq {
        self.head.head_seq()
    }

    /// Hash of the last durable record; 32 zero bytes when the log is empty.
    pub fn head_hash(&self) -> [u8; 32] {
        self.head.prev_hash
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_buffered_batch(&mut self) -> Result<(), LogError> {
        let has_records = self.segment_len > SEGMENT_HEADER_LEN as u64;
        if has_records && self.segment_len >= self.cfg.segment_bytes_max {
            self.roll_segment()?;
        }
        let path = &self.segment_path;
        self.file
            .write_all(&self.buf)
            .map_err(io_err("write batch", path))?;
        self.file
            .sync_data()
            .map_err(io_err("fdatasync batch", path))?;
        self.segment_len += self.buf.len() as u64;
        Ok(())
    }

    fn roll_segment(&mut self) -> Result<(), LogError> {
        let (file, path) = create_segment(&self.dir, self.head.next_seq)?;
        self.file = file;
        self.segment_path = path;
        self.segment_len = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }
}

/// Full offline check, read-only: every frame, CRC, seq contiguity and chain. Damage is an
/// error naming the first bad position; a torn tail is reported in the result.
pub fn verify(dir: &Path) -> Result<VerifyReport, LogError> {
    let scan = scan_log(dir)?;
    let torn_tail = scan.last.and_then(|last| {
        let reason = last.tail_reason?;
        Some(TornTail {
            segment: last.segment.path,
            offset: last.committed_end,
            bytes: last.file_len - last.committed_end,
            reason,
        })
    });
    Ok(VerifyReport {
        records: scan.records,
        segments: scan.segment_count,
        bytes: scan.bytes,
        head_seq: scan.head.head_seq(),
        head_hash: scan.head.prev_hash,
        torn_tail,
    })
}

fn encoded_batch_len<P: AsRef<[u8]>>(payloads: &[P]) -> Result<usize, LogError> {
    let mut bytes = 0usize;
    for (index, payload) in payloads.iter().enumerate() {
        let len = payload.as_ref().len();
        if len > PAYLOAD_BYTES_MAX {
            return Err(LogError::PayloadTooLarge { index, len });
        }
        bytes = bytes.saturating_add(FRAME_HEADER_LEN + len);
    }
    if bytes > BATCH_BYTES_MAX {
        return Err(LogError::BatchTooLarge { bytes });
    }
    Ok(bytes)
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent so the
/// directory entries survive a crash.
fn create_dir_durably(dir: &Path) -> Result<(), LogError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err("create log directory", dir))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Copies the torn tail to a `torn-*.bin` file (fsynced), then truncates the segment to its
/// last complete batch (fsynced). Returns the copy's path.
fn cut_torn_tail(
    dir: &Path,
    file: &File,
    last: &LastSegment,
    reason: &str,
) -> Result<PathBuf, LogError> {
    let path = &last.segment.path;
    let offset = last.committed_end;
    let bytes = read_bytes(path, offset, last.file_len)?;
    let saved_to = save_torn_bytes(dir, last.segment.first_seq, offset, &bytes)?;
    file.set_len(offset)
        .map_err(io_err("truncate torn tail", path))?;
    file.sync_all()
        .map_err(io_err("fsync truncated segment", path))?;
    tracing::warn!(
        segment = %path.display(),
        offset,
        bytes = bytes.len(),
        saved_to = %saved_to.display(),
        reason,
        "cut torn tail from the last log segment"
    );
    Ok(saved_to)
}

/// Bound on name collisions: each is a different earlier cut at the same offset.
const TORN_FILE_NAME_ATTEMPTS: usize = 1000;

fn save_torn_bytes(
    dir: &Path,
    segment_first_seq: Seq,
    offset: u64,
    bytes: &[u8],
) -> Result<PathBuf, LogError> {
    for attempt in 0..TORN_FILE_NAME_ATTEMPTS {
        let suffix = if attempt == 0 {
            String::new()
        } else {
            format!(".{attempt}")
        };
        let path = dir.join(format!("torn-{segment_first_seq:020}-{offset}{suffix}.bin"));
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Same bytes: an earlier open saved them and crashed before truncating.
                let existing = fs::read(&path).map_err(io_err("read torn file", &path))?;
                if existing != bytes {
                    continue;
                }
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open torn file", &path))?
            }
            Err(err) => return Err(io_err("create torn file", &path)(err)),
        };
        if file
            .metadata()
            .map_err(io_err("stat torn file", &path))?
            .len()
            == 0
        {
            file.write_all(bytes)
                .map_err(io_err("write torn file", &path))?;
        }
        file.sync_all().map_err(io_err("fsync torn file", &path))?;
        fsync_dir(dir)?;
        return Ok(path);
    }
    Err(LogError::Io {
        op: "name torn file",
        path: dir.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "too many torn files at this offset",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
