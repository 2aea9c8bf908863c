//! Statements: what a subject owes for one closed period, line by line, with
//! a Merkle sum tree per line over the events counted in it. Built by a pure
//! function of the leaves and the previous version, which also checks that
//! the totals reconcile before anything is written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cycle::{Cycle, Period};
use super::merkle::{self, Node};
use crate::meter::Amount;

/// One counted event of one line: what its leaf hash commits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    pub seq: u64,
    /// The event's identity: the first 16 bytes of SHA-256(source ‖ 0x00 ‖ id).
    pub identity: [u8; 16],
    pub time_ms: i64,
    /// Fixed point, `value × 10^9` (COUNT: one per event).
    pub value: i128,
}

impl Leaf {
    /// The canonical bytes of the leaf of `subject` and `meter`:
    /// `seq (u64 BE) ‖ identity (16) ‖ time_ms (i64 BE) ‖ value (i128 BE)
    /// ‖ len(subject) (u32 BE) ‖ subject ‖ len(meter) (u32 BE) ‖ meter`.
    pub fn bytes(&self, subject: &str, meter: &str) -> Vec<u8> {
        let mut b = Vec::with_capacity(56 + subject.len() + meter.len());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.identity);
        b.extend_from_slice(&self.time_ms.to_be_bytes());
        b.extend_from_slice(&self.value.to_be_bytes());
        for text in [subject, meter] {
            b.extend_from_slice(&(text.len() as u32).to_be_bytes());
            b.extend_from_slice(text.as_bytes());
        }
        b
    }

    pub fn node(&self, subject: &str, meter: &str) -> Node {
        Node::leaf(&self.bytes(subject, meter), self.value)
    }
}

/// What one line counts: a meter and one combination of its group values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineKey {
    pub meter: String,
    pub aggregation: &'static str,
    /// Group-by key → value (`None`: the event had no value there).
    pub group: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub line_id: String,
    pub meter: String,
    pub aggregation: String,
    pub group: BTreeMap<String, Option<String>>,
    /// Exact decimal.
    pub quantity: String,
    /// Change from the previous version (restatements only), exact decimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
    pub leaves: u64,
    pub root: Node,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodDoc {
    pub label: String,
    pub start: String,
    pub end: String,
    pub cycle: String,
    pub time_zone: String,
}

/// Where the statement was cut: events before `event_time_before` that the
/// log held at `seq` (the close record), decided at `closed_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    pub event_time_before: String,
    pub seq: u64,
    pub closed_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub version: u32,
    /// SHA-256 of the previous version's canonical bytes.
    pub sha256: String,
}

/// A statement version. Its canonical bytes are `serde_json::to_vec` of this
/// struct (fields in this order, no whitespace); the served JWS signs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub statement_id: String,
    pub version: u32,
    pub subject: String,
    pub period: PeriodDoc,
    pub cut: Cut,
    pub lines: Vec<Line>,
    /// Leaves over all lines.
    pub leaves: u64,
    /// `SHA-256(0x02 ‖ for each line: root hash ‖ root sum (i128 BE))`.
    pub root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
}

impl Statement {
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a statement serializes")
    }

    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.canonical()))
    }
}

/// The statement id of `subject` in `period`: the period's label and the
/// subject's bytes in hex, the same for every version (so an id names its
/// period and subject, and needs no index).
pub fn statement_id(label: &str, subject: &str) -> String {
    format!("{label}-{}", hex::encode(subject.as_bytes()))
}

/// The period label and subject a statement id names.
pub fn parse_statement_id(id: &str) -> Option<(&str, String)> {
    let (label, subject) = id.rsplit_once('-')?;
    let subject = String::from_utf8(hex::decode(subject).ok()?).ok()?;
    Some((label, subject))
}

/// A line's id: stable across versions of its statement and re-reads.
pub fn line_id(statement_id: &str, key: &LineKey) -> String {
    let mut h = Sha256::new();
    h.update(statement_id.as_bytes());
    h.update([0]);
    h.update(key.meter.as_bytes());
    for (k, v) in &key.group {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        match v {
            Some(v) => {
                h.update([1]);
                h.update(v.as_bytes());
            }
            None => h.update([2]),
        }
    }
    hex::encode(&h.finalize()[..8])
}

/// Why a statement could not be built: the close stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    #[error("statement {id} line {line}: leaves sum to {leaves} but the line counts {line_total}")]
    Sum {
        id: String,
        line: String,
        leaves: String,
        line_total: String,
    },
    #[error("statement {id} version {version}: line {line} does not extend the previous version ({reason})")]
    NotAnExtension {
        id: String,
        version: u32,
        line: String,
        reason: &'static str,
    },
}

/// What a statement is built from.
pub struct Draft<'a> {
    pub subject: &'a str,
    pub cycle: &'a Cycle,
    pub period: Period,
    pub cut_seq: u64,
    pub closed_at_ms: i64,
    /// Each line's leaves in log order, and the total the fold counted.
    pub lines: Vec<(LineKey, Vec<Leaf>, Amount)>,
}

/// Builds version 1, or version n+1 of `previous`: checks that each line's
/// leaves sum to its total and, for a restatement, that each line only
/// added leaves to the previous version's (a consistency proof verifies).
pub fn build(draft: Draft<'_>, previous: Option<&Statement>) -> Result<Statement, ReconcileError> {
    let label = draft.cycle.label(draft.period);
    let id = statement_id(&label, draft.subject);
    let version = previous.map_or(1, |p| p.version + 1);
    let mut lines = Vec::with_capacity(draft.lines.len());
    let mut statement_hash = Sha256::new();
    statement_hash.update([2]);
    let mut total_leaves = 0u64;
    for (key, leaves, counted) in &draft.lines {
        let nodes: Vec<Node> = leaves
            .iter()
            .map(|l| l.node(draft.subject, &key.meter))
            .collect();
        let root = merkle::root(&nodes);
        let line_id = line_id(&id, key);
        if root.sum != counted.0 {
            return Err(ReconcileError::Sum {
                id,
                line: line_id,
                leaves: Amount(root.sum).to_string(),
                line_total: counted.to_string(),
            });
        }
        let before = previous.and_then(|p| p.lines.iter().find(|l| l.line_id == line_id));
        if let Some(before) = before {
            check_extends(&nodes, before).map_err(|reason| ReconcileError::NotAnExtension {
                id: id.clone(),
                version,
                line: line_id.clone(),
                reason,
            })?;
        }
        let delta = previous.map(|_| {
            let old = before.map_or(0, |b| b.root.sum);
            Amount(root.sum.saturating_sub(old)).to_string()
        });
        statement_hash.update(root.hash);
        statement_hash.update(root.sum.to_be_bytes());
        total_leaves += nodes.len() as u64;
        lines.push(Line {
            line_id,
            meter: key.meter.clone(),
            aggregation: key.aggregation.to_owned(),
            group: key.group.clone(),
            quantity: counted.to_string(),
            delta,
            leaves: nodes.len() as u64,
            root,
        });
    }
    if let Some(p) = previous {
        // A line of the previous version must still be there.
        if let Some(gone) = (p.lines.iter()).find(|l| !lines.iter().any(|n| n.line_id == l.line_id))
        {
            return Err(ReconcileError::NotAnExtension {
                id,
                version,
                line: gone.line_id.clone(),
                reason: "the line is missing",
            });
        }
    }
    Ok(Statement {
        statement_id: id,
        version,
        subject: draft.subject.to_owned(),
        period: period_doc(draft.cycle, draft.period),
        cut: Cut {
            event_time_before: rfc3339(draft.period.end_ms),
            seq: draft.cut_seq,
            closed_at: rfc3339(draft.closed_at_ms),
        },
        lines,
        leaves: total_leaves,
        root: hex::encode(statement_hash.finalize()),
        previous: previous.map(|p| Previous {
            version: p.version,
            sha256: p.sha256(),
        }),
    })
}

fn check_extends(nodes: &[Node], before: &Line) -> Result<(), &'static str> {
    let old_size = before.leaves as usize;
    if old_size > nodes.len() {
        return Err("it has fewer leaves");
    }
    if old_size == 0 {
        return Ok(());
    }
    let proof = merkle::consistency_proof(nodes, old_size).ok_or("no proof")?;
    let new_root = merkle::root(nodes);
    merkle::verify_consistency(
        old_size as u64,
        nodes.len() as u64,
        &proof,
        &before.root,
        &new_root,
    )
    .then_some(())
    .ok_or("the consistency proof does not verify")
}

pub fn period_doc(cycle: &Cycle, period: Period) -> PeriodDoc {
    PeriodDoc {
        label: cycle.label(period),
        start: rfc3339(period.start_ms),
        end: rfc3339(period.end_ms),
        cycle: cycle.kind.as_str().to_owned(),
        time_zone: cycle.tz.name().to_owned(),
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests;
