//! Plans end to end against the real binary: immutable versions, licenses
//! on a plan version, the plan named in the signed verdict, and the
//! license's history of terms, also after `keymeter replay`.

mod common;

use common::*;
use serde_json::{json, Value};

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = server.post_json(ADMIN_KEY, path, &body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn patch(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = server
        .client
        .patch(server.url(path))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn seat_plan(max: u32) -> Value {
    json!({"name": "pro", "entitlements": ["export"], "grace_period_s": 3600,
           "policy": {"type": "seat", "seats": {"max": max, "mode": "floating", "lease_ttl_s": 600}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_versions_are_immutable_and_numbered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let (s, p1) = post(&server, "/api/v1/plans", seat_plan(5)).await;
    assert_eq!((s, p1["ref"].as_str()), (201, Some("pro@1")), "{p1}");
    let (s, p2) = post(&server, "/api/v1/plans", seat_plan(10)).await;
    assert_eq!((s, p2["ref"].as_str()), (201, Some("pro@2")), "{p2}");

    // The first version still has its own terms.
    let got = server.get_json(ADMIN_KEY, "/api/v1/plans/pro@1").await;
    assert_eq!(got["policy"]["seats"]["max"], 5);
    let all = server.get_json(ADMIN_KEY, "/api/v1/plans/pro").await;
    let refs: Vec<&str> = all["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["pro@1", "pro@2"]);
    assert_eq!(
        server.get(ADMIN_KEY, "/api/v1/plans/pro@3").await.status(),
        404
    );

    // Bad plans are refused with the reason, and take no version number.
    let bad = [
        json!({"name": "Pro"}),
        json!({"name": "pro", "policy": {"type": "usage"}}),
        json!({"name": "pro", "policy": {"type": "usage", "usage": {"quotas": [
            {"meter": "nope", "limit": 5, "period": "month", "overage": "block"}]}}}),
        json!({"name": "pro", "policy": {"type": "usage", "usage": {"quotas": [
            {"meter": "nope", "limit": -1, "period": "month", "overage": "block"}]}}}),
        json!({"name": "pro", "seats": 3}),
    ];
    for body in bad {
        let (s, e) = post(&server, "/api/v1/plans", body.clone()).await;
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("INVALID_PLAN")),
            "{body}: {e}"
        );
    }
    let (_, p3) = post(&server, "/api/v1/plans", seat_plan(1)).await;
    assert_eq!(p3["ref"], "pro@3");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_on_a_plan_is_validated_under_that_version_and_its_history_says_when() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let keys = server.jwks_keys().await;
    post(&server, "/api/v1/plans", seat_plan(1)).await;
    post(&server, "/api/v1/plans", seat_plan(2)).await;

    let (s, e) = post(
        &server,
        "/api/v1/licenses",
        json!({"product": "cad", "customer": "acme",
        "plan": "pro@1", "policy": {"type": "none"}}),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("INVALID_LICENSE")),
        "{e}"
    );
    let (s, e) = post(
        &server,
        "/api/v1/licenses",
        json!({"product": "cad", "customer": "acme",
        "plan": "basic"}),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (404, Some("NOT_FOUND")), "{e}");

    let lic = server
        .create_license(
            json!({"product": "cad", "customer": "acme", "plan": "pro@1",
            "entitlements": ["own"]}),
        )
        .await;
    assert_eq!(lic["plan"], "pro@1");
    assert_eq!(lic["policy"]["seats"]["max"], 1);
    assert_eq!(lic["entitlements"], json!(["export", "own"]));
    assert_eq!(lic["grace_period_s"], 3600);
    let (id, key) = (lic["id"].as_str().unwrap(), lic["key"].as_str().unwrap());
    let pk = server.create_key(&["ingest", "validate"]).await;
    let seats = format!("/api/v1/licenses/{id}/seats");
    for (fp, want) in [("a", 201), ("b", 409)] {
        let r = server
            .post_json(&pk, &seats, &json!({"fingerprint": fp}))
            .await;
        assert_eq!(r.status(), want, "{fp}");
    }
    let claims = |v: &Value| {
        keymeter_client::verify_token(v["token"].as_str().unwrap(), &keys, now_s()).unwrap()
    };
    let v = server
        .validate_license(&pk, json!({"key": key, "fingerprint": "a"}))
        .await;
    assert_eq!(claims(&v).plan.as_deref(), Some("pro@1"));

    // Moving to pro@2 lets a second seat in; the verdict names pro@2.
    let (s, moved) = patch(
        &server,
        &format!("/api/v1/licenses/{id}"),
        json!({"plan": "pro"}),
    )
    .await;
    assert_eq!((s, moved["plan"].as_str()), (200, Some("pro@2")), "{moved}");
    let r = server
        .post_json(&pk, &seats, &json!({"fingerprint": "b"}))
        .await;
    assert_eq!(r.status(), 201);
    let v = server
        .validate_license(&pk, json!({"key": key, "fingerprint": "b"}))
        .await;
    let c = claims(&v);
    assert_eq!(
        (c.code.as_str(), c.plan.as_deref()),
        ("VALID", Some("pro@2"))
    );

    // An inline policy detaches the license from its plan.
    let (_, inline) = patch(
        &server,
        &format!("/api/v1/licenses/{id}"),
        json!({"policy": {"type": "none"}}),
    )
    .await;
    assert!(inline.get("plan").is_none(), "{inline}");
    let v = server.validate_license(&pk, json!({"key": key})).await;
    assert_eq!(claims(&v).plan, None);
    let (s, _) = post(
        &server,
        &format!("/api/v1/licenses/{id}/renew"),
        json!({"expires_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, 200);

    let history = format!("/api/v1/licenses/{id}/history");
    let h = server.get_json(ADMIN_KEY, &history).await;
    let items = h["items"].as_array().unwrap();
    let summary: Vec<(&str, Option<&str>)> = items
        .iter()
        .map(|e| (e["change"].as_str().unwrap(), e["terms"]["plan"].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("created", Some("pro@1")),
            ("changed", Some("pro@2")),
            ("changed", None),
            ("renewed", None)
        ]
    );
    let seqs: Vec<u64> = items.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(items[3]["terms"]["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(items[3]["terms"]["policy"]["type"], "none");
    let plans = server.get_json(ADMIN_KEY, "/api/v1/plans").await;
    server.stop();

    let out = replay(&data);
    assert_success(&out);
    let server = Server::start(&data);
    assert_eq!(server.get_json(ADMIN_KEY, &history).await, h);
    assert_eq!(server.get_json(ADMIN_KEY, "/api/v1/plans").await, plans);
    server.stop();
}

#[test]
fn a_data_directory_from_a_newer_release_is_refused_at_start_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Server::start(&data).stop();
    let marker = std::fs::read_to_string(data.join("FORMAT")).unwrap();
    assert!(marker.starts_with(&format!(
        "keymeter data format {}\n",
        keymeter::data_format::DATA_FORMAT
    )));
    let newer = format!(
        "keymeter data format {}\nwritten by keymeter 99.0.0\n",
        keymeter::data_format::DATA_FORMAT + 1
    );
    std::fs::write(data.join("FORMAT"), newer).unwrap();
    let err = exits_with_error(serve_command(&data).args(["--bootstrap-admin-key", ADMIN_KEY]));
    assert!(err.contains("99.0.0"), "{err}");
    assert!(err.contains(env!("CARGO_PKG_VERSION")), "{err}");
    let out = replay(&data);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("99.0.0"));
}

/// Every answer of the plan and migration API conforms to its published
/// schema; a license on a plan conforms to license v2 and not to v1, and
/// a license without one conforms to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_license_and_migration_answers_conform_to_their_versioned_schemas() {
    let check = |validator: &jsonschema::Validator, v: &Value| {
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v}: {errors:?}");
    };
    let (license_v1, license_v2) = (schema("license/v1.json"), schema("license/v2.json"));
    let (plan_v1, migration_v1) = (schema("plan/v1.json"), schema("migration/v1.json"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server
        .create_meter(json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}))
        .await;
    let (_, p) = post(&server, "/api/v1/plans", seat_plan(3)).await;
    check(&plan_v1, &p);
    let usage = json!({"name": "usage", "description": "metered",
        "policy": {"type": "usage", "usage": {"quotas": [
            {"meter": "calls", "limit": 10, "period": "month", "overage": "block"}]}}});
    let (_, p) = post(&server, "/api/v1/plans", usage).await;
    check(&plan_v1, &p);
    let on_plan = server
        .create_license(json!({"product": "cad", "customer": "a", "plan": "pro@1"}))
        .await;
    check(&license_v2, &on_plan);
    assert!(!license_v1.is_valid(&on_plan), "v1 has no `plan`");
    let inline = server
        .create_license(json!({"product": "cad", "customer": "b"}))
        .await;
    check(&license_v1, &inline);
    check(&license_v2, &inline);

    let spec = json!({"selection": {"product": "cad"}, "target": "usage@1",
        "rules": {"seats": "keep", "quotas_from_seats": [
            {"meter": "calls", "per_seat": 5, "period": "month", "overage": "allow"}]}});
    check(
        &migration_v1,
        &json!({"id": "mig_0123456789abcdef", "spec": spec, "status": "draft",
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "steps": [], "rollbacks": []}),
    );
    let (_, m) = post(&server, "/api/v1/migrations", spec).await;
    check(&migration_v1, &m);
    let id = m["id"].as_str().unwrap();
    post(
        &server,
        &format!("/api/v1/migrations/{id}/dry-run"),
        json!({}),
    )
    .await;
    let (_, applied) = post(
        &server,
        &format!("/api/v1/migrations/{id}/apply"),
        json!({"percent": 100}),
    )
    .await;
    let mut doc = applied.clone();
    doc.as_object_mut().unwrap().remove("step");
    check(&migration_v1, &doc);
    let (_, rolled) = post(
        &server,
        &format!("/api/v1/migrations/{id}/rollback"),
        json!({}),
    )
    .await;
    let mut doc = rolled.clone();
    doc.as_object_mut().unwrap().remove("rollback");
    check(&migration_v1, &doc);
    let migrated = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/licenses/{}", on_plan["id"].as_str().unwrap()),
        )
        .await;
    check(&license_v2, &migrated);
    server.stop();
}
