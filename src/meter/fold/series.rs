//! The series table: (meter, subject, group) triples interned to dense ids,
//! with their serialised form and its reader.

use std::collections::hash_map::{Entry, RandomState};
use std::hash::BuildHasher;

use super::hash::seeded_hash;
use super::IdMap;

/// (meter, subject, group) ↔ dense `u32` series ids.
///
/// Each lookup serialises the parts into a reused scratch buffer, hashes it once with
/// [`seeded_hash`] and compares the candidate byte-wise against a contiguous arena:
/// one table probe and one comparison, no allocation once a series is known. A series
/// whose 64-bit hash is already taken by another goes to a side list, so a collision
/// costs a scan, never a wrong counter.
#[derive(Debug, Clone)]
pub(super) struct SeriesTable {
    seed: [u64; 2],
    /// Hash → the first series with that hash.
    by_hash: IdMap<u64, Series>,
    /// Series whose hash collided with an earlier one: (hash, series).
    collided: Vec<(u64, Series)>,
    /// Series id → series.
    entries: Vec<Series>,
    /// Serialised parts of every series, back to back.
    arena: Vec<u8>,
    scratch: Vec<u8>,
}

/// A series id and where its serialised parts sit in the arena.
#[derive(Debug, Clone, Copy)]
struct Series {
    id: u32,
    meter: u32,
    start: usize,
    len: usize,
}

impl Default for SeriesTable {
    fn default() -> Self {
        // A per-process random key, so clients cannot aim subjects at one bucket.
        let random = RandomState::new();
        SeriesTable {
            seed: [random.hash_one(0u64), random.hash_one(1u64)],
            by_hash: IdMap::default(),
            collided: Vec::new(),
            entries: Vec::new(),
            arena: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl SeriesTable {
    #[inline]
    fn holds(&self, series: &Series, serialised: &[u8]) -> bool {
        self.arena[series.start..series.start + series.len] == *serialised
    }

    #[inline]
    fn find(&self, hash: u64, serialised: &[u8]) -> Option<u32> {
        let first = self.by_hash.get(&hash)?;
        if self.holds(first, serialised) {
            return Some(first.id);
        }
        self.collided
            .iter()
            .find(|(h, series)| *h == hash && self.holds(series, serialised))
            .map(|(_, series)| series.id)
    }

    pub(super) fn get(&self, meter: u32, subject: &str, group: &[Option<String>]) -> Option<u32> {
        let mut serialised = Vec::new();
        serialise(&mut serialised, meter, subject, group);
        self.find(seeded_hash(self.seed, &serialised), &serialised)
    }

    #[inline]
    pub(super) fn intern(&mut self, meter: u32, subject: &str, group: &[Option<String>]) -> u32 {
        serialise(&mut self.scratch, meter, subject, group);
        let hash = seeded_hash(self.seed, &self.scratch);
        if let Some(id) = self.find(hash, &self.scratch) {
            return id;
        }
        let series = Series {
            id: u32::try_from(self.entries.len()).expect("fewer than 2^32 series per fold"),
            meter,
            start: self.arena.len(),
            len: self.scratch.len(),
        };
        self.arena.extend_from_slice(&self.scratch);
        self.entries.push(series);
        match self.by_hash.entry(hash) {
            Entry::Vacant(slot) => {
                slot.insert(series);
            }
            Entry::Occupied(_) => self.collided.push((hash, series)),
        }
        series.id
    }

    /// The meter of series `id`.
    pub(super) fn meter_of(&self, id: u32) -> u32 {
        self.entries[id as usize].meter
    }

    /// The parts of series `id`: (meter, subject, group).
    pub(super) fn parts(&self, id: u32) -> (u32, String, Vec<Option<String>>) {
        let series = self.entries[id as usize];
        let mut reader = SerialisedReader {
            bytes: &self.arena[series.start..series.start + series.len],
        };
        reader.varint();
        let subject = reader.string().unwrap_or_default();
        let mut group = Vec::new();
        while !reader.bytes.is_empty() {
            group.push(reader.string());
        }
        (series.meter, subject, group)
    }

    /// Appends the encoded counter key of series `id` in window
    /// `window_start_ms` to `out` (see [`crate::meter::key`]).
    pub(super) fn encode_key(&self, id: u32, meter: &str, window_start_ms: i64, out: &mut Vec<u8>) {
        let series = self.entries[id as usize];
        let mut reader = SerialisedReader {
            bytes: &self.arena[series.start..series.start + series.len],
        };
        reader.varint();
        let subject = reader.raw().unwrap_or_default();
        let mut group = Vec::new();
        while !reader.bytes.is_empty() {
            group.push(reader.raw());
        }
        crate::meter::key::encode_parts(out, meter, subject, window_start_ms, group.into_iter());
    }

    pub(super) fn clear(&mut self) {
        self.by_hash.clear();
        self.collided.clear();
        self.entries.clear();
        self.arena.clear();
    }
}

/// Serialises (meter, subject, group) into `out` with LEB128 varints: the meter id,
/// then `len + 1` and the bytes of the subject and of each `Some` group value, and a
/// single `0` for a `None` one. Unambiguous, so equal bytes mean equal parts.
#[inline]
fn serialise(out: &mut Vec<u8>, meter: u32, subject: &str, group: &[Option<String>]) {
    #[inline]
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push(value as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    out.clear();
    varint(out, u64::from(meter));
    varint(out, subject.len() as u64 + 1);
    out.extend_from_slice(subject.as_bytes());
    for value in group {
        match value {
            None => out.push(0),
            Some(text) => {
                varint(out, text.len() as u64 + 1);
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// Reads [`serialise`]'s output back (it holds only whole `&str`s).
struct SerialisedReader<'a> {
    bytes: &'a [u8],
}

impl<'a> SerialisedReader<'a> {
    fn varint(&mut self) -> u64 {
        let mut value = 0u64;
        for (i, byte) in self.bytes.iter().enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                break;
            }
        }
        value
    }

    fn string(&mut self) -> Option<String> {
        self.raw()
            .map(|text| String::from_utf8_lossy(text).into_owned())
    }

    /// The next string's bytes (`None` for a `None` group value).
    fn raw(&mut self) -> Option<&'a [u8]> {
        let len = self.varint().checked_sub(1)? as usize;
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(text)
    }
}
