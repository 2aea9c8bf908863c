//! The events of one configuration and the HTTP clients that send them.
//!
//! Event `i` goes to subject `i % S`, group value `(i / S) % G` and hour
//! window `(i / (S·G)) % W`, so that the first `S·G·W` events each make a
//! counter of their own and the live counters are `min(N, S·G·W)`.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use hdrhistogram::Histogram;
use rand::Rng;

use crate::common::ADMIN_KEY;

pub const EVENTS_PER_REQUEST: usize = 5_000;
pub const CLIENTS: usize = 4;
pub const PROBE_EVENTS: usize = 100;
/// Bodies are generated before the clock starts up to this many bytes, and
/// by the clients while they send beyond it.
const PREGENERATED_BYTES_MAX: usize = 1_500_000_000;
const HOUR_MS: i64 = 3_600_000;

/// One configuration's events.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub events: usize,
    pub subjects: usize,
    pub groups: usize,
    pub windows: usize,
    /// Start of the newest window (the current hour).
    pub hour_ms: i64,
}

impl Shape {
    pub fn new(events: usize, subjects: usize, groups: usize, windows: usize) -> Shape {
        let now = Utc::now().timestamp_millis();
        Shape {
            events,
            subjects,
            groups,
            windows,
            hour_ms: now - now.rem_euclid(HOUR_MS),
        }
    }

    /// Live counters after the ingest.
    pub fn counters(&self) -> usize {
        (self.subjects * self.groups * self.windows).min(self.events)
    }

    pub fn requests(&self) -> usize {
        self.events.div_ceil(EVENTS_PER_REQUEST)
    }

    /// The meter every configuration defines (`groupBy` when G > 1).
    pub fn meter(&self, slug: &str) -> serde_json::Value {
        let mut m = serde_json::json!({"slug": slug, "eventType": "t", "aggregation": "SUM",
            "valueProperty": "$.n", "windowSize": "HOUR"});
        if self.groups > 1 {
            m["groupBy"] = serde_json::json!({"g": "$.g"});
        }
        m
    }

    /// The start of the month holding the oldest window, and of the month
    /// after the newest: a query range holding every event.
    pub fn month_range(&self) -> (String, String) {
        let oldest = self.hour_ms - (self.windows as i64 - 1) * HOUR_MS;
        let first = month_start(DateTime::from_timestamp_millis(oldest).unwrap(), 0);
        let newest = DateTime::from_timestamp_millis(self.hour_ms).unwrap();
        let end = month_start(newest, 1);
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        (fmt(first), fmt(end))
    }

    /// `YYYY-MM-DDTHH:00:00.` of each window, newest first.
    fn hour_prefixes(&self) -> Vec<String> {
        (0..self.windows)
            .map(|w| {
                let t = DateTime::from_timestamp_millis(self.hour_ms - w as i64 * HOUR_MS).unwrap();
                debug_assert_eq!((t.minute(), t.second()), (0, 0));
                t.format("%Y-%m-%dT%H:00:00.").to_string()
            })
            .collect()
    }

    /// The JSON array of request `r`'s events.
    pub fn body(&self, r: usize, hours: &[String]) -> Vec<u8> {
        let from = r * EVENTS_PER_REQUEST;
        let to = (from + EVENTS_PER_REQUEST).min(self.events);
        let mut out = Vec::with_capacity((to - from) * 180);
        out.push(b'[');
        for i in from..to {
            if i > from {
                out.push(b',');
            }
            self.event(i, hours, &mut out);
        }
        out.push(b']');
        out
    }

    fn event(&self, i: usize, hours: &[String], out: &mut Vec<u8>) {
        let (s, g) = (self.subjects, self.groups);
        let window = (i / (s * g)) % self.windows;
        let hour = &hours[window];
        let ms = i % 1000;
        write!(
            out,
            r#"{{"specversion":"1.0","id":"e{i}","source":"s","type":"t","subject":"cust-{}","time":"{hour}{ms:03}Z","data":{{"n":{}"#,
            i % s,
            i % 7
        )
        .unwrap();
        if g > 1 {
            write!(out, r#","g":"g{}""#, (i / s) % g).unwrap();
        }
        out.extend_from_slice(b"}}");
    }

    /// Sum of every event's `n`.
    pub fn total(&self) -> u64 {
        let n = self.events as u64;
        (n / 7) * 21 + (0..n % 7).sum::<u64>()
    }

    /// Sum of `n` over the events of subject `j`.
    pub fn subject_total(&self, j: usize) -> u64 {
        (j..self.events)
            .step_by(self.subjects)
            .map(|i| (i % 7) as u64)
            .sum()
    }
}

fn month_start(t: DateTime<Utc>, months_on: u32) -> DateTime<Utc> {
    let months = t.year() * 12 + t.month0() as i32 + months_on as i32;
    Utc.with_ymd_and_hms(
        months.div_euclid(12),
        months.rem_euclid(12) as u32 + 1,
        1,
        0,
        0,
        0,
    )
    .unwrap()
}

/// Where the clients' bodies come from.
pub enum Bodies {
    Ready(Vec<Bytes>),
    /// Generated by each client just before it sends.
    Streamed(Vec<String>),
}

/// The bodies of a configuration, generated now if they fit in memory;
/// returns how fast the generator alone makes events (on one core).
pub fn prepare(shape: &Shape) -> (Bodies, f64) {
    let hours = shape.hour_prefixes();
    let started = Instant::now();
    if shape.events * 180 <= PREGENERATED_BYTES_MAX {
        let bodies: Vec<Bytes> = (0..shape.requests())
            .map(|r| Bytes::from(shape.body(r, &hours)))
            .collect();
        let rate = shape.events as f64 / started.elapsed().as_secs_f64();
        return (Bodies::Ready(bodies), rate);
    }
    // A sample tells the generator's own rate.
    let sample = shape.requests().min(100);
    for r in 0..sample {
        std::hint::black_box(shape.body(r, &hours));
    }
    let rate = (sample * EVENTS_PER_REQUEST) as f64 / started.elapsed().as_secs_f64();
    (Bodies::Streamed(hours), rate)
}

pub struct Ingested {
    pub events_per_s: f64,
    pub secs: f64,
    pub latency_us: Histogram<u64>,
}

/// Sends every request of `shape` from [`CLIENTS`] concurrent clients.
pub async fn ingest(base: &str, shape: Shape, bodies: Bodies) -> Ingested {
    let client = crate::common::pooled_client(CLIENTS);
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/api/v1/events");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url, bodies, next) =
            (client.clone(), url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= shape.requests() {
                    break h;
                }
                let body = match &*bodies {
                    Bodies::Ready(b) => b[r].clone(),
                    Bodies::Streamed(hours) => Bytes::from(shape.body(r, hours)),
                };
                let t = Instant::now();
                post_events(&client, &url, body).await.unwrap();
                h.record(t.elapsed().as_micros() as u64).unwrap();
            }
        }));
    }
    let latency_us = crate::common::merge_latencies(tasks).await;
    let secs = started.elapsed().as_secs_f64();
    Ingested {
        events_per_s: shape.events as f64 / secs,
        secs,
        latency_us,
    }
}

/// Posts one batch; an answer other than 204 fails the bench, a lost
/// connection is returned.
async fn post_events(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
) -> Result<(), reqwest::Error> {
    let r = client
        .post(url)
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/cloudevents-batch+json")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    assert_eq!(
        status,
        204,
        "ingest: {}",
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

/// One client sending 100-event requests one after the other until `until`
/// says stop or the server is gone; returns their latencies (µs).
/// Events are dated now, with `n = 1`, for random subjects of `shape`.
pub async fn probe(
    base: &str,
    shape: Shape,
    tag: &str,
    until: impl Fn() -> bool,
) -> Histogram<u64> {
    let client = crate::common::pooled_client(1);
    let url = format!("{base}/api/v1/events");
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut sent = 0u64;
    while !until() {
        let time = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut body = Vec::with_capacity(PROBE_EVENTS * 160);
        body.push(b'[');
        for k in 0..PROBE_EVENTS {
            let subject = rand::thread_rng().gen_range(0..shape.subjects);
            let sep = if k == 0 { "" } else { "," };
            write!(body, r#"{sep}{{"specversion":"1.0","id":"{tag}{sent}-{k}","source":"s","type":"t","subject":"cust-{subject}","time":"{time}","data":{{"n":1"#).unwrap();
            if shape.groups > 1 {
                body.extend_from_slice(br#","g":"g0""#);
            }
            body.extend_from_slice(b"}}");
        }
        body.push(b']');
        let t = Instant::now();
        if post_events(&client, &url, Bytes::from(body)).await.is_err() {
            break;
        }
        h.record(t.elapsed().as_micros() as u64).unwrap();
        sent += PROBE_EVENTS as u64;
    }
    h
}
