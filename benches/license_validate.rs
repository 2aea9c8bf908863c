//! License validation.
//!
//! 1. In process: the whole decision as the HTTP handler runs it — key digest
//!    lookup, quota usage (memory), seats, the pure decision and the Ed25519
//!    signed JWT — per call, p50/p99 (hdrhistogram), with the signature alone
//!    beside it as the floor.
//! 2. HTTP on loopback, 64 concurrent clients: validations/s and latency
//!    p50/p99/p999 of `POST /api/v1/licenses/validate`, next to a trivial
//!    handler on the same server stack (axum, JSON body in, JSON out) in the
//!    same run. The same calls signed (`Keymeter-Signature`, a fresh nonce
//!    each) by a product that requires signatures show what request signing
//!    costs. The three take turns for three rounds and their medians are
//!    compared; both validate cases are judged against the target, printed
//!    next to each figure. Then the signed calls dated 2 s ahead of the
//!    server clock (their nonces are fsynced to `DATA/signature-nonces`
//!    before the call runs) show what that costs, beside one journal append
//!    and sync alone.
//!
//! `KEYMETER_BENCH_QUICK=1` shrinks it to a smoke run (one round).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Json;
use common::{quantile_k as us, ADMIN_KEY};
use hdrhistogram::Histogram;
use keymeter::config::{Config, RateLimit, RateLimits};
use keymeter::license::Request;
use keymeter::query::View;
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 64;
/// The issue's targets: HTTP validations per second, and the in-process
/// decision's p99 (µs).
const TARGET_VALIDATIONS_PER_S: f64 = 30_000.0;
const TARGET_DECISION_P99_US: f64 = 50.0;

struct Run {
    per_s: f64,
    latency_ns: Histogram<u64>,
}

/// A signing secret id and secret, and how far ahead of now to date the
/// signature: sign every request with a fresh nonce.
type Signer = Option<(&'static str, &'static str, i64)>;

/// Nonces for signatures dated ahead, unique within the run.
static NONCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn signature(sid: &str, secret: &str, ahead_s: i64, body: &[u8]) -> String {
    let path = "/api/v1/licenses/validate";
    if ahead_s == 0 {
        return keymeter_client::signing::sign_request(secret, sid, "POST", path, body);
    }
    let n = NONCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let req = keymeter_client::signing::RequestParts {
        method: "POST",
        path,
        query: "",
        body,
    };
    let t = chrono::Utc::now().timestamp() + ahead_s;
    keymeter_client::signing::sign(secret, sid, t, &format!("bench-nonce-{n:012}"), &req)
        .to_header_value()
}

async fn drive(
    url: String,
    key: &'static str,
    body: Value,
    requests: usize,
    signer: Signer,
) -> Run {
    let client = common::pooled_client(CONCURRENCY);
    let body = Arc::new(serde_json::to_vec(&body).unwrap());
    let per_task = requests / CONCURRENCY;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            for _ in 0..per_task {
                let t = Instant::now();
                let mut req = client
                    .post(&url)
                    .bearer_auth(key)
                    .header("content-type", "application/json");
                if let Some((sid, secret, ahead_s)) = signer {
                    req = req.header("keymeter-signature", signature(sid, secret, ahead_s, &body));
                }
                let r = req.body(body.as_ref().clone()).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let b = r.bytes().await.unwrap();
                std::hint::black_box(b);
                h.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            h
        }));
    }
    let latency_ns = common::merge_latencies(tasks).await;
    Run {
        per_s: (per_task * CONCURRENCY) as f64 / started.elapsed().as_secs_f64(),
        latency_ns,
    }
}

fn print(name: &str, r: &Run) {
    println!(
        "{name:<30} {:>9.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  p999 {:>7.1} µs",
        r.per_s,
        us(&r.latency_ns, 0.50),
        us(&r.latency_ns, 0.99),
        us(&r.latency_ns, 0.999),
    );
}

/// The whole decision as the handler runs it, and the signature alone, per call.
fn in_process(view: &View, key: &str, calls: usize) {
    let entitlements = vec!["pro".to_owned()];
    let request = Request {
        fingerprint: Some("bench-host"),
        entitlements: &entitlements,
        meter: Some("calls"),
    };
    let mut decision = Histogram::<u64>::new(3).unwrap();
    let mut sign_only = Histogram::<u64>::new(3).unwrap();
    let claims = br#"{"iss":"keymeter","sub":"lic_0123456789abcdef","iat":1,"exp":2,"nonce":"n","valid":true,"code":"VALID","entitlements":["pro","sso"],"quota":{"meter":"calls","used":100,"limit":1000000,"period_end":"2026-12-01T00:00:00Z"},"seats":{"used":1,"max":10},"expires_at":"2099-01-01T00:00:00Z"}"#;
    for i in 0..calls + calls / 10 {
        let t = Instant::now();
        let v = view
            .validate_key(key, &request, Some("nonce-1"), chrono::Utc::now(), 300)
            .unwrap();
        let ns = t.elapsed().as_nanos() as u64;
        assert_eq!(v.verdict.code.as_str(), "VALID");
        std::hint::black_box(v);
        let t = Instant::now();
        std::hint::black_box(view.crypto().sign_jwt(claims));
        let sign_ns = t.elapsed().as_nanos() as u64;
        if i >= calls / 10 {
            decision.record(ns).unwrap();
            sign_only.record(sign_ns).unwrap();
        }
    }
    println!("License validation, in process ({calls} calls, one thread)");
    println!(
        "decision incl. signing        p50 {:>6.1} µs  p99 {:>6.1} µs  max {:>7.1} µs   p99 {}",
        us(&decision, 0.5),
        us(&decision, 0.99),
        common::max_k(&decision),
        common::at_most(us(&decision, 0.99), TARGET_DECISION_P99_US, "µs")
    );
    println!(
        "Ed25519 JWT signature alone   p50 {:>6.1} µs  p99 {:>6.1} µs   no target (the floor)",
        us(&sign_only, 0.5),
        us(&sign_only, 0.99)
    );
}

/// The trivial handler, validate and signed validate take turns for `rounds`
/// rounds (the machine's speed drifts); their medians are compared.
async fn compare_http(
    [trivial_url, api_url]: &[String; 2],
    body: &Value,
    requests: usize,
    rounds: usize,
    (product_key, signer): (&'static str, Signer),
) {
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        println!("-- round {} of {rounds}", round + 1);
        let base_run = drive(trivial_url.clone(), ADMIN_KEY, body.clone(), requests, None).await;
        print("trivial handler (baseline)", &base_run);
        let full = drive(api_url.clone(), ADMIN_KEY, body.clone(), requests, None).await;
        print("keymeter validate", &full);
        let signed = drive(api_url.clone(), product_key, body.clone(), requests, signer).await;
        print("keymeter validate, signed", &signed);
        for (rates, run) in rates.iter_mut().zip([&base_run, &full, &signed]) {
            rates.push(run.per_s);
        }
    }
    let [base, full, signed] = rates.map(|r| common::median(&r));
    println!("== median of {rounds} rounds");
    println!(
        "trivial handler (baseline)     {base:>9.0} req/s   no target (the server stack alone)"
    );
    for (name, rate) in [
        ("keymeter validate", full),
        ("keymeter validate, signed", signed),
    ] {
        println!(
            "{name:<30} {rate:>9.0} req/s   {}   {:.1} % of baseline",
            common::at_least(rate, TARGET_VALIDATIONS_PER_S, "validations/s"),
            100.0 * rate / base
        );
    }
    println!("signed/unsigned: {:.1} %", 100.0 * signed / full);
    // Signed calls dated ahead of the server clock: their nonces are
    // fsynced to `DATA/signature-nonces` before the call runs. One sync per
    // call (shared by concurrent calls): fewer calls.
    let ahead_signer = signer.map(|(sid, secret, _)| (sid, secret, 2));
    let ahead_requests = requests.min(CONCURRENCY * 200);
    let ahead = drive(
        api_url.clone(),
        product_key,
        body.clone(),
        ahead_requests,
        ahead_signer,
    )
    .await;
    print("signed, dated 2 s ahead", &ahead);
    println!(
        "dated ahead/signed: {:.1} %   no target",
        100.0 * ahead.per_s / signed
    );
}

/// What a call dated ahead adds when it is alone: one append and fdatasync
/// of `DATA/signature-nonces`.
fn nonce_journal(dir: &std::path::Path, calls: usize) {
    let (journal, _) =
        keymeter::signing_journal::NonceJournal::open(&dir.join("journal-bench"), 0).unwrap();
    let mut stored = Histogram::<u64>::new(3).unwrap();
    for i in 0..calls.min(2_000) as i64 {
        let t = Instant::now();
        journal.record(([7; 32], i), 0).unwrap();
        stored.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    println!(
        "nonce journal append + sync   p50 {:>6.1} µs  p99 {:>6.1} µs   no target (the disk)",
        us(&stored, 0.5),
        us(&stored, 0.99)
    );
}

fn main() {
    common::log_from_env();
    let (calls, requests, rounds) = if common::quick() {
        (2_000, 2_048, 1)
    } else {
        (200_000, 200_000, 3)
    };
    let root = common::temp_dir();
    let cfg = Config {
        // The limiters run on every call but never refuse: the bench
        // measures their cost, not their refusals.
        rate_limits: RateLimits {
            validate_per_api_key: RateLimit::new(u32::MAX, u32::MAX),
            validate_per_license: RateLimit::new(u32::MAX, u32::MAX),
            ..RateLimits::default()
        },
        ..common::config(root.path().join("data"))
    };
    let engine = common::open_engine(&cfg);
    let handle = engine.handle();
    let runtime = common::runtime();
    runtime.block_on(async {
        let api_addr = common::serve_api(&handle, &cfg).await;
        let trivial_addr = common::serve(axum::Router::new().route(
            "/trivial",
            post(|Json(v): Json<Value>| async move {
                Json(json!({"valid": true, "code": "VALID", "echo": v["nonce"]}))
            }),
        ))
        .await;

        // A hybrid license: a floating seat held by this machine and a quota
        // on a meter with usage, so every part of the decision runs.
        let client = reqwest::Client::new();
        let base = format!("http://{api_addr}");
        let post_json = |path: &str, body: Value| {
            let (client, url) = (client.clone(), format!("{base}{path}"));
            async move {
                let r = client.post(url).bearer_auth(ADMIN_KEY).json(&body).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
                r.json::<Value>().await.unwrap_or(Value::Null)
            }
        };
        post_json("/api/v1/meters", json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"})).await;
        let lic = post_json("/api/v1/licenses", json!({"product": "bench", "customer": "acme",
            "entitlements": ["pro", "sso"], "expires_at": "2099-01-01T00:00:00Z",
            "policy": {"type": "hybrid", "seats": {"max": 10, "mode": "floating", "lease_ttl_s": 86400},
                       "usage": {"quotas": [{"meter": "calls", "limit": 1000000, "period": "month", "overage": "block"}]}}})).await;
        let id = lic["id"].as_str().unwrap().to_owned();
        let key: &'static str = Box::leak(lic["key"].as_str().unwrap().to_owned().into_boxed_str());
        post_json(&format!("/api/v1/licenses/{id}/seats"), json!({"fingerprint": "bench-host"})).await;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"specversion": "1.0", "id": format!("e{i}"), "source": "bench", "type": "api_call",
                            "subject": id, "time": now}))
            .collect();
        let r = client
            .post(format!("{base}/api/v1/events"))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);

        // 1. In process.
        in_process(&View::new(handle.shared.clone(), None), key, calls);
        nonce_journal(root.path(), calls);

        // 2. HTTP.
        println!("\nHTTP validation on loopback, {CONCURRENCY} concurrent clients, {requests} requests per run");
        let body = json!({"key": key, "fingerprint": "bench-host", "entitlements": ["pro"], "meter": "calls", "nonce": "n-1"});
        let api_url = format!("{base}/api/v1/licenses/validate");
        let trivial_url = format!("http://{trivial_addr}/trivial");
        // A product that requires signed calls, and an ingest key of it.
        let product = post_json("/api/v1/products", json!({"id": "bench", "requireSignatures": true})).await;
        let leak = |v: &Value| -> &'static str { Box::leak(v.as_str().unwrap().to_owned().into_boxed_str()) };
        let signer = Some((leak(&product["signingSecret"]["id"]), leak(&product["signingSecret"]["secret"]), 0));
        let product_key = leak(&post_json("/api/v1/api-keys",
            json!({"name": "bench", "scopes": ["ingest"], "product": "bench"})).await["key"]);
        // Signatures dated in the server's start second are refused.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        drive(trivial_url.clone(), ADMIN_KEY, body.clone(), CONCURRENCY * 20, None).await;
        drive(api_url.clone(), ADMIN_KEY, body.clone(), CONCURRENCY * 20, None).await;
        let urls = [trivial_url, api_url];
        compare_http(&urls, &body, requests, rounds, (product_key, signer)).await;
    });
    common::shut_down(runtime, handle, engine);
}
