//! The identities of the dedup index and the hour of each: an open-addressing
//! hash table of packed 20-byte entries, split into segments that grow one
//! at a time.
//!
//! An entry is the 16-byte identity and the hour of its event time (hours
//! since the Unix epoch), as `[u32; 5]`: 20 bytes, aligned to 4, no control
//! bytes. The all-zero identity marks an empty slot; the one real identity
//! that is all zero (a SHA-256 prefix no one can aim at) is kept beside the
//! slots. Each segment grows by half when it would pass 85 % full, so slots
//! cost 23.5–35.3 bytes per identity between growths.
//!
//! Linear probing in Robin Hood order: a run of slots holds its entries in
//! the order of their hashes, so a probe for an absent identity stops at
//! the first entry that would come after it, and removal shifts the run
//! back instead of leaving tombstones. The home slot comes from a keyed mix
//! of the identity (identities are unkeyed SHA-256, so anyone could grind
//! ids whose identities share a prefix) reduced to the segment's capacity
//! by a multiply-shift, which is monotone in the hash: growing places a
//! segment's entries in one pass over its old slots.
//!
//! A claim's cost is the cache miss on its home slot; callers that know
//! their next identities ask for those slots early ([`Table::prefetch`]).
//!
//! Why segments: a segment is 1/64 of the table, so growing one copies 1/64
//! of the slots. A single table of 10M identities would hold its old
//! (235 MB) and new (353 MB) slots at once while the writer rehashed them.

const SEGMENT_BITS: u32 = 6;
/// The smallest segment that holds anything.
const SEGMENT_SLOTS_MIN: usize = 8;
/// A segment grows when one more entry would fill it past LOAD_NUM/LOAD_DEN.
const LOAD_NUM: usize = 17;
const LOAD_DEN: usize = 20;

/// An identity (four words) and its hour.
pub type Entry = [u32; 5];

const EMPTY: Entry = [0; 5];

fn is_empty(e: &Entry) -> bool {
    e[0] | e[1] | e[2] | e[3] == 0
}

fn entry(identity: &[u8; 16], hour: u32) -> Entry {
    let word = |i: usize| u32::from_ne_bytes(identity[i * 4..i * 4 + 4].try_into().expect("4"));
    [word(0), word(1), word(2), word(3), hour]
}

/// The identity of `e`.
pub fn identity(e: &Entry) -> [u8; 16] {
    let mut out = [0; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(&e[..4]) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// The hour of `e`.
pub fn hour(e: &Entry) -> u32 {
    e[4]
}

fn folded_multiply(x: u64, y: u64) -> u64 {
    let p = u128::from(x) * u128::from(y);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Asks for the two cache lines from `e` on: an entry may straddle a line,
/// and a probe goes on to the next slots.
#[cfg(target_arch = "x86_64")]
fn prefetch(e: &Entry) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let p = (e as *const Entry).cast::<i8>();
    // SAFETY: a prefetch only hints at a load; it reads nothing and never
    // faults, whatever the address.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_: &Entry) {}

/// Where an identity goes: the segment and the hash within it, from a mix
/// keyed by a per-process random seed.
#[derive(Clone, Copy)]
struct Keyer {
    seed: [u64; 3],
    segment_bits: u32,
}

impl Keyer {
    fn hash(&self, e: &Entry) -> u64 {
        let a = u64::from(e[0]) | u64::from(e[1]) << 32;
        let b = u64::from(e[2]) | u64::from(e[3]) << 32;
        let h = folded_multiply(a ^ self.seed[0], b ^ self.seed[1]);
        folded_multiply(h ^ self.seed[2], 0x9E37_79B9_7F4A_7C15)
    }

    /// The hash of `e` within its segment (the bits below the segment's).
    fn inner(&self, e: &Entry) -> u64 {
        self.hash(e) << self.segment_bits
    }

    /// The segment of `e` (the hash's top bits) and its hash within it.
    fn place(&self, e: &Entry) -> (usize, u64) {
        let h = self.hash(e);
        let segment = h.checked_shr(64 - self.segment_bits).unwrap_or(0);
        (segment as usize, h << self.segment_bits)
    }
}

/// Multiply-shift: `h` scaled to `0..slots`, in the order of `h`.
fn scale(h: u64, slots: usize) -> usize {
    ((u128::from(h) * slots as u128) >> 64) as usize
}

enum Probe {
    Found(usize),
    /// Absent; it belongs at this slot.
    Vacant(usize),
}

#[derive(Clone, Default)]
struct Segment {
    slots: Vec<Entry>,
    len: usize,
}

impl Segment {
    fn home(&self, keyer: &Keyer, e: &Entry) -> usize {
        scale(keyer.inner(e), self.slots.len())
    }

    /// How far `pos` is past `from`, going round the end.
    fn distance(&self, from: usize, pos: usize) -> usize {
        if pos >= from {
            pos - from
        } else {
            pos + self.slots.len() - from
        }
    }

    fn next(&self, pos: usize) -> usize {
        if pos + 1 == self.slots.len() {
            0
        } else {
            pos + 1
        }
    }

    /// Looks up `e`, whose hash within the segment is `h` (the segment has
    /// slots, one of them empty).
    fn probe(&self, keyer: &Keyer, e: &Entry, h: u64) -> Probe {
        let mut pos = scale(h, self.slots.len());
        let mut dist = 0;
        loop {
            let resident = &self.slots[pos];
            if is_empty(resident) {
                return Probe::Vacant(pos);
            }
            if resident[..4] == e[..4] {
                return Probe::Found(pos);
            }
            // A run holds its entries by hash: past one whose home is
            // after ours, or whose hash is above ours at the same home,
            // ours cannot be.
            let rh = keyer.inner(resident);
            let rdist = self.distance(scale(rh, self.slots.len()), pos);
            if rdist < dist || (rdist == dist && rh > h) {
                return Probe::Vacant(pos);
            }
            pos = self.next(pos);
            dist += 1;
        }
    }

    /// Puts `e` at `pos`, moving the rest of the run one slot on.
    fn insert_at(&mut self, pos: usize, e: Entry) {
        let mut end = pos;
        while !is_empty(&self.slots[end]) {
            end = self.next(end);
        }
        if end >= pos {
            self.slots.copy_within(pos..end, pos + 1);
        } else {
            let last = self.slots.len() - 1;
            self.slots.copy_within(0..end, 1);
            self.slots[0] = self.slots[last];
            self.slots.copy_within(pos..last, pos + 1);
        }
        self.slots[pos] = e;
        self.len += 1;
    }

    /// Claims `e` (hash `h` within the segment) unless its identity is
    /// held; true if it was new.
    fn claim(&mut self, keyer: &Keyer, e: Entry, h: u64) -> bool {
        if self.slots.is_empty() {
            self.grow(keyer);
        }
        let Probe::Vacant(mut pos) = self.probe(keyer, &e, h) else {
            return false;
        };
        if (self.len + 1) * LOAD_DEN > self.slots.len() * LOAD_NUM {
            self.grow(keyer);
            pos = match self.probe(keyer, &e, h) {
                Probe::Vacant(pos) => pos,
                Probe::Found(_) => unreachable!("absent before growing"),
            };
        }
        self.insert_at(pos, e);
        true
    }

    fn get(&self, keyer: &Keyer, e: &Entry, h: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        match self.probe(keyer, e, h) {
            Probe::Found(pos) => Some(hour(&self.slots[pos])),
            Probe::Vacant(_) => None,
        }
    }

    /// Half as many slots again. Read from after an empty slot, the old
    /// slots hold their entries by hash, except that the ones whose home is
    /// at or before that slot come last (the hashes start again): each is
    /// placed at its new home or right after the entry placed before it,
    /// counting the latter ones a whole table on. Should that run round into
    /// the first entry placed (the bounds of the growth all but rule it
    /// out), the rest are inserted one by one.
    fn grow(&mut self, keyer: &Keyer) {
        let slots = self.slots.len();
        self.regrow(keyer, (slots + slots / 2).max(SEGMENT_SLOTS_MIN), true);
    }

    /// Moves the entries to `grown` slots (more than today's), placing them
    /// in one pass while `streaming`.
    fn regrow(&mut self, keyer: &Keyer, grown: usize, mut streaming: bool) {
        let slots = self.slots.len();
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; grown]);
        self.len = 0;
        let Some(start) = old.iter().position(is_empty) else {
            return;
        };
        let mut next = 0;
        for e in old[start + 1..].iter().chain(&old[..start]) {
            if is_empty(e) {
                continue;
            }
            let h = keyer.inner(e);
            let round = if scale(h, slots) <= start { grown } else { 0 };
            let at = (scale(h, grown) + round).max(next);
            streaming &= at < 2 * grown && is_empty(&self.slots[at % grown]);
            if streaming {
                self.slots[at % grown] = *e;
                self.len += 1;
                next = at + 1;
                continue;
            }
            match self.probe(keyer, e, h) {
                Probe::Vacant(pos) => self.insert_at(pos, *e),
                Probe::Found(_) => unreachable!("an identity is held once"),
            }
        }
    }

    /// Removes the entries whose hour `keep` refuses, in one pass that
    /// also moves each kept entry back as far towards its home as the
    /// freed slots allow. Returns how many were removed.
    fn retain(&mut self, keyer: &Keyer, keep: &mut impl FnMut(u32) -> bool) -> usize {
        // Start after an empty slot: no run crosses it.
        let Some(start) = self.slots.iter().position(is_empty) else {
            return 0;
        };
        let mut removed = 0;
        // The first free slot of the current run: every slot from it up to
        // the one being looked at is free.
        let mut hole: Option<usize> = None;
        let mut pos = start;
        for _ in 0..self.slots.len() {
            pos = self.next(pos);
            let e = self.slots[pos];
            if is_empty(&e) {
                hole = None;
            } else if !keep(hour(&e)) {
                self.slots[pos] = EMPTY;
                removed += 1;
                hole = hole.or(Some(pos));
            } else if let Some(free) = hole {
                let home = self.home(keyer, &e);
                let to = match self.distance(home, pos) >= self.distance(free, pos) {
                    true => free,
                    false => home,
                };
                if to == pos {
                    hole = None;
                } else {
                    self.slots[to] = e;
                    self.slots[pos] = EMPTY;
                    hole = Some(self.next(to));
                }
            }
        }
        self.len -= removed;
        removed
    }
}

/// The identities and their hours.
#[derive(Clone)]
pub struct Table {
    keyer: Keyer,
    segments: Vec<Segment>,
    /// The hour of the all-zero identity, if it is held.
    zero: Option<u32>,
    len: usize,
}

impl Default for Table {
    fn default() -> Table {
        Table::with_seed(rand::random(), SEGMENT_BITS)
    }
}

impl Table {
    /// A table whose slots are placed by `seed`, in `2^segment_bits`
    /// segments.
    pub(super) fn with_seed(seed: [u64; 3], segment_bits: u32) -> Table {
        Table {
            keyer: Keyer { seed, segment_bits },
            segments: vec![Segment::default(); 1 << segment_bits],
            zero: None,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Room for `more` identities beyond those held, spread evenly over the
    /// segments at three quarters full, so loading a snapshot neither grows
    /// segments nor leaves them near their growth point.
    pub fn reserve(&mut self, more: usize) {
        let share = more >> self.keyer.segment_bits;
        for s in &mut self.segments {
            let wanted = (s.len + share) * 4 / 3 + SEGMENT_SLOTS_MIN;
            if wanted > s.slots.len() {
                s.regrow(&self.keyer, wanted, true);
            }
        }
    }

    /// Slots allocated, held or not.
    pub fn slots(&self) -> usize {
        self.segments.iter().map(|s| s.slots.len()).sum()
    }

    /// Bytes of slots per identity held (the table's resident size: the
    /// rest is a few kilobytes whatever it holds).
    pub fn bytes_per_identity(&self) -> f64 {
        (self.slots() * std::mem::size_of::<Entry>()) as f64 / self.len.max(1) as f64
    }

    /// Claims `identity` with its hour unless it is held; true if it was
    /// new. One probe of one segment.
    pub fn claim(&mut self, identity: &[u8; 16], hour: u32) -> bool {
        let e = entry(identity, hour);
        let claimed = if is_empty(&e) {
            let fresh = self.zero.is_none();
            self.zero.get_or_insert(hour);
            fresh
        } else {
            let (segment, h) = self.keyer.place(&e);
            self.segments[segment].claim(&self.keyer, e, h)
        };
        self.len += usize::from(claimed);
        claimed
    }

    /// Starts loading the slots a claim of `identity` probes first: a
    /// caller that knows the identities it will claim next overlaps their
    /// cache misses with its other work.
    pub fn prefetch(&self, identity: &[u8; 16]) {
        let e = entry(identity, 0);
        let (segment, h) = self.keyer.place(&e);
        let slots = &self.segments[segment].slots;
        if let Some(home) = slots.get(scale(h, slots.len())) {
            prefetch(home);
        }
    }

    /// The hour `identity` is held with, if it is.
    pub fn get(&self, identity: &[u8; 16]) -> Option<u32> {
        let e = entry(identity, 0);
        if is_empty(&e) {
            return self.zero;
        }
        let (segment, h) = self.keyer.place(&e);
        self.segments[segment].get(&self.keyer, &e, h)
    }

    /// Removes every identity whose hour `keep` refuses, in one pass over
    /// the slots. Returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) -> usize {
        let mut removed = 0;
        if self.zero.is_some_and(|h| !keep(h)) {
            self.zero = None;
            removed += 1;
        }
        for s in &mut self.segments {
            removed += s.retain(&self.keyer, &mut keep);
        }
        self.len -= removed;
        removed
    }

    /// Every entry, in no fixed order: the copy a snapshot is made from.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries_into(Vec::new())
    }

    /// [`Self::entries`], into `out` (emptied first).
    pub fn entries_into(&self, mut out: Vec<Entry>) -> Vec<Entry> {
        out.clear();
        out.reserve(self.len);
        out.extend(self.zero.map(|h| [0, 0, 0, 0, h]));
        for s in &self.segments {
            out.extend(s.slots.iter().filter(|e| !is_empty(e)));
        }
        out
    }
}

#[cfg(test)]
mod tests;
