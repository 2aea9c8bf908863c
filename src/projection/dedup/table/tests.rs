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
