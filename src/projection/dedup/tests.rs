use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

#[test]
fn prune_forgets_only_identities_older_than_the_horizon_and_their_tenants_shares() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DedupIndex::open(dir.path(), 100).unwrap();
    let acme = d.tenant("product:acme");
    let old = DedupKey::new("s", "old");
    let new = DedupKey::new("s", "new");
    d.claim([(old, 1_000, acme), (new, 10 * HOUR_MS, acme)], 2);
    assert_eq!(d.tenants().held(acme), 2);
    assert_eq!(d.prune(5 * HOUR_MS), 1);
    assert!(!d.contains(&old));
    assert!(d.contains(&new));
    assert_eq!(d.tenants().held(acme), 1);
    assert_eq!(d.prune(5 * HOUR_MS), 0);
}

#[test]
fn an_identity_keeps_the_hour_of_its_event_time() {
    let mut d = DedupIndex::in_memory(100);
    let t = 1_700_000_000_000;
    d.claim_one(DedupKey::new("s", "a"), t, UNATTRIBUTED);
    d.claim_one(DedupKey::new("s", "b"), -5, UNATTRIBUTED);
    let mut want = vec![
        (DedupKey::new("s", "a"), t - t % HOUR_MS),
        (DedupKey::new("s", "b"), 0),
    ];
    want.sort();
    assert_eq!(d.entries(), want);
    assert_eq!(d.hour_counts(), vec![(0, "", 1), (t - t % HOUR_MS, "", 1)]);
}

#[test]
fn snapshot_round_trips_with_tenants_and_damage_falls_back_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DedupIndex::open(dir.path(), 100).unwrap();
    let (zeta, acme) = (d.tenant("product:zeta"), d.tenant("key:0a1b"));
    let keys: Vec<_> = (0..50)
        .map(|i| {
            let tenant = [UNATTRIBUTED, zeta, acme][i % 3];
            (
                DedupKey::new("s", &i.to_string()),
                i as i64 * HOUR_MS / 7,
                tenant,
            )
        })
        .collect();
    d.claim(keys.clone(), 77);
    d.save_snapshot().unwrap();
    let mut loaded = DedupIndex::open(dir.path(), 100).unwrap();
    assert_eq!(loaded.applied(), 77);
    assert_eq!(loaded.len(), 50);
    assert!(keys.iter().all(|(k, _, _)| loaded.contains(k)));
    assert_eq!(
        (loaded.entries(), loaded.hour_counts()),
        (d.entries(), d.hour_counts())
    );
    for (name, held) in [("", 17), ("product:zeta", 17), ("key:0a1b", 16)] {
        let ix = loaded.tenant(name);
        assert_eq!(loaded.tenants().held(ix), held, "{name:?}");
    }
    let path = dir.path().join("dedup.snapshot");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let damaged = DedupIndex::open(dir.path(), 100).unwrap();
    assert_eq!((damaged.applied(), damaged.len()), (0, 0));
}

#[test]
fn a_snapshot_from_before_tenants_loads_as_unattributed() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&9u64.to_le_bytes());
    body.extend_from_slice(&2u64.to_le_bytes());
    for (id, t) in [("a", 5i64), ("b", 6)] {
        body.extend_from_slice(&DedupKey::new("s", id).0);
        body.extend_from_slice(&t.to_le_bytes());
    }
    let mut file = b"KMDEDUP1".to_vec();
    file.extend_from_slice(&body);
    file.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    std::fs::write(dir.path().join("dedup.snapshot"), file).unwrap();
    let d = DedupIndex::open(dir.path(), 100).unwrap();
    assert_eq!((d.applied(), d.len()), (9, 2));
    assert!(d.contains(&DedupKey::new("s", "b")));
    assert_eq!(d.tenants().held(UNATTRIBUTED), 2);
}

/// A snapshot whose parts are out of their order, or whose hour table
/// does not add up to its entries, is refused.
#[test]
fn a_snapshot_whose_counts_or_order_disagree_is_refused() {
    let mut d = DedupIndex::in_memory(100);
    let acme = d.tenant("product:acme");
    d.claim(
        [
            (DedupKey::new("s", "a"), 0, acme),
            (DedupKey::new("s", "b"), 0, acme),
        ],
        3,
    );
    let mut bytes = Vec::new();
    d.write_snapshot(&mut bytes).unwrap();
    let reseal = |bytes: &mut Vec<u8>| {
        let end = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[8..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    };
    // Magic, seq, tenant count, "" and "product:acme" end at 36; the hour
    // table's count, then its one row (hour, position, count at 48); the
    // entry count at 56, the entries at 64 and 84.
    assert_eq!(bytes.len(), 64 + 2 * 20 + 4);
    let mut miscounted = bytes.clone();
    miscounted[48] = 3;
    reseal(&mut miscounted);
    let mut swapped = bytes.clone();
    swapped[64..84].copy_from_slice(&bytes[84..104]);
    swapped[84..104].copy_from_slice(&bytes[64..84]);
    reseal(&mut swapped);
    for (what, bad) in [("miscounted", miscounted), ("unsorted", swapped)] {
        let err = DedupIndex::in_memory(100).read_snapshot(&bad).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}");
    }
    let mut again = DedupIndex::in_memory(100);
    again.read_snapshot(&bytes).unwrap();
    assert_eq!(again.entries(), d.entries());
}

const POOL: usize = 40;

/// Identity `n` of a small pool; 0 is the all-zero identity.
fn pool(n: usize) -> DedupKey {
    match n {
        0 => DedupKey([0; 16]),
        n => DedupKey::new("s", &n.to_string()),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Claim {
        n: usize,
        hour: u32,
        tenant: usize,
    },
    Prune {
        hour: u32,
    },
    /// Writes the snapshot and goes on with the index read back from it.
    RoundTrip,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (0..POOL, 0u32..6, 0usize..3).prop_map(|(n, hour, tenant)| Op::Claim { n, hour, tenant }),
        1 => (0u32..7).prop_map(|hour| Op::Prune { hour }),
        1 => Just(Op::RoundTrip),
    ]
}

/// What the index must hold: each identity's hour and tenant.
#[derive(Default)]
struct Model(HashMap<[u8; 16], (u32, usize)>);

impl Model {
    fn held(&self, tenant: usize) -> u64 {
        self.0.values().filter(|v| v.1 == tenant).count() as u64
    }

    fn hour_counts(&self) -> Vec<(i64, &'static str, u64)> {
        let mut out = BTreeMap::new();
        for &(hour, tenant) in self.0.values() {
            *out.entry((hour_start_ms(hour), TENANTS[tenant]))
                .or_insert(0) += 1;
        }
        out.into_iter().map(|((h, t), n)| (h, t, n)).collect()
    }
}

const TENANTS: [&str; 3] = ["", "key:k1", "product:acme"];

/// A small table (one to four segments) so that identities collide, and
/// `seed` places them.
fn small(seed: [u64; 3], segment_bits: u32) -> DedupIndex {
    DedupIndex {
        table: Table::with_seed(seed, segment_bits),
        ..DedupIndex::in_memory(usize::MAX)
    }
}

fn round_trip(d: &DedupIndex, seed: [u64; 3], segment_bits: u32) -> DedupIndex {
    let mut bytes = Vec::new();
    d.write_snapshot(&mut bytes).unwrap();
    let mut back = small(seed.map(|s| s.rotate_left(7)), segment_bits);
    back.read_snapshot(&bytes).unwrap();
    let mut again = Vec::new();
    back.write_snapshot(&mut again).unwrap();
    assert_eq!(bytes, again, "the same index, the same bytes");
    back
}

fn check(d: &mut DedupIndex, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(d.len(), model.0.len());
    for n in 0..POOL {
        prop_assert_eq!(
            d.contains(&pool(n)),
            model.0.contains_key(&pool(n).0),
            "identity {}",
            n
        );
    }
    for (t, name) in TENANTS.iter().enumerate() {
        let ix = d.tenant(name);
        prop_assert_eq!(d.tenants().held(ix), model.held(t), "tenant {}", name);
    }
    prop_assert_eq!(d.hour_counts(), model.hour_counts());
    Ok(())
}

proptest! {
    /// Claims with many repeats, prunes at any horizon and snapshot round
    /// trips, against a map, checked after every step.
    #[test]
    fn the_index_agrees_with_a_map_of_identities_through_claims_prunes_and_snapshots(
        seed in any::<[u64; 3]>(),
        segment_bits in 0u32..=2,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mut d = small(seed, segment_bits);
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Claim { n, hour, tenant } => {
                    let key = pool(n);
                    let fresh = !model.0.contains_key(&key.0);
                    if fresh {
                        model.0.insert(key.0, (hour, tenant));
                    }
                    let ix = d.tenant(TENANTS[tenant]);
                    let time_ms = hour_start_ms(hour) + (n as i64 * 7_919) % HOUR_MS;
                    prop_assert_eq!(d.claim_one(key, time_ms, ix), fresh);
                }
                Op::Prune { hour } => {
                    let before = model.0.len();
                    model.0.retain(|_, v| v.0 >= hour);
                    let removed = d.prune(hour_start_ms(hour) + 1);
                    prop_assert_eq!(removed, before - model.0.len());
                }
                Op::RoundTrip => d = round_trip(&d, seed, segment_bits),
            }
            check(&mut d, &model)?;
        }
    }
}
