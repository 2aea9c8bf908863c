//! Losing a consumer: a SIGKILL mid-stream, and a second member that takes
//! partitions away and dies. Each ends with every event in the log once,
//! also when the producer retries events already consumed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::log_records::ids_in_log;
use crate::support::*;

/// SIGKILL mid-stream, then the producer retries some events already
/// produced (same ids). The restarted instance resumes at its log's
/// positions: every event is in the log once, the counters are exact, it
/// accepts exactly the events its log did not hold, and it recognises every
/// retry as a duplicate (resuming past them would skip them unseen).
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
    let producer = producer(&bootstrap);
    produce(&producer, &msgs);
    let done = wait_some_consumed(&server).await;
    assert!(done < total, "consumed everything before the kill");
    server.kill(); // SIGKILL: nothing flushed, no offsets committed to Kafka
    let before = ids_in_log(&dir.path().join("log"), ID_PREFIX).len();
    let retried = resends(&msgs, &mut expected, 50);
    produce(&producer, &retried);

    let server = start_with_file(dir.path(), &bootstrap).await;
    wait_consumed(&server, &expected.ends, Duration::from_secs(120)).await;
    assert_each_event_once(&server, &expected);
    assert_counters(&server, &expected).await;
    assert_eq!(quarantine(&server).await.len(), expected.rejected.len());
    let accepted = server
        .metric("keymeter_kafka_messages_total{result=\"accepted\"}")
        .await as usize;
    assert_eq!(
        accepted,
        expected.seen.len() - before,
        "accepted after the restart: the events the log lacked ({before} of {} were in it)",
        expected.seen.len()
    );
    let duplicates = server
        .metric("keymeter_kafka_messages_total{result=\"duplicate\"}")
        .await as usize;
    assert!(
        duplicates >= retried.len(),
        "{duplicates} duplicates seen, {} retries produced after the kill",
        retried.len()
    );
    server.stop();
}

/// Messages per partition in `msgs`.
fn counts(msgs: &[Msg]) -> HashMap<i32, i64> {
    let mut out = HashMap::new();
    for m in msgs {
        *out.entry(m.partition).or_insert(0) += 1;
    }
    out
}

/// A second instance joins the group, takes partitions away mid-stream,
/// commits its own offsets to Kafka, and dies; the producer then retries
/// some events. The first instance must give the revoked partitions up
/// cleanly, get them back, and resume each from the position in its own log
/// (not from the offsets the other committed), so that every event is in
/// its log once.
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
    let first_ends = counts(first);
    let producer = producer(&bootstrap);
    produce(&producer, first);
    wait_some_consumed(&a).await;

    let b = start_with_file(dir_b.path(), &bootstrap).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let held_by_b = loop {
        let (ra, rb) = (readyz(&a).await, readyz(&b).await);
        if assigned(&ra) < PARTITIONS as usize && consumed(&rb) > 0 {
            assert_eq!(
                assigned(&ra) + assigned(&rb),
                PARTITIONS as usize,
                "{ra}\n{rb}"
            );
            break partitions_of(&rb);
        }
        assert!(
            Instant::now() < deadline,
            "no rebalance to the second member: {ra}\n{rb}\n{}",
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    produce(&producer, second);
    // Kill the second member once it has committed offsets into the new
    // messages: its session times out and the first gets everything back.
    wait_group_offsets(&bootstrap, "the second member took no new message", |o| {
        held_by_b
            .iter()
            .any(|p| o.get(p).is_some_and(|c| *c > first_ends[p]))
    })
    .await;
    b.kill();
    let retried = resends(first, &mut expected, 50);
    produce(&producer, &retried);
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
    assert_each_event_once(&a, &expected);
    assert_counters(&a, &expected).await;
    assert_eq!(
        quarantine(&a).await.keys().collect::<Vec<_>>(),
        expected.rejected.keys().collect::<Vec<_>>()
    );
    a.stop();
}
