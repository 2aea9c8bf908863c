//! Scaling to many subjects (issue 14): the release binary, run as a user
//! runs it, with many live counters.
//!
//! For each configuration (S subjects, N events, G group values, W hour
//! windows; live counters = min(N, S·G·W)) it starts `keymeter serve` on a
//! fresh data directory, creates a SUM meter, and measures:
//! - HTTP ingest of the N events (5,000 a request, 4 clients), events/s;
//!   the first configuration's rate is the baseline of the others;
//! - the server's resident memory empty, after the ingest (2 s settle) and
//!   after a restart, per live counter and per dedup identity (the
//!   configuration with the fewest counters measures the dedup index, and
//!   that share is taken out of the others' per-counter figure);
//! - start-up time (spawn to `/readyz` 200), empty and with the counters;
//! - bytes on disk: sled per counter, log per event, dedup snapshot per
//!   identity;
//! - `keymeter replay` events/s, next to a raw sequential read of the log's
//!   files;
//! - a second meter's backfill, events/s, with a closed loop of 100-event
//!   ingest requests during it next to the same loop alone;
//! - query latency: one random subject's month (×1,000) and the month split
//!   by subject, 1,000 rows a page, for up to 20 pages;
//! - a baseline of the same counter keys written sorted in one sled
//!   `apply_batch` (keys/s, resident and disk bytes per key).
//!
//! Then Kafka ingest (librdkafka's mock cluster, in process) of the same
//! events for the smaller subject counts, and the ratio of their rates.
//! Every figure is printed next to its target; a missed target is printed,
//! not failed. The bench fails only when an answer is wrong.
//!
//! ```sh
//! cargo bench --bench cardinality                  # 1k, 1M and 10M subjects, 10M events each
//! KEYMETER_CARDINALITY_SUBJECTS=1000,1000000 KEYMETER_CARDINALITY_EVENTS=2000000 \
//!   cargo bench --bench cardinality
//! KEYMETER_BENCH_QUICK=1 cargo bench --bench cardinality   # smoke run: 20k events, 100 and 10k subjects
//! ```
//!
//! Also `KEYMETER_CARDINALITY_GROUPS` (G, 1: no `groupBy`),
//! `KEYMETER_CARDINALITY_WINDOWS` (W, 1) and `KEYMETER_CARDINALITY_KAFKA_EVENTS`
//! (1,000,000; 0 skips Kafka). The 10M configuration needs several GB of
//! disk next to `target/`.

mod common;
#[path = "cardinality/disk.rs"]
mod disk;
#[path = "cardinality/load.rs"]
mod load;
#[path = "cardinality/queries.rs"]
mod queries;
#[path = "cardinality/report.rs"]
mod report;
#[path = "cardinality/server.rs"]
mod server;

use std::time::{Duration, Instant};

use common::{kafka_run, ADMIN_KEY};
use load::Shape;
use report::Figures;
use server::{Launch, Server};

/// As the server: the figures compare like with like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The sled cache asked for when the binary has `--store-cache-mb`.
const STORE_CACHE_MB: u64 = 64;

struct Plan {
    events: usize,
    subjects: Vec<usize>,
    groups: usize,
    windows: usize,
    kafka_events: usize,
    subject_queries: usize,
    page_walks: usize,
    probe_time: Duration,
}

fn env_number(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    Some(
        v.replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{name} is a number")),
    )
}

impl Plan {
    fn from_env() -> Plan {
        let quick = common::quick();
        let subjects = match std::env::var("KEYMETER_CARDINALITY_SUBJECTS") {
            Ok(list) => list
                .split(',')
                .map(|s| {
                    s.trim()
                        .replace('_', "")
                        .parse()
                        .expect("KEYMETER_CARDINALITY_SUBJECTS: numbers, comma-separated")
                })
                .collect(),
            Err(_) if quick => vec![100, 10_000],
            Err(_) => vec![1_000, 1_000_000, 10_000_000],
        };
        let windows = env_number("KEYMETER_CARDINALITY_WINDOWS").unwrap_or(1);
        // Events older than the accepted window (35 days) would be refused.
        assert!(
            (1..=800).contains(&windows),
            "KEYMETER_CARDINALITY_WINDOWS: 1 to 800 hours"
        );
        Plan {
            events: env_number("KEYMETER_CARDINALITY_EVENTS").unwrap_or(if quick {
                20_000
            } else {
                10_000_000
            }),
            subjects,
            groups: env_number("KEYMETER_CARDINALITY_GROUPS")
                .unwrap_or(1)
                .max(1),
            windows,
            kafka_events: env_number("KEYMETER_CARDINALITY_KAFKA_EVENTS").unwrap_or(if quick {
                20_000
            } else {
                1_000_000
            }),
            subject_queries: if quick { 100 } else { 1_000 },
            page_walks: if quick { 2 } else { 5 },
            probe_time: Duration::from_secs(if quick { 1 } else { 5 }),
        }
    }
}

fn main() {
    if let Some(dir) = std::env::var_os(disk::READ_CHILD_VAR) {
        return disk::read_child(std::path::Path::new(&dir));
    }
    // As `keymeter serve` runs: the in-process Kafka engine and the sled
    // baseline then compare with the server.
    keymeter::memory::disable_transparent_huge_pages();
    let plan = Plan::from_env();
    let cache_mb = server::serve_has_flag("--store-cache-mb").then_some(STORE_CACHE_MB);
    let store_cache = match cache_mb {
        Some(mb) => format!("--store-cache-mb {mb}"),
        None => "the binary's built-in size (serve has no --store-cache-mb)".to_owned(),
    };
    println!(
        "cardinality: {} events a configuration, subjects {:?}, {} group value(s), {} window(s); sled cache: {store_cache}",
        plan.events, plan.subjects, plan.groups, plan.windows
    );
    let rt = common::runtime();
    let mut all = Vec::new();
    for &subjects in &plan.subjects {
        let shape = Shape::new(plan.events, subjects, plan.groups, plan.windows);
        let figures = run_config(&rt, &plan, shape, cache_mb);
        report::print_config(&figures);
        all.push(figures);
    }
    let kafka = kafka_rates(&plan);
    report::summary(&all, &store_cache, &kafka);
}

/// One configuration, on a data directory deleted at the end.
fn run_config(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    shape: Shape,
    cache_mb: Option<u64>,
) -> Figures {
    println!(
        "\n== {} subjects, {} events, {} group value(s), {} window(s): {} live counters",
        shape.subjects,
        shape.events,
        shape.groups,
        shape.windows,
        shape.counters()
    );
    let dir = common::temp_dir();
    let launch = Launch {
        data_dir: dir.path().join("data"),
        config_file: dir.path().join("keymeter.toml"),
        store_cache_mb: cache_mb,
        log_dir: dir.path().to_owned(),
    };
    server::write_config(&launch.config_file, plan.events + 50_000_000);
    let mut f = ingest_phase(rt, plan, &launch, shape);
    restart_phase(rt, &launch, &shape, &mut f);
    replay_phase(&launch, &mut f);
    backfill_phase(rt, plan, &launch, &shape, &mut f);
    f.sled = disk::sled_baseline(&shape, &dir.path().join("sled-baseline"));
    f
}

/// Start, meter, ingest, memory and queries, stop.
fn ingest_phase(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    launch: &Launch,
    shape: Shape,
) -> Figures {
    let generated = Instant::now();
    let (bodies, generator_eps) = load::prepare(&shape);
    let how = match &bodies {
        load::Bodies::Ready(_) => format!(
            "generated ahead in {:.1} s, not timed",
            generated.elapsed().as_secs_f64()
        ),
        load::Bodies::Streamed(_) => {
            "generated by the clients as they send (too large to hold)".to_owned()
        }
    };
    println!(
        "request bodies: {how}; the generator alone makes {generator_eps:.0} events/s on one core"
    );
    let server = Server::start(launch, "serve-1");
    let base = format!("http://{}", server.addr);
    let client = common::pooled_client(1);
    rt.block_on(create_meter(&client, &base, shape.meter("tokens")));
    std::thread::sleep(Duration::from_millis(500));
    let rss_empty = server.rss();
    let ingest = rt.block_on(load::ingest(&base, shape, bodies));
    println!(
        "ingest: {:.0} events/s ({:.1} s), request p50 {:.1} ms p99 {:.1} ms",
        ingest.events_per_s,
        ingest.secs,
        common::quantile_k(&ingest.latency_us, 0.5),
        common::quantile_k(&ingest.latency_us, 0.99)
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_ingested = server.rss();
    let gauges = rt.block_on(dedup_gauges(&client, &base));
    let total = rt.block_on(queries::total(&client, &base, "tokens", &shape));
    assert_eq!(total, Some(shape.total() as f64), "the meter's total");
    let subject_month = rt.block_on(queries::subject_month(&base, &shape, plan.subject_queries));
    let paged = rt.block_on(queries::grouped(&base, &shape, plan.page_walks));
    let startup_empty_s = server.started_in.as_secs_f64();
    server.stop();
    let gauge = |name: &str| gauges.iter().find(|(k, _)| k == name).map(|g| g.1);
    let mut f = Figures::new(&shape, ingest, subject_month, paged);
    f.identities = gauge("keymeter_dedup_keys").unwrap_or(shape.events as f64);
    f.dedup_bytes_gauge = gauge("keymeter_dedup_bytes");
    (f.rss_empty, f.rss_ingested) = (rss_empty, rss_ingested);
    f.startup_empty_s = startup_empty_s;
    f
}

/// Sizes on disk of the stopped server, then a start over the counters.
fn restart_phase(rt: &tokio::runtime::Runtime, launch: &Launch, shape: &Shape, f: &mut Figures) {
    let state = launch.data_dir.join("state");
    f.sled_bytes = disk::du(&state, Some("dedup.snapshot"));
    f.snapshot_bytes = disk::file_len(&state.join("dedup.snapshot"));
    f.log_bytes = disk::du(&launch.data_dir.join("log"), None);
    let server = Server::start(launch, "serve-2");
    f.rss_restarted = server.rss();
    f.startup_full_s = server.started_in.as_secs_f64();
    println!(
        "start-up: empty {:.2} s, with {} counters {:.2} s",
        f.startup_empty_s, f.counters, f.startup_full_s
    );
    let base = format!("http://{}", server.addr);
    let total = rt.block_on(queries::total(
        &common::pooled_client(1),
        &base,
        "tokens",
        shape,
    ));
    assert_eq!(
        total,
        Some(shape.total() as f64),
        "the meter's total after a restart"
    );
    server.stop();
}

/// A raw read of the log's files, then `keymeter replay`.
fn replay_phase(launch: &Launch, f: &mut Figures) {
    let (bytes, took) = disk::raw_read(&launch.data_dir.join("log"));
    f.raw_read_bytes = bytes;
    f.raw_read_s = took.as_secs_f64();
    f.replay_s = disk::replay(&launch.data_dir, &launch.config_file, &launch.log_dir).as_secs_f64();
}

/// A second meter over every logged event, with ingest probes before and
/// during its count.
fn backfill_phase(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    launch: &Launch,
    shape: &Shape,
    f: &mut Figures,
) {
    let server = Server::start(launch, "serve-3");
    let base = format!("http://{}", server.addr);
    let client = common::pooled_client(1);
    let shape = *shape;
    let alone_from = Instant::now();
    let alone = rt.block_on(load::probe(&base, shape, "alone", || {
        alone_from.elapsed() >= plan.probe_time
    }));
    let (during, backfill) = rt.block_on(async {
        let done = std::sync::atomic::AtomicBool::new(false);
        let count = async {
            let took = backfill(&client, &base, &shape).await;
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            took
        };
        let probes = load::probe(&base, shape, "during", || {
            done.load(std::sync::atomic::Ordering::Relaxed)
        });
        let (took, h) = tokio::join!(count, probes);
        (h, took)
    });
    let totals = rt.block_on(async {
        let a = queries::total(&client, &base, "tokens", &shape).await;
        let b = queries::total(&client, &base, "tokens2", &shape).await;
        (a, b)
    });
    assert!(totals.0.is_some());
    assert_eq!(
        totals.0, totals.1,
        "the backfilled meter counts what the first one does"
    );
    server.stop();
    f.probe_alone = alone;
    f.probe_during = during;
    f.backfill_s = backfill.as_secs_f64();
}

/// Creates `tokens2` and waits until its queries no longer answer
/// METER_BACKFILLING; returns how long that took.
async fn backfill(client: &reqwest::Client, base: &str, shape: &Shape) -> Duration {
    let started = Instant::now();
    let (status, body) = post_meter(client, base, shape.meter("tokens2")).await;
    match status {
        201 => return started.elapsed(),
        202 => assert_eq!(body["backfilling"], true, "{body}"),
        _ => panic!("create tokens2: {status} {body}"),
    }
    while queries::backfilling(client, base, "tokens2", shape).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn post_meter(
    client: &reqwest::Client,
    base: &str,
    meter: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = client
        .post(format!("{base}/api/v1/meters"))
        .bearer_auth(ADMIN_KEY)
        .json(&meter)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

async fn create_meter(client: &reqwest::Client, base: &str, meter: serde_json::Value) {
    let (status, body) = post_meter(client, base, meter).await;
    assert_eq!(status, 201, "create meter: {body}");
}

/// The dedup gauges `/metrics` exports (`keymeter_dedup_*`), printed.
async fn dedup_gauges(client: &reqwest::Client, base: &str) -> Vec<(String, f64)> {
    let r = client
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let gauges: Vec<(String, f64)> = text
        .lines()
        .filter(|l| l.starts_with("keymeter_dedup_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    let shown: Vec<String> = gauges.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("metrics: {}", shown.join(", "));
    gauges
}

/// Kafka ingest rate for each subject count up to the Kafka event count.
fn kafka_rates(plan: &Plan) -> Vec<(usize, f64)> {
    if plan.kafka_events == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (round, &subjects) in plan
        .subjects
        .iter()
        .filter(|&&s| s <= plan.kafka_events)
        .enumerate()
    {
        println!(
            "\n== Kafka (mock cluster, in process): {} events, {subjects} subjects",
            plan.kafka_events
        );
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster
            .create_topic(kafka_run::TOPIC, kafka_run::PARTITIONS, 1)
            .unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let ends = kafka_run::fill(&bootstrap, plan.kafka_events, subjects);
        let eps = kafka_run::consume(&bootstrap, &ends, round);
        println!("keymeter, durable counters: {eps:.0} events/s");
        out.push((subjects, eps));
    }
    out
}
