//! OpenMeter's meter operations, sent as OpenMeter's API description shapes
//! them: a meter with `name`, `metadata` and OpenMeter-only fields, read and
//! deleted by id or slug; queries by GET (`clientId`, `filterGroupBy[key]`)
//! and by POST with OpenMeter's query request body.

mod common;

use common::*;
use serde_json::{json, Value};

fn call(id: &str, subject: &str, model: &str, tokens: u64) -> Value {
    event(
        id,
        "prompt",
        subject,
        &time_from_now(-60_000),
        json!({"tokens": tokens, "model": model}),
    )
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn is_ms_timestamp(v: &Value) -> bool {
    let t = v.as_str().unwrap_or("");
    // 2026-12-06T04:56:44.123Z
    t.len() == 24 && t.ends_with('Z') && t.as_bytes()[19] == b'.'
}

/// (subject, model, value) of each row.
fn rows(body: &Value) -> Vec<(String, String, f64)> {
    let mut out: Vec<_> = (body["data"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["subject"].as_str().unwrap_or("").to_owned(),
                r["groupBy"]["model"].as_str().unwrap_or("").to_owned(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_and_queries_work_as_openmeter_clients_send_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let create = json!({
        "slug": "tokens",
        "name": "LLM tokens",
        "description": "Tokens used per model",
        "metadata": {"team": "ml"},
        "annotations": {"openmeter.io/managed": "true"},
        "eventType": "prompt",
        "aggregation": "SUM",
        "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model"}
    });
    let r = server.post_json(ADMIN_KEY, "/api/v1/meters", &create).await;
    assert_eq!(r.status(), 201);
    let meter: Value = r.json().await.unwrap();
    let id = meter["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 26, "a ULID: {meter}");
    assert!(id.parse::<ulid::Ulid>().is_ok(), "{id}");
    assert_eq!(meter["name"], "LLM tokens");
    assert_eq!(meter["metadata"], json!({"team": "ml"}));
    assert!(is_ms_timestamp(&meter["createdAt"]), "{meter}");
    assert_eq!(meter["createdAt"], meter["updatedAt"]);
    assert!(meter.get("annotations").is_none(), "accepted, not kept");

    // The same meter by id and by slug; in the listing too.
    let by_id = server
        .get_json(ADMIN_KEY, &format!("/api/v1/meters/{id}"))
        .await;
    let by_slug = server.get_json(ADMIN_KEY, "/api/v1/meters/tokens").await;
    assert_eq!(by_id, meter);
    assert_eq!(by_slug, meter);
    let list = server.get_json(ADMIN_KEY, "/api/v1/meters").await;
    assert_eq!(list[0]["id"], meter["id"]);

    let events = [
        call("1", "acme", "large", 10),
        call("2", "acme", "small", 3),
        call("3", "globex", "large", 7),
    ];
    assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);

    // GET with OpenMeter's parameters, by id.
    let q = format!(
        "/api/v1/meters/{id}/query?clientId=dashboard-1&filterGroupBy%5Bmodel%5D=large\
         &groupBy=subject&groupBy=model&windowTimeZone=UTC"
    );
    let body = server.get_json(ADMIN_KEY, &q).await;
    assert_eq!(
        rows(&body),
        [
            ("acme".into(), "large".into(), 10.0),
            ("globex".into(), "large".into(), 7.0)
        ]
    );

    // Local days: every event lands in one Berlin day's row or another.
    let body = server
        .get_json(
            ADMIN_KEY,
            "/api/v1/meters/tokens/query?windowSize=DAY&windowTimeZone=Europe%2FBerlin",
        )
        .await;
    let total: f64 = rows(&body).iter().map(|r| r.2).sum();
    assert_eq!(total, 20.0, "{body}");
    let r = server
        .get(
            ADMIN_KEY,
            "/api/v1/meters/tokens/query?windowTimeZone=Berlin",
        )
        .await;
    assert_eq!(r.status(), 400);

    // POST with OpenMeter's query request body.
    let request = json!({
        "clientId": "dashboard-1",
        "subject": ["acme"],
        "filterGroupBy": {"model": "small"},
        "groupBy": ["model"],
        "windowSize": "HOUR",
        "windowTimeZone": "UTC"
    });
    let r = server
        .post_json(ADMIN_KEY, "/api/v1/meters/tokens/query", &request)
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(rows(&body), [("acme".into(), "small".into(), 3.0)]);
    assert_eq!(body["windowSize"], "HOUR");
    // A filter on a key the meter does not have is refused, naming it.
    let r = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/meters/tokens/query",
            &json!({"filterGroupBy": {"region": "eu"}}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("region"),
        "{body}"
    );

    // The subjects and group values with usage, by id or slug.
    let subjects = server
        .get_json(ADMIN_KEY, &format!("/api/v1/meters/{id}/subjects"))
        .await;
    assert_eq!(subjects, json!(["acme", "globex"]));
    let values = server
        .get_json(ADMIN_KEY, "/api/v1/meters/tokens/group-by/model/values")
        .await;
    assert_eq!(values, json!(["large", "small"]));
    let next_hour = (chrono::Utc::now().timestamp_millis() / 60_000 + 60) * 60_000;
    let future = format!("from={}", urlencode(&rfc3339_ms(next_hour)));
    let values = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/meters/tokens/group-by/model/values?{future}"),
        )
        .await;
    assert_eq!(values, json!([]));
    let r = server
        .get(ADMIN_KEY, "/api/v1/meters/tokens/group-by/region/values")
        .await;
    assert_eq!(r.status(), 400);
    let r = server
        .get(ADMIN_KEY, "/api/v1/meters/tokens/subjects?windowSize=HOUR")
        .await;
    assert_eq!(r.status(), 400);

    // A meter defined later with eventFrom counts only what is after it,
    // in its past and from now on.
    let from = rfc3339_ms(chrono::Utc::now().timestamp_millis() - 30_000);
    let recent = json!({"slug": "recent", "eventType": "prompt", "aggregation": "COUNT",
        "eventFrom": from});
    let r = server.post_json(ADMIN_KEY, "/api/v1/meters", &recent).await;
    assert_eq!(r.status(), 201);
    let later = event(
        "4",
        "prompt",
        "acme",
        &time_from_now(-1_000),
        json!({"tokens": 1}),
    );
    assert_eq!(server.ingest(ADMIN_KEY, &[later]).await.status(), 204);
    assert_eq!(server.total("recent", "").await, 1.0);
    assert_eq!(server.total("tokens", "").await, 21.0);
    let bad = json!({"slug": "bad", "eventType": "prompt", "aggregation": "COUNT",
        "eventFrom": "yesterday"});
    let r = server.post_json(ADMIN_KEY, "/api/v1/meters", &bad).await;
    assert_eq!(r.status(), 400);

    // An update changes what OpenMeter lets change, and nothing counted.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let update = json!({"name": "Tokens", "description": "per model",
        "metadata": {"team": "platform"}, "groupBy": {"model": "$.model"}});
    let r = server
        .request(
            reqwest::Method::PUT,
            ADMIN_KEY,
            &format!("/api/v1/meters/{id}"),
        )
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["name"], "Tokens");
    assert_eq!(updated["metadata"], json!({"team": "platform"}));
    assert_eq!(updated["id"], meter["id"]);
    assert_eq!(updated["createdAt"], meter["createdAt"]);
    assert!(
        updated["updatedAt"].as_str() > meter["updatedAt"].as_str(),
        "{updated}"
    );
    assert_eq!(
        server.get_json(ADMIN_KEY, "/api/v1/meters/tokens").await,
        updated
    );
    assert_eq!(server.total("tokens", "").await, 21.0);
    let regroup = json!({"groupBy": {"model": "$.model", "region": "$.region"}});
    let r = server
        .request(reqwest::Method::PUT, ADMIN_KEY, "/api/v1/meters/tokens")
        .json(&regroup)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Deleted by id, gone by slug.
    let r = server
        .delete(ADMIN_KEY, &format!("/api/v1/meters/{id}"))
        .await;
    assert_eq!(r.status(), 204);
    let r = server.get(ADMIN_KEY, "/api/v1/meters/tokens").await;
    assert_eq!(r.status(), 404);
}
