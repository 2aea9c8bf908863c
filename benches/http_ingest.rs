//! HTTP batch ingest on loopback: 1,000 CloudEvents per request, several
//! concurrent clients, against the full server (auth, decoding, meter checks,
//! dedup, log append with fdatasync, fold into sled). Prints events/s and
//! request latency, next to a trivial handler on the same server stack that
//! only reads the same bodies, measured in the same run: the two take turns
//! for `KEYMETER_BENCH_ROUNDS` rounds (3), and their medians are compared,
//! with the target next to the figure.
//!
//! `KEYMETER_BENCH_QUICK=1` shrinks it to a smoke run (one round).

mod common;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use common::ADMIN_KEY;
use hdrhistogram::Histogram;

/// The engine allocates many small, short-lived values per event (parsed
/// JSON, records); mimalloc handles that pattern markedly better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS_PER_REQUEST: usize = 1_000;
/// The target for HTTP batch ingest.
const TARGET_EVENTS_PER_S: f64 = 300_000.0;

fn bodies(requests: usize, tag: &str) -> Vec<Bytes> {
    let now = chrono::Utc::now();
    (0..requests)
        .map(|r| {
            let events: Vec<serde_json::Value> = (0..EVENTS_PER_REQUEST)
                .map(|i| {
                    let t = now
                        - chrono::Duration::milliseconds(
                            (r * EVENTS_PER_REQUEST + i) as i64 % 3_600_000,
                        );
                    common::usage_event(
                        format!("{tag}-{r}-{i}"),
                        &format!("customer-{}", (r * 7 + i) % 500),
                        t,
                        i,
                    )
                })
                .collect();
            Bytes::from(serde_json::to_vec(&events).unwrap())
        })
        .collect()
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    common::stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

struct Run {
    cores_busy: f64,
    events_per_s: f64,
    latency_us: Histogram<u64>,
    mb_per_s: f64,
}

async fn drive(url: String, bodies: Vec<Bytes>, concurrency: usize) -> Run {
    let client = common::pooled_client(concurrency);
    let total_bytes: usize = bodies.iter().map(|b| b.len()).sum();
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, queue) = (client.clone(), url.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
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
            }
            h
        }));
    }
    let latency_us = common::merge_latencies(tasks).await;
    // One latency recorded per request.
    let events = latency_us.len() as usize * EVENTS_PER_REQUEST;
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
        common::quantile_k(&r.latency_us, 0.50),
        common::quantile_k(&r.latency_us, 0.99),
        common::max_k(&r.latency_us),
        r.cores_busy,
    );
}

fn main() {
    common::log_from_env();
    // As `keymeter serve` runs.
    keymeter::memory::disable_transparent_huge_pages();
    let requests = if common::quick() { 10 } else { 1_000 };
    let rounds: usize = match std::env::var("KEYMETER_BENCH_ROUNDS") {
        Ok(n) => n.parse().expect("KEYMETER_BENCH_ROUNDS is a number"),
        Err(_) if common::quick() => 1,
        Err(_) => 3,
    };
    let rounds = rounds.max(1);
    let concurrency = std::env::var("KEYMETER_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let dir = common::temp_dir();
    let cfg = common::config(dir.path().to_owned());
    let engine = common::open_engine(&cfg);
    let handle = engine.handle();
    let runtime = common::runtime();
    runtime.block_on(async {
        let api_addr = common::serve_api(&handle, &cfg).await;
        let sink_addr = common::serve(
            axum::Router::new()
                .route(
                    "/sink",
                    post(|b: Bytes| async move {
                        std::hint::black_box(b.len());
                        StatusCode::NO_CONTENT
                    }),
                )
                .layer(axum::extract::DefaultBodyLimit::max(cfg.body_bytes_max)),
        )
        .await;

        let client = reqwest::Client::new();
        let r = client
            .post(format!("http://{api_addr}/api/v1/meters"))
            .bearer_auth(ADMIN_KEY)
            .json(&common::tokens_meter())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);

        println!("HTTP batch ingest, {EVENTS_PER_REQUEST} events/request, {concurrency} concurrent clients, {requests} requests per run");
        // Warm up both paths.
        drive(format!("http://{sink_addr}/sink"), bodies(concurrency, "warm-sink"), concurrency).await;
        drive(format!("http://{api_addr}/api/v1/events"), bodies(concurrency, "warm"), concurrency).await;
        // The machine's speed drifts: the two take turns, and medians are compared.
        let (mut base_rates, mut full_rates) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            println!("-- round {} of {rounds}", round + 1);
            let base = drive(format!("http://{sink_addr}/sink"), bodies(requests, "sink"), concurrency).await;
            print("trivial handler (baseline)", &base);
            let tag = format!("run{round}");
            let full = drive(format!("http://{api_addr}/api/v1/events"), bodies(requests, &tag), concurrency).await;
            print("keymeter ingest", &full);
            base_rates.push(base.events_per_s);
            full_rates.push(full.events_per_s);
        }
        let (base, full) = (common::median(&base_rates), common::median(&full_rates));
        println!("== median of {rounds} rounds");
        println!("trivial handler (baseline)   {base:>10.0} events/s   no target (the server stack alone)");
        println!(
            "keymeter ingest              {full:>10.0} events/s   {}",
            common::at_least(full, TARGET_EVENTS_PER_S, "events/s")
        );
        println!("ratio ingest/baseline        {:>9.1} %", 100.0 * full / base);
    });
    common::shut_down(runtime, handle, engine);
}
