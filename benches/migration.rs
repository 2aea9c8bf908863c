//! Migrations at fleet scale, in process over loopback HTTP:
//!
//! 1. A fleet of seat licenses is created through the engine (the baseline:
//!    licenses/s of single-license writes, in the same run).
//! 2. Dry run of the whole fleet (target ≤ 5 s for 100,000).
//! 3. One step migrating the whole fleet to a usage plan, seats kept
//!    (target ≥ 20,000 licenses/s), and the rollback of it.
//! 4. Validation latency p99 of 8 clients validating without pause, idle
//!    and during the step (target ≤ 2× idle, same run).
//!
//! `KEYMETER_BENCH_QUICK=1` shrinks the fleet to 5,000 licenses.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{quantile_k as ms, ADMIN_KEY};
use hdrhistogram::Histogram;
use keymeter::config::{Config, RateLimits};
use keymeter::engine::protocol::CreateLicense;
use keymeter::engine::EngineHandle;
use keymeter::license::model::NewLicense;
use keymeter::license::License;
use keymeter::record::{Audit, LicenseSecret};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 8;
const TARGET_APPLY_PER_S: f64 = 20_000.0;
const TARGET_DRY_RUN_S_100K: f64 = 5.0;

async fn call(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let r = client
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{path}: {}",
        r.text().await.unwrap()
    );
    r.json().await.unwrap()
}

/// Creates `n` licenses on `seats@1` through the engine, 256 at a time;
/// returns licenses/s.
async fn create_fleet(handle: &EngineHandle, n: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let handle = handle.clone();
        tasks.spawn(async move {
            let new: NewLicense = serde_json::from_value(
                json!({"product": "cad", "customer": format!("c{i}"), "plan": "seats@1"}),
            )
            .unwrap();
            let id = format!("lic_{i:016x}");
            let license = License::create(id.into(), new, chrono::Utc::now()).unwrap();
            let mut lookup = [0u8; 32];
            lookup[..8].copy_from_slice(&(i as u64).to_be_bytes());
            lookup[8] = 0xb5;
            let request = CreateLicense {
                license: Box::new(license),
                secret: LicenseSecret {
                    lookup,
                    sealed_key: Vec::new(),
                },
                audit: Audit {
                    actor: None,
                    at_ms: 0,
                    request_id: None,
                },
            };
            handle.send(request).await.unwrap().unwrap();
        });
        if tasks.len() >= 256 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Validates the licenses of `keys` round robin until `stop`; latencies in µs.
async fn validator(
    base: String,
    pk: String,
    keys: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    n: usize,
) -> Histogram<u64> {
    let client = common::pooled_client(1);
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        let key = &keys[i % keys.len()];
        i += CLIENTS;
        let t = Instant::now();
        let r = client
            .post(format!("{base}/api/v1/licenses/validate"))
            .bearer_auth(&pk)
            .json(&json!({"key": key, "fingerprint": "bench-host"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    h
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>,
}

fn start_load(base: &str, pk: &str, keys: &Arc<Vec<String>>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..CLIENTS)
        .map(|n| {
            let (b, p, k, s) = (base.to_owned(), pk.to_owned(), keys.clone(), stop.clone());
            tokio::spawn(validator(b, p, k, s, n))
        })
        .collect();
    Load { stop, tasks }
}

async fn stop_load(load: Load) -> Histogram<u64> {
    load.stop.store(true, Ordering::Relaxed);
    common::merge_latencies(load.tasks).await
}

/// Meter, plans, and 64 licenses with keys for the validating clients.
async fn setup(client: &reqwest::Client, base: &str) -> (String, Vec<String>) {
    call(
        client,
        base,
        "/api/v1/meters",
        json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}),
    )
    .await;
    call(
        client,
        base,
        "/api/v1/plans",
        json!({"name": "seats", "policy": {"type": "seat",
        "seats": {"max": 5, "mode": "floating", "lease_ttl_s": 3600}}}),
    )
    .await;
    call(client, base, "/api/v1/plans", json!({"name": "usage", "policy": {"type": "usage",
        "usage": {"quotas": [{"meter": "calls", "limit": 1, "period": "month", "overage": "block"}]}}})).await;
    let mut keys = Vec::new();
    for i in 0..64 {
        let l = call(
            client,
            base,
            "/api/v1/licenses",
            json!({"product": "cad",
            "customer": format!("v{i}"), "plan": "seats@1"}),
        )
        .await;
        keys.push(l["key"].as_str().unwrap().to_owned());
    }
    let k = call(
        client,
        base,
        "/api/v1/api-keys",
        json!({"name": "bench", "scopes": ["validate"]}),
    )
    .await;
    (k["key"].as_str().unwrap().to_owned(), keys)
}

fn main() {
    let n = if common::quick() { 5_000 } else { 100_000 };
    let idle_window = Duration::from_millis(if common::quick() { 500 } else { 3_000 });
    let root = common::temp_dir();
    let cfg = Config {
        rate_limits: RateLimits::OFF,
        ..common::config(root.path().join("data"))
    };
    let engine = common::open_engine(&cfg);
    let handle = engine.handle();
    let runtime = common::runtime();
    runtime.block_on(async {
        let base = format!("http://{}", common::serve_api(&handle, &cfg).await);
        let client = reqwest::Client::new();
        let (pk, keys) = setup(&client, &base).await;
        let keys = Arc::new(keys);
        let create_per_s = create_fleet(&handle, n).await;
        let total = n + keys.len();
        println!("fleet: {total} seat licenses, created at {create_per_s:.0} licenses/s (one per request; the baseline)");

        let load = start_load(&base, &pk, &keys);
        tokio::time::sleep(idle_window).await;
        let idle = stop_load(load).await;

        let m = call(&client, &base, "/api/v1/migrations", json!({"selection": {"product": "cad"},
            "target": "usage@1", "rules": {"seats": "keep", "quotas_from_seats": [
                {"meter": "calls", "per_seat": 1000, "period": "month", "overage": "block"}]}})).await;
        let mid = m["id"].as_str().unwrap().to_owned();
        let t = Instant::now();
        let dry = call(&client, &base, &format!("/api/v1/migrations/{mid}/dry-run?limit=1"), json!({})).await;
        let dry_s = t.elapsed().as_secs_f64();
        assert_eq!(dry["summary"]["convertible"], total);
        let dry_100k = dry_s * 100_000.0 / total as f64;
        println!("dry run: {total} licenses in {dry_s:.2} s ({dry_100k:.2} s per 100,000; {})",
            common::at_most(dry_100k, TARGET_DRY_RUN_S_100K, "s"));

        // The step under load, for the latencies; then rolled back, and the
        // same step again alone, for the rate.
        let apply = format!("/api/v1/migrations/{mid}/apply");
        let load = start_load(&base, &pk, &keys);
        let t = Instant::now();
        let step = call(&client, &base, &apply, json!({"percent": 100})).await;
        let loaded_s = t.elapsed().as_secs_f64();
        let during = stop_load(load).await;
        assert_eq!(step["progress"]["migrated"], total);
        println!("apply under validation load: {total} licenses in {loaded_s:.2} s = {:.0} licenses/s", total as f64 / loaded_s);
        let t = Instant::now();
        call(&client, &base, &format!("/api/v1/migrations/{mid}/rollback"), json!({})).await;
        let rollback_s = t.elapsed().as_secs_f64();
        println!("rollback: {total} licenses in {rollback_s:.2} s = {:.0} licenses/s", total as f64 / rollback_s);
        let t = Instant::now();
        let step = call(&client, &base, &apply, json!({"percent": 100})).await;
        let apply_s = t.elapsed().as_secs_f64();
        assert_eq!(step["progress"]["migrated"], total);
        let apply_per_s = total as f64 / apply_s;
        println!("apply alone: {total} licenses in {apply_s:.2} s = {apply_per_s:.0} licenses/s, {:.1}x the single-license create rate; {}",
            apply_per_s / create_per_s, common::at_least(apply_per_s, TARGET_APPLY_PER_S, "licenses/s"));

        let (p99_idle, p99_step) = (ms(&idle, 0.99), ms(&during, 0.99));
        println!("validation, {CLIENTS} clients: idle {} calls p50 {:.2} ms p99 {p99_idle:.2} ms; during the step {} calls p50 {:.2} ms p99 {p99_step:.2} ms = {:.2}x idle (target <= 2x: {})",
            idle.len(), ms(&idle, 0.5), during.len(), ms(&during, 0.5), p99_step / p99_idle,
            common::met(p99_step <= 2.0 * p99_idle));
    });
    common::shut_down(runtime, handle, engine);
}
