//! A fleet moves seat → hybrid → usage in staged steps while 8 clients
//! validate, check seats out and send usage without pause: every answer is
//! decided under exactly one plan version (its claims, seats and quota are
//! those of the version it names, never a mix), no license ever holds more
//! seats than its terms allow, no usage is lost; then the usage migration is
//! rolled back and every document is byte for byte what it was.
//!
//! `KEYMETER_MIGRATION_LICENSES` sets the fleet size (default 120; the
//! issue's figure is 100,000, for a release build:
//! `KEYMETER_MIGRATION_LICENSES=100000 cargo test --release --test
//! migrations_load`). A failing run prints its seed.

mod common;
mod migration_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use migration_support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const CLIENTS: u64 = 8;
const SEATS: u64 = 2;

/// What one client saw: answers checked as they came, usage acknowledged.
#[derive(Default)]
struct Seen {
    validations: u64,
    by_plan: BTreeMap<String, u64>,
    usage_acked: u64,
}

/// The claims a verdict under `plan` must carry: seats under the seat and
/// hybrid versions, the quota under the hybrid and usage ones, with the
/// version's limit.
fn check_answer(v: &Value, claims: &keymeter_client::Claims) -> Result<String, String> {
    let plan = claims.plan.clone().ok_or("no plan named")?;
    let doc = &v["license"];
    let (seats, quota_limit) = match plan.as_str() {
        "seats@1" => (true, None),
        "usage@1" => (true, Some(SEATS as f64 * 1000.0)),
        "usage@2" => (false, Some(5000.0)),
        other => return Err(format!("unknown plan {other}")),
    };
    let ok = doc["plan"] == plan.as_str()
        && claims.seats.is_some() == seats
        && claims
            .seats
            .as_ref()
            .is_none_or(|s| u64::from(s.used) <= SEATS && s.max as u64 == SEATS)
        && claims.quota.as_ref().map(|q| q.limit) == quota_limit
        && doc["policy"]["seats"].is_object() == seats;
    match ok {
        true => Ok(plan),
        false => Err(format!("mixed terms under {plan}: {v}")),
    }
}

async fn client(
    server_url: String,
    pk: String,
    fleet: Arc<Vec<(String, String)>>,
    keys: keymeter_client::Keys,
    stop: Arc<AtomicBool>,
    n: u64,
    seed: u64,
) -> Seen {
    let http = http_client();
    let mut rng = StdRng::seed_from_u64(seed ^ n);
    let mut seen = Seen::default();
    let fp = format!("machine-{n}");
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let (id, key) = &fleet[rng.gen_range(0..fleet.len())];
        if i.is_multiple_of(4) {
            let r = http
                .post(format!("{server_url}/api/v1/licenses/{id}/seats"))
                .bearer_auth(&pk)
                .json(&json!({"fingerprint": fp, "lease_token": format!("token-{fp}-0123456789abcdef")}))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            assert!(matches!(s, 200 | 201 | 409), "checkout answered {s}");
            continue;
        }
        if i % 4 == 1 {
            let event = event(
                &format!("u-{n}-{i}"),
                "api_call",
                id,
                &time_from_now(0),
                json!({}),
            );
            let r = http
                .post(format!("{server_url}/api/v1/events"))
                .bearer_auth(&pk)
                .header("content-type", "application/cloudevents+json")
                .body(event.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
            seen.usage_acked += 1;
            continue;
        }
        let r = http
            .post(format!("{server_url}/api/v1/licenses/validate"))
            .bearer_auth(&pk)
            .json(&json!({"key": key, "fingerprint": fp}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let claims =
            keymeter_client::verify_token(v["token"].as_str().unwrap(), &keys, now_s()).unwrap();
        let plan = check_answer(&v, &claims).unwrap();
        seen.validations += 1;
        *seen.by_plan.entry(plan).or_default() += 1;
    }
    seen
}

async fn staged(server: &Server, spec: Value) -> String {
    let (s, m) = post(server, "/api/v1/migrations", spec).await;
    assert_eq!(s, 201, "{m}");
    let mid = m["id"].as_str().unwrap().to_owned();
    let (s, dry) = post(
        server,
        &format!("/api/v1/migrations/{mid}/dry-run?limit=1"),
        json!({}),
    )
    .await;
    assert_eq!(
        (s, &dry["summary"]["cannot_convert"]),
        (200, &json!(0)),
        "{dry}"
    );
    for percent in [1, 10, 100] {
        let (s, step) = post(
            server,
            &format!("/api/v1/migrations/{mid}/apply"),
            json!({"percent": percent, "chunk": 50}),
        )
        .await;
        assert_eq!(s, 200, "{step}");
        assert!(step["step"]["selection_changed"].is_null(), "{step}");
    }
    mid
}

async fn documents(server: &Server, ids: &[(String, String)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (id, _) in ids {
        out.insert(id.clone(), document(server, id).await);
    }
    out
}

// Long on purpose: the clients run across both migrations and the rollback,
// and are only judged once they stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seat_to_hybrid_to_usage_under_load_answers_under_one_version_and_rolls_back_exactly() {
    let seed = test_seed("migrations_load", "seat_to_hybrid_to_usage_under_load");
    let licenses: usize = std::env::var("KEYMETER_MIGRATION_LICENSES")
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(120);
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let fleet: Vec<(String, String)> = fleet(&server, licenses, SEATS as u32)
        .await
        .into_iter()
        .collect();
    let (s, p) = post(&server, "/api/v1/plans", json!({"name": "usage", "policy": {"type": "usage",
        "usage": {"quotas": [{"meter": "calls", "limit": 5000, "period": "month", "overage": "block"}]}}})).await;
    assert_eq!((s, p["ref"].as_str()), (201, Some("usage@2")));
    let fleet = Arc::new(fleet);
    let pk = server.create_key(&["ingest", "validate"]).await;
    let keys = server.jwks_keys().await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (url, pk, fleet, keys, stop) = (
                server.url(""),
                pk.clone(),
                fleet.clone(),
                keys.clone(),
                stop.clone(),
            );
            tokio::spawn(client(url, pk, fleet, keys, stop, n, seed))
        })
        .collect();

    // Seat → hybrid (seats kept, a quota of 1,000 calls a seat), completed.
    let m1 = staged(&server, spec()).await;
    let (s, _) = post(
        &server,
        &format!("/api/v1/migrations/{m1}/complete"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    let hybrid = documents(&server, &fleet).await;
    // Hybrid → usage (seats dropped), then rolled back.
    let m2 = staged(
        &server,
        json!({"selection": {"plan": "usage@1"}, "target": "usage@2",
        "rules": {"seats": "drop"}}),
    )
    .await;
    let (s, rb) = post(
        &server,
        &format!("/api/v1/migrations/{m2}/rollback"),
        json!({"chunk": 50}),
    )
    .await;
    assert_eq!(s, 200, "{rb}");
    stop.store(true, Ordering::SeqCst);
    let mut total = Seen::default();
    for t in tasks {
        let seen = t.await.unwrap();
        total.validations += seen.validations;
        total.usage_acked += seen.usage_acked;
        for (plan, n) in seen.by_plan {
            *total.by_plan.entry(plan).or_default() += n;
        }
    }
    println!(
        "{} validations by plan: {:?}",
        total.validations, total.by_plan
    );
    assert!(
        total.by_plan.len() >= 2,
        "validations ran across the switch: {:?}",
        total.by_plan
    );

    // Seat checkouts under usage@2 were refused; rolled back, no conflict
    // and every document is the hybrid one again, byte for byte.
    assert_eq!(rb["rollback"]["conflicts"], 0, "{rb}");
    assert_eq!(documents(&server, &fleet).await, hybrid);
    for (id, _) in fleet.iter().take(50) {
        let seats = server
            .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{id}/seats"))
            .await;
        assert!(
            seats["seats"].as_array().unwrap().len() as u64 <= SEATS,
            "{seats}"
        );
    }
    // No usage lost: every acknowledged event counted.
    assert_eq!(server.total("calls", "").await, total.usage_acked as f64);
    server.stop();
}
