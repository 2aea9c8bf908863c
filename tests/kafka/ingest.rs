//! Steady ingestion: volume with duplicates and malformed messages, both
//! CloudEvents modes, a broker outage.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;
use serde_json::json;

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
