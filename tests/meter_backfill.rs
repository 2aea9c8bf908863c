//! A meter created over a long log counts the events before it on its own
//! thread: ingest keeps answering meanwhile, queries say the meter is still
//! counting, a crash mid-count restarts it, and the result is exactly what
//! `keymeter replay` rebuilds.

mod common;

use common::*;
use keymeter::projection::Store;
use serde_json::{json, Value};

/// Enough events that counting them takes visibly long in a debug build.
const EVENTS: usize = 200_000;
const BATCH: usize = 5_000;

fn events(prefix: &str, from: usize, n: usize) -> Vec<Value> {
    let now = chrono::Utc::now().timestamp_millis();
    (from..from + n)
        .map(|i| {
            let t = chrono::DateTime::from_timestamp_millis(now - (i as i64 % 3_600) * 1_000)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            event(
                &format!("{prefix}-{i}"),
                "call",
                &format!("cust-{}", i % 13),
                &t,
                json!({"n": (i % 10) as u64}),
            )
        })
        .collect()
}

fn expected_sum(from: usize, n: usize) -> f64 {
    (from..from + n).map(|i| (i % 10) as f64).sum()
}

async fn query_status(server: &Server) -> (u16, Value, Option<String>) {
    let r = server
        .get(ADMIN_KEY, "/api/v1/meters/calls/query?groupBy=subject")
        .await;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_meter_counts_the_past_off_the_ingest_path_and_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for from in (0..EVENTS).step_by(BATCH) {
        let r = server.ingest(ADMIN_KEY, &events("old", from, BATCH)).await;
        assert_eq!(r.status(), 204);
    }

    let meter =
        json!({"slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n"});
    let create = {
        let (client, url) = (server.client.clone(), server.url("/api/v1/meters"));
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(ADMIN_KEY)
                .json(&meter)
                .send()
                .await
        })
    };
    // The meter exists and says it is still counting its past.
    loop {
        let (status, body, retry) = query_status(&server).await;
        match status {
            404 => continue,
            503 => {
                assert_eq!(body["code"], "METER_BACKFILLING", "{body}");
                assert_eq!(retry.as_deref(), Some("1"));
                break;
            }
            _ => panic!(
                "the count finished before it could be observed ({status} {body}); raise EVENTS"
            ),
        }
    }
    // Ingest is answered while the count runs.
    let r = server.ingest(ADMIN_KEY, &events("new", 0, 100)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["keymeter-accepted"], "100");
    let (status, _, _) = query_status(&server).await;
    assert_eq!(status, 503, "still counting after the ingest was answered");

    // A crash mid-count: the restart finishes it before serving.
    server.kill();
    drop(create);
    let server = Server::start(dir.path());
    let total = server.total("calls", "groupBy=subject").await;
    assert_eq!(total, expected_sum(0, EVENTS) + expected_sum(0, 100));
    // Creating it again is refused; the count is not repeated.
    let meter =
        json!({"slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n"});
    let r = server.post_json(ADMIN_KEY, "/api/v1/meters", &meter).await;
    assert_eq!(r.status(), 409);
    assert_eq!(server.total("calls", "groupBy=subject").await, total);
    server.stop();

    let dump = || {
        Store::open(&dir.path().join("state"))
            .unwrap()
            .counters_dump()
            .unwrap()
    };
    let live = dump();
    let out = replay(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dump(), live, "replay rebuilds the same counters");
}
