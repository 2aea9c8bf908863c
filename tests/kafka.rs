//! Kafka ingestion end to end: the real binary consumes from librdkafka's
//! built-in mock cluster. Expectations are computed here, independently of
//! keymeter, from what the test produced.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::kafka::{reader, send_retrying};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const TOPIC: &str = "usage-events";
const DLQ: &str = "usage-dead-letters";
const PARTITIONS: i32 = 4;

/// One message to produce.
#[derive(Clone)]
struct Msg {
    partition: i32,
    key: String,
    value: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

/// What the test expects keymeter to count.
#[derive(Default)]
struct Expected {
    /// subject → number of distinct valid events
    calls: BTreeMap<String, u64>,
    tokens: u64,
    seen: HashSet<String>,
    /// (partition, offset) → value of every message that must be quarantined
    rejected: BTreeMap<(i32, i64), Vec<u8>>,
    /// messages produced per partition (= end offset, topics start empty)
    ends: HashMap<i32, i64>,
}

impl Expected {
    fn produced(&mut self, msg: &Msg, valid: Option<(&str, u64)>) {
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

    fn total(&self) -> u64 {
        self.calls.values().sum()
    }
}

fn mock_cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    cluster.create_topic(DLQ, 1, 1).unwrap();
    cluster
}

fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer")
}

/// Produces in order and waits until every message is acknowledged.
fn produce(producer: &BaseProducer, msgs: &[Msg]) {
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

fn structured(id: &str, subject: &str, tokens: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": "kafka-test", "type": "api_call",
        "subject": subject, "time": time_from_now(-(tokens as i64 * 1000 % 3_600_000)),
        "data": {"tokens": tokens}
    }))
    .unwrap()
}

const CE_JSON: (&str, &[u8]) = ("content-type", b"application/cloudevents+json");

/// `count` messages: valid events over `subjects` subjects, with 1 %
/// resends of earlier events and `malformed_per_mille` ‰ malformed messages.
/// Ids are unique per `tag`.
fn workload(
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
            let id = format!("{tag}-{i}");
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

fn partition_of(subject: &str) -> i32 {
    (subject.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32
}

/// Starts keymeter with its Kafka settings as flags.
async fn start(dir: &std::path::Path, bootstrap: &str, dead_letters: bool) -> Server {
    let mut args = vec![
        "--kafka-brokers",
        bootstrap,
        "--kafka-topic",
        TOPIC,
        "--kafka-group",
        "keymeter-test",
    ];
    if dead_letters {
        args.extend(["--kafka-dead-letter-topic", DLQ]);
    }
    Server::start_with(dir, &args)
}

/// Starts keymeter with its Kafka settings in a TOML file (the path an
/// operator with SASL/SSL properties takes). Short session and reconnect
/// times keep the restart and outage tests quick.
async fn start_with_file(dir: &std::path::Path, bootstrap: &str) -> Server {
    let file = dir.with_extension("toml");
    std::fs::write(
        &file,
        format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopics = [\"{TOPIC}\"]\n\
             group = \"keymeter-test\"\ndead_letter_topic = \"{DLQ}\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\
             \"heartbeat.interval.ms\" = \"500\"\n\"reconnect.backoff.max.ms\" = \"1000\"\n"
        ),
    )
    .unwrap();
    Server::start_with(dir, &["--config", file.to_str().unwrap()])
}

async fn create_meters(server: &Server) {
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    server
        .create_meter(json!({"slug": "tokens", "eventType": "api_call", "aggregation": "SUM", "valueProperty": "$.tokens"}))
        .await;
}

async fn readyz(server: &Server) -> Value {
    server.get_json(ADMIN_KEY, "/readyz").await
}

/// Sum of the stored positions over the assigned partitions.
fn consumed(ready: &Value) -> i64 {
    ready["kafka"]["assignedPartitions"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["position"].as_i64()).sum())
        .unwrap_or(0)
}

/// Waits until the log holds a position past some message; returns the sum.
async fn wait_some_consumed(server: &Server) -> i64 {
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
async fn wait_consumed(server: &Server, ends: &HashMap<i32, i64>, limit: Duration) {
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

async fn assert_counters(server: &Server, expected: &Expected) {
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
async fn quarantine(server: &Server) -> BTreeMap<(i32, i64), Value> {
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
fn dead_letters(bootstrap: &str, expect: usize) -> BTreeMap<(i32, i64), (Vec<u8>, String)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_events_with_duplicates_and_malformed_count_exactly() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &bootstrap, true).await;
    create_meters(&server).await;
    let mut expected = Expected::default();
    let msgs = workload("a", 100_000, 5, 1, &mut expected);
    assert_eq!(msgs.len(), 100_000);
    assert!(
        (400..600).contains(&expected.rejected.len()),
        "{}",
        expected.rejected.len()
    );
    produce(&producer(&bootstrap), &msgs);
    wait_consumed(&server, &expected.ends, Duration::from_secs(150)).await;
    assert_counters(&server, &expected).await;
    assert!(expected.total() > 97_000, "{}", expected.total());

    let quarantined = quarantine(&server).await;
    assert_eq!(
        quarantined.keys().collect::<Vec<_>>(),
        expected.rejected.keys().collect::<Vec<_>>(),
        "the quarantine must hold exactly the malformed messages, at their offsets"
    );
    let mut not_utf8 = 0;
    for (key, value) in &expected.rejected {
        let item = &quarantined[key];
        assert_eq!(item["origin"], "kafka");
        // The quarantine keeps the exact bytes, also of a value that is not
        // UTF-8 (shown base64-encoded).
        let raw = item["raw"].as_str().unwrap();
        let raw = match item["rawEncoding"].as_str().unwrap() {
            "utf8" => raw.as_bytes().to_vec(),
            "base64" => {
                use base64::Engine as _;
                not_utf8 += 1;
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .unwrap()
            }
            other => panic!("rawEncoding {other}"),
        };
        assert_eq!(&raw, value, "exact bytes in the quarantine for {key:?}");
        let code = item["code"].as_str().unwrap();
        assert!(
            ["MALFORMED_JSON", "MISSING_FIELD"].contains(&code),
            "{code}"
        );
    }
    assert!(
        not_utf8 > 0
            && not_utf8
                == expected
                    .rejected
                    .values()
                    .filter(|v| std::str::from_utf8(v).is_err())
                    .count(),
        "non-UTF-8 messages are quarantined as bytes ({not_utf8})"
    );
    let dlq = dead_letters(&bootstrap, expected.rejected.len());
    assert_eq!(
        dlq.keys().collect::<Vec<_>>(),
        expected.rejected.keys().collect::<Vec<_>>(),
        "the dead-letter topic must hold exactly the malformed messages"
    );
    for (key, (value, code)) in &dlq {
        assert_eq!(value, &expected.rejected[key], "exact bytes for {key:?}");
        assert_eq!(code, quarantined[key]["code"].as_str().unwrap());
    }
    let metrics = server.metrics_text().await;
    assert!(metrics.contains(&format!(
        "keymeter_kafka_messages_total{{result=\"rejected\"}} {}",
        expected.rejected.len()
    )));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_restarts_from_the_log_and_counts_exactly() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_file(dir.path(), &bootstrap).await;
    create_meters(&server).await;
    let mut expected = Expected::default();
    let msgs = workload("b", 40_000, 5, 2, &mut expected);
    let total: i64 = expected.ends.values().sum();
    produce(&producer(&bootstrap), &msgs);
    let done = wait_some_consumed(&server).await;
    assert!(done < total, "consumed everything before the kill");
    server.kill(); // SIGKILL: nothing flushed, no offsets committed to Kafka

    let server = start_with_file(dir.path(), &bootstrap).await;
    wait_consumed(&server, &expected.ends, Duration::from_secs(120)).await;
    assert_counters(&server, &expected).await;
    assert_eq!(quarantine(&server).await.len(), expected.rejected.len());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_reported_and_consumption_resumes_exactly() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_file(dir.path(), &bootstrap).await;
    create_meters(&server).await;
    let mut expected = Expected::default();
    let msgs = workload("c", 30_000, 5, 3, &mut expected);
    let (first, second) = msgs.split_at(15_000);
    let producer = producer(&bootstrap);
    produce(&producer, first);
    wait_some_consumed(&server).await;
    cluster.broker_down(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = readyz(&server).await;
        if ready["kafka"]["state"] == "disconnected" {
            assert!(
                ready["kafka"]["lastError"]["message"].is_string(),
                "{ready}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "outage not reported: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Queries keep working while the brokers are gone.
    server.query("calls", "").await;
    cluster.broker_up(1).unwrap();
    produce(&producer, second);
    wait_consumed(&server, &expected.ends, Duration::from_secs(120)).await;
    assert_counters(&server, &expected).await;
    assert_eq!(
        quarantine(&server).await.keys().collect::<Vec<_>>(),
        expected.rejected.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        dead_letters(&bootstrap, expected.rejected.len()).len(),
        expected.rejected.len()
    );
    assert_eq!(readyz(&server).await["kafka"]["state"], "connected");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_structured_modes_count_and_binary_without_ce_id_is_quarantined() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &bootstrap, true).await;
    create_meters(&server).await;
    let binary = |id: Option<&str>, tokens: u64| {
        let mut headers = vec![
            ("ce_specversion", b"1.0".to_vec()),
            ("ce_source", b"kafka-test".to_vec()),
            ("ce_type", b"api_call".to_vec()),
            ("ce_subject", b"cust-bin".to_vec()),
            ("ce_time", time_from_now(-1000).into_bytes()),
            ("content-type", b"application/json".to_vec()),
        ];
        if let Some(id) = id {
            headers.push(("ce_id", id.as_bytes().to_vec()));
        }
        Msg {
            partition: 1,
            key: "cust-bin".into(),
            value: serde_json::to_vec(&json!({"tokens": tokens})).unwrap(),
            headers,
        }
    };
    let msgs = vec![
        Msg {
            partition: 1,
            key: "cust-bin".into(),
            value: structured("s-1", "cust-bin", 10),
            headers: vec![(CE_JSON.0, CE_JSON.1.to_vec())],
        },
        binary(Some("b-1"), 20),
        binary(None, 40),
        Msg {
            partition: 1,
            key: "cust-bin".into(),
            value: structured("s-2", "cust-bin", 100),
            headers: vec![],
        },
        binary(Some("b-2"), 200),
        binary(Some("b-1"), 20), // a resend in binary mode
    ];
    produce(&producer(&bootstrap), &msgs);
    let ends = HashMap::from([(1, msgs.len() as i64)]);
    wait_consumed(&server, &ends, Duration::from_secs(60)).await;
    let calls = server.query("calls", "subject=cust-bin").await;
    assert_eq!(calls["data"][0]["value"], 4.0, "{calls}");
    let tokens = server.query("tokens", "subject=cust-bin").await;
    assert_eq!(tokens["data"][0]["value"], 330.0, "{tokens}");
    let q = quarantine(&server).await;
    assert_eq!(q.keys().collect::<Vec<_>>(), vec![&(1, 2)]);
    let item = &q[&(1, 2)];
    assert_eq!(item["code"], "MISSING_FIELD");
    assert!(
        item["message"].as_str().unwrap().contains("ce_id"),
        "{item}"
    );
    let dlq = dead_letters(&bootstrap, 1);
    assert_eq!(dlq[&(1, 2)].1, "MISSING_FIELD");
    assert_eq!(dlq[&(1, 2)].0, msgs[2].value);
    server.stop();
}

/// Number of partitions an instance holds.
fn assigned(ready: &Value) -> usize {
    ready["kafka"]["assignedPartitions"]
        .as_array()
        .map_or(0, Vec::len)
}

/// A second instance joins the group, takes partitions away mid-stream,
/// commits its own offsets to Kafka, and dies. The first instance must give
/// the revoked partitions up cleanly, get them back, and resume each from
/// the position in its own log (not from the offsets the other committed),
/// so that its counters end exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_to_a_second_member_and_back_resumes_from_the_log_exactly() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = start_with_file(dir_a.path(), &bootstrap).await;
    create_meters(&a).await;
    let mut expected = Expected::default();
    let msgs = workload("r", 60_000, 5, 4, &mut expected);
    let (first, second) = msgs.split_at(20_000);
    let producer = producer(&bootstrap);
    produce(&producer, first);
    wait_some_consumed(&a).await;

    let b = start_with_file(dir_b.path(), &bootstrap).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ra, rb) = (readyz(&a).await, readyz(&b).await);
        if assigned(&ra) < PARTITIONS as usize && consumed(&rb) > 0 {
            assert_eq!(
                assigned(&ra) + assigned(&rb),
                PARTITIONS as usize,
                "{ra}\n{rb}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rebalance to the second member: {ra}\n{rb}\n{}",
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&producer, second);
    // Let the second member take some of the new messages too, then kill it:
    // its session times out and the first member is given everything back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned(&readyz(&a).await) < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "partitions not given back: {}",
            readyz(&a).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_consumed(&a, &expected.ends, Duration::from_secs(120)).await;
    assert_counters(&a, &expected).await;
    assert_eq!(
        quarantine(&a).await.keys().collect::<Vec<_>>(),
        expected.rejected.keys().collect::<Vec<_>>()
    );
    a.stop();
}
