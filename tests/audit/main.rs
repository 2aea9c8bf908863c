//! Tamper evidence as an auditor meets it: a server writes signed
//! checkpoints (every 50 records here) and anchors them in a file outside the
//! data directory; `keymeter audit verify` then names the exact record of an
//! edit, deletion, insertion or reordering, bounds an edit whose chain was
//! recomputed (which `log verify` alone cannot see) between two checkpoints,
//! catches a cut-off tail against the anchors, and works from a saved JWKS
//! without the master key.
//!
//! One server run builds the log; every test damages its own copy of it.

#[path = "../common/mod.rs"]
mod common;
mod fixture;

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
use fixture::*;
use keymeter::record::Record;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CHECKPOINT_RECORDS: u64 = 50;
const EVENTS_PER_REQUEST: usize = 20;

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
    raise_tokens(&target);
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
            f.seq > first_checkpoint
                && Record::decode(&f.payload()).is_ok_and(|r| r.event().is_some())
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
    raise_tokens(&target);
    rechain_from(&copy.data, target.seq);
    let out = run(&["log", "verify", "--data-dir", copy.data.to_str().unwrap()]);
    assert_success(&out);

    let audit = audit_with_server_settings(&copy);
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
    let audit = audit_with_server_settings(&copy_of_log());
    assert_eq!(audit.code, 0, "{}", audit.stderr);
}

/// 100 tokens become 900 in `target`'s payload: same length, still a valid
/// record.
fn raise_tokens(target: &Frame) {
    let at = target
        .payload()
        .windows(12)
        .position(|w| w == b"\"tokens\":100")
        .expect("the event's value");
    modify(&target.segment, |b| {
        b[target.payload_start() + at + 9] = b'9'
    });
}

/// Audits with the master key and the server's settings, so the audit knows
/// how many records a running server leaves unsigned.
fn audit_with_server_settings(copy: &Copy) -> Audit {
    let mut cmd = audit_command(&copy.data);
    cmd.arg("--master-key-file")
        .arg(&copy.master_key_file)
        .args([
            "--audit-checkpoint-records",
            &CHECKPOINT_RECORDS.to_string(),
        ])
        .args(["--batch-records-max", &EVENTS_PER_REQUEST.to_string()]);
    run_audit(cmd)
}
