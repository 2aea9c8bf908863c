//! Rebuild: `keymeter replay` drops every projection and rebuilds it from the
//! log; the counters come out byte-identical to the live ones. UNIQUE_COUNT
//! sets are made under the data directory's key, so they survive a restart
//! and a replay; a counters store whose sets were made another way (64-bit
//! hashes, another key) is rebuilt from the log when the server starts.

mod common;

use common::*;
use keymeter::crypto::{open_keys, MasterKey};
use keymeter::meter::{AggState, UniqueKey};
use keymeter::projection::{blocks, Store};
use serde_json::json;

fn dump(dir: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let store = Store::open(&dir.join("state")).unwrap();
    store.counters_dump().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_counters_byte_identical_to_the_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Signed checkpoints between the batches: replay must step over them.
    let server = Server::start_with(dir.path(), &["--audit-checkpoint-records", "100"]);
    for (slug, agg, value) in [
        ("sum", "SUM", Some("$.n")),
        ("count", "COUNT", None),
        ("avg", "AVG", Some("$.n")),
        ("uniq", "UNIQUE_COUNT", Some("$.user")),
        ("latest", "LATEST", Some("$.n")),
    ] {
        let mut m = json!({"slug": slug, "eventType": "e", "aggregation": agg, "groupBy": {"region": "$.region"}});
        if let Some(v) = value {
            m["valueProperty"] = json!(v);
        }
        server.create_meter(m).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    for b in 0..20 {
        let events: Vec<_> = (0..50)
            .map(|i| {
                let t = rfc3339_ms(now - (b * 50 + i) * 37_013);
                event(
                    &format!("{b}-{i}"),
                    "e",
                    &format!("cust-{}", i % 7),
                    &t,
                    json!({"n": i as f64 / 4.0, "user": format!("u{}", i % 11), "region": if i % 2 == 0 { "eu" } else { "us" }}),
                )
            })
            .collect();
        assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    }
    // A meter defined after the events, and one deleted: both must replay the same.
    server
        .create_meter(
            json!({"slug": "late", "eventType": "e", "aggregation": "MAX", "valueProperty": "$.n"}),
        )
        .await;
    let r = server.delete(ADMIN_KEY, "/api/v1/meters/avg").await;
    assert_eq!(r.status(), 204);
    let before = server
        .query("sum", "windowSize=HOUR&groupBy=subject&groupBy=region")
        .await;
    server.stop();

    let live = dump(dir.path());
    let counters = Store::open(&dir.path().join("state"))
        .unwrap()
        .counter_states()
        .unwrap()
        .len();
    assert!(counters > 100, "expected many counters, got {counters}");
    let out = replay(dir.path());
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt all projections"));
    let rebuilt = dump(dir.path());
    assert_eq!(live.len(), rebuilt.len());
    assert!(
        live == rebuilt,
        "replayed counters differ from the live ones"
    );

    let server = Server::start(dir.path());
    let after = server
        .query("sum", "windowSize=HOUR&groupBy=subject&groupBy=region")
        .await;
    assert_eq!(before, after);
    let meters = server.get_json(ADMIN_KEY, "/api/v1/meters").await;
    let slugs: Vec<&str> = meters
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, vec!["count", "late", "latest", "sum", "uniq"]);
}

/// `MhsivmhiSIF` and `0a7B_Bz1ObN` share their 64-bit FNV-1a hash
/// (0xe44da65f01a32948; found with a Pollard-rho search over 11-character
/// strings), which UNIQUE_COUNT once counted: they counted as one value.
const FNV64_COLLISION: [&str; 2] = ["MhsivmhiSIF", "0a7B_Bz1ObN"];

/// The distinct users of `subject` in `users` over all time.
async fn distinct_users(server: &Server, subject: &str) -> f64 {
    server.total("users", &format!("subject={subject}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_counts_are_keyed_exact_across_restart_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .create_meter(json!({"slug": "users", "eventType": "visit",
            "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user", "windowSize": "DAY"}))
        .await;
    let time = time_from_now(-60_000);
    let visit = |id: &str, subject: &str, user: &str| {
        event(id, "visit", subject, &time, json!({"user": user}))
    };
    let [a, b] = FNV64_COLLISION;
    let events = [
        visit("1", "s1", a),
        visit("2", "s1", b),
        visit("3", "s2", a),
    ];
    assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    assert_eq!(distinct_users(&server, "s1").await, 2.0, "colliding values");
    server.stop();
    let live = dump(dir.path());

    // A restart keeps counting into the same sets: a value seen before
    // is not new, a new one is.
    let server = Server::start(dir.path());
    assert_eq!(distinct_users(&server, "s1").await, 2.0);
    let events = [
        visit("4", "s1", b),
        visit("5", "s1", "c"),
        visit("6", "s2", b),
    ];
    assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    assert_eq!(distinct_users(&server, "s1").await, 3.0);
    assert_eq!(distinct_users(&server, "s2").await, 2.0);
    server.stop();
    let after_restart = dump(dir.path());
    assert_ne!(live, after_restart);

    let out = replay(dir.path());
    assert_success(&out);
    assert!(
        after_restart == dump(dir.path()),
        "replayed unique sets differ from the live ones"
    );
    let server = Server::start(dir.path());
    assert_eq!(distinct_users(&server, "s1").await, 3.0);
    assert_eq!(distinct_users(&server, "s2").await, 2.0);
}

/// The data directory's UNIQUE_COUNT key, from its keyring.
fn data_dir_key(dir: &std::path::Path) -> UniqueKey {
    let master = MasterKey::from_base64(TEST_MASTER_KEY).unwrap();
    let (keys, _) = open_keys(dir, &master, false, 0).unwrap();
    keys.unique_key().clone()
}

/// Every counter's key and state bytes, out of the blocks of `dump`.
fn counters_of(dump: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    dump.iter()
        .filter(|(k, _)| blocks::is_block_key(k))
        .flat_map(|(k, v)| blocks::decode_block_raw(k, v).unwrap())
        .collect()
}

/// The unique set of `subject` in the `users` meter, as stored.
fn stored_set(dump: &[(Vec<u8>, Vec<u8>)], subject: &str) -> Vec<u128> {
    let prefix = format!("users\0{subject}\0");
    let states: Vec<AggState> = counters_of(dump)
        .iter()
        .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
        .map(|(_, v)| AggState::decode(v).unwrap())
        .collect();
    match states.as_slice() {
        [AggState::Unique(set)] => set.clone(),
        other => panic!("one unique state expected for {subject}: {other:?}"),
    }
}

/// Rewrites the stopped server's counters store: every unique set as
/// `set_bytes`, the format stamp as `stamp` (`None`: none), and with
/// `one_key_each`, every counter under a key of its own as format 2 kept them.
fn rewrite_counters(
    dir: &std::path::Path,
    set_bytes: &[u8],
    stamp: Option<&[u8]>,
    one_key_each: bool,
) {
    let store = Store::open(&dir.join("state")).unwrap();
    for (k, v) in store.counters_dump().unwrap() {
        if !blocks::is_block_key(&k) {
            continue;
        }
        let mut counters = blocks::decode_block_raw(&k, &v).unwrap();
        for (_, state) in &mut counters {
            if state.starts_with(&[1, 8]) {
                *state = set_bytes.to_vec();
            }
        }
        if one_key_each {
            store.counters.remove(&k).unwrap();
            for (key, state) in counters {
                store.counters.insert(key, state).unwrap();
            }
        } else {
            let raw = counters.iter().map(|(k, s)| (k.as_slice(), s.as_slice()));
            store
                .counters
                .insert(k, blocks::encode_block_raw(raw))
                .unwrap();
        }
    }
    match stamp {
        Some(stamp) => store.counters.insert([3u8], stamp).unwrap(),
        None => store.counters.remove([3u8]).unwrap(),
    };
    store.db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_unique_sets_made_another_way_is_rebuilt_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .create_meter(json!({"slug": "users", "eventType": "visit",
            "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user", "windowSize": "DAY"}))
        .await;
    server
        .create_meter(json!({"slug": "visits", "eventType": "visit", "aggregation": "COUNT"}))
        .await;
    let time = time_from_now(-60_000);
    let [a, b] = FNV64_COLLISION;
    let events: Vec<_> = [("1", "s1", a), ("2", "s1", b), ("3", "s2", "c")]
        .into_iter()
        .map(|(id, subject, user)| event(id, "visit", subject, &time, json!({"user": user})))
        .collect();
    assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    server.stop();
    let live = dump(dir.path());

    // The engine hashed under the data directory's key and stamped the
    // store with that key's id.
    let key = data_dir_key(dir.path());
    let mut want = vec![key.hash(a), key.hash(b)];
    want.sort_unstable();
    assert_eq!(stored_set(&live, "s1"), want);
    let stamp = live
        .iter()
        .find(|(k, _)| k == &[3u8])
        .map(|(_, v)| v.clone());
    assert_eq!(stamp, Some([&[3u8][..], &key.id()].concat()));

    let format_2 = [&[2u8][..], &key.id()].concat();
    for (old, stamp, one_key_each, reason) in [
        // As the 64-bit era left it: a key per counter, tag 6 sets ({5}), no stamp.
        (&[1u8, 6, 1, 5][..], None, true, "64-bit FNV-1a"),
        // A key per counter, under the right key.
        (
            &[1u8, 8, 0][..],
            Some(&format_2[..]),
            true,
            "counters format 2",
        ),
        // Blocks and sets made under another key.
        (
            &[1u8, 8, 0][..],
            Some(&[3u8, 0, 0, 0, 0, 0, 0, 0, 0][..]),
            false,
            "another key",
        ),
    ] {
        rewrite_counters(dir.path(), old, stamp, one_key_each);
        let server = Server::start(dir.path());
        assert_eq!(server.total("users", "subject=s1").await, 2.0);
        assert_eq!(server.total("visits", "").await, 3.0);
        let log = server.stderr();
        assert!(
            log.contains("rebuilding it from the log") && log.contains(reason),
            "the rebuild is logged with its reason: {log}"
        );
        server.stop();
        assert!(
            live == dump(dir.path()),
            "rebuilt counters differ from the live ones"
        );
    }
    // A store of the current format is continued, not rebuilt.
    let server = Server::start(dir.path());
    assert_eq!(server.total("users", "subject=s1").await, 2.0);
    assert!(!server.stderr().contains("rebuilding it from the log"));
}
