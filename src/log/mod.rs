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
//! - `LOCK` — empty; the writer holds an exclusive lock on it (see below). Not a segment.
//!
//! # Durability
//!
//! [`Log::append_batch`] encodes the batch frame by frame into one reused buffer and
//! `write`s it out in chunks of about [`APPEND_CHUNK_BYTES`] as they fill. After each chunk
//! but the last it asks the kernel to start writeback of that chunk (on Linux,
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the device writes while the next chunk is
//! hashed; the batch then ends with one `fdatasync`. That `fdatasync` is the batch's only
//! durability point: the writeback hint neither waits for nor flushes anything (see
//! `Log::start_writeback`). The batch's last frame carries BATCH_END, so a crash before
//! the sync returns leaves at most a prefix of the batch without BATCH_END (whole chunks,
//! perhaps a torn frame), which recovery cuts as an incomplete batch. Only after the sync
//! returns do `head_seq`/`head_hash` move. A failed write, writeback hint or sync poisons
//! the `Log` (further appends return [`LogError::Poisoned`]): after a failed fsync the page
//! cache state is unknown, and only a reopen (which re-runs recovery) may decide what is on
//! disk.
//! A segment is rolled only between batches, once it holds at least one record and is
//! `>= segment_bytes_max` bytes; so a batch never spans segments and a sealed segment ends
//! with BATCH_END. New segments are created under a tmp name, header fsynced, renamed and
//! the directory fsynced, so every `*.seg` has a complete header. A sealed segment is never
//! written again.
//!
//! There is one writer per directory: [`Log`] holds an exclusive lock on `LOCK`
//! ([`File::try_lock`]: `flock` on Unix, `LockFileEx` on Windows) for its lifetime, and a
//! second [`Log::open`] of the directory, from any process, fails with
//! [`LogError::Locked`]. The lock goes with the open file, so it is released when the `Log`
//! is dropped or its process dies. [`verify`] and [`read_range`] only read, take no lock
//! and may run while a writer is appending (a `verify` then may report the batch in flight
//! as an incomplete batch at the tail).
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
//!   fails its CRC is a *torn tail* only if no complete batch follows it: no valid frame
//!   carrying BATCH_END exists anywhere after it (every later byte offset is tried; a
//!   candidate must fit, have a plausible seq and a valid CRC). If one exists, it is
//!   [`LogError::Corrupt`]: a crash loses (parts of) the batch being written, it does not
//!   leave a finished batch behind a damaged one. Valid frames after the damage without a
//!   BATCH_END are pages of that same unfinished batch that reached the disk out of order,
//!   and are cut with it.
//! - A frame whose CRC is valid but whose seq, flags or chain hash are wrong is always
//!   Corrupt, wherever it is (a rewritten record with a recomputed CRC fails the chain).
//! - Frames after the last BATCH_END of the last segment are an incomplete batch: batches
//!   are all-or-nothing, so they are cut too, together with any torn frame.
//! - Cutting: the cut bytes are first copied to a `torn-*.bin` file and fsynced (and the
//!   directory), then the segment is truncated to the end of its last complete batch and
//!   fsynced, and a `tracing::warn!` names the segment, offset, byte count and copy.
//!
//! A torn write of the last, unsynced batch whose BATCH_END frame did reach the disk while
//! an earlier page of it did not is indistinguishable from damage to an acknowledged batch,
//! and is therefore refused, not cut: refusing never loses an acknowledged record, cutting
//! could. The error names the record; an operator decides.
//! The converse is also indistinguishable: damage (say, a bit flip) in the very last frame,
//! with nothing valid behind it, looks like a torn final write and is cut with its batch;
//! the bytes survive in the `torn-*.bin` file and the warning says so.
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
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use frame::{FRAME_HEADER_LEN, PAYLOAD_BYTES_MAX, SEGMENT_HEADER_LEN};
pub use reader::{read_range, LogReader};

use frame::encode_frame;
use scan::{scan_log, ChainPos, LastSegment};
use segment::{create_segment, fsync_dir, read_bytes, remove_stale_tmp_files, LOCK_FILE_NAME};

/// A record's position in the log; 1 is the first record, 0 means "none".
pub type Seq = u64;

/// Largest encoded batch (frames included) one `append_batch` may write.
pub const BATCH_BYTES_MAX: usize = 256 * 1024 * 1024;
/// The append buffer is shrunk back to this after an unusually large batch.
pub const APPEND_BUFFER_RETAINED_BYTES: usize = 16 * 1024 * 1024;
/// A batch is written in chunks of at least this many bytes (whole frames; the last chunk
/// may be shorter), each handed to writeback while the next one is encoded. On the
/// `log_append` bench 1 MiB beat 64 KiB to 2 MiB: smaller chunks pay per-I/O overhead,
/// larger ones overlap less.
pub const APPEND_CHUNK_BYTES: usize = 1024 * 1024;
/// Writeback hints end on a multiple of this (a multiple of every Linux page size), so the
/// partly written page at a chunk's end is not written out before the next chunk fills it.
const WRITEBACK_ALIGN: u64 = 64 * 1024;
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
    /// Another [`Log`] (in this or another process) holds the directory's `LOCK`.
    #[error(
        "log directory {} is in use by another process (its LOCK file is locked); \
         stop that process first",
        .dir.display()
    )]
    Locked { dir: PathBuf },
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
    /// Reused chunk encoding buffer.
    buf: Vec<u8>,
    /// Whether to issue writeback hints; cleared if the kernel says it cannot take them.
    writeback_hint: bool,
    poisoned: bool,
    /// `LOCK`, exclusively locked for as long as this `Log` lives. Declared after `file` so
    /// the segment is closed before the lock is released.
    _lock: File,
    #[cfg(test)]
    faults: tests::Faults,
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
    /// Opens (creating the directory if missing), takes the directory's lock and recovers;
    /// see the module doc for the rules. Verifies every frame of every segment. Fails with
    /// [`LogError::Locked`] if another `Log` has the directory open.
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<(Log, Recovery), LogError> {
        create_dir_durably(dir)?;
        // Before anything that writes: recovery must not race a live writer.
        let lock = lock_dir(dir)?;
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
            writeback_hint: true,
            poisoned: false,
            _lock: lock,
            #[cfg(test)]
            faults: tests::Faults::default(),
        };
        Ok((log, recovery))
    }

    /// Appends `payloads` as one batch (all-or-nothing across a crash), written in chunks as
    /// it is encoded and made durable by one `fdatasync`, and returns the seqs assigned. An
    /// empty batch does no I/O.
    pub fn append_batch<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<Range<Seq>, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let first_seq = self.head.next_seq;
        if payloads.is_empty() {
            return Ok(first_seq..first_seq);
        }
        let sizes = batch_sizes(payloads)?;
        let last_hash = match self.write_batch(first_seq, payloads, sizes) {
            Ok(hash) => hash,
            Err(err) => {
                self.poisoned = true;
                return Err(err);
            }
        };
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

    /// Rolls the segment if due, writes the batch chunk by chunk as it is encoded (handing
    /// each full chunk to writeback), then `fdatasync`s. Returns the last record's hash.
    /// After an error an unknown prefix of the batch may be in the file: the caller poisons.
    fn write_batch<P: AsRef<[u8]>>(
        &mut self,
        first_seq: Seq,
        payloads: &[P],
        sizes: BatchSizes,
    ) -> Result<[u8; 32], LogError> {
        let has_records = self.segment_len > SEGMENT_HEADER_LEN as u64;
        if has_records && self.segment_len >= self.cfg.segment_bytes_max {
            self.roll_segment()?;
        }
        // A chunk is written as soon as it reaches APPEND_CHUNK_BYTES, so it never holds more
        // than that plus one frame: reserving this once keeps allocation out of the loop.
        self.buf.clear();
        self.buf.reserve(
            sizes
                .total
                .min(APPEND_CHUNK_BYTES - 1 + sizes.largest_frame),
        );
        let mut hash = self.head.prev_hash;
        // File offsets: the end of what has been written, and of what writeback was asked for.
        let mut written_end = self.segment_len;
        let mut hinted_end = self.segment_len;
        for (i, payload) in payloads.iter().enumerate() {
            let batch_end = i + 1 == payloads.len();
            let seq = first_seq + i as Seq;
            hash = encode_frame(&hash, seq, payload.as_ref(), batch_end, &mut self.buf);
            if self.buf.len() >= APPEND_CHUNK_BYTES || batch_end {
                self.write_chunk()?;
                written_end += self.buf.len() as u64;
                self.buf.clear();
                // The page holding `written_end` is re-dirtied by the next chunk: leave it to
                // the next hint (or the final sync) instead of writing it out twice.
                let hint_end = written_end / WRITEBACK_ALIGN * WRITEBACK_ALIGN;
                if !batch_end && hint_end > hinted_end {
                    self.start_writeback(hinted_end, hint_end - hinted_end)?;
                    hinted_end = hint_end;
                }
            }
        }
        self.sync_batch()?;
        debug_assert_eq!(
            written_end - self.segment_len,
            sizes.total as u64,
            "encoded batch length"
        );
        self.segment_len = written_end;
        Ok(hash)
    }

    fn write_chunk(&mut self) -> Result<(), LogError> {
        let path = &self.segment_path;
        #[cfg(test)]
        if self.faults.take_write_fault() {
            // A short write, then the error: half the chunk reaches the file.
            let half = self.buf.len() / 2;
            self.file
                .write_all(&self.buf[..half])
                .map_err(io_err("write batch", path))?;
            return Err(io_err("write batch", path)(tests::injected_error()));
        }
        self.file
            .write_all(&self.buf)
            .map_err(io_err("write batch", path))
    }

    /// Asks the kernel to start writing the chunk at `offset..offset + len` to the device now
    /// (Linux: `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the device works on it while the
    /// next chunk is hashed instead of receiving the whole batch at the final `fdatasync`.
    ///
    /// This is a writeback hint, never a durability point. Even with its WAIT flags,
    /// `sync_file_range` does not flush the device's volatile write cache and does not write
    /// the file size or any other metadata, so data it "synced" can still vanish in a power
    /// loss. sled 0.34 uses it (WAIT_BEFORE | WRITE | WAIT_AFTER) in place of an fsync on
    /// its log writes on Linux, which is why this log does not live in sled. Here only the
    /// `fdatasync` at the end of the batch makes the batch durable. `SYNC_FILE_RANGE_WRITE`
    /// alone does not wait on writeback either, so it cannot consume a writeback error that
    /// the final `fdatasync` must report. An error it does return still fails (and poisons)
    /// the append, except the ones saying the hint is unavailable, which turn hints off.
    fn start_writeback(&mut self, offset: u64, len: u64) -> Result<(), LogError> {
        if !self.writeback_hint {
            return Ok(());
        }
        match start_writeback(&self.file, offset, len) {
            Ok(()) => Ok(()),
            Err(err) if writeback_hint_unavailable(&err) => {
                tracing::debug!(error = %err, "writeback hints unavailable; plain writes only");
                self.writeback_hint = false;
                Ok(())
            }
            Err(err) => Err(io_err(
                "start writeback (sync_file_range)",
                &self.segment_path,
            )(err)),
        }
    }

    fn sync_batch(&mut self) -> Result<(), LogError> {
        let path = &self.segment_path;
        #[cfg(test)]
        if std::mem::take(&mut self.faults.fail_sync) {
            return Err(io_err("fdatasync batch", path)(tests::injected_error()));
        }
        self.file
            .sync_data()
            .map_err(io_err("fdatasync batch", path))
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

/// The segment files of a log directory in seq order, as (first seq, path). Read-only.
pub fn segment_files(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, LogError> {
    Ok(segment::list_segments(dir)?
        .into_iter()
        .map(|s| (s.first_seq, s.path))
        .collect())
}

/// Encoded sizes of a batch, checked against the limits.
#[derive(Debug, Clone, Copy)]
struct BatchSizes {
    total: usize,
    largest_frame: usize,
}

fn batch_sizes<P: AsRef<[u8]>>(payloads: &[P]) -> Result<BatchSizes, LogError> {
    let mut bytes = 0usize;
    let mut largest_payload = 0;
    for (index, payload) in payloads.iter().enumerate() {
        let len = payload.as_ref().len();
        if len > PAYLOAD_BYTES_MAX {
            return Err(LogError::PayloadTooLarge { index, len });
        }
        largest_payload = largest_payload.max(len);
        bytes = bytes.saturating_add(FRAME_HEADER_LEN + len);
    }
    if bytes > BATCH_BYTES_MAX {
        return Err(LogError::BatchTooLarge { bytes });
    }
    Ok(BatchSizes {
        total: bytes,
        largest_frame: FRAME_HEADER_LEN + largest_payload,
    })
}

/// Opens (creating) `dir/LOCK` and locks it exclusively without waiting.
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LogError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(err)) => Err(io_err("lock log directory", &path)(err)),
    }
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: queue the range for writeback
/// and return without waiting. See [`Log::start_writeback`] for what it does not do.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (offset.try_into(), len.try_into()) else {
        return Ok(()); // beyond off_t: skip the hint, the final fdatasync does the work
    };
    // SAFETY: a plain syscall on a file descriptor owned by `file`; no memory is passed.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere there is no writeback hint: chunks are plain writes and the final `fdatasync`
/// writes them all.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}

/// Errors meaning the kernel (or a sandbox) does not offer `sync_file_range` for this file,
/// as opposed to an I/O failure.
fn writeback_hint_unavailable(err: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        matches!(
            err.raw_os_error(),
            Some(libc::ENOSYS | libc::EINVAL | libc::ESPIPE | libc::EOPNOTSUPP)
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = err;
        false
    }
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent so the
/// directory entries survive a crash.
fn create_dir_durably(dir: &Path) -> Result<(), LogError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err("create log directory", dir))?;
    for created in missing.iter().rev() {
        match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent)?,
            _ => fsync_dir(Path::new("."))?,
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
}
