//! Meter query answers are bounded: past `query_rows_max` rows a query is
//! refused with a way out, and a whole-meter query can be read in pages of
//! whole subjects that put together are the unpaged answer.

mod common;

use common::{event, rfc3339_ms, Server, ADMIN_KEY};
use serde_json::{json, Value};

const HOUR_MS: i64 = 3_600_000;

/// A GET of a meter query: status and JSON body.
async fn get(server: &Server, slug: &str, params: &str) -> (u16, Value) {
    let r = server
        .get(ADMIN_KEY, &format!("/api/v1/meters/{slug}/query?{params}"))
        .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Refused with `status` and `code`; the message.
async fn refused(server: &Server, slug: &str, params: &str, status: u16, code: &str) -> String {
    let (got, body) = get(server, slug, params).await;
    assert_eq!(
        (got, body["code"].as_str()),
        (status, Some(code)),
        "{params}: {body}"
    );
    body["message"].as_str().unwrap().to_owned()
}

/// Every page of `params` with `limit` rows a page, following `nextCursor`.
async fn pages(server: &Server, slug: &str, params: &str, limit: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{params}&limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get(server, slug, &url).await;
        assert_eq!(status, 200, "{url}: {page}");
        assert!(page["data"].as_array().unwrap().len() <= limit, "{url}");
        assert!(
            page.get("nextCursor").is_some(),
            "a page names its next: {page}"
        );
        cursor = page["nextCursor"].as_str().map(str::to_owned);
        out.push(page);
        if cursor.is_none() {
            return out;
        }
        assert!(out.len() < 1000, "pages never end");
    }
}

/// The part of a row's order that JSON shows plainly: window, then subject.
fn window_and_subject(r: &Value) -> (String, String) {
    (r["windowStart"].to_string(), r["subject"].to_string())
}

/// Rows in one order, whatever order they came in.
fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    let key = |r: &Value| {
        (
            r["windowStart"].to_string(),
            r["subject"].to_string(),
            r["groupBy"].to_string(),
        )
    };
    rows.sort_by_key(key);
    rows
}

/// Hours of usage for subjects whose names are prefixes of one another
/// (`cust-1`, `cust-1-x`, `cust-10`), in one or two regions and two plans.
fn usage(base_ms: i64) -> Vec<Value> {
    let mut subjects: Vec<String> = (0..24).map(|i| format!("cust-{i}")).collect();
    subjects.extend(["cust-1-x", "cust", "ü-customer"].map(String::from));
    let mut events = Vec::new();
    for (i, subject) in subjects.iter().enumerate() {
        for h in 0..(i % 3 + 1) as i64 {
            for region in ["eu", "us"].into_iter().take(i % 2 + 1) {
                let plan = ["free", "pro"][(i + h as usize) % 2];
                events.push(event(
                    &format!("{subject}-{h}-{region}"),
                    "api_call",
                    subject,
                    &rfc3339_ms(base_ms + h * HOUR_MS + 1000),
                    json!({"n": i * 10 + h as usize + 1, "region": region, "plan": plan}),
                ));
            }
        }
    }
    events
}

/// A server with `query_rows_max` (set by its variable, so that a server
/// without the setting starts too and fails the assertions instead).
async fn server_with_usage(root: &std::path::Path, rows_max: &str) -> (Server, i64) {
    let env = [("KEYMETER_QUERY_ROWS_MAX", rows_max)];
    let server = Server::start_with_env(&root.join("data"), &[], &env);
    for slug in ["calls", "other"] {
        server
            .create_meter(
                json!({"slug": slug, "eventType": "api_call", "aggregation": "SUM",
                "valueProperty": "$.n", "windowSize": "HOUR",
                "groupBy": {"region": "$.region", "plan": "$.plan"}}),
            )
            .await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let base_ms = now - now.rem_euclid(HOUR_MS) - 10 * HOUR_MS;
    let r = server.ingest(ADMIN_KEY, &usage(base_ms)).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    (server, base_ms)
}

/// With and without group-by and window sizes, open and closed ranges,
/// named subjects, JSON and CSV: every page is whole subjects, sorted, at
/// most `limit` rows, and the pages together are the unpaged answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_put_together_are_the_unpaged_answer() {
    let root = tempfile::tempdir().unwrap();
    let (server, base) = server_with_usage(root.path(), "100000").await;
    let (t1, t2) = (rfc3339_ms(base + HOUR_MS), rfc3339_ms(base + 2 * HOUR_MS));
    let queries = [
        "groupBy=subject".to_owned(),
        "groupBy=subject&groupBy=region".to_owned(),
        "groupBy=subject&groupBy=region&groupBy=plan&windowSize=HOUR".to_owned(),
        "groupBy=plan&groupBy=subject&windowSize=DAY".to_owned(),
        format!("groupBy=subject&groupBy=plan&from={t1}"),
        format!(
            "groupBy=subject&groupBy=region&from={}&to={t2}",
            rfc3339_ms(base)
        ),
        "subject=cust-3&subject=cust-1&subject=cust-10&subject=cust-1-x&subject=cust-1\
         &subject=cust-5&groupBy=region&windowSize=HOUR"
            .to_owned(),
    ];
    for params in &queries {
        let (status, whole) = get(&server, "calls", params).await;
        assert_eq!(status, 200, "{params}: {whole}");
        assert!(
            whole.get("nextCursor").is_none(),
            "unpaged answers stay as they were"
        );
        let rows = whole["data"].as_array().unwrap().clone();
        assert!(rows.len() > 10, "{params}: {} rows", rows.len());
        for limit in [6, 7, 20] {
            let pages = pages(&server, "calls", params, limit).await;
            let mut seen: Vec<String> = Vec::new();
            let mut together = Vec::new();
            for page in &pages {
                for field in ["from", "to", "windowSize"] {
                    assert_eq!(page[field], whole[field], "{params}");
                }
                let page_rows = page["data"].as_array().unwrap();
                let order: Vec<_> = page_rows.iter().map(window_and_subject).collect();
                assert!(order.is_sorted(), "{params}, {limit}: a page is sorted");
                let mut subjects: Vec<String> =
                    page_rows.iter().map(|r| r["subject"].to_string()).collect();
                subjects.sort();
                subjects.dedup();
                for s in &subjects {
                    assert!(!seen.contains(s), "{params}, {limit}: {s} on two pages");
                }
                seen.extend(subjects);
                together.extend(page_rows.iter().cloned());
            }
            assert!(pages.len() > 1 || limit == 20, "{params}: {limit}");
            assert_eq!(sorted(together), sorted(rows.clone()), "{params}, {limit}");
        }
    }
    csv_pages_put_together_are_the_unpaged_csv(&server).await;
    let once = server.total("calls", "subject=cust-1").await;
    assert_eq!(
        server.total("calls", "subject=cust-1&subject=cust-1").await,
        once
    );
    server.stop();
}

async fn csv(server: &Server, params: &str) -> (String, Option<String>) {
    let r = server
        .request(
            reqwest::Method::GET,
            ADMIN_KEY,
            &format!("/api/v1/meters/calls/query?{params}"),
        )
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let next = r
        .headers()
        .get("keymeter-next-cursor")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.text().await.unwrap(), next)
}

async fn csv_pages_put_together_are_the_unpaged_csv(server: &Server) {
    let params = "groupBy=subject&groupBy=region&windowSize=HOUR";
    let (whole, next) = csv(server, params).await;
    assert_eq!(next, None);
    let mut header = None;
    let mut lines: Vec<String> = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let (page, next) = csv(server, &format!("{params}&limit=6{cursor}")).await;
        let mut page_lines = page.lines().map(str::to_owned);
        header.get_or_insert(page_lines.next().unwrap());
        lines.extend(page_lines);
        match next {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut whole_lines: Vec<String> = whole.lines().map(str::to_owned).collect();
    assert_eq!(header.as_ref(), Some(&whole_lines.remove(0)));
    lines.sort();
    whole_lines.sort();
    assert_eq!(lines, whole_lines);
}

/// A cursor resumes only the query that returned it; anything else is
/// refused before a row is read, with what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_another_query_or_meter_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (server, _) = server_with_usage(root.path(), "1000").await;
    let (_, first) = get(&server, "calls", "groupBy=subject&limit=6").await;
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    let (status, _) = get(
        &server,
        "calls",
        &format!("groupBy=subject&limit=9&cursor={cursor}"),
    )
    .await;
    assert_eq!(status, 200, "the page size may change between pages");
    for (slug, params) in [
        ("calls", "groupBy=subject&windowSize=DAY"),
        ("calls", "groupBy=subject&groupBy=region"),
        ("calls", "groupBy=subject&subject=cust-5"),
        ("other", "groupBy=subject"),
    ] {
        let message = refused(
            &server,
            slug,
            &format!("{params}&limit=6&cursor={cursor}"),
            400,
            "INVALID_QUERY",
        )
        .await;
        assert!(
            message.starts_with("cursor belongs to another query"),
            "{slug} {params}: {message}"
        );
    }
    let other_version = format!("B{}", &cursor[1..]);
    for made_up in ["x", "AQ", &other_version, "%00"] {
        let message = refused(
            &server,
            "calls",
            &format!("groupBy=subject&cursor={made_up}"),
            400,
            "INVALID_QUERY",
        )
        .await;
        assert!(
            message.starts_with("cursor is not one this server issued"),
            "{made_up}: {message}"
        );
    }
    let message = refused(&server, "calls", "limit=5", 400, "INVALID_QUERY").await;
    assert!(message.contains("split rows by subject"), "{message}");
    let message = refused(
        &server,
        "calls",
        "groupBy=subject&limit=1001",
        400,
        "INVALID_QUERY",
    )
    .await;
    assert!(message.contains("query_rows_max (1000)"), "{message}");
    refused(
        &server,
        "calls",
        "groupBy=subject&limit=0",
        400,
        "INVALID_QUERY",
    )
    .await;
    server.stop();
}

/// Past `query_rows_max` the answer is refused and says how to page or
/// narrow it; paged, the same rows come in pages of at most the cap; a
/// subject with more rows than a page is refused, not split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_cap_is_refused_and_can_be_paged() {
    let root = tempfile::tempdir().unwrap();
    let (server, _) = server_with_usage(root.path(), "40").await;
    let params = "groupBy=subject&groupBy=region&windowSize=HOUR";
    let message = refused(&server, "calls", params, 422, "QUERY_TOO_LARGE").await;
    for hint in ["more than 40 rows", "`limit`", "`cursor`", "`from`/`to`"] {
        assert!(message.contains(hint), "{hint}: {message}");
    }
    let r = server
        .request(
            reqwest::Method::GET,
            ADMIN_KEY,
            &format!("/api/v1/meters/calls/query?{params}"),
        )
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "CSV too");
    let (status, merged) = get(&server, "calls", "groupBy=region&groupBy=plan").await;
    assert_eq!(status, 200, "{merged}");
    let pages = pages(&server, "calls", params, 40).await;
    assert!(pages.len() > 1);
    let rows: usize = pages
        .iter()
        .map(|p| p["data"].as_array().unwrap().len())
        .sum();
    assert!(rows > 40, "{rows}");
    // cust-2 has three hours in one region.
    let message = refused(
        &server,
        "calls",
        &format!("{params}&subject=cust-2&limit=2"),
        422,
        "QUERY_TOO_LARGE",
    )
    .await;
    assert!(
        message.contains("\"cust-2\" alone has more than 2 rows"),
        "{message}"
    );
    assert!(message.contains("raise `limit` (up to 40)"), "{message}");
    server.stop();
}
