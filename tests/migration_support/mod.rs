//! A fleet of seat licenses to migrate to usage, shared by the migration
//! crash and load tests.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use serde_json::{json, Value};

/// A server without rate limits (the load clients validate as fast as
/// they can), in `root`.
pub fn start(root: &Path) -> Server {
    let config = root.join("keymeter.toml");
    std::fs::write(
        &config,
        "[rate_limits]\n\
         validate_per_api_key = { per_second = 0, burst = 1 }\n\
         validate_per_license = { per_second = 0, burst = 1 }\n\
         checkout_per_api_key = { per_second = 0, burst = 1 }\n\
         checkout_per_license = { per_second = 0, burst = 1 }\n",
    )
    .unwrap();
    Server::start_with(&root.join("data"), &["--config", config.to_str().unwrap()])
}

pub async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = server.post_json(ADMIN_KEY, path, &body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A license's document exactly as the server renders it.
pub async fn document(server: &Server, id: &str) -> String {
    let r = server
        .get(ADMIN_KEY, &format!("/api/v1/licenses/{id}"))
        .await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Plans `seats@1` (`seats` floating seats) and `usage@1` (a `calls`
/// quota), and `n` `cad` licenses on `seats@1`, created `parallel` at a
/// time: id → license key.
pub async fn fleet(server: &Server, n: usize, seats: u32) -> BTreeMap<String, String> {
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let plans = [
        json!({"name": "seats", "policy": {"type": "seat",
            "seats": {"max": seats, "mode": "floating", "lease_ttl_s": 3600}}}),
        json!({"name": "usage", "policy": {"type": "usage", "usage": {"quotas": [
            {"meter": "calls", "limit": 1, "period": "month", "overage": "block"}]}}}),
    ];
    for plan in plans {
        let (s, p) = post(server, "/api/v1/plans", plan).await;
        assert_eq!(s, 201, "{p}");
    }
    let mut out = BTreeMap::new();
    let parallel = 16;
    for start in (0..n).step_by(parallel) {
        let mut tasks = Vec::new();
        for i in start..(start + parallel).min(n) {
            let (client, url) = (server.client.clone(), server.url("/api/v1/licenses"));
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"product": "cad", "customer": format!("c{i}"),
                        "plan": "seats@1"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                (
                    v["id"].as_str().unwrap().to_owned(),
                    v["key"].as_str().unwrap().to_owned(),
                )
            }));
        }
        for t in tasks {
            let (id, key) = t.await.unwrap();
            out.insert(id, key);
        }
    }
    out
}

/// seats@1 → usage@1, seats kept (hybrid), 1,000 calls a seat.
pub fn spec() -> Value {
    json!({"selection": {"product": "cad"}, "target": "usage@1",
        "rules": {"seats": "keep", "quotas_from_seats": [
            {"meter": "calls", "per_seat": 1000, "period": "month", "overage": "block"}]}})
}

/// Whether `doc` is `before` migrated by [`spec`]: the same document but
/// for the terms the rules set and `updated_at`.
#[allow(dead_code)]
pub fn is_migrated_form(before: &Value, doc: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        for k in ["policy", "plan", "updated_at"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    let seats = &before["policy"]["seats"];
    let limit = seats["max"].as_f64().unwrap() * 1000.0;
    strip(before) == strip(doc)
        && doc["plan"] == "usage@1"
        && doc["policy"]["type"] == "hybrid"
        && doc["policy"]["seats"] == *seats
        && doc["policy"]["usage"]["quotas"][0]["limit"].as_f64() == Some(limit)
}

/// How many licenses migration `id` holds migrated and rolled back.
#[allow(dead_code)]
pub async fn progress(server: &Server, id: &str) -> (u64, u64) {
    let m = server
        .get_json(ADMIN_KEY, &format!("/api/v1/migrations/{id}"))
        .await;
    let p = &m["progress"];
    (
        p["migrated"].as_u64().unwrap(),
        p["rolled_back"].as_u64().unwrap(),
    )
}
