//! Damage to the log as the operator meets it: `keymeter log verify` and
//! `keymeter serve` name the damaged record; a torn tail is cut on start and
//! loses nothing that was acknowledged.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use keymeter::log::frame::{FrameHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use serde_json::json;

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    s.sort();
    s
}

/// (offset, seq, payload_len) of every frame in a segment.
fn frames(segment: &Path) -> Vec<(usize, u64, usize)> {
    let bytes = std::fs::read(segment).unwrap();
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at + FRAME_HEADER_LEN <= bytes.len() {
        let h = FrameHeader::decode(bytes[at..at + FRAME_HEADER_LEN].try_into().unwrap());
        out.push((at, h.seq, h.payload_len as usize));
        at += h.frame_len() as usize;
    }
    out
}

async fn fill(dir: &Path) -> f64 {
    let server = Server::start_with(dir, &["--segment-bytes-max", "8192"]);
    server
        .create_meter(json!({"slug": "n", "eventType": "e", "aggregation": "COUNT"}))
        .await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
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
    let segs = segments(dir.path());
    assert!(
        segs.len() >= 3,
        "expected several segments, got {}",
        segs.len()
    );
    let sealed = &segs[1];
    let (offset, seq, len) = frames(sealed)[2];
    let mut bytes = std::fs::read(sealed).unwrap();
    bytes[offset + FRAME_HEADER_LEN + len / 2] ^= 0x40;
    std::fs::write(sealed, bytes).unwrap();

    let data = dir.path().to_str().unwrap();
    let name = sealed.file_name().unwrap().to_str().unwrap();
    let out = run(&["log", "verify", "--data-dir", data]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(name) && err.contains(&format!("record seq {seq}")),
        "{err}"
    );

    let out = run(&["serve", "--data-dir", data, "--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must refuse a corrupt log");
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
    let last = segments(dir.path()).pop().unwrap();
    let (offset, _, len) = *frames(&last).last().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let clean_len = bytes.len();
    let partial: Vec<u8> = bytes[offset..offset + (FRAME_HEADER_LEN + len) / 2].to_vec();
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
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("torn-"))
        .collect();
    assert_eq!(kept.len(), 1, "the cut bytes are kept for inspection");
    let out = run(&["log", "verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("torn tail"));
}
