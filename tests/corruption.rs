//! Damage to the log as the operator meets it: `keymeter log verify` and
//! `keymeter serve` name the damaged record; a torn tail is cut on start and
//! loses nothing that was acknowledged.

mod common;

use std::path::Path;

use common::log_files::{frames, modify, segments, torn_files};
use common::*;
use serde_json::json;

async fn fill(dir: &Path) -> f64 {
    let server = Server::start_with(dir, &["--segment-bytes-max", "8192"]);
    server
        .create_meter(json!({"slug": "n", "eventType": "e", "aggregation": "COUNT"}))
        .await;
    let now = time_from_now(0);
    for b in 0..10 {
        let events: Vec<_> = (0..20)
            .map(|i| event(&format!("{b}-{i}"), "e", "acme", &now, json!({"i": i})))
            .collect();
        assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    }
    let total = server.query("n", "").await["data"][0]["value"]
        .as_f64()
        .unwrap();
    server.stop();
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_sealed_segment_is_named_by_verify_and_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(fill(dir.path()).await, 200.0);
    let segs = segments(&dir.path().join("log"));
    assert!(
        segs.len() >= 3,
        "expected several segments, got {}",
        segs.len()
    );
    let sealed = &segs[1];
    let target = frames(sealed)[2].clone();
    let seq = target.seq;
    modify(sealed, |b| {
        b[target.payload_start() + target.payload_len / 2] ^= 0x40
    });

    let data = dir.path().to_str().unwrap();
    let name = sealed.file_name().unwrap().to_str().unwrap();
    let out = run(&["log", "verify", "--data-dir", data]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(name) && err.contains(&format!("record seq {seq}")),
        "{err}"
    );

    // serve must refuse a corrupt log.
    let err = exits_with_error(&mut serve_command(dir.path()));
    assert!(
        err.contains(name) && err.contains(&format!("record seq {seq}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_on_start_and_acknowledged_events_survive() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(fill(dir.path()).await, 200.0);
    // A crash during an unacknowledged append leaves a partial frame: the
    // first half of a copy of the last frame.
    let last = segments(&dir.path().join("log")).pop().unwrap();
    let frame = frames(&last).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let clean_len = bytes.len();
    let half = (frame.end() - frame.offset) / 2;
    let partial: Vec<u8> = bytes[frame.offset..frame.offset + half].to_vec();
    bytes.extend_from_slice(&partial);
    std::fs::write(&last, &bytes).unwrap();

    let out = run(&["log", "verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("torn tail"));

    let server = Server::start(dir.path());
    assert_eq!(
        server.query("n", "").await["data"][0]["value"]
            .as_f64()
            .unwrap(),
        200.0
    );
    assert!(
        server.stderr().contains("torn"),
        "the cut is logged: {}",
        server.stderr()
    );
    server.stop();
    assert_eq!(std::fs::metadata(&last).unwrap().len() as usize, clean_len);
    let kept = torn_files(&dir.path().join("log"));
    assert_eq!(kept.len(), 1, "the cut bytes are kept for inspection");
    let out = run(&["log", "verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("torn tail"));
}
