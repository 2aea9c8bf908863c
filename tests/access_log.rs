//! The server's own log as an operator's collector sees it: JSON lines, one
//! access line per request with its route template, status and request id,
//! an admin line per administrative change, and no secret anywhere.

mod common;

use common::{Server, ADMIN_KEY, TEST_MASTER_KEY};
use serde_json::{json, Value};

/// The JSON objects of a captured stderr; fails on any line that is not one.
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object() && v["level"].is_string(), "{l}");
            v
        })
        .collect()
}

fn with_request_id<'a>(lines: &'a [Value], target: &str, id: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["target"] == target && l["request_id"] == id)
        .collect()
}

fn response_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .expect("x-request-id on every answer")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn json_access_log_names_each_request_once_and_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[], &[("KEYMETER_LOG_FORMAT", "json")]);
    let admin_id = server.get_json(ADMIN_KEY, "/api/v1/api-keys").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A caller's request id is echoed and logged.
    let r = server
        .request(reqwest::Method::GET, ADMIN_KEY, "/api/v1/meters")
        .header("x-request-id", "client-req-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(response_id(&r), "client-req-7");

    // Without one (or with an invalid one) a new id is made.
    let r = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/licenses",
            &json!({"product": "app", "customer": "acme"}),
        )
        .await;
    let create_id = response_id(&r);
    assert_eq!(r.status(), 201);
    assert_eq!(create_id.len(), 32, "{create_id}");
    let license: Value = r.json().await.unwrap();
    let license_id = license["id"].as_str().unwrap().to_owned();
    let license_key = license["key"].as_str().unwrap().to_owned();
    let r = server
        .request(
            reqwest::Method::GET,
            ADMIN_KEY,
            &format!("/api/v1/licenses/{license_id}"),
        )
        .header("x-request-id", "has space")
        .send()
        .await
        .unwrap();
    let get_id = response_id(&r);
    assert_eq!(r.status(), 200);
    assert_ne!(get_id, "has space");

    // A key made here, used once, and a refused call.
    let reader = server.create_key(&["read"]).await;
    let r = server.get(&reader, "/api/v1/meters").await;
    let reader_id = response_id(&r);
    let r = server
        .get("km_nobody_0123456789abcdefghij", "/api/v1/meters")
        .await;
    assert_eq!(r.status(), 401);
    let refused_id = response_id(&r);

    let r = server.get(ADMIN_KEY, "/no/such/route?token=hidden").await;
    assert_eq!(r.status(), 404);
    let unmatched_id = response_id(&r);

    let log_dir = dir.path().join("log");
    let stderr = server.stop_and_stderr();
    let lines = json_lines(&stderr);

    let seen = with_request_id(&lines, "keymeter::access", "client-req-7");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["route"], "/api/v1/meters");
    assert_eq!(seen[0]["method"], "GET");
    assert_eq!(seen[0]["status"], 200);
    assert_eq!(seen[0]["key_id"], admin_id.as_str());
    assert!(seen[0]["latency_us"].is_u64());

    let seen = with_request_id(&lines, "keymeter::access", &get_id);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["route"], "/api/v1/licenses/{id}", "the template");

    let seen = with_request_id(&lines, "keymeter::access", &refused_id);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["status"], 401);

    let seen = with_request_id(&lines, "keymeter::access", &unmatched_id);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["route"], "unmatched", "never the raw path");
    assert!(!stderr.contains("/no/such/route") && !stderr.contains("hidden"));

    let seen = with_request_id(&lines, "keymeter::access", &reader_id);
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0]["key_id"], admin_id.as_str());
    assert_ne!(seen[0]["key_id"], "-");

    // The change is in the admin log with who made it, and its log record
    // carries the same request id.
    let admin = with_request_id(&lines, "keymeter::admin", &create_id);
    assert_eq!(admin.len(), 1, "{admin:?}");
    assert_eq!(admin[0]["action"], "license.create");
    assert_eq!(admin[0]["key_id"], admin_id.as_str());
    assert_eq!(admin[0]["status"], 201);
    assert!(with_request_id(&lines, "keymeter::admin", &get_id).is_empty());
    let log_bytes: Vec<u8> = common::walk(&log_dir)
        .into_iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(
        log_bytes
            .windows(create_id.len())
            .any(|w| w == create_id.as_bytes()),
        "the license's log record holds the request id"
    );

    let reader_secret = reader.rsplit('_').next().unwrap();
    for secret in [
        ADMIN_KEY,
        reader.as_str(),
        reader_secret,
        TEST_MASTER_KEY,
        license_key.as_str(),
    ] {
        assert!(!stderr.contains(secret), "a secret in the log: {secret}");
    }
}
