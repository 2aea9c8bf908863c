//! Abuse without a key, against the real binary: what an unauthenticated
//! caller can make the server hold must stay bounded.

mod common;

use common::Server;
use rand::{Rng, SeedableRng};

/// The `/metrics` series (sample lines), without comments.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

fn random_token(rng: &mut impl Rng, alphabet: &[u8], len: std::ops::Range<usize>) -> String {
    let n = rng.gen_range(len);
    (0..n)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

const KNOWN_METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn path(rng: &mut impl Rng, kind: usize) -> String {
    const PATH: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_/";
    match kind % 3 {
        0 => format!("/{}", random_token(rng, PATH, 1..40)),
        1 => format!("/api/v1/meters/{}", random_token(rng, PATH, 1..20)),
        _ => "/api/v1/events".to_owned(),
    }
}

async fn send(server: &Server, method: &str, path: &str) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = server
        .client
        .request(method, server.url(path))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{path}: {}", r.status());
}

/// 10,000 requests with made-up methods and paths, no key, leave the number
/// of `/metrics` series where one request of each kind put it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_with_random_methods_and_paths_add_no_metric_series() {
    const METHOD: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for kind in 0..3 {
        for method in KNOWN_METHODS.iter().copied().chain(["BREW"]) {
            let path = path(&mut rng, kind);
            send(&server, method, &path).await;
        }
    }
    // The first read of `/metrics` adds that route's own series.
    server.metrics_text().await;
    let before = server.metrics_text().await;
    for i in 0..10_000 {
        let method = if i % 4 == 0 {
            KNOWN_METHODS[rng.gen_range(0..KNOWN_METHODS.len())].to_owned()
        } else {
            random_token(&mut rng, METHOD, 3..12)
        };
        let path = path(&mut rng, i);
        send(&server, &method, &path).await;
    }
    let after = server.metrics_text().await;
    assert_eq!(
        series(&after),
        series(&before),
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    server.stop();
}

/// A subject an event sender chose cannot become a formula in the CSV
/// export a billing job opens in a spreadsheet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_exports_neutralise_cells_a_spreadsheet_would_run() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    server
        .create_meter(serde_json::json!({"slug": "calls", "eventType": "api_call",
            "aggregation": "COUNT", "groupBy": {"region": "$.region"}}))
        .await;
    let subject = "=HYPERLINK(\"http://evil.example\",\"open\")";
    let r = server
        .ingest(
            common::ADMIN_KEY,
            &[common::event(
                "e1",
                "api_call",
                subject,
                &common::time_from_now(0),
                serde_json::json!({"region": "@SUM(A1:A9)"}),
            )],
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let csv = server
        .request(
            reqwest::Method::GET,
            common::ADMIN_KEY,
            "/api/v1/meters/calls/query?groupBy=subject&groupBy=region",
        )
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = csv.lines().nth(1).expect("one row");
    assert!(
        row.contains(",\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"open\"\")\",'@SUM(A1:A9),1"),
        "{csv}"
    );
    server.stop();
}

/// `/readyz` answers probes without a key, but log positions, Kafka
/// assignments and error text only to a key that may read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_details_only_to_a_key_that_may_read() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let ingest = server.create_key(&["ingest"]).await;
    let read = server.create_key(&["read"]).await;
    for key in [
        None,
        Some("km_made_up_key_000000000000000000"),
        Some(&*ingest),
    ] {
        let mut req = server.client.get(server.url("/readyz"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"status": "ready"}), "{key:?}");
    }
    let body: serde_json::Value = server.get_json(&read, "/readyz").await;
    assert_eq!(body["status"], "ready");
    assert!(body["logHeadSeq"].as_u64().is_some(), "{body}");
    assert_eq!(body["kafka"]["state"], "not configured");
    server.stop();
}

/// Once every API key has been revoked, the bootstrap key left in the
/// environment does not come back at the next start; `--recover-admin-key`
/// is the deliberate way back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_bootstrap_key_stays_revoked_across_restarts() {
    use common::ADMIN_KEY;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let server = Server::start(&data);
    let keys = server.get_json(ADMIN_KEY, "/api/v1/api-keys").await;
    let bootstrap_id = keys[0]["id"].as_str().unwrap().to_owned();
    let r = server
        .delete(ADMIN_KEY, &format!("/api/v1/api-keys/{bootstrap_id}"))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(server.get(ADMIN_KEY, "/api/v1/meters").await.status(), 401);
    server.stop();

    // Same command line, bootstrap key still set: it stays revoked.
    let server = Server::start(&data);
    assert_eq!(server.get(ADMIN_KEY, "/api/v1/meters").await.status(), 401);
    assert!(
        server.stderr().contains("--recover-admin-key"),
        "{}",
        server.stderr()
    );
    server.stop();

    let server = Server::start_with(&data, &["--recover-admin-key"]);
    assert_eq!(server.get(ADMIN_KEY, "/api/v1/meters").await.status(), 200);
    server.stop();
}

/// Everything the server creates is readable by its own user only, and the
/// secrets it was given leave its environment once read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private_and_secrets_leave_the_environment() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let server = Server::start_with_env(
        &data,
        &[],
        &[("KEYMETER_MASTER_KEY", common::TEST_MASTER_KEY)],
    );
    let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains(common::TEST_MASTER_KEY), "{environ}");
    server
        .create_meter(serde_json::json!({"slug": "calls", "eventType": "api_call",
            "aggregation": "COUNT"}))
        .await;
    server
        .create_license(serde_json::json!({"product": "p", "customer": "c"}))
        .await;
    server.stop();
    let mut checked = 0;
    for path in common::walk(&data).into_iter().chain([data.clone()]) {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {:o}", path.display(), mode);
        checked += 1;
    }
    assert!(checked > 5, "only {checked} paths under {}", data.display());
}

/// Overflowing durations in license documents are refused with a clear
/// error instead of expiring a license or freeing its seats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_license_durations_are_refused() {
    use common::ADMIN_KEY;
    use serde_json::json;
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let r = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/licenses",
            &json!({"product": "p", "customer": "c", "policy": {"type": "seat",
                "seats": {"max": 1, "mode": "floating", "lease_ttl_s": u64::MAX}}}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_LICENSE");
    assert!(
        body["message"].as_str().unwrap().contains("lease_ttl_s"),
        "{body}"
    );

    let created = server
        .create_license(json!({"product": "p", "customer": "c",
            "expires_at": common::time_from_now(86_400_000)}))
        .await;
    let id = created["id"].as_str().unwrap();
    let key = created["key"].as_str().unwrap();
    let r = server
        .post_json(
            ADMIN_KEY,
            &format!("/api/v1/licenses/{id}/renew"),
            &json!({"extend": format!("{}s", u64::MAX)}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_LICENSE", "{body}");
    let v = server
        .validate_license(ADMIN_KEY, json!({"key": key}))
        .await;
    assert_eq!(v["code"], "VALID", "{v}");
    server.stop();
}

/// One negative event cannot turn a license over quota back to valid: a
/// meter refuses negative values unless it allows them (credits), and even
/// then quota usage does not go below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_usage_is_refused_unless_the_meter_allows_it() {
    use common::{event, time_from_now, ADMIN_KEY};
    use serde_json::json;
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    server
        .create_meter(
            json!({"slug": "tokens", "eventType": "llm", "aggregation": "SUM",
            "valueProperty": "$.tokens"}),
        )
        .await;
    server
        .create_meter(
            json!({"slug": "credits", "eventType": "credit", "aggregation": "SUM",
            "valueProperty": "$.amount", "allowNegative": true}),
        )
        .await;
    let created = server
        .create_license(
            json!({"product": "p", "customer": "c", "policy": {"type": "usage",
            "usage": {"quotas": [
                {"meter": "tokens", "limit": 100, "period": "month", "overage": "block"},
                {"meter": "credits", "limit": 100, "period": "month", "overage": "block"}]}}}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let key = created["key"].as_str().unwrap();
    let now = time_from_now(0);
    let r = server
        .ingest(
            ADMIN_KEY,
            &[event("e1", "llm", id, &now, json!({"tokens": 150}))],
        )
        .await;
    assert!(r.status().is_success());
    let v = server
        .validate_license(ADMIN_KEY, json!({"key": key}))
        .await;
    assert_eq!(v["code"], "QUOTA_EXCEEDED", "{v}");

    let r = server
        .ingest(
            ADMIN_KEY,
            &[event("e2", "llm", id, &now, json!({"tokens": -1e9}))],
        )
        .await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rejected"][0]["code"], "VALUE_NEGATIVE", "{body}");
    let v = server
        .validate_license(ADMIN_KEY, json!({"key": key}))
        .await;
    assert_eq!(v["code"], "QUOTA_EXCEEDED", "{v}");
    assert_eq!(server.total("tokens", "").await, 150.0);

    // A meter that allows credits counts them; the quota reports no less
    // than zero used.
    let r = server
        .ingest(
            ADMIN_KEY,
            &[event("e3", "credit", id, &now, json!({"amount": -40}))],
        )
        .await;
    assert!(r.status().is_success());
    assert_eq!(server.total("credits", "").await, -40.0);
    let v = server
        .validate_license(ADMIN_KEY, json!({"key": key, "meter": "credits"}))
        .await;
    assert_eq!(v["quota"]["used"], 0.0, "{v}");
    server.stop();
}
