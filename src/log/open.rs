//! Opening a log for writing: the directory and its lock, recovery of the last segment
//! (cutting a torn tail after saving its bytes), and the writer positioned at the end.

use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};

use super::frame::SEGMENT_VERSION;
use super::scan::{scan_log, LastSegment};
use super::segment::{
    create_segment, fsync_dir, read_bytes, remove_stale_tmp_files, LOCK_FILE_NAME,
};
use super::storage::{LogDir, StorageFile};
#[cfg(test)]
use super::tests;
use super::{io_err, Log, LogConfig, LogError, Recovery, Seq, SEGMENT_HEADER_LEN};

impl Log {
    /// Opens (creating the directory if missing), takes the directory's lock and recovers;
    /// see the module doc for the rules. Verifies every frame of every segment. Fails with
    /// [`LogError::Locked`] if another `Log` has the directory open.
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<(Log, Recovery), LogError> {
        Log::open_in(&LogDir::disk(dir), cfg)
    }

    /// [`Log::open`] on any storage.
    pub fn open_in(dir: &LogDir, cfg: LogConfig) -> Result<(Log, Recovery), LogError> {
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
                let file = dir
                    .storage()
                    .open(path, true)
                    .map_err(io_err("open segment for append", path))?;
                if let Some(reason) = &last.tail_reason {
                    let saved_to = cut_torn_tail(dir, &*file, &last, reason)?;
                    recovery.torn_tail_bytes = last.file_len - last.committed_end;
                    recovery.torn_tail_saved_to = Some(saved_to);
                }
                if last.version < SEGMENT_VERSION {
                    // Appends go to a segment of the current format: an older one holding
                    // records is sealed as it is, an empty one is created anew.
                    if last.records == 0 {
                        storage_remove(dir, path)?;
                        recovery.segments -= 1;
                    }
                    let (file, path) = create_segment(dir, scan.head.next_seq)?;
                    recovery.segments += 1;
                    (file, path, SEGMENT_HEADER_LEN as u64)
                } else {
                    (file, last.segment.path, last.committed_end)
                }
            }
        };
        let log = Log {
            dir: dir.clone(),
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

/// Removes a header-only segment of an older format, durably, before its replacement is
/// created under the same name.
fn storage_remove(dir: &LogDir, path: &Path) -> Result<(), LogError> {
    dir.storage()
        .remove(path)
        .map_err(io_err("remove empty old-format segment", path))?;
    fsync_dir(dir, dir.path())
}

/// Opens (creating) `dir/LOCK` and locks it exclusively without waiting.
fn lock_dir(dir: &LogDir) -> Result<Box<dyn Any + Send + Sync>, LogError> {
    let path = dir.join(LOCK_FILE_NAME);
    match dir.storage().lock(&path) {
        Ok(guard) => Ok(guard),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(LogError::Locked {
            dir: dir.path().to_path_buf(),
        }),
        Err(err) => Err(io_err("lock log directory", &path)(err)),
    }
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent so the
/// directory entries survive a crash.
fn create_dir_durably(dir: &LogDir) -> Result<(), LogError> {
    let storage = dir.storage();
    let missing: Vec<&Path> = dir
        .path()
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !storage.exists(d))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    storage
        .create_dir_all(dir.path())
        .map_err(io_err("create log directory", dir.path()))?;
    for created in missing.iter().rev() {
        match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(dir, parent)?,
            _ => fsync_dir(dir, Path::new("."))?,
        }
    }
    Ok(())
}

/// Copies the torn tail to a `torn-*.bin` file (fsynced), then truncates the segment to its
/// last complete batch (fsynced). Returns the copy's path.
fn cut_torn_tail(
    dir: &LogDir,
    file: &dyn StorageFile,
    last: &LastSegment,
    reason: &str,
) -> Result<PathBuf, LogError> {
    let path = &last.segment.path;
    let offset = last.committed_end;
    let bytes = read_bytes(dir, path, offset, last.file_len)?;
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
    dir: &LogDir,
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
        let path = dir.join(&format!(
            "torn-{segment_first_seq:020}-{offset}{suffix}.bin"
        ));
        let storage = dir.storage();
        let file = match storage.create_new(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Same bytes: an earlier open saved them and crashed before truncating.
                let len = storage
                    .open(&path, false)
                    .and_then(|f| f.size())
                    .map_err(io_err("stat torn file", &path))?;
                let existing = read_bytes(dir, &path, 0, len)?;
                if existing != bytes {
                    continue;
                }
                storage
                    .open(&path, true)
                    .map_err(io_err("open torn file", &path))?
            }
            Err(err) => return Err(io_err("create torn file", &path)(err)),
        };
        if file.size().map_err(io_err("stat torn file", &path))? == 0 {
            file.write_all_at(bytes, 0)
                .map_err(io_err("write torn file", &path))?;
        }
        file.sync_all().map_err(io_err("fsync torn file", &path))?;
        fsync_dir(dir, dir.path())?;
        return Ok(path);
    }
    Err(LogError::Io {
        op: "name torn file",
        path: dir.path().to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "too many torn files at this offset",
        ),
    })
}
