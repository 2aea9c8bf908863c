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
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    impl Table {
        /// Every entry is where a probe finds it: runs in Robin Hood order,
        /// no gap between an entry and its home.
        fn assert_probe_order(&self) {
            let mut held = usize::from(self.zero.is_some());
            for s in &self.segments {
                for (pos, e) in s.slots.iter().enumerate().filter(|(_, e)| !is_empty(e)) {
                    let (home, prev) = (
                        s.home(&self.keyer, e),
                        (pos + s.slots.len() - 1) % s.slots.len(),
                    );
                    let mut at = home;
                    while at != pos {
                        assert!(!is_empty(&s.slots[at]), "a gap before an entry");
                        at = s.next(at);
                    }
                    if home != pos {
                        let before = &s.slots[prev];
                        let d = s.distance(s.home(&self.keyer, before), prev) + 1;
                        let (hb, h) = (self.keyer.inner(before), self.keyer.inner(e));
                        let dist = s.distance(home, pos);
                        let ordered = d > dist || (d == dist && hb <= h);
                        assert!(ordered, "a run out of the order of its hashes");
                    }
                }
                held += s.len;
                assert_eq!(s.len, s.slots.iter().filter(|e| !is_empty(e)).count());
            }
            assert_eq!(held, self.len);
        }
    }

    fn id(n: u64) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&n.to_le_bytes());
        out
    }

    #[test]
    fn slots_stay_within_40_bytes_per_identity_after_every_growth() {
        let mut t = Table::default();
        let mut slots = 0;
        let mut growths = 0;
        for n in 1..=2_000_000u64 {
            assert!(t.claim(&id(n), 1));
            if t.slots() != slots {
                slots = t.slots();
                if n >= 1_000 {
                    growths += 1;
                    let bytes = t.bytes_per_identity();
                    assert!(bytes <= 40.0, "{bytes:.1} bytes per identity at {n}");
                }
            }
        }
        assert!(growths > 64 * 10, "{growths} growths");
        assert!(t.bytes_per_identity() >= 23.0);
    }

    /// Growing places entries in one pass, where they would land if
    /// inserted one by one (the slots of a set are the same whatever order
    /// it arrived in), whatever the new size; small segments, so runs wrap
    /// round the end.
    #[test]
    fn growing_in_one_pass_places_entries_where_inserting_them_would() {
        for seed in 0..3_000u64 {
            let mut t = Table::with_seed([seed, seed.rotate_left(32), !seed], 0);
            let held = 2 + seed as usize % 60;
            for n in 1..=held as u64 {
                t.claim(&id(n), n as u32);
            }
            let keyer = t.keyer;
            let mut inserted = t.segments[0].clone();
            // By half (a claim's growth) or to any larger size (a reserve).
            let slots = inserted.slots.len();
            let grown = match seed % 3 {
                0 => (slots + slots / 2).max(SEGMENT_SLOTS_MIN),
                1 => slots * 2 + seed as usize % 7,
                _ => slots * 5 + 3,
            };
            inserted.regrow(&keyer, grown, false);
            t.segments[0].regrow(&keyer, grown, true);
            assert!(t.segments[0].slots == inserted.slots, "seed {seed}");
            t.assert_probe_order();
            for n in 1..=64 {
                let want = (n <= held as u64).then_some(n as u32);
                assert_eq!(t.get(&id(n)), want, "seed {seed}, identity {n}");
            }
        }
    }

    #[test]
    fn a_reserve_holds_its_identities_without_growing_and_keeps_what_is_held() {
        let mut t = Table::with_seed([4, 5, 6], SEGMENT_BITS);
        for n in 1..=1_000 {
            t.claim(&id(n), 1);
        }
        t.reserve(200_000);
        let slots = t.slots();
        for n in 1..=201_000 {
            assert_eq!(t.claim(&id(n), 2), n > 1_000, "identity {n}");
        }
        assert_eq!(t.slots(), slots, "a segment grew within its reserve");
        let bytes = t.bytes_per_identity();
        assert!(
            (24.0..29.0).contains(&bytes),
            "{bytes:.1} bytes per identity"
        );
        t.assert_probe_order();
        assert_eq!(t.get(&id(7)), Some(1));
        assert_eq!(t.get(&id(5_000)), Some(2));
    }

    #[test]
    fn the_all_zero_identity_is_held_beside_the_slots() {
        let mut t = Table::with_seed([1, 2, 3], 0);
        assert_eq!(t.get(&[0; 16]), None);
        assert!(t.claim(&[0; 16], 7));
        assert!(!t.claim(&[0; 16], 9));
        assert_eq!((t.get(&[0; 16]), t.len(), t.slots()), (Some(7), 1, 0));
        assert_eq!(t.entries(), vec![[0, 0, 0, 0, 7]]);
        assert_eq!(t.retain(|h| h > 7), 1);
        assert_eq!((t.get(&[0; 16]), t.len()), (None, 0));
    }

    proptest! {
        /// Claims (many of them repeats) and bulk removals on a table of
        /// one or a few small segments, so runs collide and wrap round the
        /// end, against a map.
        #[test]
        fn claims_and_removals_agree_with_a_map(
            seed in any::<[u64; 3]>(),
            segment_bits in 0u32..=2,
            ops in prop::collection::vec((0u64..60, 0u32..8, prop::bool::weighted(0.05)), 1..400),
        ) {
            let mut t = Table::with_seed(seed, segment_bits);
            let mut model: HashMap<[u8; 16], u32> = HashMap::new();
            for (n, hour, prune) in ops {
                if prune {
                    let removed = t.retain(|h| h >= hour);
                    let before = model.len();
                    model.retain(|_, h| *h >= hour);
                    prop_assert_eq!(removed, before - model.len());
                } else {
                    let fresh = !model.contains_key(&id(n));
                    model.entry(id(n)).or_insert(hour);
                    prop_assert_eq!(t.claim(&id(n), hour), fresh);
                }
                t.assert_probe_order();
                prop_assert_eq!(t.len(), model.len());
                for n in 0..60 {
                    prop_assert_eq!(t.get(&id(n)), model.get(&id(n)).copied(), "identity {}", n);
                }
            }
            let mut entries: Vec<_> = t.entries().iter().map(|e| (identity(e), hour(e))).collect();
            entries.sort();
            let mut want: Vec<_> = model.into_iter().collect();
            want.sort();
            prop_assert_eq!(entries, want);
        }
    }
}
