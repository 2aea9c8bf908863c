//! The storage boundary of the log: the handful of file-system operations the log uses
//! (create, positioned read and write, sync, truncate, rename, remove, list, directory
//! sync, lock), behind a trait with two implementations: [`Disk`], the real file system,
//! and [`super::sim::SimDisk`], a simulated disk that loses unsynced writes in a crash.
//!
//! Everything the log reads or writes goes through a [`LogDir`], a directory on some
//! [`Storage`]; nothing under `log/` opens a file by itself. This is what lets a test
//! take the machine's power away between any two operations, which a SIGKILL cannot: the
//! kernel's page cache survives a killed process, so only a simulated disk can show an
//! acknowledged record that was never synced.

use std::any::Any;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file-system operations the log needs. Paths are full paths on this storage.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents (not durable until [`Storage::sync_dir`]).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// The names of the entries of `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `path`, or truncates it if it exists; open for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Creates `path`; an existing file is an [`io::ErrorKind::AlreadyExists`] error.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file, for reading and (if `write`) writing.
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn StorageFile>>;
    /// Renames atomically, replacing `to` (not durable until the directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing) for as long as the returned
    /// guard lives; [`io::ErrorKind::WouldBlock`] if someone else holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
}

/// An open file. Reads and writes are positioned: the log knows where each byte goes.
pub trait StorageFile: Send + Sync {
    fn size(&self) -> io::Result<u64>;
    /// Reads at most `buf.len()` bytes at `offset`; fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and its size) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable: `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// Asks for writeback of a range to start now; never a durability point. Storages
    /// without such a hint return `Ok`.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// A log directory: a path on a [`Storage`].
#[derive(Clone)]
pub struct LogDir {
    storage: Arc<dyn Storage>,
    path: PathBuf,
}

impl fmt::Debug for LogDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogDir({:?} on {:?})", self.path, self.storage)
    }
}

impl LogDir {
    /// `path` on the real file system.
    pub fn disk(path: impl Into<PathBuf>) -> LogDir {
        LogDir::on(Arc::new(Disk), path)
    }

    pub fn on(storage: Arc<dyn Storage>, path: impl Into<PathBuf>) -> LogDir {
        LogDir {
            storage,
            path: path.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Storage for Disk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(DiskFile(file)))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(DiskFile(file)))
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(Box::new(DiskFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// `File::try_lock`: `flock` on Unix, `LockFileEx` on Windows. The lock goes with the
    /// open file, so it is released when the guard is dropped or the process dies.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TryLockError::Error(err)) => Err(err),
        }
    }
}

struct DiskFile(File);

impl StorageFile for DiskFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match positioned::read_at(&self.0, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        positioned::write_all_at(&self.0, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        writeback::start(&self.0, offset, len)
    }
}

#[cfg(unix)]
mod positioned {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;

    pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        file.read_at(buf, offset)
    }

    pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }
}

#[cfg(windows)]
mod positioned {
    use std::fs::File;
    use std::io;
    use std::os::windows::fs::FileExt;

    pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        file.seek_read(buf, offset)
    }

    pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match file.seek_write(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

mod writeback {
    use std::fs::File;
    use std::io;

    /// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: queue the range for
    /// writeback and return without waiting. See `Log::start_writeback` for what it does
    /// not do.
    #[cfg(target_os = "linux")]
    pub fn start(file: &File, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (offset.try_into(), len.try_into()) else {
            return Ok(()); // beyond off_t: skip the hint, the final fdatasync does the work
        };
        // SAFETY: a plain syscall on a file descriptor owned by `file`; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Elsewhere there is no writeback hint: chunks are plain writes and the final
    /// `fdatasync` writes them all.
    #[cfg(not(target_os = "linux"))]
    pub fn start(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// A [`StorageFile`] read sequentially from a position: what a `BufReader` wraps.
pub(crate) struct FileReader {
    file: Box<dyn StorageFile>,
    pos: u64,
}

impl FileReader {
    pub fn new(file: Box<dyn StorageFile>, pos: u64) -> FileReader {
        FileReader { file, pos }
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.file.size()?.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before start of file")
        })?;
        Ok(self.pos)
    }
}
