//! Where consumption starts and what the group's committed offsets say:
//! after retention deleted messages past the log's position, and across
//! rebalances.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::common::kafka::reader;
use crate::common::*;
use crate::support::*;

/// A valid event on partition 0 whose `data` carries `pad_bytes` of padding.
fn padded(tag: &str, i: usize, pad_bytes: usize) -> (Msg, String, u64) {
    let id = format!("{ID_PREFIX}{tag}-{i}");
    let tokens = 1 + i as u64 % 500;
    let value = serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": "kafka-test", "type": "api_call",
        "subject": "cust-p0", "time": time_from_now(0),
        "data": {"tokens": tokens, "pad": "x".repeat(pad_bytes)}
    }))
    .unwrap();
    let msg = Msg {
        partition: 0,
        key: "cust-p0".into(),
        value,
        headers: vec![],
    };
    (msg, id, tokens)
}

/// The mock broker keeps about 5 MiB per partition and deletes the oldest
/// messages beyond that, as retention does. Messages keymeter had not read
/// yet (it was stopped) are deleted past its log's position. On restart it
/// must resume at the earliest message still kept (`auto.offset.reset`
/// defaults to earliest) and count every one of them, not jump to the end
/// of the topic and silently skip them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_past_the_log_position_resumes_at_the_earliest_kept_message() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_file(dir.path(), &bootstrap).await;
    create_meters(&server).await;
    let producer = producer(&bootstrap);
    let mut kept = Expected::default();
    let first: Vec<(Msg, String, u64)> = (0..100).map(|i| padded("old", i, 0)).collect();
    for (m, id, tokens) in &first {
        kept.produced(m, Some((id, *tokens)));
    }
    let msgs: Vec<Msg> = first.iter().map(|(m, _, _)| m.clone()).collect();
    produce(&producer, &msgs);
    wait_consumed(&server, &kept.ends, Duration::from_secs(60)).await;
    server.stop();

    // 7 MB while keymeter is down: retention deletes its position.
    let backlog: Vec<(Msg, String, u64)> = (0..70).map(|i| padded("backlog", i, 100_000)).collect();
    let msgs: Vec<Msg> = backlog.iter().map(|(m, _, _)| m.clone()).collect();
    produce(&producer, &msgs);
    let (low, high) = reader(&bootstrap, "watermarks", TOPIC, 1)
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .unwrap();
    assert!(
        low > 100,
        "retention kept the log's position (start offset {low})"
    );
    assert_eq!(high, 170);
    for (offset, (m, id, tokens)) in (100..).zip(&backlog) {
        if offset >= low {
            kept.produced(m, Some((id, *tokens)));
        }
    }

    let server = start_with_file(dir.path(), &bootstrap).await;
    let after: Vec<(Msg, String, u64)> = (0..10).map(|i| padded("new", i, 0)).collect();
    for (m, id, tokens) in &after {
        kept.produced(m, Some((id, *tokens)));
    }
    let msgs: Vec<Msg> = after.iter().map(|(m, _, _)| m.clone()).collect();
    produce(&producer, &msgs);
    let ends = HashMap::from([(0, high + 10)]);
    wait_consumed(&server, &ends, Duration::from_secs(30)).await;
    assert_each_event_once(&server, &kept);
    server.stop();
}

/// A plain member of keymeter's group: joins, holds what it is given,
/// consumes nothing unless told.
fn member(bootstrap: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    consumer
}

/// Polls `consumer` until the group gives it partitions; returns them.
fn wait_assignment(consumer: &BaseConsumer) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = consumer.poll(Duration::from_millis(100));
        let tpl = consumer.assignment().unwrap();
        if tpl.count() > 0 {
            return tpl.elements().iter().map(|e| e.partition()).collect();
        }
        assert!(Instant::now() < deadline, "the member got no partitions");
    }
}

/// Waits until keymeter holds exactly `n` partitions.
async fn wait_holds(server: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned(&readyz(server).await) != n {
        assert!(Instant::now() < deadline, "{}", readyz(server).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The group's committed offsets are what lag dashboards, and any other
/// reader of the group, go by. Partitions given back to keymeter have its
/// log's position committed at once, even when the member that held them
/// meanwhile committed less and nothing new arrives to be consumed.
///
/// (Positions are also committed when partitions are revoked; the mock
/// broker refuses every commit while a group is rejoining, which a real
/// broker accepts, so that half cannot be observed here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_given_back_have_the_log_position_committed_at_once() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let a = start_with_file(dir.path(), &bootstrap).await;
    create_meters(&a).await;
    let mut expected = Expected::default();
    let msgs = unique_events("g", 4_000, &mut expected);
    produce(&producer(&bootstrap), &msgs);
    wait_consumed(&a, &expected.ends, Duration::from_secs(60)).await;
    let ends = expected.ends.clone();
    wait_group_offsets(&bootstrap, "positions committed as batches land", |o| {
        *o == ends
    })
    .await;

    // Another member takes partitions and commits offsets far behind.
    let b = member(&bootstrap);
    let taken = wait_assignment(&b);
    let mut behind = TopicPartitionList::new();
    for p in &taken {
        behind
            .add_partition_offset(TOPIC, *p, Offset::Offset(0))
            .unwrap();
    }
    b.commit(&behind, CommitMode::Sync).unwrap();
    let rewound = group_offsets(&bootstrap);
    assert!(taken.iter().all(|p| rewound[p] == 0), "{rewound:?}");
    drop(b);

    wait_holds(&a, PARTITIONS as usize).await;
    wait_group_offsets(&bootstrap, "the log's positions are not committed", |o| {
        *o == ends
    })
    .await;
    assert_each_event_once(&a, &expected);
    a.stop();
}
