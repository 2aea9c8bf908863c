//! Billing closes wait for the Kafka source: while no assigned partition
//! has caught up (here, the brokers are unreachable) a period stays
//! `closing` and says why; once every partition has caught up it closes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::{rfc3339_ms, Server, ADMIN_KEY};
use super::support::{mock_cluster, GROUP, TOPIC};

const DAY: i64 = 86_400_000;

async fn statements(server: &Server) -> usize {
    let feed = server
        .get_json(ADMIN_KEY, "/api/v1/billing/statements")
        .await;
    feed["statements"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_wait_until_every_kafka_partition_has_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("keymeter.toml");
    std::fs::write(
        &cfg,
        "[billing]\ncycle = \"day\"\ngrace = \"1s\"\nclose_interval = \"200ms\"\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let kafka = |brokers: &'static str| {
        [
            "--config",
            cfg,
            "--kafka-brokers",
            brokers,
            "--kafka-topic",
            TOPIC,
            "--kafka-group",
            GROUP,
        ]
    };
    // Nothing listens on the discard port: the source never delivers.
    let server = Server::start_with(&data, &kafka("127.0.0.1:9"));
    server
        .create_meter(json!({"slug": "calls", "eventType": "request", "aggregation": "COUNT"}))
        .await;
    let day_before = chrono::Utc::now().timestamp_millis() - 2 * DAY;
    let event = json!({"specversion": "1.0", "id": "h1", "source": "app", "type": "request",
        "subject": "acme", "time": rfc3339_ms(day_before)});
    assert_eq!(server.ingest(ADMIN_KEY, &[event]).await.status(), 204);
    let label = chrono::DateTime::from_timestamp_millis(day_before)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    tokio::time::sleep(Duration::from_secs(2)).await; // ten close intervals
    let period: Value = server
        .get_json(ADMIN_KEY, &format!("/api/v1/billing/periods/{label}"))
        .await;
    assert_eq!(period["state"], "closing", "{period}");
    assert!(
        period["waitingFor"]
            .as_str()
            .unwrap()
            .contains("not caught up"),
        "{period}"
    );
    assert_eq!(
        statements(&server).await,
        0,
        "a source that delivered nothing holds the close"
    );
    server.stop();

    // A reachable cluster whose partitions are all caught up: it closes.
    let cluster = mock_cluster();
    let bootstrap: &'static str = Box::leak(cluster.bootstrap_servers().into_boxed_str());
    let server = Server::start_with(&data, &kafka(bootstrap));
    let deadline = Instant::now() + Duration::from_secs(60);
    while statements(&server).await == 0 {
        assert!(Instant::now() < deadline, "the period never closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let period: Value = server
        .get_json(ADMIN_KEY, &format!("/api/v1/billing/periods/{label}"))
        .await;
    assert_eq!(period["state"], "closed", "{period}");
    server.stop();
}
