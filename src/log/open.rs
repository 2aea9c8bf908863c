//! Opening a log for writing: the directory and its lock, recovery of the last segment
//! (cutting a torn tail after saving its bytes), and the writer positioned at the end.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::scan::{scan_log, LastSegment};
use super::segment::{
    create_segment, fsync_dir, read_bytes, remove_stale_tmp_files, LOCK_FILE_NAME,
};
#[cfg(test)]
use super::tests;
use super::{io_err, Log, LogConfig, LogError, Recovery, Seq, SEGMENT_HEADER_LEN};

impl Log {
    /// Opens (creating the directory if missing), takes the directory's lock and recovers;
    /// see the module doc for the rules. Verifies every frame of every segment. Fails with
    /// [`LogError::Locked`] if another `Log` has the directory open.
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<(Log, Recovery), LogError> {
        create_dir_durably(dir)?;
        // Before anything that writes: recovery must not race a live writer.
        let lock = lock_dir(dir)?;
        remove_stale_tmp_files(dir)?;
        let scan = scan_log(dir)?;
        let mut recovery = Recovery {
            head_seq: scan.head.head_seq(),
            segments: scan.segment_count,
            torn_tail_bytes: 0,
            torn_tail_saved_to: None,
        };
        let (file, segment_path, segment_len) = match scan.last {
            None => {
                let (file, path) = create_segment(dir, 1)?;
                recovery.segments = 1;
                (file, path, SEGMENT_HEADER_LEN as u64)
            }
            Some(last) => {
                let path = &last.segment.path;
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("open segment for append", path))?;
                if let Some(reason) = &last.tail_reason {
                    let saved_to = cut_torn_tail(dir, &file, &last, reason)?;
                    recovery.torn_tail_bytes = last.file_len - last.committed_end;
                    recovery.torn_tail_saved_to = Some(saved_to);
                }
                file.seek(SeekFrom::Start(last.committed_end))
                    .map_err(io_err("seek segment end", path))?;
                (file, last.segment.path, last.committed_end)
            }
        };
        let log = Log {
            dir: dir.to_path_buf(),
            cfg,
            file,
            segment_path,
            segment_len,
            head: scan.head,
            buf: Vec::new(),
            writeback_hint: true,
            poisoned: false,
            _lock: lock,
            #[cfg(test)]
            faults: tests::Faults::default(),
        };
        Ok((log, recovery))
    }
}

/// Opens (creating) `dir/LOCK` and locks it exclusively without waiting.
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LogError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(err)) => Err(io_err("lock log directory", &path)(err)),
    }
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent so the
/// directory entries survive a crash.
fn create_dir_durably(dir: &Path) -> Result<(), LogError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err("create log directory", dir))?;
    for created in missing.iter().rev() {
        match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent)?,
            _ => fsync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

/// Copies the torn tail to a `torn-*.bin` file (fsynced), then truncates the segment to its
/// last complete batch (fsynced). Returns the copy's path.
fn cut_torn_tail(
    dir: &Path,
    file: &File,
    last: &LastSegment,
    reason: &str,
) -> Result<PathBuf, LogError> {
    let path = &last.segment.path;
    let offset = last.committed_end;
    let bytes = read_bytes(path, offset, last.file_len)?;
    let saved_to = save_torn_bytes(dir, last.segment.first_seq, offset, &bytes)?;
    file.set_len(offset)
        .map_err(io_err("truncate torn tail", path))?;
    file.sync_all()
        .map_err(io_err("fsync truncated segment", path))?;
    tracing::warn!(
        segment = %path.display(),
        offset,
        bytes = bytes.len(),
        saved_to = %saved_to.display(),
        reason,
        "cut torn tail from the last log segment"
    );
    Ok(saved_to)
}

/// Bound on name collisions: each is a different earlier cut at the same offset.
const TORN_FILE_NAME_ATTEMPTS: usize = 1000;

fn save_torn_bytes(
    dir: &Path,
    segment_first_seq: Seq,
    offset: u64,
    bytes: &[u8],
) -> Result<PathBuf, LogError> {
    for attempt in 0..TORN_FILE_NAME_ATTEMPTS {
        let suffix = if attempt == 0 {
            String::new()
        } else {
            format!(".{attempt}")
        };
        let path = dir.join(format!("torn-{segment_first_seq:020}-{offset}{suffix}.bin"));
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Same bytes: an earlier open saved them and crashed before truncating.
                let existing = fs::read(&path).map_err(io_err("read torn file", &path))?;
                if existing != bytes {
                    continue;
                }
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open torn file", &path))?
            }
            Err(err) => return Err(io_err("create torn file", &path)(err)),
        };
        if file
            .metadata()
            .map_err(io_err("stat torn file", &path))?
            .len()
            == 0
        {
            file.write_all(bytes)
                .map_err(io_err("write torn file", &path))?;
        }
        file.sync_all().map_err(io_err("fsync torn file", &path))?;
        fsync_dir(dir)?;
        return Ok(path);
    }
    Err(LogError::Io {
        op: "name torn file",
        path: dir.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "too many torn files at this offset",
        ),
    })
}
