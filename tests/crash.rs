//! Crash safety of the real binary: SIGKILL it several times while clients
//! ingest (or check seats out and release them), at moments chosen by a
//! seed, restart it, and check every acknowledged request one by one — in
//! the log's files and in what the API answers — then resend them.
//!
//! A failing run prints its seed; `KEYMETER_TEST_SEED=<seed>` replays the
//! same schedule (which answers arrive before each kill still depends on
//! timing).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::log_files::{frames, segments};
use common::log_records::ids_in_log;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const CLIENTS: u64 = 4;
const BATCH: u64 = 20;
const KILLS: usize = 3;
/// Event ids start with this, so the log's frames can be searched for them.
const ID_PREFIX: &str = "crash-ev-";

/// One request a client sent: its events and what it was told.
#[derive(Clone)]
struct Sent {
    /// Event numbers: event `n` has id `crash-ev-n`, subject `s-n` and value `n`.
    events: std::ops::Range<u64>,
    body: Vec<u8>,
    /// `keymeter-seq` of its `204`; None when no answer came (killed in flight).
    acked_seq: Option<u64>,
}

fn event_id(n: u64) -> String {
    format!("{ID_PREFIX}{n}")
}

fn subject(n: u64) -> String {
    format!("s-{n}")
}

/// A batch of `BATCH` events with distinct ids, subjects and values, so a
/// lost event cannot hide behind one counted twice.
fn batch_body(first: u64) -> Vec<u8> {
    let time = time_from_now(0);
    let events: Vec<Value> = (first..first + BATCH)
        .map(|n| event(&event_id(n), "tick", &subject(n), &time, json!({"v": n})))
        .collect();
    serde_json::to_vec(&events).unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> u64 {
    r.headers()[name].to_str().unwrap().parse().unwrap()
}

/// Sends batches until a request fails (the server was killed).
async fn client(url: String, next: Arc<AtomicU64>, acked: Arc<AtomicUsize>) -> Vec<Sent> {
    let http = http_client();
    let mut sent = Vec::new();
    loop {
        let first = next.fetch_add(BATCH, Ordering::SeqCst);
        let body = batch_body(first);
        let r = http
            .post(&url)
            .bearer_auth(ADMIN_KEY)
            .header("content-type", "application/cloudevents-batch+json")
            .body(body.clone())
            .send()
            .await;
        let acked_seq = match r {
            Ok(r) if r.status() == 204 => {
                assert_eq!(header(&r, "keymeter-accepted"), BATCH);
                Some(header(&r, "keymeter-seq"))
            }
            Ok(r) if !r.status().is_server_error() => panic!("unexpected {}", r.status()),
            // Killed while the request was in flight (no answer, or a 503
            // from an engine going down): the outcome is unknown.
            _ => None,
        };
        let done = acked_seq.is_none();
        sent.push(Sent {
            events: first..first + BATCH,
            body,
            acked_seq,
        });
        if done {
            return sent;
        }
        acked.fetch_add(1, Ordering::SeqCst);
    }
}

/// subject → value of every row of the `ticks` meter.
async fn counters(server: &Server) -> HashMap<String, u64> {
    let q = server.query("ticks", "groupBy=subject").await;
    q["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let v = r["value"].as_f64().unwrap();
            (r["subject"].as_str().unwrap().to_owned(), v as u64)
        })
        .collect()
}

/// Checks, after a restart, every request sent so far against the log's
/// files and the counters; returns for each request the seq of its last
/// record if it landed.
async fn check_recovered(server: &Server, sent: &[Sent]) -> Vec<Option<u64>> {
    let in_log = ids_in_log(&server.data_dir.join("log"), ID_PREFIX);
    let counted = counters(server).await;
    let mut landed = Vec::new();
    let mut expected_ids = 0;
    for s in sent {
        let seqs: Vec<&Vec<u64>> = s
            .events
            .clone()
            .filter_map(|n| in_log.get(&event_id(n)))
            .collect();
        for n in s.events.clone() {
            if let Some(seqs) = in_log.get(&event_id(n)) {
                assert_eq!(
                    seqs.len(),
                    1,
                    "event {n} is in the log {} times",
                    seqs.len()
                );
            }
            let value = counted.get(&subject(n)).copied();
            let logged = in_log.contains_key(&event_id(n));
            assert_eq!(
                value,
                logged.then_some(n),
                "event {n}: counted {value:?}, in the log: {logged}"
            );
        }
        let last = seqs.iter().map(|v| v[0]).max();
        match s.acked_seq {
            Some(seq) => {
                assert_eq!(
                    seqs.len() as u64,
                    BATCH,
                    "acknowledged events {:?} missing after the restart",
                    s.events
                );
                assert_eq!(
                    Some(seq),
                    last,
                    "keymeter-seq of {:?} is not its last record",
                    s.events
                );
            }
            None => assert!(
                seqs.is_empty() || seqs.len() as u64 == BATCH,
                "request {:?} in flight at the kill is in the log in part: {} of {BATCH}",
                s.events,
                seqs.len()
            ),
        }
        expected_ids += seqs.len();
        landed.push(last);
    }
    assert_eq!(
        in_log.len(),
        expected_ids,
        "the log holds events nobody sent"
    );
    assert_eq!(
        counted.len(),
        expected_ids,
        "counters for events nobody sent"
    );
    landed
}

/// Resends every request: an acknowledged one (or one that landed unanswered)
/// must come back as all duplicates, one that did not land as accepted.
async fn resend_all(server: &Server, sent: &mut [Sent], landed: &[Option<u64>]) {
    for (s, landed) in sent.iter_mut().zip(landed) {
        let r = server
            .post_events(
                ADMIN_KEY,
                "application/cloudevents-batch+json",
                s.body.clone(),
            )
            .await;
        assert_eq!(r.status(), 204, "resend of {:?}", s.events);
        let (accepted, duplicates) = (
            header(&r, "keymeter-accepted"),
            header(&r, "keymeter-duplicates"),
        );
        if let Some(last) = *landed {
            s.acked_seq = Some(last);
            assert_eq!(
                (accepted, duplicates),
                (0, BATCH),
                "resend of {:?}, which landed",
                s.events
            );
        } else {
            assert_eq!(
                (accepted, duplicates),
                (BATCH, 0),
                "resend of {:?}, which was lost",
                s.events
            );
            s.acked_seq = Some(header(&r, "keymeter-seq"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_lose_no_acknowledged_event_and_count_none_twice() {
    let seed = test_seed("crash", "repeated_sigkills");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let next = Arc::new(AtomicU64::new(1));
    let mut sent: Vec<Sent> = Vec::new();
    let mut server = Server::start(dir.path());
    server
        .create_meter(json!({"slug": "ticks", "eventType": "tick", "aggregation": "SUM", "valueProperty": "$.v"}))
        .await;
    for round in 0..KILLS {
        let kill_after = rng.gen_range(5..60usize);
        let then_ms = rng.gen_range(0..15u64);
        println!("round {round}: kill after {kill_after} acknowledged batches + {then_ms} ms");
        let acked = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                tokio::spawn(client(
                    server.url("/api/v1/events"),
                    next.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        let deadline = Instant::now() + WAIT_MAX;
        while acked.load(Ordering::SeqCst) < kill_after {
            assert!(
                Instant::now() < deadline,
                "only {acked:?} batches acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(then_ms)).await;
        server.kill();
        for c in clients {
            sent.extend(
                tokio::time::timeout(WAIT_MAX, c)
                    .await
                    .expect("client hangs")
                    .unwrap(),
            );
        }
        server = Server::start(dir.path());
        let landed = check_recovered(&server, &sent).await;
        let in_flight: Vec<bool> = (sent.iter().zip(&landed))
            .filter(|(s, _)| s.acked_seq.is_none())
            .map(|(_, l)| l.is_some())
            .collect();
        println!(
            "round {round}: {} requests so far; in flight at the kill, landed or not: {in_flight:?}",
            sent.len()
        );
        resend_all(&server, &mut sent, &landed).await;
        // Every request is now in the log once: the counters hold every event once.
        let all: Vec<Option<u64>> = sent.iter().map(|s| s.acked_seq).collect();
        assert_eq!(check_recovered(&server, &sent).await, all);
        let total: u64 = sent.iter().flat_map(|s| s.events.clone()).sum();
        assert_eq!(server.total("ticks", "").await as u64, total);
    }
    server.stop();
}

// --- Seats -----------------------------------------------------------------

const SEATS_MAX: usize = 4;

/// What the seat clients were told before the kill.
#[derive(Default)]
struct SeatLedger {
    /// seat id → fingerprint, for checkouts answered `201`
    granted: BTreeMap<String, String>,
    /// seats whose release was answered `204`
    released: Vec<String>,
    /// seats whose release was in flight at the kill: held or not
    releasing: Vec<String>,
}

/// Checks seats out under new fingerprints; on `409` releases one it holds.
/// Stops at the first request without an answer.
async fn seat_client(
    server_url: String,
    key: String,
    seed: u64,
    ledger: Arc<std::sync::Mutex<SeatLedger>>,
    answered: Arc<AtomicUsize>,
) {
    let http = http_client();
    let mut rng = StdRng::seed_from_u64(seed);
    // seat id and its lease token
    let mut held: Vec<(String, String)> = Vec::new();
    for k in 0.. {
        let fp = format!("fp-{seed}-{k}");
        let r = http
            .post(format!("{server_url}/seats"))
            .bearer_auth(&key)
            .json(&json!({"fingerprint": fp}))
            .send()
            .await;
        let Ok(r) = r else { return };
        match r.status().as_u16() {
            201 => {
                let v = r.json::<Value>().await.unwrap();
                let seat = v["seat_id"].as_str().unwrap().to_owned();
                let token = v["lease_token"].as_str().unwrap().to_owned();
                ledger.lock().unwrap().granted.insert(seat.clone(), fp);
                held.push((seat, token));
            }
            409 if !held.is_empty() => {
                let (seat, token) = held.swap_remove(rng.gen_range(0..held.len()));
                let r = http
                    .delete(format!("{server_url}/seats/{seat}"))
                    .bearer_auth(&key)
                    .header("Lease-Token", token)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 204 => ledger.lock().unwrap().released.push(seat),
                    Ok(r) if !r.status().is_server_error() => {
                        panic!("release answered {}", r.status())
                    }
                    _ => {
                        ledger.lock().unwrap().releasing.push(seat);
                        return;
                    }
                }
            }
            409 => {}
            s if s >= 500 => return,
            s => panic!("checkout answered {s}"),
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
}

/// seat id → fingerprint of every seat the license holds.
async fn seats(server: &Server, license: &str) -> BTreeMap<String, String> {
    let v = server
        .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{license}/seats"))
        .await;
    v["seats"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap().to_owned();
            (field("seat_id"), field("fingerprint"))
        })
        .collect()
}

/// After a restart: every seat whose checkout was acknowledged (and not its
/// release) is held, no acknowledged release came back, and exactly the
/// free seats can still be taken. Then frees every seat, recording it.
async fn check_seats_after_restart(
    server: &Server,
    id: &str,
    key: &str,
    ledger: &std::sync::Mutex<SeatLedger>,
    round: usize,
) {
    let now = seats(server, id).await;
    {
        let told = ledger.lock().unwrap();
        for seat in &told.released {
            assert!(
                !now.contains_key(seat),
                "released seat {seat} is back after the restart"
            );
        }
        for (seat, fp) in &told.granted {
            if !told.released.contains(seat) && !told.releasing.contains(seat) {
                assert_eq!(
                    now.get(seat),
                    Some(fp),
                    "acknowledged seat {seat} lost in the restart"
                );
            }
        }
        assert!(now.len() <= SEATS_MAX, "{now:?}");
    }
    // The limit still counts the seats held from before the kill: only
    // the free ones can be taken.
    let mut taken = 0;
    loop {
        let r = server
            .post_json(
                key,
                &format!("/api/v1/licenses/{id}/seats"),
                &json!({"fingerprint": format!("fill-{round}-{taken}")}),
            )
            .await;
        if r.status() == 409 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "SEAT_LIMIT_EXCEEDED");
            break;
        }
        assert_eq!(r.status(), 201);
        taken += 1;
        assert!(taken <= SEATS_MAX, "more than {SEATS_MAX} seats granted");
    }
    assert_eq!(
        now.len() + taken,
        SEATS_MAX,
        "seats held after the restart: {now:?}"
    );
    // Free every seat, so the next round's clients start from none (an
    // admin: the clients that held their tokens were killed).
    for (seat, _) in seats(server, id).await {
        let r = server
            .delete(ADMIN_KEY, &format!("/api/v1/licenses/{id}/seats/{seat}"))
            .await;
        assert_eq!(r.status(), 204);
        ledger.lock().unwrap().released.push(seat);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_acknowledged_before_sigkills_hold_after_restart_and_the_limit_still_applies() {
    let seed = test_seed("crash", "seats_acknowledged_before_sigkills");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let lic = server
        .create_license(json!({"product": "ide", "customer": "acme",
            "policy": {"type": "seat", "seats": {"max": SEATS_MAX, "mode": "floating", "lease_ttl_s": 3600}}}))
        .await;
    let id = lic["id"].as_str().unwrap().to_owned();
    let key = server.create_key(&["ingest", "validate"]).await;
    let ledger = Arc::new(std::sync::Mutex::new(SeatLedger::default()));
    for round in 0..KILLS {
        let kill_after = rng.gen_range(10..80usize);
        println!("round {round}: kill after {kill_after} answered seat requests");
        let answered = Arc::new(AtomicUsize::new(0));
        let url = server.url(&format!("/api/v1/licenses/{id}"));
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let client_seed = seed.wrapping_mul(31).wrapping_add(round as u64 * 3 + c);
                tokio::spawn(seat_client(
                    url.clone(),
                    key.clone(),
                    client_seed,
                    ledger.clone(),
                    answered.clone(),
                ))
            })
            .collect();
        let deadline = Instant::now() + WAIT_MAX;
        while answered.load(Ordering::SeqCst) < kill_after {
            assert!(
                Instant::now() < deadline,
                "only {answered:?} seat requests answered"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill();
        for c in clients {
            tokio::time::timeout(WAIT_MAX, c)
                .await
                .expect("client hangs")
                .unwrap();
        }

        server = Server::start(dir.path());
        check_seats_after_restart(&server, &id, &key, &ledger, round).await;
    }
    server.stop();
}

// --- Snapshots ahead of the log ------------------------------------------------

/// `BATCH` events of value 1 with ids `b<n>-e<i>` under subject `batch-<n>`.
fn unit_batch(n: usize) -> Vec<Value> {
    let time = time_from_now(0);
    (0..BATCH)
        .map(|i| {
            event(
                &format!("b{n}-e{i}"),
                "tick",
                &format!("batch-{n}"),
                &time,
                json!({"v": 1}),
            )
        })
        .collect()
}

/// The dedup index is claimed before a batch is durable (so the next batch,
/// built during the sync, sees it) and snapshotted on shutdown. If the log
/// then loses its last batch — as a torn, unacknowledged tail would — the
/// snapshot is ahead of the log and must be discarded, or the lost events'
/// retries would be refused as duplicates and never counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_and_dedup_snapshot_ahead_of_the_log_are_rebuilt_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .create_meter(json!({"slug": "ticks", "eventType": "tick", "aggregation": "SUM", "valueProperty": "$.v"}))
        .await;
    for n in 0..3 {
        assert_eq!(server.ingest(ADMIN_KEY, &unit_batch(n)).await.status(), 204);
    }
    server.stop();
    assert!(dir.path().join("state/dedup.snapshot").exists());

    // Cut the last batch of events (batch-2) off the log, with the signed
    // checkpoint that shutdown appended after it.
    let seg = segments(&dir.path().join("log")).pop().unwrap();
    let ends: Vec<usize> = frames(&seg)
        .iter()
        .filter(|f| f.is_batch_end())
        .map(|f| f.end())
        .collect();
    let keep = ends[ends.len() - 3];
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(keep as u64)
        .unwrap();

    let server = Server::start(dir.path());
    let got = counters(&server).await;
    assert_eq!(got.get("batch-2"), None, "the cut batch is gone");
    // The client retries: it must be counted, not refused as a duplicate.
    let r = server.ingest(ADMIN_KEY, &unit_batch(2)).await;
    assert_eq!(header(&r, "keymeter-accepted"), BATCH);
    // Earlier batches are still recognised.
    let r = server.ingest(ADMIN_KEY, &unit_batch(1)).await;
    assert_eq!(header(&r, "keymeter-duplicates"), BATCH);
    let got = counters(&server).await;
    assert_eq!(got.values().sum::<u64>(), 3 * BATCH);
    server.stop();
}
