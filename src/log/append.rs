//! The append path: a batch is encoded frame by frame, written in chunks with writeback
//! hints between them, and made durable by one `fdatasync`; segments roll between batches.

use std::io;
use std::ops::Range;

use super::frame::{batch_flags, encode_frame};
use super::scan::ChainPos;
use super::segment::create_segment;
#[cfg(test)]
use super::tests;
use super::{
    io_err, Log, LogError, Seq, APPEND_BUFFER_RETAINED_BYTES, APPEND_CHUNK_BYTES, BATCH_BYTES_MAX,
    FRAME_HEADER_LEN, PAYLOAD_BYTES_MAX, SEGMENT_HEADER_LEN,
};

/// Writeback hints end on a multiple of this (a multiple of every Linux page size), so the
/// partly written page at a chunk's end is not written out before the next chunk fills it.
const WRITEBACK_ALIGN: u64 = 64 * 1024;

impl Log {
    /// Appends `payloads` as one batch (all-or-nothing across a crash), written in chunks as
    /// it is encoded and made durable by one `fdatasync`, and returns the seqs assigned. An
    /// empty batch does no I/O.
    pub fn append_batch<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<Range<Seq>, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let first_seq = self.head.next_seq;
        if payloads.is_empty() {
            return Ok(first_seq..first_seq);
        }
        let sizes = batch_sizes(payloads)?;
        let last_hash = match self.write_batch(first_seq, payloads, sizes) {
            Ok(hash) => hash,
            Err(err) => {
                self.poisoned = true;
                return Err(err);
            }
        };
        let end_seq = first_seq + payloads.len() as Seq;
        self.head = ChainPos {
            next_seq: end_seq,
            prev_hash: last_hash,
        };
        if self.buf.capacity() > APPEND_BUFFER_RETAINED_BYTES {
            self.buf = Vec::new();
        }
        Ok(first_seq..end_seq)
    }

    /// Rolls the segment if due, writes the batch chunk by chunk as it is encoded (handing
    /// each full chunk to writeback), then `fdatasync`s. Returns the last record's hash.
    /// After an error an unknown prefix of the batch may be in the file: the caller poisons.
    fn write_batch<P: AsRef<[u8]>>(
        &mut self,
        first_seq: Seq,
        payloads: &[P],
        sizes: BatchSizes,
    ) -> Result<[u8; 32], LogError> {
        let has_records = self.segment_len > SEGMENT_HEADER_LEN as u64;
        if has_records && self.segment_len >= self.cfg.segment_bytes_max {
            self.roll_segment()?;
        }
        // A chunk is written as soon as it reaches APPEND_CHUNK_BYTES, so it never holds more
        // than that plus one frame: reserving this once keeps allocation out of the loop.
        self.buf.clear();
        self.buf.reserve(
            sizes
                .total
                .min(APPEND_CHUNK_BYTES - 1 + sizes.largest_frame),
        );
        let mut hash = self.head.prev_hash;
        // File offsets: the end of what has been written, and of what writeback was asked for.
        let mut written_end = self.segment_len;
        let mut hinted_end = self.segment_len;
        for (i, payload) in payloads.iter().enumerate() {
            let batch_end = i + 1 == payloads.len();
            let seq = first_seq + i as Seq;
            let flags = batch_flags(i, payloads.len());
            hash = encode_frame(&hash, seq, payload.as_ref(), flags, &mut self.buf);
            if self.buf.len() >= APPEND_CHUNK_BYTES || batch_end {
                self.write_chunk(written_end)?;
                written_end += self.buf.len() as u64;
                self.buf.clear();
                // The page holding `written_end` is re-dirtied by the next chunk: leave it to
                // the next hint (or the final sync) instead of writing it out twice.
                let hint_end = written_end / WRITEBACK_ALIGN * WRITEBACK_ALIGN;
                if !batch_end && hint_end > hinted_end {
                    self.start_writeback(hinted_end, hint_end - hinted_end)?;
                    hinted_end = hint_end;
                }
            }
        }
        self.sync_batch()?;
        debug_assert_eq!(
            written_end - self.segment_len,
            sizes.total as u64,
            "encoded batch length"
        );
        self.segment_len = written_end;
        Ok(hash)
    }

    /// Writes the chunk buffer at file offset `at`.
    fn write_chunk(&mut self, at: u64) -> Result<(), LogError> {
        let path = &self.segment_path;
        #[cfg(test)]
        if self.faults.take_write_fault() {
            // A short write, then the error: half the chunk reaches the file.
            let half = self.buf.len() / 2;
            self.file
                .write_all_at(&self.buf[..half], at)
                .map_err(io_err("write batch", path))?;
            return Err(io_err("write batch", path)(tests::injected_error()));
        }
        self.file
            .write_all_at(&self.buf, at)
            .map_err(io_err("write batch", path))
    }

    /// Asks the kernel to start writing the chunk at `offset..offset + len` to the device now
    /// (Linux: `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the device works on it while the
    /// next chunk is hashed instead of receiving the whole batch at the final `fdatasync`.
    ///
    /// This is a writeback hint, never a durability point. Even with its WAIT flags,
    /// `sync_file_range` does not flush the device's volatile write cache and does not write
    /// the file size or any other metadata, so data it "synced" can still vanish in a power
    /// loss. sled 0.34 uses it (WAIT_BEFORE | WRITE | WAIT_AFTER) in place of an fsync on
    /// its log writes on Linux, which is why this log does not live in sled. Here only the
    /// `fdatasync` at the end of the batch makes the batch durable. `SYNC_FILE_RANGE_WRITE`
    /// alone does not wait on writeback either, so it cannot consume a writeback error that
    /// the final `fdatasync` must report. An error it does return still fails (and poisons)
    /// the append, except the ones saying the hint is unavailable, which turn hints off.
    fn start_writeback(&mut self, offset: u64, len: u64) -> Result<(), LogError> {
        if !self.writeback_hint {
            return Ok(());
        }
        match self.file.start_writeback(offset, len) {
            Ok(()) => Ok(()),
            Err(err) if writeback_hint_unavailable(&err) => {
                tracing::debug!(error = %err, "writeback hints unavailable; plain writes only");
                self.writeback_hint = false;
                Ok(())
            }
            Err(err) => Err(io_err(
                "start writeback (sync_file_range)",
                &self.segment_path,
            )(err)),
        }
    }

    fn sync_batch(&mut self) -> Result<(), LogError> {
        let path = &self.segment_path;
        #[cfg(test)]
        if std::mem::take(&mut self.faults.fail_sync) {
            return Err(io_err("fdatasync batch", path)(tests::injected_error()));
        }
        self.file
            .sync_data()
            .map_err(io_err("fdatasync batch", path))
    }

    fn roll_segment(&mut self) -> Result<(), LogError> {
        let (file, path) = create_segment(&self.dir, self.head.next_seq)?;
        self.file = file;
        self.segment_path = path;
        self.segment_len = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }
}

/// Encoded sizes of a batch, checked against the limits.
#[derive(Debug, Clone, Copy)]
struct BatchSizes {
    total: usize,
    largest_frame: usize,
}

fn batch_sizes<P: AsRef<[u8]>>(payloads: &[P]) -> Result<BatchSizes, LogError> {
    let mut bytes = 0usize;
    let mut largest_payload = 0;
    for (index, payload) in payloads.iter().enumerate() {
        let len = payload.as_ref().len();
        if len > PAYLOAD_BYTES_MAX {
            return Err(LogError::PayloadTooLarge { index, len });
        }
        largest_payload = largest_payload.max(len);
        bytes = bytes.saturating_add(FRAME_HEADER_LEN + len);
    }
    if bytes > BATCH_BYTES_MAX {
        return Err(LogError::BatchTooLarge { bytes });
    }
    Ok(BatchSizes {
        total: bytes,
        largest_frame: FRAME_HEADER_LEN + largest_payload,
    })
}

/// Errors meaning the kernel (or a sandbox) does not offer `sync_file_range` for this file,
/// as opposed to an I/O failure.
fn writeback_hint_unavailable(err: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        matches!(
            err.raw_os_error(),
            Some(libc::ENOSYS | libc::EINVAL | libc::ESPIPE | libc::EOPNOTSUPP)
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = err;
        false
    }
}
