//! Licensing end to end against the real binary: seat allocation under
//! concurrency (and after restart and replay), validation codes, signed
//! verdicts and license files checked with `keymeter-client`, quotas, the
//! license key never leaving the server after creation, the schema, the CLI.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{json, Value};

/// A server whose data directory sits in its own temporary directory, so the
/// generated master key (`<data>.master-key`, beside it) is cleaned up too.
struct Fixture {
    root: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn data(&self) -> std::path::PathBuf {
        self.root.path().join("data")
    }

    fn start(&self) -> Server {
        Server::start(&self.data())
    }
}

async fn seat_ids(server: &Server, id: &str) -> BTreeMap<String, String> {
    let r = server
        .get(ADMIN_KEY, &format!("/api/v1/licenses/{id}/seats"))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["seat_id"].as_str().unwrap().to_owned(),
                s["fingerprint"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The lease token a machine proposes at checkout, so its retries get its
/// seat back.
fn lease_token(fingerprint: &str) -> String {
    format!("token-of-{fingerprint}-0123456789abcdef")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checkouts_grant_exactly_the_seat_limit_across_restart_and_replay() {
    let fx = Fixture::new();
    let server = fx.start();
    let lic = server.create_license(json!({"product": "ide", "customer": "acme",
               "policy": {"type": "seat", "seats": {"max": 10, "mode": "floating", "lease_ttl_s": 3600}}}),
    )
    .await;
    let id = lic["id"].as_str().unwrap().to_owned();
    let product_key = server.create_key(&["ingest", "validate"]).await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (client, url, key) = (
            server.client.clone(),
            server.url(&format!("/api/v1/licenses/{id}/seats")),
            product_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let fp = format!("machine-{}", i % 200);
            let r = client
                .post(url)
                .bearer_auth(key)
                .json(&json!({"fingerprint": fp, "lease_token": lease_token(&fp)}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (fp, status, body)
        }));
    }
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut refused = 0;
    for t in tasks {
        let (fp, status, body) = t.await.unwrap();
        match status {
            200 | 201 => {
                granted
                    .entry(fp)
                    .or_default()
                    .insert(body["seat_id"].as_str().unwrap().to_owned());
            }
            409 => {
                assert_eq!(body["code"], "SEAT_LIMIT_EXCEEDED");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(granted.len(), 10, "fingerprints holding a seat");
    assert!(
        granted.values().all(|seats| seats.len() == 1),
        "one seat per fingerprint"
    );
    assert!(refused >= 1000 - 10 * 5);
    let live: BTreeMap<String, String> = granted
        .iter()
        .map(|(fp, s)| (s.iter().next().unwrap().clone(), fp.clone()))
        .collect();
    assert_eq!(seat_ids(&server, &id).await, live);

    server.stop();
    let server = fx.start();
    assert_eq!(seat_ids(&server, &id).await, live, "after restart");
    let r = server
        .post_json(
            &product_key,
            &format!("/api/v1/licenses/{id}/seats"),
            &json!({"fingerprint": "machine-new"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    server.stop();

    let out = replay(&fx.data());
    assert_success(&out);
    let server = fx.start();
    assert_eq!(seat_ids(&server, &id).await, live, "after replay");
    // Same fingerprint again with its lease token: the seat it holds (the
    // token's digest came back with the replay); without it, refused.
    let (seat, fp) = live.iter().next().unwrap();
    let seats_url = format!("/api/v1/licenses/{id}/seats");
    let again = json!({"fingerprint": fp, "lease_token": lease_token(fp)});
    let r = server.post_json(&product_key, &seats_url, &again).await;
    assert_eq!(r.status(), 200);
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["seat_id"], seat.as_str());
    assert_eq!(body["lease_token"], lease_token(fp));
    let r = server
        .post_json(&product_key, &seats_url, &json!({"fingerprint": fp}))
        .await;
    assert_eq!(r.status(), 403);
    // Release (with the token) frees a seat for someone else.
    let r = server
        .request(
            reqwest::Method::DELETE,
            &product_key,
            &format!("/api/v1/licenses/{id}/seats/{seat}"),
        )
        .header("Lease-Token", lease_token(fp))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = server
        .post_json(
            &product_key,
            &format!("/api/v1/licenses/{id}/seats"),
            &json!({"fingerprint": "machine-new"}),
        )
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_answers_each_code_with_a_verifiable_token() {
    let fx = Fixture::new();
    let server = fx.start();
    let keys = server.jwks_keys().await;
    let lic = server
        .create_license(
            json!({"product": "cad", "customer": "acme", "entitlements": ["export", "pro"],
               "expires_at": "2099-01-01T00:00:00Z",
               "policy": {"type": "seat", "seats": {"max": 1, "mode": "node_locked"}}}),
        )
        .await;
    let (id, key) = (lic["id"].as_str().unwrap(), lic["key"].as_str().unwrap());
    let pk = server.create_key(&["ingest", "validate"]).await;
    let code = |v: &Value| v["code"].as_str().unwrap().to_owned();

    let v = server
        .validate_license(&pk, json!({"key": "lk_wrong", "nonce": "n0"}))
        .await;
    assert_eq!(
        (code(&v), v["valid"].as_bool()),
        ("NOT_FOUND".into(), Some(false))
    );
    assert!(v["license"].is_null());
    let claims =
        keymeter_client::verify_token(v["token"].as_str().unwrap(), &keys, now_s()).unwrap();
    assert_eq!((claims.code.as_str(), claims.valid), ("NOT_FOUND", false));

    let v = server.validate_license(&pk, json!({"key": key})).await;
    assert_eq!(code(&v), "NO_SEAT");
    let r = server
        .post_json(
            &pk,
            &format!("/api/v1/licenses/{id}/seats"),
            &json!({"fingerprint": "host-a"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let v = server
        .validate_license(
            &pk,
            json!({"key": key, "fingerprint": "host-a", "entitlements": ["pro"], "nonce": "n1"}),
        )
        .await;
    assert_eq!(
        (code(&v), v["valid"].as_bool()),
        ("VALID".into(), Some(true))
    );
    assert_eq!(v["seats"], json!({"used": 1, "max": 1}));
    assert_eq!(v["expires_at"], "2099-01-01T00:00:00Z");
    let token = v["token"].as_str().unwrap();
    let claims = keymeter_client::verify_token_for_nonce(token, &keys, now_s(), "n1").unwrap();
    assert_eq!((claims.sub.as_str(), claims.code.as_str()), (id, "VALID"));
    assert_eq!(claims.entitlements, vec!["export", "pro"]);
    assert!(claims.exp - claims.iat == 300);
    // A tampered token fails verification: claims changed, or signature changed.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut c: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        c["code"] = json!("VALID");
        c["sub"] = json!("lic_someone_else");
        format!("{}.{}.{}", parts[0], b64.encode(c.to_string()), parts[2])
    };
    assert!(keymeter_client::verify_token(&forged_claims, &keys, now_s()).is_err());
    let mut sig = parts[2].to_owned();
    sig.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
    let forged_sig = format!("{}.{}.{sig}", parts[0], parts[1]);
    assert!(keymeter_client::verify_token(&forged_sig, &keys, now_s()).is_err());

    let v = server
        .validate_license(&pk, json!({"key": key, "fingerprint": "host-b"}))
        .await;
    assert_eq!(code(&v), "FINGERPRINT_MISMATCH");
    let v = server
        .validate_license(
            &pk,
            json!({"key": key, "fingerprint": "host-a", "entitlements": ["sso"]}),
        )
        .await;
    assert_eq!(code(&v), "ENTITLEMENT_MISSING");

    let post = |path: String, body: Value| {
        let server = &server;
        async move { server.post_json(ADMIN_KEY, &path, &body).await }
    };
    let r = post(
        format!("/api/v1/licenses/{id}/suspend"),
        json!({"reason": "unpaid"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v = server
        .validate_license(&pk, json!({"key": key, "fingerprint": "host-a"}))
        .await;
    assert_eq!(code(&v), "SUSPENDED");
    let r = post(format!("/api/v1/licenses/{id}/reinstate"), json!({})).await;
    assert_eq!(r.status(), 200);
    let v = server
        .validate_license(&pk, json!({"key": key, "fingerprint": "host-a"}))
        .await;
    assert_eq!(code(&v), "VALID");
    let r = post(format!("/api/v1/licenses/{id}/revoke"), json!({})).await;
    assert_eq!(r.status(), 200);
    let v = server
        .validate_license(&pk, json!({"key": key, "fingerprint": "host-a"}))
        .await;
    assert_eq!(code(&v), "REVOKED");
    let r = post(format!("/api/v1/licenses/{id}/reinstate"), json!({})).await;
    assert_eq!(r.status(), 409, "revocation is final");

    // Time: not yet valid, expired, in grace.
    let future = server
        .create_license(
            json!({"product": "cad", "customer": "acme", "starts_at": "2098-01-01T00:00:00Z"}),
        )
        .await;
    let v = server
        .validate_license(&pk, json!({"key": future["key"]}))
        .await;
    assert_eq!(code(&v), "NOT_YET_VALID");
    let past = json!({"product": "cad", "customer": "acme",
        "starts_at": "2020-01-01T00:00:00Z", "expires_at": "2021-01-01T00:00:00Z"});
    let expired = server.create_license(past.clone()).await;
    let v = server
        .validate_license(&pk, json!({"key": expired["key"]}))
        .await;
    assert_eq!(code(&v), "EXPIRED");
    let mut graced = past;
    graced["grace_period_s"] = json!(300_000_000u64);
    let graced = server.create_license(graced).await;
    let v = server
        .validate_license(&pk, json!({"key": graced["key"]}))
        .await;
    assert_eq!(
        (code(&v), v["valid"].as_bool()),
        ("IN_GRACE".into(), Some(true))
    );
    // Renewal ends the grace.
    let gid = graced["id"].as_str().unwrap();
    let r = post(
        format!("/api/v1/licenses/{gid}/renew"),
        json!({"extend": "30d"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v = server
        .validate_license(&pk, json!({"key": graced["key"]}))
        .await;
    assert_eq!(code(&v), "VALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_a_quota_blocks_or_reports_the_overage() {
    let fx = Fixture::new();
    let server = fx.start();
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let quota = |overage: &str| {
        json!({"product": "api", "customer": "acme",
               "policy": {"type": "usage", "usage": {"quotas": [
                   {"meter": "calls", "limit": 5, "period": "month", "overage": overage,
                    "alert_thresholds_pct": [80, 100]}]}}})
    };
    let block = server.create_license(quota("block")).await;
    let allow = server.create_license(quota("allow")).await;
    let pk = server.create_key(&["ingest", "validate"]).await;
    let now = time_from_now(0);
    let send = |lic: &Value, from: usize, n: usize| {
        let events: Vec<Value> = (from..from + n)
            .map(|i| {
                event(
                    &format!("{}-{i}", lic["id"].as_str().unwrap()),
                    "api_call",
                    lic["id"].as_str().unwrap(),
                    &now,
                    json!({}),
                )
            })
            .collect();
        let server = &server;
        async move { assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204) }
    };
    for lic in [&block, &allow] {
        // Validated once before usage (fills the in-memory usage), then usage
        // arrives: the next validation must see it.
        let v = server
            .validate_license(&pk, json!({"key": lic["key"], "meter": "calls"}))
            .await;
        assert_eq!(v["quota"]["used"], 0.0);
        send(lic, 0, 4).await;
        let v = server
            .validate_license(&pk, json!({"key": lic["key"]}))
            .await;
        assert_eq!(
            (v["code"].as_str(), v["quota"]["used"].as_f64()),
            (Some("VALID"), Some(4.0))
        );
        assert_eq!(v["quota"]["thresholds_crossed_pct"], json!([80]));
        send(lic, 4, 2).await;
    }
    let v = server
        .validate_license(&pk, json!({"key": block["key"]}))
        .await;
    assert_eq!(
        (v["code"].as_str(), v["valid"].as_bool()),
        (Some("QUOTA_EXCEEDED"), Some(false))
    );
    assert_eq!(v["quota"]["used"], 6.0);
    let v = server
        .validate_license(&pk, json!({"key": allow["key"], "nonce": "q"}))
        .await;
    assert_eq!(
        (v["code"].as_str(), v["valid"].as_bool()),
        (Some("VALID"), Some(true))
    );
    assert_eq!(
        (v["quota"]["used"].as_f64(), v["quota"]["overage"].as_f64()),
        (Some(6.0), Some(1.0))
    );
    assert_eq!(v["quota"]["thresholds_crossed_pct"], json!([80, 100]));
    let claims = keymeter_client::verify_token(
        v["token"].as_str().unwrap(),
        &server.jwks_keys().await,
        now_s(),
    )
    .unwrap();
    let q = claims.quota.unwrap();
    assert_eq!((q.meter.as_str(), q.used, q.limit), ("calls", 6.0, 5.0));
    assert!(q.period_end.is_some());
    // Validation is read-only: usage did not move, and the same holds after a restart.
    server.stop();
    let server = fx.start();
    let v = server
        .validate_license(&pk, json!({"key": block["key"]}))
        .await;
    assert_eq!(
        (v["code"].as_str(), v["quota"]["used"].as_f64()),
        (Some("QUOTA_EXCEEDED"), Some(6.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_files_open_with_the_key_and_fail_when_tampered() {
    let fx = Fixture::new();
    let server = fx.start();
    let keys = server.jwks_keys().await;
    let lic = server
        .create_license(json!({"product": "cad", "customer": "acme", "entitlements": ["pro"]}))
        .await;
    let (id, key) = (lic["id"].as_str().unwrap(), lic["key"].as_str().unwrap());
    let issue = |body: Value| {
        let server = &server;
        async move {
            let r = server
                .post_json(
                    ADMIN_KEY,
                    &format!("/api/v1/licenses/{id}/license-file"),
                    &body,
                )
                .await;
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let file = issue(json!({"ttl": "7d"})).await;
    // Issuing is an audited fact in the log, without the file itself.
    let log = fx.data().join("log");
    let head = keymeter::log::verify(&log).unwrap().head_seq;
    let issued: Vec<_> = keymeter::log::read_range(&log, 1, head)
        .unwrap()
        .filter_map(
            |e| match keymeter::record::Record::decode(&e.unwrap().payload).unwrap() {
                keymeter::record::Record::LicenseFileIssued { issue, audit } => {
                    Some((issue, audit))
                }
                _ => None,
            },
        )
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].0.license_id, id);
    assert!(!issued[0].0.fingerprint_bound);
    assert!(issued[0].1.actor.is_some() && issued[0].1.request_id.is_some());
    let opened = keymeter_client::open_license_file(&file, key, None, &keys, now_s()).unwrap();
    assert_eq!(opened.license["id"], id);
    assert_eq!(opened.license["entitlements"], json!(["pro"]));
    assert!(opened.license.get("key").is_none());
    assert_eq!(opened.expires_at - opened.issued_at, 7 * 86400);
    assert!(
        keymeter_client::open_license_file(&file, key, None, &keys, now_s() + 8 * 86400).is_err()
    );
    assert!(keymeter_client::open_license_file(&file, "lk_wrong", None, &keys, now_s()).is_err());
    let mut f: Value = serde_json::from_str(&file).unwrap();
    for field in ["ciphertext", "signature", "nonce", "license_id"] {
        let mut t = f.clone();
        let s = t[field].as_str().unwrap().to_owned();
        let first = if s.starts_with('A') { "B" } else { "A" };
        let flipped = format!("{first}{}", &s[1..]);
        t[field] = json!(flipped);
        assert!(
            keymeter_client::open_license_file(&t.to_string(), key, None, &keys, now_s()).is_err(),
            "tampered {field} must fail"
        );
    }
    f["fingerprint_bound"] = json!(true);
    assert!(
        keymeter_client::open_license_file(&f.to_string(), key, Some("x"), &keys, now_s()).is_err()
    );

    let bound = issue(json!({"fingerprint": "host-a"})).await;
    assert!(
        keymeter_client::open_license_file(&bound, key, Some("host-a"), &keys, now_s()).is_ok()
    );
    assert!(
        keymeter_client::open_license_file(&bound, key, Some("host-b"), &keys, now_s()).is_err()
    );
    assert!(keymeter_client::open_license_file(&bound, key, None, &keys, now_s()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_license_key_is_shown_once_and_never_stored_or_logged() {
    let fx = Fixture::new();
    let server = fx.start();
    let lic = server
        .create_license(json!({"product": "cad", "customer": "acme",
               "policy": {"type": "seat", "seats": {"max": 2, "mode": "floating"}}}))
        .await;
    let (id, key) = (
        lic["id"].as_str().unwrap().to_owned(),
        lic["key"].as_str().unwrap().to_owned(),
    );
    assert!(key.starts_with("lk_"));
    let secret_part = key.trim_start_matches("lk_").to_owned();
    let mut answers = Vec::new();
    let pk = server.create_key(&["ingest", "validate"]).await;
    for (k, method, path, body) in [
        (
            ADMIN_KEY,
            "GET",
            format!("/api/v1/licenses/{id}"),
            Value::Null,
        ),
        (ADMIN_KEY, "GET", "/api/v1/licenses".to_owned(), Value::Null),
        (
            ADMIN_KEY,
            "PATCH",
            format!("/api/v1/licenses/{id}"),
            json!({"customer": "acme-2"}),
        ),
        (
            ADMIN_KEY,
            "POST",
            format!("/api/v1/licenses/{id}/suspend"),
            json!({}),
        ),
        (
            ADMIN_KEY,
            "POST",
            format!("/api/v1/licenses/{id}/reinstate"),
            json!({}),
        ),
        (
            ADMIN_KEY,
            "POST",
            format!("/api/v1/licenses/{id}/renew"),
            json!({"extend": "10d"}),
        ),
        (
            ADMIN_KEY,
            "POST",
            format!("/api/v1/licenses/{id}/license-file"),
            json!({}),
        ),
        (
            pk.as_str(),
            "POST",
            format!("/api/v1/licenses/{id}/seats"),
            json!({"fingerprint": "m1"}),
        ),
        (
            ADMIN_KEY,
            "GET",
            format!("/api/v1/licenses/{id}/seats"),
            Value::Null,
        ),
        (
            pk.as_str(),
            "POST",
            "/api/v1/licenses/validate".to_owned(),
            json!({"key": key, "fingerprint": "m1"}),
        ),
        (
            pk.as_str(),
            "POST",
            "/api/v1/licenses/validate".to_owned(),
            json!({"key": format!("{key}x")}),
        ),
        (ADMIN_KEY, "GET", "/metrics".to_owned(), Value::Null),
    ] {
        let mut req = server.request(method.parse().unwrap(), k, &path);
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        answers.push(r.text().await.unwrap());
    }
    for a in &answers {
        assert!(
            !a.contains(&secret_part),
            "an answer after creation holds the key: {a}"
        );
    }
    assert!(answers[9].contains("\"VALID\""));
    let stderr = server.stderr();
    server.stop();
    assert!(
        !stderr.contains(&secret_part),
        "the server log holds the key"
    );
    assert!(
        stderr.contains("master key"),
        "the log says where the master key came from"
    );
    assert_no_file_holds(&fx.data(), &[key.as_bytes(), secret_part.as_bytes()]);
    // The master key sits beside the data directory, not inside it.
    assert!(fx.root.path().join("data.master-key").exists());
    assert!(walk(&fx.data())
        .iter()
        .all(|p| !p.to_string_lossy().contains("master-key")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_answers_conform_to_the_published_schema() {
    let validator = schema("license/v1.json");
    let check = |v: &Value| {
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v}: {errors:?}");
    };
    let fx = Fixture::new();
    let server = fx.start();
    server
        .create_meter(json!({"slug": "tokens", "eventType": "llm", "aggregation": "SUM", "valueProperty": "$.n"}))
        .await;
    let bodies = [
        json!({"product": "p", "customer": "c"}),
        json!({"product": "p", "customer": "c", "trial": true, "expires_at": "2030-01-01T00:00:00Z",
               "grace_period_s": 3600, "entitlements": ["a"], "metadata": {"plan": "gold", "n": 3},
               "policy": {"type": "hybrid", "seats": {"max": 3, "mode": "node_locked"},
                          "usage": {"quotas": [{"meter": "tokens", "limit": 1000.5, "period": "day", "overage": "allow"}]}}}),
        json!({"product": "p", "customer": "c",
               "policy": {"type": "usage", "usage": {"quotas": [{"meter": "tokens", "limit": 10, "period": "lifetime", "overage": "block", "alert_thresholds_pct": [50]}]}}}),
    ];
    let mut ids = Vec::new();
    for b in bodies {
        let created = server.create_license(b).await;
        check(&created);
        ids.push(created["id"].as_str().unwrap().to_owned());
        let v = server
            .validate_license(ADMIN_KEY, json!({"key": created["key"]}))
            .await;
        check(&v["license"]);
    }
    for id in &ids {
        let r = server
            .get(ADMIN_KEY, &format!("/api/v1/licenses/{id}"))
            .await;
        check(&r.json().await.unwrap());
        let r = server
            .post_json(
                ADMIN_KEY,
                &format!("/api/v1/licenses/{id}/suspend"),
                &json!({"reason": "r"}),
            )
            .await;
        check(&r.json().await.unwrap());
    }
    let list = server
        .get_json(ADMIN_KEY, "/api/v1/licenses?status=suspended")
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    for item in list["items"].as_array().unwrap() {
        check(item);
    }
    // The schema refuses what the server refuses.
    let bad = json!({"product": "p", "customer": "c", "policy": {"type": "seat"}});
    let r = server.post_json(ADMIN_KEY, "/api/v1/licenses", &bad).await;
    assert_eq!(r.status(), 400);
    let r = server
        .post_json(ADMIN_KEY, "/api/v1/licenses", &json!({"product": "p", "customer": "c",
            "policy": {"type": "usage", "usage": {"quotas": [{"meter": "nope", "limit": 1, "period": "day", "overage": "block"}]}}}))
        .await;
    assert_eq!(r.status(), 400, "a quota must name an existing meter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_cli_manages_licenses_on_a_running_server() {
    let fx = Fixture::new();
    let server = fx.start();
    let (ok, out, err) = license_cli(
        &server.base,
        &[
            "create",
            "--product",
            "cad",
            "--customer",
            "acme",
            "--entitlement",
            "pro",
            "--policy",
            r#"{"type":"seat","seats":{"max":2,"mode":"floating"}}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(created["key"].as_str().unwrap().starts_with("lk_"));
    let (ok, out, _) = license_cli(&server.base, &["suspend", id, "--reason", "audit"]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["status"],
        "suspended"
    );
    let (ok, out, _) = license_cli(&server.base, &["list", "--status", "suspended"]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["items"][0]["id"],
        id
    );
    let (ok, _, err) = license_cli(&server.base, &["suspend", id]).await;
    assert!(!ok && err.contains("409"), "{err}");
    let (ok, out, _) = license_cli(
        &server.base,
        &["renew", id, "--expires-at", "2099-01-01T00:00:00Z"],
    )
    .await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["expires_at"],
        "2099-01-01T00:00:00Z"
    );
    let (ok, out, _) = license_cli(&server.base, &["show", id]).await;
    assert!(ok && !out.contains("lk_"));
    let out = std::process::Command::new(bin())
        .args(["license", "show", id, "--url", &server.base])
        .env_remove("KEYMETER_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
