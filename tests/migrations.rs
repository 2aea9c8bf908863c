//! Migrations end to end against the real binary: draft, dry run that
//! changes nothing, a canary step and the rest, validations under exactly
//! one plan version, a second migration refused, rollback restoring every
//! document byte for byte (a license changed meanwhile reported and left
//! alone), completion freezing it, and all of it surviving a replay.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = server.post_json(ADMIN_KEY, path, &body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A license's document exactly as the server renders it.
async fn document(server: &Server, id: &str) -> String {
    let r = server
        .get(ADMIN_KEY, &format!("/api/v1/licenses/{id}"))
        .await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

struct Fleet {
    /// id → key
    licenses: BTreeMap<String, String>,
    no_seats: String,
    other_product: String,
}

/// Plans `seats@1` (one floating seat) and `usage@1` (a `calls` quota),
/// 12 `cad` licenses on `seats@1`, one `cad` license without seats, one
/// `ide` license on `seats@1`.
async fn fleet(server: &Server) -> Fleet {
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let seats = json!({"name": "seats", "entitlements": ["basic"],
        "policy": {"type": "seat", "seats": {"max": 1, "mode": "floating", "lease_ttl_s": 3600}}});
    let usage = json!({"name": "usage", "entitlements": ["metered"],
        "policy": {"type": "usage", "usage": {"quotas": [
            {"meter": "calls", "limit": 1, "period": "month", "overage": "block"}]}}});
    for plan in [seats, usage] {
        let (s, p) = post(server, "/api/v1/plans", plan).await;
        assert_eq!(s, 201, "{p}");
    }
    let mut licenses = BTreeMap::new();
    for n in 1..=12 {
        let lic = server
            .create_license(json!({"product": "cad", "customer": format!("c{n}"),
                "plan": "seats@1", "expires_at": "2099-01-01T00:00:00Z"}))
            .await;
        let id = lic["id"].as_str().unwrap().to_owned();
        licenses.insert(id, lic["key"].as_str().unwrap().to_owned());
    }
    let no_seats = server
        .create_license(json!({"product": "cad", "customer": "x"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_product = server
        .create_license(json!({"product": "ide", "customer": "y", "plan": "seats@1"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Fleet {
        licenses,
        no_seats,
        other_product,
    }
}

fn spec() -> Value {
    json!({"description": "cad moves to usage", "selection": {"product": "cad"},
        "target": "usage@1",
        "rules": {"seats": "keep", "entitlements": "carry", "quotas_from_seats": [
            {"meter": "calls", "per_seat": 1000, "period": "month", "overage": "block"}]}})
}

async fn validated_plan(server: &Server, pk: &str, key: &str) -> Option<String> {
    let keys = server.jwks_keys().await;
    let v = server
        .validate_license(pk, json!({"key": key, "fingerprint": "m1"}))
        .await;
    let claims =
        keymeter_client::verify_token(v["token"].as_str().unwrap(), &keys, now_s()).unwrap();
    claims.plan
}

// One story, long on purpose: each stage (dry run, canary, conflict, the
// rest, rollback, completion, replay) starts from the state the one before
// left, which is what the test is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_migration_rolls_forward_and_back_without_losing_a_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let fleet = fleet(&server).await;
    let pk = server.create_key(&["ingest", "validate"]).await;
    let mut before = BTreeMap::new();
    for id in fleet.licenses.keys() {
        before.insert(id.clone(), document(&server, id).await);
    }
    // A seat taken before the switch.
    let first = fleet.licenses.keys().next().unwrap().clone();
    let r = server
        .post_json(
            &pk,
            &format!("/api/v1/licenses/{first}/seats"),
            &json!({"fingerprint": "m1"}),
        )
        .await;
    assert_eq!(r.status(), 201);

    for (bad, code) in [
        (
            json!({"selection": {}, "target": "usage@1"}),
            "INVALID_MIGRATION",
        ),
        (
            json!({"selection": {"product": "cad"}, "target": "nope@1"}),
            "NOT_FOUND",
        ),
        (
            json!({"selection": {"product": "cad"}, "target": "usage@1", "extra": 1}),
            "INVALID_MIGRATION",
        ),
    ] {
        let (_, e) = post(&server, "/api/v1/migrations", bad).await;
        assert_eq!(e["code"], code, "{e}");
    }
    let (s, m) = post(&server, "/api/v1/migrations", spec()).await;
    assert_eq!((s, m["status"].as_str()), (201, Some("draft")), "{m}");
    let mid = m["id"].as_str().unwrap().to_owned();

    // The dry run reports every selected license and changes none.
    let (s, dry) = post(
        &server,
        &format!("/api/v1/migrations/{mid}/dry-run?limit=5"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{dry}");
    assert_eq!(
        dry["summary"],
        json!({"selected": 13, "convertible": 12, "cannot_convert": 1, "already_migrated": 0})
    );
    assert_eq!(
        dry["cannot_convert"][0]["license_id"],
        fleet.no_seats.as_str()
    );
    assert!(dry["cannot_convert"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("no seat policy"));
    assert_eq!(dry["items"].as_array().unwrap().len(), 5);
    let item = dry["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["after"].is_object())
        .unwrap();
    assert_eq!(item["before"]["plan"], "seats@1");
    assert_eq!(
        (
            item["after"]["plan"].as_str(),
            item["after"]["policy"]["type"].as_str()
        ),
        (Some("usage@1"), Some("hybrid"))
    );
    assert_eq!(
        item["after"]["policy"]["usage"]["quotas"][0]["limit"].as_f64(),
        Some(1000.0)
    );
    for (id, doc) in &before {
        assert_eq!(
            &document(&server, id).await,
            doc,
            "the dry run changed {id}"
        );
    }

    // Canary: 10 % of 13 is 2 licenses (in id order, so the one without
    // seats may be among them, failing with its reason), in chunks of one.
    let apply_path = format!("/api/v1/migrations/{mid}/apply");
    let apply = |body: Value| post(&server, &apply_path, body);
    let (s, step) = apply(json!({"percent": 10, "chunk": 1})).await;
    assert_eq!(s, 200, "{step}");
    let canary = step["step"]["migrated"].as_u64().unwrap();
    assert_eq!(step["step"]["step"], 1);
    assert_eq!(
        canary + step["step"]["failed"].as_u64().unwrap(),
        2,
        "{step}"
    );
    assert_eq!(step["progress"]["migrated"], canary);
    let mut on = BTreeMap::new();
    for (id, key) in &fleet.licenses {
        on.insert(id.clone(), validated_plan(&server, &pk, key).await);
    }
    let migrated: Vec<&String> = on
        .iter()
        .filter(|(_, p)| p.as_deref() == Some("usage@1"))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(migrated.len() as u64, canary, "{on:?}");
    assert!(on
        .values()
        .all(|p| matches!(p.as_deref(), Some("usage@1" | "seats@1"))));

    // A second migration over the same licenses is refused, naming the first.
    let (_, m2) = post(&server, "/api/v1/migrations", spec()).await;
    let (s, e) = post(
        &server,
        &format!("/api/v1/migrations/{}/apply", m2["id"].as_str().unwrap()),
        json!({"count": 1}),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("CONFLICT")), "{e}");
    assert!(e["message"].as_str().unwrap().contains(&mid), "{e}");

    // The rest: the license without seats fails with its reason, the other product is untouched.
    let (s, step) = apply(json!({"percent": 100})).await;
    assert_eq!(s, 200, "{step}");
    assert_eq!(
        (
            step["step"]["migrated"].as_u64(),
            step["step"]["failed"].as_u64()
        ),
        (Some(12 - canary), Some(1)),
        "{step}"
    );
    assert_eq!(
        step["step"]["failures"][0]["license_id"],
        fleet.no_seats.as_str()
    );
    assert_eq!(step["progress"]["migrated"], 12);
    let other = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/licenses/{}", fleet.other_product),
        )
        .await;
    assert_eq!(other["plan"], "seats@1");
    // The seat taken before the switch still validates (seats kept: hybrid).
    let key = &fleet.licenses[&first];
    let v = server
        .validate_license(&pk, json!({"key": key, "fingerprint": "m1"}))
        .await;
    assert_eq!(v["code"], "VALID", "{v}");

    // Someone changes one migrated license; rollback leaves it and restores the rest.
    let changed = fleet.licenses.keys().nth(5).unwrap().clone();
    let r = server
        .client
        .patch(server.url(&format!("/api/v1/licenses/{changed}")))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"customer": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, rb) = post(
        &server,
        &format!("/api/v1/migrations/{mid}/rollback"),
        json!({"chunk": 5}),
    )
    .await;
    assert_eq!(s, 200, "{rb}");
    assert_eq!(
        (
            rb["rollback"]["restored"].as_u64(),
            rb["rollback"]["conflicts"].as_u64()
        ),
        (Some(11), Some(1)),
        "{rb}"
    );
    assert_eq!(
        rb["rollback"]["conflicts_listed"][0]["license_id"],
        changed.as_str()
    );
    for (id, doc) in &before {
        let now = document(&server, id).await;
        if *id == changed {
            assert!(now.contains("renamed") && now.contains("usage@1"), "{now}");
        } else {
            assert_eq!(&now, doc, "{id} is not restored byte for byte");
        }
    }
    assert_eq!(
        validated_plan(&server, &pk, key).await.as_deref(),
        Some("seats@1")
    );
    let seats = server
        .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{first}/seats"))
        .await;
    assert_eq!(seats["seats"].as_array().unwrap().len(), 1, "{seats}");

    let h = server
        .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{first}/history"))
        .await;
    let changes: Vec<(&str, Option<&str>)> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["change"].as_str().unwrap(), e["terms"]["plan"].as_str()))
        .collect();
    assert_eq!(
        changes,
        [
            ("created", Some("seats@1")),
            ("migrated", Some("usage@1")),
            ("rolled_back", Some("seats@1"))
        ]
    );
    assert_eq!(h["items"][1]["migration"], mid.as_str());

    // Completed: frozen.
    let (s, done) = post(
        &server,
        &format!("/api/v1/migrations/{mid}/complete"),
        json!({}),
    )
    .await;
    assert_eq!(
        (s, done["status"].as_str()),
        (200, Some("completed")),
        "{done}"
    );
    let (s, e) = post(
        &server,
        &format!("/api/v1/migrations/{mid}/rollback"),
        json!({}),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("CONFLICT")), "{e}");
    let shown = server
        .get_json(ADMIN_KEY, &format!("/api/v1/migrations/{mid}"))
        .await;
    assert_eq!(shown["steps"].as_array().unwrap().len(), 2);
    server.stop();

    let out = replay(&data);
    assert_success(&out);
    let server = Server::start(&data);
    assert_eq!(
        server
            .get_json(ADMIN_KEY, &format!("/api/v1/migrations/{mid}"))
            .await,
        shown
    );
    for (id, doc) in &before {
        if *id != changed {
            assert_eq!(&document(&server, id).await, doc);
        }
    }
    server.stop();
}

async fn migrate_cli(url: &str, args: &[&str]) -> (bool, Value, String) {
    let out = tokio::process::Command::new(bin())
        .arg("migrate")
        .args(args)
        .args(["--url", url])
        .env("KEYMETER_ADMIN_KEY", ADMIN_KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_plans_applies_and_rolls_back_a_migration_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let fleet = fleet(&server).await;
    let url = server.url("");
    let file = dir.path().join("migration.json");
    std::fs::write(&file, spec().to_string()).unwrap();
    let (ok, planned, err) = migrate_cli(&url, &["plan", file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert_eq!(
        planned["dry_run"]["summary"]["convertible"], 12,
        "{planned}"
    );
    assert_eq!(planned["migration"]["status"], "draft");
    let id = planned["migration"]["id"].as_str().unwrap();
    let (ok, applied, err) = migrate_cli(&url, &["apply", id, "--percent", "100"]).await;
    assert!(ok, "{err}");
    assert_eq!(applied["progress"]["migrated"], 12, "{applied}");
    assert!(err.contains("apply: 12 licenses"), "{err}");
    let first = fleet.licenses.keys().next().unwrap();
    let doc = server
        .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{first}"))
        .await;
    assert_eq!(doc["plan"], "usage@1");
    let (ok, rolled, err) = migrate_cli(&url, &["rollback", id]).await;
    assert!(ok, "{err}");
    assert_eq!(rolled["rollback"]["restored"], 12, "{rolled}");
    let (ok, done, err) = migrate_cli(&url, &["complete", id]).await;
    assert!(ok && done["status"] == "completed", "{err}");
    let (ok, _, err) = migrate_cli(&url, &["rollback", id]).await;
    assert!(!ok && err.contains("409"), "{err}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"selection\": {}}").unwrap();
    let (ok, _, err) = migrate_cli(&url, &["plan", bad.to_str().unwrap()]).await;
    assert!(!ok && err.contains("INVALID_MIGRATION"), "{err}");
    server.stop();
}
