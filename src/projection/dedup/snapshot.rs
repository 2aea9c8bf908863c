//! The dedup snapshot file: the magic, then a body, then the body's CRC32C.
//!
//! `KMDEDUP3` (written): `applied` (u64); the tenant table (u32 count, then
//! each name as u16 length + UTF-8: the unattributed tenant, then every
//! tenant holding identities, by name); the hour table (u32 count, then per
//! row an hour (u32, hours since the Unix epoch), a tenant's position in
//! the tenant table (u32) and how many identities of that hour it holds
//! (u64), by hour then position, no count zero); the entry count (u64);
//! and per entry the 16-byte identity and its hour (u32), by identity. All
//! integers little-endian. Every part is in one fixed order, so indexes
//! holding the same identities, hours and counts at the same seq write the
//! same bytes; a reader refuses any other order.
//!
//! `KMDEDUP2` (read only): `applied`, the tenant table, the entry count,
//! and per entry the identity, the event time (i64 ms) and the tenant's
//! position (u32). `KMDEDUP1` (read only): `applied`, the entry count, and
//! per entry the identity and the event time; every identity is
//! unattributed, as a log of that age is. Their times load as their hours.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use super::table::{hour, identity, Entry};
use super::{DedupIndex, TenantIx, PREFETCH_AHEAD, UNATTRIBUTED};
use crate::event::DedupKey;
use crate::log::Seq;

const MAGIC_V1: &[u8; 8] = b"KMDEDUP1";
const MAGIC_V2: &[u8; 8] = b"KMDEDUP2";
const MAGIC_V3: &[u8; 8] = b"KMDEDUP3";
const HOUR_ROW_BYTES: usize = 16;
const ENTRY_BYTES: usize = 20;

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned())
}

/// The order of entries in the file: their identities' bytes.
fn file_order(e: &Entry) -> u128 {
    u128::from_be_bytes(identity(e))
}

/// What a snapshot holds, copied out of the index: everything a save needs,
/// so that the sort, encoding and writing can run on another thread while
/// the index goes on changing.
pub struct Snapshot {
    path: PathBuf,
    applied: Seq,
    /// Tenant names by position: the unattributed tenant, the rest by name.
    tenants: Vec<String>,
    /// `(hour, tenant position, identities)`, by hour then position.
    hours: Vec<(u32, u32, u64)>,
    /// In the table's order; sorted when written.
    entries: Vec<Entry>,
}

/// Memory for a snapshot's copy of the entries, every page of it already
/// written: faulting in fresh pages costs more than the copy, so a thread
/// other than the writer makes the room and the writer only copies.
#[derive(Default)]
pub struct SnapshotRoom(Vec<Entry>);

impl SnapshotRoom {
    /// Room for `identities` entries, touched.
    pub fn touched(identities: usize) -> SnapshotRoom {
        let mut v = Vec::with_capacity(identities);
        v.resize(identities, [u32::MAX; 5]);
        v.clear();
        SnapshotRoom(v)
    }
}

impl Snapshot {
    /// Identities it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the snapshot file atomically: temporary file, fsync, rename,
    /// fsync of the directory.
    pub fn save(self) -> std::io::Result<()> {
        let path = self.path.clone();
        let tmp = path.with_extension("snapshot.tmp");
        let file = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        self.write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The snapshot's bytes.
    pub fn write(mut self, w: &mut impl Write) -> std::io::Result<()> {
        self.entries.sort_unstable_by_key(file_order);
        w.write_all(MAGIC_V3)?;
        let mut body = CrcWriter { w, crc: 0 };
        body.write_all(&self.applied.to_le_bytes())?;
        body.write_all(&(self.tenants.len() as u32).to_le_bytes())?;
        for name in &self.tenants {
            let len = u16::try_from(name.len()).map_err(|_| bad("tenant name too long"))?;
            body.write_all(&len.to_le_bytes())?;
            body.write_all(name.as_bytes())?;
        }
        body.write_all(&(self.hours.len() as u32).to_le_bytes())?;
        for &(hour, position, n) in &self.hours {
            body.write_all(&hour.to_le_bytes())?;
            body.write_all(&position.to_le_bytes())?;
            body.write_all(&n.to_le_bytes())?;
        }
        body.write_all(&(self.entries.len() as u64).to_le_bytes())?;
        let mut buf = Vec::with_capacity(4096 * ENTRY_BYTES);
        for chunk in self.entries.chunks(4096) {
            buf.clear();
            for e in chunk {
                buf.extend_from_slice(&identity(e));
                buf.extend_from_slice(&hour(e).to_le_bytes());
            }
            body.write_all(&buf)?;
        }
        let crc = body.crc;
        w.write_all(&crc.to_le_bytes())
    }
}

/// Passes bytes on and keeps their CRC32C.
struct CrcWriter<'a, W: Write> {
    w: &'a mut W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Reads little-endian fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("snapshot ends inside a field"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> std::io::Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn key(&mut self) -> std::io::Result<DedupKey> {
        Ok(DedupKey(self.take(16)?.try_into().expect("16")))
    }

    /// Prefetches the identity of the entry [`PREFETCH_AHEAD`] entries of
    /// `size` bytes on, if there is one.
    fn prefetch_ahead(&self, index: &DedupIndex, size: usize) {
        let at = PREFETCH_AHEAD * size;
        if let Some(ahead) = self.0.get(at..at + 16) {
            index.prefetch(&DedupKey(ahead.try_into().expect("16")));
        }
    }

    /// A count of items of `size` bytes each that the rest can hold.
    fn count(&mut self, n: u64, size: usize) -> std::io::Result<usize> {
        match usize::try_from(n) {
            Ok(n) if n <= self.0.len() / size => Ok(n),
            _ => Err(bad("a count larger than the snapshot")),
        }
    }
}

impl DedupIndex {
    /// A copy of what the snapshot holds: the part of a save that needs
    /// the index (one pass over its slots); [`Snapshot::save`] does the rest.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_in(SnapshotRoom::default())
    }

    /// [`Self::snapshot`], its entries copied into `room`.
    pub fn snapshot_in(&self, room: SnapshotRoom) -> Snapshot {
        let order = self.tenants.holding_by_name();
        let mut position = vec![0u32; self.tenants.count()];
        for (pos, &ix) in order.iter().enumerate() {
            position[ix as usize] = pos as u32;
        }
        let mut hours: Vec<_> = (self.hours.iter())
            .map(|(hour, ix, n)| (hour, position[ix as usize], n))
            .collect();
        hours.sort_unstable();
        Snapshot {
            path: self.snapshot_path.clone(),
            applied: self.applied,
            tenants: (order.iter().map(|&ix| self.tenants.name(ix).to_owned())).collect(),
            hours,
            entries: self.table.entries_into(room.0),
        }
    }

    /// Saves the snapshot on this thread.
    pub fn save_snapshot(&self) -> std::io::Result<()> {
        self.snapshot().save()
    }

    /// The snapshot's bytes.
    pub fn write_snapshot(&self, w: &mut impl Write) -> std::io::Result<()> {
        self.snapshot().write(w)
    }

    /// The file is mapped, not copied into the heap: its pages leave the
    /// process with the mapping, where a buffer as large (20 bytes an
    /// identity) freed after the load would stay resident in the
    /// allocator's free lists.
    pub(super) fn load_snapshot(&mut self) -> std::io::Result<()> {
        let file = std::fs::File::open(&self.snapshot_path)?;
        if file.metadata()?.len() == 0 {
            return self.read_snapshot(&[]);
        }
        // SAFETY: the mapping is read while this function runs, and the file
        // is never changed in place: a snapshot is written to a temporary
        // file renamed over this one, which leaves the mapped file as it is.
        let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
        let _ = map.advise(memmap2::Advice::Sequential);
        self.read_snapshot(&map)
    }

    /// Loads snapshot `bytes` into this (empty) index; on an error the
    /// index must be thrown away.
    pub fn read_snapshot(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() < 8 + 16 + 4 {
            return Err(bad("not a dedup snapshot"));
        }
        let (magic, rest) = bytes.split_at(8);
        let (body, crc) = rest.split_at(rest.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(bad("checksum mismatch"));
        }
        let mut r = Reader(body);
        let applied = r.u64()?;
        match magic {
            m if m == MAGIC_V3 => self.read_v3(&mut r)?,
            m if m == MAGIC_V2 => {
                let tenants = self.read_tenants(&mut r)?;
                self.read_timed(&mut r, Some(&tenants))?;
            }
            m if m == MAGIC_V1 => self.read_timed(&mut r, None)?,
            _ => return Err(bad("not a dedup snapshot")),
        }
        self.applied = applied;
        Ok(())
    }

    /// The snapshot's tenant table, as indices of this index's tenants.
    fn read_tenants(&mut self, r: &mut Reader<'_>) -> std::io::Result<Vec<TenantIx>> {
        let n = r.u32()?;
        let mut out = Vec::new();
        for _ in 0..n {
            let len = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(len)?).map_err(|_| bad("tenant not UTF-8"))?;
            out.push(self.tenants.intern(name));
        }
        Ok(out)
    }

    /// The entries of `KMDEDUP1` (no `tenants`) and `KMDEDUP2`: identity,
    /// event time and, in v2, the tenant's position.
    fn read_timed(
        &mut self,
        r: &mut Reader<'_>,
        tenants: Option<&[TenantIx]>,
    ) -> std::io::Result<()> {
        let count = r.u64()?;
        let entry = if tenants.is_some() { 28 } else { 24 };
        if r.0.len() as u64 != count.saturating_mul(entry) {
            return Err(bad("length does not match the entry count"));
        }
        self.table.reserve(count as usize);
        while !r.0.is_empty() {
            r.prefetch_ahead(self, entry as usize);
            let key = r.key()?;
            let time_ms = r.u64()? as i64;
            let tenant = match tenants {
                Some(t) => *(t.get(r.u32()? as usize))
                    .ok_or_else(|| bad("an entry names no tenant of the table"))?,
                None => UNATTRIBUTED,
            };
            self.claim_one(key, time_ms, tenant);
        }
        Ok(())
    }

    fn read_v3(&mut self, r: &mut Reader<'_>) -> std::io::Result<()> {
        let tenants = self.read_tenants(r)?;
        let names: Vec<&str> = (tenants.iter()).map(|&ix| self.tenants.name(ix)).collect();
        if names.first() != Some(&"") || !names.windows(2).all(|w| w[0] < w[1]) {
            return Err(bad("tenants not the unattributed one, then by name"));
        }
        let rows = read_hours(r, tenants.len())?;
        let mut expected = per_hour(&rows);
        let count = r.u64()?;
        if r.0.len() as u64 != count.saturating_mul(ENTRY_BYTES as u64) {
            return Err(bad("length does not match the entry count"));
        }
        self.table.reserve(count as usize);
        let mut last = None;
        while !r.0.is_empty() {
            r.prefetch_ahead(self, ENTRY_BYTES);
            let key = r.key()?;
            let hour = r.u32()?;
            if last.is_some_and(|l| l >= key) {
                return Err(bad("entries not by identity"));
            }
            last = Some(key);
            let at = (expected.binary_search_by_key(&hour, |e| e.0)).ok();
            match at.and_then(|at| expected[at].1.checked_sub(1).map(|n| (at, n))) {
                Some((at, n)) => expected[at].1 = n,
                None => return Err(bad("more entries of an hour than its counts")),
            }
            assert!(
                self.table.claim(&key.0, hour),
                "identities in order are distinct"
            );
        }
        if expected.iter().any(|e| e.1 != 0) {
            return Err(bad("fewer entries of an hour than its counts"));
        }
        for (hour, position, n) in rows {
            let ix = tenants[position as usize];
            self.tenants.add(ix, n);
            self.hours.add(hour, ix, n);
        }
        Ok(())
    }
}

/// The hour table: rows in order, each naming a tenant of the table, no
/// count zero, and every attributed tenant holding something.
fn read_hours(r: &mut Reader<'_>, tenants: usize) -> std::io::Result<Vec<(u32, u32, u64)>> {
    let n = r.u32()?;
    let n = r.count(u64::from(n), HOUR_ROW_BYTES)?;
    let mut rows = Vec::with_capacity(n);
    let mut holding = vec![false; tenants];
    for _ in 0..n {
        let row = (r.u32()?, r.u32()?, r.u64()?);
        if row.2 == 0
            || rows
                .last()
                .is_some_and(|l: &(u32, u32, u64)| (l.0, l.1) >= (row.0, row.1))
        {
            return Err(bad("hour table not by hour and tenant, or with a zero"));
        }
        *(holding.get_mut(row.1 as usize)).ok_or_else(|| bad("an hour names no tenant"))? = true;
        rows.push(row);
    }
    if holding.iter().skip(1).any(|h| !h) {
        return Err(bad("a tenant holding no identity"));
    }
    Ok(rows)
}

/// Identities of each hour the hour table expects, by hour.
fn per_hour(rows: &[(u32, u32, u64)]) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = Vec::new();
    for &(hour, _, n) in rows {
        match out.last_mut() {
            Some(last) if last.0 == hour => last.1 = last.1.saturating_add(n),
            _ => out.push((hour, n)),
        }
    }
    out
}
