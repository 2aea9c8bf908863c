//! How the billing projection lays out its one sled tree, and the reads the
//! API makes of it. One tree, so that leaves, statements and the checkpoint
//! change in one atomic batch. Keys start with a kind byte:
//!
//! - `L` period ‖ subject ‖ seq (u64 BE) → [`StoredEvent`]: one counted
//!   event, with a leaf for each billed meter (SUM and COUNT meters) that
//!   read it: one key per event, not per leaf, since every sled key costs;
//! - `S` position (u64 BE) → a statement version's canonical bytes, in the
//!   order versions were issued (the billing jobs' feed);
//! - `I` period ‖ subject → the positions of its versions (postcard); a
//!   statement id names its period and subject, so it needs no index;
//! - `R` period ‖ subject → (): a closed period got a late event;
//! - `F` period ‖ subject → why its statement could not be built;
//! - `G` meter slug → its definition (JSON), as of the checkpoint;
//! - `M` + name → settings and the close state.
//!
//! `period` is the period's start in ms as a u64 with the sign bit flipped
//! (so keys sort by time), `subject` its length (u16 BE) and bytes.

use serde::{Deserialize, Serialize};

use crate::billing::statement::{Leaf, LineKey};

pub const LEAF: u8 = b'L';
pub const STATEMENT: u8 = b'S';
pub const INDEX: u8 = b'I';
pub const DIRTY: u8 = b'R';
pub const FAILED: u8 = b'F';
pub const METER: u8 = b'G';
pub const META_SETTINGS: &[u8] = b"Msettings";
pub const META_CLOSED: &[u8] = b"Mclosed";

/// A counted event as stored: what its leaves share, and one entry per
/// billed meter that read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub identity: [u8; 16],
    pub time_ms: i64,
    pub leaves: Vec<StoredLeaf>,
}

/// One meter's leaf of a [`StoredEvent`]: its line and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLeaf {
    pub meter: String,
    pub aggregation: String,
    pub group: Vec<(String, Option<String>)>,
    pub value: i128,
}

/// The last close the projection applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastClose {
    pub seq: u64,
    pub at_ms: i64,
    pub closed_before_ms: i64,
}

pub fn period_bytes(start_ms: i64) -> [u8; 8] {
    ((start_ms as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn period_from(bytes: &[u8]) -> i64 {
    (u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

/// `kind ‖ period ‖ subject`.
pub fn subject_key(kind: u8, start_ms: i64, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + subject.len());
    k.push(kind);
    k.extend_from_slice(&period_bytes(start_ms));
    k.extend_from_slice(&(subject.len().min(u16::MAX as usize) as u16).to_be_bytes());
    k.extend_from_slice(subject.as_bytes());
    k
}

/// Period start and subject of a key made by [`subject_key`] (or a leaf key,
/// which starts with one), and the rest of the key.
pub fn split_subject_key(key: &[u8]) -> Option<(i64, &str, &[u8])> {
    let period = period_from(key.get(1..9)?);
    let len = u16::from_be_bytes(key.get(9..11)?.try_into().ok()?) as usize;
    let subject = std::str::from_utf8(key.get(11..11 + len)?).ok()?;
    Some((period, subject, &key[11 + len..]))
}

pub fn leaf_key(start_ms: i64, subject: &str, seq: u64) -> Vec<u8> {
    let mut k = subject_key(LEAF, start_ms, subject);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn statement_key(position: u64) -> [u8; 9] {
    let mut k = [STATEMENT; 9];
    k[1..].copy_from_slice(&position.to_be_bytes());
    k
}

pub fn prefixed(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

/// A leaf read back, with its line.
pub struct ReadLeaf {
    pub leaf: Leaf,
    pub line: LineKey,
}

/// The leaves of `subject` in the period starting at `start_ms` with a seq
/// below `before_seq`, in log order.
pub fn read_leaves(
    tree: &sled::Tree,
    start_ms: i64,
    subject: &str,
    before_seq: u64,
) -> Result<Vec<ReadLeaf>, sled::Error> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(subject_key(LEAF, start_ms, subject)) {
        let (k, v) = kv?;
        decode_leaves(&k, &v, before_seq, &mut out);
    }
    Ok(out)
}

/// Appends the leaves of one stored event, if its seq is below `before_seq`.
pub fn decode_leaves(key: &[u8], value: &[u8], before_seq: u64, out: &mut Vec<ReadLeaf>) {
    let Some((_, _, rest)) = split_subject_key(key) else {
        return;
    };
    let Some(seq) = rest
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    else {
        return;
    };
    let Ok(event) = postcard::from_bytes::<StoredEvent>(value) else {
        return;
    };
    if seq >= before_seq {
        return;
    }
    for l in event.leaves {
        out.push(ReadLeaf {
            leaf: Leaf {
                seq,
                identity: event.identity,
                time_ms: event.time_ms,
                value: l.value,
            },
            line: LineKey {
                meter: l.meter,
                aggregation: aggregation_name(&l.aggregation),
                group: l.group.into_iter().collect(),
            },
        });
    }
}

fn aggregation_name(name: &str) -> &'static str {
    match name {
        "COUNT" => "COUNT",
        _ => "SUM",
    }
}

/// The positions of every version of a statement, oldest first.
pub fn versions(tree: &sled::Tree, start_ms: i64, subject: &str) -> Result<Vec<u64>, sled::Error> {
    Ok(tree
        .get(subject_key(INDEX, start_ms, subject))?
        .and_then(|v| postcard::from_bytes(&v).ok())
        .unwrap_or_default())
}

/// What the writer starts from: the settings and last close the tree
/// holds, and whether it holds leaves.
pub struct StoredState {
    pub settings: Option<(crate::billing::CycleKind, String)>,
    pub last_close: Option<LastClose>,
    pub has_leaves: bool,
    /// A closed period got a late event that no close restated yet.
    pub has_dirty: bool,
    /// The start of the first period with leaves that is not closed.
    pub unclosed_from_ms: Option<i64>,
}

pub fn stored_state(tree: &sled::Tree) -> Result<StoredState, sled::Error> {
    Ok(StoredState {
        settings: tree
            .get(META_SETTINGS)?
            .and_then(|v| postcard::from_bytes(&v).ok()),
        last_close: tree
            .get(META_CLOSED)?
            .and_then(|v| postcard::from_bytes(&v).ok()),
        has_leaves: tree.scan_prefix([LEAF]).next().is_some(),
        has_dirty: tree.scan_prefix([DIRTY]).next().is_some(),
        unclosed_from_ms: None,
    })
    .and_then(|mut state| {
        let from = state.last_close.map_or(i64::MIN, |c| c.closed_before_ms);
        let start = prefixed(LEAF, &period_bytes(from));
        if let Some(kv) = tree.range(start..[LEAF + 1].to_vec()).next() {
            state.unclosed_from_ms = Some(period_from(&kv?.0[1..9]));
        }
        Ok(state)
    })
}
