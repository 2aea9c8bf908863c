//! Segment files: naming, listing, creation, and a sequential frame cursor.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::frame::{
    decode_segment_header, encode_segment_header, FrameHeader, FRAME_HEADER_LEN, PAYLOAD_BYTES_MAX,
    SEGMENT_HEADER_LEN,
};
use super::storage::{FileReader, LogDir, StorageFile};
use super::{io_err, LogError, Seq};

const SEGMENT_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".seg.tmp";
/// The writer's lock file (see `Log::open`). Outside the segment namespace: it does not end
/// in [`SEGMENT_SUFFIX`] or [`TMP_SUFFIX`], so listing and tmp cleanup never see it.
pub(crate) const LOCK_FILE_NAME: &str = "LOCK";
/// Read-ahead for sequential scans: large enough to amortise syscalls, small enough to not matter.
const READ_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    pub first_seq: Seq,
    pub path: PathBuf,
}

pub(crate) fn segment_file_name(first_seq: Seq) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<Seq> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files of `dir` in seq order. A `*.seg` file with any other name is an error:
/// something foreign is in the log's namespace.
pub(crate) fn list_segments(dir: &LogDir) -> Result<Vec<SegmentFile>, LogError> {
    let mut segments = Vec::new();
    let names = dir
        .storage()
        .list(dir.path())
        .map_err(io_err("read_dir", dir.path()))?;
    for name in names {
        if !name.ends_with(SEGMENT_SUFFIX) {
            continue;
        }
        let path = dir.join(&name);
        let Some(first_seq) = parse_segment_name(&name) else {
            return Err(LogError::Corrupt {
                segment: path,
                offset: 0,
                seq: None,
                reason: "unexpected file name in the segment namespace".to_string(),
            });
        };
        segments.push(SegmentFile { first_seq, path });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// Removes `*.seg.tmp` files: segments whose creation crashed before the rename made them real.
pub(crate) fn remove_stale_tmp_files(dir: &LogDir) -> Result<(), LogError> {
    let storage = dir.storage();
    let names = storage
        .list(dir.path())
        .map_err(io_err("read_dir", dir.path()))?;
    for name in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
        let path = dir.join(name);
        storage
            .remove(&path)
            .map_err(io_err("remove stale tmp segment", &path))?;
    }
    Ok(())
}

pub(crate) fn fsync_dir(dir: &LogDir, path: &Path) -> Result<(), LogError> {
    dir.storage()
        .sync_dir(path)
        .map_err(io_err("fsync directory", path))
}

/// Creates segment `first_seq` atomically: header written and fsynced under a tmp name, then
/// renamed and the directory fsynced, so a `*.seg` file always has a complete header.
/// Returns the file opened for writing, positioned after the header.
pub(crate) fn create_segment(
    dir: &LogDir,
    first_seq: Seq,
) -> Result<(Box<dyn StorageFile>, PathBuf), LogError> {
    let storage = dir.storage();
    let path = dir.join(&segment_file_name(first_seq));
    if storage.exists(&path) {
        return Err(LogError::Corrupt {
            segment: path,
            offset: 0,
            seq: Some(first_seq),
            reason: "segment to be created already exists".to_string(),
        });
    }
    let tmp = dir.join(&format!("{first_seq:020}{TMP_SUFFIX}"));
    let file = storage
        .create(&tmp)
        .map_err(io_err("create segment", &tmp))?;
    file.write_all_at(&encode_segment_header(first_seq), 0)
        .map_err(io_err("write segment header", &tmp))?;
    file.sync_all().map_err(io_err("fsync new segment", &tmp))?;
    storage
        .rename(&tmp, &path)
        .map_err(io_err("rename new segment", &path))?;
    fsync_dir(dir, dir.path())?;
    Ok((file, path))
}

/// What the cursor found at its position.
pub(crate) enum Step {
    /// Clean end of file at a frame boundary.
    End,
    /// The bytes here cannot be a complete frame; `reason` says why. Torn-tail candidate.
    Unframed { reason: String },
    /// A complete frame's header; its payload follows and must be read or skipped next.
    Frame {
        header: FrameHeader,
        raw: [u8; FRAME_HEADER_LEN],
    },
}

/// Sequential reader over one segment's frames. Checks only framing (lengths against the
/// file size and the payload limit); CRC, seq and chain checks belong to the callers.
pub(crate) struct SegmentCursor {
    reader: BufReader<FileReader>,
    dir: LogDir,
    pub path: PathBuf,
    /// The segment format version from its header.
    pub version: u32,
    /// Offset of the next unread byte.
    pub pos: u64,
    /// File length when the cursor was opened; bytes appended later are not seen.
    pub file_len: u64,
}

impl SegmentCursor {
    /// Opens a segment and checks its header against the seq its file name promises.
    pub fn open(dir: &LogDir, segment: &SegmentFile) -> Result<SegmentCursor, LogError> {
        let path = &segment.path;
        let file = dir
            .storage()
            .open(path, false)
            .map_err(io_err("open segment", path))?;
        let file_len = file.size().map_err(io_err("stat segment", path))?;
        let corrupt = |reason: String| LogError::Corrupt {
            segment: path.clone(),
            offset: 0,
            seq: Some(segment.first_seq),
            reason,
        };
        if file_len < SEGMENT_HEADER_LEN as u64 {
            return Err(corrupt(format!(
                "segment header truncated ({file_len} bytes)"
            )));
        }
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, FileReader::new(file, 0));
        let mut header = [0; SEGMENT_HEADER_LEN];
        reader
            .read_exact(&mut header)
            .map_err(io_err("read segment header", path))?;
        let (header_seq, version) = decode_segment_header(&header).map_err(corrupt)?;
        if header_seq != segment.first_seq {
            return Err(corrupt(format!(
                "segment header says first seq {header_seq}, file name says {}",
                segment.first_seq
            )));
        }
        Ok(SegmentCursor {
            reader,
            dir: dir.clone(),
            path: path.clone(),
            version,
            pos: SEGMENT_HEADER_LEN as u64,
            file_len,
        })
    }

    pub fn remaining(&self) -> u64 {
        self.file_len - self.pos
    }

    pub fn next_header(&mut self) -> Result<Step, LogError> {
        let remaining = self.remaining();
        if remaining == 0 {
            return Ok(Step::End);
        }
        if remaining < FRAME_HEADER_LEN as u64 {
            return Ok(Step::Unframed {
                reason: format!("frame header truncated ({remaining} bytes before end of file)"),
            });
        }
        let mut raw = [0; FRAME_HEADER_LEN];
        self.reader
            .read_exact(&mut raw)
            .map_err(io_err("read frame header", &self.path))?;
        let header = FrameHeader::decode(&raw);
        let payload_len = u64::from(header.payload_len);
        if payload_len > PAYLOAD_BYTES_MAX as u64 {
            return Ok(Step::Unframed {
                reason: format!(
                    "declared payload length {payload_len} exceeds limit {PAYLOAD_BYTES_MAX}"
                ),
            });
        }
        if header.frame_len() > remaining {
            return Ok(Step::Unframed {
                reason: format!(
                    "frame runs past end of file (declares {payload_len} payload bytes, \
                     {} remain)",
                    remaining - FRAME_HEADER_LEN as u64
                ),
            });
        }
        self.pos += FRAME_HEADER_LEN as u64;
        Ok(Step::Frame { header, raw })
    }

    /// Reads the payload of the frame whose header was just returned into `buf` (replacing it).
    pub fn read_payload(
        &mut self,
        header: &FrameHeader,
        buf: &mut Vec<u8>,
    ) -> Result<(), LogError> {
        buf.clear();
        buf.resize(header.payload_len as usize, 0);
        self.reader
            .read_exact(buf)
            .map_err(io_err("read frame payload", &self.path))?;
        self.pos += u64::from(header.payload_len);
        Ok(())
    }

    pub fn skip_payload(&mut self, header: &FrameHeader) -> Result<(), LogError> {
        self.reader
            .seek_relative(i64::from(header.payload_len))
            .map_err(io_err("seek past frame payload", &self.path))?;
        self.pos += u64::from(header.payload_len);
        Ok(())
    }

    /// All bytes from `from` to the end of the file (as of opening).
    pub fn read_tail(&self, from: u64) -> Result<Vec<u8>, LogError> {
        read_bytes(&self.dir, &self.path, from, self.file_len)
    }
}

/// Bytes `from..to` of a file. Used only on failure paths (torn tails, corruption triage), so
/// the allocation, bounded by the segment size, does not matter.
pub(crate) fn read_bytes(
    dir: &LogDir,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<Vec<u8>, LogError> {
    let file = dir
        .storage()
        .open(path, false)
        .map_err(io_err("open segment", path))?;
    let len = to.saturating_sub(from);
    let mut bytes = Vec::with_capacity(len as usize);
    FileReader::new(file, from)
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(io_err("read segment", path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_twenty_digits_and_parse_back() {
        assert_eq!(segment_file_name(17), "00000000000000000017.seg");
        assert_eq!(parse_segment_name("00000000000000000017.seg"), Some(17));
        assert_eq!(parse_segment_name("17.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000001x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000017.seg.tmp"), None);
        assert!(!LOCK_FILE_NAME.ends_with(SEGMENT_SUFFIX) && !LOCK_FILE_NAME.ends_with(TMP_SUFFIX));
    }
}
