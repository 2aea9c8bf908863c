//! Values come back exactly as sent, in JSON and CSV answers, and a value
//! with more decimals than the engine keeps is refused (or rounded, when
//! the meter says so) rather than silently changed.

mod common;

use common::*;
use serde_json::{json, Value};

fn ev(id: &str, ty: &str, data: Value) -> Value {
    event(id, ty, "acme", &time_from_now(-1000), data)
}

async fn raw_query(server: &Server, slug: &str, accept: &str) -> String {
    let r = server
        .request(
            reqwest::Method::GET,
            ADMIN_KEY,
            &format!("/api/v1/meters/{slug}/query"),
        )
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_keep_every_digit_and_excess_decimals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .create_meter(json!({"slug": "spend", "eventType": "spend", "aggregation": "SUM", "valueProperty": "$.usd"}))
        .await;
    server
        .create_meter(json!({"slug": "rounded", "eventType": "energy", "aggregation": "SUM", "valueProperty": "$.kwh", "roundValues": true}))
        .await;
    // Written as a JSON number: an f64 would answer 12345678901.423456.
    let body = r#"[{"specversion": "1.0", "id": "a", "source": "s", "type": "spend",
        "subject": "acme", "data": {"usd": 12345678901.423456789}},
        {"specversion": "1.0", "id": "b", "source": "s", "type": "spend",
        "subject": "acme", "data": {"usd": "0.000000001"}}]"#;
    let r = server
        .post_events(ADMIN_KEY, "application/cloudevents-batch+json", body)
        .await;
    assert_eq!(r.status(), 204);
    let text = raw_query(&server, "spend", "application/json").await;
    assert!(text.contains(r#""value":12345678901.42345679,"#), "{text}");
    let csv = raw_query(&server, "spend", "text/csv").await;
    assert!(csv.trim_end().ends_with(",12345678901.42345679"), "{csv}");

    // 1e-10 used to count as 0 without a word.
    let r = server
        .ingest(ADMIN_KEY, &[ev("c", "spend", json!({"usd": 1e-10}))])
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rejected"][0]["code"], "VALUE_TOO_PRECISE", "{body}");
    let text = raw_query(&server, "spend", "application/json").await;
    assert!(text.contains(r#""value":12345678901.42345679,"#), "{text}");

    // A meter that rounds takes it, half to even at the 9th decimal.
    let r = server
        .ingest(
            ADMIN_KEY,
            &[ev("d", "energy", json!({"kwh": "2.0000000025"}))],
        )
        .await;
    assert_eq!(r.status(), 204);
    let text = raw_query(&server, "rounded", "application/json").await;
    assert!(text.contains(r#""value":2.000000002,"#), "{text}");
}
