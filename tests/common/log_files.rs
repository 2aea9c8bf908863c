//! The log's files read by the documented frame format (src/log/mod.rs), not
//! by the engine's own decoder, so that a test of the log cannot share its bugs:
//!
//! ```text
//! segment header: [u8; 8] magic | u32 LE version | u64 LE first_seq | u32 LE crc32c
//! frame: u32 LE payload_len | u32 LE crc32c over flags, seq, hash, payload
//!        | u8 flags (bit0 BATCH_END, bit1 BATCH_START) | u64 LE seq | [u8; 32] hash | payload
//! hash = SHA-256(prev_hash || seq as u64 LE || payload), prev_hash of seq 1 = 32 zero bytes
//! ```

use std::path::{Path, PathBuf};

pub const SEGMENT_HEADER_LEN: usize = 24;
pub const FRAME_HEADER_LEN: usize = 49;
pub const FLAG_BATCH_END: u8 = 1;

/// The segment files of a log directory, oldest first.
pub fn segments(log_dir: &Path) -> Vec<PathBuf> {
    files_where(log_dir, |p| p.extension().is_some_and(|e| e == "seg"))
}

/// The cut-off tails a log directory keeps aside, oldest first.
pub fn torn_files(log_dir: &Path) -> Vec<PathBuf> {
    files_where(log_dir, |p| {
        p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("torn-")
    })
}

fn files_where(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| keep(p))
        .collect();
    paths.sort();
    paths
}

/// Where one frame sits in its segment.
#[derive(Debug, Clone)]
pub struct Frame {
    pub segment: PathBuf,
    pub offset: usize,
    pub seq: u64,
    pub flags: u8,
    pub payload_len: usize,
}

impl Frame {
    pub fn payload_start(&self) -> usize {
        self.offset + FRAME_HEADER_LEN
    }

    pub fn end(&self) -> usize {
        self.payload_start() + self.payload_len
    }

    pub fn is_batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }

    pub fn payload(&self) -> Vec<u8> {
        std::fs::read(&self.segment).unwrap()[self.payload_start()..self.end()].to_vec()
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.segment).unwrap()[self.offset..self.end()].to_vec()
    }
}

/// Every frame of a well-formed segment, in order.
pub fn frames(segment: &Path) -> Vec<Frame> {
    let bytes = std::fs::read(segment).unwrap();
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        let frame = Frame {
            segment: segment.to_owned(),
            offset: at,
            payload_len: u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize,
            flags: bytes[at + 8],
            seq: u64::from_le_bytes(bytes[at + 9..at + 17].try_into().unwrap()),
        };
        at = frame.end();
        out.push(frame);
    }
    out
}

/// Every frame of a log directory, in order across its segments.
pub fn log_frames(log_dir: &Path) -> Vec<Frame> {
    segments(log_dir).iter().flat_map(|s| frames(s)).collect()
}

/// Rewrites a file in place.
pub fn modify(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}
