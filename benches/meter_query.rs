//! Meter query latency through the release binary, as a user runs it: a
//! 1-month `windowSize=HOUR` query over every subject of an HOUR meter with
//! 10,000 subjects (one event per subject per day for 30 days, 300,000
//! counters spread over the month's 720 hours), p50/p99 over repeated
//! queries, the answer checked against the events sent. Beside it, in the
//! same run and on the same server, one subject's month (the floor).
//!
//! `KEYMETER_BENCH_BASELINE_BIN=<path to another keymeter binary>` runs the
//! same workload on that binary too (say, a build of the previous commit),
//! and prints this build's p50 and p99 as ratios of its.
//!
//! `KEYMETER_BENCH_QUICK=1` shrinks it to a smoke run (1,000 subjects,
//! 3 days, 5 queries).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ADMIN_KEY;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const HOUR_MS: i64 = 3_600_000;
const EVENTS_PER_REQUEST: usize = 5_000;

struct Shape {
    subjects: usize,
    days: i64,
    queries: usize,
}

fn shape() -> Shape {
    match common::quick() {
        true => Shape {
            subjects: 1_000,
            days: 3,
            queries: 5,
        },
        false => Shape {
            subjects: 10_000,
            days: 30,
            queries: 40,
        },
    }
}

/// A `keymeter serve` child on a fresh data directory, killed when dropped.
struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: &str) -> Server {
        let dir = common::temp_dir();
        let data = dir.path().join("data");
        let config = dir.path().join("keymeter.toml");
        std::fs::write(
            &config,
            "dedup_keys_max = 2000000\ndedup_tenant_share_pct = 100\n",
        )
        .unwrap();
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--bootstrap-admin-key", ADMIN_KEY])
            .env_remove("KEYMETER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keymeter serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines.next().expect("keymeter serve closed stdout").unwrap();
            if let Some(addr) = line.strip_prefix("keymeter listening on ") {
                break addr.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The month queried: the `days` whole days before the current hour.
fn month(shape: &Shape) -> (i64, i64) {
    let now = chrono::Utc::now().timestamp_millis();
    let to = now - now.rem_euclid(HOUR_MS);
    (to - shape.days * 24 * HOUR_MS, to)
}

/// One event per subject per day, at an hour that varies by subject, so
/// every hour of the month holds counters; value = subject % 10 + 1.
async fn load(client: &reqwest::Client, base: &str, shape: &Shape) -> u64 {
    let meter = json!({"slug": "calls", "eventType": "call", "aggregation": "SUM",
        "valueProperty": "$.n", "windowSize": "HOUR"});
    let r = client
        .post(format!("{base}/api/v1/meters"))
        .bearer_auth(ADMIN_KEY)
        .json(&meter)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create meter: {}", r.status());
    let (from, _) = month(shape);
    let mut events = Vec::with_capacity(EVENTS_PER_REQUEST);
    let mut total = 0;
    for day in 0..shape.days {
        for s in 0..shape.subjects {
            let hour = (s as i64 * 7 + day) % 24;
            let t = from + day * 24 * HOUR_MS + hour * HOUR_MS + 1_000;
            let n = s as u64 % 10 + 1;
            total += n;
            events.push(json!({"specversion": "1.0", "id": format!("{day}-{s}"),
                "source": "bench", "type": "call", "subject": format!("customer-{s:05}"),
                "time": common_time(t), "data": {"n": n}}));
            if events.len() == EVENTS_PER_REQUEST {
                send(client, base, &mut events).await;
            }
        }
    }
    send(client, base, &mut events).await;
    total
}

fn common_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn send(client: &reqwest::Client, base: &str, events: &mut Vec<Value>) {
    if events.is_empty() {
        return;
    }
    let r = client
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(&events).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    events.clear();
}

/// Latencies (µs) of `n` runs of `query`, and the sum of the last answer.
async fn measure(client: &reqwest::Client, url: &str, n: usize) -> (Histogram<u64>, f64) {
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut sum = 0.0;
    for _ in 0..n {
        let started = Instant::now();
        let r = client.get(url).bearer_auth(ADMIN_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        h.record(started.elapsed().as_micros() as u64).unwrap();
        let rows = body["data"].as_array().unwrap();
        sum = rows.iter().map(|r| r["value"].as_f64().unwrap()).sum();
    }
    (h, sum)
}

struct Figures {
    month_p50_ms: f64,
    month_p99_ms: f64,
    one_p50_ms: f64,
}

fn run(bin: &str, label: &str, shape: &Shape) -> Figures {
    let runtime = common::runtime();
    runtime.block_on(async {
        let server = Server::start(bin);
        let client = reqwest::Client::new();
        let loaded = Instant::now();
        let total = load(&client, &server.base, shape).await;
        println!(
            "{label}: {} events over {} subjects loaded in {:.1} s",
            shape.subjects as i64 * shape.days,
            shape.subjects,
            loaded.elapsed().as_secs_f64()
        );
        let (from, to) = month(shape);
        let range = format!(
            "from={}&to={}&windowSize=HOUR",
            urlencode(&common_time(from)),
            urlencode(&common_time(to))
        );
        let url = format!("{}/api/v1/meters/calls/query?{range}", server.base);
        // Warm the store's cache once, as a dashboard's second look would.
        let _ = measure(&client, &url, 1).await;
        let (h, sum) = measure(&client, &url, shape.queries).await;
        assert_eq!(sum, total as f64, "{label}: the month's total");
        let one = format!("{url}&subject=customer-00042");
        let (h1, _) = measure(&client, &one, shape.queries).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let f = Figures {
            month_p50_ms: h.value_at_quantile(0.5) as f64 / 1e3,
            month_p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
            one_p50_ms: h1.value_at_quantile(0.5) as f64 / 1e3,
        };
        println!(
            "{label}: 1-month HOUR query over {} subjects ({} queries): p50 {:.1} ms, p99 {:.1} ms; \
             one subject's month p50 {:.2} ms (ratio {:.0}x)",
            shape.subjects,
            shape.queries,
            f.month_p50_ms,
            f.month_p99_ms,
            f.one_p50_ms,
            f.month_p50_ms / f.one_p50_ms.max(1e-3)
        );
        f
    })
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn main() {
    common::log_from_env();
    let shape = shape();
    let this = run(env!("CARGO_BIN_EXE_keymeter"), "this build", &shape);
    let Ok(baseline) = std::env::var("KEYMETER_BENCH_BASELINE_BIN") else {
        println!("(set KEYMETER_BENCH_BASELINE_BIN to compare with another build)");
        return;
    };
    assert!(Path::new(&baseline).exists(), "no binary at {baseline}");
    let base = run(&baseline, "baseline", &shape);
    println!(
        "this build / baseline: p50 {:.2}, p99 {:.2}",
        this.month_p50_ms / base.month_p50_ms,
        this.month_p99_ms / base.month_p99_ms
    );
}
