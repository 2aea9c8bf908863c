//! What the data directory holds on disk, the offline replay, and the two
//! same-run baselines that do not need a server: a raw read of the log's
//! files, and the same counter keys written straight into a fresh sled tree.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keymeter::meter::CounterKey;

use super::load::Shape;
use super::server::proc_rss;

/// Bytes allocated on disk under `path` (as `du` counts them), leaving out
/// files whose name starts with `skip`.
pub fn du(path: &Path, skip: Option<&str>) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    let mut total = meta.blocks() * 512;
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        let name = entry.file_name();
        if skip.is_some_and(|s| name.to_string_lossy().starts_with(s)) {
            continue;
        }
        total += du(&entry.path(), skip);
    }
    total
}

/// Size of one file (0 when absent).
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Reads every file under `dir` sequentially through a 1 MiB buffer;
/// returns the bytes read and the time taken.
pub fn raw_read(dir: &Path) -> (u64, Duration) {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut bytes = 0u64;
    for f in files {
        let mut file = std::fs::File::open(&f).unwrap();
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    (bytes, started.elapsed())
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Runs `keymeter replay` on the data directory; returns its wall time.
pub fn replay(data_dir: &Path, config_file: &Path, log_dir: &Path) -> Duration {
    let started = Instant::now();
    let out = Command::new(super::server::bin())
        .arg("replay")
        .arg("--config")
        .arg(config_file)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("KEYMETER_CONFIG")
        .output()
        .expect("run keymeter replay");
    let took = started.elapsed();
    std::fs::write(log_dir.join("replay.stderr"), &out.stderr).unwrap();
    assert!(
        out.status.success(),
        "keymeter replay failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

#[derive(Default)]
pub struct SledBaseline {
    pub keys: usize,
    pub keys_per_s: f64,
    /// Growth of this process's resident memory through the write, per key.
    pub resident_per_key: f64,
    /// Growth of a fresh process that opens the tree and reads every key,
    /// per key.
    pub read_resident_per_key: f64,
    pub disk_per_key: f64,
}

/// The configuration's counter keys, encoded as keymeter encodes them.
fn counter_keys(shape: &Shape) -> Vec<Vec<u8>> {
    let mut keys = Vec::with_capacity(shape.counters());
    'all: for w in 0..shape.windows {
        for g in 0..shape.groups {
            for s in 0..shape.subjects {
                if keys.len() == shape.counters() {
                    break 'all;
                }
                let group = if shape.groups > 1 {
                    vec![Some(format!("g{g}"))]
                } else {
                    vec![]
                };
                let key = CounterKey {
                    meter: "tokens".into(),
                    subject: format!("cust-{s}"),
                    window_start_ms: shape.hour_ms - w as i64 * 3_600_000,
                    group,
                };
                keys.push(key.encode());
            }
        }
    }
    keys.sort_unstable();
    keys
}

/// The most keys the sled baseline writes: sled 0.34 holds ~5 KB a key
/// resident while it writes fresh keys, whatever its cache size, so 10M
/// keys would not fit in memory.
pub const SLED_BASELINE_KEYS_MAX: usize = 1_000_000;

/// The configuration's counter keys (the first [`SLED_BASELINE_KEYS_MAX`] in
/// key order) with 16-byte values, sorted, in one `apply_batch` on a fresh
/// sled tree with a 64 MiB cache.
pub fn sled_baseline(shape: &Shape, dir: &Path) -> SledBaseline {
    let rss = || proc_rss("/proc/self/status") as f64;
    let before = rss();
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(64 << 20)
        .open()
        .unwrap();
    let tree = db.open_tree("counters").unwrap();
    let mut keys = counter_keys(shape);
    keys.truncate(SLED_BASELINE_KEYS_MAX);
    let count = keys.len();
    let mut batch = sled::Batch::default();
    for k in keys {
        batch.insert(k, &[7u8; 16]);
    }
    let started = Instant::now();
    tree.apply_batch(batch).unwrap();
    db.flush().unwrap();
    let secs = started.elapsed().as_secs_f64();
    // Lets the allocator hand back the batch's freed pages.
    std::thread::sleep(Duration::from_secs(2));
    let resident = rss() - before;
    assert_eq!(tree.len(), count);
    drop(tree);
    drop(db);
    SledBaseline {
        keys: count,
        keys_per_s: count as f64 / secs,
        resident_per_key: resident / count as f64,
        read_resident_per_key: read_in_child(dir) / count as f64,
        disk_per_key: du(dir, None) as f64 / count as f64,
    }
}

/// Set to a sled directory, the bench only reads that tree back (see
/// [`read_child`]).
pub const READ_CHILD_VAR: &str = "KEYMETER_CARDINALITY_SLED_READ";

/// Runs this executable again to read the tree at `dir` back; returns that
/// process's resident growth. A fresh process: nothing this one freed is
/// counted.
fn read_in_child(dir: &Path) -> f64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(READ_CHILD_VAR, dir)
        .output()
        .expect("run the sled reader");
    assert!(
        out.status.success(),
        "sled reader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("sled reader printed {text:?}"))
}

/// The child's side of [`read_in_child`]: with an empty database open (as
/// keymeter's empty start has one), opens the tree with a 64 MiB cache,
/// reads every key and value, and prints the resident growth.
pub fn read_child(dir: &Path) {
    let open = |path: &Path| {
        sled::Config::new()
            .path(path)
            .cache_capacity(64 << 20)
            .open()
            .unwrap()
    };
    let empty_dir = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
    let empty = open(empty_dir.path());
    let rss = || proc_rss("/proc/self/status") as f64;
    let before = rss();
    let db = open(dir);
    let tree = db.open_tree("counters").unwrap();
    let mut bytes = 0usize;
    for kv in tree.iter() {
        let (k, v) = kv.unwrap();
        bytes += k.len() + v.len();
    }
    std::hint::black_box(bytes);
    println!("{}", rss() - before);
    drop(empty);
}
