//! Ingest latency while a meter is created over a long log.
//!
//! Loads a log of `EVENTS` events (10M; 20k with `KEYMETER_BENCH_QUICK=1`),
//! then runs the same closed ingest loop (batches of 100 events, one at a
//! time) three times: alone (baseline), while a new meter over every logged
//! event is created and counts them, and alone again (so that drift shows).
//! Prints p50/p99/max batch latency of each, the p99 ratio against the
//! faster alone run, and how long the count took. It has no target.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keymeter::config::Config;
use keymeter::engine::protocol::{CreateMeter, Ingest, Origin};
use keymeter::engine::{Engine, EngineHandle, SystemClock};
use keymeter::event::{decode_event_text, Decoded, TimeWindow};
use keymeter::meter::MeterDef;
use keymeter::record::Audit;

const LOAD_BATCH: usize = 10_000;
const PROBE_BATCH: usize = 100;

fn items(prefix: &str, from: usize, n: usize, now_ms: i64) -> Vec<Decoded> {
    (from..from + n)
        .map(|i| {
            let t = chrono::DateTime::from_timestamp_millis(now_ms - (i as i64 % 3_600) * 1_000)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let text = format!(
                r#"{{"specversion":"1.0","id":"{prefix}-{i}","source":"bench","type":"call","subject":"cust-{}","time":"{t}","data":{{"n":{}}}}}"#,
                i % 1_000,
                i % 10
            );
            decode_event_text(&text, now_ms, TimeWindow::default()).unwrap()
        })
        .collect()
}

async fn ingest(handle: &EngineHandle, items: Vec<Decoded>) {
    let received_ms = chrono::Utc::now().timestamp_millis();
    let origin = Origin::Http {
        tenant: "product:bench".into(),
    };
    let out = handle
        .send(Ingest {
            items,
            received_ms,
            origin,
        })
        .await
        .unwrap();
    assert!(out.rejected.is_empty());
}

/// Ingests probe batches until `until` says stop; returns their latencies.
async fn probe(handle: &EngineHandle, prefix: &str, until: impl Fn() -> bool) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut n = 0;
    while !until() {
        let batch = items(
            prefix,
            n,
            PROBE_BATCH,
            chrono::Utc::now().timestamp_millis(),
        );
        let t = Instant::now();
        ingest(handle, batch).await;
        h.record(t.elapsed().as_micros() as u64).unwrap();
        n += PROBE_BATCH;
    }
    h
}

fn row(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<26} batches {:>6}  p50 {:>8.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms  max {:>8.2} ms",
        h.len(),
        h.value_at_quantile(0.50) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}

fn main() {
    let events: usize = if common::quick() { 20_000 } else { 10_000_000 };
    let probe_time = Duration::from_secs(if common::quick() { 1 } else { 10 });
    let dir = common::temp_dir();
    let cfg = Config {
        dedup_keys_max: 20_000_000,
        ..common::config(dir.path().join("data"))
    };
    let started = Engine::open(&cfg, Arc::new(SystemClock)).unwrap();
    let handle = started.engine.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(async {
        let now = chrono::Utc::now().timestamp_millis();
        for from in (0..events).step_by(LOAD_BATCH) {
            ingest(&handle, items("old", from, LOAD_BATCH, now)).await;
        }
    });
    println!(
        "loaded {events} events in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let alone = rt.block_on(probe(&handle, "alone", || start.elapsed() >= probe_time));

    let def: MeterDef = serde_json::from_value(serde_json::json!({
        "slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n"
    }))
    .unwrap();
    let audit = Audit {
        actor: None,
        at_ms: 0,
        request_id: None,
    };
    let start = Instant::now();
    let (during, counted_in) = rt.block_on(async {
        let done = std::cell::Cell::new(false);
        let counted = async {
            let created = Instant::now();
            handle.send(CreateMeter { def, audit }).await.unwrap();
            while handle.shared.backfills.load().contains_key("calls") {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            done.set(true);
            created.elapsed()
        };
        let probe = probe(&handle, "during", || {
            done.get() && start.elapsed() >= probe_time
        });
        let (counted_in, h) = tokio::join!(counted, probe);
        (h, counted_in)
    });
    // Alone again, so that a drift in the machine's speed shows.
    let start = Instant::now();
    let after = rt.block_on(probe(&handle, "after", || start.elapsed() >= probe_time));
    row("ingest alone, before", &alone);
    row("ingest while meter counts", &during);
    row("ingest alone, after", &after);
    // The faster of the two alone runs: the ratio is not flattered by a slow spell.
    let alone_p99 = alone
        .value_at_quantile(0.99)
        .min(after.value_at_quantile(0.99))
        .max(1);
    println!(
        "p99 ratio (during / faster alone): {:.2}; the meter counted {events} events within \
         {:.1} s; no target set (ARCHITECTURE.md records the measured figures)",
        during.value_at_quantile(0.99) as f64 / alone_p99 as f64,
        counted_in.as_secs_f64()
    );
    drop(handle);
    started.engine.shutdown().unwrap();
}
