//! Counter blocks: how the counters tree stores aggregation states.
//!
//! sled 0.34 spends ~7 µs and a few hundred bytes of memory on every key it
//! holds, so one key per counter made a million subjects cost a gigabyte
//! and a rebuild of them minutes. The tree holds blocks instead: runs of
//! about [`BLOCK_COUNTERS`] consecutive counters (in key order), one sled
//! entry each, with keys prefix-compressed.
//!
//! Where a block starts depends on the keys alone: a counter key starts a
//! block when its keyed hash ([`UniqueKey::counter_key_hash`]) is 0 modulo
//! [`BLOCK_COUNTERS`], and a meter's counters before its first such key
//! form its head block, stored under the meter prefix `meter ‖ 0x00` (which
//! sorts before every counter key of the meter). Every other block is
//! stored under its first counter's key. So the tree's bytes are a function
//! of the set of states, not of the order or batches they were written in:
//! a rebuild writes the same bytes as the live fold. The hash is keyed so
//! that clients, who choose subjects, cannot make one block hold them all.
//!
//! A block's value: the number of counters (varint), then per counter the
//! length of the prefix its key shares with the previous key (varint), the
//! rest of the key (varint length, bytes) and its state (varint length,
//! [`AggState::encode`]).

use std::borrow::Borrow;
use std::ops::{Bound, Range};

use super::ProjectionError;
use crate::meter::{AggState, UniqueKey};

/// Counters per block, on average.
pub const BLOCK_COUNTERS: u64 = 64;

/// One counter: its encoded key and state.
pub type Entry = (Vec<u8>, AggState);

/// One counter: its encoded key and encoded state.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// The meter prefix (`meter ‖ 0x00`) of an encoded counter key, or of a
/// block key (a head block's key is the prefix itself).
fn meter_prefix(key: &[u8]) -> &[u8] {
    match key.iter().position(|&b| b == 0) {
        Some(i) => &key[..=i],
        None => key,
    }
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> ProjectionError {
    ProjectionError::Value {
        tree: "counters",
        key: hex::encode(key),
        reason: reason.into(),
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a block's fields off the front of its bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }
}

/// A block's bytes; `entries` sorted by key.
pub fn encode_block(entries: &[Entry]) -> Vec<u8> {
    let states: Vec<Vec<u8>> = entries.iter().map(|(_, state)| state.encode()).collect();
    encode_block_raw(
        entries
            .iter()
            .map(|(k, _)| k.as_slice())
            .zip(states.iter().map(Vec::as_slice)),
    )
}

/// A block's bytes from encoded states (any bytes: tests store states this
/// build no longer reads).
pub fn encode_block_raw<'a>(
    entries: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 24);
    put_varint(&mut out, entries.len() as u64);
    let mut previous: &[u8] = &[];
    for (key, state) in entries {
        let shared = previous.iter().zip(key).take_while(|(a, b)| a == b).count();
        put_varint(&mut out, shared as u64);
        put_varint(&mut out, (key.len() - shared) as u64);
        out.extend_from_slice(&key[shared..]);
        put_varint(&mut out, state.len() as u64);
        out.extend_from_slice(state);
        previous = key;
    }
    out
}

/// The counters of the block stored under `block_key`.
pub fn decode_block(block_key: &[u8], bytes: &[u8]) -> Result<Vec<Entry>, ProjectionError> {
    decode_block_raw(block_key, bytes)?
        .into_iter()
        .map(|(key, state)| match AggState::decode(&state) {
            Ok(state) => Ok((key, state)),
            Err(e) => Err(corrupt(&key, e.to_string())),
        })
        .collect()
}

/// The counters of the block stored under `block_key`, states as stored.
pub fn decode_block_raw(block_key: &[u8], bytes: &[u8]) -> Result<Vec<RawEntry>, ProjectionError> {
    let mut entries: Vec<RawEntry> = Vec::new();
    walk_block(block_key, bytes, |key, state| {
        entries.push((key.to_vec(), state.to_vec()));
        Ok(())
    })?;
    Ok(entries)
}

/// Hands each counter of a block to `visit` in key order, as borrowed key
/// and encoded state, copying nothing; checks the whole block's framing.
fn walk_block(
    block_key: &[u8],
    bytes: &[u8],
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    let truncated = || corrupt(block_key, "counter block is truncated");
    let mut r = Reader(bytes);
    let count = r.varint().ok_or_else(truncated)?;
    let mut key: Vec<u8> = Vec::with_capacity(block_key.len() + 16);
    for _ in 0..count {
        let shared = r.varint().ok_or_else(truncated)? as usize;
        let rest = r.bytes().ok_or_else(truncated)?;
        if shared > key.len() {
            return Err(corrupt(block_key, "counter block shares more than a key"));
        }
        key.truncate(shared);
        key.extend_from_slice(rest);
        let state = r.bytes().ok_or_else(truncated)?;
        visit(&key, state)?;
    }
    if !r.0.is_empty() {
        return Err(corrupt(
            block_key,
            "counter block has bytes after its counters",
        ));
    }
    Ok(())
}

/// Whether `key` of the counters tree holds a block (not the checkpoint, a
/// meter definition, a backfill mark, the format stamp or a skip count).
/// Blocks start with a slug, whose first byte is `[a-z0-9]`.
pub fn is_block_key(key: &[u8]) -> bool {
    key.first().is_some_and(|&b| b > 0x04)
}

/// The block that holds (or would hold) counter `key`: its key and its
/// bytes as stored (`None`: no block yet).
fn raw_block_at(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<(Vec<u8>, Option<sled::IVec>), ProjectionError> {
    let prefix = meter_prefix(key);
    match tree.range(prefix..=key).next_back() {
        Some(kv) => {
            let (block, bytes) = kv?;
            Ok((block.to_vec(), Some(bytes)))
        }
        None => Ok((prefix.to_vec(), None)),
    }
}

/// The key of the block after `block` of the same meter, if there is one.
fn next_block(tree: &sled::Tree, block: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
    let prefix = meter_prefix(block);
    match tree
        .range::<&[u8], _>((Bound::Excluded(block), Bound::Unbounded))
        .next()
    {
        Some(kv) => {
            let (next, _) = kv?;
            Ok(next.starts_with(prefix).then(|| next.to_vec()))
        }
        None => Ok(None),
    }
}

/// Whether `key` belongs to the block stored under `block`, whose successor
/// (of the same meter) is `end`. `key` is at or after `block`.
fn in_block(key: &[u8], block: &[u8], end: Option<&[u8]>) -> bool {
    key.starts_with(meter_prefix(block)) && end.is_none_or(|end| key < end)
}

/// The stored states of `keys` (sorted, encoded counter keys), in order;
/// each block they fall in is read once.
pub fn get_sorted(
    tree: &sled::Tree,
    keys: &[&[u8]],
) -> Result<Vec<Option<AggState>>, ProjectionError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut i = 0;
    while i < keys.len() {
        let (block, bytes) = raw_block_at(tree, keys[i])?;
        let end = next_block(tree, &block)?;
        let n = keys[i..]
            .iter()
            .take_while(|k| in_block(k, &block, end.as_deref()))
            .count();
        let wanted = &keys[i..i + n];
        let first = out.len();
        out.resize(first + n, None);
        if let Some(bytes) = bytes {
            // One pass over the block beside the wanted keys (both sorted);
            // only the states asked for are decoded.
            let mut at = 0;
            walk_block(&block, &bytes, |key, state| {
                while at < n && wanted[at] < key {
                    at += 1;
                }
                if at < n && wanted[at] == key {
                    let state = AggState::decode(state).map_err(|e| corrupt(key, e.to_string()))?;
                    out[first + at] = Some(state);
                    at += 1;
                }
                Ok(())
            })?;
        }
        i += n;
    }
    Ok(out)
}

/// Adds to `batch` the blocks that store `states` (sorted by key, each the
/// counter's whole new state), merged with the counters already stored
/// around them and split where their keys say blocks start.
///
/// A stored block is walked, not decoded: the counters it keeps are copied
/// as stored, and only keys it did not hold are hashed to learn whether
/// they start a block (a stored counter starts one exactly when it is its
/// block's key). A rewrite then costs a copy of the block's bytes, not a
/// decode, a hash and an encode of each of its counters.
pub fn write_sorted<K: AsRef<[u8]>, S: Borrow<AggState>>(
    tree: &sled::Tree,
    starts: &UniqueKey,
    states: impl IntoIterator<Item = (K, S)>,
    batch: &mut sled::Batch,
) -> Result<(), ProjectionError> {
    let changes = states.into_iter().map(|(k, s)| (k, Change::State(s)));
    write_changes(tree, starts, changes, batch)
}

/// What to make of a counter when its block is rewritten.
pub enum Change<S> {
    /// Its whole new state.
    State(S),
    /// A change to merge into its stored state (the state itself for a
    /// counter not stored yet).
    Delta(S),
}

/// [`write_sorted`] of [`Change`]s: deltas are merged into the stored
/// states in the same pass that rewrites their blocks, so each block is
/// read once.
pub fn write_changes<K: AsRef<[u8]>, S: Borrow<AggState>>(
    tree: &sled::Tree,
    starts: &UniqueKey,
    changes: impl IntoIterator<Item = (K, Change<S>)>,
    batch: &mut sled::Batch,
) -> Result<(), ProjectionError> {
    let encode = |c: &Change<S>| match c {
        Change::State(s) | Change::Delta(s) => s.borrow().encode(),
    };
    let mut changes = changes.into_iter().peekable();
    let mut pending = Vec::new();
    while let Some((first, _)) = changes.peek() {
        let (block, stored) = raw_block_at(tree, first.as_ref())?;
        let end = next_block(tree, &block)?;
        pending.clear();
        while let Some((key, _)) = changes.peek() {
            if !in_block(key.as_ref(), &block, end.as_deref()) {
                break;
            }
            pending.push(changes.next().expect("peeked"));
        }
        let mut out = BlockWriter::new(starts, block.clone(), batch);
        let mut new = pending.iter().peekable();
        if let Some(bytes) = &stored {
            walk_block(&block, bytes, |key, state| {
                while let Some((k, c)) = new.next_if(|(k, _)| k.as_ref() < key) {
                    out.push(k.as_ref(), &encode(c), None);
                }
                let start = Some(key == block.as_slice());
                match new.next_if(|(k, _)| k.as_ref() == key) {
                    Some((_, Change::Delta(delta))) => {
                        let mut merged =
                            AggState::decode(state).map_err(|e| corrupt(key, e.to_string()))?;
                        merged.merge(delta.borrow());
                        out.push(key, &merged.encode(), start);
                    }
                    Some((_, c)) => out.push(key, &encode(c), start),
                    None => out.push(key, state, start),
                }
                Ok(())
            })?;
        }
        for (k, c) in new {
            out.push(k.as_ref(), &encode(c), None);
        }
        out.finish();
    }
    Ok(())
}

/// Writes counters (in key order) as blocks into a batch, starting a new
/// block at each key that starts one; the first block is stored under the
/// key it is given. A block is encoded as its counters arrive.
struct BlockWriter<'a> {
    starts: &'a UniqueKey,
    batch: &'a mut sled::Batch,
    key: Vec<u8>,
    count: u64,
    body: Vec<u8>,
    previous: Vec<u8>,
}

impl<'a> BlockWriter<'a> {
    fn new(starts: &'a UniqueKey, key: Vec<u8>, batch: &'a mut sled::Batch) -> BlockWriter<'a> {
        BlockWriter {
            starts,
            batch,
            key,
            count: 0,
            body: Vec::with_capacity(2048),
            previous: Vec::new(),
        }
    }

    /// Adds a counter; `starts` says whether its key starts a block, when
    /// that is known without hashing it.
    fn push(&mut self, key: &[u8], state: &[u8], starts: Option<bool>) {
        let starts = starts.unwrap_or_else(|| {
            self.starts
                .counter_key_hash(key)
                .is_multiple_of(BLOCK_COUNTERS)
        });
        if starts && key != self.key.as_slice() {
            // A head block whose counters all follow a new block start
            // now belongs to that block.
            self.close();
            self.key = key.to_vec();
        }
        let shared = (self.previous.iter().zip(key))
            .take_while(|(a, b)| a == b)
            .count();
        put_varint(&mut self.body, shared as u64);
        put_varint(&mut self.body, (key.len() - shared) as u64);
        self.body.extend_from_slice(&key[shared..]);
        put_varint(&mut self.body, state.len() as u64);
        self.body.extend_from_slice(state);
        self.previous.clear();
        self.previous.extend_from_slice(key);
        self.count += 1;
    }

    /// Stores the block being written (removes it if it holds nothing).
    fn close(&mut self) {
        let key = std::mem::take(&mut self.key);
        if self.count == 0 {
            self.batch.remove(key);
        } else {
            let mut value = Vec::with_capacity(self.body.len() + 10);
            put_varint(&mut value, self.count);
            value.extend_from_slice(&self.body);
            self.batch.insert(key, value);
        }
        self.count = 0;
        self.body.clear();
        self.previous.clear();
    }

    fn finish(mut self) {
        if self.count > 0 {
            self.close();
        }
    }
}

/// The stored counters with keys in `range` (which must lie within one
/// meter), in key order. Yields at most one error.
pub fn range_states(
    tree: &sled::Tree,
    range: Range<Vec<u8>>,
) -> impl Iterator<Item = Result<Entry, ProjectionError>> + '_ {
    let prefix = meter_prefix(&range.start).to_vec();
    // The block holding the range's start may begin before it.
    let begin = match tree
        .range(prefix.as_slice()..=range.start.as_slice())
        .next_back()
    {
        Some(Ok((block, _))) => Ok(block.to_vec()),
        Some(Err(e)) => Err(e),
        None => Ok(range.start.clone()),
    };
    let (blocks, first_error) = match begin {
        Ok(begin) if begin < range.end => (Some(tree.range(begin..range.end.clone())), None),
        Ok(_) => (None, None),
        Err(e) => (None, Some(Err(e.into()))),
    };
    let blocks = blocks.into_iter().flatten().flat_map(|kv| {
        let decoded = kv
            .map_err(ProjectionError::from)
            .and_then(|(block, bytes)| decode_block(&block, &bytes));
        let (entries, error) = match decoded {
            Ok(entries) => (entries, None),
            Err(e) => (Vec::new(), Some(Err(e))),
        };
        entries.into_iter().map(Ok).chain(error)
    });
    let mut failed = false;
    first_error
        .into_iter()
        .chain(blocks)
        .filter(move |item| match item {
            Ok((key, _)) => range.contains(key),
            Err(_) => true,
        })
        .take_while(move |item| {
            let go_on = !failed;
            failed |= item.is_err();
            go_on
        })
}

#[cfg(test)]
mod tests;
