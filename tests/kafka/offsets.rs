//! Where consumption starts after retention deleted messages past the
//! log's position.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
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
