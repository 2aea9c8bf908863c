//! The event log: append-only segment files in `DATA/log/`, the durable truth every
//! projection is rebuilt from. This module owns their byte format, appending, recovery at
//! open, offline verification and replay reads.
//!
//! # Files
//!
//! - `{first_seq:020}.seg` — a segment. Starts with a 24-byte header, then frames:
//!   ```text
//!   segment header: [u8; 8] magic "KMLOGSEG" | u32 LE version (2) | u64 LE first_seq
//!                   | u32 LE crc32c over the previous 20 bytes
//!   frame:          u32 LE payload_len | u32 LE crc32c over flags, seq, hash, payload
//!                   | u8 flags (bit0 BATCH_END, bit1 BATCH_START) | u64 LE seq
//!                   | [u8; 32] hash | payload
//!   hash = SHA-256(prev_hash || seq as u64 LE || payload), prev_hash of seq 1 = 32 zero bytes
//!   ```
//!   Seqs start at 1 and are contiguous across segments; the chain runs across segments.
//!   The first frame of every batch carries BATCH_START and its last BATCH_END (a
//!   one-record batch carries both). Version 1 segments, written before BATCH_START
//!   existed, are still read; [`Log::open`] never appends to one: a version 1 last segment
//!   is sealed as it is (or, holding no record, replaced) and appends go to a new segment.
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
//!   fails its CRC is a *torn tail* only if what follows it can be the rest of the batch
//!   it belongs to. Only the batch being appended when the power went was unsynced, so
//!   only its pages can be missing, torn or reordered; every earlier batch was synced
//!   before it began. Every later byte offset is tried for a valid frame (it must fit,
//!   have a plausible seq and a valid CRC). If one carries BATCH_START (a later batch was
//!   begun, so the damaged one had been synced), or anything valid follows a BATCH_END
//!   after the damage, it is [`LogError::Corrupt`]: damage inside the log. Otherwise the
//!   valid frames after the damage, its own BATCH_END included, are pages of the
//!   unfinished batch that reached the disk before an earlier page did, and are cut with
//!   it. (In a version 1 segment, with no BATCH_START to tell batches apart, any valid
//!   BATCH_END after the damage is refused.)
//! - In a version 2 segment, BATCH_START set on a frame that does not follow a BATCH_END
//!   (or the segment header), or clear on one that does, is Corrupt.
//! - A frame whose CRC is valid but whose seq, flags or chain hash are wrong is always
//!   Corrupt, wherever it is (a rewritten record with a recomputed CRC fails the chain).
//! - Frames after the last BATCH_END of the last segment are an incomplete batch: batches
//!   are all-or-nothing, so they are cut too, together with any torn frame.
//! - Cutting: the cut bytes are first copied to a `torn-*.bin` file and fsynced (and the
//!   directory), then the segment is truncated to the end of its last complete batch and
//!   fsynced, and a `tracing::warn!` names the segment, offset, byte count and copy.
//!
//! What remains ambiguous is damage (say, a bit flip) to a synced batch at the very end of
//! the log with nothing valid behind it, or behind it only the pages of an unfinished
//! batch that lost its first page: it looks like a torn final write and is cut with its
//! batch; the bytes survive in the `torn-*.bin` file and the warning says so.
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

mod append;
pub mod frame;
mod inspect;
mod open;
mod reader;
mod scan;
mod segment;
pub mod sim;
pub mod storage;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use frame::{FRAME_HEADER_LEN, PAYLOAD_BYTES_MAX, SEGMENT_HEADER_LEN};
pub use inspect::{segment_files, verify, TornTail, VerifyReport};
pub use reader::{read_range, LogReader};
pub use storage::{Disk, LogDir, Storage, StorageFile};

use scan::ChainPos;

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
    dir: LogDir,
    cfg: LogConfig,
    /// The last segment, open for writing; `segment_len` is where the next batch goes.
    file: Box<dyn StorageFile>,
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
    _lock: Box<dyn Any + Send + Sync>,
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
    /// Seq of the last durable record; 0 when the log is empty.
    pub fn head_seq(&self) -> Seq {
        self.head.head_seq()
    }

    /// Hash of the last durable record; 32 zero bytes when the log is empty.
    pub fn head_hash(&self) -> [u8; 32] {
        self.head.prev_hash
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
