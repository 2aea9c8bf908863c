//! Replay: reading a seq range while the log may be open for appends elsewhere.

use std::path::Path;

use super::frame::frame_crc;
use super::scan::{check_frame, misplaced};
use super::segment::{list_segments, SegmentCursor, SegmentFile, Step};
use super::storage::LogDir;
use super::{LogEntry, LogError, Seq};

/// Iterator over the records `from..=up_to`, in seq order. Yields at most one error, then ends.
///
/// Checks each yielded record's CRC and seq, and its chain link to the record before it
/// (to the previous frame's stored hash; for the very first record of the first segment
/// opened there is no previous frame at hand and only CRC and seq are checked). Records
/// before `from` in the first segment are stepped over by their headers, payloads unread.
/// It trusts nothing beyond `up_to`: the caller passes a seq it knows is durable, so a
/// concurrent append (possibly mid-write) is never looked at.
pub struct LogReader {
    dir: LogDir,
    segments: std::vec::IntoIter<SegmentFile>,
    cursor: Option<SegmentCursor>,
    /// The seq the next frame on disk must carry.
    next_seq: Seq,
    from: Seq,
    up_to: Seq,
    prev_hash: Option<[u8; 32]>,
    finished: bool,
}

/// Reads records with `from <= seq <= up_to` (inclusive, so `up_to` is typically
/// [`super::Log::head_seq`]). `from` 0 is treated as 1. `from > up_to` yields nothing.
/// If the log on disk ends before `up_to`, the iterator ends with [`LogError::BeyondHead`].
///
/// Only the segment holding `from` and those after it are opened, found by file name.
pub fn read_range(dir: &Path, from: Seq, up_to: Seq) -> Result<LogReader, LogError> {
    LogDir::disk(dir).read_range(from, up_to)
}

impl LogDir {
    /// [`read_range`] on this directory's storage.
    pub fn read_range(&self, from: Seq, up_to: Seq) -> Result<LogReader, LogError> {
        read_range_in(self, from, up_to)
    }
}

fn read_range_in(dir: &LogDir, from: Seq, up_to: Seq) -> Result<LogReader, LogError> {
    let from = from.max(1);
    let mut reader = LogReader {
        dir: dir.clone(),
        segments: Vec::new().into_iter(),
        cursor: None,
        next_seq: from,
        from,
        up_to,
        prev_hash: None,
        finished: from > up_to,
    };
    if reader.finished {
        return Ok(reader);
    }
    let mut segments = list_segments(dir)?;
    let Some(first) = segments.first() else {
        return Err(LogError::BeyondHead {
            up_to,
            last_on_disk: 0,
        });
    };
    if first.first_seq > from {
        return Err(LogError::Corrupt {
            segment: first.path.clone(),
            offset: 0,
            seq: Some(from),
            reason: format!(
                "earliest segment starts at seq {}, after the requested seq {from}",
                first.first_seq
            ),
        });
    }
    let holding_from = segments.partition_point(|s| s.first_seq <= from) - 1;
    reader.next_seq = segments[holding_from].first_seq;
    segments.drain(..holding_from);
    reader.segments = segments.into_iter();
    Ok(reader)
}

impl LogReader {
    fn next_entry(&mut self) -> Result<Option<LogEntry>, LogError> {
        if self.next_seq > self.up_to {
            return Ok(None);
        }
        loop {
            if self.cursor.is_none() {
                self.cursor = Some(self.open_next_segment()?);
            }
            let cursor = self.cursor.as_mut().expect("cursor opened above");
            let frame_at = cursor.pos;
            let (header, raw) = match cursor.next_header()? {
                Step::End => {
                    self.cursor = None;
                    continue;
                }
                Step::Unframed { reason } => {
                    return Err(corrupt(cursor, frame_at, self.next_seq, reason))
                }
                Step::Frame { header, raw } => (header, raw),
            };
            if header.seq != self.next_seq {
                let reason = misplaced(header.seq, self.next_seq);
                return Err(corrupt(cursor, frame_at, self.next_seq, reason));
            }
            if header.seq < self.from {
                cursor.skip_payload(&header)?;
                self.prev_hash = Some(header.hash);
                self.next_seq += 1;
                continue;
            }
            let mut payload = Vec::new();
            cursor.read_payload(&header, &mut payload)?;
            if frame_crc(&raw, &payload) != header.crc {
                let reason = "crc mismatch".to_string();
                return Err(corrupt(cursor, frame_at, self.next_seq, reason));
            }
            check_frame(&header, &payload, self.next_seq, self.prev_hash.as_ref())
                .map_err(|(seq, reason)| corrupt(cursor, frame_at, seq, reason))?;
            self.prev_hash = Some(header.hash);
            self.next_seq += 1;
            return Ok(Some(LogEntry {
                seq: header.seq,
                hash: header.hash,
                payload,
            }));
        }
    }

    fn open_next_segment(&mut self) -> Result<SegmentCursor, LogError> {
        let Some(segment) = self.segments.next() else {
            return Err(LogError::BeyondHead {
                up_to: self.up_to,
                last_on_disk: self.next_seq - 1,
            });
        };
        if segment.first_seq != self.next_seq {
            return Err(LogError::Corrupt {
                segment: segment.path,
                offset: 0,
                seq: Some(self.next_seq),
                reason: format!(
                    "segment starts at seq {}, expected {}",
                    segment.first_seq, self.next_seq
                ),
            });
        }
        SegmentCursor::open(&self.dir, &segment)
    }
}

fn corrupt(cursor: &SegmentCursor, offset: u64, seq: Seq, reason: String) -> LogError {
    LogError::Corrupt {
        segment: cursor.path.clone(),
        offset,
        seq: Some(seq),
        reason,
    }
}

impl Iterator for LogReader {
    type Item = Result<LogEntry, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let item = self.next_entry().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.finished = true;
        }
        item
    }
}
