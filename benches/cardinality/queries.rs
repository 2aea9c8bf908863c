//! Meter queries: the figures of one subject's month and of a paged query
//! split by subject, each answer checked against the values sent.

use std::time::Instant;

use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::Value;

use super::load::Shape;
use crate::common::ADMIN_KEY;

/// Pages a grouped walk reads at most, and rows a page.
const PAGES_MAX: usize = 20;
const PAGE_ROWS: usize = 1_000;

/// `GET` on the API; returns the status and the JSON body.
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    try_get(client, url).await.unwrap()
}

/// [`get`], or the error of a lost connection.
async fn try_get(client: &reqwest::Client, url: &str) -> Result<(u16, Value), reqwest::Error> {
    let r = client.get(url).bearer_auth(ADMIN_KEY).send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

fn query_url(base: &str, meter: &str, params: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    format!("{base}/api/v1/meters/{meter}/query?{}", q.finish())
}

/// Sum of the `value` of every row.
fn rows_sum(body: &Value) -> f64 {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("query answer has no data: {body}"))
        .iter()
        .map(|row| row["value"].as_f64().unwrap())
        .sum()
}

/// The meter's total over every event's range (one row, all subjects);
/// `None` while the meter is still counting its past (503).
pub async fn total(
    client: &reqwest::Client,
    base: &str,
    meter: &str,
    shape: &Shape,
) -> Option<f64> {
    try_total(client, base, meter, shape).await.unwrap()
}

/// [`total`], or the error of a lost connection.
pub async fn try_total(
    client: &reqwest::Client,
    base: &str,
    meter: &str,
    shape: &Shape,
) -> Result<Option<f64>, reqwest::Error> {
    let (from, to) = shape.month_range();
    let url = query_url(base, meter, &[("from", from.as_str()), ("to", to.as_str())]);
    Ok(match try_get(client, &url).await? {
        (200, body) => Some(rows_sum(&body)),
        (503, body) if body["code"] == "METER_BACKFILLING" => None,
        (status, body) => panic!("total of {meter}: {status} {body}"),
    })
}

/// Whether a one-subject query on `meter` still answers 503
/// METER_BACKFILLING; `None` when the server is gone.
pub async fn backfilling(
    client: &reqwest::Client,
    base: &str,
    meter: &str,
    shape: &Shape,
) -> Option<bool> {
    let (from, to) = shape.month_range();
    let url = query_url(
        base,
        meter,
        &[("subject", "cust-0"), ("from", &from), ("to", &to)],
    );
    match try_get(client, &url).await.ok()? {
        (200, _) => Some(false),
        (503, body) if body["code"] == "METER_BACKFILLING" => Some(true),
        (status, body) => panic!("query of {meter}: {status} {body}"),
    }
}

/// `count` queries of one random subject's month, one after the other;
/// latencies in µs. Each answer must hold what that subject was sent.
pub async fn subject_month(base: &str, shape: &Shape, count: usize) -> Histogram<u64> {
    let client = crate::common::pooled_client(1);
    let (from, to) = shape.month_range();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..count {
        let j = rand::thread_rng().gen_range(0..shape.subjects);
        let subject = format!("cust-{j}");
        let url = query_url(
            base,
            "tokens",
            &[
                ("subject", &subject),
                ("from", from.as_str()),
                ("to", to.as_str()),
            ],
        );
        let t = Instant::now();
        let (status, body) = get(&client, &url).await;
        h.record(t.elapsed().as_micros() as u64).unwrap();
        assert_eq!(status, 200, "{body}");
        let expected = shape.subject_total(j) as f64;
        assert_eq!(rows_sum(&body), expected, "{subject}'s month: {body}");
    }
    h
}

/// Page latencies of the walks, and what they read.
pub struct Paged {
    /// Each page's latency, µs.
    pub latency_us: Histogram<u64>,
    pub pages: usize,
    pub subjects: usize,
    /// Whether a walk reached the last page.
    pub complete: bool,
}

impl Default for Paged {
    fn default() -> Paged {
        Paged {
            latency_us: Histogram::<u64>::new(3).unwrap(),
            pages: 0,
            subjects: 0,
            complete: false,
        }
    }
}

/// `walks` times, reads the month split by subject in pages of
/// [`PAGE_ROWS`], following `nextCursor` for up to [`PAGES_MAX`] pages.
pub async fn grouped(base: &str, shape: &Shape, walks: usize) -> Paged {
    let client = crate::common::pooled_client(1);
    let (from, to) = shape.month_range();
    let limit = PAGE_ROWS.to_string();
    let mut out = Paged::default();
    for _ in 0..walks {
        let (mut cursor, mut sum, mut subjects) = (None::<String>, 0.0, 0);
        for page in 0..PAGES_MAX {
            let mut params = vec![
                ("groupBy", "subject"),
                ("limit", limit.as_str()),
                ("from", from.as_str()),
                ("to", to.as_str()),
            ];
            if let Some(c) = &cursor {
                params.push(("cursor", c.as_str()));
            }
            let url = query_url(base, "tokens", &params);
            let t = Instant::now();
            let (status, body) = get(&client, &url).await;
            out.latency_us
                .record(t.elapsed().as_micros() as u64)
                .unwrap();
            assert_eq!(status, 200, "page {page}: {body}");
            subjects += check_page(shape, &body);
            sum += rows_sum(&body);
            out.pages += 1;
            cursor = body["nextCursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                assert_eq!(sum, shape.total() as f64, "every page together");
                out.complete = true;
                break;
            }
        }
        out.subjects = subjects;
    }
    out
}

/// Checks each subject's rows of a page against what it was sent; returns
/// how many subjects the page holds.
fn check_page(shape: &Shape, body: &Value) -> usize {
    let mut per_subject = std::collections::BTreeMap::<&str, f64>::new();
    for row in body["data"].as_array().unwrap() {
        *per_subject
            .entry(row["subject"].as_str().unwrap())
            .or_default() += row["value"].as_f64().unwrap();
    }
    for (subject, value) in &per_subject {
        let j: usize = subject.strip_prefix("cust-").unwrap().parse().unwrap();
        assert_eq!(*value, shape.subject_total(j) as f64, "{subject} in a page");
    }
    per_subject.len()
}
