//! The counters tree's own encodings: aggregation states of every kind
//! (`src/meter/state/encoding.rs`), counter keys (`src/meter/key.rs`), the
//! mark a meter's unfinished count of the past leaves behind, and the stamp
//! naming the format and key of its unique sets.

use keymeter::log::LogDir;
use keymeter::meter::{AggState, Amount, CounterKey, DecodeError, UniqueKey};
use keymeter::projection::{Applied, OpenContext, Readers, Registry, Store};

use crate::projections::{log_records, write_log};
use crate::{unhex, Golden};

fn states() -> Vec<(AggState, &'static str)> {
    let a = |units: i128| Amount(units);
    vec![
        (AggState::Sum(a(2_500_000_000)), "010180e497d012"),
        (AggState::Sum(a(-1)), "010101"),
        (AggState::Count(300), "0102ac02"),
        (
            AggState::Avg {
                sum: a(-7_000_000_000),
                count: 2,
            },
            "0103ff97dc933402",
        ),
        (
            AggState::Min(a(i128::MIN)),
            "0104ffffffffffffffffffffffffffffffffffff03",
        ),
        (
            AggState::Max(a(i128::MAX)),
            "0105feffffffffffffffffffffffffffffffffff03",
        ),
        (
            AggState::Unique(vec![1, 200, u128::MAX]),
            "010803 00000000000000000000000000000001 000000000000000000000000000000c8
             ffffffffffffffffffffffffffffffff",
        ),
        (AggState::Unique(Vec::new()), "010800"),
        (
            AggState::Latest {
                time_ms: -1,
                value: a(5),
            },
            "0107010a",
        ),
    ]
}

#[test]
fn every_aggregation_state_keeps_its_bytes_both_ways() {
    let mut g = Golden::default();
    for (state, hex) in states() {
        let name = format!("{state:?}");
        g.hex(&name, &state.encode(), hex);
        let back = AggState::decode(&unhex(hex));
        g.check(&name, back.as_ref() == Ok(&state), || {
            format!("golden bytes decode to {back:?}")
        });
    }
    g.finish();
}

/// Unique sets of 64-bit FNV-1a hashes (`{1, 200, u64::MAX}` and `{}`), as
/// stores kept them before identities were keyed: no longer read, but
/// recognised, so that such a store is rebuilt from the log.
const FNV64_SETS: [&str; 2] = ["01060301c701b7feffffffffffffff01", "010600"];

#[test]
fn unique_sets_of_64_bit_hashes_are_recognised_not_read() {
    let mut g = Golden::default();
    for hex in FNV64_SETS {
        let decoded = AggState::decode(&unhex(hex));
        g.check(hex, decoded == Err(DecodeError::UniqueFnv64), || {
            format!("decodes to {decoded:?}")
        });
    }
    g.finish();
}

fn keys() -> Vec<(CounterKey, &'static str)> {
    let key = |window_start_ms, group: Vec<Option<&str>>| CounterKey {
        meter: "tokens".into(),
        subject: "acme".into(),
        window_start_ms,
        group: group.into_iter().map(|g| g.map(str::to_owned)).collect(),
    };
    vec![
        (
            key(1_700_000_000_000, vec![]),
            "746f6b656e730061636d65008000018bcfe56800",
        ),
        (
            key(-60_000, vec![Some("large"), None, Some("")]),
            "746f6b656e730061636d65007fffffffffff15a0000000066c617267650000000000000001",
        ),
    ]
}

#[test]
fn counter_keys_keep_their_bytes_both_ways() {
    let mut g = Golden::default();
    for (key, hex) in keys() {
        let name = format!("{key:?}");
        g.hex(&name, &key.encode(), hex);
        let back = CounterKey::decode(&unhex(hex));
        g.check(&name, back.as_ref() == Ok(&key), || {
            format!("golden bytes decode to {back:?}")
        });
    }
    g.finish();
}

/// `0x02 users` → seq 5, big-endian: the `users` meter (created at seq 5)
/// has not counted the events before it yet.
const BACKFILL_MARK: (&str, &str) = ("027573657273", "0000000000000005");
/// The same count after parts through seq 4 were written: seq 5, then 4.
const BACKFILL_MARK_PARTED: (&str, &str) = ("027573657273", "0000000000000005 0000000000000004");
/// `0x03` → counters format 3 and the id of [`KEY`]: the blocks' starts and
/// the unique sets were made under that key.
const FORMAT_STAMP: (&str, &str) = ("03", "03 82d8eed6b2c6b0f8");
const KEY: UniqueKey = UniqueKey::from_bytes([5; 16]);

#[test]
fn an_unfinished_count_of_the_past_keeps_its_mark_and_is_finished_on_open() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_log(&data);
    let log = LogDir::disk(data.join("log"));
    let records = log_records();
    let applied: Vec<Applied<'_>> = records[..5]
        .iter()
        .zip(1..)
        .map(|(record, seq)| Applied {
            seq,
            record,
            facts: None,
        })
        .collect();
    let marks = |store: &Store| -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .counters
            .scan_prefix([2u8])
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    };
    {
        // Stopped while the past of the meter created at seq 5 is counted.
        let store = Store::open(&root.path().join("live")).unwrap();
        let readers = Readers::new(None);
        let ctx = OpenContext {
            store: &store,
            log: &log,
            readers: &readers,
            unique_key: &KEY,
        };
        let mut counters = Registry::standard().open(&ctx).unwrap().remove(0);
        assert_eq!(counters.name(), "counters");
        counters.apply(&applied[..4]).unwrap();
        counters.settle().unwrap();
        counters.apply(&applied[4..]).unwrap();
        let mut g = Golden::default();
        let now = marks(&store);
        let stamp = store.counters.get(unhex(FORMAT_STAMP.0)).unwrap();
        g.check(
            "format stamp",
            stamp.as_deref() == Some(&unhex(FORMAT_STAMP.1)[..]),
            || format!("golden {FORMAT_STAMP:?}, now {:?}", stamp.map(hex::encode)),
        );
        g.check(
            "backfill mark",
            now == vec![(unhex(BACKFILL_MARK.0), unhex(BACKFILL_MARK.1))],
            || {
                format!(
                    "golden {BACKFILL_MARK:?}, now {:?}",
                    now.iter()
                        .map(|(k, v)| (hex::encode(k), hex::encode(v)))
                        .collect::<Vec<_>>()
                )
            },
        );
        g.finish();
        counters.settle().unwrap();
    }
    // An old store holding the mark: opening restarts the count, settling
    // finishes it and removes the mark. With parts already written through
    // seq 4 (all of its past), nothing is counted again.
    for (mark, name, users_counted) in [
        (BACKFILL_MARK, "old", 2),
        (BACKFILL_MARK_PARTED, "parted", 0),
    ] {
        stopped_while_counting(root.path(), &log, mark, name, users_counted);
    }
}

fn stopped_while_counting(
    root: &std::path::Path,
    log: &LogDir,
    mark: (&str, &str),
    name: &str,
    users_counted: usize,
) {
    let store = Store::open(&root.join(name)).unwrap();
    for (def, slug) in [
        (crate::records::meter(), "tokens"),
        (crate::projections::users_meter(), "users"),
    ] {
        let mut k = vec![1u8];
        k.extend_from_slice(slug.as_bytes());
        store
            .counters
            .insert(k, serde_json::to_vec(&def).unwrap())
            .unwrap();
    }
    store.counters.insert(unhex(mark.0), unhex(mark.1)).unwrap();
    store
        .counters
        .insert(unhex(FORMAT_STAMP.0), unhex(FORMAT_STAMP.1))
        .unwrap();
    store.counters.insert(b"", &5u64.to_be_bytes()).unwrap();
    let readers = Readers::new(None);
    let ctx = OpenContext {
        store: &store,
        log,
        readers: &readers,
        unique_key: &KEY,
    };
    let mut counters = Registry::standard().open(&ctx).unwrap().remove(0);
    counters.settle().unwrap();
    let marks = store.counters.scan_prefix([2u8]).count();
    assert_eq!(
        marks, 0,
        "{name}: the mark is removed once the past is counted"
    );
    let users = (store.counter_states().unwrap().iter())
        .filter(|(k, _)| k.starts_with(b"users\0"))
        .count();
    assert_eq!(
        users, users_counted,
        "{name}: the past of `users` not written yet is counted, one state per subject"
    );
}

/// A store of another format (1: no stamp, 2: a key per counter) or made
/// under another key is stale, and the engine rebuilds it; one without
/// meters holds no counter and is only stamped.
#[test]
fn a_store_of_another_format_or_key_is_stale_and_one_without_meters_is_stamped() {
    let root = tempfile::tempdir().unwrap();
    let log = LogDir::disk(root.path().join("log"));
    let counters_of = |name: &str, meters: &[(serde_json::Value, &str)], stamp: Option<&str>| {
        let store = Store::open(&root.path().join(name)).unwrap();
        for (def, slug) in meters {
            let mut k = vec![1u8];
            k.extend_from_slice(slug.as_bytes());
            store
                .counters
                .insert(k, def.to_string().as_bytes())
                .unwrap();
        }
        if let Some(stamp) = stamp {
            store.counters.insert([3u8], unhex(stamp)).unwrap();
        }
        store.counters.insert(b"", &5u64.to_be_bytes()).unwrap();
        let readers = Readers::new(None);
        let ctx = OpenContext {
            store: &store,
            log: &log,
            readers: &readers,
            unique_key: &KEY,
        };
        let counters = Registry::standard().open(&ctx).unwrap().remove(0);
        let stamp = store.counters.get([3u8]).unwrap().map(hex::encode);
        (counters.stale(), counters.applied(), stamp)
    };
    let sum = serde_json::to_value(crate::records::meter()).unwrap();
    let users = serde_json::to_value(crate::projections::users_meter()).unwrap();
    let golden_stamp = FORMAT_STAMP.1.replace(' ', "");

    let (stale, applied, stamp) = counters_of("empty", &[], None);
    assert_eq!((stale, applied), (None, 5), "continued from its checkpoint");
    assert_eq!(stamp.as_deref(), Some(golden_stamp.as_str()), "and stamped");

    let (stale, _, stamp) = counters_of("v1", &[(sum.clone(), "tokens")], None);
    assert!(stale.is_some_and(|r| r.contains("counters format 1")));
    assert_eq!(stamp, None, "a stale store is left as found");

    let v2 = Some("02 82d8eed6b2c6b0f8");
    let (stale, _, _) = counters_of("v2", &[(sum, "tokens")], v2);
    assert!(stale.is_some_and(|r| r.contains("counters format 2")));

    let other_key = Some("03 0000000000000000");
    let (stale, _, _) = counters_of("other", &[(users, "users")], other_key);
    assert!(stale.is_some_and(|r| r.contains("another key")));

    let (stale, _, _) = counters_of("current", &[], Some(FORMAT_STAMP.1));
    assert_eq!(stale, None);
}
