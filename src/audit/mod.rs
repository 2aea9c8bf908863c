//! Tamper evidence for the event log: signed checkpoints written by the
//! engine, their copies in an external anchor file, and the offline audit
//! (`keymeter audit verify`, [`verify`]) that checks both against the log.
//!
//! # Why checkpoints
//!
//! The log's hash chain ([`crate::log`]) makes every record depend on all
//! records before it, so a record edited, removed, inserted or moved breaks
//! the chain at that record. But the chain is keyless: whoever can write the
//! segment files can edit a record and recompute the hash and CRC of every
//! frame after it, and the result is a valid log. A checkpoint closes that
//! gap: the engine signs "after seq S the chain hash is H" with its Ed25519
//! key (derived from the master key, never stored in the data directory) and
//! appends the statement to the log as a [`Record::Checkpoint`]. Rewriting a
//! record before S now changes the chain at S, and a matching signature
//! cannot be made without the key.
//!
//! # The signed message
//!
//! Fixed layout, 70 bytes ([`checkpoint_message`]):
//!
//! ```text
//! b"keymeter-checkpoint/v1" (22 bytes) | seq u64 BE | chain [u8; 32] | time_ms i64 BE
//! ```
//!
//! `seq` is the last record covered, `chain` the hash stored in its frame
//! (`SHA-256(prev_hash || seq LE || payload)`, see [`crate::log`]), `time_ms`
//! the signer's clock (Unix ms). The prefix separates checkpoint signatures
//! from everything else the same key signs: verdict tokens are signed over
//! base64url text starting `eyJ`, license files over text starting
//! `keymeter-license-file/v1.`, so no signature is valid in two roles.
//!
//! # When the engine writes one
//!
//! The writer counts records appended since the last checkpoint
//! ([`CheckpointSchedule`]). A checkpoint is due once
//! `audit_checkpoint_records` records are uncovered, or the oldest uncovered
//! record has waited `audit_checkpoint_interval`, and on graceful shutdown;
//! never while no new record arrived, so an idle log is not checkpointed
//! again and again. The writer reserves the next seq and hands the syncer a
//! checkpoint request in log order; the syncer, which holds the log head
//! after every fsync, signs the head (the last record of the batch before)
//! and appends the checkpoint as a batch of its own, with its own fdatasync.
//! A batch of its own keeps one code path for the count, the timer and
//! shutdown, and leaves no unsigned record between a checkpoint and what it
//! covers; the cost is one small fdatasync per `audit_checkpoint_records`
//! records (at 100k events/s and the default 10,000, ten a second).
//!
//! # Anchors
//!
//! With `audit_anchor_file` set (outside the data directory), every
//! checkpoint is also appended to that file as one JSON line, fsynced:
//!
//! ```text
//! {"seq":1200,"chain":"<64 hex>","time_ms":1800000000000,"time":"2027-01-15T08:00:00.000Z",
//!  "kid":"<16 hex>","signature":"<base64url, no padding>"}
//! ```
//!
//! In-log checkpoints prove nothing about records that were cut off the end,
//! or about a rewrite that also dropped the checkpoints after it; the anchor
//! file, kept where the log's writer cannot rewrite it (another disk or
//! machine, an append-only store), does: every anchored checkpoint must be
//! matched by the log.

pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;

use crate::crypto::Keys;
use crate::log::Seq;
use crate::record::CheckpointRecord;
#[cfg(doc)]
use crate::record::Record;

/// The first bytes of every signed checkpoint message.
pub const CHECKPOINT_DOMAIN: &[u8; 22] = b"keymeter-checkpoint/v1";
/// Length of [`checkpoint_message`]: domain, seq, chain hash, time.
pub const CHECKPOINT_MESSAGE_LEN: usize = CHECKPOINT_DOMAIN.len() + 8 + 32 + 8;

/// The bytes a checkpoint signature covers (see the module doc).
pub fn checkpoint_message(
    seq: Seq,
    chain: &[u8; 32],
    time_ms: i64,
) -> [u8; CHECKPOINT_MESSAGE_LEN] {
    let mut message = [0u8; CHECKPOINT_MESSAGE_LEN];
    let (domain, rest) = message.split_at_mut(CHECKPOINT_DOMAIN.len());
    domain.copy_from_slice(CHECKPOINT_DOMAIN);
    rest[..8].copy_from_slice(&seq.to_be_bytes());
    rest[8..40].copy_from_slice(chain);
    rest[40..].copy_from_slice(&time_ms.to_be_bytes());
    message
}

/// Signs "after `seq` the chain hash is `chain`" at `time_ms`.
pub fn sign_checkpoint(keys: &Keys, seq: Seq, chain: [u8; 32], time_ms: i64) -> CheckpointRecord {
    let signature = keys.sign(&checkpoint_message(seq, &chain, time_ms));
    CheckpointRecord {
        seq,
        chain,
        time_ms,
        kid: keys.kid().to_owned(),
        signature: signature.to_vec(),
    }
}

/// When the writer asks for a checkpoint: after `records_max` uncovered
/// records, once the oldest uncovered record is `interval` old, or at
/// shutdown; never without uncovered records.
#[derive(Debug, Clone)]
pub struct CheckpointSchedule {
    records_max: u64,
    interval: Duration,
    uncovered: u64,
    oldest_uncovered: Option<Instant>,
}

impl CheckpointSchedule {
    pub fn new(records_max: u64, interval: Duration) -> CheckpointSchedule {
        CheckpointSchedule {
            records_max: records_max.max(1),
            interval,
            uncovered: 0,
            oldest_uncovered: None,
        }
    }

    /// `records` more records are in the log (or will be, in order, before
    /// the next checkpoint).
    pub fn appended(&mut self, records: u64, now: Instant) {
        if records == 0 {
            return;
        }
        self.uncovered += records;
        self.oldest_uncovered.get_or_insert(now);
    }

    pub fn uncovered(&self) -> u64 {
        self.uncovered
    }

    pub fn due(&self, now: Instant, shutting_down: bool) -> bool {
        let Some(oldest) = self.oldest_uncovered else {
            return false;
        };
        shutting_down
            || self.uncovered >= self.records_max
            || now.saturating_duration_since(oldest) >= self.interval
    }

    /// A checkpoint covering every record so far was requested.
    pub fn covered(&mut self) {
        self.uncovered = 0;
        self.oldest_uncovered = None;
    }

    /// How often the writer should be woken to look at the clock: a record
    /// then waits at most `interval` plus this for its checkpoint.
    pub fn tick(&self) -> Duration {
        (self.interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// One anchor line (see the module doc), without the newline.
pub fn anchor_line(checkpoint: &CheckpointRecord) -> String {
    let time = chrono::DateTime::from_timestamp_millis(checkpoint.time_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    serde_json::json!({
        "seq": checkpoint.seq,
        "chain": hex::encode(checkpoint.chain),
        "time_ms": checkpoint.time_ms,
        "time": time,
        "kid": checkpoint.kid,
        "signature": B64.encode(&checkpoint.signature),
    })
    .to_string()
}

/// Reads one anchor line back. `time` is informational and not read.
pub fn parse_anchor_line(line: &str) -> Result<CheckpointRecord, String> {
    #[derive(serde::Deserialize)]
    struct Line {
        seq: Seq,
        chain: String,
        time_ms: i64,
        kid: String,
        signature: String,
    }
    let line: Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let chain = hex::decode(&line.chain)
        .ok()
        .and_then(|c| <[u8; 32]>::try_from(c).ok())
        .ok_or("chain is not 64 hex characters")?;
    let signature = B64
        .decode(&line.signature)
        .map_err(|_| "signature is not base64url")?;
    Ok(CheckpointRecord {
        seq: line.seq,
        chain,
        time_ms: line.time_ms,
        kid: line.kid,
        signature,
    })
}

/// The anchor file, open for appending.
pub struct AnchorFile {
    path: PathBuf,
    file: File,
}

impl AnchorFile {
    /// Opens (creating it and its directory if missing) for appending. A
    /// last line cut short by a crash is closed with a newline, so it stays
    /// a line of its own (which `audit verify` reports and skips).
    pub fn open(path: &Path) -> io::Result<AnchorFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let existed = path.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if !existed {
            file.sync_all()?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        let text = std::fs::read(path)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
        Ok(AnchorFile {
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the checkpoint as one line and fsyncs. On failure the file is
    /// cut back to its previous length (best effort), so a half-written line
    /// does not glue onto the next one.
    pub fn append(&mut self, checkpoint: &CheckpointRecord) -> io::Result<()> {
        let mut line = anchor_line(checkpoint);
        line.push('\n');
        let len = self.file.metadata()?.len();
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            let _ = self.file.set_len(len);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn the_signed_message_is_the_domain_then_seq_chain_and_time_big_endian() {
        let chain: [u8; 32] = std::array::from_fn(|i| i as u8);
        let message = checkpoint_message(0x0102_0304_0506_0708, &chain, -2);
        assert_eq!(message.len(), 70);
        assert_eq!(&message[..22], b"keymeter-checkpoint/v1");
        assert_eq!(message[22..30], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(message[30..62], chain);
        assert_eq!(
            message[62..],
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]
        );

        let expected = [
            b"keymeter-checkpoint/v1".as_slice(),
            &[0, 0, 0, 0, 0, 0, 0, 150],
            &[0xab; 32],
            &1_800_000_000_123i64.to_be_bytes(),
        ]
        .concat();
        assert_eq!(
            checkpoint_message(150, &[0xab; 32], 1_800_000_000_123).as_slice(),
            expected
        );
    }

    #[test]
    fn a_checkpoint_signature_verifies_over_exactly_its_message_and_no_other() {
        let keys = Keys::derive(&MasterKey::from_bytes([4; 32]));
        let cp = sign_checkpoint(&keys, 41, [7; 32], 1_800_000_000_000);
        assert_eq!(cp.kid, keys.kid());
        let signature = Signature::from_slice(&cp.signature).unwrap();
        let public = keys.verifying_key();
        assert!(public
            .verify(&checkpoint_message(41, &[7; 32], cp.time_ms), &signature)
            .is_ok());
        for (seq, chain, time) in [
            (42, [7; 32], cp.time_ms),
            (41, [8; 32], cp.time_ms),
            (41, [7; 32], cp.time_ms + 1),
        ] {
            let other = checkpoint_message(seq, &chain, time);
            assert!(public.verify(&other, &signature).is_err());
        }
    }

    #[test]
    fn an_idle_log_is_not_checkpointed_and_a_busy_one_is_by_count_time_or_shutdown() {
        let t0 = Instant::now();
        let mut s = CheckpointSchedule::new(50, Duration::from_secs(60));
        assert!(!s.due(t0 + Duration::from_secs(3600), true), "nothing new");
        s.appended(0, t0);
        assert!(!s.due(t0 + Duration::from_secs(3600), true));

        s.appended(20, t0);
        assert!(!s.due(t0, false));
        assert!(s.due(t0, true), "shutdown covers what arrived");
        assert!(
            s.due(t0 + Duration::from_secs(60), false),
            "the oldest waited 60 s"
        );
        s.appended(30, t0 + Duration::from_secs(1));
        assert!(s.due(t0 + Duration::from_secs(1), false), "50 records");

        s.covered();
        assert_eq!(s.uncovered(), 0);
        assert!(!s.due(t0 + Duration::from_secs(3600), false));
        // The interval counts from the first uncovered record, not from the
        // last checkpoint: a record after a long idle spell waits its turn.
        s.appended(1, t0 + Duration::from_secs(3600));
        assert!(!s.due(t0 + Duration::from_secs(3601), false));
        assert!(s.due(t0 + Duration::from_secs(3660), false));
    }

    #[test]
    fn anchor_lines_round_trip_and_name_what_is_wrong() {
        let keys = Keys::derive(&MasterKey::from_bytes([4; 32]));
        let cp = sign_checkpoint(&keys, 1200, [0xcd; 32], 1_800_000_000_000);
        let line = anchor_line(&cp);
        assert!(!line.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["chain"], hex::encode([0xcd; 32]));
        assert_eq!(json["time"], "2027-01-15T08:00:00.000Z");
        assert_eq!(parse_anchor_line(&line).unwrap(), cp);
        let bad = line.replace(&hex::encode([0xcd; 32]), "abc");
        assert!(parse_anchor_line(&bad).unwrap_err().contains("chain"));
        assert!(parse_anchor_line("{\"seq\":1").is_err());
    }

    #[test]
    fn the_anchor_file_gets_one_line_per_checkpoint_and_a_torn_line_stays_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/anchors.jsonl");
        let keys = Keys::derive(&MasterKey::from_bytes([4; 32]));
        let mut file = AnchorFile::open(&path).unwrap();
        file.append(&sign_checkpoint(&keys, 10, [1; 32], 5))
            .unwrap();
        drop(file);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":2")
            .unwrap();
        let mut file = AnchorFile::open(&path).unwrap();
        file.append(&sign_checkpoint(&keys, 20, [2; 32], 6))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(parse_anchor_line(lines[0]).unwrap().seq, 10);
        assert_eq!(lines[1], "{\"seq\":2");
        assert_eq!(parse_anchor_line(lines[2]).unwrap().seq, 20);
    }
}
