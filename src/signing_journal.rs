//! The nonces of signed calls dated after the server clock, kept on disk
//! across restarts.
//!
//! After a restart, signatures dated at or before the start second are
//! refused, so a call dated at or before `now` when it was accepted can
//! never be replayed after the next start. A call dated ahead of the server
//! clock (within the tolerance) still can: its nonce is appended here and
//! fsynced before the call takes effect, and loaded into the nonce memory at
//! start. Calls from clients whose clock is not ahead cost nothing here.
//!
//! `DATA/signature-nonces`: an 8-byte magic, then fixed 44-byte entries
//! (SHA-256 of secret id and nonce, forget-after in Unix seconds, CRC32C of
//! both). An entry whose CRC fails is a torn append whose call never took
//! effect and is skipped. Entries past their forget-after are dropped when
//! the file is rewritten: at every start, and whenever it holds twice as
//! many entries as at the last rewrite.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 8] = b"KMNONCE1";
const ENTRY_BYTES: usize = 32 + 8 + 4;
/// Fewest entries a running journal holds before it is rewritten.
const REWRITE_ENTRIES_MIN: usize = if cfg!(test) { 64 } else { 1024 };

/// A remembered nonce: its digest and when it may be forgotten.
pub type Entry = ([u8; 32], i64);

pub struct NonceJournal {
    path: PathBuf,
    inner: Mutex<Appender>,
    /// How many appends are known durable. Held while syncing, so calls
    /// that arrive meanwhile share the next sync (group commit).
    synced: Mutex<u64>,
}

struct Appender {
    file: Arc<File>,
    /// Every entry in the file, for the next rewrite.
    entries: Vec<Entry>,
    rewrite_at: usize,
    /// Appends so far, durable or not.
    written: u64,
    /// A write or sync failed: what reached the file is unknown, and an
    /// append after a partial entry would be misread, so nothing more is
    /// appended until a restart rewrites the file.
    failed: bool,
}

impl NonceJournal {
    /// Opens the journal at `path` (creating it), rewritten to hold only the
    /// entries still live at `now_s`, which it also returns.
    pub fn open(path: &Path, now_s: i64) -> std::io::Result<(NonceJournal, Vec<Entry>)> {
        let live: Vec<Entry> = match read_entries(path) {
            Ok(entries) => entries.into_iter().filter(|e| e.1 >= now_s).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let file = rewrite(path, &live)?;
        let journal = NonceJournal {
            path: path.to_owned(),
            inner: Mutex::new(Appender {
                file: Arc::new(file),
                rewrite_at: (2 * live.len()).max(REWRITE_ENTRIES_MIN),
                entries: live.clone(),
                written: 0,
                failed: false,
            }),
            synced: Mutex::new(0),
        };
        Ok((journal, live))
    }

    /// Appends `entry` and returns once it is on disk. Concurrent calls
    /// share one fdatasync: whoever syncs covers every append before it.
    pub fn record(&self, entry: Entry, now_s: i64) -> std::io::Result<()> {
        let result = self.append_and_sync(entry, now_s);
        if result.is_err() {
            self.inner.lock().unwrap_or_else(|p| p.into_inner()).failed = true;
        }
        result
    }

    fn append_and_sync(&self, entry: Entry, now_s: i64) -> std::io::Result<()> {
        let (mine, file) = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if inner.failed {
                return Err(std::io::Error::other(format!(
                    "an earlier write to {} failed; restart to rewrite it",
                    self.path.display()
                )));
            }
            (&*inner.file).write_all(&encode(&entry))?;
            inner.entries.push(entry);
            inner.written += 1;
            (inner.written, inner.file.clone())
        };
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= mine {
            return Ok(());
        }
        // Everything appended up to here is in `file`: a rewrite, the only
        // thing that replaces it, happens below with `synced` held.
        let upto = self.inner.lock().unwrap_or_else(|p| p.into_inner()).written;
        file.sync_data()?;
        *synced = upto;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.entries.len() >= inner.rewrite_at {
            inner.entries.retain(|e| e.1 >= now_s);
            inner.file = Arc::new(rewrite(&self.path, &inner.entries)?);
            inner.rewrite_at = (2 * inner.entries.len()).max(REWRITE_ENTRIES_MIN);
            // The new file was synced whole.
            *synced = inner.written;
        }
        Ok(())
    }
}

fn encode((digest, forget_after_s): &Entry) -> [u8; ENTRY_BYTES] {
    let mut out = [0u8; ENTRY_BYTES];
    out[..32].copy_from_slice(digest);
    out[32..40].copy_from_slice(&forget_after_s.to_le_bytes());
    let crc = crc32c::crc32c(&out[..40]);
    out[40..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn read_entries(path: &Path) -> std::io::Result<Vec<Entry>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a signature nonce journal", path.display()),
        ));
    }
    let mut entries = Vec::new();
    for chunk in bytes[MAGIC.len()..].chunks_exact(ENTRY_BYTES) {
        let crc = u32::from_le_bytes(chunk[40..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&chunk[..40]) != crc {
            continue;
        }
        let digest: [u8; 32] = chunk[..32].try_into().expect("32 bytes");
        let forget_after_s = i64::from_le_bytes(chunk[32..40].try_into().expect("8 bytes"));
        entries.push((digest, forget_after_s));
    }
    Ok(entries)
}

/// Replaces the file by one holding `entries` (temporary file, fsync,
/// rename, directory fsync) and returns it open for appending.
fn rewrite(path: &Path, entries: &[Entry]) -> std::io::Result<File> {
    let tmp = path.with_extension("tmp");
    let mut body = Vec::with_capacity(MAGIC.len() + entries.len() * ENTRY_BYTES);
    body.extend_from_slice(MAGIC);
    for e in entries {
        body.extend_from_slice(&encode(e));
    }
    let mut file = File::create(&tmp)?;
    file.write_all(&body)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_entries_survive_a_reopen_and_expired_or_torn_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signature-nonces");
        let (journal, live) = NonceJournal::open(&path, 100).unwrap();
        assert!(live.is_empty());
        journal.record(([1; 32], 150), 100).unwrap();
        journal.record(([2; 32], 400), 100).unwrap();
        journal.record(([3; 32], 500), 100).unwrap();
        drop(journal);
        // A torn last append: its call never took effect.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();

        let (_, live) = NonceJournal::open(&path, 200).unwrap();
        assert_eq!(live, vec![([2; 32], 400)]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            MAGIC.len() + ENTRY_BYTES,
            "the expired entry is gone from the file"
        );
    }

    #[test]
    fn a_running_journal_drops_expired_entries_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signature-nonces");
        let (journal, _) = NonceJournal::open(&path, 0).unwrap();
        for i in 0..3 * REWRITE_ENTRIES_MIN as i64 {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&i.to_le_bytes());
            // Each entry lives ten seconds; one entry a second.
            journal.record((digest, i + 10), i).unwrap();
        }
        let bytes = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(
            bytes <= MAGIC.len() + (REWRITE_ENTRIES_MIN + 10) * ENTRY_BYTES,
            "{bytes} bytes"
        );
        let (_, live) = NonceJournal::open(&path, 3 * REWRITE_ENTRIES_MIN as i64).unwrap();
        assert_eq!(live.len(), 10);
    }
}
