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
//! - a baseline of the same counter keys (at most 1M of them) written
//!   sorted in one sled `apply_batch` to a fresh tree with a 64 MiB cache:
//!   keys/s, resident bytes per key after it and when a fresh process reads
//!   them back, disk bytes per key.
//!
//! The server runs with `--store-cache-mb 64` when its `serve --help` lists
//! the flag, and with its built-in sled cache otherwise (the summary says
//! which). The start-up and one-subject query targets, which issue 14 sets
//! at 10M counters, are judged at every size and marked so.
//!
//! Then Kafka ingest (librdkafka's mock cluster, in process; the events of
//! `benches/kafka_ingest.rs`) for each subject count up to the Kafka event
//! count, and the ratio of their rates. Every figure is printed next to its
//! target; a missed target is printed, not failed. The bench fails only
//! when an answer is wrong (a total, a subject's value, a status). A server
//! that leaves the machine under a quarter of its memory is killed; during
//! the backfill that is reported as the backfill's figure, elsewhere it
//! fails the run.
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
//! disk next to `target/`. `KEYMETER_CARDINALITY_KEEP=1` keeps each
//! configuration's directory (data and `keymeter.toml`) and prints where,
//! for profiling a replay or a start by hand.

mod common;
#[path = "cardinality/disk.rs"]
mod disk;
#[path = "cardinality/load.rs"]
mod load;
#[path = "cardinality/phases.rs"]
mod phases;
#[path = "cardinality/queries.rs"]
mod queries;
#[path = "cardinality/report.rs"]
mod report;
#[path = "cardinality/server.rs"]
mod server;

use std::time::Duration;

use common::kafka_run;
use load::Shape;
use report::Figures;
use server::Launch;

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
        all.push(run_config(&rt, &plan, shape, cache_mb));
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
    let mut f = phases::ingest(rt, plan, &launch, shape);
    phases::restart(rt, &launch, &shape, &mut f);
    phases::replay(&launch, &mut f);
    phases::backfill(rt, plan, &launch, &shape, &mut f);
    f.sled = disk::sled_baseline(&shape, &dir.path().join("sled-baseline"));
    report::print_sled(&f);
    if std::env::var_os("KEYMETER_CARDINALITY_KEEP").is_some() {
        println!("kept: {}", dir.keep().display());
    }
    f
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
