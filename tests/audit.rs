//! Tamper evidence as an auditor meets it: a server writes signed
//! checkpoints (every 50 records here) and anchors them in a file outside the
//! data directory; `keymeter audit verify` then names the exact record of an
//! edit, deletion, insertion or reordering, bounds an edit whose chain was
//! recomputed (which `log verify` alone cannot see) between two checkpoints,
//! catches a cut-off tail against the anchors, and works from a saved JWKS
//! without the master key.
//!
//! One server run builds the log; every test damages its own copy of it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use common::engine::ManualClock;
use common::log_files::{
    log_frames, modify, segments, Frame, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use common::*;
use keymeter::record::Record;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CHECKPOINT_RECORDS: u64 = 50;
const EVENTS_PER_REQUEST: usize = 20;

/// What the server left behind, held in memory so that no directory
/// outlives the test run (statics are never dropped).
struct Fixture {
    /// Every file of the data directory, by path relative to it.
    data: Vec<(PathBuf, Vec<u8>)>,
    master_key: Vec<u8>,
    anchors: Vec<u8>,
    /// `/.well-known/jwks.json` as the running server served it.
    jwks: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let root = tempfile::tempdir().unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(build_fixture(root.path()))
});

async fn build_fixture(root: &Path) -> Fixture {
    let data = root.join("data");
    let anchors = root.join("anchors.jsonl");
    let server = Server::start_with(
        &data,
        &[
            "--audit-checkpoint-records",
            &CHECKPOINT_RECORDS.to_string(),
            "--audit-anchor-file",
            anchors.to_str().unwrap(),
            "--segment-bytes-max",
            "16384",
        ],
    );
    // Admin records: meters, an API key, a license and their changes.
    server
        .create_meter(json!({"slug": "tokens", "eventType": "api_call",
                             "aggregation": "SUM", "valueProperty": "$.tokens"}))
        .await;
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let key: Value = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/api-keys",
            &json!({"name": "billing", "scopes": ["read"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let license = server
        .create_license(json!({"product": "cad", "customer": "acme", "policy": {"type": "none"}}))
        .await;
    let license_id = license["id"].as_str().unwrap();
    for action in ["suspend", "reinstate"] {
        let path = format!("/api/v1/licenses/{license_id}/{action}");
        let r = server.post_json(ADMIN_KEY, &path, &json!({})).await;
        assert_eq!(r.status(), 200, "{action}");
    }
    for path in [
        format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap()),
        "/api/v1/meters/calls".to_string(),
    ] {
        let r = server.delete(ADMIN_KEY, &path).await;
        assert_eq!(r.status(), 204, "{path}");
    }
    // Usage: 12 requests of 20 events.
    let now = time_from_now(0);
    for b in 0..12 {
        let events: Vec<Value> = (0..EVENTS_PER_REQUEST)
            .map(|i| {
                event(
                    &format!("{b}-{i}"),
                    "api_call",
                    "acme",
                    &now,
                    json!({"tokens": 100}),
                )
            })
            .collect();
        assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    }
    let jwks = server.jwks_text().await;
    server.stop();
    Fixture {
        data: walk(&data)
            .into_iter()
            .map(|file| {
                let bytes = std::fs::read(&file).unwrap();
                (file.strip_prefix(&data).unwrap().to_owned(), bytes)
            })
            .collect(),
        // The server generated it beside its data directory.
        master_key: std::fs::read(root.join("data.master-key")).unwrap(),
        anchors: std::fs::read(&anchors).unwrap(),
        jwks,
    }
}

/// A test's own copy of the server's files. The master key is not at its
/// default place beside `data`, so only what a test passes is used.
struct Copy {
    _dir: tempfile::TempDir,
    data: PathBuf,
    master_key_file: PathBuf,
    anchors: PathBuf,
}

fn copy_of_log() -> Copy {
    let fx = &*FIXTURE;
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let data = dir.path().join("data");
    for (name, bytes) in &fx.data {
        write(&data.join(name), bytes);
    }
    let master_key_file = dir.path().join("keys/master.key");
    write(&master_key_file, &fx.master_key);
    let anchors = dir.path().join("audit/anchors.jsonl");
    write(&anchors, &fx.anchors);
    Copy {
        _dir: dir,
        data,
        master_key_file,
        anchors,
    }
}

/// `keymeter audit verify --json` on `data`, with nothing from the
/// environment: keys and anchors only as `args` give them.
fn audit_command(data: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["audit", "verify", "--json", "--data-dir"])
        .arg(data)
        .env_remove("KEYMETER_MASTER_KEY")
        .env_remove("KEYMETER_MASTER_KEY_FILE")
        .env_remove("KEYMETER_AUDIT_ANCHOR_FILE")
        .env_remove("KEYMETER_CONFIG");
    cmd
}

struct Audit {
    code: i32,
    report: Value,
    stderr: String,
}

fn run_audit(mut cmd: Command) -> Audit {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Audit {
        code: out.status.code().unwrap(),
        report,
        stderr,
    }
}

/// Audits with the engine's master key, and the anchors when asked.
fn audit(copy: &Copy, with_anchors: bool) -> Audit {
    let mut cmd = audit_command(&copy.data);
    cmd.arg("--master-key-file").arg(&copy.master_key_file);
    if with_anchors {
        cmd.arg("--anchors").arg(&copy.anchors);
    }
    run_audit(cmd)
}

/// What someone who knows the documented format, but not the signing key,
/// does after editing a payload: recompute the hash and CRC of every frame
/// from `from_seq` on, across segments, so the chain is valid again.
fn rechain_from(data: &Path, from_seq: u64) {
    let mut prev = [0u8; 32];
    for segment in segments(&data.join("log")) {
        modify(&segment, |bytes| {
            let mut at = SEGMENT_HEADER_LEN;
            while at < bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                let seq = u64::from_le_bytes(bytes[at + 9..at + 17].try_into().unwrap());
                let end = at + FRAME_HEADER_LEN + len;
                if seq >= from_seq {
                    let hash: [u8; 32] = Sha256::new()
                        .chain_update(prev)
                        .chain_update(seq.to_le_bytes())
                        .chain_update(&bytes[at + FRAME_HEADER_LEN..end])
                        .finalize()
                        .into();
                    bytes[at + 17..at + 49].copy_from_slice(&hash);
                    let crc = crc32c::crc32c(&bytes[at + 8..end]);
                    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                }
                prev = bytes[at + 17..at + 49].try_into().unwrap();
                at = end;
            }
        });
    }
}

fn is_checkpoint(frame: &Frame) -> bool {
    matches!(Record::decode(&frame.payload()), Ok(Record::Checkpoint(_)))
}

/// A usage event in the middle of a segment that is neither the first nor
/// the last, followed by another frame in the same segment.
fn middle_event(frames: &[Frame]) -> usize {
    let segs: Vec<&PathBuf> = {
        let mut s: Vec<&PathBuf> = frames.iter().map(|f| &f.segment).collect();
        s.dedup();
        s
    };
    assert!(segs.len() >= 3, "expected several segments: {segs:?}");
    let middle = segs[segs.len() / 2];
    let events: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            &f.segment == middle
                && frames
                    .get(i + 1)
                    .is_some_and(|next| &next.segment == middle)
                && matches!(Record::decode(&f.payload()), Ok(Record::Event(_)))
        })
        .map(|(i, _)| i)
        .collect();
    assert!(events.len() > 10, "events in {}", middle.display());
    events[events.len() / 2]
}

fn assert_finding(audit: &Audit, kind: &str, seq: u64, segment: &Path) {
    assert_eq!(audit.code, 1, "tampering exits 1: {}", audit.stderr);
    let finding = &audit.report["finding"];
    assert_eq!(audit.report["status"], "tampered");
    assert_eq!(finding["kind"], kind, "{finding}");
    assert_eq!(finding["seq"], seq, "{finding}");
    assert_eq!(
        finding["segment"].as_str().map(PathBuf::from).as_deref(),
        Some(segment),
        "{finding}"
    );
    // The human line on stderr names the same position.
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        audit.stderr.contains("TAMPERED: ")
            && audit.stderr.contains(name)
            && audit.stderr.contains(&format!("record seq {seq}")),
        "{}",
        audit.stderr
    );
}

#[test]
fn an_untouched_log_passes_with_every_checkpoint_and_anchor_verified() {
    let copy = copy_of_log();
    let all = log_frames(&copy.data.join("log"));
    let head = all.last().unwrap().seq;
    let anchor_lines = std::fs::read_to_string(&copy.anchors)
        .unwrap()
        .lines()
        .count() as u64;

    let audit = audit(&copy, true);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let r = &audit.report;
    assert_eq!(r["status"], "ok");
    assert_eq!(r["head_seq"], head);
    let checkpoints = all.iter().filter(|f| is_checkpoint(f)).count() as u64;
    assert!(checkpoints >= 4, "~250 records at 50 per checkpoint");
    assert_eq!(r["checkpoints_verified"], checkpoints);
    assert_eq!(r["anchors_matched"], anchor_lines);
    assert_eq!(anchor_lines, checkpoints, "every checkpoint is anchored");
    // Shutdown left nothing unsigned: the log ends with a checkpoint of the
    // record before it.
    assert!(is_checkpoint(all.last().unwrap()));
    assert_eq!(r["last_verified_seq"], head - 1);

    // No record waited for more than 50 records plus one request's batch.
    let mut covered = 0;
    for f in all.iter().filter(|f| is_checkpoint(f)) {
        let gap = f.seq - 1 - covered;
        assert!(
            gap < CHECKPOINT_RECORDS + EVENTS_PER_REQUEST as u64,
            "{gap} records before checkpoint {}",
            f.seq
        );
        covered = f.seq - 1;
    }

    // The human report says the same.
    let out = Command::new(bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&copy.data)
        .arg("--master-key-file")
        .arg(&copy.master_key_file)
        .env_remove("KEYMETER_MASTER_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("audit ok"), "{stdout}");
    assert!(
        stdout.contains(&format!("checkpoints: {checkpoints} verified")),
        "{stdout}"
    );
}

#[test]
fn a_flipped_payload_byte_is_named_by_segment_and_seq() {
    let copy = copy_of_log();
    let all = log_frames(&copy.data.join("log"));
    let target = all[middle_event(&all)].clone();
    modify(&target.segment, |b| {
        b[target.payload_start() + target.payload_len / 2] ^= 0x20
    });

    let audit = audit(&copy, true);
    assert_finding(&audit, "damaged_record", target.seq, &target.segment);
    assert_eq!(audit.report["finding"]["offset"], target.offset);
}

#[test]
fn a_deleted_record_is_named_by_its_seq() {
    let copy = copy_of_log();
    let all = log_frames(&copy.data.join("log"));
    let target = all[middle_event(&all)].clone();
    modify(&target.segment, |b| {
        b.drain(target.offset..target.end());
    });

    let audit = audit(&copy, true);
    assert_finding(&audit, "damaged_record", target.seq, &target.segment);
    let message = audit.report["finding"]["message"].as_str().unwrap();
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn an_inserted_copy_of_a_record_is_named_by_the_seq_it_displaces() {
    let copy = copy_of_log();
    let all = log_frames(&copy.data.join("log"));
    let i = middle_event(&all);
    let (original, next) = (all[i].clone(), all[i + 1].clone());
    // A replayed record: the same frame again, right after itself.
    let duplicate = original.bytes();
    modify(&original.segment, |b| {
        b.splice(next.offset..next.offset, duplicate);
    });

    let audit = audit(&copy, true);
    assert_finding(&audit, "damaged_record", next.seq, &next.segment);
    let message = audit.report["finding"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("a copy of record {}", original.seq)),
        "{message}"
    );
}

#[test]
fn two_swapped_records_are_named_by_the_first_position() {
    let copy = copy_of_log();
    let all = log_frames(&copy.data.join("log"));
    let i = middle_event(&all);
    let (a, b) = (all[i].clone(), all[i + 1].clone());
    let (a_bytes, b_bytes) = (a.bytes(), b.bytes());
    modify(&a.segment, |bytes| {
        bytes.splice(a.offset..b.end(), [b_bytes, a_bytes].concat());
    });

    let audit = audit(&copy, true);
    assert_finding(&audit, "damaged_record", a.seq, &a.segment);
}

#[test]
fn an_edit_with_a_recomputed_chain_passes_log_verify_but_not_the_checkpoints() {
    let copy = copy_of_log();
    let all = log_frames(&copy.data.join("log"));
    let target = all[middle_event(&all)].clone();
    let payload = target.payload();
    let at = payload
        .windows(12)
        .position(|w| w == b"\"tokens\":100")
        .expect("the event's value");
    // 100 tokens become 900: same length, still a valid record.
    modify(&target.segment, |b| {
        b[target.payload_start() + at + 9] = b'9'
    });
    rechain_from(&copy.data, target.seq);

    // The chain is self-consistent again: the structural check sees nothing.
    let out = run(&["log", "verify", "--data-dir", copy.data.to_str().unwrap()]);
    assert_success(&out);

    let audit = audit(&copy, false);
    assert_eq!(audit.code, 1, "{}", audit.stderr);
    let finding = &audit.report["finding"];
    assert_eq!(finding["kind"], "chain_rewritten", "{finding}");
    let (from, to) = (
        finding["range"]["from"].as_u64().unwrap(),
        finding["range"]["to"].as_u64().unwrap(),
    );
    assert!(
        (from..=to).contains(&target.seq),
        "{} not in {from}..={to}",
        target.seq
    );
    assert!(to - from < CHECKPOINT_RECORDS + EVENTS_PER_REQUEST as u64);
    // Named by the first checkpoint after the edit, which covers `to`.
    let checkpoint = all
        .iter()
        .find(|f| f.seq > target.seq && is_checkpoint(f))
        .unwrap();
    assert_eq!(finding["seq"], checkpoint.seq);
    assert_eq!(to, checkpoint.seq - 1);
    assert!(
        audit
            .stderr
            .contains(&format!("record seq {}", checkpoint.seq))
            && audit.stderr.contains(&format!("seqs {from}..={to}")),
        "{}",
        audit.stderr
    );
}

#[test]
fn a_forged_checkpoint_is_named_by_its_own_seq() {
    let copy = copy_of_log();
    let all = log_frames(&copy.data.join("log"));
    let i = middle_event(&all);
    let checkpoint = all[i..].iter().find(|f| is_checkpoint(f)).unwrap().clone();
    // The signature is the last 64 bytes of the record; the chain is made
    // consistent again, so only the signature can tell.
    modify(&checkpoint.segment, |b| b[checkpoint.end() - 1] ^= 0x01);
    rechain_from(&copy.data, checkpoint.seq);

    let audit = audit(&copy, false);
    assert_finding(
        &audit,
        "bad_checkpoint",
        checkpoint.seq,
        &checkpoint.segment,
    );
    let message = audit.report["finding"]["message"].as_str().unwrap();
    assert!(message.contains("does not verify"), "{message}");
}

#[test]
fn a_tail_cut_at_a_batch_boundary_is_caught_only_against_the_anchors() {
    let copy = copy_of_log();
    let all = log_frames(&copy.data.join("log"));
    // Keep everything up to the end of the third batch from the end.
    let batch_ends: Vec<&Frame> = all.iter().filter(|f| f.is_batch_end()).collect();
    let keep = batch_ends[batch_ends.len() - 4];
    for segment in segments(&copy.data.join("log")) {
        if segment > keep.segment {
            std::fs::remove_file(&segment).unwrap();
        }
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&keep.segment)
        .unwrap();
    file.set_len(keep.end() as u64).unwrap();
    drop(file);

    // A shorter log is still a valid log.
    let unanchored = audit(&copy, false);
    assert_eq!(unanchored.code, 0, "{}", unanchored.stderr);
    assert_eq!(unanchored.report["head_seq"], keep.seq);

    let anchored = audit(&copy, true);
    assert_finding(&anchored, "truncated", keep.seq + 1, &keep.segment);
    let finding = &anchored.report["finding"];
    assert!(finding["anchor_line"].as_u64().is_some(), "{finding}");
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("cut from the end"),
        "{finding}"
    );
}

#[test]
fn a_saved_jwks_verifies_without_the_master_key_and_another_key_fails() {
    let copy = copy_of_log();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &FIXTURE.jwks).unwrap();
    assert!(!keymeter::crypto::default_key_path(&copy.data).exists());

    // No master key anywhere: the audit cannot run on its own...
    let keyless = run_audit(audit_command(&copy.data));
    assert_eq!(keyless.code, 2, "{}", keyless.stderr);
    assert!(
        keyless.stderr.contains("no master key"),
        "{}",
        keyless.stderr
    );

    // ...but the public keys the server published are enough.
    let mut cmd = audit_command(&copy.data);
    cmd.arg("--jwks").arg(&jwks);
    let with_jwks = run_audit(cmd);
    assert_eq!(with_jwks.code, 0, "{}", with_jwks.stderr);
    assert!(with_jwks.report["checkpoints_verified"].as_u64().unwrap() >= 1);

    let other = keymeter::crypto::Keys::derive(&keymeter::crypto::MasterKey::from_bytes([7; 32]));
    std::fs::write(&jwks, other.jwks().to_string()).unwrap();
    let mut cmd = audit_command(&copy.data);
    cmd.arg("--jwks").arg(&jwks);
    let wrong = run_audit(cmd);
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    let finding = &wrong.report["finding"];
    assert_eq!(finding["kind"], "bad_checkpoint");
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("not among the verifying keys"),
        "{finding}"
    );
}

#[test]
fn an_anchor_file_inside_the_data_directory_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let inside = data.join("anchors.jsonl");
    let err = exits_with_error(serve_command(&data).arg("--audit-anchor-file").arg(&inside));
    assert!(err.contains("inside the data directory"), "{err}");
}

/// Checkpoint records in the log, as (own seq, covered seq).
fn checkpoints_in(log_dir: &Path, head: u64) -> Vec<(u64, u64)> {
    keymeter::log::read_range(log_dir, 1, head)
        .unwrap()
        .map(Result::unwrap)
        .filter_map(|e| match Record::decode(&e.payload).unwrap() {
            Record::Checkpoint(cp) => Some((e.seq, cp.seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_quiet_log_gets_one_checkpoint_after_the_interval_and_no_more_while_idle() {
    let root = tempfile::tempdir().unwrap();
    let cfg = keymeter::config::Config {
        audit_checkpoint_interval: Duration::from_millis(200),
        ..common::engine::config(root.path())
    };
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let engine = keymeter::engine::Engine::open(&cfg, clock).unwrap().engine;
    let shared = engine.handle().shared.clone();
    // The bootstrap admin key (seq 1) is far below 10,000 records: only the
    // interval can make it due.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.head_seq.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint after the interval"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Five more intervals with nothing new: nothing more to sign.
    std::thread::sleep(Duration::from_secs(1));
    let head = shared.head_seq.load(Ordering::SeqCst);
    assert_eq!(head, 2);
    assert_eq!(checkpoints_in(&cfg.log_dir(), head), [(2, 1)]);
    drop(shared);
    engine.shutdown().unwrap();
    // Nothing arrived since, so shutdown adds none either.
    let report = keymeter::log::verify(&cfg.log_dir()).unwrap();
    assert_eq!(report.head_seq, 2);
}

/// An edit whose chain is recomputed, with every checkpoint after it removed
/// (each replaced by another record, so no seq moves): no signature disagrees
/// any more, but more records are unsigned than a running server leaves, so
/// the audit does not call the log intact.
#[test]
fn an_edit_that_also_drops_the_later_checkpoints_is_reported_as_uncovered() {
    let copy = copy_of_log();
    let log = copy.data.join("log");
    let all = log_frames(&log);
    let first_checkpoint = all.iter().find(|f| is_checkpoint(f)).unwrap().seq;
    let target = all
        .iter()
        .find(|f| {
            f.seq > first_checkpoint && matches!(Record::decode(&f.payload()), Ok(Record::Event(_)))
        })
        .unwrap()
        .clone();
    let filler = all
        .iter()
        .find(|f| {
            matches!(
                Record::decode(&f.payload()),
                Ok(Record::MeterCreated { .. })
            )
        })
        .unwrap()
        .payload();
    // Later frames first, so earlier offsets in a segment stay valid.
    for frame in all
        .iter()
        .rev()
        .filter(|f| f.seq > target.seq && is_checkpoint(f))
    {
        modify(&frame.segment, |b| {
            let (start, end) = (frame.payload_start(), frame.end());
            b.splice(start..end, filler.iter().copied());
            b[frame.offset..frame.offset + 4].copy_from_slice(&(filler.len() as u32).to_le_bytes());
        });
    }
    let payload = target.payload();
    let at = payload
        .windows(12)
        .position(|w| w == b"\"tokens\":100")
        .expect("the event's value");
    modify(&target.segment, |b| {
        b[target.payload_start() + at + 9] = b'9'
    });
    rechain_from(&copy.data, target.seq);
    let out = run(&["log", "verify", "--data-dir", copy.data.to_str().unwrap()]);
    assert_success(&out);

    // The server's settings, so the audit knows how much it leaves unsigned.
    let mut cmd = audit_command(&copy.data);
    cmd.arg("--master-key-file")
        .arg(&copy.master_key_file)
        .args([
            "--audit-checkpoint-records",
            &CHECKPOINT_RECORDS.to_string(),
        ])
        .args(["--batch-records-max", &EVENTS_PER_REQUEST.to_string()])
        .args(["--request-events-max", &EVENTS_PER_REQUEST.to_string()]);
    let audit = run_audit(cmd);
    assert_eq!(audit.code, 1, "{}", audit.stderr);
    let finding = &audit.report["finding"];
    assert_eq!(finding["kind"], "uncovered", "{finding}");
    let from = finding["range"]["from"].as_u64().unwrap();
    assert!(from <= target.seq, "{finding}");
    assert!(
        audit.stderr.contains("audit_anchor_file"),
        "{}",
        audit.stderr
    );

    // The untouched log, audited with the same settings, is intact.
    let clean = copy_of_log();
    let mut cmd = audit_command(&clean.data);
    cmd.arg("--master-key-file")
        .arg(&clean.master_key_file)
        .args([
            "--audit-checkpoint-records",
            &CHECKPOINT_RECORDS.to_string(),
        ])
        .args(["--batch-records-max", &EVENTS_PER_REQUEST.to_string()])
        .args(["--request-events-max", &EVENTS_PER_REQUEST.to_string()]);
    let audit = run_audit(cmd);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
}
