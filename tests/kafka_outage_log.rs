//! A Kafka broker that cannot be reached must not flood the log: the
//! outage is logged when it starts, each kind of client warning once per
//! period, not every retry of librdkafka's.

mod common;

use std::time::Duration;

use common::Server;

#[tokio::test]
async fn an_unreachable_broker_logs_a_few_lines_not_one_per_retry() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let brokers = format!("127.0.0.1:{port}");
    let server = Server::start_with_env(
        dir.path(),
        &["--kafka-brokers", &brokers, "--kafka-topic", "usage"],
        &[
            ("KEYMETER_LOG_FORMAT", "json"),
            // librdkafka retries a refused connection every 100 ms at first.
            ("KEYMETER_LOG", "info"),
        ],
    );
    let watched = Duration::from_secs(6);
    tokio::time::sleep(watched).await;
    let stderr = server.stop_and_stderr();
    let kafka_warnings: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("keymeter::source"))
                && (v["level"] == "WARN" || v["level"] == "ERROR")
        })
        .collect();
    println!("{} Kafka warnings in {watched:?}", kafka_warnings.len());
    assert!(
        !kafka_warnings.is_empty(),
        "the outage is reported: {stderr}"
    );
    // Each kind once (librdkafka reports a refused connection under a few
    // facilities, and the client error callback adds its own), not the
    // ~40 a second librdkafka produces.
    assert!(
        kafka_warnings.len() <= 8,
        "{} warnings in {watched:?}: {kafka_warnings:#?}",
        kafka_warnings.len()
    );
}
