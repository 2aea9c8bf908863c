//! `keymeter backup` while the server ingests, `keymeter restore` into a new
//! directory, and a start there that answers what the live server answered
//! at the backup's log position; a corrupted backup is refused by name.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{assert_success, bin, event, time_from_now, Server, ADMIN_KEY, TEST_MASTER_KEY};
use serde_json::{json, Value};

const SUBJECTS: usize = 5;

/// `keymeter <args>` with the test master key, to completion.
fn keymeter(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("KEYMETER_MASTER_KEY", TEST_MASTER_KEY)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Ingests batches of 20 events until `stop`; returns each acknowledged
/// batch's `keymeter-seq` and its value per subject.
async fn ingest_until(server: Arc<Server>, stop: Arc<AtomicBool>) -> Vec<(u64, [u64; SUBJECTS])> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut sums = [0u64; SUBJECTS];
        let events: Vec<Value> = (0..20)
            .map(|i| {
                n += 1;
                let subject = (n as usize + i) % SUBJECTS;
                let value = n % 7 + 1;
                sums[subject] += value;
                event(
                    &format!("bk-{n}"),
                    "job",
                    &format!("cust-{subject}"),
                    &time_from_now(-1_000),
                    json!({"n": value}),
                )
            })
            .collect();
        let r = server.ingest(ADMIN_KEY, &events).await;
        assert_eq!(r.status(), 204);
        let seq: u64 = r.headers()["keymeter-seq"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        acked.push((seq, sums));
    }
    acked
}

async fn totals(server: &Server) -> [u64; SUBJECTS] {
    let mut out = [0u64; SUBJECTS];
    for (s, total) in out.iter_mut().enumerate() {
        *total = server.total("jobs", &format!("subject=cust-{s}")).await as u64;
    }
    out
}

#[tokio::test]
async fn a_backup_taken_during_ingest_restores_to_the_live_counters_at_its_position() {
    let root = tempfile::tempdir().unwrap();
    let (data, out, restored) = (
        root.path().join("data"),
        root.path().join("backup"),
        root.path().join("restored"),
    );
    let server = Arc::new(Server::start_with_env(
        &data,
        &["--segment-bytes-max", "65536"],
        &[("KEYMETER_MASTER_KEY", TEST_MASTER_KEY)],
    ));
    server
        .create_meter(json!({"slug": "jobs", "eventType": "job", "aggregation": "SUM", "valueProperty": "$.n"}))
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = tokio::spawn(ingest_until(server.clone(), stop.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let args = ["backup", "--data-dir", s(&data), "--out", s(&out)].map(str::to_owned);
    let out_backup = tokio::task::spawn_blocking(move || {
        keymeter(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_success(&out_backup);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = ingest.await.unwrap();

    let head = manifest(&out)["log"]["head_seq"].as_u64().unwrap();
    let mut expected = [0u64; SUBJECTS];
    for (seq, sums) in &acked {
        if *seq <= head {
            for s in 0..SUBJECTS {
                expected[s] += sums[s];
            }
        }
    }
    assert!(
        acked.iter().any(|(seq, _)| *seq <= head),
        "the backup holds some ingest"
    );
    assert!(
        acked.iter().any(|(seq, _)| *seq > head),
        "ingest went on after it"
    );
    assert!(
        manifest(&out)["log"]["segments"].as_u64().unwrap() > 1,
        "sealed segments and the active one"
    );

    assert_success(&keymeter(&[
        "restore",
        "--from",
        s(&out),
        "--data-dir",
        s(&restored),
    ]));
    assert_success(&keymeter(&["log", "verify", "--data-dir", s(&restored)]));
    assert_success(&keymeter(&["audit", "verify", "--data-dir", s(&restored)]));

    let copy = Server::start_with_env(&restored, &[], &[("KEYMETER_MASTER_KEY", TEST_MASTER_KEY)]);
    assert_eq!(totals(&copy).await, expected);
    let ready = copy.get_json(ADMIN_KEY, "/readyz").await;
    assert!(ready["logHeadSeq"].as_u64().unwrap() >= head);
    copy.stop();
    let live_total: u64 = totals(&server).await.iter().sum();
    assert!(live_total > expected.iter().sum::<u64>());
    Arc::into_inner(server).unwrap().stop();
}

/// A small backup of a stopped server: its data, backup and root dirs.
async fn small_backup(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (data, out) = (root.join("data"), root.join("backup"));
    let server = Server::start_with_env(&data, &[], &[("KEYMETER_MASTER_KEY", TEST_MASTER_KEY)]);
    server
        .create_meter(json!({"slug": "jobs", "eventType": "job", "aggregation": "COUNT"}))
        .await;
    server.stop();
    assert_success(&keymeter(&[
        "backup",
        "--data-dir",
        s(&data),
        "--out",
        s(&out),
    ]));
    (data, out)
}

#[tokio::test]
async fn restore_refuses_a_corrupted_file_by_name_and_leaves_the_target_empty() {
    let root = tempfile::tempdir().unwrap();
    let (_, out) = small_backup(root.path()).await;
    let m = manifest(&out);
    let files: Vec<String> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    let segment = files.iter().find(|p| p.starts_with("log/")).unwrap();
    assert!(files.iter().any(|p| p == "keys/keyring.json"), "{files:?}");
    for victim in [segment.as_str(), "keys/keyring.json"] {
        let copy = root
            .path()
            .join(format!("copy-{}", victim.replace('/', "-")));
        std::fs::create_dir(&copy).unwrap();
        for f in common::walk(&out) {
            let rel = f.strip_prefix(&out).unwrap();
            let to = copy.join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&f, &to).unwrap();
        }
        let path = copy.join(victim);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let target = root
            .path()
            .join(format!("target-{}", victim.replace('/', "-")));
        let r = keymeter(&["restore", "--from", s(&copy), "--data-dir", s(&target)]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{victim}: restored a corrupted backup");
        assert!(
            stderr.contains(&format!("{victim} is corrupted")),
            "{victim}: {stderr}"
        );
        assert!(!target.exists(), "{victim}: the target was left behind");
    }
}

#[tokio::test]
async fn restore_and_backup_refuse_a_target_that_is_not_empty() {
    let root = tempfile::tempdir().unwrap();
    let (data, out) = small_backup(root.path()).await;
    let target = root.path().join("busy");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious"), b"keep me").unwrap();
    let r = keymeter(&["restore", "--from", s(&out), "--data-dir", s(&target)]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("is not empty"));
    assert_eq!(std::fs::read(target.join("precious")).unwrap(), b"keep me");
    let r = keymeter(&["backup", "--data-dir", s(&data), "--out", s(&out)]);
    assert!(!r.status.success(), "a second backup over the first");
    assert!(String::from_utf8_lossy(&r.stderr).contains("is not empty"));
}
