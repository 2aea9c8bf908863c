//! Bad input gets a precise answer, loses nothing already accepted, and ends
//! up in the quarantine with its reason.

mod common;

use common::*;
use serde_json::{json, Value};

async fn post_raw(server: &Server, ct: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = server.post_events(ADMIN_KEY, ct, body).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn total(server: &Server) -> f64 {
    server.total("units", "").await
}

fn ev(id: &str, data: Value) -> Value {
    event(id, "usage", "acme", &time_from_now(-1000), data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_defect_gets_its_code_and_good_events_survive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--request-events-max", "50", "--body-bytes-max", "65536"],
    );
    server
        .create_meter(json!({"slug": "units", "eventType": "usage", "aggregation": "SUM", "valueProperty": "$.units", "strict": true}))
        .await;
    let ce = "application/cloudevents+json";

    let (s, b) = post_raw(&server, ce, "{\"id\": ").await;
    assert_eq!((s, b["code"].as_str().unwrap()), (400, "MALFORMED_JSON"));

    let mut missing = ev("m1", json!({"units": 1}));
    missing.as_object_mut().unwrap().remove("subject");
    let (s, b) = post_raw(&server, ce, missing.to_string()).await;
    assert_eq!((s, b["code"].as_str().unwrap()), (400, "MISSING_FIELD"));
    assert!(b["message"].as_str().unwrap().contains("subject"));

    let mut spec = ev("s1", json!({"units": 1}));
    spec["specversion"] = json!("0.3");
    let (s, b) = post_raw(&server, ce, spec.to_string()).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (400, "UNSUPPORTED_SPECVERSION")
    );

    let (s, b) = post_raw(&server, ce, ev("v1", json!({"other": 1})).to_string()).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (400, "VALUE_PROPERTY_MISSING")
    );
    let (s, b) = post_raw(&server, ce, ev("v2", json!({"units": "many"})).to_string()).await;
    assert_eq!((s, b["code"].as_str().unwrap()), (400, "VALUE_NOT_NUMERIC"));

    let mut old = ev("t1", json!({"units": 1}));
    old["time"] = json!(time_from_now(-36 * 86_400_000));
    let (s, b) = post_raw(&server, ce, old.to_string()).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (400, "EVENT_TIME_OUT_OF_RANGE")
    );
    let mut future = ev("t2", json!({"units": 1}));
    future["time"] = json!(time_from_now(10 * 60_000));
    let (s, b) = post_raw(&server, ce, future.to_string()).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (400, "EVENT_TIME_OUT_OF_RANGE")
    );

    // A strict meter refuses what it cannot read (a meter that is not
    // strict skips such an event, see tests/lenient_meters.rs).
    // A mixed batch: good events are accepted durably, bad ones reported by index.
    let batch = vec![
        ev("g1", json!({"units": 2.5})),
        ev("b1", json!({"units": true})),
        ev("g2", json!({"units": "4"})),
        json!({"specversion": "1.0", "id": "b2"}),
        ev("g1", json!({"units": 2.5})),
    ];
    let (s, b) = post_raw(
        &server,
        "application/cloudevents-batch+json",
        serde_json::to_vec(&batch).unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["code"], "INVALID_EVENTS");
    assert_eq!(b["accepted"], 2);
    assert_eq!(b["duplicates"], 1);
    let rejected: Vec<(u64, String)> = b["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, "VALUE_NOT_NUMERIC".to_owned()),
            (3, "MISSING_FIELD".to_owned())
        ]
    );
    assert_eq!(total(&server).await, 6.5);

    // Resending the whole batch is safe: nothing is counted twice.
    let (s, b) = post_raw(
        &server,
        "application/cloudevents-batch+json",
        serde_json::to_vec(&batch).unwrap(),
    )
    .await;
    assert_eq!((s, b["accepted"].as_u64()), (400, Some(0)));
    assert_eq!(total(&server).await, 6.5);

    // Limits: too many events, too many bytes, wrong media type.
    let many: Vec<Value> = (0..51)
        .map(|i| ev(&format!("x{i}"), json!({"units": 1})))
        .collect();
    let (s, b) = post_raw(
        &server,
        "application/cloudevents-batch+json",
        serde_json::to_vec(&many).unwrap(),
    )
    .await;
    assert_eq!((s, b["code"].as_str().unwrap()), (413, "BATCH_TOO_LARGE"));
    let big = ev("big", json!({"units": 1, "pad": "x".repeat(70_000)}));
    let (s, b) = post_raw(&server, ce, big.to_string()).await;
    assert_eq!((s, b["code"].as_str().unwrap()), (413, "PAYLOAD_TOO_LARGE"));
    let (s, b) = post_raw(&server, "text/plain", "hello").await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (415, "UNSUPPORTED_MEDIA_TYPE")
    );
    assert_eq!(total(&server).await, 6.5);

    // Every rejected input is in the quarantine, in order, with its reason and raw text.
    let q = server.get_json(ADMIN_KEY, "/api/v1/quarantine").await;
    let codes: Vec<&str> = q["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        vec![
            "MALFORMED_JSON",
            "MISSING_FIELD",
            "UNSUPPORTED_SPECVERSION",
            "VALUE_PROPERTY_MISSING",
            "VALUE_NOT_NUMERIC",
            "EVENT_TIME_OUT_OF_RANGE",
            "EVENT_TIME_OUT_OF_RANGE",
            "VALUE_NOT_NUMERIC",
            "MISSING_FIELD",
            "VALUE_NOT_NUMERIC",
            "MISSING_FIELD",
        ]
    );
    assert_eq!(q["items"][0]["raw"], "{\"id\": ");
    assert_eq!(q["items"][7]["index"], 1);
    // Paging by sequence number.
    let first = q["items"][4]["seq"].as_u64().unwrap();
    let page = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/quarantine?after={first}&limit=2"),
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["code"], "EVENT_TIME_OUT_OF_RANGE");

    // The rejections are counted by reason.
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("keymeter_events_rejected_total{reason=\"VALUE_NOT_NUMERIC\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("keymeter_events_duplicate_total 4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_meters_and_queries_are_refused_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let bad = [
        json!({"slug": "Bad Slug", "eventType": "x", "aggregation": "COUNT"}),
        json!({"slug": "s", "eventType": "x", "aggregation": "SUM"}),
        json!({"slug": "s", "eventType": "x", "aggregation": "MEDIAN", "valueProperty": "$.v"}),
        json!({"slug": "s", "eventType": "x", "aggregation": "SUM", "valueProperty": "$..v"}),
    ];
    for m in bad {
        let r = server.post_json(ADMIN_KEY, "/api/v1/meters", &m).await;
        assert_eq!(r.status(), 400, "{m}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["code"], "INVALID_METER", "{m}");
    }
    server
        .create_meter(
            json!({"slug": "s", "eventType": "x", "aggregation": "COUNT", "windowSize": "HOUR"}),
        )
        .await;
    let r = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/meters",
            &json!({"slug": "s", "eventType": "y", "aggregation": "COUNT"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    for (q, code) in [
        ("windowSize=MINUTE", "INVALID_WINDOW_SIZE"),
        ("windowSize=WEEK", "INVALID_QUERY"),
        ("from=yesterday", "INVALID_QUERY"),
        ("from=2026-01-01T00:30:00Z", "INVALID_QUERY"),
        ("groupBy=region", "INVALID_GROUP_BY"),
        ("colour=red", "INVALID_QUERY"),
    ] {
        let r = server
            .get(ADMIN_KEY, &format!("/api/v1/meters/s/query?{q}"))
            .await;
        assert_eq!(r.status(), 400, "{q}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["code"], code, "{q}: {b}");
    }
    let r = server.get(ADMIN_KEY, "/api/v1/meters/nope/query").await;
    assert_eq!(r.status(), 404);
}
