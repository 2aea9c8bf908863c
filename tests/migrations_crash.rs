//! SIGKILL of the real binary in the middle of a migration step and of a
//! rollback: after the restart every license is wholly before or wholly
//! after (never a mix, never a half-written document), the migration's
//! progress counts exactly the licenses changed, and rerunning the step or
//! the rollback finishes it.
//!
//! A failing run prints its seed; `KEYMETER_TEST_SEED=<seed>` replays it.

mod common;
mod migration_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use migration_support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const LICENSES: usize = 300;

/// Starts `path` (apply or rollback) in the background and SIGKILLs the
/// server once `changed` reports at least `at` licenses.
async fn kill_midway(
    server: Server,
    path: String,
    body: Value,
    at: u64,
    mid: &str,
    rollback: bool,
) {
    let (client, url) = (server.client.clone(), server.url(&path));
    let call = tokio::spawn(async move {
        let _ = client
            .post(url)
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await;
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (migrated, rolled_back) = progress(&server, mid).await;
        if (if rollback { rolled_back } else { migrated }) >= at {
            break;
        }
        assert!(Instant::now() < deadline, "no progress to {at}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill();
    let _ = call.await;
}

/// Every license is its `before` document byte for byte, or that document
/// migrated; returns the ids that are migrated, with their documents.
async fn check_whole(
    server: &Server,
    before: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut migrated = BTreeMap::new();
    for (id, doc) in before {
        let now = document(server, id).await;
        if now == *doc {
            continue;
        }
        let (b, n): (Value, Value) = (
            serde_json::from_str(doc).unwrap(),
            serde_json::from_str(&now).unwrap(),
        );
        assert!(
            is_migrated_form(&b, &n),
            "license {id} is neither before nor after:\n{doc}\n{now}"
        );
        migrated.insert(id.clone(), now);
    }
    migrated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_step_and_mid_rollback_leaves_each_license_before_or_after() {
    let seed = test_seed("migrations_crash", "sigkill_mid_step_and_mid_rollback");
    let mut rng = StdRng::seed_from_u64(seed);
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let fleet = fleet(&server, LICENSES, 2).await;
    let mut before = BTreeMap::new();
    for id in fleet.keys() {
        before.insert(id.clone(), document(&server, id).await);
    }
    let (s, m) = post(&server, "/api/v1/migrations", spec()).await;
    assert_eq!(s, 201, "{m}");
    let mid = m["id"].as_str().unwrap().to_owned();

    // Killed in the middle of the step (two licenses per log batch).
    let at = rng.gen_range(10..LICENSES as u64 / 2);
    println!("seed {seed}: kill the step after {at} licenses");
    let apply = format!("/api/v1/migrations/{mid}/apply");
    kill_midway(
        server,
        apply.clone(),
        json!({"percent": 100, "chunk": 2}),
        at,
        &mid,
        false,
    )
    .await;
    let server = start(root.path());
    let migrated = check_whole(&server, &before).await;
    let (counted, _) = progress(&server, &mid).await;
    assert_eq!(
        migrated.len() as u64,
        counted,
        "progress counts what changed"
    );
    assert!(
        counted >= at && counted < LICENSES as u64,
        "killed midway: {counted}"
    );

    // Rerunning the step completes it.
    let (s, step) = post(&server, &apply, json!({"percent": 100})).await;
    assert_eq!(s, 200, "{step}");
    let migrated = check_whole(&server, &before).await;
    assert_eq!(migrated.len(), LICENSES);
    assert_eq!(progress(&server, &mid).await, (LICENSES as u64, 0));

    // Killed in the middle of the rollback.
    let at = rng.gen_range(10..LICENSES as u64 / 2);
    println!("seed {seed}: kill the rollback after {at} licenses");
    let rollback = format!("/api/v1/migrations/{mid}/rollback");
    kill_midway(
        server,
        rollback.clone(),
        json!({"chunk": 2}),
        at,
        &mid,
        true,
    )
    .await;
    let server = start(root.path());
    let still = check_whole(&server, &before).await;
    for (id, doc) in &still {
        assert_eq!(doc, &migrated[id], "{id} changed without being rolled back");
    }
    let (left, restored) = progress(&server, &mid).await;
    assert_eq!(
        (left, restored),
        (still.len() as u64, (LICENSES - still.len()) as u64)
    );
    assert!(
        restored >= at && left > 0,
        "killed midway: {restored} restored"
    );

    // Rerunning the rollback finishes it: every document as before.
    let (s, rb) = post(&server, &rollback, json!({})).await;
    assert_eq!(s, 200, "{rb}");
    assert_eq!(rb["rollback"]["conflicts"], 0, "{rb}");
    assert!(check_whole(&server, &before).await.is_empty());
    server.stop();
}
