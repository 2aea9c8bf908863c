//! Kafka ingest on librdkafka's mock cluster, shared by the Kafka benches:
//! fill a topic with usage events, then consume it with keymeter's Kafka
//! source into a fresh engine until every position is durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keymeter::config::{Config, KafkaConfig};
use keymeter::engine::protocol::{CreateMeter, SourcePositions};
use keymeter::meter::MeterDef;
use keymeter::record::Audit;
use keymeter::source::kafka::KafkaSource;
use keymeter::source::SourceHealth;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use super::kafka;

pub const TOPIC: &str = "usage-events";
pub const PARTITIONS: i32 = 4;

/// CPU seconds (user + system) used so far by each thread of this process,
/// summed by thread name (`/proc/self/task/*/stat`).
pub fn cpu_by_thread() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
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
        *out.entry(name).or_insert(0.0) += super::stat_cpu_seconds(&stat);
    }
    out
}

/// Prints the CPU time each thread spent between two [`cpu_by_thread`]
/// readings, in total and per event.
pub fn print_cpu(
    who: &str,
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
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

/// Produces `events` structured-mode CloudEvents for `subjects` distinct
/// subjects, keyed by subject, spread over the partitions; returns the end
/// offset of each partition.
pub fn fill(bootstrap: &str, events: usize, subjects: usize) -> HashMap<i32, i64> {
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
        // 7 is prime to the counts used, so that every subject occurs.
        let subject = format!("customer-{}", (i * 7) % subjects);
        let partition = (i % subjects % PARTITIONS as usize) as i32;
        let t = now - chrono::Duration::milliseconds(i as i64 % 3_600_000);
        let value =
            serde_json::to_vec(&super::usage_event(format!("evt-{i}"), &subject, t, i)).unwrap();
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

/// keymeter's consumer configuration for `round` (a fresh group each), with
/// the librdkafka properties of `KEYMETER_BENCH_KAFKA="k=v;k=v"` added.
fn kafka_config(bootstrap: &str, round: usize) -> KafkaConfig {
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
    kafka
}

/// Counts of the Kafka source so far: messages accepted, batches written.
fn source_counts() -> (u64, u64) {
    let m = keymeter::metrics::metrics();
    (
        m.kafka_messages_total
            .with_label_values(&["accepted"])
            .get(),
        m.kafka_batches_total.with_label_values(&["written"]).get(),
    )
}

/// Consumes the topic with keymeter until the log holds every position.
/// The clock starts when the group has assigned the partitions. Returns
/// events/s.
pub fn consume(bootstrap: &str, ends: &HashMap<i32, i64>, round: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let kafka = kafka_config(bootstrap, round);
    let cfg = Config {
        kafka: Some(kafka.clone()),
        ..super::config(dir.path().to_owned())
    };
    let engine = super::open_engine(&cfg);
    let handle = engine.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for meter in [
        super::tokens_meter(),
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
    let (accepted_before, batches_before) = source_counts();
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
    let (accepted, batches) = source_counts();
    assert_eq!(
        (accepted - accepted_before) as i64,
        total,
        "every event counted once"
    );
    println!(
        "keymeter: {} partition batches written",
        batches - batches_before
    );
    drop(handle);
    engine.shutdown().unwrap();
    total as f64 / secs
}
