//! Log recovery on damaged segment files.
//!
//! Input: either raw bytes for the only segment (optionally behind a valid
//! segment header), or a description of well-formed frames across segments
//! with chosen defects, trailing garbage, a truncation and a bit flip.
//!
//! Properties: `verify` and `Log::open` return Ok or an error, never panic or
//! hang, and agree with each other and with an independent model of the
//! documented recovery rules (`keymeter_fuzz::log_model`: same refusal, same
//! head seq and hash, same torn tail length); a log `verify` accepts reads
//! back every record it counts; a log `open` accepts takes a new batch, after
//! which it verifies cleanly with no torn tail.

#![no_main]

use std::path::Path;

use keymeter::log::frame::{
    chain_hash, decode_segment_header, encode_frame, encode_segment_header, frame_crc, FrameHeader,
    FLAG_BATCH_END, FLAG_BATCH_START, GENESIS_HASH,
};
use keymeter::log::{
    read_range, verify, Log, LogConfig, LogError, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use keymeter_fuzz::input::log::{Defect, FrameSpec, Input};
use keymeter_fuzz::log_model::{self, Recovery};
use libfuzzer_sys::fuzz_target;

const SEGMENTS_MAX: usize = 4;
const FRAMES_MAX: usize = 64;

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// Writes the segments, each named by the seq of its first frame as the writer names them.
fn build(dir: &Path, segments: &[Vec<FrameSpec>], tail: &[u8], cut: u16, flip: Option<(u16, u8)>) {
    let segments = &segments[..segments.len().min(SEGMENTS_MAX)];
    let mut prev_hash = GENESIS_HASH;
    let mut next_seq = 1u64;
    let mut frames_left = FRAMES_MAX;
    for (i, frames) in segments.iter().enumerate() {
        let first_seq = next_seq;
        let mut bytes = encode_segment_header(first_seq).to_vec();
        let mut starts_batch = true;
        for spec in frames.iter().take(frames_left) {
            frames_left -= 1;
            let defect = spec.defect();
            let seq = if defect == Defect::SeqSkew {
                next_seq + 1
            } else {
                next_seq
            };
            let start = bytes.len();
            let mut flags = 0;
            if starts_batch {
                flags |= FLAG_BATCH_START;
            }
            if spec.batch_end {
                flags |= FLAG_BATCH_END;
            }
            starts_batch = spec.batch_end;
            let hash = encode_frame(&prev_hash, seq, &spec.payload, flags, &mut bytes);
            match defect {
                Defect::BadCrc => bytes[start + 4] ^= 0x01,
                Defect::BadHash => bytes[start + 17] ^= 0x01,
                Defect::UnknownFlag => {
                    bytes[start + 8] |= 0x80;
                    let crc = frame_crc(
                        bytes[start..start + FRAME_HEADER_LEN].try_into().unwrap(),
                        &spec.payload,
                    );
                    bytes[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
                }
                Defect::None | Defect::SeqSkew => {}
            }
            prev_hash = hash;
            next_seq = seq + 1;
        }
        if i + 1 == segments.len() {
            bytes.extend_from_slice(tail);
            let keep = bytes.len().saturating_sub(usize::from(cut));
            bytes.truncate(keep);
            if let Some((at, mask)) = flip {
                if !bytes.is_empty() {
                    let at = usize::from(at) % bytes.len();
                    bytes[at] ^= mask;
                }
            }
        }
        std::fs::write(dir.join(segment_name(first_seq)), &bytes).unwrap();
    }
}

/// The segment files as the model reads them: (seq in the name, bytes).
fn segment_files(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let seq = path
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((seq, std::fs::read(&path).unwrap()))
        })
        .collect()
}

fn is_corrupt(r: &Result<impl std::fmt::Debug, LogError>) -> bool {
    matches!(r, Err(LogError::Corrupt { .. }))
}

fn scratch_dir() -> tempfile::TempDir {
    // tmpfs keeps the fsyncs of `Log::open` cheap.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fuzz_target!(|input: Input| {
    let tmp = scratch_dir();
    let dir = tmp.path();
    match &input {
        Input::Raw {
            valid_header,
            bytes,
        } => {
            if let Ok(h) =
                <&[u8; FRAME_HEADER_LEN]>::try_from(bytes.get(..FRAME_HEADER_LEN).unwrap_or(&[]))
            {
                let h = FrameHeader::decode(h);
                assert_eq!(
                    h.frame_len(),
                    FRAME_HEADER_LEN as u64 + u64::from(h.payload_len)
                );
            }
            if let Some(h) = bytes.get(..SEGMENT_HEADER_LEN) {
                let _ = decode_segment_header(h.try_into().unwrap());
            }
            let mut segment = Vec::new();
            if *valid_header {
                segment.extend_from_slice(&encode_segment_header(1));
            }
            segment.extend_from_slice(bytes);
            std::fs::write(dir.join(segment_name(1)), &segment).unwrap();
        }
        Input::Built {
            segments,
            tail,
            cut,
            flip,
        } => build(dir, segments, tail, *cut, *flip),
    }

    let verified = verify(dir);
    match (log_model::recover(&mut segment_files(dir)), &verified) {
        (
            Recovery::Recovered {
                head_seq,
                head_hash,
                torn_bytes,
            },
            Ok(report),
        ) => {
            assert_eq!(report.head_seq, head_seq, "{report:?}");
            assert_eq!(report.head_hash, head_hash);
            let torn = report.torn_tail.as_ref().map_or(0, |t| t.bytes);
            assert_eq!(torn, torn_bytes, "{report:?}");
        }
        (Recovery::Refused(_), Err(_)) => {}
        (model, verified) => {
            panic!("the documented rules say {model:?}, verify says {verified:?}")
        }
    }
    if let Ok(report) = &verified {
        // Everything verify counts reads back, in order, chained.
        let mut prev = GENESIS_HASH;
        let mut seq = 0;
        for entry in read_range(dir, 1, report.head_seq).expect("read_range opens") {
            let entry = entry.expect("a verified record reads back");
            seq += 1;
            assert_eq!(entry.seq, seq);
            assert_eq!(entry.hash, chain_hash(&prev, entry.seq, &entry.payload));
            prev = entry.hash;
        }
        assert_eq!(seq, report.head_seq);
        assert_eq!(report.records, report.head_seq);
        assert_eq!(prev, report.head_hash);
    }

    let cfg = LogConfig {
        segment_bytes_max: 512,
    };
    let opened = Log::open(dir, cfg);
    match (&verified, &opened) {
        (Ok(report), Ok((log, recovery))) => {
            assert_eq!(recovery.head_seq, report.head_seq);
            assert_eq!(log.head_seq(), report.head_seq);
            assert_eq!(log.head_hash(), report.head_hash);
            let torn = report.torn_tail.as_ref().map_or(0, |t| t.bytes);
            assert_eq!(recovery.torn_tail_bytes, torn);
        }
        (Err(_), Err(_)) => {}
        (v, o) => panic!("verify and open disagree: verify {v:?}, open {o:?}"),
    }
    assert_eq!(is_corrupt(&verified), is_corrupt(&opened));
    let Ok((mut log, recovery)) = opened else {
        return;
    };

    // The recovered log takes a new batch and then verifies cleanly.
    let head = recovery.head_seq;
    let seqs = log
        .append_batch(&[b"after recovery".as_slice(), b"second"])
        .expect("append after recovery");
    assert_eq!(seqs, head + 1..head + 3);
    drop(log);
    let report = verify(dir).expect("a recovered log verifies");
    assert_eq!(report.head_seq, head + 2);
    assert!(report.torn_tail.is_none(), "{report:?}");
    let last: Vec<_> = read_range(dir, head + 1, head + 2)
        .expect("read_range opens")
        .map(|e| e.expect("appended records read back").payload)
        .collect();
    assert_eq!(last, [b"after recovery".to_vec(), b"second".to_vec()]);

    let (log, again) = Log::open(dir, cfg).expect("a recovered log reopens");
    assert_eq!(again.torn_tail_bytes, 0);
    assert_eq!(log.head_seq(), head + 2);
});
