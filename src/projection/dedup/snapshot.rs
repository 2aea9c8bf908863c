//! The dedup snapshot file: the magic, then a body, then the body's CRC32C.
//!
//! `KMDEDUP2` (written): `applied` (u64), the tenant table (u32 count, then
//! each name as u16 length + UTF-8; the unattributed tenant first, the
//! rest by name), the entry count (u64), and per entry the 16-byte
//! identity, the event time (i64) and the tenant's index in the table
//! (u32). All integers little-endian.
//!
//! `KMDEDUP1` (read only): `applied`, the entry count, and per entry the
//! identity and the event time; every identity is unattributed, as a log
//! of that age is.

use std::io::{BufWriter, Read, Write};

use super::{DedupIndex, TenantIx, UNATTRIBUTED};
use crate::event::DedupKey;

const MAGIC_V1: &[u8; 8] = b"KMDEDUP1";
const MAGIC_V2: &[u8; 8] = b"KMDEDUP2";

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned())
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
}

impl DedupIndex {
    /// Writes the snapshot atomically: temporary file, fsync, rename, fsync
    /// of the directory.
    pub fn save_snapshot(&self) -> std::io::Result<()> {
        let tmp = self.snapshot_path.with_extension("snapshot.tmp");
        let file = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        self.write_snapshot(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        std::fs::rename(&tmp, &self.snapshot_path)?;
        if let Some(dir) = self.snapshot_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The snapshot's bytes.
    pub fn write_snapshot(&self, w: &mut impl Write) -> std::io::Result<()> {
        let order = self.tenants.holding_by_name();
        let mut position = vec![0u32; order.iter().max().map_or(1, |&m| m as usize + 1)];
        for (pos, &ix) in order.iter().enumerate() {
            position[ix as usize] = pos as u32;
        }
        let mut body = Vec::with_capacity(64 + self.keys.len() * 28);
        body.extend_from_slice(&self.applied.to_le_bytes());
        body.extend_from_slice(&(order.len() as u32).to_le_bytes());
        for &ix in &order {
            let name = self.tenants.name(ix).as_bytes();
            let len = u16::try_from(name.len()).map_err(|_| bad("tenant name too long"))?;
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(name);
        }
        body.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        // Entries in the map's order: loading inserts them into a map again,
        // so sorting millions of them would only stall the writer.
        for (k, c) in &self.keys {
            body.extend_from_slice(&k.0);
            body.extend_from_slice(&c.time_ms.to_le_bytes());
            body.extend_from_slice(&position[c.tenant as usize].to_le_bytes());
        }
        w.write_all(MAGIC_V2)?;
        w.write_all(&body)?;
        w.write_all(&crc32c::crc32c(&body).to_le_bytes())
    }

    pub(super) fn load_snapshot(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        std::fs::File::open(&self.snapshot_path)?.read_to_end(&mut bytes)?;
        self.read_snapshot(&bytes)
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
        let mut tenants = vec![UNATTRIBUTED];
        let versioned = match magic {
            m if m == MAGIC_V2 => true,
            m if m == MAGIC_V1 => false,
            _ => return Err(bad("not a dedup snapshot")),
        };
        if versioned {
            tenants = self.read_tenants(&mut r)?;
        }
        let count = r.u64()? as usize;
        let entry = if versioned { 28 } else { 24 };
        if r.0.len() != count.saturating_mul(entry) {
            return Err(bad("length does not match the entry count"));
        }
        let mut claims = Vec::with_capacity(count);
        for _ in 0..count {
            let key = r.key()?;
            let time_ms = r.u64()? as i64;
            let tenant = match versioned {
                true => *tenants
                    .get(r.u32()? as usize)
                    .ok_or_else(|| bad("an entry names no tenant of the table"))?,
                false => UNATTRIBUTED,
            };
            claims.push((key, time_ms, tenant));
        }
        self.keys.reserve(count);
        self.claim(claims, applied);
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
}
