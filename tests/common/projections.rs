//! The projection stores of a stopped data directory, read whole: every sled
//! tree (checkpoints included) and the dedup snapshot, so that two data
//! directories can be compared byte for byte; and the subset of a data
//! directory that is the truth (log, keyring, master key), copied into a
//! fresh one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keymeter::projection::{KeyValue, Store};

/// The dedup snapshot file (`state/dedup.snapshot`), by its documented
/// layout: `"KMDEDUP3" | applied u64 | tenant table: u32 count, count ×
/// (u16 length | name) | hour table: u32 count, count × (hour u32 | tenant
/// position u32 | identities u64) | entry count u64 | count × (identity
/// [u8; 16] | hour u32), by identity | crc32c u32 over applied..entries`,
/// integers little-endian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupSnapshot {
    /// Magic, seq, tenant table and hour table.
    pub header: Vec<u8>,
    /// Entries (20 bytes each: identity, hour), in the file's order.
    pub entries: Vec<[u8; 20]>,
}

impl DedupSnapshot {
    pub fn parse(bytes: &[u8]) -> DedupSnapshot {
        assert!(bytes.len() >= 32, "dedup snapshot of {} bytes", bytes.len());
        assert_eq!(&bytes[..8], b"KMDEDUP3", "dedup snapshot magic");
        let body = &bytes[8..bytes.len() - 4];
        let crc = &bytes[bytes.len() - 4..];
        assert_eq!(
            crc32c::crc32c(body).to_le_bytes(),
            crc,
            "dedup snapshot checksum"
        );
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().unwrap());
        let mut at = 12;
        for _ in 0..u32_at(8) {
            at += 2 + u16::from_le_bytes(body[at..at + 2].try_into().unwrap()) as usize;
        }
        at += 4 + 16 * u32_at(at) as usize;
        let count = u64::from_le_bytes(body[at..at + 8].try_into().unwrap()) as usize;
        let header = bytes[..8 + at].to_vec();
        at += 8;
        assert_eq!(body.len() - at, count * 20, "dedup snapshot entry count");
        let entries: Vec<[u8; 20]> = body[at..]
            .chunks_exact(20)
            .map(|e| e.try_into().unwrap())
            .collect();
        assert!(
            entries.windows(2).all(|w| w[0][..16] < w[1][..16]),
            "dedup snapshot entries by identity"
        );
        DedupSnapshot { header, entries }
    }

    /// A valid snapshot file (right magic and checksum) holding `self`,
    /// its entries put in order.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = self.entries.clone();
        entries.sort();
        let mut out = self.header.clone();
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for e in &entries {
            out.extend_from_slice(e);
        }
        let crc = crc32c::crc32c(&out[8..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Everything the projections of a stopped data directory hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDump {
    /// Tree name → every key and value, in key order (checkpoints included).
    pub trees: BTreeMap<String, Vec<KeyValue>>,
    pub dedup: Option<DedupSnapshot>,
}

pub fn dedup_snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("dedup.snapshot")
}

/// Opens the projection store of a stopped data directory. sled 0.34
/// releases its file lock when its flusher thread notices the last handle
/// is gone, shortly after this process dropped its previous `Store`; the
/// open waits for that (seconds at most) instead of failing.
pub fn open_store(data_dir: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(&data_dir.join("state")) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// Reads every sled tree and the dedup snapshot of `data_dir` (which no
/// process may have open).
pub fn dump_state(data_dir: &Path) -> StateDump {
    let store = open_store(data_dir);
    let mut trees = BTreeMap::new();
    for name in store.db.tree_names() {
        let tree = store.db.open_tree(&name).unwrap();
        let kvs = tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        trees.insert(String::from_utf8_lossy(&name).into_owned(), kvs);
    }
    let dedup = match std::fs::read(dedup_snapshot_path(data_dir)) {
        Ok(bytes) => Some(DedupSnapshot::parse(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("dedup snapshot: {e}"),
    };
    StateDump { trees, dedup }
}

/// Fails naming the first tree and key where `got` differs from `want`.
pub fn assert_same_state(want: &StateDump, got: &StateDump, context: &str) {
    let names = |d: &StateDump| d.trees.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(want), names(got), "{context}: tree names differ");
    for (name, want_kvs) in &want.trees {
        let got_kvs = &got.trees[name];
        let got_map: BTreeMap<_, _> = got_kvs.iter().cloned().collect();
        for (k, v) in want_kvs {
            match got_map.get(k) {
                None => panic!("{context}: tree {name} lacks key {}", hex::encode(k)),
                Some(g) => assert!(
                    g == v,
                    "{context}: tree {name} key {} holds {} instead of {}",
                    hex::encode(k),
                    readable(g),
                    readable(v)
                ),
            }
        }
        assert_eq!(
            want_kvs.len(),
            got_kvs.len(),
            "{context}: tree {name} has extra keys"
        );
    }
    match (&want.dedup, &got.dedup) {
        (Some(w), Some(g)) => {
            assert_eq!(
                w.header, g.header,
                "{context}: dedup snapshot seq and tenants"
            );
            assert!(
                w.entries == g.entries,
                "{context}: dedup snapshot holds {} identities, {} of them not in the live one",
                g.entries.len(),
                g.entries.iter().filter(|e| !w.entries.contains(e)).count()
            );
        }
        (w, g) => panic!(
            "{context}: dedup snapshot present: {} expected, {} found",
            w.is_some(),
            g.is_some()
        ),
    }
}

/// A stored value as text when it is text (JSON documents), hex otherwise.
fn readable(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => hex::encode(v),
    }
}

/// The master key file `serve` generates beside a data directory.
pub fn master_key_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap().to_owned();
    name.push(".master-key");
    data_dir.with_file_name(name)
}

/// Copies the entries `parts` of `from` (files or directories, e.g. `log`,
/// `keys`) into the data directory `to`, and the master key file beside it.
pub fn copy_data_subset(from: &Path, to: &Path, parts: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for part in parts {
        copy_tree(&from.join(part), &to.join(part));
    }
    std::fs::copy(master_key_path(from), master_key_path(to)).unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}
