//! Every route but health needs a key (401 without one) and the right scope
//! (403 with the wrong one). License client calls (`validate` routes) take
//! a `validate` key, or an `ingest` key bound to a product
//! (tests/tenant_isolation.rs), never an unbound `ingest` key.

mod common;

use common::*;
use serde_json::json;

/// (method, path, scope the route needs)
const ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/events", "ingest"),
    ("GET", "/api/v1/meters", "read"),
    ("POST", "/api/v1/meters", "admin"),
    ("GET", "/api/v1/meters/calls", "read"),
    ("DELETE", "/api/v1/meters/calls", "admin"),
    ("GET", "/api/v1/meters/calls/query", "read"),
    ("GET", "/api/v1/quarantine", "admin"),
    ("GET", "/api/v1/api-keys", "admin"),
    ("POST", "/api/v1/api-keys", "admin"),
    ("DELETE", "/api/v1/api-keys/0123456789ab", "admin"),
    ("GET", "/metrics", "read"),
    ("GET", "/api/v1/licenses", "admin"),
    ("POST", "/api/v1/licenses", "admin"),
    ("GET", "/api/v1/licenses/lic_x", "admin"),
    ("PATCH", "/api/v1/licenses/lic_x", "admin"),
    ("POST", "/api/v1/licenses/lic_x/suspend", "admin"),
    ("POST", "/api/v1/licenses/lic_x/reinstate", "admin"),
    ("POST", "/api/v1/licenses/lic_x/revoke", "admin"),
    ("POST", "/api/v1/licenses/lic_x/renew", "admin"),
    ("POST", "/api/v1/licenses/lic_x/license-file", "validate"),
    ("GET", "/api/v1/licenses/lic_x/seats", "admin"),
    ("POST", "/api/v1/licenses/lic_x/seats", "validate"),
    (
        "POST",
        "/api/v1/licenses/lic_x/seats/s/heartbeat",
        "validate",
    ),
    ("DELETE", "/api/v1/licenses/lic_x/seats/s", "validate"),
    ("POST", "/api/v1/licenses/validate", "validate"),
    ("GET", "/api/v1/products", "admin"),
    ("POST", "/api/v1/products", "admin"),
    ("GET", "/api/v1/products/acme", "admin"),
    ("PATCH", "/api/v1/products/acme", "admin"),
    ("POST", "/api/v1/products/acme/signing-secrets", "admin"),
    (
        "DELETE",
        "/api/v1/products/acme/signing-secrets/0123456789ab",
        "admin",
    ),
    ("GET", "/api/v1/licenses/lic_x/history", "admin"),
    ("GET", "/api/v1/plans", "admin"),
    ("POST", "/api/v1/plans", "admin"),
    ("GET", "/api/v1/plans/pro", "admin"),
    ("GET", "/api/v1/migrations", "admin"),
    ("POST", "/api/v1/migrations", "admin"),
    ("GET", "/api/v1/migrations/mig_x", "admin"),
    ("POST", "/api/v1/migrations/mig_x/dry-run", "admin"),
    ("POST", "/api/v1/migrations/mig_x/apply", "admin"),
    ("POST", "/api/v1/migrations/mig_x/rollback", "admin"),
    ("POST", "/api/v1/migrations/mig_x/complete", "admin"),
];

async fn call(server: &Server, method: &str, path: &str, key: Option<&str>) -> u16 {
    let mut req = server
        .client
        .request(method.parse().unwrap(), server.url(path))
        .header("content-type", "application/json")
        .body("{}");
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_key_with_the_right_scope() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .create_meter(json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}))
        .await;
    let ingest = server.create_key(&["ingest"]).await;
    let read = server.create_key(&["read"]).await;
    let both = server.create_key(&["ingest", "read"]).await;
    let validate = server.create_key(&["validate"]).await;
    for &(method, path, scope) in ROUTES {
        assert_eq!(
            call(&server, method, path, None).await,
            401,
            "{method} {path} without a key"
        );
        assert_eq!(
            call(
                &server,
                method,
                path,
                Some("km_000000000000_not-a-real-key")
            )
            .await,
            401,
            "{method} {path} with an unknown key"
        );
        let (allowed, denied): (Vec<&str>, Vec<&str>) = match scope {
            "ingest" => (vec![&ingest, &both], vec![&read, &validate]),
            "read" => (vec![&read, &both], vec![&ingest, &validate]),
            "validate" => (vec![&validate], vec![&ingest, &read, &both]),
            _ => (vec![], vec![&ingest, &read, &both, &validate]),
        };
        for key in denied {
            assert_eq!(
                call(&server, method, path, Some(key)).await,
                403,
                "{method} {path} lacking {scope}"
            );
        }
        for key in allowed {
            let s = call(&server, method, path, Some(key)).await;
            assert!(s != 401 && s != 403, "{method} {path} with {scope}: {s}");
        }
    }
    for path in ["/healthz", "/readyz", "/.well-known/jwks.json"] {
        assert_eq!(call(&server, "GET", path, None).await, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_stop_working_and_keys_are_never_shown_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let r = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/api-keys",
            &json!({"name": "ci", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&server, "GET", "/api/v1/meters", Some(&key)).await,
        200
    );
    let list = server
        .get(ADMIN_KEY, "/api/v1/api-keys")
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains(&id) && !list.contains(&key));
    let r = server
        .delete(ADMIN_KEY, &format!("/api/v1/api-keys/{id}"))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        call(&server, "GET", "/api/v1/meters", Some(&key)).await,
        401
    );
    // Still revoked after a restart; the key is not in the data directory.
    server.stop();
    let server = Server::start(dir.path());
    assert_eq!(
        call(&server, "GET", "/api/v1/meters", Some(&key)).await,
        401
    );
    assert_eq!(
        call(&server, "GET", "/api/v1/meters", Some(ADMIN_KEY)).await,
        200
    );
    server.stop();
    assert_no_file_holds(dir.path(), &[key.as_bytes(), ADMIN_KEY.as_bytes()]);
}

#[test]
fn first_start_prints_a_generated_admin_key_once() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut child = serve_command(dir.path())
            .env_remove("KEYMETER_BOOTSTRAP_ADMIN_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        // Everything printed in the first seconds after start.
        let mut out = String::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            out.push_str(&line);
            out.push('\n');
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(out.contains(LISTENING), "{out}");
        out
    };
    let first = start();
    let key = first
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("km_"))
        .unwrap_or_else(|| panic!("no key printed: {first}"))
        .to_owned();
    assert!(first.contains(&format!("Authorization: Bearer {key}")));
    let second = start();
    assert!(!second.contains("km_"), "key printed again: {second}");
}
