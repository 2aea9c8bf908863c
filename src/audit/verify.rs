//! The offline audit behind `keymeter audit verify`: read-only, safe to run
//! while the server appends.
//!
//! 1. The structural pass is [`crate::log::verify`], the check `serve`
//!    runs at start: every frame's CRC, seq contiguity and the hash chain
//!    from the genesis hash. An edited (CRC not fixed), deleted, inserted or
//!    moved record fails here, named by segment, offset and the seq that
//!    belongs at that position.
//! 2. The signature pass reads the records that passed, recomputes the
//!    chain, and checks every checkpoint: it decodes, covers the record just
//!    before it, is signed by a known key over [`super::checkpoint_message`],
//!    and its signed chain hash equals the recomputed one. An edit whose CRCs
//!    and chain were recomputed after it leaves a self-consistent chain; the
//!    first checkpoint after it then disagrees, and the edited record lies
//!    between the previous verified checkpoint and that one: the finding
//!    names that range. A checkpoint with a bad signature is named by its own
//!    seq.
//! 3. With anchors, every anchored checkpoint must be matched: the log must
//!    reach its seq and have its chain hash there. This catches a cut-off
//!    tail (which leaves a valid, shorter log) and a rewrite that also
//!    dropped the in-log checkpoints after it.
//!
//! Records after the last verified checkpoint are intact as far as the
//! chain goes but not yet covered by a signature; the report says how many.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{json, Value};

use super::{checkpoint_message, parse_anchor_line};
use crate::crypto::Keys;
use crate::log::frame::{chain_hash, GENESIS_HASH};
use crate::log::{LogEntry, LogError, Seq, TornTail};
use crate::record::{CheckpointRecord, Record};

/// The public keys checkpoints may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct VerifyingKeys {
    by_kid: BTreeMap<String, VerifyingKey>,
}

impl VerifyingKeys {
    /// The key the engine signs with.
    pub fn of(keys: &Keys) -> VerifyingKeys {
        VerifyingKeys {
            by_kid: BTreeMap::from([(keys.kid().to_owned(), keys.verifying_key())]),
        }
    }

    /// Every key of `kid → key` pairs (all signing keys ever used).
    pub fn from_keys(keys: impl IntoIterator<Item = (String, VerifyingKey)>) -> VerifyingKeys {
        VerifyingKeys {
            by_kid: keys.into_iter().collect(),
        }
    }

    /// The Ed25519 keys of a JWK Set, as served at `/.well-known/jwks.json`.
    pub fn from_jwks(text: &str) -> Result<VerifyingKeys, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let keys = doc["keys"]
            .as_array()
            .ok_or("no \"keys\" array: not a JWK Set")?;
        let mut by_kid = BTreeMap::new();
        for jwk in keys {
            if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
                continue;
            }
            let (Some(kid), Some(x)) = (jwk["kid"].as_str(), jwk["x"].as_str()) else {
                return Err("an Ed25519 key lacks \"kid\" or \"x\"".into());
            };
            let bytes: [u8; 32] = B64
                .decode(x)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("key {kid}: x is not 32 bytes of base64url"))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| format!("key {kid}: not an Ed25519 public key"))?;
            by_kid.insert(kid.to_owned(), key);
        }
        if by_kid.is_empty() {
            return Err("the JWK Set holds no Ed25519 key".into());
        }
        Ok(VerifyingKeys { by_kid })
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.by_kid.keys().map(String::as_str)
    }

    /// Why the checkpoint's signature does not hold, if it does not.
    pub fn check(&self, checkpoint: &CheckpointRecord) -> Result<(), String> {
        let key = self.by_kid.get(&checkpoint.kid).ok_or_else(|| {
            format!(
                "signed by key {:?}, which is not among the verifying keys ({})",
                checkpoint.kid,
                self.kids().collect::<Vec<_>>().join(", ")
            )
        })?;
        let signature = Signature::from_slice(&checkpoint.signature).map_err(|_| {
            format!(
                "the signature is {} bytes, not 64",
                checkpoint.signature.len()
            )
        })?;
        let message = checkpoint_message(checkpoint.seq, &checkpoint.chain, checkpoint.time_ms);
        key.verify_strict(&message, &signature).map_err(|_| {
            format!(
                "the signature does not verify with key {} (the checkpoint was altered or forged)",
                checkpoint.kid
            )
        })
    }
}

/// One checkpoint read from the anchors file, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub line: usize,
    pub checkpoint: CheckpointRecord,
}

/// The anchors file's checkpoints, and the lines that are not one (a line
/// cut short by a crash while it was written, say).
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    pub anchors: Vec<Anchor>,
    pub skipped: Vec<(usize, String)>,
}

pub fn read_anchors(path: &Path) -> io::Result<Anchors> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Anchors::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_anchor_line(line) {
            Ok(cp) if cp.seq == 0 => out.skipped.push((i + 1, "seq 0 covers nothing".into())),
            Ok(checkpoint) => out.anchors.push(Anchor {
                line: i + 1,
                checkpoint,
            }),
            Err(why) => out.skipped.push((i + 1, why)),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// A frame is damaged, missing, duplicated or out of place.
    DamagedRecord,
    /// A checkpoint record that is not a valid, correctly signed checkpoint.
    BadCheckpoint,
    /// A correctly signed checkpoint disagrees with the recomputed chain.
    ChainRewritten,
    /// An anchored checkpoint disagrees with the recomputed chain.
    AnchorMismatch,
    /// An anchored checkpoint covers a seq the log no longer reaches.
    Truncated,
    /// An anchor line whose signature does not hold.
    BadAnchor,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::DamagedRecord => "damaged_record",
            FindingKind::BadCheckpoint => "bad_checkpoint",
            FindingKind::ChainRewritten => "chain_rewritten",
            FindingKind::AnchorMismatch => "anchor_mismatch",
            FindingKind::Truncated => "truncated",
            FindingKind::BadAnchor => "bad_anchor",
        }
    }
}

/// Evidence of tampering: the first one found, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    /// The segment file holding `seq` (for a truncation, the last one).
    pub segment: Option<PathBuf>,
    pub offset: Option<u64>,
    /// The record concerned: the damaged one, the checkpoint, or the first
    /// missing one.
    pub seq: Option<Seq>,
    /// When the chain was recomputed after an edit, only bounds can be
    /// given: one record in `from..=to` was changed.
    pub range: Option<(Seq, Seq)>,
    /// The line of the anchors file concerned.
    pub anchor_line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(segment) = &self.segment {
            write!(f, "{}", segment.display())?;
            if let Some(offset) = self.offset {
                write!(f, " offset {offset}")?;
            }
            f.write_str(", ")?;
        }
        if let Some(seq) = self.seq {
            write!(f, "record seq {seq}")?;
        }
        if let Some(line) = self.anchor_line {
            let sep = if self.seq.is_some() { ", " } else { "" };
            write!(f, "{sep}anchor line {line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What the audit checked, and the first finding if there is one.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    /// Records read (all of them unless a finding stopped the audit).
    pub records: u64,
    pub segments: usize,
    /// The last record audited.
    pub head_seq: Seq,
    pub checkpoints_verified: u64,
    /// Keys that signed the verified checkpoints.
    pub kids: BTreeSet<String>,
    /// The last verified checkpoint, and its own seq.
    pub last_checkpoint: Option<(Seq, CheckpointRecord)>,
    pub anchors_matched: u64,
    /// Bytes after the last complete batch (a crash, or a batch being
    /// written right now): not audited.
    pub torn_tail: Option<TornTail>,
    pub finding: Option<Finding>,
}

impl AuditReport {
    /// The chain through this seq is covered by a verified signature.
    pub fn last_verified_seq(&self) -> Seq {
        self.last_checkpoint.as_ref().map_or(0, |(_, cp)| cp.seq)
    }

    /// Records after [`AuditReport::last_verified_seq`] (the checkpoint
    /// record itself included).
    pub fn uncovered_records(&self) -> u64 {
        self.head_seq.saturating_sub(self.last_verified_seq())
    }

    pub fn to_json(&self) -> Value {
        let finding = self.finding.as_ref().map(|f| {
            json!({
                "kind": f.kind.as_str(),
                "segment": f.segment.as_ref().map(|p| p.display().to_string()),
                "offset": f.offset,
                "seq": f.seq,
                "range": f.range.map(|(from, to)| json!({"from": from, "to": to})),
                "anchor_line": f.anchor_line,
                "message": f.message,
            })
        });
        json!({
            "status": if self.finding.is_some() { "tampered" } else { "ok" },
            "records": self.records,
            "segments": self.segments,
            "head_seq": self.head_seq,
            "checkpoints_verified": self.checkpoints_verified,
            "kids": self.kids,
            "last_verified_seq": self.last_verified_seq(),
            "last_checkpoint": self.last_checkpoint.as_ref().map(|(at, cp)| json!({
                "seq": at,
                "covers": cp.seq,
                "time": rfc3339(cp.time_ms),
            })),
            "uncovered_records": self.uncovered_records(),
            "anchors_matched": self.anchors_matched,
            "torn_tail": self.torn_tail.as_ref().map(|t| json!({
                "segment": t.segment.display().to_string(),
                "offset": t.offset,
                "bytes": t.bytes,
                "reason": t.reason,
            })),
            "finding": finding,
        })
    }

    /// The human summary of what was verified (the finding is printed apart).
    pub fn summary(&self) -> String {
        let mut out = match self.finding {
            None => format!(
                "audited {} records in {} segments, head seq {}\n",
                self.records, self.segments, self.head_seq
            ),
            Some(_) => format!(
                "audited {} records in {} segments before the finding (through seq {})\n",
                self.records, self.segments, self.head_seq
            ),
        };
        match &self.last_checkpoint {
            None => out.push_str(
                "checkpoints: none verified; no record of this log is covered by a signature\n",
            ),
            Some((at, cp)) => out.push_str(&format!(
                "checkpoints: {} verified (key {}); the last, record seq {at}, signed the chain \
                 through seq {} at {}\n",
                self.checkpoints_verified,
                self.kids.iter().cloned().collect::<Vec<_>>().join(", "),
                cp.seq,
                rfc3339(cp.time_ms).unwrap_or_else(|| cp.time_ms.to_string()),
            )),
        }
        let ends_with_checkpoint = self
            .last_checkpoint
            .as_ref()
            .is_some_and(|(at, _)| *at == self.head_seq);
        let uncovered = self.uncovered_records();
        if self.finding.is_none() && uncovered > 0 && !(uncovered == 1 && ends_with_checkpoint) {
            out.push_str(&format!(
                "not yet covered by a checkpoint: seqs {}..={} ({uncovered} records)\n",
                self.last_verified_seq() + 1,
                self.head_seq
            ));
        }
        if let Some(t) = &self.torn_tail {
            out.push_str(&format!(
                "torn tail: {} bytes at {} offset {} ({}); not audited, the next start cuts it\n",
                t.bytes,
                t.segment.display(),
                t.offset,
                t.reason
            ));
        }
        out
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn short(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}

/// The first two bytes of every encoded checkpoint record (version, variant
/// index), so that only checkpoints are decoded.
static CHECKPOINT_PREFIX: LazyLock<[u8; 2]> = LazyLock::new(|| {
    let probe = Record::Checkpoint(CheckpointRecord {
        seq: 0,
        chain: [0; 32],
        time_ms: 0,
        kid: String::new(),
        signature: Vec::new(),
    });
    probe.encode()[..2]
        .try_into()
        .expect("a record has two bytes")
});

/// Audits the log in `log_dir` (see the module doc). `Err` only when the log
/// cannot be read at all; tampering is [`AuditReport::finding`].
pub fn audit_log(
    log_dir: &Path,
    keys: &VerifyingKeys,
    anchors: &[Anchor],
) -> Result<AuditReport, LogError> {
    let mut report = AuditReport::default();
    let (audit_to, damage) = match crate::log::verify(log_dir) {
        Ok(verified) => {
            report.torn_tail = verified.torn_tail;
            (verified.head_seq, None)
        }
        Err(LogError::Corrupt {
            segment,
            offset,
            seq,
            reason,
        }) => {
            let damage = Finding {
                kind: FindingKind::DamagedRecord,
                segment: Some(segment),
                offset: Some(offset),
                seq,
                range: None,
                anchor_line: None,
                message: reason,
            };
            // What comes before the damage is still audited: an earlier
            // finding there comes first.
            (seq.map_or(0, |s| s.saturating_sub(1)), Some(damage))
        }
        Err(other) => return Err(other),
    };
    let segments = match crate::log::segment_files(log_dir) {
        Ok(segments) => segments,
        Err(_) if damage.is_some() => Vec::new(),
        Err(e) => return Err(e),
    };
    report.segments = segments.len();

    let mut sorted: Vec<&Anchor> = anchors.iter().collect();
    sorted.sort_by_key(|a| (a.checkpoint.seq, a.line));
    if let Some(finding) = sorted.iter().find_map(|a| bad_anchor(keys, a)) {
        report.finding = Some(finding);
        return Ok(report);
    }

    let mut walk = Walk {
        keys,
        segments: &segments,
        anchors: sorted.into_iter().peekable(),
        chain: GENESIS_HASH,
        unconfirmed_from: 1,
        report: &mut report,
    };
    for entry in crate::log::read_range(log_dir, 1, audit_to)? {
        let finding = match entry {
            Ok(entry) => walk.step(&entry),
            // The files changed since the structural pass.
            Err(LogError::Corrupt {
                segment,
                offset,
                seq,
                reason,
            }) => Some(Finding {
                kind: FindingKind::DamagedRecord,
                segment: Some(segment),
                offset: Some(offset),
                seq,
                range: None,
                anchor_line: None,
                message: reason,
            }),
            Err(other) => return Err(other),
        };
        if finding.is_some() {
            walk.report.finding = finding;
            return Ok(report);
        }
    }
    let missing = walk.anchors.next().cloned();
    report.head_seq = audit_to;
    if damage.is_some() {
        report.finding = damage;
        return Ok(report);
    }
    if let Some(anchor) = missing {
        let cp = &anchor.checkpoint;
        report.finding = Some(Finding {
            kind: FindingKind::Truncated,
            segment: segments.last().map(|(_, p)| p.clone()),
            offset: None,
            seq: Some(audit_to + 1),
            range: Some((audit_to + 1, cp.seq)),
            anchor_line: Some(anchor.line),
            message: format!(
                "the anchored checkpoint signed at {} covers seq {}, but the log ends at seq \
                 {audit_to}: records {}..={} (at least) were cut from the end of the log",
                rfc3339(cp.time_ms).unwrap_or_else(|| cp.time_ms.to_string()),
                cp.seq,
                audit_to + 1,
                cp.seq
            ),
        });
    }
    Ok(report)
}

fn bad_anchor(keys: &VerifyingKeys, anchor: &Anchor) -> Option<Finding> {
    let why = keys.check(&anchor.checkpoint).err()?;
    Some(Finding {
        kind: FindingKind::BadAnchor,
        segment: None,
        offset: None,
        seq: None,
        range: None,
        anchor_line: Some(anchor.line),
        message: format!(
            "the anchored checkpoint for seq {} is not valid: {why}",
            anchor.checkpoint.seq
        ),
    })
}

/// The signature pass, one record at a time.
struct Walk<'a> {
    keys: &'a VerifyingKeys,
    segments: &'a [(Seq, PathBuf)],
    anchors: std::iter::Peekable<std::vec::IntoIter<&'a Anchor>>,
    /// The recomputed chain hash after the last record stepped.
    chain: [u8; 32],
    /// The first seq not yet confirmed by a verified checkpoint or a matched
    /// anchor: where a rewrite found later may have started.
    unconfirmed_from: Seq,
    report: &'a mut AuditReport,
}

impl Walk<'_> {
    fn segment_of(&self, seq: Seq) -> Option<PathBuf> {
        let i = self.segments.partition_point(|(first, _)| *first <= seq);
        i.checked_sub(1).map(|i| self.segments[i].1.clone())
    }

    fn finding(&self, kind: FindingKind, seq: Seq, message: String) -> Finding {
        Finding {
            kind,
            segment: self.segment_of(seq),
            offset: None,
            seq: Some(seq),
            range: None,
            anchor_line: None,
            message,
        }
    }

    fn step(&mut self, entry: &LogEntry) -> Option<Finding> {
        let before = self.chain;
        self.chain = chain_hash(&before, entry.seq, &entry.payload);
        self.report.records += 1;
        self.report.head_seq = entry.seq;
        if self.chain != entry.hash {
            let message = "the stored hash differs from the recomputed chain (the file changed \
                           while it was audited?)"
                .to_string();
            return Some(self.finding(FindingKind::DamagedRecord, entry.seq, message));
        }
        if entry.payload.get(..2) == Some(CHECKPOINT_PREFIX.as_slice()) {
            if let Some(finding) = self.checkpoint(entry.seq, &before, &entry.payload) {
                return Some(finding);
            }
        }
        while let Some(anchor) = self.anchors.next_if(|a| a.checkpoint.seq <= entry.seq) {
            let cp = &anchor.checkpoint;
            if cp.chain != self.chain {
                let range = (self.unconfirmed_from, entry.seq);
                let mut finding = self.finding(
                    FindingKind::AnchorMismatch,
                    entry.seq,
                    format!(
                        "the anchored checkpoint signed at {} says the chain through seq {} is \
                         {}…, the log's is {}…: a record in seqs {}..={} was changed and the \
                         hashes after it recomputed{}",
                        rfc3339(cp.time_ms).unwrap_or_else(|| cp.time_ms.to_string()),
                        entry.seq,
                        short(&cp.chain),
                        short(&self.chain),
                        range.0,
                        range.1,
                        self.segments_note(range)
                    ),
                );
                finding.range = Some(range);
                finding.anchor_line = Some(anchor.line);
                return Some(finding);
            }
            self.report.anchors_matched += 1;
            self.unconfirmed_from = self.unconfirmed_from.max(entry.seq + 1);
        }
        None
    }

    /// Checks the checkpoint record at `seq`; `before` is the recomputed
    /// chain through `seq - 1`.
    fn checkpoint(&mut self, seq: Seq, before: &[u8; 32], payload: &[u8]) -> Option<Finding> {
        let bad = |walk: &Self, why: String| {
            Some(walk.finding(
                FindingKind::BadCheckpoint,
                seq,
                format!("checkpoint record: {why}"),
            ))
        };
        let cp = match Record::decode(payload) {
            Ok(Record::Checkpoint(cp)) => cp,
            Ok(_) => return bad(self, "decodes as another record type".into()),
            Err(e) => return bad(self, format!("does not decode: {e}")),
        };
        if cp.seq.checked_add(1) != Some(seq) {
            return bad(
                self,
                format!(
                    "claims to cover seq {}, but a checkpoint covers the record just before it \
                     (seq {})",
                    cp.seq,
                    seq - 1
                ),
            );
        }
        if let Err(why) = self.keys.check(&cp) {
            return bad(self, why);
        }
        if cp.chain != *before {
            let range = (self.unconfirmed_from, cp.seq);
            let mut finding = self.finding(
                FindingKind::ChainRewritten,
                seq,
                format!(
                    "this checkpoint, validly signed at {}, says the chain through seq {} is \
                     {}…, but the log's is {}…: a record in seqs {}..={} was changed and the \
                     hashes after it recomputed{}",
                    rfc3339(cp.time_ms).unwrap_or_else(|| cp.time_ms.to_string()),
                    cp.seq,
                    short(&cp.chain),
                    short(before),
                    range.0,
                    range.1,
                    self.segments_note(range)
                ),
            );
            finding.range = Some(range);
            return Some(finding);
        }
        self.report.checkpoints_verified += 1;
        self.report.kids.insert(cp.kid.clone());
        self.unconfirmed_from = self.unconfirmed_from.max(cp.seq + 1);
        self.report.last_checkpoint = Some((seq, cp));
        None
    }

    fn segments_note(&self, (from, to): (Seq, Seq)) -> String {
        let name = |seq| {
            self.segment_of(seq)
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        };
        match (name(from), name(to)) {
            (Some(a), Some(b)) if a == b => format!(" (segment {a})"),
            (Some(a), Some(b)) => format!(" (segments {a} to {b})"),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::sign_checkpoint;
    use crate::crypto::MasterKey;
    use crate::log::{Log, LogConfig};

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
        let report = audit_log(tmp.path(), &VerifyingKeys::of(&k), &anchors).unwrap();
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
        let report = audit_log(tmp.path(), &VerifyingKeys::of(&keys(2)), &[]).unwrap();
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
}
