use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::meter::{Amount, CounterKey};

const KEY: UniqueKey = UniqueKey::from_bytes([7; 16]);

fn tree() -> sled::Tree {
    let db = sled::Config::new().temporary(true).open().unwrap();
    db.open_tree("counters").unwrap()
}

fn key(meter: &str, subject: u16, window: i64) -> Vec<u8> {
    CounterKey {
        meter: meter.into(),
        subject: format!("s{subject}"),
        window_start_ms: window * 3_600_000,
        group: vec![],
    }
    .encode()
}

fn dump(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
    tree.iter()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
        .collect()
}

fn write(tree: &sled::Tree, states: Vec<Entry>) {
    let mut batch = sled::Batch::default();
    write_sorted(tree, &KEY, states, &mut batch).unwrap();
    tree.apply_batch(batch).unwrap();
}

/// (meter, subject, window, amount) changes, in batches.
fn batches() -> impl Strategy<Value = Vec<Vec<(bool, u16, i64, i64)>>> {
    let change = (any::<bool>(), 0u16..400, -3i64..3, -5i64..50);
    prop::collection::vec(prop::collection::vec(change, 0..120), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Written in any batches, blocks read back exactly like a map of
    /// states, and hold the same bytes as the final states written at once.
    #[test]
    fn blocks_read_like_a_map_and_their_bytes_depend_only_on_the_states(
        batches in batches(),
        probes in prop::collection::vec((any::<bool>(), 0u16..400, -4i64..4, 0u16..400), 20),
    ) {
        let t = tree();
        let mut model: BTreeMap<Vec<u8>, AggState> = BTreeMap::new();
        for batch in batches {
            let mut changed: BTreeMap<Vec<u8>, AggState> = BTreeMap::new();
            for (second, subject, window, amount) in batch {
                let k = key(if second { "b" } else { "a" }, subject, window);
                let delta = AggState::Sum(Amount::from_int(amount));
                let state = changed.entry(k.clone()).or_insert_with(|| {
                    model.get(&k).cloned().unwrap_or(AggState::Sum(Amount::from_int(0)))
                });
                state.merge(&delta);
            }
            model.extend(changed.clone());
            write(&t, changed.into_iter().collect());
        }
        let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let got = get_sorted(&t, &refs).unwrap();
        prop_assert_eq!(got, model.values().cloned().map(Some).collect::<Vec<_>>());
        for (second, subject, window, to_subject) in probes {
            let meter = if second { "b" } else { "a" };
            let absent = key(meter, subject, window * 10 + 5);
            prop_assert_eq!(get_sorted(&t, &[absent.as_slice()]).unwrap(), vec![None]);
            let (a, b) = (key(meter, subject, window), key(meter, to_subject, window));
            let range = a.clone().min(b.clone())..a.max(b);
            let read: Vec<Entry> = range_states(&t, range.clone()).collect::<Result<_, _>>().unwrap();
            let want: Vec<Entry> = model.range(range).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(read, want);
        }
        let whole = CounterKey::meter_prefix("a");
        let mut end = whole.clone();
        *end.last_mut().unwrap() += 1;
        let read: Vec<Entry> = range_states(&t, whole.clone()..end.clone()).collect::<Result<_, _>>().unwrap();
        let want: Vec<Entry> = model.range(whole..end).map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(read, want);
        let at_once = tree();
        write(&at_once, model.into_iter().collect());
        prop_assert_eq!(dump(&t), dump(&at_once));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Changes written as deltas (merged into stored states as blocks are
    /// rewritten) and as whole states mixed leave the same bytes as the
    /// final states written at once.
    #[test]
    fn deltas_merge_into_stored_states_like_whole_states(batches in batches()) {
        let t = tree();
        let mut model: BTreeMap<Vec<u8>, AggState> = BTreeMap::new();
        for (i, batch) in batches.into_iter().enumerate() {
            let mut deltas: BTreeMap<Vec<u8>, AggState> = BTreeMap::new();
            for (second, subject, window, amount) in batch {
                let k = key(if second { "b" } else { "a" }, subject, window);
                let delta = AggState::Sum(Amount::from_int(amount));
                deltas.entry(k).or_insert(AggState::Sum(Amount::from_int(0))).merge(&delta);
            }
            for (k, d) in &deltas {
                model.entry(k.clone()).or_insert(AggState::Sum(Amount::from_int(0))).merge(d);
            }
            let mut batch = sled::Batch::default();
            // Every third batch as whole states, the others as deltas.
            let changes = deltas.iter().map(|(k, d)| match i % 3 {
                0 => (k.clone(), Change::State(model[k].clone())),
                _ => (k.clone(), Change::Delta(d.clone())),
            });
            write_changes(&t, &KEY, changes, &mut batch).unwrap();
            t.apply_batch(batch).unwrap();
        }
        let at_once = tree();
        write(&at_once, model.into_iter().collect());
        prop_assert_eq!(dump(&t), dump(&at_once));
    }
}

#[test]
fn many_counters_are_stored_in_few_blocks_of_about_the_mean_size() {
    let t = tree();
    let states: Vec<Entry> = (0..20_000u16)
        .map(|s| (key("a", s, 0), AggState::Count(u64::from(s))))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    write(&t, states);
    let blocks = t.len();
    assert!(
        (20_000 / 100..20_000 / 40).contains(&blocks),
        "{blocks} blocks for 20,000 counters"
    );
    let bytes: usize = dump(&t).iter().map(|(k, v)| k.len() + v.len()).sum();
    // A key of its own took ~30 bytes of key and value; a block entry ~18.
    assert!(bytes < 20_000 * 20, "{bytes} bytes for 20,000 counters");
}

#[test]
fn damaged_blocks_are_errors_not_panics() {
    let entries = vec![
        (key("a", 1, 0), AggState::Count(3)),
        (key("a", 2, 0), AggState::Count(4)),
    ];
    let bytes = encode_block(&entries);
    assert_eq!(decode_block(b"a\0", &bytes).unwrap(), entries);
    for cut in 0..bytes.len() {
        assert!(decode_block(b"a\0", &bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_block(b"a\0", &longer).is_err());
}
