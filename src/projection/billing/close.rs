//! Closing periods and restating statements, when a `BillingClose` record
//! is applied. Streams the leaves of the newly closed periods in key order
//! (grouped by period and subject, so memory holds one subject's leaves),
//! and writes statements in batches.

use std::collections::BTreeMap;

use super::keys::{self, LastClose, ReadLeaf};
use super::Billing;
use crate::billing::statement::{self, Draft, Leaf, LineKey, Statement};
use crate::billing::Period;
use crate::log::Seq;
use crate::meter::Amount;
use crate::metrics::metrics;
use crate::projection::ProjectionError;

/// Statements per sled batch.
const BATCH_STATEMENTS: usize = 10_000;

/// One close being applied: where it cut, and the batch being filled.
struct Issue {
    cut_seq: Seq,
    at_ms: i64,
    batch: sled::Batch,
    in_batch: usize,
}

impl Billing {
    pub(super) fn close(
        &mut self,
        seq: Seq,
        at_ms: i64,
        closed_before_ms: i64,
        restate: bool,
    ) -> Result<(), ProjectionError> {
        // What was applied before the close is read back from the tree.
        self.write_pending(None)?;
        let mut issue = Issue {
            cut_seq: seq,
            at_ms,
            batch: sled::Batch::default(),
            in_batch: 0,
        };
        let from = self.last_close.map_or(i64::MIN, |c| c.closed_before_ms);
        if closed_before_ms > from {
            self.close_new(&mut issue, from, closed_before_ms)?;
        }
        if restate {
            self.restate(&mut issue)?;
        }
        let last = LastClose {
            seq,
            at_ms,
            closed_before_ms: closed_before_ms.max(from),
        };
        issue.batch.insert(
            keys::META_CLOSED,
            postcard::to_stdvec(&last).expect("serializes"),
        );
        crate::projection::put_checkpoint(&mut issue.batch, seq);
        self.tree.apply_batch(std::mem::take(&mut issue.batch))?;
        self.last_close = Some(last);
        self.resumed_close = None;
        self.flushed = seq;
        Ok(())
    }

    /// Version 1 of every (period, subject) with leaves in `[from, to)`.
    fn close_new(&mut self, issue: &mut Issue, from: i64, to: i64) -> Result<(), ProjectionError> {
        let start = keys::prefixed(keys::LEAF, &keys::period_bytes(from));
        let end = keys::prefixed(keys::LEAF, &keys::period_bytes(to));
        let mut group: Option<(i64, String)> = None;
        let mut leaves: Vec<ReadLeaf> = Vec::new();
        for kv in self.tree.range(start..end) {
            let (k, v) = kv?;
            let Some((period, subject, _)) = keys::split_subject_key(&k) else {
                continue;
            };
            if group
                .as_ref()
                .is_none_or(|(p, s)| *p != period || s != subject)
            {
                if let Some((p, s)) = group.take() {
                    self.first_version(issue, p, &s, std::mem::take(&mut leaves))?;
                }
                group = Some((period, subject.to_owned()));
            }
            keys::decode_leaves(&k, &v, issue.cut_seq, &mut leaves);
        }
        if let Some((p, s)) = group {
            self.first_version(issue, p, &s, leaves)?;
        }
        Ok(())
    }

    fn first_version(
        &mut self,
        issue: &mut Issue,
        period_start: i64,
        subject: &str,
        leaves: Vec<ReadLeaf>,
    ) -> Result<(), ProjectionError> {
        // Only a close cut short by a crash can find versions already issued
        // (see `Billing::resumed_close`); a whole one needs no lookup.
        let resumed = self.resumed_close == Some(issue.cut_seq);
        if leaves.is_empty()
            || (resumed && !keys::versions(&self.tree, period_start, subject)?.is_empty())
        {
            return Ok(());
        }
        self.issue(issue, period_start, subject, leaves, None)
    }

    /// A new version of every statement whose closed period got late events.
    fn restate(&mut self, issue: &mut Issue) -> Result<(), ProjectionError> {
        let dirty: Vec<sled::IVec> = self
            .tree
            .scan_prefix([keys::DIRTY])
            .keys()
            .collect::<Result<_, _>>()?;
        for key in dirty {
            let Some((period, subject, _)) = keys::split_subject_key(&key) else {
                continue;
            };
            let subject = subject.to_owned();
            let leaves = keys::read_leaves(&self.tree, period, &subject, issue.cut_seq)?;
            let positions = keys::versions(&self.tree, period, &subject)?;
            let previous = match positions.last() {
                Some(pos) => self.statement_at(*pos)?.map(|s| (s, positions)),
                None => None,
            };
            issue.batch.remove(key);
            // Applied again after a crash, a close finds marks whose version
            // it already wrote: nothing was added since, so nothing to issue.
            if previous
                .as_ref()
                .is_some_and(|(p, _)| p.leaves == leaves.len() as u64)
            {
                continue;
            }
            self.issue(issue, period, &subject, leaves, previous)?;
        }
        Ok(())
    }

    fn statement_at(&self, position: u64) -> Result<Option<Statement>, ProjectionError> {
        let Some(bytes) = self.tree.get(keys::statement_key(position))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProjectionError::Value {
                tree: "billing",
                key: format!("statement {position}"),
                reason: e.to_string(),
            })
    }

    /// Builds and writes the next version; a statement that does not
    /// reconcile is not written, and why is kept under `F`.
    fn issue(
        &mut self,
        issue: &mut Issue,
        period_start: i64,
        subject: &str,
        leaves: Vec<ReadLeaf>,
        previous: Option<(Statement, Vec<u64>)>,
    ) -> Result<(), ProjectionError> {
        let (previous, positions) = match previous {
            Some((s, p)) => (Some(s), p),
            None => (None, Vec::new()),
        };
        let mut lines: BTreeMap<LineKey, (Vec<Leaf>, Amount)> = BTreeMap::new();
        for ReadLeaf { leaf, line } in leaves {
            let entry = lines.entry(line).or_default();
            entry.1 = entry.1.saturating_add(Amount(leaf.value));
            entry.0.push(leaf);
        }
        let period = Period {
            start_ms: period_start,
            end_ms: self.cycle.next(self.cycle.period_of(period_start)).start_ms,
        };
        let draft = Draft {
            subject,
            cycle: &self.cycle,
            period,
            cut_seq: issue.cut_seq,
            closed_at_ms: issue.at_ms,
            lines: lines.into_iter().map(|(k, (l, a))| (k, l, a)).collect(),
        };
        let failed_key = keys::subject_key(keys::FAILED, period_start, subject);
        let built = match statement::build(draft, previous.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(subject, error = %e, "billing statement does not reconcile; not issued");
                metrics().billing_reconcile_failures_total.inc();
                issue.batch.insert(failed_key, e.to_string().into_bytes());
                return Ok(());
            }
        };
        let position = self.next_position;
        self.next_position += 1;
        let index_key = keys::subject_key(keys::INDEX, period_start, subject);
        let mut positions = positions;
        positions.push(position);
        issue
            .batch
            .insert(&keys::statement_key(position), built.canonical());
        issue.batch.insert(
            index_key,
            postcard::to_stdvec(&positions).expect("serializes"),
        );
        issue.batch.remove(failed_key);
        let kind = if built.version == 1 {
            "initial"
        } else {
            "restatement"
        };
        metrics()
            .billing_statements_total
            .with_label_values(&[kind])
            .inc();
        issue.in_batch += 1;
        if issue.in_batch >= BATCH_STATEMENTS {
            self.tree.apply_batch(std::mem::take(&mut issue.batch))?;
            issue.in_batch = 0;
        }
        Ok(())
    }
}
