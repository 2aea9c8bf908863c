//! Which events the log holds, read from its files by the documented frame
//! format (see `log_files.rs`), not by the engine's decoder. An event record
//! keeps the CloudEvent's JSON as it was received, so a test that gives its
//! events ids with a distinctive prefix finds each one in the frame holding
//! it, and can tell an event written twice from one written once.

use std::collections::HashMap;
use std::path::Path;

use super::log_files::{segments, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};

/// id → the sequence numbers of the frames whose payload holds the quoted
/// string `"<prefix>…"`, over every segment of `log_dir`. Reading stops at
/// the first frame of a segment that is incomplete or fails its CRC (a
/// batch being written, or a torn tail the next start cuts), so this can
/// run beside a live server.
pub fn ids_in_log(log_dir: &Path, prefix: &str) -> HashMap<String, Vec<u64>> {
    let needle = format!("\"{prefix}");
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for segment in segments(log_dir) {
        let bytes = std::fs::read(&segment).unwrap();
        let mut at = SEGMENT_HEADER_LEN;
        while let Some((seq, payload, end)) = frame_at(&bytes, at) {
            for id in quoted_with_prefix(payload, needle.as_bytes()) {
                out.entry(id).or_default().push(seq);
            }
            at = end;
        }
    }
    out
}

/// The frame at `at`: its seq, payload and end, if it is whole and its CRC
/// (over flags, seq, hash and payload) holds.
fn frame_at(bytes: &[u8], at: usize) -> Option<(u64, &[u8], usize)> {
    let header = bytes.get(at..at + FRAME_HEADER_LEN)?;
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let end = at + FRAME_HEADER_LEN + len;
    let covered = bytes.get(at + 8..end)?;
    if crc32c::crc32c(covered) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(header[9..17].try_into().unwrap());
    Some((seq, &bytes[at + FRAME_HEADER_LEN..end], end))
}

/// Every `"<needle>…"` string in `payload`, without its quotes.
fn quoted_with_prefix(payload: &[u8], needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = find(&payload[from..], needle) {
        let start = from + i + 1;
        let Some(len) = payload[start..].iter().position(|b| *b == b'"') else {
            break;
        };
        out.push(String::from_utf8_lossy(&payload[start..start + len]).into_owned());
        from = start + len + 1;
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
