//! Tests of the audit: intact logs, unknown keys, JWKS documents.

use std::path::Path;

use super::*;
use crate::audit::sign_checkpoint;
use crate::crypto::{Keys, MasterKey};
use crate::log::{Log, LogConfig};
use crate::record::{CheckpointRecord, Record};

fn keys(byte: u8) -> Keys {
    Keys::derive(&MasterKey::from_bytes([byte; 32]))
}

/// A log of `batches` batches of 3 records, each batch followed by a
/// checkpoint batch, as the engine writes them.
fn log_with_checkpoints(dir: &Path, keys: &Keys, batches: u64) -> Vec<CheckpointRecord> {
    let (mut log, _) = Log::open(dir, LogConfig::default()).unwrap();
    let mut checkpoints = Vec::new();
    for b in 0..batches {
        let payloads: Vec<Vec<u8>> = (0..3)
            .map(|i| format!("record {b}.{i}").into_bytes())
            .collect();
        log.append_batch(&payloads).unwrap();
        let cp = sign_checkpoint(keys, log.head_seq(), log.head_hash(), 1_000 + b as i64);
        log.append_batch(&[Record::Checkpoint(cp.clone()).encode()])
            .unwrap();
        checkpoints.push(cp);
    }
    checkpoints
}

#[test]
fn an_intact_log_verifies_every_checkpoint_and_anchor() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(1);
    let cps = log_with_checkpoints(tmp.path(), &k, 3);
    let anchors: Vec<Anchor> = cps
        .iter()
        .enumerate()
        .map(|(i, cp)| Anchor {
            line: i + 1,
            checkpoint: cp.clone(),
        })
        .collect();
    let report = audit_log(tmp.path(), &VerifyingKeys::of(&k), &anchors, u64::MAX).unwrap();
    assert_eq!(report.finding, None);
    assert_eq!((report.records, report.head_seq), (12, 12));
    assert_eq!(
        (report.checkpoints_verified, report.anchors_matched),
        (3, 3)
    );
    assert_eq!(report.last_verified_seq(), 11);
    assert_eq!(report.uncovered_records(), 1);
    assert_eq!(report.to_json()["status"], "ok");
}

#[test]
fn checkpoints_of_an_unknown_key_are_findings_at_their_own_seq() {
    let tmp = tempfile::tempdir().unwrap();
    log_with_checkpoints(tmp.path(), &keys(1), 2);
    let report = audit_log(tmp.path(), &VerifyingKeys::of(&keys(2)), &[], u64::MAX).unwrap();
    let finding = report.finding.unwrap();
    assert_eq!(finding.kind, FindingKind::BadCheckpoint);
    assert_eq!(finding.seq, Some(4));
    assert!(finding.message.contains("not among the verifying keys"));
    assert_eq!(report.checkpoints_verified, 0);
}

#[test]
fn a_jwks_document_yields_the_engines_verifying_key() {
    let k = keys(5);
    let jwks = VerifyingKeys::from_jwks(&k.jwks().to_string()).unwrap();
    assert_eq!(jwks.kids().collect::<Vec<_>>(), [k.kid()]);
    assert!(jwks.check(&sign_checkpoint(&k, 1, [0; 32], 0)).is_ok());
    assert!(VerifyingKeys::from_jwks("{\"keys\": []}").is_err());
    assert!(VerifyingKeys::from_jwks("[]").is_err());
}
