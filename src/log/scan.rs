//! The full-log check shared by [`super::Log::open`] (which then cuts a torn tail) and
//! [`super::verify`] (which only reports it). Read-only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::frame::{
    chain_hash, find_valid_frame, frame_crc, seq_window, FrameHeader, FLAGS_KNOWN,
    FRAME_HEADER_LEN, GENESIS_HASH, SEGMENT_HEADER_LEN,
};
use super::segment::{list_segments, SegmentCursor, SegmentFile, Step};
use super::storage::LogDir;
use super::{LogError, Seq};

/// A position in the hash chain: the seq the next record must have and the hash it chains to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainPos {
    pub next_seq: Seq,
    pub prev_hash: [u8; 32],
}

impl ChainPos {
    pub const GENESIS: ChainPos = ChainPos {
        next_seq: 1,
        prev_hash: GENESIS_HASH,
    };

    pub fn head_seq(&self) -> Seq {
        self.next_seq - 1
    }
}

/// Checks what a valid CRC cannot: known flags, seq contiguity and, when the previous hash is
/// known, the chain link. Returns the seq to report and why the frame is bad.
pub(crate) fn check_frame(
    header: &FrameHeader,
    payload: &[u8],
    expected_seq: Seq,
    prev_hash: Option<&[u8; 32]>,
) -> Result<(), (Seq, String)> {
    if header.flags & !FLAGS_KNOWN != 0 {
        return Err((
            header.seq,
            format!("unknown flag bits {:#04x}", header.flags),
        ));
    }
    if header.seq != expected_seq {
        return Err((expected_seq, misplaced(header.seq, expected_seq)));
    }
    if let Some(prev_hash) = prev_hash {
        if chain_hash(prev_hash, header.seq, payload) != header.hash {
            return Err((
                header.seq,
                "hash chain mismatch (record altered or chain broken)".to_string(),
            ));
        }
    }
    Ok(())
}

/// Why a frame carrying `found` sits where `expected` belongs. Reported at `expected`: the
/// position is what is wrong, and the frame's own seq is named in the reason.
pub(crate) fn misplaced(found: Seq, expected: Seq) -> String {
    let what = if found > expected {
        format!("record {expected} is missing or was moved")
    } else {
        format!("a copy of record {found}, or a record out of order")
    };
    format!("seq gap: expected seq {expected}, found a frame with seq {found}: {what}")
}

/// The last segment's state after the scan: where its last complete batch ends, and why the
/// bytes after that (if any) are a torn tail.
#[derive(Debug, Clone)]
pub(crate) struct LastSegment {
    pub segment: SegmentFile,
    pub committed_end: u64,
    pub file_len: u64,
    pub tail_reason: Option<String>,
    /// The segment's format version: appends go only to a current-version segment.
    pub version: u32,
    /// Records in complete batches in this segment.
    pub records: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct LogScan {
    pub segment_count: usize,
    /// Records in complete batches.
    pub records: u64,
    /// Size of all segment files, torn tail included.
    pub bytes: u64,
    /// The chain position after the last complete batch.
    pub head: ChainPos,
    pub last: Option<LastSegment>,
}

pub(crate) fn scan_log(dir: &LogDir) -> Result<LogScan, LogError> {
    let segments = list_segments(dir)?;
    let mut scan = LogScan {
        segment_count: segments.len(),
        records: 0,
        bytes: 0,
        head: ChainPos::GENESIS,
        last: None,
    };
    for ((i, segment), walk) in segments
        .iter()
        .enumerate()
        .zip(walk_segments(dir, &segments))
    {
        let sealed = i + 1 < segments.len();
        let seg = judge_segment(segment, scan.head, sealed, walk)?;
        scan.records += seg.records;
        scan.bytes += seg.file_len;
        scan.head = seg.committed;
        if !sealed {
            scan.last = Some(LastSegment {
                segment: segment.clone(),
                committed_end: seg.committed_end,
                file_len: seg.file_len,
                tail_reason: seg.tail_reason,
                version: seg.version,
                records: seg.records,
            });
        }
    }
    Ok(scan)
}

/// Walks every segment's frames, on as many threads as the machine has cores (the hash
/// checks dominate a start). A segment's frames are checked against each other alone: the
/// one link to the segment before, its first frame's, is checked in order by
/// [`judge_segment`], which also reports the first damage in log order, as a walk of the
/// whole log on one thread would.
fn walk_segments(dir: &LogDir, segments: &[SegmentFile]) -> Vec<SegmentWalk> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let walks: Vec<Mutex<Option<SegmentWalk>>> =
        segments.iter().map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(segment) = segments.get(i) else {
            return;
        };
        let walk = walk_segment(dir, segment, i + 1 == segments.len());
        *walks[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(walk);
    };
    std::thread::scope(|scope| {
        for _ in 1..cores.min(segments.len()) {
            // A helper that cannot start leaves its share to the others.
            let _ = std::thread::Builder::new()
                .name("keymeter-log-scan".into())
                .spawn_scoped(scope, work);
        }
        work();
    });
    (walks.into_iter())
        .map(|w| {
            (w.into_inner().unwrap_or_else(|e| e.into_inner())).expect("every segment is walked")
        })
        .collect()
}

/// One segment's frames, checked against each other but not yet against the log.
struct SegmentWalk {
    /// The first frame that passed its CRC, seq and flag checks, with its payload: its
    /// hash link to the segment before is checked in [`judge_segment`].
    first: Option<(u64, FrameHeader, Vec<u8>)>,
    walked: Result<Walked, LogError>,
}

struct Walked {
    frames: FrameWalk,
    version: u32,
    file_len: u64,
    /// Kept for the last segment only, whose damage may be a torn tail.
    cursor: Option<SegmentCursor>,
}

fn walk_segment(dir: &LogDir, segment: &SegmentFile, last: bool) -> SegmentWalk {
    let mut first = None;
    let walked = SegmentCursor::open(dir, segment).and_then(|mut cursor| {
        let corrupt = |offset: u64, seq: Seq, reason: String| LogError::Corrupt {
            segment: segment.path.clone(),
            offset,
            seq: Some(seq),
            reason,
        };
        let frames = walk_frames(&mut cursor, segment.first_seq, &mut first, corrupt)?;
        Ok(Walked {
            frames,
            version: cursor.version,
            file_len: cursor.file_len,
            cursor: last.then_some(cursor),
        })
    });
    SegmentWalk { first, walked }
}

struct SegmentScan {
    version: u32,
    committed: ChainPos,
    committed_end: u64,
    records: u64,
    file_len: u64,
    tail_reason: Option<String>,
}

/// Judges one walked segment, which must continue the log at chain position `start`.
///
/// A sealed segment must be perfect. In the last segment, an unframed or CRC-failing frame
/// with no valid frame anywhere behind it, and frames after the last BATCH_END, form the
/// torn tail (reported in `tail_reason`, nothing is changed here).
fn judge_segment(
    segment: &SegmentFile,
    start: ChainPos,
    sealed: bool,
    walk: SegmentWalk,
) -> Result<SegmentScan, LogError> {
    let corrupt = |offset: u64, seq: Seq, reason: String| LogError::Corrupt {
        segment: segment.path.clone(),
        offset,
        seq: Some(seq),
        reason,
    };
    if segment.first_seq != start.next_seq {
        return Err(corrupt(
            0,
            start.next_seq,
            format!(
                "segment starts at seq {} but the previous record is seq {} (missing or \
                 overlapping segment)",
                segment.first_seq,
                start.head_seq()
            ),
        ));
    }
    if let Some((frame_at, header, payload)) = &walk.first {
        check_frame(header, payload, start.next_seq, Some(&start.prev_hash))
            .map_err(|(seq, reason)| corrupt(*frame_at, seq, reason))?;
    }
    let Walked {
        frames,
        version,
        file_len,
        cursor,
    } = walk.walked?;
    let chain = frames.chain.resolve(start);
    let (committed, committed_end, committed_records) = frames.committed;
    let committed = committed.resolve(start);
    let uncommitted_frames = frames.records - committed_records;

    if let Some((frame_at, reason)) = &frames.bad_frame {
        match &cursor {
            Some(cursor) if !sealed => {
                refuse_if_valid_frame_follows(cursor, *frame_at, chain.next_seq, reason)?
            }
            _ => return Err(corrupt(*frame_at, chain.next_seq, reason.clone())),
        }
    }
    if sealed {
        if frames.records == 0 {
            return Err(corrupt(
                SEGMENT_HEADER_LEN as u64,
                start.next_seq,
                "sealed segment holds no records".to_string(),
            ));
        }
        if uncommitted_frames > 0 {
            return Err(corrupt(
                committed_end,
                committed.next_seq,
                format!(
                    "sealed segment ends inside a batch ({uncommitted_frames} frame(s) after \
                     the last BATCH_END)"
                ),
            ));
        }
    }

    Ok(SegmentScan {
        version,
        committed,
        committed_end,
        records: committed_records,
        file_len,
        tail_reason: tail_reason(frames.bad_frame, uncommitted_frames),
    })
}

/// A position within one segment's walk: the seq the next frame must carry and the hash of
/// the last valid frame, none before the segment's first.
#[derive(Debug, Clone, Copy)]
struct WalkPos {
    next_seq: Seq,
    last_hash: Option<[u8; 32]>,
}

impl WalkPos {
    /// The chain position, given where the segment starts in the log.
    fn resolve(self, start: ChainPos) -> ChainPos {
        ChainPos {
            next_seq: self.next_seq,
            prev_hash: self.last_hash.unwrap_or(start.prev_hash),
        }
    }
}

/// What reading a segment's frames in order found, before it is judged.
struct FrameWalk {
    /// Position after the last valid frame.
    chain: WalkPos,
    /// Position, end offset and record count at the last BATCH_END.
    committed: (WalkPos, u64, u64),
    /// Valid frames read.
    records: u64,
    /// Offset of the first frame that is unframed or fails its CRC, and why.
    bad_frame: Option<(u64, String)>,
}

/// Reads frames from seq `first_seq` until the end of the segment or the first frame that
/// is unframed or fails its CRC. A frame whose CRC is valid but whose seq, flags or chain
/// link are wrong is an error at once; the first frame's link is left to the caller, which
/// gets that frame in `first`.
fn walk_frames(
    cursor: &mut SegmentCursor,
    first_seq: Seq,
    first: &mut Option<(u64, FrameHeader, Vec<u8>)>,
    corrupt: impl Fn(u64, Seq, String) -> LogError,
) -> Result<FrameWalk, LogError> {
    let mut chain = WalkPos {
        next_seq: first_seq,
        last_hash: None,
    };
    let mut committed = (chain, cursor.pos, 0u64);
    let mut records = 0u64;
    let mut payload = Vec::new();

    let bad_frame = loop {
        let frame_at = cursor.pos;
        let (header, raw) = match cursor.next_header()? {
            Step::End => break None,
            Step::Unframed { reason } => break Some((frame_at, reason)),
            Step::Frame { header, raw } => (header, raw),
        };
        cursor.read_payload(&header, &mut payload)?;
        if frame_crc(&raw, &payload) != header.crc {
            break Some((frame_at, "crc mismatch".to_string()));
        }
        check_frame(&header, &payload, chain.next_seq, chain.last_hash.as_ref())
            .map_err(|(seq, reason)| corrupt(frame_at, seq, reason))?;
        if chain.last_hash.is_none() {
            *first = Some((frame_at, header, payload.clone()));
        }
        let starts_batch = records == committed.2;
        if header.is_batch_start() != (starts_batch && cursor.version >= 2) {
            return Err(corrupt(
                frame_at,
                header.seq,
                format!(
                    "BATCH_START flag is {} on a frame that {} a batch (segment version {})",
                    if header.is_batch_start() {
                        "set"
                    } else {
                        "clear"
                    },
                    if starts_batch {
                        "starts"
                    } else {
                        "does not start"
                    },
                    cursor.version
                ),
            ));
        }
        chain = WalkPos {
            next_seq: header.seq + 1,
            last_hash: Some(header.hash),
        };
        records += 1;
        if header.is_batch_end() {
            committed = (chain, cursor.pos, records);
        }
    };
    Ok(FrameWalk {
        chain,
        committed,
        records,
        bad_frame,
    })
}

/// Why the end of the last segment is a torn tail, if it is one: a bad frame (at its
/// offset) and/or frames after the last BATCH_END.
fn tail_reason(bad_frame: Option<(u64, String)>, uncommitted_frames: u64) -> Option<String> {
    match bad_frame {
        Some((frame_at, reason)) if uncommitted_frames > 0 => Some(format!(
            "{reason} at offset {frame_at}, after {uncommitted_frames} frame(s) of an \
             incomplete batch"
        )),
        Some((frame_at, reason)) => Some(format!("{reason} at offset {frame_at}")),
        None if uncommitted_frames > 0 => Some(format!(
            "incomplete batch: {uncommitted_frames} frame(s) after the last BATCH_END"
        )),
        None => None,
    }
}

/// A bad frame in the last segment is a torn tail only if what follows it can be the rest of
/// the one batch that was being written when the power went: only that batch was unsynced,
/// so only its pages can be missing, torn or out of order, while everything before it was
/// synced before it was started. Valid frames after the damage are then pages of that same
/// batch that reached the disk before an earlier page did, and are cut with it.
///
/// In a version 2 segment every batch's first frame carries BATCH_START, so the rule is
/// exact: the damage is inside the log (refused) if a valid frame after it starts a batch
/// (a later batch was begun, so the damaged one had been synced), or if anything valid
/// follows a BATCH_END after it. A BATCH_END of the damaged batch itself, reached before an
/// earlier page of it, is cut with the batch. In a version 1 segment, without batch starts,
/// any valid BATCH_END after the damage is refused, as it could end a later batch.
fn refuse_if_valid_frame_follows(
    cursor: &SegmentCursor,
    frame_at: u64,
    expected_seq: Seq,
    reason: &str,
) -> Result<(), LogError> {
    let search_from = frame_at + 1;
    if search_from >= cursor.file_len {
        return Ok(());
    }
    let rest = cursor.read_tail(search_from)?;
    let refuse = |what: String, found: usize| LogError::Corrupt {
        segment: cursor.path.clone(),
        offset: frame_at,
        seq: Some(expected_seq),
        reason: format!(
            "{reason}, and {what} follows at offset {}: damage inside the log, not a torn tail",
            search_from + found as u64
        ),
    };
    let marks_batches = cursor.version >= 2;
    let mut batch_end_seen: Option<Seq> = None;
    // Fixed at the damage: a frame far behind it may carry a seq far above `expected_seq`,
    // however little is left to search when it is reached.
    let window = seq_window(expected_seq, &rest);
    let mut from = 0;
    while let Some((at, seq)) = find_valid_frame(&rest[from..], &window) {
        let found = from + at;
        let header: &[u8; FRAME_HEADER_LEN] = rest[found..found + FRAME_HEADER_LEN]
            .try_into()
            .expect("a found frame has a whole header");
        let header = FrameHeader::decode(header);
        if let Some(end) = batch_end_seen {
            return Err(refuse(
                format!("record {seq}, after batch end {end},"),
                found,
            ));
        }
        if marks_batches && header.is_batch_start() {
            return Err(refuse(format!("a later batch (from seq {seq})"), found));
        }
        if header.is_batch_end() {
            if !marks_batches {
                return Err(refuse(
                    format!("a complete batch (ending at seq {seq})"),
                    found,
                ));
            }
            batch_end_seen = Some(seq);
        }
        from = found + 1;
    }
    Ok(())
}
