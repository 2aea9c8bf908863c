//! Signed client calls and abuse limits, against the real binary: every
//! refusal has its own code and metric, a replayed call is refused even when
//! everything else about it is valid, a replay across a restart is refused,
//! rotation keeps both secrets working until one is revoked, and rate limits
//! answer 429 with Retry-After per API key and per license.

mod common;

use std::time::Duration;

use common::{assert_no_file_holds, now_s, Server, ADMIN_KEY};
use keymeter_client::signing::{sign, sign_request, RequestParts};
use serde_json::{json, Value};

const EVENTS: &str = "/api/v1/events";

fn event_body(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"specversion": "1.0", "id": id, "source": "app",
        "type": "api_call", "subject": "customer-1"}))
    .unwrap()
}

async fn expect_refusal(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty());
}

async fn count(server: &Server) -> f64 {
    server.total("calls", "").await
}

/// Creates a product; returns (secret id, secret).
async fn product(server: &Server, id: &str, require: bool) -> (String, String) {
    server
        .create_product(json!({"id": id, "requireSignatures": require}))
        .await
}

async fn product_key(server: &Server, product: &str) -> String {
    server
        .create_key_with(json!({"name": "app", "scopes": ["ingest"], "product": product}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_are_verified_and_replays_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let server = Server::start(&data);
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let (sid, secret) = product(&server, "acme", false).await;
    let (other_sid, other_secret) = product(&server, "globex", false).await;
    let key = product_key(&server, "acme").await;
    // Signatures dated in the server's start second are refused (replay
    // protection across restarts), so begin in the next one.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Not required yet: unsigned calls pass, signed ones are checked.
    let r = server.post_event(&key, &event_body("e0"), None).await;
    assert_eq!(r.status(), 204);
    let r = server
        .request(reqwest::Method::PATCH, ADMIN_KEY, "/api/v1/products/acme")
        .json(&json!({"requireSignatures": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["requireSignatures"], true);

    let unsigned = server.post_event(&key, &event_body("e1"), None).await;
    expect_refusal(unsigned, 401, "SIGNATURE_REQUIRED").await;

    let body = event_body("e2");
    let header = sign_request(&secret, &sid, "POST", EVENTS, &body);
    let r = server.post_event(&key, &body, Some(&header)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(count(&server).await, 2.0);

    // The same call again, byte for byte: refused, not counted.
    let replay = server.post_event(&key, &body, Some(&header)).await;
    expect_refusal(replay, 401, "REQUEST_REPLAYED").await;

    // A signature for another body, an old timestamp, garbage, another
    // product's secret: each refused with its own code, nothing counted.
    let signed_for_other = sign_request(&secret, &sid, "POST", EVENTS, &event_body("e3"));
    let r = server
        .post_event(&key, &event_body("e4"), Some(&signed_for_other))
        .await;
    expect_refusal(r, 401, "SIGNATURE_INVALID").await;
    let req = RequestParts {
        method: "POST",
        path: EVENTS,
        query: "",
        body: &body,
    };
    let stale = sign(&secret, &sid, now_s() - 600, "stale-nonce-0123456789", &req);
    let r = server
        .post_event(&key, &body, Some(&stale.to_header_value()))
        .await;
    expect_refusal(r, 401, "SIGNATURE_EXPIRED").await;
    let r = server.post_event(&key, &body, Some("t=1, v1=zz")).await;
    expect_refusal(r, 401, "SIGNATURE_MALFORMED").await;
    let body5 = event_body("e5");
    let foreign = sign_request(&other_secret, &other_sid, "POST", EVENTS, &body5);
    let r = server.post_event(&key, &body5, Some(&foreign)).await;
    expect_refusal(r, 401, "SIGNATURE_KEY_UNKNOWN").await;
    // The query string is signed too.
    let path = "/api/v1/meters/calls/query";
    let signed_query = sign_request(&secret, &sid, "GET", &format!("{path}?windowSize=DAY"), b"");
    let read_key = server
        .create_key_with(json!({"name": "reader", "scopes": ["read"], "product": "acme"}))
        .await;
    let get = |q: &str, sig: &str| {
        server
            .request(reqwest::Method::GET, &read_key, &format!("{path}?{q}"))
            .header("Keymeter-Signature", sig.to_owned())
            .send()
    };
    expect_refusal(
        get("windowSize=HOUR", &signed_query).await.unwrap(),
        401,
        "SIGNATURE_INVALID",
    )
    .await;
    assert_eq!(
        get("windowSize=DAY", &signed_query).await.unwrap().status(),
        200
    );
    assert_eq!(count(&server).await, 2.0);

    // Rotation: a second secret works next to the first; once the first is
    // revoked, only the second does.
    let r = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/products/acme/signing-secrets",
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let s2: Value = r.json().await.unwrap();
    let (sid2, secret2) = (s2["id"].as_str().unwrap(), s2["secret"].as_str().unwrap());
    for (i, (s, k)) in [(&secret, &sid), (&secret2.to_owned(), &sid2.to_owned())]
        .into_iter()
        .enumerate()
    {
        let b = event_body(&format!("rot{i}"));
        let r = server.post_signed_event(&key, &b, s, k).await;
        assert_eq!(r.status(), 204);
    }
    let r = server
        .delete(
            ADMIN_KEY,
            &format!("/api/v1/products/acme/signing-secrets/{sid}"),
        )
        .await;
    assert_eq!(r.status(), 204);
    let b = event_body("rot2");
    let r = server.post_signed_event(&key, &b, &secret, &sid).await;
    expect_refusal(r, 401, "SIGNATURE_KEY_UNKNOWN").await;
    let r = server.post_signed_event(&key, &b, secret2, sid2).await;
    assert_eq!(r.status(), 204);
    assert_eq!(count(&server).await, 5.0);

    // Every refusal is on the dashboard, by product and reason.
    for (reason, n) in [
        ("missing", 1.0),
        ("replayed", 1.0),
        ("invalid", 2.0),
        ("expired", 1.0),
        ("malformed", 1.0),
        ("unknown_key", 2.0),
    ] {
        let needle =
            format!("keymeter_signature_refusals_total{{product=\"acme\",reason=\"{reason}\"}}");
        assert_eq!(server.metric(&needle).await, n, "{reason}");
    }

    // A call signed before a restart cannot be replayed after it, although
    // its timestamp is still within the tolerance.
    let b = event_body("before-restart");
    let captured = sign_request(secret2, sid2, "POST", EVENTS, &b);
    let r = server.post_event(&key, &b, Some(&captured)).await;
    assert_eq!(r.status(), 204);
    server.stop();
    let server = Server::start(&data);
    let r = server.post_event(&key, &b, Some(&captured)).await;
    expect_refusal(r, 401, "SIGNATURE_EXPIRED").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = event_body("after-restart");
    let r = server.post_signed_event(&key, &b, secret2, sid2).await;
    assert_eq!(r.status(), 204, "the secret survives the restart, sealed");
    assert_eq!(count(&server).await, 7.0);
    server.stop();

    // Signing secrets and API keys are nowhere in the data directory.
    assert_no_file_holds(
        &data,
        &[
            secret.as_bytes(),
            secret2.as_bytes(),
            other_secret.as_bytes(),
            key.as_bytes(),
            read_key.as_bytes(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("keymeter.toml");
    std::fs::write(
        &config,
        "[rate_limits]\n\
         validate_per_api_key = { per_second = 1000, burst = 1000 }\n\
         validate_per_license = { per_second = 1, burst = 3 }\n\
         checkout_per_api_key = { per_second = 1, burst = 2 }\n\
         checkout_per_license = { per_second = 1000, burst = 1000 }\n",
    )
    .unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut licenses = Vec::new();
    for customer in ["a", "b"] {
        let v = server
            .create_license(json!({"product": "p", "customer": customer,
                "policy": {"type": "seat", "seats": {"max": 10, "mode": "floating", "lease_ttl_s": 3600}}}))
            .await;
        licenses.push((
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        ));
    }
    let pk = server.create_key(&["ingest", "validate"]).await;
    let validate = |key: String| {
        let server = &server;
        let pk = pk.clone();
        async move {
            server
                .post_json(&pk, "/api/v1/licenses/validate", &json!({"key": key}))
                .await
        }
    };
    for _ in 0..3 {
        assert_eq!(validate(licenses[0].1.clone()).await.status(), 200);
    }
    let r = validate(licenses[0].1.clone()).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    // The limit is per license: another license with the same API key, and
    // keys of no license at all, are not affected.
    assert_eq!(validate(licenses[1].1.clone()).await.status(), 200);
    for i in 0..5 {
        assert_eq!(validate(format!("lk_made_up_{i}")).await.status(), 200);
    }
    // After Retry-After the license is served again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(validate(licenses[0].1.clone()).await.status(), 200);

    // Checkout: per API key, across licenses.
    let checkout = |lic: usize, fp: &'static str| {
        let (server, pk, path) = (
            &server,
            pk.clone(),
            format!("/api/v1/licenses/{}/seats", licenses[lic].0),
        );
        async move {
            server
                .post_json(&pk, &path, &json!({"fingerprint": fp}))
                .await
        }
    };
    assert_eq!(checkout(0, "m1").await.status(), 201);
    assert_eq!(checkout(1, "m2").await.status(), 201);
    let r = checkout(1, "m3").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // A refused checkout took no seat.
    let seats = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/licenses/{}/seats", licenses[1].0),
        )
        .await;
    assert_eq!(seats["seats"].as_array().unwrap().len(), 1, "{seats}");
    assert_eq!(
        server
            .metric("keymeter_rate_limited_total{call=\"validate\",limit=\"license\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("keymeter_rate_limited_total{call=\"checkout\",limit=\"api_key\"}")
            .await,
        1.0
    );
}

/// A signed event call dated `ahead_s` from now with `nonce`: (body, header).
fn signed_ahead(secret: &str, sid: &str, id: &str, ahead_s: i64, nonce: &str) -> (Vec<u8>, String) {
    let body = event_body(id);
    let req = RequestParts {
        method: "POST",
        path: EVENTS,
        query: "",
        body: &body,
    };
    let header = sign(secret, sid, now_s() + ahead_s, nonce, &req).to_header_value();
    (body, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dated_signed_call_cannot_be_replayed_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let server = Server::start(&data);
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let (sid, secret) = product(&server, "acme", true).await;
    let key = product_key(&server, "acme").await;

    // Dated two minutes ahead of the server clock (the tolerance is five):
    // after a restart its timestamp is still after the start.
    let (body, captured) = signed_ahead(&secret, &sid, "ahead-1", 120, "ahead-nonce-0000000001");
    let r = server.post_event(&key, &body, Some(&captured)).await;
    assert_eq!(r.status(), 204);
    server.stop();
    let server = Server::start(&data);
    let r = server.post_event(&key, &body, Some(&captured)).await;
    expect_refusal(r, 401, "REQUEST_REPLAYED").await;

    // Also when the server was killed right after answering.
    let (body2, captured2) = signed_ahead(&secret, &sid, "ahead-2", 120, "ahead-nonce-0000000002");
    let r = server.post_event(&key, &body2, Some(&captured2)).await;
    assert_eq!(r.status(), 204);
    server.kill();
    let server = Server::start(&data);
    for (b, h) in [(&body, &captured), (&body2, &captured2)] {
        let r = server.post_event(&key, b, Some(h)).await;
        expect_refusal(r, 401, "REQUEST_REPLAYED").await;
    }

    // Remembering them blocks nothing else: a new nonce, dated ahead too, is
    // accepted.
    let (body3, fresh) = signed_ahead(&secret, &sid, "ahead-3", 120, "ahead-nonce-0000000003");
    let r = server.post_event(&key, &body3, Some(&fresh)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(count(&server).await, 3.0);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_call_does_not_use_up_the_nonce_of_the_genuine_one() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let (sid, secret) = product(&server, "acme", true).await;
    let key = product_key(&server, "acme").await;
    // Past the start second, which refuses signatures dated in it.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let body = event_body("genuine");
    let req = RequestParts {
        method: "POST",
        path: EVENTS,
        query: "",
        body: &body,
    };
    let (t, nonce) = (now_s(), "fresh-nonce-0123456789");
    // Someone who saw the nonce (or guessed it) but lacks the secret sends
    // it first, under the real secret's id.
    let forged = sign("kss_not_the_secret", &sid, t, nonce, &req);
    let r = server
        .post_event(&key, &body, Some(&forged.to_header_value()))
        .await;
    expect_refusal(r, 401, "SIGNATURE_INVALID").await;
    let genuine = sign(&secret, &sid, t, nonce, &req);
    let r = server
        .post_event(&key, &body, Some(&genuine.to_header_value()))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(count(&server).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_product_that_exists_is_a_conflict_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let (sid, secret) = product(&server, "acme", false).await;
    let r = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/products",
            &json!({"id": "acme", "name": "Impostor", "requireSignatures": true}),
        )
        .await;
    expect_refusal(r, 409, "CONFLICT").await;

    // The stored product is the first one, and its secret still signs.
    let p = server.get_json(ADMIN_KEY, "/api/v1/products/acme").await;
    assert_eq!(p["requireSignatures"], false, "{p}");
    assert_eq!(p["name"], Value::Null, "{p}");
    assert_eq!(p["version"], 1, "{p}");
    let secrets = p["signingSecrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 1, "{p}");
    assert_eq!(secrets[0]["id"], sid.as_str());
    let key = product_key(&server, "acme").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = server
        .post_signed_event(&key, &event_body("e1"), &secret, &sid)
        .await;
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_holds_at_most_five_live_signing_secrets() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let (first, _) = product(&server, "acme", false).await;
    let add = || async {
        let path = "/api/v1/products/acme/signing-secrets";
        server.post_json(ADMIN_KEY, path, &json!({})).await
    };
    for _ in 0..4 {
        assert_eq!(add().await.status(), 201);
    }
    let live = |p: &Value| {
        p["signingSecrets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["revokedAt"].is_null())
            .count()
    };
    expect_refusal(add().await, 409, "TOO_MANY_SECRETS").await;
    let p = server.get_json(ADMIN_KEY, "/api/v1/products/acme").await;
    assert_eq!(live(&p), 5, "the refused secret was not stored: {p}");
    assert_eq!(p["signingSecrets"].as_array().unwrap().len(), 5, "{p}");

    // Revoking one makes room for one.
    let r = server
        .delete(
            ADMIN_KEY,
            &format!("/api/v1/products/acme/signing-secrets/{first}"),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(add().await.status(), 201);
    expect_refusal(add().await, 409, "TOO_MANY_SECRETS").await;
    let p = server.get_json(ADMIN_KEY, "/api/v1/products/acme").await;
    assert_eq!(live(&p), 5, "{p}");
}
