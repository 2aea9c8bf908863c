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
//! A running server leaves at most `uncovered_max` of them (the checkpoint
//! record count plus one batch, twice over for a crash between two
//! checkpoints); more means checkpoints were dropped, and a rewrite that
//! recomputed the chain from there on could not be told apart from the
//! truth, so it is a finding ([`FindingKind::Uncovered`]), not "intact".
//! Only anchors kept outside the data directory close that gap for the
//! records after the last anchored checkpoint.

mod keys;
mod report;
#[cfg(test)]
mod tests;
mod walk;

use std::path::{Path, PathBuf};

pub use keys::{read_anchors, Anchor, Anchors, VerifyingKeys};
pub use report::{AuditReport, Finding, FindingKind};

use crate::log::frame::GENESIS_HASH;
use crate::log::{LogError, Seq};
use report::rfc3339;
use walk::Walk;

/// Audits the log in `log_dir` (see the module doc). `Err` only when the log
/// cannot be read at all; tampering is [`AuditReport::finding`].
pub fn audit_log(
    log_dir: &Path,
    keys: &VerifyingKeys,
    anchors: &[Anchor],
    uncovered_max: u64,
) -> Result<AuditReport, LogError> {
    let mut report = AuditReport::default();
    let (audit_to, damage) = structural_pass(log_dir, &mut report)?;
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
            }) => Some(damaged_record(segment, offset, seq, reason)),
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
        report.finding = Some(truncated(&anchor, audit_to, &segments));
    } else if report.uncovered_records() > uncovered_max {
        report.finding = Some(uncovered(&report, uncovered_max, &segments));
    }
    Ok(report)
}

/// Too many records after the last verified checkpoint (see the module doc).
fn uncovered(report: &AuditReport, uncovered_max: u64, segments: &[(Seq, PathBuf)]) -> Finding {
    let from = report.last_verified_seq() + 1;
    let segment = segments
        .iter()
        .take_while(|(first, _)| *first <= from)
        .last()
        .map(|(_, p)| p.clone());
    Finding {
        kind: FindingKind::Uncovered,
        segment,
        offset: None,
        seq: Some(from),
        range: Some((from, report.head_seq)),
        anchor_line: None,
        message: format!(
            "records {from}..={} ({} records) are covered by no verified checkpoint, more \
             than the {uncovered_max} a running server leaves unsigned: the checkpoints after \
             seq {} are missing, so these records may have been rewritten with the chain \
             recomputed. An anchors file outside the data directory (audit_anchor_file) \
             proves what it anchored",
            report.head_seq,
            report.uncovered_records(),
            from - 1
        ),
    }
}

/// The structural pass ([`crate::log::verify`]): the seq the signature pass
/// reads up to, and the damage found, if any.
fn structural_pass(
    log_dir: &Path,
    report: &mut AuditReport,
) -> Result<(Seq, Option<Finding>), LogError> {
    match crate::log::verify(log_dir) {
        Ok(verified) => {
            report.torn_tail = verified.torn_tail;
            Ok((verified.head_seq, None))
        }
        Err(LogError::Corrupt {
            segment,
            offset,
            seq,
            reason,
        }) => {
            let damage = damaged_record(segment, offset, seq, reason);
            // What comes before the damage is still audited: an earlier
            // finding there comes first.
            Ok((seq.map_or(0, |s| s.saturating_sub(1)), Some(damage)))
        }
        Err(other) => Err(other),
    }
}

/// A record the log's own checks refuse, at the position they name.
fn damaged_record(segment: PathBuf, offset: u64, seq: Option<Seq>, reason: String) -> Finding {
    Finding {
        kind: FindingKind::DamagedRecord,
        segment: Some(segment),
        offset: Some(offset),
        seq,
        range: None,
        anchor_line: None,
        message: reason,
    }
}

/// An anchored checkpoint beyond the log's end: records were cut from it.
fn truncated(anchor: &Anchor, audit_to: Seq, segments: &[(Seq, PathBuf)]) -> Finding {
    let cp = &anchor.checkpoint;
    Finding {
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
    }
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
