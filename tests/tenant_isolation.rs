//! Products are tenants, against the real binary: a key bound to one
//! product cannot take, renew or release another product's seats, validate
//! its licenses or send usage on them; such calls answer as if the license
//! did not exist, and are counted. An unbound `ingest` key reaches no
//! license call; a `validate` key reaches them but cannot send usage.

mod common;

use common::{event, time_from_now, Server, ADMIN_KEY};
use serde_json::{json, Value};

async fn bound_key(server: &Server, product: &str, scopes: &[&str]) -> String {
    server
        .create_key_with(json!({"name": product, "scopes": scopes, "product": product}))
        .await
}

async fn status_and_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or("").to_owned())
}

async fn checkout(server: &Server, key: &str, license: &str, fingerprint: &str) -> (u16, Value) {
    let r = server
        .post_json(
            key,
            &format!("/api/v1/licenses/{license}/seats"),
            &json!({"fingerprint": fingerprint}),
        )
        .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn validate(server: &Server, key: &str, license_key: &str) -> (u16, Value) {
    let body = json!({"key": license_key, "fingerprint": "m1"});
    let r = server
        .post_json(key, "/api/v1/licenses/validate", &body)
        .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_key_acts_only_on_its_own_products_licenses() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    for p in ["acme", "globex"] {
        server
            .create_product(json!({"id": p, "requireSignatures": false}))
            .await;
    }
    let acme = bound_key(&server, "acme", &["ingest"]).await;
    let globex = bound_key(&server, "globex", &["ingest"]).await;
    let globex_license = server
        .create_license(json!({"product": "globex", "customer": "c",
            "policy": {"type": "seat", "seats": {"max": 3, "mode": "floating"}}}))
        .await;
    let id = globex_license["id"].as_str().unwrap();
    let license_key = globex_license["key"].as_str().unwrap();

    // acme's key cannot take globex's seats: every try is "not found".
    for i in 0..4 {
        let (status, body) = checkout(&server, &acme, id, &format!("acme-{i}")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{body}"
        );
    }
    // globex's own machines still get all three seats.
    let mut seats = Vec::new();
    for i in 0..3 {
        let fingerprint = ["m1", "m2", "m3"][i];
        let (status, body) = checkout(&server, &globex, id, fingerprint).await;
        assert_eq!(status, 201, "{body}");
        seats.push(body["seat_id"].as_str().unwrap().to_owned());
    }
    // ... and acme's key can neither renew nor release them.
    let seat = &seats[0];
    let r = server
        .post_json(
            &acme,
            &format!("/api/v1/licenses/{id}/seats/{seat}/heartbeat"),
            &json!({}),
        )
        .await;
    assert_eq!(status_and_code(r).await, (404, "NOT_FOUND".into()));
    let r = server
        .delete(&acme, &format!("/api/v1/licenses/{id}/seats/{seat}"))
        .await;
    assert_eq!(status_and_code(r).await, (404, "NOT_FOUND".into()));
    let listed = server
        .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{id}/seats"))
        .await;
    assert_eq!(listed["used"], 3, "{listed}");

    // Validation: acme's key learns nothing about globex's license.
    let (status, v) = validate(&server, &acme, license_key).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (200, Some("NOT_FOUND")),
        "{v}"
    );
    assert!(v["license"].is_null(), "{v}");
    let (_, v) = validate(&server, &globex, license_key).await;
    assert_eq!(v["code"], "VALID", "{v}");

    // Usage on globex's license from acme's key is refused per event; the
    // rest of the batch is recorded.
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let now = time_from_now(0);
    let r = server
        .ingest(
            &acme,
            &[
                event("u1", "api_call", id, &now, json!({})),
                event("u2", "api_call", "acme-customer", &now, json!({})),
            ],
        )
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(body["rejected"][0]["index"], 0, "{body}");
    assert_eq!(body["rejected"][0]["code"], "SUBJECT_NOT_OWNED", "{body}");
    assert_eq!(server.total("calls", &format!("subject={id}")).await, 0.0);
    let r = server
        .ingest(&globex, &[event("u3", "api_call", id, &now, json!({}))])
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(server.total("calls", &format!("subject={id}")).await, 1.0);

    for (call, n) in [("seat", 6.0), ("validate", 1.0), ("usage", 1.0)] {
        let series =
            format!("keymeter_cross_product_refusals_total{{call=\"{call}\",product=\"acme\"}}");
        assert_eq!(server.metric(&series).await, n, "{series}");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_ingest_keys_reach_no_license_call_and_validate_keys_send_no_usage() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    server
        .create_product(json!({"id": "acme", "requireSignatures": false}))
        .await;
    let license = server
        .create_license(json!({"product": "acme", "customer": "c",
            "policy": {"type": "seat", "seats": {"max": 2, "mode": "floating"}}}))
        .await;
    let id = license["id"].as_str().unwrap();
    let license_key = license["key"].as_str().unwrap();

    let unbound_ingest = server.create_key(&["ingest"]).await;
    let (status, body) = checkout(&server, &unbound_ingest, id, "m1").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("bound to a product"),
        "{body}"
    );
    let (status, _) = validate(&server, &unbound_ingest, license_key).await;
    assert_eq!(status, 403);

    // A `validate` key (what an end-user application holds) validates and
    // checks out, bound or not, but cannot send usage.
    let unbound_validate = server.create_key(&["validate"]).await;
    let acme_validate = bound_key(&server, "acme", &["validate"]).await;
    let (status, body) = checkout(&server, &acme_validate, id, "m1").await;
    assert_eq!(status, 201, "{body}");
    for key in [&unbound_validate, &acme_validate] {
        let (_, v) = validate(&server, key, license_key).await;
        assert_eq!(v["code"], "VALID", "{v}");
        let r = server
            .ingest(
                key,
                &[event("x", "api_call", id, &time_from_now(0), json!({}))],
            )
            .await;
        assert_eq!(status_and_code(r).await, (403, "FORBIDDEN".into()));
    }
    server.stop();
}

/// Signs an ingest call with a chosen nonce.
fn signed_with_nonce(secret: &str, sid: &str, nonce: &str, body: &[u8]) -> String {
    use keymeter_client::signing::{sign, RequestParts};
    let req = RequestParts {
        method: "POST",
        path: "/api/v1/events",
        query: "",
        body,
    };
    sign(secret, sid, common::now_s(), nonce, &req).to_header_value()
}

/// Nonces whose unkeyed digest (SHA-256 of secret id, 0, nonce) starts with
/// a byte in shard 0 of 16: what a product grinding one shard would send.
fn aimed_nonces(sid: &str) -> impl Iterator<Item = String> + '_ {
    use sha2::{Digest, Sha256};
    (0u64..)
        .map(|i| format!("aimed-nonce-{i:08}"))
        .filter(move |n| {
            let d = Sha256::new()
                .chain_update(sid.as_bytes())
                .chain_update([0])
                .chain_update(n.as_bytes())
                .finalize();
            d[0].is_multiple_of(16)
        })
}

/// One product spending its whole nonce memory, aimed at one shard or not,
/// makes only its own signed calls wait; another product's go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_product_filling_its_nonce_memory_does_not_refuse_another_products_calls() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("keymeter.toml");
    std::fs::write(&config, "signature_nonces_max = 1000\n").unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let (acme_sid, acme_secret) = server
        .create_product(json!({"id": "acme", "requireSignatures": true}))
        .await;
    let (globex_sid, globex_secret) = server
        .create_product(json!({"id": "globex", "requireSignatures": true}))
        .await;
    let acme = bound_key(&server, "acme", &["ingest"]).await;
    let globex = bound_key(&server, "globex", &["ingest"]).await;
    // Signatures dated in the server's start second are refused.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let body = |id: String| {
        serde_json::to_vec(&event(&id, "api_call", "s", &time_from_now(0), json!({}))).unwrap()
    };
    let mut aimed = aimed_nonces(&acme_sid);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..1100 {
        let b = body(format!("acme-{i}"));
        let nonce = aimed.next().unwrap();
        let sig = signed_with_nonce(&acme_secret, &acme_sid, &nonce, &b);
        let r = server.post_event(&acme, &b, Some(&sig)).await;
        match r.status().as_u16() {
            204 => accepted += 1,
            503 => refused += 1,
            s => panic!("acme call {i}: {s} {}", r.text().await.unwrap()),
        }
    }
    // Aimed nonces spread over every shard: acme fills (about) its whole
    // memory, not one sixteenth of it, and no more than its own memory.
    assert!(
        (700..=1008).contains(&accepted) && refused > 0,
        "acme: {accepted} accepted, {refused} refused"
    );
    let mut aimed = aimed_nonces(&globex_sid);
    for i in 0..50 {
        let b = body(format!("globex-{i}"));
        let sig = signed_with_nonce(&globex_secret, &globex_sid, &aimed.next().unwrap(), &b);
        let r = server.post_event(&globex, &b, Some(&sig)).await;
        assert_eq!(
            r.status(),
            204,
            "globex call {i}: {}",
            r.text().await.unwrap()
        );
    }
    server.stop();
}

/// An end-user application holds only its license key: it validates and
/// checks seats out of that one license with `Authorization: License`, and
/// can neither send usage, reach another license, nor manage anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_key_authenticates_its_own_license_calls_only() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let policy = json!({"type": "seat", "seats": {"max": 1, "mode": "floating"}});
    let mine = server
        .create_license(json!({"product": "acme", "customer": "c", "policy": policy}))
        .await;
    let other = server
        .create_license(json!({"product": "acme", "customer": "d", "policy": policy}))
        .await;
    let key = mine["key"].as_str().unwrap();
    let id = mine["id"].as_str().unwrap();
    let call = |method: reqwest::Method, path: &str, auth: String| {
        server
            .client
            .request(method, server.url(path))
            .header("authorization", auth)
    };
    let license_auth = format!("License {key}");

    // Check out by the license key alone: `me` is the caller's license.
    let r = call(
        reqwest::Method::POST,
        "/api/v1/licenses/me/seats",
        license_auth.clone(),
    )
    .json(&json!({"fingerprint": "m1"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let seat: Value = r.json().await.unwrap();
    assert_eq!(seat["license_id"], id);
    let seat_id = seat["seat_id"].as_str().unwrap();
    let lease_token = seat["lease_token"].as_str().unwrap();
    let r = call(
        reqwest::Method::POST,
        &format!("/api/v1/licenses/{id}/seats/{seat_id}/heartbeat"),
        license_auth.clone(),
    )
    .header("Lease-Token", lease_token)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(
        reqwest::Method::POST,
        "/api/v1/licenses/validate",
        license_auth.clone(),
    )
    .json(&json!({"fingerprint": "m1"}))
    .send()
    .await
    .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "VALID", "{v}");
    // Its offline license file, which opens with the key it already holds.
    let r = call(
        reqwest::Method::POST,
        "/api/v1/licenses/me/license-file",
        license_auth.clone(),
    )
    .json(&json!({"fingerprint": "m1"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let file = r.text().await.unwrap();
    let keys = server.jwks_keys().await;
    let opened =
        keymeter_client::open_license_file(&file, key, Some("m1"), &keys, common::now_s()).unwrap();
    assert_eq!(opened.license["id"], id);

    // Another license, even of the same product, is out of reach.
    let other_id = other["id"].as_str().unwrap();
    let r = call(
        reqwest::Method::POST,
        &format!("/api/v1/licenses/{other_id}/seats"),
        license_auth.clone(),
    )
    .json(&json!({"fingerprint": "m2"}))
    .send()
    .await
    .unwrap();
    assert_eq!(status_and_code(r).await, (404, "NOT_FOUND".into()));
    let r = call(
        reqwest::Method::POST,
        &format!("/api/v1/licenses/{other_id}/license-file"),
        license_auth.clone(),
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(status_and_code(r).await, (404, "NOT_FOUND".into()));
    let r = call(
        reqwest::Method::POST,
        "/api/v1/licenses/validate",
        license_auth.clone(),
    )
    .json(&json!({"key": other["key"]}))
    .send()
    .await
    .unwrap();
    assert_eq!(status_and_code(r).await, (400, "INVALID_VALIDATION".into()));

    // No usage, no admin, and an unknown key is refused.
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/events"),
        (reqwest::Method::GET, "/api/v1/licenses"),
        (reqwest::Method::GET, "/api/v1/meters"),
    ] {
        let r = call(method, path, license_auth.clone())
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = call(
        reqwest::Method::POST,
        "/api/v1/licenses/validate",
        "License lk_not_a_real_key".into(),
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(status_and_code(r).await, (401, "UNAUTHENTICATED".into()));

    // Its own seat is released with the license key too.
    let r = call(
        reqwest::Method::DELETE,
        &format!("/api/v1/licenses/me/seats/{seat_id}"),
        license_auth,
    )
    .header("Lease-Token", lease_token)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    server.stop();
}

/// A product's client keeps, as its offline fallback, only a verdict about
/// its own request: a valid verdict for another license (or another
/// product's) is refused by `VerdictCache::accept`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_falls_back_only_on_a_verdict_about_its_own_license() {
    use keymeter_client::{Asked, ClientError, VerdictCache};
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mine = server
        .create_license(json!({"product": "ide", "customer": "c"}))
        .await;
    let theirs = server
        .create_license(json!({"product": "cad", "customer": "d"}))
        .await;
    let keys = server.jwks_keys().await;
    let asked = Asked {
        license_id: mine["id"].as_str().unwrap().to_owned(),
        product: Some("ide".into()),
        fingerprint: Some("m1".into()),
    };
    let mut cache = VerdictCache::new(asked, 3600);
    let verdict = |license: &Value, nonce: &str| json!({"key": license["key"], "fingerprint": "m1", "nonce": nonce});
    let other = server
        .validate_license(ADMIN_KEY, verdict(&theirs, "nonce-0001"))
        .await;
    assert_eq!(other["valid"], true);
    let got = cache.accept(
        other["token"].as_str().unwrap(),
        &keys,
        common::now_s(),
        "nonce-0001",
    );
    assert!(
        matches!(
            got,
            Err(ClientError::NotOurs {
                claim: "license",
                ..
            })
        ),
        "{got:?}"
    );
    assert!(cache.fallback(common::now_s()).is_none());
    let ours = server
        .validate_license(ADMIN_KEY, verdict(&mine, "nonce-0002"))
        .await;
    let claims = cache
        .accept(
            ours["token"].as_str().unwrap(),
            &keys,
            common::now_s(),
            "nonce-0002",
        )
        .unwrap();
    assert_eq!(
        (claims.product.as_deref(), claims.fingerprint.as_deref()),
        (Some("ide"), Some("m1"))
    );
    assert!(cache.fallback(common::now_s() + 60).is_some());
    server.stop();
}

/// Calls made with a license key are limited per source address (the
/// per-caller limit of API keys), and a key that opens no license costs
/// the address too: license keys cannot be guessed at speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_key_calls_and_failed_lookups_are_limited_per_source_address() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("keymeter.toml");
    std::fs::write(
        &config,
        "[rate_limits]\nvalidate_per_api_key = {per_second = 1, burst = 3}\n",
    )
    .unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let license = server
        .create_license(json!({"product": "acme", "customer": "c"}))
        .await;
    let validate = |auth: String| {
        server
            .client
            .post(server.url("/api/v1/licenses/validate"))
            .header("authorization", auth)
            .json(&json!({}))
            .send()
    };
    // Three guesses use up the address's burst...
    for i in 0..3 {
        let r = validate(format!("License lk_guess_{i}")).await.unwrap();
        assert_eq!(status_and_code(r).await, (401, "UNAUTHENTICATED".into()));
    }
    let r = validate(format!("License lk_guess_{}", 3)).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // ... and the genuine key from the same address waits its turn too.
    let genuine = format!("License {}", license["key"].as_str().unwrap());
    let r = validate(genuine.clone()).await.unwrap();
    assert_eq!(status_and_code(r).await, (429, "RATE_LIMITED".into()));
    // An admin key is its own caller: not held up by the address.
    let v = server
        .validate_license(ADMIN_KEY, json!({"key": license["key"]}))
        .await;
    assert_eq!(v["code"], "VALID", "{v}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = validate(genuine).await.unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
}

/// The flood: one product's key sends unique identities of a type
/// no meter counts, dated ahead; it stops at its share of the dedup index
/// and another product's usage, and an admin's, still go in, also after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_flooding_the_dedup_index_stops_at_its_share_and_blocks_no_other_product() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("keymeter.toml");
    std::fs::write(&config, "dedup_keys_max = 1000\n").unwrap();
    let data = root.path().join("data");
    let mut server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    for p in ["acme", "globex"] {
        server
            .create_product(json!({"id": p, "requireSignatures": false}))
            .await;
    }
    let acme = bound_key(&server, "acme", &["ingest"]).await;
    let globex = bound_key(&server, "globex", &["ingest"]).await;
    let batch = |who: &str, from: usize, n: usize| -> Vec<Value> {
        (from..from + n)
            .map(|i| {
                event(
                    &format!("{who}-{i}"),
                    "junk",
                    "s",
                    &time_from_now(300),
                    json!({}),
                )
            })
            .collect()
    };
    let mut flooded = 0;
    for b in 0..8 {
        let r = server.ingest(&acme, &batch("acme", b * 100, 100)).await;
        match status_and_code(r).await {
            (204, _) => flooded += 100,
            (503, code) => assert_eq!(code, "DEDUP_CAPACITY"),
            other => panic!("acme batch {b}: {other:?}"),
        }
    }
    assert_eq!(flooded, 500, "acme holds half of the index");
    for round in 0..2 {
        let r = server
            .ingest(&globex, &batch("globex", round * 100, 100))
            .await;
        assert_eq!(r.status(), 204, "globex, round {round}");
        let r = server.ingest(ADMIN_KEY, &batch("admin", round, 1)).await;
        assert_eq!(r.status(), 204, "admin, round {round}");
        let r = server.ingest(&acme, &batch("acme", 900 + round, 1)).await;
        assert_eq!(status_and_code(r).await, (503, "DEDUP_CAPACITY".into()));
        server.stop();
        server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    }
    server.stop();
}
