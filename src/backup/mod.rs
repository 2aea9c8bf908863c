//! `keymeter backup` and `keymeter restore`: a consistent copy of a data
//! directory while the server runs, and its checked return.
//!
//! A backup holds what cannot be rebuilt: the log's segments and the key
//! files (`keys/`, the wrapped keyring; `signature-nonces`), and a
//! [`manifest::Manifest`] with each file's size and SHA-256 and the log
//! position the copy ends at. The projections (`state/`) are left out: a
//! start on the restored directory rebuilds them from the log. The master
//! key is not in the data directory and never in a backup; it is backed up
//! separately.
//!
//! Why the copy is consistent while the server appends: sealed segments
//! are never written again, so they are copied as they are. The active
//! segment is fsynced (from the backup's own descriptor) after its size is
//! read, so every byte below that size is durable, then copied up to that
//! size; the copy is then checked as [`crate::log::verify`] checks a log,
//! and whatever follows the last complete batch in it (a batch the server
//! was still writing) is cut. The copy therefore ends at a batch boundary
//! the live log also holds, durably, and its manifest names that position:
//! head seq and chain hash. Segments created after the listing are not
//! taken: the backup is the log as of the listing.
//!
//! Restore refuses a target that is not empty, copies every listed file
//! while hashing it and refuses the first whose size or hash differs (by
//! name), then verifies the restored log's chain and that it ends where the
//! manifest says. On any refusal the target is left empty.

mod files;
pub mod manifest;

use std::path::Path;

use anyhow::Context;

pub use manifest::{FileEntry, LogPosition, Manifest, ManifestError, MANIFEST_NAME};

use files::{copy_hashed, durable_len, hash_file, under};

/// Told how far a backup or restore has come, in bytes.
pub trait Progress {
    /// The work ahead: `total` bytes.
    fn start(&mut self, total: u64) {
        let _ = total;
    }
    fn advance(&mut self, bytes: u64) {
        let _ = bytes;
    }
}

/// Progress nobody watches.
pub struct Quiet;
impl Progress for Quiet {}

/// One file to copy: where it is, where it goes (relative), how much of it.
struct Planned {
    rel: String,
    len: Option<u64>,
}

/// Copies the log and key files of `data_dir` into `out` (new or empty)
/// and writes the manifest; see the module documentation.
pub fn backup(
    data_dir: &Path,
    out: &Path,
    progress: &mut dyn Progress,
) -> anyhow::Result<Manifest> {
    let log_dir = data_dir.join("log");
    anyhow::ensure!(
        log_dir.is_dir(),
        "{} holds no log (no {}): is it a keymeter data directory?",
        data_dir.display(),
        log_dir.display()
    );
    let created = files::empty_target(out)?;
    let result = take_backup(data_dir, out, progress);
    if result.is_err() {
        files::clear(out, created);
    }
    result
}

fn take_backup(
    data_dir: &Path,
    out: &Path,
    progress: &mut dyn Progress,
) -> anyhow::Result<Manifest> {
    let plan = plan_backup(data_dir)?;
    std::fs::create_dir_all(out.join("log"))?;
    let total = plan.iter().map(|p| p.len.unwrap_or(0)).sum();
    progress.start(total);
    let mut entries = Vec::with_capacity(plan.len());
    for p in &plan {
        let (bytes, sha256) = copy_hashed(
            &under(data_dir, &p.rel),
            &under(out, &p.rel),
            p.len,
            progress,
        )?;
        entries.push(FileEntry {
            path: p.rel.clone(),
            bytes,
            sha256,
        });
    }
    let log = cut_to_last_batch(&out.join("log"), &mut entries)?;
    for dir in ["log", "keys"] {
        if out.join(dir).is_dir() {
            files::sync_dir(&out.join(dir))?;
        }
    }
    let manifest = Manifest {
        format: manifest::FORMAT.to_owned(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        log,
        files: entries,
    };
    files::write_durably(&out.join(MANIFEST_NAME), &manifest.to_json())?;
    Ok(manifest)
}

/// What to copy: every segment (the last one only up to its durable size),
/// then the key files (whole, as they are now).
fn plan_backup(data_dir: &Path) -> anyhow::Result<Vec<Planned>> {
    let segments = crate::log::segment_files(&data_dir.join("log"))?;
    let mut plan = Vec::new();
    for (i, (_, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let len = if last {
            durable_len(path)?
        } else {
            std::fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len()
        };
        let name = path.file_name().expect("a segment has a name");
        plan.push(Planned {
            rel: format!("log/{}", name.to_string_lossy()),
            len: Some(len),
        });
    }
    for rel in files::key_files(data_dir)? {
        let len = std::fs::metadata(under(data_dir, &rel))?.len();
        plan.push(Planned {
            rel,
            len: Some(len),
        });
    }
    Ok(plan)
}

/// Verifies the copied log, cuts what follows its last complete batch
/// (updating that file's entry), and returns where it ends.
fn cut_to_last_batch(log_dir: &Path, entries: &mut [FileEntry]) -> anyhow::Result<LogPosition> {
    let mut report = crate::log::verify(log_dir)
        .with_context(|| format!("the copied log in {} does not verify", log_dir.display()))?;
    if let Some(torn) = &report.torn_tail {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&torn.segment)
            .with_context(|| format!("cannot open {}", torn.segment.display()))?;
        file.set_len(torn.offset)?;
        file.sync_all()?;
        let name = torn.segment.file_name().expect("a segment has a name");
        let rel = format!("log/{}", name.to_string_lossy());
        let (bytes, sha256) = hash_file(&torn.segment)?;
        if let Some(e) = entries.iter_mut().find(|e| e.path == rel) {
            e.bytes = bytes;
            e.sha256 = sha256;
        }
        report = crate::log::verify(log_dir)?;
        anyhow::ensure!(
            report.torn_tail.is_none(),
            "the copied log still has a torn tail"
        );
    }
    Ok(LogPosition {
        head_seq: report.head_seq,
        head_hash: hex::encode(report.head_hash),
        records: report.records,
        segments: report.segments,
    })
}

/// Restores the backup in `from` into `target` (new or empty); see the
/// module documentation.
pub fn restore(
    from: &Path,
    target: &Path,
    progress: &mut dyn Progress,
) -> anyhow::Result<Manifest> {
    let path = from.join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let manifest = Manifest::parse(&text)?;
    let created = files::empty_target(target)?;
    let result = restore_files(from, target, &manifest, progress);
    if result.is_err() {
        files::clear(target, created);
    }
    result.map(|()| manifest)
}

fn restore_files(
    from: &Path,
    target: &Path,
    manifest: &Manifest,
    progress: &mut dyn Progress,
) -> anyhow::Result<()> {
    progress.start(manifest.total_bytes());
    std::fs::create_dir_all(target.join("log"))?;
    for entry in &manifest.files {
        let src = under(from, &entry.path);
        anyhow::ensure!(
            src.is_file(),
            "{} is missing from the backup ({})",
            entry.path,
            from.display()
        );
        let (bytes, sha256) = copy_hashed(&src, &under(target, &entry.path), None, progress)?;
        entry.check(bytes, &sha256)?;
    }
    let log_dir = target.join("log");
    let report = crate::log::verify(&log_dir).context("the restored log does not verify")?;
    let want = &manifest.log;
    anyhow::ensure!(
        report.torn_tail.is_none()
            && report.head_seq == want.head_seq
            && hex::encode(report.head_hash) == want.head_hash,
        "the restored log ends at seq {} (hash {}), but the manifest says seq {} (hash {})",
        report.head_seq,
        hex::encode(report.head_hash),
        want.head_seq,
        want.head_hash
    );
    for dir in ["log", "keys", ""] {
        let d = target.join(dir);
        if d.is_dir() {
            files::sync_dir(&d)?;
        }
    }
    Ok(())
}
