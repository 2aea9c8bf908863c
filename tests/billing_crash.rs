//! SIGKILL while a billing close writes tens of thousands of statements
//! (in several batches): after the restart every subject has its statement
//! exactly once (no version issued twice, none lost), and `keymeter replay`
//! rebuilds the same feed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{rfc3339_ms, Server, ADMIN_KEY};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;
const SUBJECTS: usize = 24_000;

/// Every statement version in the feed, as (id, version) → how often.
async fn feed(server: &Server) -> (Vec<Value>, BTreeMap<(String, u64), usize>) {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/billing/statements?limit=5000&after={a}"),
            None => "/api/v1/billing/statements?limit=5000".to_owned(),
        };
        let page = server.get_json(ADMIN_KEY, &path).await;
        let items = page["statements"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        all.extend(items);
        after = page["nextCursor"].as_str().map(str::to_owned);
    }
    let mut counts = BTreeMap::new();
    for s in &all {
        let s = &s["statement"];
        *counts
            .entry((
                s["statement_id"].as_str().unwrap().to_owned(),
                s["version"].as_u64().unwrap(),
            ))
            .or_default() += 1;
    }
    (all, counts)
}

async fn settled(server: &Server) -> (Vec<Value>, BTreeMap<(String, u64), usize>) {
    let deadline = Instant::now() + common::WAIT_MAX;
    loop {
        let f = feed(server).await;
        if f.1.len() >= SUBJECTS {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "{} statements of {SUBJECTS}",
            f.1.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn events(from: usize, to: usize, time: &str) -> Vec<Value> {
    (from..to)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("k{i}"), "source": "app",
            "type": "request", "subject": format!("s{i:06}"), "time": time, "data": {"n": i % 10}})
        })
        .collect()
}

fn config(root: &std::path::Path, interval: &str) -> String {
    let path = root.join(format!("keymeter-{interval}.toml"));
    std::fs::write(
        &path,
        format!("[billing]\ncycle = \"day\"\ngrace = \"1s\"\nclose_interval = \"{interval}\"\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_issued_once_across_a_kill_during_a_close() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let (fast, slow) = (config(root.path(), "100ms"), config(root.path(), "1h"));
    let time = rfc3339_ms(chrono::Utc::now().timestamp_millis() - 2 * DAY);
    // Two days ago gets closed with one event.
    let server = Server::start_with(&data, &["--config", &fast]);
    server
        .create_meter(json!({"slug": "tokens", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.n"}))
        .await;
    assert_eq!(
        server
            .ingest(ADMIN_KEY, &events(0, 1, &time))
            .await
            .status(),
        204
    );
    let deadline = Instant::now() + common::WAIT_MAX;
    while feed(&server).await.1.is_empty() {
        assert!(Instant::now() < deadline, "the day never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
    // Late events for many subjects, with no close running.
    let server = Server::start_with(&data, &["--config", &slow]);
    for start in (1..SUBJECTS).step_by(2000) {
        let r = server
            .ingest(
                ADMIN_KEY,
                &events(start, (start + 2000).min(SUBJECTS), &time),
            )
            .await;
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }
    server.stop();
    // The first close of the next start restates them all; it is killed.
    let server = Server::start_with(&data, &["--config", &fast]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    tokio::time::sleep(Duration::from_millis(rng.gen_range(50..600))).await;
    server.kill();

    let server = Server::start_with(&data, &["--config", &fast]);
    let (before, counts) = settled(&server).await;
    assert_eq!(counts.len(), SUBJECTS, "one statement per subject");
    assert!(counts.values().all(|n| *n == 1), "a version issued twice");
    assert!(
        counts.keys().all(|(_, v)| *v == 1),
        "a version 2 without a new event"
    );
    server.stop();

    let replay = common::replay(&data);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let server = Server::start_with(&data, &["--config", &fast]);
    let (after, _) = feed(&server).await;
    assert_eq!(after, before, "replay rebuilt another feed");
    server.stop();
}
