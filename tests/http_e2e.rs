//! End to end through HTTP on an ephemeral port: meters of every aggregation,
//! ingest in every content type, query every window size, and compare with
//! numbers computed here, independently of the server's fold.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use common::*;
use serde_json::{json, Value};

#[derive(Clone)]
struct Ev {
    id: String,
    subject: String,
    time_ms: i64,
    tokens: i64,
    ms: f64,
    user: String,
    model: String,
}

fn window_start(ms: i64, size: &str) -> i64 {
    let unit = match size {
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        _ => {
            let t: DateTime<Utc> = Utc.timestamp_millis_opt(ms).unwrap();
            return Utc
                .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                .unwrap()
                .timestamp_millis();
        }
    };
    ms - ms.rem_euclid(unit)
}

/// Deterministic events over the last three days, with millisecond times and
/// decimal values.
fn events() -> Vec<Ev> {
    let now = Utc::now().timestamp_millis();
    let start = now - 3 * 86_400_000;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..900)
        .map(|i| Ev {
            id: format!("ev-{i}"),
            subject: ["cust-a", "cust-b", "cust-c"][(next() % 3) as usize].to_owned(),
            time_ms: start + (next() % (3 * 86_400_000 - 60_000)) as i64,
            tokens: (next() % 1000) as i64,
            ms: (next() % 4000) as f64 / 8.0,
            user: format!("u{}", next() % 40),
            model: ["small", "large"][(next() % 2) as usize].to_owned(),
        })
        .collect()
}

fn to_cloudevent(e: &Ev) -> Value {
    event(
        &e.id,
        "api_call",
        &e.subject,
        &rfc3339_ms(e.time_ms),
        json!({"tokens": e.tokens, "ms": e.ms, "user": e.user, "model": e.model}),
    )
}

/// The expected value of `agg` over a group of events, computed naively.
fn expected(agg: &str, evs: &[&Ev]) -> f64 {
    match agg {
        "SUM" => evs.iter().map(|e| e.tokens as f64).sum(),
        "COUNT" => evs.len() as f64,
        "AVG" => evs.iter().map(|e| e.ms).sum::<f64>() / evs.len() as f64,
        "MIN" => evs.iter().map(|e| e.ms).fold(f64::INFINITY, f64::min),
        "MAX" => evs.iter().map(|e| e.ms).fold(f64::NEG_INFINITY, f64::max),
        "UNIQUE_COUNT" => evs.iter().map(|e| &e.user).collect::<BTreeSet<_>>().len() as f64,
        "LATEST" => {
            let latest = evs
                .iter()
                .max_by(|a, b| a.time_ms.cmp(&b.time_ms).then(a.ms.total_cmp(&b.ms)))
                .unwrap();
            latest.ms
        }
        _ => unreachable!(),
    }
}

const METERS: [(&str, &str, Option<&str>); 7] = [
    ("tokens-sum", "SUM", Some("$.tokens")),
    ("calls", "COUNT", None),
    ("latency-avg", "AVG", Some("$.ms")),
    ("latency-min", "MIN", Some("$.ms")),
    ("latency-max", "MAX", Some("$.ms")),
    ("users", "UNIQUE_COUNT", Some("$.user")),
    ("latency-latest", "LATEST", Some("$.ms")),
];

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregation_and_window_matches_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for (slug, agg, value) in METERS {
        let mut m = json!({"slug": slug, "eventType": "api_call", "aggregation": agg,
                           "groupBy": {"model": "$.model"}, "windowSize": "MINUTE"});
        if let Some(v) = value {
            m["valueProperty"] = json!(v);
        }
        server.create_meter(m).await;
    }
    let list = server.get_json(ADMIN_KEY, "/api/v1/meters").await;
    assert_eq!(list.as_array().unwrap().len(), METERS.len());

    let evs = events();
    let ingest_key = server.create_key(&["ingest"]).await;
    // Three framings: batch, application/json array, and single events.
    for (n, chunk) in evs.chunks(100).enumerate() {
        let body: Vec<Value> = chunk.iter().map(to_cloudevent).collect();
        let ct = if n % 2 == 0 {
            "application/cloudevents-batch+json"
        } else {
            "application/json"
        };
        let r = server
            .post_events(&ingest_key, ct, serde_json::to_vec(&body).unwrap())
            .await;
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }
    // Resend some as single events and as a repeated batch: all duplicates.
    for e in &evs[..20] {
        let r = server
            .post_event(
                &ingest_key,
                &serde_json::to_vec(&to_cloudevent(e)).unwrap(),
                None,
            )
            .await;
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()["keymeter-duplicates"], "1");
    }
    let again: Vec<Value> = evs[100..200].iter().map(to_cloudevent).collect();
    let r = server.ingest(&ingest_key, &again).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["keymeter-accepted"], "0");
    assert_eq!(r.headers()["keymeter-duplicates"], "100");

    for (slug, agg, _) in METERS {
        for size in ["MINUTE", "HOUR", "DAY", "MONTH"] {
            // Per subject and window.
            let got = server
                .query(slug, &format!("windowSize={size}&groupBy=subject"))
                .await;
            let mut want: BTreeMap<(i64, String), Vec<&Ev>> = BTreeMap::new();
            for e in &evs {
                want.entry((window_start(e.time_ms, size), e.subject.clone()))
                    .or_default()
                    .push(e);
            }
            let rows = got["data"].as_array().unwrap();
            assert_eq!(rows.len(), want.len(), "{slug} {size}: row count");
            for row in rows {
                let start = DateTime::parse_from_rfc3339(row["windowStart"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis();
                let subject = row["subject"].as_str().unwrap().to_owned();
                let group = &want[&(start, subject.clone())];
                let value = row["value"].as_f64().unwrap();
                assert!(
                    close(value, expected(agg, group)),
                    "{slug} {size} {subject} {start}: got {value}, want {}",
                    expected(agg, group)
                );
            }
        }
        // One subject, split by the meter's group-by, whole range.
        let got = server.query(slug, "subject=cust-b&groupBy=model").await;
        for row in got["data"].as_array().unwrap() {
            let model = row["groupBy"]["model"].as_str().unwrap();
            let group: Vec<&Ev> = evs
                .iter()
                .filter(|e| e.subject == "cust-b" && e.model == model)
                .collect();
            assert!(
                close(row["value"].as_f64().unwrap(), expected(agg, &group)),
                "{slug} {model}"
            );
        }
        assert_eq!(got["data"].as_array().unwrap().len(), 2);
    }

    // A from/to range restricts the windows counted.
    let t0 = window_start(evs[0].time_ms, "HOUR");
    let t1 = t0 + 2 * 3_600_000;
    let got = server
        .query(
            "calls",
            &format!("from={}&to={}", rfc3339_ms(t0), rfc3339_ms(t1)),
        )
        .await;
    let want = evs
        .iter()
        .filter(|e| e.time_ms >= t0 && e.time_ms < t1)
        .count();
    assert_eq!(got["data"][0]["value"].as_f64().unwrap(), want as f64);
    assert_eq!(got["from"], rfc3339_ms(t0));

    // CSV carries the same numbers.
    let csv = server
        .request(
            reqwest::Method::GET,
            ADMIN_KEY,
            "/api/v1/meters/calls/query?windowSize=DAY",
        )
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let total: f64 = text
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, evs.len() as f64);
    assert!(text.starts_with("window_start,window_end,subject,value\n"));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_defined_later_counts_events_already_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let now = Utc::now().timestamp_millis() - 60_000;
    let evs: Vec<Value> = (0..50)
        .map(|i| {
            event(
                &format!("e{i}"),
                "job",
                "acme",
                &rfc3339_ms(now),
                json!({"n": i}),
            )
        })
        .collect();
    assert_eq!(server.ingest(ADMIN_KEY, &evs).await.status(), 204);
    server
        .create_meter(json!({"slug": "jobs", "eventType": "job", "aggregation": "SUM", "valueProperty": "$.n"}))
        .await;
    let got = server.query("jobs", "").await;
    assert_eq!(
        got["data"][0]["value"].as_f64().unwrap(),
        (0..50).sum::<i64>() as f64
    );
    // Restart: the same answer, and no double counting from the backfill.
    server.stop();
    let server = Server::start(dir.path());
    let got = server.query("jobs", "").await;
    assert_eq!(
        got["data"][0]["value"].as_f64().unwrap(),
        (0..50).sum::<i64>() as f64
    );
}

/// An unused loopback port (free when this returns; nothing else in the
/// test binds ports by number).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the unlabelled metric `name` in a `/metrics` text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// With `metrics_listen`, `/metrics` is served on that address to anyone
/// (a scraper holds no API key) and shows the server's live figures; the API
/// listener no longer serves it, even with a key, and the metrics listener
/// serves nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_apart_and_the_api_listener_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(dir.path(), &["--metrics-listen", &metrics_addr]);
    server
        .create_meter(json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}))
        .await;
    let time = time_from_now(0);
    let batch: Vec<Value> = (0..3)
        .map(|i| event(&format!("m-{i}"), "call", "c", &time, json!({})))
        .collect();
    assert_eq!(server.ingest(ADMIN_KEY, &batch).await.status(), 204);

    let scraper = http_client();
    let r = scraper
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .expect("the metrics listener answers");
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(
        metric_value(&text, "keymeter_events_accepted_total"),
        Some(3.0),
        "{text}"
    );
    let other = scraper
        .get(format!("http://{metrics_addr}/api/v1/meters"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        404,
        "the metrics listener serves only /metrics"
    );

    let api = server.get(ADMIN_KEY, "/metrics").await;
    assert_eq!(api.status(), 404, "the API listener keeps /metrics off");
    server.stop();
}
