//! A simulated disk for crash tests: a [`Storage`] in memory that knows which writes a
//! completed sync covers, and models a power loss as the loss of every write it does not.
//!
//! What survives a crash ([`SimDisk::crash_now`], or the mutating operation numbered by
//! [`SimDisk::crash_at_op`]):
//! - every file's content as of its last completed `sync_data`/`sync_all`;
//! - plus, per unsynced write, each 4 KiB page of it independently with probability
//!   [`SimConfig::unsynced_page_survives`] (so later pages can reach the disk while earlier
//!   ones do not: reordered writeback), holes left by a lost page reading as zeros;
//! - of the last surviving unsynced page of each file, possibly only a prefix (a torn
//!   write);
//! - the namespace (creations, renames, removals) as of the last directory sync, plus a
//!   random prefix of the changes since (a journaling file system commits them in order).
//!
//! After the crash every operation fails (the machine is off) until [`SimDisk::restart`]
//! puts the surviving image in place. Everything is decided by the seeded generator, so a
//! seed replays the same losses. Directories are durable once created.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::storage::{Storage, StorageFile};

const PAGE: u64 = 4096;

/// Probabilities of the crash model.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub unsynced_page_survives: f64,
    pub last_page_torn: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            unsynced_page_survives: 0.5,
            last_page_torn: 0.5,
        }
    }
}

/// What the disk has seen; for tests that check their own reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Mutating operations so far (writes, truncations, syncs, creations, renames,
    /// removals, directory syncs).
    pub ops: u64,
    pub syncs: u64,
    pub crashes: u64,
    /// Unsynced bytes lost in crashes (whole pages and torn tails).
    pub bytes_lost: u64,
}

/// Cheap to clone: clones share one disk.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    cfg: SimConfig,
    rng: StdRng,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// Namespace changes since the last directory sync, in order.
    pending_names: Vec<NameChange>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    crash_at_op: Option<u64>,
    /// Syncs still to fail (see [`SimDisk::fail_next_sync`]).
    failing_syncs: u32,
    /// The surviving image of the last crash, until `restart`.
    crashed: Option<Image>,
    stats: SimStats,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Change>,
}

#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone)]
enum NameChange {
    Link(PathBuf, u64),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

#[derive(Debug)]
struct Image {
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
}

fn power_off() -> io::Error {
    io::Error::other("simulated power loss: the disk is off")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        SimDisk::with_config(seed, SimConfig::default())
    }

    pub fn with_config(seed: u64, cfg: SimConfig) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                cfg,
                rng: StdRng::seed_from_u64(seed),
                inodes: HashMap::new(),
                next_inode: 1,
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending_names: Vec::new(),
                dirs: BTreeSet::from([PathBuf::from("/")]),
                locks: BTreeSet::new(),
                crash_at_op: None,
                failing_syncs: 0,
                crashed: None,
                stats: SimStats::default(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the disk from the rest of the test.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The power goes off when the mutating operation numbered `op` (counting from the
    /// disk's creation, see [`SimStats::ops`]) is attempted; that operation fails.
    pub fn crash_at_op(&self, op: u64) {
        self.state().crash_at_op = Some(op);
    }

    /// The next sync of any file fails with an I/O error while the power stays on. The
    /// writes it should have made durable stay unsynced (as a page cache may keep them
    /// after a failed fsync): a later crash may keep or lose them, a restart without one
    /// finds them.
    pub fn fail_next_sync(&self) {
        self.state().failing_syncs += 1;
    }

    /// The power goes off now.
    pub fn crash_now(&self) {
        let mut s = self.state();
        if s.crashed.is_none() {
            s.crash();
        }
    }

    pub fn is_crashed(&self) -> bool {
        self.state().crashed.is_some()
    }

    /// Power back on: the surviving image becomes the disk; locks held before are gone.
    pub fn restart(&self) {
        let mut s = self.state();
        if let Some(image) = s.crashed.take() {
            s.inodes = image.inodes;
            s.durable_names = image.names.clone();
            s.names = image.names;
        }
        s.pending_names.clear();
        s.locks.clear();
        s.crash_at_op = None;
    }

    pub fn stats(&self) -> SimStats {
        self.state().stats
    }

    /// A new disk holding only what is durable on this one now: what any crash at this
    /// moment would keep at least. Reading it shows whether something was synced.
    pub fn durable_copy(&self) -> SimDisk {
        let s = self.state();
        let inodes = s
            .durable_names
            .values()
            .map(|ino| {
                let durable = s.inodes[ino].durable.clone();
                let inode = Inode {
                    current: durable.clone(),
                    durable,
                    pending: Vec::new(),
                };
                (*ino, inode)
            })
            .collect();
        let copy = SimDisk::with_config(0, s.cfg);
        {
            let mut c = copy.state();
            c.inodes = inodes;
            c.next_inode = s.next_inode;
            c.names = s.durable_names.clone();
            c.durable_names = s.durable_names.clone();
            c.dirs = s.dirs.clone();
        }
        copy
    }

    /// The current content of a file (synced or not), for tests that damage or inspect it.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.state();
        let ino = s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.inodes[ino].current.clone())
    }
}

impl State {
    /// Counts a mutating operation; fails it if the power is (or now goes) off.
    fn op(&mut self) -> io::Result<()> {
        if self.crashed.is_some() {
            return Err(power_off());
        }
        self.stats.ops += 1;
        if self.crash_at_op.is_some_and(|at| self.stats.ops >= at) {
            self.crash();
            return Err(power_off());
        }
        Ok(())
    }

    fn alive(&self) -> io::Result<()> {
        match self.crashed {
            Some(_) => Err(power_off()),
            None => Ok(()),
        }
    }

    fn crash(&mut self) {
        self.stats.crashes += 1;
        let mut names = self.durable_names.clone();
        let kept = self.rng.gen_range(0..=self.pending_names.len());
        for change in &self.pending_names[..kept] {
            apply_name_change(&mut names, change);
        }
        let live: BTreeSet<u64> = names.values().copied().collect();
        let mut inodes = HashMap::new();
        for ino in live {
            let inode = &self.inodes[&ino];
            let (content, lost) = surviving_content(&mut self.rng, self.cfg, inode);
            self.stats.bytes_lost += lost;
            let survived = Inode {
                current: content.clone(),
                durable: content,
                pending: Vec::new(),
            };
            inodes.insert(ino, survived);
        }
        self.crashed = Some(Image { inodes, names });
    }
}

/// The durable content plus the unsynced pages that happen to survive; and the count of
/// unsynced bytes lost.
fn surviving_content(rng: &mut StdRng, cfg: SimConfig, inode: &Inode) -> (Vec<u8>, u64) {
    let mut content = inode.durable.clone();
    let mut pages: Vec<(u64, &[u8])> = Vec::new();
    for change in &inode.pending {
        match change {
            Change::SetLen(len) => {
                if rng.gen_bool(cfg.unsynced_page_survives) {
                    content.resize(*len as usize, 0);
                }
            }
            Change::Write { offset, data } => pages.extend(split_pages(*offset, data)),
        }
    }
    let survives: Vec<bool> = pages
        .iter()
        .map(|_| rng.gen_bool(cfg.unsynced_page_survives))
        .collect();
    let last = survives.iter().rposition(|s| *s);
    let mut lost = 0u64;
    for (i, (offset, bytes)) in pages.iter().enumerate() {
        if !survives[i] {
            lost += bytes.len() as u64;
            continue;
        }
        let mut bytes = *bytes;
        if Some(i) == last && rng.gen_bool(cfg.last_page_torn) {
            let keep = rng.gen_range(0..bytes.len());
            lost += (bytes.len() - keep) as u64;
            bytes = &bytes[..keep];
        }
        write_into(&mut content, *offset, bytes);
    }
    (content, lost)
}

impl State {
    fn inode_of(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn link_new(&mut self, path: &Path) -> io::Result<u64> {
        let parent_exists = path.parent().is_some_and(|p| self.dirs.contains(p));
        if !parent_exists {
            return Err(not_found(path));
        }
        let ino = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(ino, Inode::default());
        self.names.insert(path.to_path_buf(), ino);
        self.pending_names
            .push(NameChange::Link(path.to_path_buf(), ino));
        Ok(ino)
    }
}

fn apply_name_change(names: &mut BTreeMap<PathBuf, u64>, change: &NameChange) {
    match change {
        NameChange::Link(path, ino) => {
            names.insert(path.clone(), *ino);
        }
        NameChange::Rename(from, to) => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
        NameChange::Remove(path) => {
            names.remove(path);
        }
    }
}

/// A write cut at page boundaries of the file.
fn split_pages(offset: u64, data: &[u8]) -> Vec<(u64, &[u8])> {
    let mut pages = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let pos = offset + at as u64;
        let room = (PAGE - pos % PAGE) as usize;
        let n = room.min(data.len() - at);
        pages.push((pos, &data[at..at + n]));
        at += n;
    }
    pages
}

fn write_into(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset as usize..end].copy_from_slice(data);
}

impl Change {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            Change::Write { offset, data } => write_into(content, *offset, data),
            Change::SetLen(len) => content.resize(*len as usize, 0),
        }
    }
}

impl Storage for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.alive()?;
        for d in dir.ancestors() {
            if !d.as_os_str().is_empty() {
                s.dirs.insert(d.to_path_buf());
            }
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.state();
        s.names.contains_key(path) || s.dirs.contains(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.state();
        s.alive()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let files = s.names.keys().filter(|p| p.parent() == Some(dir));
        let dirs = s.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files
            .chain(dirs)
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.state();
        s.op()?;
        let ino = match s.names.get(path).copied() {
            Some(ino) => {
                let inode = s.inodes.get_mut(&ino).expect("named inode exists");
                inode.current.clear();
                inode.pending.push(Change::SetLen(0));
                ino
            }
            None => s.link_new(path)?,
        };
        Ok(self.file(ino))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.state();
        s.op()?;
        if s.names.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        let ino = s.link_new(path)?;
        Ok(self.file(ino))
    }

    fn open(&self, path: &Path, _write: bool) -> io::Result<Box<dyn StorageFile>> {
        let s = self.state();
        s.alive()?;
        let ino = s.inode_of(path)?;
        Ok(self.file(ino))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.op()?;
        let ino = s.inode_of(from)?;
        s.names.remove(from);
        s.names.insert(to.to_path_buf(), ino);
        s.pending_names
            .push(NameChange::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.op()?;
        s.inode_of(path)?;
        s.names.remove(path);
        s.pending_names.push(NameChange::Remove(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.op()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        s.stats.syncs += 1;
        s.durable_names = s.names.clone();
        s.pending_names.clear();
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut s = self.state();
        s.alive()?;
        if !s.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(SimLock {
            disk: self.clone(),
            path: path.to_path_buf(),
        }))
    }
}

struct SimLock {
    disk: SimDisk,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.disk.state().locks.remove(&self.path);
    }
}

struct SimFile {
    disk: SimDisk,
    ino: u64,
}

impl SimDisk {
    fn file(&self, ino: u64) -> Box<dyn StorageFile> {
        Box::new(SimFile {
            disk: self.clone(),
            ino,
        })
    }
}

impl SimFile {
    fn with_inode<T>(
        &self,
        mutating: bool,
        f: impl FnOnce(&mut Inode, &mut SimStats) -> T,
    ) -> io::Result<T> {
        let mut s = self.disk.state();
        if mutating {
            s.op()?;
        } else {
            s.alive()?;
        }
        let State { inodes, stats, .. } = &mut *s;
        let inode = inodes.get_mut(&self.ino).expect("open file's inode exists");
        Ok(f(inode, stats))
    }

    fn sync(&self) -> io::Result<()> {
        {
            let mut s = self.disk.state();
            if s.failing_syncs > 0 {
                s.op()?;
                s.failing_syncs -= 1;
                return Err(io::Error::other("simulated fsync failure (EIO)"));
            }
        }
        self.with_inode(true, |inode, stats| {
            stats.syncs += 1;
            for change in inode.pending.drain(..) {
                change.apply(&mut inode.durable);
            }
            debug_assert_eq!(inode.durable, inode.current);
        })
    }
}

impl StorageFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        self.with_inode(false, |inode, _| inode.current.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with_inode(false, |inode, _| {
            let content = &inode.current;
            let start = (offset as usize).min(content.len());
            let n = buf.len().min(content.len() - start);
            buf[..n].copy_from_slice(&content[start..start + n]);
            n
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with_inode(true, |inode, _| {
            let change = Change::Write {
                offset,
                data: buf.to_vec(),
            };
            change.apply(&mut inode.current);
            inode.pending.push(change);
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with_inode(true, |inode, _| {
            let change = Change::SetLen(len);
            change.apply(&mut inode.current);
            inode.pending.push(change);
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}
