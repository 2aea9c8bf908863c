//! Billing figures, each beside a baseline measured in the same run:
//!
//! - Merkle sum tree build, leaves/s (baseline: SHA-256 of the same leaf
//!   bytes alone); inclusion proof generation p50/p99 for lines of 1,000
//!   and 100,000 events;
//! - closing one period for S subjects × 3 meters (default S = 1,000,000),
//!   with the peak RSS of the close (baseline: a raw scan of the leaves it
//!   reads);
//! - CSV export lines/s (baseline: a raw scan of the statements);
//! - ingest events/s with 3 billed meters (SUM) against 3 unbilled ones
//!   (MAX: the same fold, no leaves), and the bytes per event the billing
//!   tree keeps.
//!
//! `KEYMETER_BENCH_QUICK=1`: 10,000 subjects. `KEYMETER_BILLING_SUBJECTS=N`
//! sets S.

#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use keymeter::billing::merkle::{self, Node};
use keymeter::billing::statement::Leaf;
use keymeter::engine::decide::CloseBilling;
use keymeter::engine::protocol::{CreateMeter, Ingest, Origin};
use keymeter::engine::{Clock, Engine, EngineHandle};
use keymeter::event::{decode_event_text, TimeWindow};
use keymeter::meter::MeterDef;
use keymeter::query::View;
use keymeter::record::Audit;
use sha2::Digest;

struct FixedClock(AtomicI64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const DAY: i64 = 86_400_000;
const BATCH: usize = 10_000;

fn subjects() -> usize {
    match std::env::var("KEYMETER_BILLING_SUBJECTS") {
        Ok(v) => v.parse().expect("KEYMETER_BILLING_SUBJECTS is a number"),
        Err(_) if common::quick() => 10_000,
        Err(_) => 1_000_000,
    }
}

fn leaves(n: usize) -> Vec<Leaf> {
    (0..n as u64)
        .map(|i| Leaf {
            seq: i,
            identity: [(i % 251) as u8; 16],
            time_ms: 1_800_000_000_000 + i as i64,
            value: i128::from(i % 977) * 1_000_000_000,
        })
        .collect()
}

fn merkle_figures() {
    let n = if common::quick() { 100_000 } else { 2_000_000 };
    let ls = leaves(n);
    let t = Instant::now();
    let mut acc = 0u8;
    for l in &ls {
        acc ^= sha2::Sha256::digest(l.bytes("customer-000042", "tokens"))[0];
    }
    let hash_rate = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let nodes: Vec<Node> = ls
        .iter()
        .map(|l| l.node("customer-000042", "tokens"))
        .collect();
    let root = merkle::root(&nodes);
    let build_rate = n as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box((acc, root));
    println!(
        "merkle build: {build_rate:.0} leaves/s ({:.0} % of hashing the leaves alone: {hash_rate:.0}/s); {}",
        100.0 * build_rate / hash_rate,
        common::at_least(build_rate, 2_000_000.0, "leaves/s")
    );
    for size in [1_000usize, 100_000] {
        let line: Vec<Node> = nodes[..size.min(n)].to_vec();
        let mut h = Histogram::<u64>::new(3).unwrap();
        for i in 0..200usize {
            let index = (i * 7919) % line.len();
            let t = Instant::now();
            let path = merkle::inclusion_proof(&line, index).unwrap();
            h.record(t.elapsed().as_nanos() as u64).unwrap();
            std::hint::black_box(path);
        }
        println!(
            "inclusion proof, line of {size} events: p50 {:.3} ms, p99 {:.3} ms; {}",
            common::quantile_k(&h, 0.5) / 1000.0,
            common::quantile_k(&h, 0.99) / 1000.0,
            common::at_most(common::quantile_k(&h, 0.99) / 1000.0, 1.0, "ms")
        );
    }
}

async fn meters(handle: &EngineHandle, aggregation: &str) {
    for slug in ["tokens", "requests", "bytes"] {
        let def: MeterDef = serde_json::from_value(serde_json::json!({
            "slug": slug, "eventType": "call", "aggregation": aggregation,
            "valueProperty": format!("$.{slug}"), "windowSize": "HOUR"
        }))
        .unwrap();
        let audit = Audit {
            actor: None,
            at_ms: 0,
            request_id: None,
        };
        handle.send(CreateMeter { def, audit }).await.unwrap();
    }
}

/// Ingests one event per subject dated `time_ms`, received at `now`.
async fn ingest(handle: &EngineHandle, subjects: usize, time_ms: i64, now: i64) -> f64 {
    let time = chrono::DateTime::from_timestamp_millis(time_ms)
        .unwrap()
        .to_rfc3339();
    let window = TimeWindow {
        back_ms: 35 * DAY,
        ahead_ms: 300_000,
    };
    let t = Instant::now();
    for start in (0..subjects).step_by(BATCH) {
        let items = (start..(start + BATCH).min(subjects))
            .map(|i| {
                let text = format!(
                    r#"{{"specversion":"1.0","id":"e{i}","source":"bench","type":"call","subject":"customer-{i:07}","time":"{time}","data":{{"tokens":{},"requests":1,"bytes":{}}}}}"#,
                    i % 977,
                    i % 4096
                );
                decode_event_text(&text, now, window).unwrap()
            })
            .collect();
        let origin = Origin::Http {
            tenant: "key:bench".into(),
        };
        let out = handle
            .send(Ingest {
                items,
                received_ms: now,
                origin,
            })
            .await
            .unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected.first());
    }
    subjects as f64 / t.elapsed().as_secs_f64()
}

fn peak_rss_reset() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn tree_bytes(cfg: &keymeter::config::Config) -> (u64, u64) {
    let db = sled::open(cfg.data_dir.join("state")).unwrap();
    let tree = db.open_tree("billing").unwrap();
    let (mut leaves, mut all) = (0u64, 0u64);
    for kv in tree.iter() {
        let (k, v) = kv.unwrap();
        all += (k.len() + v.len()) as u64;
        if k.first() == Some(&b'L') {
            leaves += (k.len() + v.len()) as u64;
        }
    }
    (leaves, all)
}

/// One engine: meters of `aggregation`, one event per subject in the
/// previous day; with `close`, closes that day and reports the figures.
fn run(subjects: usize, aggregation: &str, close: bool) -> f64 {
    let dir = common::temp_dir();
    let mut cfg = common::config(dir.path().join("data"));
    cfg.billing.cycle = "day".into();
    cfg.billing.close_interval = std::time::Duration::from_secs(3600);
    let day = (chrono::Utc::now().timestamp_millis() / DAY) * DAY;
    let clock = Arc::new(FixedClock(AtomicI64::new(day - DAY / 2)));
    let engine = Engine::open(&cfg, clock.clone()).unwrap().engine;
    let handle = engine.handle();
    let rt = common::runtime();
    let rate = rt.block_on(async {
        meters(&handle, aggregation).await;
        ingest(&handle, subjects, day - DAY + 60_000, day - DAY / 2).await
    });
    if close {
        clock.0.store(day + 2 * 3_600_000, Ordering::SeqCst);
        let view = View::new(handle.shared.clone(), None);
        let scan = {
            let tree = handle.shared.store.db.open_tree("billing").unwrap();
            rt.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(1500)).await });
            let t = Instant::now();
            let n = tree.scan_prefix(b"L").count();
            (n, t.elapsed().as_secs_f64())
        };
        peak_rss_reset();
        let before = peak_rss_mib();
        let t = Instant::now();
        rt.block_on(handle.send(CloseBilling {
            watermark_ms: i64::MAX,
        }))
        .unwrap();
        let took = t.elapsed().as_secs_f64();
        println!(
            "close of {subjects} subjects x 3 meters ({} leaves): {took:.2} s, peak RSS {:.0} MiB (before {before:.0}); \
             baseline: a raw scan of those leaves {:.2} s; {}",
            scan.0,
            peak_rss_mib(),
            scan.1,
            common::at_most(took * 1_000_000.0 / subjects as f64, 30.0, "s per million subjects")
        );
        export_figures(&view, &handle, day - DAY);
    }
    drop(handle);
    engine.shutdown().unwrap();
    if close {
        let (leaf_bytes, all) = tree_bytes(&cfg);
        println!(
            "billing tree: {:.0} bytes of leaves per event, {:.0} bytes in all per event (logical key + value bytes)",
            leaf_bytes as f64 / subjects as f64,
            all as f64 / subjects as f64
        );
    }
    rate
}

fn export_figures(view: &View, handle: &EngineHandle, day_start: i64) {
    let reads = view.billing().unwrap();
    let label = chrono::DateTime::from_timestamp_millis(day_start)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    let tree = handle.shared.store.db.open_tree("billing").unwrap();
    let t = Instant::now();
    let raw = tree.scan_prefix(b"S").count();
    let raw_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (mut lines, mut bytes) = (0usize, 0usize);
    let mut out = String::new();
    reads
        .period_statements(&label, |s| {
            keymeter::billing::export::csv_rows(&s, &mut out);
            lines += s.lines.len();
            bytes += out.len();
            out.clear();
            true
        })
        .unwrap();
    let rate = lines as f64 / t.elapsed().as_secs_f64();
    println!(
        "CSV export: {rate:.0} lines/s ({:.1} MB); baseline: a raw scan of the {raw} statements {:.2} s; {}",
        bytes as f64 / 1e6,
        raw_s,
        common::at_least(rate, 300_000.0, "lines/s")
    );
}

fn main() {
    let n = subjects();
    merkle_figures();
    let unbilled = run(n, "MAX", false);
    let billed = run(n, "SUM", true);
    println!(
        "ingest with 3 billed meters: {billed:.0} events/s, {:.0} % of 3 unbilled ones ({unbilled:.0}); {}",
        100.0 * billed / unbilled,
        common::at_least(100.0 * billed / unbilled, 90.0, "%")
    );
}
