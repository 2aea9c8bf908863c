//! What an audit found: the kinds of findings, the first finding, and the
//! report with its JSON and text forms.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::log::{Seq, TornTail};
use crate::record::CheckpointRecord;

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
    /// More records after the last verified checkpoint than a running
    /// server leaves unsigned: checkpoints were dropped, so a rewrite of
    /// those records cannot be ruled out.
    Uncovered,
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
            FindingKind::Uncovered => "uncovered",
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

pub(super) fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

pub(super) fn short(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}
