//! Setup and reporting the benches share, so that their figures are taken
//! and printed the same way.

#[path = "../../tests/common/kafka.rs"]
#[allow(dead_code)]
pub mod kafka;
#[allow(dead_code)]
pub mod kafka_run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use keymeter::api::{router, AppState};
use keymeter::config::Config;
use keymeter::engine::{Engine, EngineHandle, SystemClock};
use serde_json::{json, Value};

#[allow(dead_code)]
pub const ADMIN_KEY: &str = "km_bench_admin_key_0123456789abcdef";

/// `KEYMETER_BENCH_QUICK=1` asks for a short smoke run (CI) instead of a
/// measurement.
pub fn quick() -> bool {
    std::env::var("KEYMETER_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// `KEYMETER_BENCH_LOG=<filter>` logs as `keymeter serve --log-format json`
/// does, to stderr, with that `KEYMETER_LOG` filter: `info` keeps the
/// access log, `info,keymeter::access=off` drops it, so the two runs
/// measure what the access log costs. Unset: nothing is logged.
#[allow(dead_code)]
pub fn log_from_env() {
    if let Ok(filter) = std::env::var("KEYMETER_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init();
    }
}

/// A fresh directory on the disk that holds `target/`, which is what the
/// figures describe (the system temp dir may be memory).
#[allow(dead_code)]
pub fn temp_dir() -> tempfile::TempDir {
    let base = env!("CARGO_TARGET_TMPDIR");
    std::fs::create_dir_all(base).expect("create bench tmp base");
    tempfile::tempdir_in(base).expect("bench temp dir")
}

/// Defaults but the data directory and a known admin key.
#[allow(dead_code)]
pub fn config(data_dir: PathBuf) -> Config {
    Config {
        data_dir,
        bootstrap_admin_key: Some(ADMIN_KEY.into()),
        ..Config::default()
    }
}

#[allow(dead_code)]
pub fn open_engine(cfg: &Config) -> Engine {
    Engine::open(cfg, Arc::new(SystemClock))
        .expect("engine opens")
        .engine
}

#[allow(dead_code)]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Serves `app` on an ephemeral loopback port.
#[allow(dead_code)]
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Serves keymeter's API over `handle`, as `keymeter serve` does.
#[allow(dead_code)]
pub async fn serve_api(handle: &EngineHandle, cfg: &Config) -> SocketAddr {
    serve(router(AppState::new(
        handle.clone(),
        Arc::new(cfg.clone()),
        None,
    )))
    .await
}

/// Stops the servers and then the engine, which flushes what they wrote.
#[allow(dead_code)]
pub fn shut_down(runtime: tokio::runtime::Runtime, handle: EngineHandle, engine: Engine) {
    // Lets the last responses leave before their tasks are dropped.
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
    drop(handle);
    runtime.shutdown_timeout(Duration::from_secs(1));
    engine.shutdown().unwrap();
}

/// A client that keeps a connection per concurrent caller, so that
/// connection setup is not measured.
#[allow(dead_code)]
pub fn pooled_client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap()
}

/// Waits for the client tasks and merges their latencies.
#[allow(dead_code)]
pub async fn merge_latencies(
    tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>,
) -> Histogram<u64> {
    let mut merged = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        merged.add(t.await.unwrap()).unwrap();
    }
    merged
}

/// The value at quantile `q` in a unit 1,000 times the recorded one
/// (recorded µs print as ms, ns as µs).
#[allow(dead_code)]
pub fn quantile_k(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The largest value, in a unit 1,000 times the recorded one.
#[allow(dead_code)]
pub fn max_k(h: &Histogram<u64>) -> f64 {
    h.max() as f64 / 1000.0
}

/// The median of `values` (the upper one of an even count).
#[allow(dead_code)]
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// `target >= 300000 events/s (met)`: the target a figure is judged by,
/// printed next to it.
#[allow(dead_code)]
pub fn at_least(value: f64, target: f64, unit: &str) -> String {
    format!("target >= {target:.0} {unit} ({})", met(value >= target))
}

/// `target <= 50 µs (met)`.
#[allow(dead_code)]
pub fn at_most(value: f64, target: f64, unit: &str) -> String {
    format!("target <= {target:.0} {unit} ({})", met(value <= target))
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// CPU seconds (user + system) in a `/proc/<pid>[/task/<tid>]/stat` line.
#[allow(dead_code)]
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    // The name in parentheses may hold spaces: count fields after the last
    // `)`, where utime and stime (fields 14 and 15) are the 12th and 13th.
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
    // USER_HZ on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// The usage event the ingest benches send: `n` picks its value and model.
#[allow(dead_code)]
pub fn usage_event(
    id: String,
    subject: &str,
    time: chrono::DateTime<chrono::Utc>,
    n: usize,
) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "bench/loadgen",
        "type": "api_call",
        "subject": subject,
        "time": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {"tokens": (n % 977) as f64 + 0.25, "model": if n.is_multiple_of(2) { "small" } else { "large" }}
    })
}

/// The meter the ingest benches fold `usage_event`s into.
#[allow(dead_code)]
pub fn tokens_meter() -> Value {
    json!({"slug": "tokens", "eventType": "api_call", "aggregation": "SUM",
           "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}})
}
