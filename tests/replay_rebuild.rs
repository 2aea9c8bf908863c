//! `keymeter replay` rebuilds every projection from the log alone: a data
//! directory holding only `log/`, `keys/` and the master key comes out of
//! `replay` with every sled tree and the dedup snapshot equal, byte for byte,
//! to the live server's, and answers every question the same. And projection
//! state that was damaged in place (which every projection would otherwise
//! skip as already applied) is thrown away and rebuilt.

mod common;

use common::projections::{
    assert_same_state, copy_data_subset, dedup_snapshot_path, dump_state, DedupSnapshot, StateDump,
};
use common::*;
use serde_json::{json, Value};

/// A data directory at `root/data`, its master key beside it in `root`.
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
}

/// A license and how to ask about it afterwards.
struct Probe {
    id: String,
    key: String,
    fingerprint: Option<&'static str>,
    meter: Option<&'static str>,
    has_seats: bool,
}

/// What the state was built with.
struct Built {
    /// An unbound ingest key: validations and seat calls.
    ingest_key: String,
    licenses: Vec<Probe>,
}

const METERS: [&str; 7] = [
    "tokens", "calls", "latency", "users", "peak", "floor", "last",
];

async fn build_meters(server: &Server) {
    for (slug, agg, value, group) in [
        (
            "tokens",
            "SUM",
            Some("$.tokens"),
            json!({"model": "$.model", "region": "$.region"}),
        ),
        ("calls", "COUNT", None, json!({"region": "$.region"})),
        ("latency", "AVG", Some("$.ms"), json!({})),
        (
            "users",
            "UNIQUE_COUNT",
            Some("$.user"),
            json!({"model": "$.model"}),
        ),
        ("peak", "MAX", Some("$.ms"), json!({})),
        ("gone", "MIN", Some("$.ms"), json!({})),
    ] {
        let mut m = json!({"slug": slug, "eventType": "call", "aggregation": agg,
                           "groupBy": group, "windowSize": "HOUR"});
        if let Some(v) = value {
            m["valueProperty"] = json!(v);
        }
        server.create_meter(m).await;
    }
}

/// Meters made after the events (their past is counted by a backfill), one
/// deleted and one renamed.
async fn change_meters_after_events(server: &Server) {
    for (slug, agg) in [("floor", "MIN"), ("last", "LATEST")] {
        server
            .create_meter(
                json!({"slug": slug, "eventType": "call", "aggregation": agg,
                                 "valueProperty": "$.ms"}),
            )
            .await;
    }
    let r = server.delete(ADMIN_KEY, "/api/v1/meters/gone").await;
    assert_eq!(r.status(), 204);
    // Renamed after its events: the definition changes, not the counters.
    let rename = json!({"name": "Peak latency", "metadata": {"unit": "ms"}});
    let r = server
        .request(reqwest::Method::PUT, ADMIN_KEY, "/api/v1/meters/peak")
        .json(&rename)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Products (one edited), keys (one bound to a product, one revoked).
async fn build_keys_and_products(server: &Server) -> String {
    server
        .create_product(json!({"id": "ide", "name": "IDE"}))
        .await;
    server
        .create_product(json!({"id": "cad", "requireSignatures": true}))
        .await;
    let r = server
        .request(reqwest::Method::PATCH, ADMIN_KEY, "/api/v1/products/ide")
        .json(&json!({"name": "The IDE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    server
        .create_key_with(json!({"name": "ide-app", "scopes": ["ingest"], "product": "ide"}))
        .await;
    let r = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/api-keys",
            &json!({"name": "old", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let old: Value = r.json().await.unwrap();
    let path = format!("/api/v1/api-keys/{}", old["id"].as_str().unwrap());
    assert_eq!(server.delete(ADMIN_KEY, &path).await.status(), 204);
    server.create_key(&["ingest", "validate"]).await
}

async fn license(server: &Server, body: Value) -> (String, String) {
    let lic = server.create_license(body).await;
    (
        lic["id"].as_str().unwrap().to_owned(),
        lic["key"].as_str().unwrap().to_owned(),
    )
}

async fn admin_post(server: &Server, path: String, body: Value) {
    let r = server.post_json(ADMIN_KEY, &path, &body).await;
    assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
}

/// Checks out a seat; returns its id.
fn lease_token(fingerprint: &str) -> String {
    format!("lease-token-of-{fingerprint}-0123456789")
}

async fn checkout(server: &Server, key: &str, id: &str, fingerprint: &str) -> String {
    let r = server
        .post_json(
            key,
            &format!("/api/v1/licenses/{id}/seats"),
            &json!({"fingerprint": fingerprint, "lease_token": lease_token(fingerprint)}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let seat: Value = r.json().await.unwrap();
    seat["seat_id"].as_str().unwrap().to_owned()
}

/// Licenses of every policy type, with seats taken and released, and
/// licenses suspended, revoked, reinstated, renewed and edited.
async fn build_licenses(server: &Server, pk: &str) -> Vec<Probe> {
    let seats = |mode: &str| json!({"max": 3, "mode": mode, "lease_ttl_s": 7200});
    let quota = |meter: &str, overage: &str| {
        json!({"quotas": [{"meter": meter, "limit": 50, "period": "month",
                           "overage": overage, "alert_thresholds_pct": [50, 100]}]})
    };
    let (seat, seat_key) = license(
        server,
        json!({"product": "ide", "customer": "acme",
        "expires_at": "2099-01-01T00:00:00Z",
        "policy": {"type": "seat", "seats": seats("node_locked")}}),
    )
    .await;
    let (float, float_key) = license(
        server,
        json!({"product": "ide", "customer": "beta",
        "policy": {"type": "seat", "seats": seats("floating")}}),
    )
    .await;
    let (usage, usage_key) = license(
        server,
        json!({"product": "api", "customer": "gamma",
        "policy": {"type": "usage", "usage": quota("calls", "block")}}),
    )
    .await;
    let (hybrid, hybrid_key) = license(server, json!({"product": "cad", "customer": "delta",
        "entitlements": ["export", "pro"], "metadata": {"tier": 2},
        "policy": {"type": "hybrid", "seats": seats("floating"), "usage": quota("tokens", "allow")}}))
    .await;
    let (paused, paused_key) = license(server, json!({"product": "ide", "customer": "eps"})).await;
    let (gone, gone_key) = license(server, json!({"product": "ide", "customer": "zeta"})).await;
    let (back, back_key) = license(
        server,
        json!({"product": "ide", "customer": "eta",
        "expires_at": "2098-01-01T00:00:00Z"}),
    )
    .await;

    for fp in ["host-a", "host-b", "host-c"] {
        checkout(server, pk, &seat, fp).await;
    }
    let b = seat_id_of(server, &seat, "host-b").await;
    let r = server
        .request(
            reqwest::Method::DELETE,
            pk,
            &format!("/api/v1/licenses/{seat}/seats/{b}"),
        )
        .header("Lease-Token", lease_token("host-b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let f = checkout(server, pk, &float, "laptop").await;
    let r = server
        .request(
            reqwest::Method::POST,
            pk,
            &format!("/api/v1/licenses/{float}/seats/{f}/heartbeat"),
        )
        .header("Lease-Token", lease_token("laptop"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    checkout(server, pk, &hybrid, "ws-1").await;

    let suspend = json!({"reason": "unpaid"});
    admin_post(
        server,
        format!("/api/v1/licenses/{paused}/suspend"),
        suspend.clone(),
    )
    .await;
    admin_post(
        server,
        format!("/api/v1/licenses/{gone}/revoke"),
        json!({"reason": "fraud"}),
    )
    .await;
    admin_post(server, format!("/api/v1/licenses/{back}/suspend"), suspend).await;
    admin_post(
        server,
        format!("/api/v1/licenses/{back}/reinstate"),
        json!({}),
    )
    .await;
    admin_post(
        server,
        format!("/api/v1/licenses/{back}/renew"),
        json!({"extend": "30d"}),
    )
    .await;
    let r = server
        .request(
            reqwest::Method::PATCH,
            ADMIN_KEY,
            &format!("/api/v1/licenses/{back}"),
        )
        .json(&json!({"customer": "eta-renamed", "entitlements": ["pro"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let (planned, planned_key) = plans_and_a_migration(server).await;

    let probe = |id: String, key: String, fingerprint, meter, has_seats| Probe {
        id,
        key,
        fingerprint,
        meter,
        has_seats,
    };
    vec![
        probe(seat, seat_key, Some("host-a"), None, true),
        probe(float, float_key, Some("laptop"), None, true),
        probe(usage, usage_key, None, Some("calls"), false),
        probe(hybrid, hybrid_key, Some("ws-1"), Some("tokens"), true),
        probe(paused, paused_key, None, None, false),
        probe(gone, gone_key, None, None, false),
        probe(back, back_key, None, None, false),
        probe(planned, planned_key, Some("host-p"), Some("calls"), true),
    ]
}

/// Two plan versions, a license on the first, and a migration to a usage
/// plan applied and rolled back from its second step: plans, license
/// history and migrations hold something to rebuild.
async fn plans_and_a_migration(server: &Server) -> (String, String) {
    let create = |path: &'static str, body: Value| async move {
        let r = server.post_json(ADMIN_KEY, path, &body).await;
        assert_eq!(r.status(), 201, "{path}: {}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()
    };
    let seats = json!({"max": 2, "mode": "node_locked"});
    create(
        "/api/v1/plans",
        json!({"name": "pro", "policy": {"type": "seat", "seats": seats}}),
    )
    .await;
    create(
        "/api/v1/plans",
        json!({"name": "metered", "policy": {"type": "usage", "usage":
        {"quotas": [{"meter": "calls", "limit": 1000, "period": "month", "overage": "allow"}]}}}),
    )
    .await;
    let (id, key) = license(
        server,
        json!({"product": "cad", "customer": "theta", "plan": "pro@1"}),
    )
    .await;
    let m = create(
        "/api/v1/migrations",
        json!({"selection": {"plan": "pro"},
        "target": "metered@1", "rules": {"seats": "keep"}}),
    )
    .await;
    let mid = m["id"].as_str().unwrap();
    admin_post(
        server,
        format!("/api/v1/migrations/{mid}/dry-run"),
        json!({}),
    )
    .await;
    admin_post(
        server,
        format!("/api/v1/migrations/{mid}/apply"),
        json!({"percent": 100}),
    )
    .await;
    admin_post(
        server,
        format!("/api/v1/migrations/{mid}/rollback"),
        json!({"from_step": 2}),
    )
    .await;
    (id, key)
}

async fn seat_id_of(server: &Server, id: &str, fingerprint: &str) -> String {
    let seats = server
        .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{id}/seats"))
        .await;
    let seat = seats["seats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["fingerprint"] == fingerprint)
        .unwrap();
    seat["seat_id"].as_str().unwrap().to_owned()
}

/// Events of several subjects (the usage licenses among them) over the last
/// hours, a batch sent twice (duplicates), and one refused (quarantined).
async fn ingest_events(server: &Server, licenses: &[Probe]) {
    let subjects = [
        "cust-1".to_owned(),
        "cust-2".to_owned(),
        licenses[2].id.clone(),
        licenses[3].id.clone(),
    ];
    let now = chrono::Utc::now().timestamp_millis();
    let batch = |b: i64| -> Vec<Value> {
        (0..40)
            .map(|i| {
                let data = json!({"tokens": (i * 7 % 13) as f64 / 4.0, "ms": 10 + i * 3 % 17,
                    "user": format!("u{}", i % 9),
                    "model": if i % 3 == 0 { "large" } else { "small" },
                    "region": if i % 2 == 0 { "eu" } else { "us" }});
                let t = rfc3339_ms(now - (b * 40 + i) * 61_007);
                event(
                    &format!("{b}-{i}"),
                    "call",
                    &subjects[i as usize % 4],
                    &t,
                    data,
                )
            })
            .collect()
    };
    for b in 0..4 {
        assert_eq!(server.ingest(ADMIN_KEY, &batch(b)).await.status(), 204);
    }
    // A resend: every event a duplicate, none counted again.
    assert_eq!(server.ingest(ADMIN_KEY, &batch(1)).await.status(), 204);
    // Skipped by the meters reading `ms` (counted per meter and reason,
    // which replay must rebuild too), counted by the others.
    let unreadable = event(
        "slow-1",
        "call",
        "cust-1",
        &time_from_now(0),
        json!({"ms": "slow"}),
    );
    assert_eq!(server.ingest(ADMIN_KEY, &[unreadable]).await.status(), 204);
    // Refused, so quarantined.
    let bad = event(
        "bad-1",
        "call",
        "cust-1",
        &time_from_now(0),
        json!({"ms": -5}),
    );
    let r = server.ingest(ADMIN_KEY, &[bad]).await;
    assert!(r.status().is_client_error(), "{}", r.status());
}

/// Builds the whole state on a server running on `data`.
async fn build_state(server: &Server) -> Built {
    build_meters(server).await;
    let ingest_key = build_keys_and_products(server).await;
    let licenses = build_licenses(server, &ingest_key).await;
    ingest_events(server, &licenses).await;
    change_meters_after_events(server).await;
    Built {
        ingest_key,
        licenses,
    }
}

/// Every answer a user could compare: meters and their queries, licenses,
/// seats, validations (less their freshly signed token), keys, products and
/// the quarantine.
async fn answers(server: &Server, built: &Built) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut paths = vec![
        "/api/v1/meters".to_owned(),
        "/api/v1/licenses".to_owned(),
        "/api/v1/api-keys".to_owned(),
        "/api/v1/products".to_owned(),
        "/api/v1/quarantine".to_owned(),
        "/api/v1/meters/tokens/query?windowSize=HOUR&groupBy=model&groupBy=region".to_owned(),
    ];
    for m in METERS {
        paths.push(format!(
            "/api/v1/meters/{m}/query?windowSize=HOUR&groupBy=subject"
        ));
    }
    for p in built.licenses.iter().filter(|p| p.has_seats) {
        paths.push(format!("/api/v1/licenses/{}/seats", p.id));
    }
    for path in paths {
        let r = server.get(ADMIN_KEY, &path).await;
        assert_eq!(r.status(), 200, "{path}");
        out.push((path, r.json().await.unwrap()));
    }
    for p in &built.licenses {
        let mut body = json!({"key": p.key, "nonce": "same"});
        if let Some(fp) = p.fingerprint {
            body["fingerprint"] = json!(fp);
        }
        if let Some(m) = p.meter {
            body["meter"] = json!(m);
        }
        let mut v = server.validate_license(&built.ingest_key, body).await;
        v.as_object_mut().unwrap().remove("token");
        out.push((format!("validate {}", p.id), v));
    }
    out
}

fn replay(data: &std::path::Path) {
    let out = common::replay(data);
    assert_success(&out);
}

/// Builds the state on a live server, stops it and returns its answers and
/// what its projections hold.
async fn live_state(fx: &Fixture) -> (Built, Vec<(String, Value)>, StateDump) {
    let server = Server::start_with(&fx.data(), &["--audit-checkpoint-records", "50"]);
    let built = build_state(&server).await;
    let before = answers(&server, &built).await;
    server.stop();
    let live = dump_state(&fx.data());
    for tree in [
        "counters",
        "licenses",
        "meters",
        "api_keys",
        "products",
        "quarantine",
        "plans",
        "license_history",
        "migrations",
    ] {
        assert!(
            live.trees[tree].len() > 1,
            "tree {tree} holds nothing but its checkpoint"
        );
    }
    // 160 events, and the one some meters skipped.
    assert!(live.dedup.as_ref().is_some_and(|d| d.entries.len() == 161));
    (built, before, live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_log_and_keys_alone_gives_the_live_projections_byte_for_byte() {
    let fx = Fixture::new();
    let (built, before, live) = live_state(&fx).await;

    let fresh = Fixture::new();
    copy_data_subset(&fx.data(), &fresh.data(), &["log", "keys"]);
    assert!(!fresh.data().join("state").exists());
    replay(&fresh.data());
    assert_same_state(&live, &dump_state(&fresh.data()), "rebuilt from the log");

    let server = Server::start(&fresh.data());
    let after = answers(&server, &built).await;
    for ((path, want), (_, got)) in before.iter().zip(&after) {
        assert_eq!(want, got, "{path} answers differently after the rebuild");
    }
    assert_eq!(before.len(), after.len());
}

/// Rewrites values in the stopped data directory's sled trees: one counter
/// state, one license's customer, and one seat taken from another license.
fn damage_projections(data: &std::path::Path, built: &Built) {
    use keymeter::meter::{AggState, Amount};
    let store = common::projections::open_store(data);
    let (k, _) = store
        .counters
        .scan_prefix(b"tokens\0")
        .next()
        .unwrap()
        .unwrap();
    let forged = AggState::Sum(Amount::from_int(1_000_000)).encode();
    store.counters.insert(k, forged).unwrap();
    let edit = |id: &str, change: &dyn Fn(&mut Value)| {
        let mut state: Value =
            serde_json::from_slice(&store.licenses.get(id).unwrap().unwrap()).unwrap();
        change(&mut state);
        let bytes = serde_json::to_vec(&state).unwrap();
        store.licenses.insert(id, bytes).unwrap();
    };
    edit(&built.licenses[2].id, &|s| {
        s["license"]["customer"] = json!("mallory")
    });
    edit(&built.licenses[0].id, &|s| {
        let seats = s["seats"]["seats"].as_object_mut().unwrap();
        let first = seats.keys().next().unwrap().clone();
        seats.remove(&first);
    });
    store.db.flush().unwrap();
}

/// A dedup snapshot that loads (magic, checksum, seq at the log head,
/// counts that add up) but has forgotten one identity and holds, in the
/// same hour, one that was never sent.
fn forge_dedup_snapshot(data: &std::path::Path) {
    let path = dedup_snapshot_path(data);
    let mut snapshot = DedupSnapshot::parse(&std::fs::read(&path).unwrap());
    let mut forged = snapshot.entries.pop().unwrap();
    forged[..16].copy_from_slice(&[0xAB; 16]);
    snapshot.entries.push(forged);
    std::fs::write(&path, snapshot.encode()).unwrap();
    let mut index = keymeter::projection::dedup::DedupIndex::in_memory(usize::MAX);
    index.read_snapshot(&std::fs::read(&path).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_throws_away_damaged_projections_and_rebuilds_the_logs_bytes() {
    let fx = Fixture::new();
    let (built, _, live) = live_state(&fx).await;

    damage_projections(&fx.data(), &built);
    forge_dedup_snapshot(&fx.data());
    assert_ne!(dump_state(&fx.data()), live, "the damage took");
    replay(&fx.data());
    assert_same_state(&live, &dump_state(&fx.data()), "replayed over damage");

    std::fs::remove_dir_all(fx.data().join("state")).unwrap();
    replay(&fx.data());
    assert_same_state(
        &live,
        &dump_state(&fx.data()),
        "replayed after state/ was deleted",
    );
}
