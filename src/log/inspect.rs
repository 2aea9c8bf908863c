//! Read-only inspection of a log directory: the full offline check and the list of its
//! segment files. Takes no lock; may run beside a writer.

use std::path::{Path, PathBuf};

use super::scan::scan_log;
use super::segment;
use super::storage::LogDir;
use super::{LogError, Seq};

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

/// Full offline check, read-only: every frame, CRC, seq contiguity and chain. Damage is an
/// error naming the first bad position; a torn tail is reported in the result.
pub fn verify(dir: &Path) -> Result<VerifyReport, LogError> {
    LogDir::disk(dir).verify()
}

impl LogDir {
    /// [`verify`] on this directory's storage.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        verify_in(self)
    }
}

fn verify_in(dir: &LogDir) -> Result<VerifyReport, LogError> {
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
    Ok(segment::list_segments(&LogDir::disk(dir))?
        .into_iter()
        .map(|s| (s.first_seq, s.path))
        .collect())
}
