//! What the Kafka tests share: the mock cluster, producing, the workload
//! and what it must count, starting keymeter, waiting on its positions, and
//! reading back what it kept (counters, the log, quarantine, dead letters,
//! the group's committed offsets).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::kafka::{reader, send_retrying};
use crate::common::log_records::ids_in_log;
use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

pub(crate) const TOPIC: &str = "usage-events";
pub(crate) const DLQ: &str = "usage-dead-letters";
pub(crate) const PARTITIONS: i32 = 4;
pub(crate) const GROUP: &str = "keymeter-test";
/// Every valid event's id starts with this, so the log can be searched for it.
pub(crate) const ID_PREFIX: &str = "kev-";

/// One message to produce.
#[derive(Clone)]
pub(crate) struct Msg {
    pub(crate) partition: i32,
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<(&'static str, Vec<u8>)>,
}

/// What the test expects keymeter to count.
#[derive(Default)]
pub(crate) struct Expected {
    /// subject → number of distinct valid events
    pub(crate) calls: BTreeMap<String, u64>,
    pub(crate) tokens: u64,
    pub(crate) seen: HashSet<String>,
    /// (partition, offset) → value of every message that must be quarantined
    pub(crate) rejected: BTreeMap<(i32, i64), Vec<u8>>,
    /// messages produced per partition (= end offset, topics start empty)
    pub(crate) ends: HashMap<i32, i64>,
}

impl Expected {
    pub(crate) fn produced(&mut self, msg: &Msg, valid: Option<(&str, u64)>) {
        let offset = self.ends.entry(msg.partition).or_insert(0);
        match valid {
            Some((id, tokens)) => {
                if self.seen.insert(id.to_owned()) {
                    *self.calls.entry(msg.key.clone()).or_insert(0) += 1;
                    self.tokens += tokens;
                }
            }
            None => {
                self.rejected
                    .insert((msg.partition, *offset), msg.value.clone());
            }
        }
        *offset += 1;
    }

    pub(crate) fn total(&self) -> u64 {
        self.calls.values().sum()
    }
}

pub(crate) fn mock_cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    cluster.create_topic(DLQ, 1, 1).unwrap();
    cluster
}

pub(crate) fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer")
}

/// Produces in order and waits until every message is acknowledged.
pub(crate) fn produce(producer: &BaseProducer, msgs: &[Msg]) {
    for m in msgs {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let record = BaseRecord::to(TOPIC)
            .partition(m.partition)
            .key(&m.key)
            .payload(&m.value)
            .headers(headers);
        send_retrying(producer, record, Duration::from_millis(10));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

pub(crate) fn structured(id: &str, subject: &str, tokens: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": "kafka-test", "type": "api_call",
        "subject": subject, "time": time_from_now(-(tokens as i64 * 1000 % 3_600_000)),
        "data": {"tokens": tokens}
    }))
    .unwrap()
}

pub(crate) const CE_JSON: (&str, &[u8]) = ("content-type", b"application/cloudevents+json");

/// `count` messages: valid events over `subjects` subjects, with 1 %
/// resends of earlier events and `malformed_per_mille` ‰ malformed messages.
/// Ids are unique per `tag`.
pub(crate) fn workload(
    tag: &str,
    count: usize,
    malformed_per_mille: u32,
    seed: u64,
    expected: &mut Expected,
) -> Vec<Msg> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent: Vec<(Msg, String, u64)> = Vec::new();
    let mut out = Vec::with_capacity(count);
    let mut malformed = 0u32;
    let mut resent = 0usize;
    for i in 0..count {
        let roll = rng.gen_range(0..1000u32);
        let msg;
        if roll < malformed_per_mille {
            let subject = format!("cust-{}", rng.gen_range(0..200));
            let value: Vec<u8> = match malformed % 3 {
                0 => vec![0xff, 0xfe, b'x', (i % 250) as u8],
                1 => format!("{{\"specversion\":\"1.0\",\"id\":\"broken-{tag}-{i}\"").into_bytes(),
                _ => serde_json::to_vec(
                    &json!({"specversion": "1.0", "id": format!("nosubj-{tag}-{i}"),
                    "source": "kafka-test", "type": "api_call", "data": {"tokens": 1}}),
                )
                .unwrap(),
            };
            malformed += 1;
            msg = Msg {
                partition: partition_of(&subject),
                key: subject,
                value,
                headers: vec![],
            };
            expected.produced(&msg, None);
        } else if roll < malformed_per_mille + 10 && !sent.is_empty() {
            let (m, id, tokens) = sent[rng.gen_range(0..sent.len())].clone();
            resent += 1;
            msg = m;
            expected.produced(&msg, Some((&id, tokens)));
        } else {
            let subject = format!("cust-{}", rng.gen_range(0..200));
            let id = format!("{ID_PREFIX}{tag}-{i}");
            let tokens = rng.gen_range(1..1000u64);
            msg = Msg {
                partition: partition_of(&subject),
                value: structured(&id, &subject, tokens),
                key: subject,
                headers: if i % 2 == 0 {
                    vec![(CE_JSON.0, CE_JSON.1.to_vec())]
                } else {
                    vec![]
                },
            };
            expected.produced(&msg, Some((&id, tokens)));
            sent.push((msg.clone(), id, tokens));
        }
        out.push(msg);
    }
    assert!(resent > 0 || count < 1000);
    out
}

pub(crate) fn partition_of(subject: &str) -> i32 {
    (subject.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32
}

/// Starts keymeter with its Kafka settings as flags.
pub(crate) async fn start(dir: &std::path::Path, bootstrap: &str, dead_letters: bool) -> Server {
    let mut args = vec![
        "--kafka-brokers",
        bootstrap,
        "--kafka-topic",
        TOPIC,
        "--kafka-group",
        GROUP,
    ];
    if dead_letters {
        args.extend(["--kafka-dead-letter-topic", DLQ]);
    }
    Server::start_with(dir, &args)
}

/// Starts keymeter with its Kafka settings in a TOML file (the path an
/// operator with SASL/SSL properties takes). Short session and reconnect
/// times keep the restart and outage tests quick.
pub(crate) async fn start_with_file(dir: &std::path::Path, bootstrap: &str) -> Server {
    let file = dir.with_extension("toml");
    std::fs::write(
        &file,
        format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopics = [\"{TOPIC}\"]\n\
             group = \"{GROUP}\"\ndead_letter_topic = \"{DLQ}\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\
             \"heartbeat.interval.ms\" = \"500\"\n\"reconnect.backoff.max.ms\" = \"1000\"\n"
        ),
    )
    .unwrap();
    Server::start_with(dir, &["--config", file.to_str().unwrap()])
}

pub(crate) async fn create_meters(server: &Server) {
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    server
        .create_meter(json!({"slug": "tokens", "eventType": "api_call", "aggregation": "SUM", "valueProperty": "$.tokens"}))
        .await;
}

pub(crate) async fn readyz(server: &Server) -> Value {
    server.get_json(ADMIN_KEY, "/readyz").await
}

/// Sum of the stored positions over the assigned partitions.
pub(crate) fn consumed(ready: &Value) -> i64 {
    ready["kafka"]["assignedPartitions"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["position"].as_i64()).sum())
        .unwrap_or(0)
}

/// Waits until the log holds a position past some message; returns the sum.
pub(crate) async fn wait_some_consumed(server: &Server) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = consumed(&readyz(server).await);
        if done > 0 {
            return done;
        }
        assert!(Instant::now() < deadline, "nothing consumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the log's position of every partition is its end offset.
pub(crate) async fn wait_consumed(server: &Server, ends: &HashMap<i32, i64>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let ready = readyz(server).await;
        let positions: HashMap<i64, i64> = ready["kafka"]["assignedPartitions"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        (
                            p["partition"].as_i64().unwrap(),
                            p["position"].as_i64().unwrap_or(-1),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if ends
            .iter()
            .all(|(p, end)| positions.get(&i64::from(*p)) == Some(end))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not consumed in time: positions {positions:?}, ends {ends:?}, readyz {ready}\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn assert_counters(server: &Server, expected: &Expected) {
    let calls = server.query("calls", "groupBy=subject").await;
    let got: BTreeMap<String, u64> = calls["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["subject"].as_str().unwrap().to_owned(),
                row["value"].as_f64().unwrap() as u64,
            )
        })
        .collect();
    assert_eq!(got, expected.calls, "per-subject counts differ");
    let tokens = server.query("tokens", "").await;
    assert_eq!(
        tokens["data"][0]["value"].as_f64().unwrap() as u64,
        expected.tokens
    );
}

/// Every quarantined Kafka message, by (partition, offset).
pub(crate) async fn quarantine(server: &Server) -> BTreeMap<(i32, i64), Value> {
    let mut out = BTreeMap::new();
    let mut after = 0u64;
    loop {
        let page = server
            .get_json(
                ADMIN_KEY,
                &format!("/api/v1/quarantine?limit=1000&after={after}"),
            )
            .await;
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["topic"], TOPIC);
            let key = (
                item["partition"].as_i64().unwrap() as i32,
                item["offset"].as_i64().unwrap(),
            );
            assert!(
                out.insert(key, item.clone()).is_none(),
                "quarantined twice: {key:?}"
            );
        }
        match page["nextAfter"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// Reads the dead-letter topic: (partition, offset) → (value, code).
pub(crate) fn dead_letters(
    bootstrap: &str,
    expect: usize,
) -> BTreeMap<(i32, i64), (Vec<u8>, String)> {
    let consumer = reader(bootstrap, "dlq-reader", DLQ, 1);
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expect && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let header = |name: &str| -> String {
            let h = m.headers().expect("dead letters carry headers");
            let h = h.iter().find(|h| h.key == name).expect(name);
            String::from_utf8(h.value.unwrap().to_vec()).unwrap()
        };
        assert_eq!(header("keymeter-topic"), TOPIC);
        assert!(!header("keymeter-reason").is_empty());
        let key = (
            header("keymeter-partition").parse().unwrap(),
            header("keymeter-offset").parse().unwrap(),
        );
        let value = m.payload().unwrap_or_default().to_vec();
        out.insert(key, (value, header("keymeter-code")));
    }
    out
}

/// Number of partitions an instance holds.
pub(crate) fn assigned(ready: &Value) -> usize {
    ready["kafka"]["assignedPartitions"]
        .as_array()
        .map_or(0, Vec::len)
}

/// Checks event by event that keymeter's log holds every distinct valid
/// event produced exactly once, and no other: a lost event and one counted
/// twice cannot cancel out as they can in a total.
pub(crate) fn assert_each_event_once(server: &Server, expected: &Expected) {
    let in_log = ids_in_log(&server.data_dir.join("log"), ID_PREFIX);
    let twice: Vec<_> = in_log.iter().filter(|(_, seqs)| seqs.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "events in the log more than once: {twice:?}"
    );
    let mut missing: Vec<&String> = expected
        .seen
        .iter()
        .filter(|id| !in_log.contains_key(*id))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {} events missing from the log, e.g. {:?}",
        missing.len(),
        expected.seen.len(),
        &missing[..missing.len().min(10)]
    );
    let unexpected: Vec<&String> = in_log
        .keys()
        .filter(|id| !expected.seen.contains(*id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "events nobody produced: {unexpected:?}"
    );
}

/// The distinct valid events of `msgs` again, as a producer retrying them
/// would send them (same ids, same partitions), `every`th one.
pub(crate) fn resends(msgs: &[Msg], expected: &mut Expected, every: usize) -> Vec<Msg> {
    let mut ids = HashSet::new();
    let out: Vec<Msg> = msgs
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_slice(&m.value).ok()?;
            let id = v["id"].as_str()?.to_owned();
            (id.starts_with(ID_PREFIX) && ids.insert(id.clone())).then(|| (m.clone(), id, v))
        })
        .step_by(every)
        .map(|(m, id, v)| {
            expected.produced(&m, Some((&id, v["data"]["tokens"].as_u64().unwrap())));
            m
        })
        .collect();
    assert!(!out.is_empty());
    out
}

/// The offsets the group has committed to Kafka, by partition (absent:
/// none committed), read without joining the group.
pub(crate) fn group_offsets(bootstrap: &str) -> HashMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Waits until `done` holds for the group's committed offsets; returns them.
pub(crate) async fn wait_group_offsets(
    bootstrap: &str,
    what: &str,
    done: impl Fn(&HashMap<i32, i64>) -> bool,
) -> HashMap<i32, i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let offsets = group_offsets(bootstrap);
        if done(&offsets) {
            return offsets;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: committed offsets {offsets:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Partitions an instance holds, by number.
pub(crate) fn partitions_of(ready: &Value) -> Vec<i32> {
    ready["kafka"]["assignedPartitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["partition"].as_i64().unwrap() as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// `count` valid events with distinct ids over `subjects` subjects (no
/// resends, nothing malformed), so a partition's position in the log is the
/// number of its events there.
pub(crate) fn unique_events(tag: &str, count: usize, expected: &mut Expected) -> Vec<Msg> {
    (0..count)
        .map(|i| {
            let subject = format!("cust-{}", i % 200);
            let id = format!("{ID_PREFIX}{tag}-{i}");
            let tokens = 1 + (i as u64 * 7919) % 1000;
            let msg = Msg {
                partition: partition_of(&subject),
                value: structured(&id, &subject, tokens),
                key: subject,
                headers: vec![],
            };
            expected.produced(&msg, Some((&id, tokens)));
            msg
        })
        .collect()
}
