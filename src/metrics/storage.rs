//! Gauges of the data directory's disk: the log's size and segment count and
//! the free space of its file system. Measured when `/metrics` is scraped (a
//! directory listing and one `statvfs`), never on the write path; absent
//! until a server names its data directory, so no one alerts on a zero.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGauge;

/// The paths measured: the data directory and the log directory in it.
#[derive(Debug, Clone)]
struct Watched {
    data_dir: PathBuf,
    log_dir: PathBuf,
}

/// A collector registered once; [`StorageGauges::watch`] names the
/// directories (the last server started in this process wins).
#[derive(Clone)]
pub struct StorageGauges {
    watched: Arc<Mutex<Option<Watched>>>,
    log_size_bytes: IntGauge,
    log_segments: IntGauge,
    free_bytes: IntGauge,
    capacity_bytes: IntGauge,
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

impl Default for StorageGauges {
    fn default() -> StorageGauges {
        StorageGauges {
            watched: Arc::new(Mutex::new(None)),
            log_size_bytes: gauge(
                "keymeter_log_size_bytes",
                "Bytes of the log's segment files on disk.",
            ),
            log_segments: gauge("keymeter_log_segments", "Segment files of the log."),
            free_bytes: gauge(
                "keymeter_data_dir_free_bytes",
                "Bytes available to keymeter on the data directory's file system.",
            ),
            capacity_bytes: gauge(
                "keymeter_data_dir_capacity_bytes",
                "Size in bytes of the data directory's file system.",
            ),
        }
    }
}

impl StorageGauges {
    /// Measures `data_dir` and its `log_dir` from the next scrape on.
    pub fn watch(&self, data_dir: &Path, log_dir: &Path) {
        *self.watched.lock().expect("not poisoned") = Some(Watched {
            data_dir: data_dir.to_owned(),
            log_dir: log_dir.to_owned(),
        });
    }
}

/// Total bytes and number of the `*.seg` files in `log_dir`.
fn segment_files(log_dir: &Path) -> Option<(u64, u64)> {
    let mut bytes = 0;
    let mut count = 0;
    for entry in std::fs::read_dir(log_dir).ok()? {
        let entry = entry.ok()?;
        if !entry.file_name().to_string_lossy().ends_with(".seg") {
            continue;
        }
        // A segment removed between the listing and here is not counted.
        if let Ok(meta) = entry.metadata() {
            bytes += meta.len();
            count += 1;
        }
    }
    Some((bytes, count))
}

/// Available and total bytes of the file system holding `path`.
fn file_system(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` writes only into `stat`, which is plain old data
    // and fully initialised by a successful call; the path is NUL-terminated.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        stat
    };
    let fragment = stat.f_frsize as u64;
    Some((
        stat.f_bavail as u64 * fragment,
        stat.f_blocks as u64 * fragment,
    ))
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for StorageGauges {
    fn desc(&self) -> Vec<&Desc> {
        [
            &self.log_size_bytes,
            &self.log_segments,
            &self.free_bytes,
            &self.capacity_bytes,
        ]
        .into_iter()
        .flat_map(|g| g.desc())
        .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(watched) = self.watched.lock().expect("not poisoned").clone() else {
            return Vec::new();
        };
        let mut families = Vec::new();
        if let Some((bytes, count)) = segment_files(&watched.log_dir) {
            self.log_size_bytes.set(clamp(bytes));
            self.log_segments.set(clamp(count));
            families.extend(self.log_size_bytes.collect());
            families.extend(self.log_segments.collect());
        }
        if let Some((free, capacity)) = file_system(&watched.data_dir) {
            self.free_bytes.set(clamp(free));
            self.capacity_bytes.set(clamp(capacity));
            families.extend(self.free_bytes.collect());
            families.extend(self.capacity_bytes.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(families: &[MetricFamily]) -> Vec<&str> {
        families.iter().map(|f| f.name()).collect()
    }

    #[test]
    fn nothing_is_exported_before_a_data_directory_is_named() {
        assert!(StorageGauges::default().collect().is_empty());
    }

    #[test]
    fn segments_are_counted_and_summed_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::create_dir(&log).unwrap();
        std::fs::write(log.join("00000000000000000001.seg"), [0u8; 100]).unwrap();
        std::fs::write(log.join("00000000000000000050.seg"), [0u8; 23]).unwrap();
        std::fs::write(log.join("00000000000000000090.seg.tmp"), [0u8; 1000]).unwrap();
        std::fs::write(log.join("LOCK"), [0u8; 7]).unwrap();
        let g = StorageGauges::default();
        g.watch(dir.path(), &log);
        let families = g.collect();
        assert_eq!(
            names(&families),
            [
                "keymeter_log_size_bytes",
                "keymeter_log_segments",
                "keymeter_data_dir_free_bytes",
                "keymeter_data_dir_capacity_bytes"
            ]
        );
        assert_eq!(g.log_size_bytes.get(), 123);
        assert_eq!(g.log_segments.get(), 2);
        assert!(g.capacity_bytes.get() > 0);
        assert!(g.free_bytes.get() <= g.capacity_bytes.get());
    }

    #[test]
    fn a_missing_directory_exports_nothing_rather_than_zero() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let g = StorageGauges::default();
        g.watch(&gone, &gone.join("log"));
        assert!(g.collect().is_empty());
    }
}
