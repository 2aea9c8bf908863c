//! HTTP batch ingest on loopback: 1,000 CloudEvents per request, several
//! concurrent clients, against the full server (auth, decoding, meter checks,
//! dedup, log append with fdatasync, fold into sled). Prints events/s and
//! request latency, next to a trivial handler on the same server stack that
//! only reads the same bodies, measured in the same run.
//!
//! `KEYMETER_BENCH_QUICK=1` shrinks it to a smoke run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use hdrhistogram::Histogram;
use keymeter::api::{router, AppState};
use keymeter::config::Config;
use keymeter::engine::{Engine, SystemClock};

/// The engine allocates many small, short-lived values per event (parsed
/// JSON, records); mimalloc handles that pattern markedly better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_KEY: &str = "km_bench_admin_key_0123456789abcdef";
const EVENTS_PER_REQUEST: usize = 1_000;

fn bodies(requests: usize, tag: &str) -> Vec<Bytes> {
    let now = chrono::Utc::now();
    (0..requests)
        .map(|r| {
            let events: Vec<serde_json::Value> = (0..EVENTS_PER_REQUEST)
                .map(|i| {
                    let t = now - chrono::Duration::milliseconds((r * EVENTS_PER_REQUEST + i) as i64 % 3_600_000);
                    serde_json::json!({
                        "specversion": "1.0",
                        "id": format!("{tag}-{r}-{i}"),
                        "source": "bench/loadgen",
                        "type": "api_call",
                        "subject": format!("customer-{}", (r * 7 + i) % 500),
                        "time": t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        "data": {"tokens": (i % 977) as f64 + 0.25, "model": if i % 2 == 0 { "small" } else { "large" }}
                    })
                })
                .collect();
            Bytes::from(serde_json::to_vec(&events).unwrap())
        })
        .collect()
}

/// CPU seconds (user + system) this process has used, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted after the `)`.
    (ticks(11) + ticks(12)) / 100.0
}

struct Run {
    cores_busy: f64,
    events_per_s: f64,
    latency_us: Histogram<u64>,
    mb_per_s: f64,
}

async fn drive(url: String, bodies: Vec<Bytes>, concurrency: usize) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let total_bytes: usize = bodies.iter().map(|b| b.len()).sum();
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, queue) = (client.clone(), url.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut events = 0usize;
            loop {
                let Some(body) = queue.lock().unwrap().pop() else {
                    break;
                };
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(ADMIN_KEY)
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
                h.record(t.elapsed().as_micros() as u64).unwrap();
                events += EVENTS_PER_REQUEST;
            }
            (h, events)
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3).unwrap();
    let mut events = 0;
    for t in tasks {
        let (h, n) = t.await.unwrap();
        latency_us.add(h).unwrap();
        events += n;
    }
    let secs = started.elapsed().as_secs_f64();
    Run {
        cores_busy: (cpu_seconds() - cpu_started) / secs,
        events_per_s: events as f64 / secs,
        latency_us,
        mb_per_s: total_bytes as f64 / secs / 1e6,
    }
}

fn print(name: &str, r: &Run) {
    println!(
        "{name:<28} {:>10.0} events/s {:>7.1} MB/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  cores busy {:.2}",
        r.events_per_s,
        r.mb_per_s,
        r.latency_us.value_at_quantile(0.50) as f64 / 1000.0,
        r.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        r.latency_us.max() as f64 / 1000.0,
        r.cores_busy,
    );
}

fn main() {
    // As `keymeter serve` runs.
    keymeter::memory::disable_transparent_huge_pages();
    let quick = std::env::var("KEYMETER_BENCH_QUICK").is_ok();
    let requests = if quick { 10 } else { 1_000 };
    let concurrency = std::env::var("KEYMETER_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cfg = Config {
        data_dir: dir.path().to_owned(),
        bootstrap_admin_key: Some(ADMIN_KEY.into()),
        ..Config::default()
    };
    let started = Engine::open(&cfg, Arc::new(SystemClock)).expect("engine opens");
    let engine = started.engine;
    let handle = engine.handle();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let state = AppState::new(handle.clone(), Arc::new(cfg.clone()));
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = api.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(api, router(state)).await.unwrap() });
        let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let sink_router = axum::Router::new()
            .route("/sink", post(|b: Bytes| async move {
                std::hint::black_box(b.len());
                StatusCode::NO_CONTENT
            }))
            .layer(axum::extract::DefaultBodyLimit::max(cfg.body_bytes_max));
        tokio::spawn(async move { axum::serve(sink, sink_router).await.unwrap() });

        let client = reqwest::Client::new();
        let meter = serde_json::json!({"slug": "tokens", "eventType": "api_call", "aggregation": "SUM",
            "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}});
        let r = client
            .post(format!("http://{api_addr}/api/v1/meters"))
            .bearer_auth(ADMIN_KEY)
            .json(&meter)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);

        println!("HTTP batch ingest, {EVENTS_PER_REQUEST} events/request, {concurrency} concurrent clients, {requests} requests per run");
        // Warm up both paths.
        drive(format!("http://{sink_addr}/sink"), bodies(concurrency, "warm-sink"), concurrency).await;
        drive(format!("http://{api_addr}/api/v1/events"), bodies(concurrency, "warm"), concurrency).await;
        let base = drive(format!("http://{sink_addr}/sink"), bodies(requests, "sink"), concurrency).await;
        print("trivial handler (baseline)", &base);
        let full = drive(format!("http://{api_addr}/api/v1/events"), bodies(requests, "run"), concurrency).await;
        print("keymeter ingest", &full);
        println!(
            "ratio ingest/baseline: {:.1} %   target: >= 300000 events/s ({})",
            100.0 * full.events_per_s / base.events_per_s,
            if full.events_per_s >= 300_000.0 { "met" } else { "NOT met" }
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
    drop(handle);
    runtime.shutdown_timeout(Duration::from_secs(1));
    engine.shutdown().unwrap();
}
