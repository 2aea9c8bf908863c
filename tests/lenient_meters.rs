//! Meters never break ingest: a valid event one meter cannot read (value
//! missing or not a number) is accepted into the log, counted by the other
//! meters and skipped by that one only, counted by reason in
//! `keymeter_meter_events_skipped_total`. A meter defined later skips the
//! older events the same way, `keymeter replay` rebuilds the same counters
//! and counts, and a `strict` meter keeps refusing such events.

mod common;

use common::*;
use keymeter::projection::Store;
use serde_json::{json, Value};

const SKIPPED: &str = "keymeter_meter_events_skipped_total";

fn prompt(id: &str, data: Value) -> Value {
    event(id, "prompt", "acme", &time_from_now(-1000), data)
}

async fn skipped(server: &Server, meter: &str, reason: &str) -> f64 {
    (server.metric(&format!(
        "{SKIPPED}{{meter=\"{meter}\",reason=\"{reason}\"}}"
    )))
    .await
}

/// The meter's total once its past is counted (a backfilling meter answers
/// 503 until then).
async fn settled_total(server: &Server, slug: &str) -> f64 {
    for _ in 0..600 {
        let r = server
            .get(ADMIN_KEY, &format!("/api/v1/meters/{slug}/query"))
            .await;
        if r.status() == 200 {
            let body: Value = r.json().await.unwrap();
            let rows = body["data"].as_array().unwrap();
            return rows.iter().map(|r| r["value"].as_f64().unwrap()).sum();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("meter {slug} never finished counting its past");
}

async fn totals(server: &Server) -> Vec<f64> {
    let mut out = Vec::new();
    for slug in ["tokens", "calls", "latency", "late_tokens"] {
        out.push(settled_total(server, slug).await);
    }
    out
}

async fn skip_counts(server: &Server) -> Vec<f64> {
    let mut out = Vec::new();
    for meter in ["tokens", "late_tokens"] {
        for reason in ["VALUE_PROPERTY_MISSING", "VALUE_NOT_NUMERIC"] {
            out.push(skipped(server, meter, reason).await);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_one_meter_cannot_read_is_accepted_and_counted_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for meter in [
        json!({"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}),
        json!({"slug": "calls", "eventType": "prompt", "aggregation": "COUNT"}),
        json!({"slug": "latency", "eventType": "prompt", "aggregation": "MAX", "valueProperty": "$.ms"}),
    ] {
        server.create_meter(meter).await;
    }
    let batch = [
        prompt("e1", json!({"tokens": 10, "ms": 5})),
        prompt("e2", json!({"ms": 7})),
        prompt("e3", json!({"tokens": "many", "ms": 3})),
        prompt("e4", json!({"tokens": 2.5})),
    ];
    let r = server.ingest(ADMIN_KEY, &batch).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());

    // Each meter counts what it can read; nothing went to the quarantine.
    assert_eq!(settled_total(&server, "tokens").await, 12.5);
    assert_eq!(settled_total(&server, "calls").await, 4.0);
    assert_eq!(settled_total(&server, "latency").await, 7.0);
    let q = server.get_json(ADMIN_KEY, "/api/v1/quarantine").await;
    assert_eq!(q["items"].as_array().unwrap().len(), 0, "{q}");
    assert_eq!(
        skipped(&server, "tokens", "VALUE_PROPERTY_MISSING").await,
        1.0
    );
    assert_eq!(skipped(&server, "tokens", "VALUE_NOT_NUMERIC").await, 1.0);
    assert_eq!(
        skipped(&server, "latency", "VALUE_PROPERTY_MISSING").await,
        1.0
    );

    // A meter defined after the events applies the same rule to them.
    server
        .create_meter(json!({"slug": "late_tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}))
        .await;
    assert_eq!(settled_total(&server, "late_tokens").await, 12.5);
    assert_eq!(skip_counts(&server).await, [1.0, 1.0, 1.0, 1.0]);

    // A strict meter keeps the refusal, for its own type only.
    server
        .create_meter(json!({"slug": "strict_units", "eventType": "job", "aggregation": "SUM", "valueProperty": "$.units", "strict": true}))
        .await;
    let job = |id: &str, data: Value| event(id, "job", "acme", &time_from_now(-1000), data);
    let r = server.ingest(ADMIN_KEY, &[job("j1", json!({}))]).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["rejected"][0]["code"], "VALUE_PROPERTY_MISSING",
        "{body}"
    );
    let r = server
        .ingest(ADMIN_KEY, &[job("j2", json!({"units": 4}))])
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(settled_total(&server, "strict_units").await, 4.0);
    let def = server
        .get_json(ADMIN_KEY, "/api/v1/meters/strict_units")
        .await;
    assert_eq!(def["strict"], true, "{def}");

    let live_totals = totals(&server).await;
    let live_skips = skip_counts(&server).await;
    server.stop();
    let dump = || {
        Store::open(&dir.path().join("state"))
            .unwrap()
            .counters_dump()
            .unwrap()
    };
    let live = dump();

    // Replay rebuilds the same counters and skip counts, byte for byte.
    let out = replay(dir.path());
    assert_success(&out);
    assert!(live == dump(), "replay rebuilt other counters");
    let server = Server::start(dir.path());
    assert_eq!(totals(&server).await, live_totals);
    assert_eq!(skip_counts(&server).await, live_skips);
}
