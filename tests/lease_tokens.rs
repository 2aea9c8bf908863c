//! A seat belongs to whoever holds its lease token, against the real
//! binary. Machine fingerprints and seat ids are not secrets (the admin
//! seat list shows both), so knowing them must not let another caller of
//! the same product take, renew or free the seat; the holder can, an admin
//! can free any seat, and a client that proposes its own token can retry a
//! checkout safely.

mod common;

use common::{Server, ADMIN_KEY};
use serde_json::{json, Value};

async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A seat call with the `Lease-Token` header, when `token` is given.
async fn seat_call(
    server: &Server,
    method: reqwest::Method,
    key: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut r = server.request(method, key, path);
    if let Some(token) = token {
        r = r.header("Lease-Token", token);
    }
    answer(r.send().await.unwrap()).await
}

async fn live_seats(server: &Server, id: &str) -> Vec<String> {
    let v = server
        .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{id}/seats"))
        .await;
    let seats = v["seats"].as_array().unwrap_or_else(|| panic!("{v}"));
    seats
        .iter()
        .map(|s| s["seat_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowing_a_fingerprint_and_a_seat_id_does_not_take_renew_or_free_the_seat() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let lic = server
        .create_license(json!({"product": "ide", "customer": "acme",
            "policy": {"type": "seat", "seats": {"max": 2, "mode": "floating", "lease_ttl_s": 3600}}}))
        .await;
    let id = lic["id"].as_str().unwrap();
    let owner = server.create_key(&["validate"]).await;
    let other = server.create_key(&["validate"]).await;
    let seats = format!("/api/v1/licenses/{id}/seats");

    let (status, seat) = answer(
        server
            .post_json(&owner, &seats, &json!({"fingerprint": "host-7f3a"}))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{seat}");
    let seat_id = seat["seat_id"].as_str().unwrap();
    let token = seat["lease_token"].as_str().unwrap();
    assert!(token.len() >= 43, "a random 256-bit token: {token}");
    let seat_path = format!("{seats}/{seat_id}");
    let heartbeat = format!("{seat_path}/heartbeat");

    // The fingerprint and the seat id are in the admin's list.
    assert_eq!(live_seats(&server, id).await, [seat_id]);
    // Checking out the same fingerprint does not hand the seat (or its id)
    // to someone without the token.
    let (status, body) = answer(
        server
            .post_json(&other, &seats, &json!({"fingerprint": "host-7f3a"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("LEASE_TOKEN_INVALID"))
    );
    assert!(!body.to_string().contains(seat_id), "{body}");
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (method, path) in [
        (reqwest::Method::POST, &heartbeat),
        (reqwest::Method::DELETE, &seat_path),
    ] {
        for presented in [None, Some(wrong)] {
            let (status, body) = seat_call(&server, method.clone(), &other, path, presented).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (403, Some("LEASE_TOKEN_INVALID")),
                "{method} {path} with {presented:?}"
            );
        }
    }
    assert_eq!(live_seats(&server, id).await, [seat_id], "the seat is held");

    // The holder renews and frees it with its token.
    let (status, _) = seat_call(
        &server,
        reqwest::Method::POST,
        &owner,
        &heartbeat,
        Some(token),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = seat_call(
        &server,
        reqwest::Method::DELETE,
        &owner,
        &seat_path,
        Some(token),
    )
    .await;
    assert_eq!(status, 204);
    assert!(live_seats(&server, id).await.is_empty());

    // An admin frees a seat whose token is lost.
    let (status, seat) = answer(
        server
            .post_json(&owner, &seats, &json!({"fingerprint": "retired-box"}))
            .await,
    )
    .await;
    assert_eq!(status, 201);
    let path = format!("{seats}/{}", seat["seat_id"].as_str().unwrap());
    let (status, _) = seat_call(&server, reqwest::Method::DELETE, ADMIN_KEY, &path, None).await;
    assert_eq!(status, 204);
    assert!(live_seats(&server, id).await.is_empty());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_retried_with_its_own_proposed_token_gets_the_same_seat() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let lic = server
        .create_license(json!({"product": "ide", "customer": "acme",
            "policy": {"type": "seat", "seats": {"max": 1, "mode": "node_locked"}}}))
        .await;
    let id = lic["id"].as_str().unwrap();
    let key = server.create_key(&["validate"]).await;
    let seats = format!("/api/v1/licenses/{id}/seats");
    let mine = "machine-secret-6f1c2a9e4b7d8c3f";
    let body = json!({"fingerprint": "ws-1", "lease_token": mine});

    let (first, a) = answer(server.post_json(&key, &seats, &body).await).await;
    let (again, b) = answer(server.post_json(&key, &seats, &body).await).await;
    assert_eq!((first, again), (201, 200), "{a} {b}");
    assert_eq!(a["seat_id"], b["seat_id"]);
    assert_eq!(
        (a["lease_token"].as_str(), b["lease_token"].as_str()),
        (Some(mine), Some(mine))
    );

    // A proposed token must be long and URL-safe; nothing is taken.
    for bad in ["short", "has spaces in it, which headers mangle"] {
        let (status, v) = answer(
            server
                .post_json(
                    &key,
                    &seats,
                    &json!({"fingerprint": "ws-2", "lease_token": bad}),
                )
                .await,
        )
        .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("INVALID_SEAT")),
            "{bad}"
        );
    }
    assert_eq!(live_seats(&server, id).await.len(), 1);
    server.stop();
}
