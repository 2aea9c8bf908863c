//! The signature pass: the chain recomputed record by record, every
//! checkpoint checked against it, and anchors matched on the way.

use std::path::PathBuf;
use std::sync::LazyLock;

use super::keys::{Anchor, VerifyingKeys};
use super::report::{rfc3339, short, AuditReport, Finding, FindingKind};
use crate::log::frame::chain_hash;
use crate::log::{LogEntry, Seq};
use crate::record::{CheckpointRecord, Record};

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

/// The signature pass, one record at a time.
pub(super) struct Walk<'a> {
    pub(super) keys: &'a VerifyingKeys,
    pub(super) segments: &'a [(Seq, PathBuf)],
    pub(super) anchors: std::iter::Peekable<std::vec::IntoIter<&'a Anchor>>,
    /// The recomputed chain hash after the last record stepped.
    pub(super) chain: [u8; 32],
    /// The first seq not yet confirmed by a verified checkpoint or a matched
    /// anchor: where a rewrite found later may have started.
    pub(super) unconfirmed_from: Seq,
    pub(super) report: &'a mut AuditReport,
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

    pub(super) fn step(&mut self, entry: &LogEntry) -> Option<Finding> {
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
