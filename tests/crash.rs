//! Crash safety: SIGKILL the real binary while clients are ingesting, restart,
//! and prove every acknowledged event is counted exactly once and every batch
//! is all-or-nothing; then the clients' retries make the totals exact.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::log_files::{frames, segments};
use common::*;
use serde_json::{json, Value};

const BATCH: usize = 40;

fn batch(n: usize) -> Vec<Value> {
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

async fn counts(server: &Server) -> BTreeMap<String, f64> {
    let q = server.query("ticks", "groupBy=subject").await;
    q["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["subject"].as_str().unwrap().to_owned(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_event_and_counts_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .create_meter(json!({"slug": "ticks", "eventType": "tick", "aggregation": "SUM", "valueProperty": "$.v"}))
        .await;
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let sent = Arc::new(Mutex::new(Vec::<usize>::new()));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (acked, sent) = (acked.clone(), sent.clone());
        let url = server.url("/api/v1/events");
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for k in 0.. {
                let n = c * 1_000_000 + k;
                sent.lock().unwrap().push(n);
                let r = client
                    .post(&url)
                    .bearer_auth(ADMIN_KEY)
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(serde_json::to_vec(&batch(n)).unwrap())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 204 => acked.lock().unwrap().push(n),
                    _ => break,
                }
            }
        }));
    }
    // Let the stream run, then kill without warning while requests are in flight.
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    let server = Server::start(dir.path());
    let got = counts(&server).await;
    for n in &acked {
        assert_eq!(
            got.get(&format!("batch-{n}")),
            Some(&(BATCH as f64)),
            "acknowledged batch {n}"
        );
    }
    for (subject, v) in &got {
        assert_eq!(*v, BATCH as f64, "{subject} is not all-or-nothing");
    }
    // Clients retry what was never acknowledged; dedup makes that exact.
    for n in sent.iter().filter(|n| !acked.contains(n)) {
        assert_eq!(server.ingest(ADMIN_KEY, &batch(*n)).await.status(), 204);
        // Times differ on the retry; the identity (source, id) is what counts.
    }
    let got = counts(&server).await;
    assert_eq!(got.len(), sent.len());
    assert!(got.values().all(|v| *v == BATCH as f64));
    server.stop();
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
        assert_eq!(server.ingest(ADMIN_KEY, &batch(n)).await.status(), 204);
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
    let got = counts(&server).await;
    assert_eq!(got.get("batch-2"), None, "the cut batch is gone");
    // The client retries: it must be counted, not refused as a duplicate.
    let r = server.ingest(ADMIN_KEY, &batch(2)).await;
    assert_eq!(r.headers()["keymeter-accepted"], BATCH.to_string().as_str());
    // Earlier batches are still recognised.
    let r = server.ingest(ADMIN_KEY, &batch(1)).await;
    assert_eq!(
        r.headers()["keymeter-duplicates"],
        BATCH.to_string().as_str()
    );
    let got = counts(&server).await;
    assert_eq!(got.values().sum::<f64>(), 3.0 * BATCH as f64);
    server.stop();
}
