//! Every error is a JSON body with keymeter's `code` and `message` and the
//! problem fields OpenMeter's clients read (`type`, `title`, `status`,
//! `detail`), the router's own refusals included; and a request of
//! duplicates only names the log position of its originals.

mod common;

use common::*;
use serde_json::{json, Value};

async fn error_body(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["type"], "about:blank", "{body}");
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert_eq!(body["detail"], body["message"], "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_json_problem_with_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // A method the route does not take: 405 used to have an empty body.
    let r = server
        .request(reqwest::Method::PUT, ADMIN_KEY, "/api/v1/events")
        .send()
        .await
        .unwrap();
    let allow = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(allow.as_deref(), Some("POST"));
    error_body(r, 405, "METHOD_NOT_ALLOWED").await;
    // No such route.
    let r = server.get(ADMIN_KEY, "/api/v1/nothing-here").await;
    let body = error_body(r, 404, "NOT_FOUND").await;
    assert_eq!(body["title"], "Not Found");
    // No key.
    let r = server
        .client
        .get(server.url("/api/v1/meters"))
        .send()
        .await
        .unwrap();
    error_body(r, 401, "UNAUTHENTICATED").await;
    // A handler's refusal keeps its details beside the problem fields.
    let r = server
        .ingest(ADMIN_KEY, &[json!({"specversion": "1.0"})])
        .await;
    let body = error_body(r, 400, "INVALID_EVENTS").await;
    assert_eq!(body["rejected"][0]["code"], "MISSING_FIELD", "{body}");
    // A path segment the route cannot read (not UTF-8).
    let r = server.get(ADMIN_KEY, "/api/v1/meters/%FF").await;
    error_body(r, 400, "INVALID_REQUEST").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_duplicates_names_the_position_of_its_originals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let seq = |r: &reqwest::Response| -> u64 {
        r.headers()["keymeter-seq"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let events: Vec<Value> = (0..3)
        .map(|i| {
            event(
                &format!("e{i}"),
                "call",
                "acme",
                &time_from_now(-1000),
                json!({}),
            )
        })
        .collect();
    let r = server.ingest(ADMIN_KEY, &events).await;
    assert_eq!(r.status(), 204);
    let original = seq(&r);
    assert!(original > 0);
    let r = server.ingest(ADMIN_KEY, &events).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["keymeter-duplicates"], "3");
    assert_eq!(r.headers()["keymeter-accepted"], "0");
    // The originals are at or before the answer's position (it was 0).
    let again = seq(&r);
    assert!(
        (original..original + 3).contains(&again),
        "{again} for originals ending at {original}"
    );
}
