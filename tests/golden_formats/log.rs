//! The log's bytes (`src/log/frame.rs`, `segment.rs`): frames, segment
//! headers (version 2 written, version 1 still read), a whole segment file
//! as `Log` writes it and opens it again, and the audit trail's signed
//! checkpoint message and anchor line.

use keymeter::audit::{anchor_line, checkpoint_message, parse_anchor_line};
use keymeter::log::frame::*;
use keymeter::log::{Log, LogConfig};
use keymeter::record::{CheckpointRecord, Record};

use crate::{unhex, Golden};

const FRAMES: &str = "01000000d9cfe963020100000000000000fd12b7a19d2de41e2b02cb742377db9c6f15675cf41dda7702c6c515254a11
    7061020000004e023330010200000000000000bb8f66a74f48817741e2b1c8851c9a6a0439994acd29bba57ac764a813
    d86ef36263";
const SEGMENT_HEADER_V2: &str = "4b4d4c4f47534547020000002a0000000000000039795303";
const SEGMENT_HEADER_V1: &str = "4b4d4c4f4753454701000000010000000000000043e3bec4";
const SEGMENT_FILE: &str = "4b4d4c4f47534547020000000100000000000000139f2c971a000000f0f1fae5020100000000000000656fed899fb0ae
    95cd18ee083dedc3155fed7e5637bd2fdb8cc3b37bb4b21a4f010306746f6b656e7301026f70f6a1abfef96201057265
    712d3109000000e1b8137f0102000000000000009fdf49d435b6b0d76fdf92e14c1bf9621e6f9ffce88811280c6f0dfc
    2dd2c8a90110036c6963017312";
const CHECKPOINT_MESSAGE: &str = "6b65796d657465722d636865636b706f696e742f76310000000000000007333333333333333333333333333333333333
    3333333333333333333333333333000001a3185c507b";
const ANCHOR_LINE: &str = r#"{"chain":"3333333333333333333333333333333333333333333333333333333333333333","kid":"0123456789abcdef","seq":7,"signature":"RERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERA","time":"2027-01-15T08:00:00.123Z","time_ms":1800000000123}"#;

#[test]
fn frames_keep_their_layout_crc_and_chain_both_ways() {
    let mut g = Golden::default();
    let mut out = Vec::new();
    let last = encode_batch(GENESIS_HASH, 1, &[b"a".as_slice(), b"bc"], &mut out);
    g.hex("frames of a two-record batch", &out, FRAMES);

    let bytes = unhex(FRAMES);
    let first = FrameHeader::decode(bytes[..FRAME_HEADER_LEN].try_into().unwrap());
    let at = first.frame_len() as usize;
    let second = FrameHeader::decode(bytes[at..at + FRAME_HEADER_LEN].try_into().unwrap());
    g.check(
        "frame 1 header",
        (first.payload_len, first.flags, first.seq) == (1, FLAG_BATCH_START, 1),
        || format!("{first:?}"),
    );
    g.check(
        "frame 2 header",
        (second.payload_len, second.flags, second.seq) == (2, FLAG_BATCH_END, 2),
        || format!("{second:?}"),
    );
    g.check(
        "frame 1 crc",
        frame_crc(bytes[..FRAME_HEADER_LEN].try_into().unwrap(), b"a") == first.crc,
        String::new,
    );
    g.check(
        "frame 2 crc",
        frame_crc(bytes[at..at + FRAME_HEADER_LEN].try_into().unwrap(), b"bc") == second.crc,
        String::new,
    );
    g.check(
        "chain",
        chain_hash(&GENESIS_HASH, 1, b"a") == first.hash
            && chain_hash(&first.hash, 2, b"bc") == second.hash
            && second.hash == last,
        String::new,
    );
    g.check(
        "frame payloads",
        &bytes[FRAME_HEADER_LEN..at] == b"a" && &bytes[at + FRAME_HEADER_LEN..] == b"bc",
        String::new,
    );
    g.finish();
}

#[test]
fn segment_headers_keep_their_bytes_and_version_one_is_still_read() {
    let mut g = Golden::default();
    g.hex(
        "segment header v2",
        &encode_segment_header(42),
        SEGMENT_HEADER_V2,
    );
    let v2 = decode_segment_header(unhex(SEGMENT_HEADER_V2).as_slice().try_into().unwrap());
    g.check("segment header v2 decodes", v2 == Ok((42, 2)), || {
        format!("{v2:?}")
    });
    let v1 = decode_segment_header(unhex(SEGMENT_HEADER_V1).as_slice().try_into().unwrap());
    g.check("segment header v1 decodes", v1 == Ok((1, 1)), || {
        format!("{v1:?}")
    });
    g.finish();
}

fn segment_records() -> Vec<Record> {
    vec![
        Record::MeterDeleted {
            slug: "tokens".into(),
            audit: crate::records::audit(),
        },
        Record::SeatLeaseExpired {
            license_id: "lic".into(),
            seat_id: "s".into(),
            at_ms: 9,
        },
    ]
}

#[test]
fn a_segment_file_keeps_its_bytes_and_an_old_one_opens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_bytes_max: 1 << 20,
    };
    let payloads: Vec<Vec<u8>> = segment_records().iter().map(Record::encode).collect();
    {
        let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
        log.append_batch(&payloads).unwrap();
    }
    let name = "00000000000000000001.seg";
    let mut g = Golden::default();
    g.hex(
        "segment file",
        &std::fs::read(dir.path().join(name)).unwrap(),
        SEGMENT_FILE,
    );
    g.finish();

    let old = tempfile::tempdir().unwrap();
    std::fs::write(old.path().join(name), unhex(SEGMENT_FILE)).unwrap();
    let (log, recovery) = Log::open(old.path(), cfg).unwrap();
    assert_eq!((log.head_seq(), recovery.torn_tail_bytes), (2, 0));
    let read: Vec<Record> = keymeter::log::read_range(old.path(), 1, 2)
        .unwrap()
        .map(|e| Record::decode(&e.unwrap().payload).unwrap())
        .collect();
    assert_eq!(read, segment_records());
}

#[test]
fn signed_checkpoint_messages_and_anchor_lines_keep_their_bytes_both_ways() {
    let cp = CheckpointRecord {
        seq: 7,
        chain: [0x33; 32],
        time_ms: 1_800_000_000_123,
        kid: "0123456789abcdef".into(),
        signature: vec![0x44; 64],
    };
    let mut g = Golden::default();
    g.hex(
        "checkpoint message",
        &checkpoint_message(cp.seq, &cp.chain, cp.time_ms),
        CHECKPOINT_MESSAGE,
    );
    g.text("anchor line", anchor_line(&cp).as_bytes(), ANCHOR_LINE);
    let parsed = parse_anchor_line(ANCHOR_LINE);
    g.check("anchor line parses", parsed.as_ref() == Ok(&cp), || {
        format!("{parsed:?}")
    });
    g.finish();
}
