//! Kafka ingest end to end: a topic on librdkafka's mock cluster, pre-filled
//! with 1,000,000 CloudEvents over 4 partitions, consumed by keymeter until
//! the log's stored positions reach the end offsets (durable counters), next
//! to a bare rdkafka consumer that only receives the same messages, in the
//! same run. Prints events/s for both, the ratio, and peak RSS.
//!
//! Batches are gzip-compressed: librdkafka's mock broker keeps at most 5 MB
//! per partition (the fill asserts nothing was dropped). Both consumers pay
//! the same decompression.
//!
//! Three rounds, each the bare consumer then keymeter (fresh engine, fresh
//! group), and the median round's ratio is the figure.
//!
//! `KEYMETER_BENCH_QUICK=1` shrinks it to one round of ~20k events;
//! `KEYMETER_BENCH_ROUNDS=N` sets the rounds;
//! `KEYMETER_BENCH_EVENTS=N` sets the count; `KEYMETER_BENCH_SUBJECTS=N` the
//! distinct subjects (500); `KEYMETER_BENCH_KAFKA="k=v;k=v"`
//! adds librdkafka properties to keymeter's consumer (e.g.
//! `fetch.queue.backoff.ms=1000` to compare with librdkafka's default).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::kafka;
use common::kafka_run::{self, cpu_by_thread, print_cpu, PARTITIONS, TOPIC};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;

/// The engine allocates many small, short-lived values per event (parsed
/// JSON, records); mimalloc handles that pattern markedly better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Peak resident set size of this process, in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Receives every message with a plain consumer (assigned, no group join)
/// and only touches the payload. Returns events/s.
fn bare(bootstrap: &str, ends: &HashMap<i32, i64>) -> f64 {
    let consumer = kafka::reader(bootstrap, "bare", TOPIC, PARTITIONS);
    let total: i64 = ends.values().sum();
    let (mut received, mut bytes) = (0i64, 0usize);
    let cpu_before = cpu_by_thread();
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    while received < total {
        assert!(
            Instant::now() < deadline,
            "bare consumer stalled at {received}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            bytes += m.payload().map_or(0, <[u8]>::len);
            received += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    print_cpu("bare consumer", &cpu_before, &cpu_by_thread(), secs, total);
    assert!(bytes > 0);
    total as f64 / secs
}

/// The targets: events/s to durable counters, and that rate as a
/// share of the bare consumer's.
const TARGET_EVENTS_PER_S: f64 = 500_000.0;
const TARGET_PERCENT_OF_BARE: f64 = 50.0;

fn main() {
    // As `keymeter serve` runs; it applies to both consumers.
    let thp_off = keymeter::memory::disable_transparent_huge_pages();
    let quick = common::quick();
    let events = match std::env::var("KEYMETER_BENCH_EVENTS") {
        Ok(n) => n.parse().expect("KEYMETER_BENCH_EVENTS is a number"),
        Err(_) if quick => 20_000,
        Err(_) => 1_000_000,
    };
    let subjects: usize = match std::env::var("KEYMETER_BENCH_SUBJECTS") {
        Ok(n) => n.parse().expect("KEYMETER_BENCH_SUBJECTS is a number"),
        Err(_) => 500,
    };
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let filled = Instant::now();
    let ends = kafka_run::fill(&bootstrap, events, subjects);
    let rss_filled = peak_rss_mib();
    println!(
        "kafka_ingest: {events} events ({subjects} subjects) over {PARTITIONS} partitions produced in {:.1} s (peak RSS {rss_filled:.0} MiB with the mock broker's copy); transparent huge pages {}",
        filled.elapsed().as_secs_f64(),
        if thp_off { "off" } else { "left as configured" }
    );
    // The machine's speed drifts between runs, so the two consumers take
    // turns and the median round is the figure.
    let rounds: usize = match std::env::var("KEYMETER_BENCH_ROUNDS") {
        Ok(n) => n.parse().expect("KEYMETER_BENCH_ROUNDS is a number"),
        Err(_) if quick => 1,
        Err(_) => 3,
    };
    let mut results = Vec::new();
    for round in 0..rounds.max(1) {
        println!("-- round {} of {}", round + 1, rounds.max(1));
        let bare = bare(&bootstrap, &ends);
        println!("bare rdkafka consumer         {bare:>10.0} events/s  (receive only)");
        let km = kafka_run::consume(&bootstrap, &ends, round);
        println!(
            "keymeter, durable counters    {km:>10.0} events/s  (decode, dedup, log fsync, fold)   {}",
            common::at_least(km, TARGET_EVENTS_PER_S, "events/s")
        );
        println!(
            "ratio keymeter / bare          {:>9.1} %   {}",
            km / bare * 100.0,
            common::at_least(km / bare * 100.0, TARGET_PERCENT_OF_BARE, "%")
        );
        results.push((km / bare, km, bare));
    }
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, km, bare) = results[results.len() / 2];
    println!("== median of {} rounds", results.len());
    println!("bare rdkafka consumer         {bare:>10.0} events/s   no target (receive only)");
    println!(
        "keymeter, durable counters    {km:>10.0} events/s   {}",
        common::at_least(km, TARGET_EVENTS_PER_S, "events/s")
    );
    println!(
        "ratio keymeter / bare          {:>9.1} %   {}",
        ratio * 100.0,
        common::at_least(ratio * 100.0, TARGET_PERCENT_OF_BARE, "%")
    );
    println!(
        "peak RSS                       {:>9.0} MiB (process: mock broker + producer + consumers + engine; {:.0} MiB after filling)",
        peak_rss_mib(),
        rss_filled
    );
}
