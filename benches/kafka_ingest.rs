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
//! `KEYMETER_BENCH_EVENTS=N` sets the count; `KEYMETER_BENCH_KAFKA="k=v;k=v"`
//! adds librdkafka properties to keymeter's consumer (e.g.
//! `fetch.queue.backoff.ms=1000` to compare with librdkafka's default).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka;
use keymeter::config::{Config, KafkaConfig};
use keymeter::engine::protocol::{CreateMeter, SourcePositions};
use keymeter::meter::MeterDef;
use keymeter::record::Audit;
use keymeter::source::kafka::KafkaSource;
use keymeter::source::SourceHealth;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// The engine allocates many small, short-lived values per event (parsed
/// JSON, records); mimalloc handles that pattern markedly better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "usage-events";
const PARTITIONS: i32 = 4;

/// Peak resident set size of this process, in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) used so far by each thread of this process,
/// summed by thread name (`/proc/self/task/*/stat`).
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        *out.entry(name).or_insert(0.0) += common::stat_cpu_seconds(&stat);
    }
    out
}

/// Produces `events` structured-mode CloudEvents, keyed by subject, spread
/// over the partitions; returns the end offset of each partition.
fn fill(bootstrap: &str, events: usize) -> HashMap<i32, i64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "100000")
        .set("compression.type", "gzip")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let now = chrono::Utc::now();
    let mut ends = HashMap::new();
    for i in 0..events {
        let subject = format!("customer-{}", (i * 7) % 500);
        let partition = (i % 500 % PARTITIONS as usize) as i32;
        let t = now - chrono::Duration::milliseconds(i as i64 % 3_600_000);
        let value =
            serde_json::to_vec(&common::usage_event(format!("evt-{i}"), &subject, t, i)).unwrap();
        let record = BaseRecord::to(TOPIC)
            .partition(partition)
            .key(&subject)
            .payload(&value);
        kafka::send_retrying(&producer, record, Duration::from_millis(5));
        *ends.entry(partition).or_insert(0i64) += 1;
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    // The mock broker keeps at most 5 MB per partition and silently drops
    // the oldest batches beyond; a truncated topic would measure nothing.
    for p in 0..PARTITIONS {
        let (low, high) = producer
            .client()
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            (low, high),
            (0, ends[&p]),
            "mock partition {p} was truncated"
        );
    }
    ends
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

/// Prints the CPU time each thread spent between two [`cpu_by_thread`]
/// readings, in total and per event.
fn print_cpu(
    who: &str,
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    secs: f64,
    events: i64,
) {
    let mut spent: Vec<(String, f64)> = after
        .iter()
        .map(|(name, t)| (name.clone(), t - before.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, t)| *t >= 0.05)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    let per_event_us = |t: f64| t * 1e6 / events as f64;
    let sum: f64 = spent.iter().map(|(_, t)| t).sum();
    println!(
        "{who} CPU: {sum:.2} s on {secs:.2} s of wall time ({:.2} µs per event)",
        per_event_us(sum)
    );
    for (name, t) in &spent {
        println!(
            "  {name:<20} {t:>6.2} s  {:>5.2} µs/event",
            per_event_us(*t)
        );
    }
}

/// Consumes the topic with keymeter until the log holds every position.
/// The clock starts when the group has assigned the partitions.
fn keymeter(bootstrap: &str, ends: &HashMap<i32, i64>, round: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = KafkaConfig {
        brokers: bootstrap.to_owned(),
        topics: vec![TOPIC.to_owned()],
        group: format!("keymeter-bench-{round}"),
        ..KafkaConfig::default()
    };
    if let Ok(props) = std::env::var("KEYMETER_BENCH_KAFKA") {
        for kv in props.split(';').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').expect("k=v");
            kafka.properties.insert(k.to_owned(), v.to_owned());
        }
    }
    let cfg = Config {
        kafka: Some(kafka.clone()),
        ..common::config(dir.path().to_owned())
    };
    let engine = common::open_engine(&cfg);
    let handle = engine.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for meter in [
        common::tokens_meter(),
        serde_json::json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}),
    ] {
        let def: MeterDef = serde_json::from_value(meter).unwrap();
        let audit = Audit {
            actor: None,
            at_ms: 0,
            request_id: None,
        };
        rt.block_on(handle.send(CreateMeter { def, audit }))
            .unwrap();
    }
    let health = Arc::new(SourceHealth::new());
    let source = KafkaSource::start(&kafka, handle.clone(), health.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while health.positions().len() < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "no assignment: {}",
            health.readiness()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let (accepted_before, batches_before) = {
        let m = keymeter::metrics::metrics();
        (
            m.kafka_messages_total
                .with_label_values(&["accepted"])
                .get(),
            m.kafka_batches_total.with_label_values(&["written"]).get(),
        )
    };
    let cpu_before = cpu_by_thread();
    let clock = Instant::now();
    let total: i64 = ends.values().sum();
    loop {
        let positions = rt.block_on(handle.send(SourcePositions)).unwrap();
        if ends
            .iter()
            .all(|(p, end)| positions.get(&(TOPIC.to_owned(), *p)) == Some(end))
        {
            break;
        }
        assert!(
            clock.elapsed() < Duration::from_secs(600),
            "keymeter did not finish: {positions:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = clock.elapsed().as_secs_f64();
    let cpu_after = cpu_by_thread();
    source.stop();
    print_cpu(
        "keymeter while consuming",
        &cpu_before,
        &cpu_after,
        secs,
        total,
    );
    let m = keymeter::metrics::metrics();
    let accepted = m
        .kafka_messages_total
        .with_label_values(&["accepted"])
        .get();
    assert_eq!(
        (accepted - accepted_before) as i64,
        total,
        "every event counted once"
    );
    println!(
        "keymeter: {} partition batches written",
        m.kafka_batches_total.with_label_values(&["written"]).get() - batches_before
    );
    drop(handle);
    engine.shutdown().unwrap();
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
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let filled = Instant::now();
    let ends = fill(&bootstrap, events);
    let rss_filled = peak_rss_mib();
    println!(
        "kafka_ingest: {events} events over {PARTITIONS} partitions produced in {:.1} s (peak RSS {rss_filled:.0} MiB with the mock broker's copy); transparent huge pages {}",
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
        let km = keymeter(&bootstrap, &ends, round);
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
