//! An independent reading of the log's segment files, written from the
//! documented format and recovery rules (`src/log/mod.rs`, "Files" and
//! "Recovery rules"), not from the scanner (`src/log/scan.rs`): the
//! `log_frame` target compares the two. It shares no code with keymeter's
//! log: CRC32C and SHA-256 come from their crates, the rest is here.

use sha2::{Digest, Sha256};

const SEGMENT_HEADER_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 49;
const PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;
const BATCH_END: u8 = 0b01;
const BATCH_START: u8 = 0b10;

/// What recovery must make of a log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The head after the last complete batch, and how many bytes at the end
    /// of the last segment are a torn tail to cut.
    Recovered {
        head_seq: u64,
        head_hash: [u8; 32],
        torn_bytes: u64,
    },
    /// Damage: the log must not be opened. Says why, for the failure message.
    Refused(String),
}

/// A frame that is complete and passes its CRC.
struct Frame {
    flags: u8,
    seq: u64,
    hash: [u8; 32],
    len: usize,
    payload_start: usize,
}

/// The frame at `at` if it is complete (header, declared payload within the
/// file and the limit) and its CRC32C over flags, seq, hash and payload holds.
fn frame_at(bytes: &[u8], at: usize) -> Option<Frame> {
    let header = bytes.get(at..at.checked_add(FRAME_HEADER_LEN)?)?;
    let payload_len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    if payload_len > PAYLOAD_BYTES_MAX {
        return None;
    }
    let payload_start = at + FRAME_HEADER_LEN;
    let payload = bytes.get(payload_start..payload_start + payload_len)?;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    if crc32c::crc32c_append(crc32c::crc32c(&header[8..]), payload) != crc {
        return None;
    }
    Some(Frame {
        flags: header[8],
        seq: u64::from_le_bytes(header[9..17].try_into().unwrap()),
        hash: header[17..49].try_into().unwrap(),
        len: FRAME_HEADER_LEN + payload_len,
        payload_start,
    })
}

/// The segment's version, if its header is whole and valid for `first_seq`.
fn segment_version(bytes: &[u8], first_seq: u64) -> Result<u32, String> {
    let header = bytes
        .get(..SEGMENT_HEADER_LEN)
        .ok_or("segment header truncated")?;
    let crc = u32::from_le_bytes(header[20..24].try_into().unwrap());
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
    let header_seq = u64::from_le_bytes(header[12..20].try_into().unwrap());
    if &header[..8] != b"KMLOGSEG" || crc32c::crc32c(&header[..20]) != crc {
        return Err("bad segment header".into());
    }
    if !(1..=2).contains(&version) || header_seq != first_seq {
        return Err(format!(
            "segment header: version {version}, seq {header_seq}"
        ));
    }
    Ok(version)
}

/// The chain position: next seq and the hash it chains to.
#[derive(Clone, Copy)]
struct Chain {
    next_seq: u64,
    prev_hash: [u8; 32],
}

/// Recovery of the segments `(first seq from the file name, bytes)`, in any order.
pub fn recover(segments: &mut [(u64, Vec<u8>)]) -> Recovery {
    segments.sort_by_key(|(seq, _)| *seq);
    let mut chain = Chain {
        next_seq: 1,
        prev_hash: [0; 32],
    };
    let mut torn_bytes = 0;
    for (i, (first_seq, bytes)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if *first_seq != chain.next_seq {
            return Recovery::Refused(format!(
                "segment {first_seq} after seq {}",
                chain.next_seq - 1
            ));
        }
        match segment(bytes, *first_seq, chain, last) {
            Ok((committed, committed_end)) => {
                chain = committed;
                torn_bytes = (bytes.len() - committed_end) as u64;
            }
            Err(why) => return Recovery::Refused(format!("segment {first_seq}: {why}")),
        }
    }
    Recovery::Recovered {
        head_seq: chain.next_seq - 1,
        head_hash: chain.prev_hash,
        torn_bytes,
    }
}

/// One segment from `start`: the chain after its last complete batch and
/// where that batch ends.
fn segment(
    bytes: &[u8],
    first_seq: u64,
    start: Chain,
    last: bool,
) -> Result<(Chain, usize), String> {
    let version = segment_version(bytes, first_seq)?;
    let mut chain = start;
    let mut at = SEGMENT_HEADER_LEN;
    let mut committed = (start, at);
    let mut frames = 0u64;
    let mut in_batch = false;
    let damage = loop {
        if at == bytes.len() {
            break None;
        }
        let Some(frame) = frame_at(bytes, at) else {
            break Some(at);
        };
        let payload = &bytes[frame.payload_start..at + frame.len];
        if frame.flags & !(BATCH_END | BATCH_START) != 0 {
            return Err(format!("unknown flags at {at}"));
        }
        if frame.seq != chain.next_seq {
            return Err(format!(
                "seq {} where {} belongs",
                frame.seq, chain.next_seq
            ));
        }
        let hash: [u8; 32] = Sha256::new()
            .chain_update(chain.prev_hash)
            .chain_update(frame.seq.to_le_bytes())
            .chain_update(payload)
            .finalize()
            .into();
        if hash != frame.hash {
            return Err(format!("chain broken at seq {}", frame.seq));
        }
        let marked_start = frame.flags & BATCH_START != 0;
        if marked_start != (!in_batch && version >= 2) {
            return Err(format!("BATCH_START wrong at seq {}", frame.seq));
        }
        chain = Chain {
            next_seq: frame.seq + 1,
            prev_hash: hash,
        };
        at += frame.len;
        frames += 1;
        in_batch = frame.flags & BATCH_END == 0;
        if !in_batch {
            committed = (chain, at);
        }
    };
    if !last {
        if damage.is_some() || frames == 0 || in_batch {
            return Err("sealed segment is not whole".into());
        }
        return Ok(committed);
    }
    if let Some(damage) = damage {
        judge_damage(bytes, damage, chain.next_seq, version)?;
    }
    Ok(committed)
}

/// Damage in the last segment is a torn tail only if every valid frame
/// behind it can be the rest of the damaged batch: none starts a batch, and
/// nothing follows a batch end (version 1: no batch end at all). Every offset
/// behind the damage is tried; a frame counts if its flags are known and its
/// seq is one that fits behind the damage (`expected_seq` up to one more per
/// 49 bytes there).
fn judge_damage(
    bytes: &[u8],
    damage: usize,
    expected_seq: u64,
    version: u32,
) -> Result<(), String> {
    let behind = bytes.len() - (damage + 1);
    let seqs = expected_seq..=expected_seq + (behind / FRAME_HEADER_LEN) as u64;
    let mut batch_ended = false;
    for at in damage + 1..bytes.len() {
        let Some(frame) = frame_at(bytes, at) else {
            continue;
        };
        if frame.flags & !(BATCH_END | BATCH_START) != 0 || !seqs.contains(&frame.seq) {
            continue;
        }
        if batch_ended {
            return Err(format!(
                "record {} after a batch end behind damage",
                frame.seq
            ));
        }
        if version >= 2 && frame.flags & BATCH_START != 0 {
            return Err(format!("later batch {} behind damage", frame.seq));
        }
        if frame.flags & BATCH_END != 0 {
            if version < 2 {
                return Err("batch end behind damage (version 1)".into());
            }
            batch_ended = true;
        }
    }
    Ok(())
}
