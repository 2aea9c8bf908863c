//! The on-disk byte format of the log: frame and segment-header codecs.
//!
//! Pure functions over byte slices, no I/O, so that the writer, the recovery scan, the
//! reader and the tests all agree on one definition of a valid frame.

use std::ops::RangeInclusive;

use sha2::{Digest, Sha256};

use super::Seq;

/// Bytes before a frame's payload: `len u32 | crc u32 | flags u8 | seq u64 | hash [u8; 32]`.
pub const FRAME_HEADER_LEN: usize = 4 + 4 + 1 + 8 + 32;
/// Largest payload a frame may declare. A larger length field is a defect, never an allocation.
pub const PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Flag bit 0: this frame is the last one of an appended batch.
pub const FLAG_BATCH_END: u8 = 0b0000_0001;
/// Flag bit 1: this frame is the first one of an appended batch (segment version 2 on).
pub const FLAG_BATCH_START: u8 = 0b0000_0010;
/// Every flag bit this version understands; any other bit set is a defect.
pub const FLAGS_KNOWN: u8 = FLAG_BATCH_END | FLAG_BATCH_START;
/// The `prev_hash` of seq 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// `magic [u8; 8] | version u32 | first_seq u64 | crc32c u32 over the previous 20 bytes`.
pub const SEGMENT_HEADER_LEN: usize = 8 + 4 + 8 + 4;
pub const SEGMENT_MAGIC: [u8; 8] = *b"KMLOGSEG";
/// The version new segments are written with. Version 2 marks the first frame of every
/// batch with [`FLAG_BATCH_START`]; version 1 segments (no such mark) are still read.
pub const SEGMENT_VERSION: u32 = 2;
/// The oldest segment version this build reads.
pub const SEGMENT_VERSION_MIN: u32 = 1;

/// The fixed-size part of a frame, as read from disk (not yet checked against anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    pub crc: u32,
    pub flags: u8,
    pub seq: Seq,
    pub hash: [u8; 32],
}

impl FrameHeader {
    pub fn decode(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            payload_len: u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")),
            crc: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
            flags: bytes[8],
            seq: u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes")),
            hash: bytes[17..49].try_into().expect("32 bytes"),
        }
    }

    pub fn is_batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }

    pub fn is_batch_start(&self) -> bool {
        self.flags & FLAG_BATCH_START != 0
    }

    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.payload_len)
    }
}

/// CRC32C over everything after the crc field: flags, seq, hash and payload.
pub fn frame_crc(header: &[u8; FRAME_HEADER_LEN], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[8..]), payload)
}

/// `SHA-256(prev_hash || seq as u64 LE || payload)`.
pub fn chain_hash(prev_hash: &[u8; 32], seq: Seq, payload: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize().into()
}

/// Appends the frames of one batch to `out`: seqs `first_seq..`, chained from `prev_hash`,
/// BATCH_START on the first frame and BATCH_END on the last. Returns the hash of the last record (`prev_hash` if empty).
///
/// # Panics
/// If a payload is longer than [`PAYLOAD_BYTES_MAX`]; callers check lengths first.
pub fn encode_batch<P: AsRef<[u8]>>(
    prev_hash: [u8; 32],
    first_seq: Seq,
    payloads: &[P],
    out: &mut Vec<u8>,
) -> [u8; 32] {
    let mut hash = prev_hash;
    for (i, payload) in payloads.iter().enumerate() {
        let flags = batch_flags(i, payloads.len());
        hash = encode_frame(&hash, first_seq + i as Seq, payload.as_ref(), flags, out);
    }
    hash
}

/// The flags of frame `index` of a batch of `len` frames.
pub fn batch_flags(index: usize, len: usize) -> u8 {
    let mut flags = 0;
    if index == 0 {
        flags |= FLAG_BATCH_START;
    }
    if index + 1 == len {
        flags |= FLAG_BATCH_END;
    }
    flags
}

/// Appends one frame to `out`: record `seq` chained from `prev_hash`, with `flags` (see
/// [`batch_flags`]). Returns the record's hash. [`encode_batch`] is this in a loop; the writer
/// calls it directly to write a batch in chunks as it is encoded.
///
/// # Panics
/// If the payload is longer than [`PAYLOAD_BYTES_MAX`]; callers check lengths first.
pub fn encode_frame(
    prev_hash: &[u8; 32],
    seq: Seq,
    payload: &[u8],
    flags: u8,
    out: &mut Vec<u8>,
) -> [u8; 32] {
    assert!(payload.len() <= PAYLOAD_BYTES_MAX, "payload over limit");
    let hash = chain_hash(prev_hash, seq, payload);

    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in below
    out.push(flags);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    hash
}

pub fn encode_segment_header(first_seq: Seq) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Returns the header's first seq and version, or why the header is not a valid segment
/// header.
pub fn decode_segment_header(header: &[u8; SEGMENT_HEADER_LEN]) -> Result<(Seq, u32), String> {
    if header[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".to_string());
    }
    let crc = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[0..20]) != crc {
        return Err("segment header crc mismatch".to_string());
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if !(SEGMENT_VERSION_MIN..=SEGMENT_VERSION).contains(&version) {
        return Err(format!("unsupported segment version {version}"));
    }
    let first_seq = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    Ok((first_seq, version))
}

/// The seqs a frame found in `damaged_tail` (the bytes after a bad frame that should have
/// carried `expected_seq`) can plausibly have: every frame takes at least
/// [`FRAME_HEADER_LEN`] bytes, so no more than that many frames fit behind the damage. The
/// window is fixed at the damage, for every frame searched for behind it.
pub(crate) fn seq_window(expected_seq: Seq, damaged_tail: &[u8]) -> RangeInclusive<Seq> {
    expected_seq..=expected_seq.saturating_add((damaged_tail.len() / FRAME_HEADER_LEN) as Seq)
}

/// Looks for a complete frame with a valid CRC anywhere in `bytes` whose seq is in `seqs`
/// (see [`seq_window`]). Returns its offset within `bytes` and its seq.
///
/// Used after a bad frame in the last segment: a valid frame behind it proves the damage is
/// not a torn tail. The seq window keeps random bytes from passing by CRC luck (2^-32 per
/// offset adds up over megabytes of garbage).
pub(crate) fn find_valid_frame(bytes: &[u8], seqs: &RangeInclusive<Seq>) -> Option<(usize, Seq)> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_LEN)?;
    (0..=last_start).find_map(|at| {
        let header: &[u8; FRAME_HEADER_LEN] = bytes[at..at + FRAME_HEADER_LEN]
            .try_into()
            .expect("slice length");
        let h = FrameHeader::decode(header);
        let payload_len = h.payload_len as usize;
        let fits =
            payload_len <= PAYLOAD_BYTES_MAX && payload_len <= bytes.len() - at - FRAME_HEADER_LEN;
        let plausible = fits && h.flags & !FLAGS_KNOWN == 0 && seqs.contains(&h.seq);
        if !plausible {
            return None;
        }
        let payload_start = at + FRAME_HEADER_LEN;
        let payload = &bytes[payload_start..payload_start + payload_len];
        (frame_crc(header, payload) == h.crc).then_some((at, h.seq))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_frames_decode_with_valid_crc_chain_and_batch_end_on_last_only() {
        let mut out = Vec::new();
        let last = encode_batch(GENESIS_HASH, 1, &[b"a".as_slice(), b"bc"], &mut out);

        let first: &[u8; FRAME_HEADER_LEN] = out[..FRAME_HEADER_LEN].try_into().unwrap();
        let h1 = FrameHeader::decode(first);
        assert_eq!((h1.seq, h1.payload_len, h1.is_batch_end()), (1, 1, false));
        assert!(h1.is_batch_start());
        assert_eq!(h1.hash, chain_hash(&GENESIS_HASH, 1, b"a"));
        assert_eq!(frame_crc(first, b"a"), h1.crc);

        let at = h1.frame_len() as usize;
        let second: &[u8; FRAME_HEADER_LEN] = out[at..at + FRAME_HEADER_LEN].try_into().unwrap();
        let h2 = FrameHeader::decode(second);
        assert_eq!((h2.seq, h2.payload_len, h2.is_batch_end()), (2, 2, true));
        assert!(!h2.is_batch_start());
        assert_eq!(h2.hash, chain_hash(&h1.hash, 2, b"bc"));
        assert_eq!(h2.hash, last);
        assert_eq!(out.len(), at + h2.frame_len() as usize);
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let mut header = encode_segment_header(42);
        assert_eq!(decode_segment_header(&header), Ok((42, SEGMENT_VERSION)));
        header[13] ^= 1;
        assert!(decode_segment_header(&header).is_err());
    }

    #[test]
    fn find_valid_frame_skips_garbage_and_finds_a_frame_at_an_odd_offset() {
        let mut frames = Vec::new();
        encode_batch([7; 32], 10, &[b"payload"], &mut frames);
        let mut bytes = vec![0xAB; 13];
        bytes.extend_from_slice(&frames);
        let window = seq_window(9, &bytes);
        assert_eq!(find_valid_frame(&bytes, &window), Some((13, 10)));
        assert_eq!(
            find_valid_frame(&bytes, &seq_window(11, &bytes)),
            None,
            "seq below the window"
        );
        assert_eq!(find_valid_frame(&bytes[..bytes.len() - 1], &window), None);
        let zeros = vec![0; 4096];
        assert_eq!(find_valid_frame(&zeros, &seq_window(1, &zeros)), None);
    }
}
