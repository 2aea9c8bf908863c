//! `keymeter status` of a server consuming Kafka: the source's state and
//! its lag per partition, read from the running server.

use std::time::{Duration, Instant};

use super::common::{bin, ADMIN_KEY};
use super::support::{
    create_meters, mock_cluster, produce, producer, start, unique_events, wait_consumed, Expected,
    PARTITIONS, TOPIC,
};

fn status(base: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin())
        .args(["status", "--url", base, "--api-key", ADMIN_KEY])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[tokio::test]
async fn status_shows_the_kafka_source_and_its_lag() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &bootstrap, false).await;
    create_meters(&server).await;
    let mut expected = Expected::default();
    produce(
        &producer(&bootstrap),
        &unique_events("st", 200, &mut expected),
    );
    wait_consumed(&server, &expected.ends, Duration::from_secs(60)).await;
    // The lag is refreshed from the brokers every few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (code, text) = status(&server.base);
        assert_eq!(code, Some(0), "{text}");
        let every_partition = (0..PARTITIONS).all(|p| text.contains(&format!("  {TOPIC}/{p}: ")));
        if every_partition {
            break text;
        }
        assert!(Instant::now() < deadline, "no lag reported: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(text.contains("kafka:    connected"), "{text}");
    assert!(
        text.contains("kafka lag: 0 records"),
        "all consumed: {text}"
    );
    for p in 0..PARTITIONS {
        assert!(text.contains(&format!("  {TOPIC}/{p}: 0")), "{text}");
    }
    server.stop();
}
