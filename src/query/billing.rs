//! Billing reads: the statement feed with its cursor, statements by id, the
//! open period's running lines, a period's state, and proofs. All read the
//! billing projection's tree (see [`crate::projection::billing::keys`]) as
//! of its last flush, which `as_of` reports.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::billing::merkle::{self, Node};
use crate::billing::statement::{
    line_id, parse_statement_id, period_doc, rfc3339, statement_id, LineKey, Statement,
};
use crate::billing::{Closed, Period, PeriodState, Settings};
use crate::error_code::ErrorCode;
use crate::event::DedupKey;
use crate::meter::Amount;
use crate::projection::billing::keys::{self, ReadLeaf};
use crate::projection::billing::BillingView;

/// Most statements one feed page scans (a page with a narrow filter may
/// come back short, with a cursor to go on from).
pub const FEED_SCAN_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("{1}")]
    Coded(ErrorCode, String),
    #[error("state store: {0}")]
    Store(#[from] sled::Error),
}

impl BillingError {
    fn new(code: ErrorCode, message: impl Into<String>) -> BillingError {
        BillingError::Coded(code, message.into())
    }
}

pub struct BillingReads {
    pub(super) tree: sled::Tree,
    pub(super) view: Arc<BillingView>,
    pub(super) settings: Settings,
    pub(super) now_ms: i64,
    pub(super) watermark_ms: i64,
}

/// What the feed selects.
#[derive(Debug, Default, Clone)]
pub struct FeedFilter {
    pub subject: Option<String>,
    pub period: Option<String>,
    /// Only these subjects (the licenses of a customer or a product).
    pub subjects: Option<std::collections::HashSet<String>>,
}

pub struct FeedPage {
    /// Each statement version's canonical bytes, in the order issued.
    pub statements: Vec<Vec<u8>>,
    /// Where the next page starts: pass as `after`.
    pub next_cursor: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CurrentLine {
    pub line_id: String,
    pub meter: String,
    pub aggregation: String,
    pub group: BTreeMap<String, Option<String>>,
    pub quantity: String,
    pub leaves: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Current {
    pub statement_id: String,
    pub subject: String,
    pub period: crate::billing::statement::PeriodDoc,
    pub state: PeriodState,
    /// The leaves counted are those logged up to this seq.
    pub as_of_seq: u64,
    pub lines: Vec<CurrentLine>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodStatus {
    pub period: crate::billing::statement::PeriodDoc,
    pub state: PeriodState,
    /// When its grace ends (it may close from then on).
    pub grace_ends: String,
    /// Why it is not closed yet (`closing` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The close record that closed it, when known (`closed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by_seq: Option<u64>,
}

/// A total's line: meter, aggregation, group values.
type TotalKey = (String, String, BTreeMap<String, Option<String>>);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TotalsStatement {
    pub statement_id: String,
    pub version: u32,
    pub subject: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TotalLine {
    pub meter: String,
    pub aggregation: String,
    pub group: BTreeMap<String, Option<String>>,
    pub quantity: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub period: String,
    /// The latest version of each statement summed.
    pub statements: Vec<TotalsStatement>,
    pub lines: Vec<TotalLine>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    pub statement_id: String,
    pub version: u32,
    pub line_id: String,
    pub subject: String,
    pub meter: String,
    pub seq: u64,
    pub identity: String,
    pub time: String,
    pub time_ms: i64,
    pub value: String,
    /// The leaf's canonical bytes, hex.
    pub leaf_bytes: String,
    pub index: u64,
    pub size: u64,
    pub path: Vec<Node>,
    pub root: Node,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineConsistency {
    pub line_id: String,
    pub old_size: u64,
    pub new_size: u64,
    pub old_root: Option<Node>,
    pub new_root: Node,
    pub proof: Vec<Node>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyProof {
    pub statement_id: String,
    pub from_version: u32,
    pub to_version: u32,
    pub lines: Vec<LineConsistency>,
}

impl BillingReads {
    /// The period `label` names, or `PERIOD_NOT_FOUND`.
    fn period_named(&self, label: &str) -> Result<Period, BillingError> {
        let cycle = &self.view.cycle;
        cycle.parse_label(label).ok_or_else(|| {
            BillingError::new(
                ErrorCode::PeriodNotFound,
                format!("{label:?} is not a {} period", cycle.kind.as_str()),
            )
        })
    }

    fn closed(&self) -> Closed {
        Closed {
            before_ms: self.view.last_close.map(|c| c.closed_before_ms),
        }
    }

    /// Statement versions issued after the position `after` names.
    pub fn feed(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<FeedPage, BillingError> {
        let next = match self.tree.scan_prefix([keys::STATEMENT]).next_back() {
            Some(kv) => position_of(&kv?.0) + 1,
            None => 0,
        };
        let start = match after {
            None => 0,
            Some(text) => {
                let p: u64 = text.parse().map_err(|_| {
                    BillingError::new(
                        ErrorCode::InvalidCursor,
                        format!("cursor {text:?} is not one this server gave"),
                    )
                })?;
                if p >= next {
                    return Err(BillingError::new(
                        ErrorCode::InvalidCursor,
                        format!(
                            "cursor {p} is ahead of every statement issued (the last is {})",
                            next as i64 - 1
                        ),
                    ));
                }
                p + 1
            }
        };
        let mut statements = Vec::new();
        let mut last = start.checked_sub(1);
        for (scanned, kv) in self
            .tree
            .range(keys::statement_key(start)..keys::statement_key(u64::MAX))
            .enumerate()
        {
            if statements.len() >= limit || scanned >= FEED_SCAN_MAX {
                break;
            }
            let (k, v) = kv?;
            last = Some(position_of(&k));
            if filter.subject.is_some() || filter.period.is_some() || filter.subjects.is_some() {
                let s: Statement = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
                if filter.subject.as_ref().is_some_and(|x| *x != s.subject)
                    || filter.period.as_ref().is_some_and(|x| *x != s.period.label)
                    || filter
                        .subjects
                        .as_ref()
                        .is_some_and(|x| !x.contains(&s.subject))
                {
                    continue;
                }
            }
            statements.push(v.to_vec());
        }
        let next_cursor = match last {
            Some(p) => p.to_string(),
            None => after.unwrap_or("").to_owned(),
        };
        Ok(FeedPage {
            statements,
            next_cursor,
        })
    }

    /// Every statement version of the period `label`, by subject then
    /// version, handed to `visit` in that order (an export): the same bytes
    /// for the same log. `visit` says whether to go on.
    pub fn period_statements(
        &self,
        label: &str,
        mut visit: impl FnMut(Statement) -> bool,
    ) -> Result<(), BillingError> {
        let period = self.period_named(label)?;
        let prefix = keys::prefixed(keys::INDEX, &keys::period_bytes(period.start_ms));
        for kv in self.tree.scan_prefix(prefix) {
            let (_, v) = kv?;
            let positions: Vec<u64> = postcard::from_bytes(&v).unwrap_or_default();
            for p in positions {
                let k = keys::statement_key(p);
                let Some(bytes) = self.tree.get(k)? else {
                    continue;
                };
                let s = serde_json::from_slice(&bytes).map_err(|e| corrupt(&k, e))?;
                if !visit(s) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Every version of statement `id`, oldest first.
    pub fn versions(&self, id: &str) -> Result<Vec<Statement>, BillingError> {
        let not_found =
            || BillingError::new(ErrorCode::StatementNotFound, format!("no statement {id:?}"));
        let (label, subject) = parse_statement_id(id).ok_or_else(not_found)?;
        let period = self.view.cycle.parse_label(label).ok_or_else(not_found)?;
        let positions = keys::versions(&self.tree, period.start_ms, &subject)?;
        if positions.is_empty() {
            return Err(not_found());
        }
        let mut out = Vec::with_capacity(positions.len());
        for p in positions {
            let k = keys::statement_key(p);
            let bytes = self.tree.get(k)?.ok_or_else(not_found)?;
            out.push(serde_json::from_slice(&bytes).map_err(|e| corrupt(&k, e))?);
        }
        Ok(out)
    }

    /// One version (the latest when `version` is `None`).
    pub fn version(&self, id: &str, version: Option<u32>) -> Result<Statement, BillingError> {
        let all = self.versions(id)?;
        let found = match version {
            None => all.into_iter().last(),
            Some(v) => all.into_iter().find(|s| s.version == v),
        };
        found.ok_or_else(|| {
            BillingError::new(
                ErrorCode::StatementNotFound,
                format!("statement {id:?} has no version {version:?}"),
            )
        })
    }

    /// The running lines of `subject`'s current period.
    pub fn current(&self, subject: &str) -> Result<Current, BillingError> {
        let cycle = &self.view.cycle;
        let period = cycle.period_of(self.now_ms);
        let label = cycle.label(period);
        let id = statement_id(&label, subject);
        let leaves = keys::read_leaves(&self.tree, period.start_ms, subject, u64::MAX)?;
        let mut lines: BTreeMap<LineKey, (Amount, u64)> = BTreeMap::new();
        for ReadLeaf { leaf, line } in leaves {
            let e = lines.entry(line).or_default();
            e.0 = e.0.saturating_add(Amount(leaf.value));
            e.1 += 1;
        }
        Ok(Current {
            statement_id: id.clone(),
            subject: subject.to_owned(),
            period: period_doc(cycle, period),
            state: self.closed().state(period, self.now_ms),
            as_of_seq: self.view.as_of,
            lines: lines
                .into_iter()
                .map(|(k, (q, n))| CurrentLine {
                    line_id: line_id(&id, &k),
                    meter: k.meter,
                    aggregation: k.aggregation.to_owned(),
                    group: k.group,
                    quantity: q.to_string(),
                    leaves: n,
                })
                .collect(),
        })
    }

    /// The latest versions of `subjects`' statements for the period
    /// `label`, and their lines summed by meter and group: what a customer
    /// owning those subjects (licenses) owes.
    pub fn totals(&self, label: &str, subjects: &[String]) -> Result<Totals, BillingError> {
        self.period_named(label)?;
        let mut statements = Vec::new();
        let mut lines: BTreeMap<TotalKey, i128> = BTreeMap::new();
        for subject in subjects {
            let id = statement_id(label, subject);
            let s = match self.version(&id, None) {
                Ok(s) => s,
                Err(BillingError::Coded(ErrorCode::StatementNotFound, _)) => continue,
                Err(e) => return Err(e),
            };
            for l in &s.lines {
                *lines
                    .entry((l.meter.clone(), l.aggregation.clone(), l.group.clone()))
                    .or_default() += l.root.sum;
            }
            statements.push(TotalsStatement {
                statement_id: s.statement_id,
                version: s.version,
                subject: s.subject,
            });
        }
        Ok(Totals {
            period: label.to_owned(),
            statements,
            lines: lines
                .into_iter()
                .map(|((meter, aggregation, group), sum)| TotalLine {
                    meter,
                    aggregation,
                    group,
                    quantity: Amount(sum).to_string(),
                })
                .collect(),
        })
    }

    pub fn period(&self, label: &str) -> Result<PeriodStatus, BillingError> {
        let cycle = &self.view.cycle;
        let period = self.period_named(label)?;
        let state = self.closed().state(period, self.now_ms);
        let grace_ends = period.end_ms.saturating_add(self.settings.grace_ms);
        let waiting_for =
            (state == PeriodState::Closing).then(|| self.waiting_for(period, grace_ends));
        let closed_by_seq = (state == PeriodState::Closed)
            .then_some(self.view.last_close)
            .flatten()
            .filter(|c| cycle.prev(cycle.period_of(c.closed_before_ms)) == period)
            .map(|c| c.seq);
        Ok(PeriodStatus {
            period: period_doc(cycle, period),
            state,
            grace_ends: rfc3339(grace_ends),
            waiting_for,
            closed_by_seq,
        })
    }

    fn waiting_for(&self, period: Period, grace_ends: i64) -> String {
        if self.now_ms < grace_ends {
            format!("its grace (billing.grace) ends at {}", rfc3339(grace_ends))
        } else if self.watermark_ms < period.end_ms {
            match self.watermark_ms {
                i64::MIN => {
                    "a source that has not delivered yet (a Kafka partition not caught up once)"
                        .to_owned()
                }
                w => format!(
                    "a source that has delivered only up to {} (a Kafka partition lags)",
                    rfc3339(w)
                ),
            }
        } else {
            "the next close (billing.close_interval)".to_owned()
        }
    }

    /// The inclusion proof of the event `(source, id)` in a version of a
    /// statement: which line counted it, and the path to that line's root.
    pub fn proof(
        &self,
        statement: &Statement,
        source: &str,
        event_id: &str,
    ) -> Result<InclusionProof, BillingError> {
        let identity = DedupKey::new(source, event_id).0;
        let cycle = &self.view.cycle;
        let period = cycle.parse_label(&statement.period.label).ok_or_else(|| {
            BillingError::new(
                ErrorCode::StatementNotFound,
                "the statement's period is not of this cycle",
            )
        })?;
        let leaves = keys::read_leaves(
            &self.tree,
            period.start_ms,
            &statement.subject,
            statement.cut.seq,
        )?;
        let mut by_line: BTreeMap<String, Vec<ReadLeaf>> = BTreeMap::new();
        for l in leaves {
            by_line
                .entry(line_id(&statement.statement_id, &l.line))
                .or_default()
                .push(l);
        }
        for line in &statement.lines {
            let Some(leaves) = by_line.get(&line.line_id) else {
                continue;
            };
            let Some(index) = leaves.iter().position(|l| l.leaf.identity == identity) else {
                continue;
            };
            let nodes: Vec<Node> = leaves
                .iter()
                .map(|l| l.leaf.node(&statement.subject, &line.meter))
                .collect();
            let leaf = &leaves[index].leaf;
            return Ok(InclusionProof {
                statement_id: statement.statement_id.clone(),
                version: statement.version,
                line_id: line.line_id.clone(),
                subject: statement.subject.clone(),
                meter: line.meter.clone(),
                seq: leaf.seq,
                identity: hex::encode(identity),
                time: rfc3339(leaf.time_ms),
                time_ms: leaf.time_ms,
                value: Amount(leaf.value).to_string(),
                leaf_bytes: hex::encode(leaf.bytes(&statement.subject, &line.meter)),
                index: index as u64,
                size: nodes.len() as u64,
                path: merkle::inclusion_proof(&nodes, index).unwrap_or_default(),
                root: line.root,
            });
        }
        Err(BillingError::new(
            ErrorCode::StatementNotFound,
            format!(
                "event {event_id:?} from {source:?} is not counted in version {} of {}",
                statement.version, statement.statement_id
            ),
        ))
    }

    /// Per line, the consistency proof from `old` to `new` (same statement).
    pub fn consistency(
        &self,
        old: &Statement,
        new: &Statement,
    ) -> Result<ConsistencyProof, BillingError> {
        let cycle = &self.view.cycle;
        let period = cycle.parse_label(&new.period.label).ok_or_else(|| {
            BillingError::new(
                ErrorCode::StatementNotFound,
                "the statement's period is not of this cycle",
            )
        })?;
        let leaves = keys::read_leaves(&self.tree, period.start_ms, &new.subject, new.cut.seq)?;
        let mut lines = Vec::with_capacity(new.lines.len());
        for line in &new.lines {
            let nodes: Vec<Node> = leaves
                .iter()
                .filter(|l| line_id(&new.statement_id, &l.line) == line.line_id)
                .map(|l| l.leaf.node(&new.subject, &line.meter))
                .collect();
            let before = old.lines.iter().find(|l| l.line_id == line.line_id);
            let old_size = before.map_or(0, |b| b.leaves);
            lines.push(LineConsistency {
                line_id: line.line_id.clone(),
                old_size,
                new_size: nodes.len() as u64,
                old_root: before.map(|b| b.root),
                new_root: line.root,
                proof: merkle::consistency_proof(&nodes, old_size as usize).unwrap_or_default(),
            });
        }
        Ok(ConsistencyProof {
            statement_id: new.statement_id.clone(),
            from_version: old.version,
            to_version: new.version,
            lines,
        })
    }
}

fn position_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[1..9].try_into().expect("statement key"))
}

fn corrupt(key: &[u8], e: serde_json::Error) -> BillingError {
    BillingError::new(
        ErrorCode::CorruptState,
        format!("stored statement {} does not decode: {e}", hex::encode(key)),
    )
}
