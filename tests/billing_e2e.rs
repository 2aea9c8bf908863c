//! Billing through the binary: statements of a daily cycle read by a billing
//! job over HTTP, verified offline by `keymeter billing verify` with the
//! published keys, exported twice to the same bytes, and unchanged across a
//! SIGKILL and a `keymeter replay`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, rfc3339_ms, Server, ADMIN_KEY};
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("keymeter.toml");
    std::fs::write(
        &path,
        "[billing]\ncycle = \"day\"\ngrace = \"1s\"\nclose_interval = \"200ms\"\n",
    )
    .unwrap();
    path
}

fn event(id: &str, time_ms: i64, tokens: i64, region: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "app", "type": "request",
        "subject": "acme", "time": rfc3339_ms(time_ms),
        "data": {"tokens": tokens, "region": region}})
}

async fn feed(server: &Server) -> Value {
    server
        .get_json(ADMIN_KEY, "/api/v1/billing/statements")
        .await
}

/// Polls the feed until it holds `n` statements.
async fn feed_of(server: &Server, n: usize) -> Value {
    let deadline = std::time::Instant::now() + common::WAIT_MAX;
    loop {
        let f = feed(server).await;
        if f["statements"].as_array().unwrap().len() >= n {
            return f;
        }
        assert!(std::time::Instant::now() < deadline, "feed: {f}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn keymeter(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn day_label(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

// One scenario in the order its steps depend on (each step reads what
// the one before left), hence its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_verify_offline_export_identically_and_survive_kill_and_replay() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let cfg = config(root.path());
    let cfg_arg = cfg.to_str().unwrap();
    let server = Server::start_with(&data, &["--config", cfg_arg]);
    server
        .create_meter(
            json!({"slug": "tokens", "eventType": "request", "aggregation": "SUM",
            "valueProperty": "$.tokens", "groupBy": {"region": "$.region"}}),
        )
        .await;
    let now = chrono::Utc::now().timestamp_millis();
    // Three days ago, two days ago and today: the first two close at once
    // (one second of grace), today stays open.
    let r = server
        .ingest(
            ADMIN_KEY,
            &[
                event("a", now - 2 * DAY, 5, "eu"),
                event("b", now - 2 * DAY + 1, 7, "eu"),
                event("c", now - 3 * DAY, 9, "eu"),
                event("d", now, 11, "us"),
            ],
        )
        .await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let f = feed_of(&server, 2).await;
    let labels: Vec<&str> = (f["statements"].as_array().unwrap().iter())
        .map(|s| s["statement"]["period"]["label"].as_str().unwrap())
        .collect();
    let label = day_label(now - 2 * DAY);
    assert_eq!(labels, [day_label(now - 3 * DAY), label.clone()]);
    // Late: two days ago is within the horizon (a new version), three days
    // ago is beyond it (two closed days back, the default).
    let r = server
        .ingest(
            ADMIN_KEY,
            &[
                event("e", now - 3 * DAY + 5, 1, "eu"),
                event("f", now - 2 * DAY + 10, 3, "eu"),
            ],
        )
        .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 0, "{answer}");
    assert_eq!(answer["rejected"][0]["code"], "PERIOD_CLOSED", "{answer}");
    let f = feed_of(&server, 3).await;
    let served = &f["statements"][2];
    let s = &served["statement"];
    assert_eq!(s["period"]["label"], label.as_str());
    assert_eq!(
        (s["version"].as_u64(), s["lines"][0]["quantity"].as_str()),
        (Some(2), Some("15"))
    );
    assert_eq!(s["lines"][0]["delta"], "3");
    let id = s["statement_id"].as_str().unwrap().to_owned();

    // A billing job's cursor: nothing after the last statement, a cursor from
    // the future is refused.
    let after = f["nextCursor"].as_str().unwrap();
    let rest = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/billing/statements?after={after}"),
        )
        .await;
    assert_eq!(rest["statements"], json!([]));
    let future = server
        .get(ADMIN_KEY, "/api/v1/billing/statements?after=99")
        .await;
    assert_eq!(future.status(), 400);
    assert_eq!(
        future.json::<Value>().await.unwrap()["code"],
        "INVALID_CURSOR"
    );
    let missing = server
        .get(ADMIN_KEY, "/api/v1/billing/statements/nope")
        .await;
    assert_eq!(missing.status(), 404);
    let bad_period = server
        .get(ADMIN_KEY, "/api/v1/billing/periods/2026-13-01")
        .await;
    assert_eq!(
        bad_period.json::<Value>().await.unwrap()["code"],
        "PERIOD_NOT_FOUND"
    );
    let today = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/billing/periods/{}", day_label(now)),
        )
        .await;
    assert_eq!(today["state"], "open", "{today}");

    // Offline: the statement, its proof and the published keys.
    let dir = root.path();
    let write = |name: &str, v: &Value| {
        let p = dir.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let statement = write("statement.json", served);
    let jwks = write(
        "jwks.json",
        &server.get_json(ADMIN_KEY, "/.well-known/jwks.json").await,
    );
    let proof = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/billing/statements/{id}/proof?source=app&id=b"),
        )
        .await;
    let proof = write("proof.json", &proof);
    let out = keymeter(&[
        "billing", "verify", &statement, "--jwks", &jwks, "--proof", &proof,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is counted in line"), "{stdout}");
    let previous = write("previous.json", &f["statements"][1]);
    let consistency = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/billing/statements/{id}/consistency?from_version=1"),
        )
        .await;
    let consistency = write("consistency.json", &consistency);
    let out = keymeter(&[
        "billing",
        "verify",
        &statement,
        "--jwks",
        &jwks,
        "--previous",
        &previous,
        "--consistency",
        &consistency,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("only adds events to version 1"));
    // The documented Python check, run as the document has it.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/billing-statements.md"
    ))
    .unwrap();
    let script = doc
        .split("```python\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let script_path = dir.join("check_proof.py");
    std::fs::write(&script_path, script).unwrap();
    let python = |proof_path: &str| {
        Command::new("python3")
            .arg(&script_path)
            .args([&statement, proof_path])
            .output()
            .unwrap()
    };
    let out = python(&proof);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is counted in line"));
    let mut other: Value = serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    other["index"] = json!(0);
    let other = write("other-proof.json", &other);
    assert!(
        !python(&other).status.success(),
        "a proof for another position must fail"
    );
    let mut forged = served.clone();
    forged["statement"]["lines"][0]["quantity"] = json!("1");
    let forged = write("forged.json", &forged);
    assert!(!keymeter(&["billing", "verify", &forged, "--jwks", &jwks])
        .status
        .success());

    // The same period exported twice: the same bytes, and the manifest's hash.
    let url = &server.base;
    for run in ["one", "two"] {
        let out_dir = dir.join(run);
        let out = keymeter(&[
            "billing",
            "export",
            "--url",
            url,
            "--api-key",
            ADMIN_KEY,
            "--period",
            &label,
            "--format",
            "jsonl",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let name = format!("statements-{label}.jsonl");
    let one = std::fs::read(dir.join("one").join(&name)).unwrap();
    assert_eq!(one, std::fs::read(dir.join("two").join(&name)).unwrap());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("one/manifest.json")).unwrap()).unwrap();
    use sha2::Digest;
    assert_eq!(
        manifest["files"][0]["sha256"],
        hex::encode(sha2::Sha256::digest(&one))
    );
    assert_eq!(manifest["roots"][0]["statementId"], id.as_str());

    // Killed and restarted, then rebuilt from the log: the same statements.
    let before = feed(&server).await;
    server.kill();
    let server = Server::start_with(&data, &["--config", cfg_arg]);
    assert_eq!(feed(&server).await, before);
    server.stop();
    let replay = common::replay(&data);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let server = Server::start_with(&data, &["--config", cfg_arg]);
    assert_eq!(feed(&server).await, before);
    // The cycle is the log's: another one is refused at start, naming both.
    server.stop();
    std::fs::write(&cfg, "[billing]\ncycle = \"month\"\n").unwrap();
    let refused =
        common::exits_with_error(common::serve_command(&data).args(["--config", cfg_arg]));
    assert!(
        refused.contains("bills by day") && refused.contains("\"month\""),
        "{refused}"
    );
}

/// A customer owning several licenses (each a metered subject) is billed
/// the sum of their statements; the feed filters by customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_licenses_are_totalled_and_filtered_together() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let server = Server::start_with(
        &root.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    server
        .create_meter(
            json!({"slug": "tokens", "eventType": "request", "aggregation": "SUM",
            "valueProperty": "$.tokens", "groupBy": {"region": "$.region"}}),
        )
        .await;
    let mut ids = Vec::new();
    for customer in ["globex", "globex", "initech"] {
        let lic = server
            .create_license(json!({"product": "ide", "customer": customer}))
            .await;
        ids.push(lic["id"].as_str().unwrap().to_owned());
    }
    let day = chrono::Utc::now().timestamp_millis() - 2 * DAY;
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut e = event(&format!("t{i}"), day, 10 * (i as i64 + 1), "eu");
            e["subject"] = json!(id);
            e
        })
        .collect();
    assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    feed_of(&server, 3).await;
    let label = day_label(day);
    let totals = server
        .get_json(
            ADMIN_KEY,
            &format!("/api/v1/billing/customers/globex/totals?period={label}"),
        )
        .await;
    assert_eq!(totals["lines"][0]["quantity"], "30", "{totals}");
    assert_eq!(
        totals["statements"].as_array().unwrap().len(),
        2,
        "{totals}"
    );
    let globex = server
        .get_json(ADMIN_KEY, "/api/v1/billing/statements?customer=globex")
        .await;
    let subjects: Vec<&str> = (globex["statements"].as_array().unwrap().iter())
        .map(|s| s["statement"]["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 2);
    assert!(
        subjects.iter().all(|s| ids[..2].contains(&s.to_string())),
        "{subjects:?}"
    );
    // A key bound to a product does not read billing, which spans products.
    server.create_product(json!({"id": "ide"})).await;
    let bound = server
        .create_key_with(json!({"name": "ide-reader", "scopes": ["read"], "product": "ide"}))
        .await;
    let refused = server.get(&bound, "/api/v1/billing/statements").await;
    assert_eq!(refused.status(), 403);
    server.stop();
}
