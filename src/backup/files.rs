//! The file work of backup and restore: copying while hashing, durable
//! writes, and which files of a data directory a backup takes.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::Progress;

/// Bytes read and written per step.
const CHUNK_BYTES: usize = 1024 * 1024;

/// Copies the first `len` bytes of `src` (all of it when `None`) to a new
/// file `dst`, fsynced; returns the bytes copied and their hex SHA-256.
pub(super) fn copy_hashed(
    src: &Path,
    dst: &Path,
    len: Option<u64>,
    progress: &mut dyn Progress,
) -> anyhow::Result<(u64, String)> {
    let mut input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut output = File::options()
        .write(true)
        .create_new(true)
        .open(dst)
        .with_context(|| format!("cannot create {}", dst.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut done = 0u64;
    let limit = len.unwrap_or(u64::MAX);
    while done < limit {
        let want = (limit - done).min(CHUNK_BYTES as u64) as usize;
        let n = input
            .read(&mut buf[..want])
            .with_context(|| format!("cannot read {}", src.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", dst.display()))?;
        done += n as u64;
        progress.advance(n as u64);
    }
    if let Some(len) = len {
        anyhow::ensure!(
            done == len,
            "{} ended at {done} bytes, before the {len} expected",
            src.display()
        );
    }
    output
        .sync_all()
        .with_context(|| format!("cannot sync {}", dst.display()))?;
    Ok((done, hex::encode(hasher.finalize())))
}

/// The hex SHA-256 and size of a whole file.
pub(super) fn hash_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut input = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut done = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok((done, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
}

/// The size of the log's active segment once everything written to it so
/// far is durable: fsyncing the file (any descriptor does) makes every byte
/// below this size survive a crash of the machine, so the copy never holds
/// a batch the server could still lose.
pub(super) fn durable_len(path: &Path) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    file.sync_data()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(len)
}

/// Writes `text` to `path` through a temporary file, fsynced and renamed,
/// then fsyncs the directory: the file is whole or absent.
pub(super) fn write_durably(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {}", tmp.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(super) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// Creates `dir` if it is missing; refuses it when it holds anything.
/// Returns whether it was created.
pub(super) fn empty_target(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            anyhow::ensure!(
                entries.next().is_none(),
                "{} is not empty; give a new or empty directory",
                dir.display()
            );
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Ok(true)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Empties a target a failed restore had written to (it was empty before).
pub(super) fn clear(dir: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// The key files of a data directory, relative to it and `/`-separated:
/// everything under `keys/`, and the signed calls' nonce journal (which no
/// log replay can rebuild).
pub(super) fn key_files(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let keys = data_dir.join("keys");
    if keys.is_dir() {
        let mut stack = vec![(keys, "keys".to_owned())];
        while let Some((dir, rel)) = stack.pop() {
            for e in
                std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let kind = e.file_type()?;
                if kind.is_dir() {
                    stack.push((e.path(), format!("{rel}/{name}")));
                } else if kind.is_file() && !name.ends_with(".tmp") {
                    out.push(format!("{rel}/{name}"));
                }
            }
        }
    }
    if data_dir.join("signature-nonces").is_file() {
        out.push("signature-nonces".to_owned());
    }
    out.sort();
    Ok(out)
}

/// `rel` (`/`-separated) under `base`.
pub(super) fn under(base: &Path, rel: &str) -> PathBuf {
    rel.split('/').fold(base.to_owned(), |p, part| p.join(part))
}
