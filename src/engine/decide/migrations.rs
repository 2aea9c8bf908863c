//! Migration decisions: create, keep a dry run's mark, apply a step one
//! chunk at a time, roll back one chunk at a time, complete. Each chunk is
//! one request and so lands in one log batch: after a crash every license
//! is either before or after, and the migration document (its progress) is
//! written in the same batch as the licenses it counts.

use super::{stamped, Request, WriterState};
use crate::engine::batch::Batch;
use crate::engine::protocol::{
    ApplyChunk, CompleteMigration, CreateMigration, EngineError, MarkDryRun, RollbackChunk,
};
use crate::error_code::ErrorCode;
use crate::id::LicenseId;
use crate::license::migration::{convert, mark, MigrationSpec};
use crate::license::migration_book::{
    DryRunMark, Failure, Migration, MigrationStatus, RollbackReport, StepReport, LISTED_MAX,
};
use crate::license::{utc_ms, License, Refusal};
use crate::record::{AsJson, Audit, Record};

type Decided<T> = Result<Result<T, Refusal>, EngineError>;

/// Most licenses one chunk migrates or restores.
pub const MIGRATION_CHUNK_MAX: usize = 10_000;

fn not_found(id: &str) -> Refusal {
    Refusal::new(
        ErrorCode::NotFound,
        format!("migration `{id}` does not exist"),
    )
}

impl Request for CreateMigration {
    type Output = Result<Migration, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<Migration> {
        if let Err(m) = self.spec.check() {
            return Ok(Err(Refusal::new(ErrorCode::InvalidMigration, m)));
        }
        if let Err(r) = state.plans.resolve(&self.spec.target) {
            return Ok(Err(r));
        }
        if state.migrations.get(&self.id).is_some() {
            let msg = format!("migration `{}` already exists", self.id);
            return Ok(Err(Refusal::new(ErrorCode::Conflict, msg)));
        }
        let now = utc_ms(now_ms);
        let doc = Migration {
            id: self.id,
            spec: *self.spec,
            status: MigrationStatus::Draft,
            created_at: now,
            updated_at: now,
            dry_run: None,
            steps: Vec::new(),
            rollbacks: Vec::new(),
        };
        Ok(Ok(state.save_migration(doc, self.audit, now_ms, batch)))
    }
}

impl Request for MarkDryRun {
    type Output = Result<Migration, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<Migration> {
        let mut doc = match state.open_migration(&self.id) {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        doc.dry_run = Some(DryRunMark {
            at: utc_ms(now_ms),
            mark: self.mark,
        });
        Ok(Ok(state.save_migration(doc, self.audit, now_ms, batch)))
    }
}

impl Request for CompleteMigration {
    type Output = Result<Migration, Refusal>;

    fn decide(self, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Decided<Migration> {
        let mut doc = match state.open_migration(&self.id) {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        doc.status = MigrationStatus::Completed;
        Ok(Ok(state.save_migration(doc, self.audit, now_ms, batch)))
    }
}

/// What a chunk did, and the migration document after it.
#[derive(Debug, Clone)]
pub struct ChunkOutcome {
    pub migration: Migration,
    /// The licenses this chunk migrated or restored.
    pub changed: usize,
    /// The step or rollback has nothing left to do.
    pub done: bool,
}

impl Request for ApplyChunk {
    type Output = Result<ChunkOutcome, Refusal>;

    fn records_max(&self) -> usize {
        self.chunk_max.min(MIGRATION_CHUNK_MAX) + 1
    }

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Decided<ChunkOutcome> {
        Ok(state.apply_chunk(self, now_ms, batch))
    }
}

impl Request for RollbackChunk {
    type Output = Result<ChunkOutcome, Refusal>;

    fn records_max(&self) -> usize {
        self.chunk_max.min(MIGRATION_CHUNK_MAX) + 1
    }

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Decided<ChunkOutcome> {
        Ok(state.rollback_chunk(self, now_ms, batch))
    }
}

/// The selection of `spec` now: the licenses it selects that `id` has not
/// migrated (pending, in id order), and how many it holds migrated.
fn selection<'a>(
    state: &'a WriterState,
    id: &str,
    spec: &MigrationSpec,
) -> (Vec<&'a License>, Vec<&'a str>) {
    let mut pending: Vec<&License> = state
        .licenses
        .iter()
        .map(|s| &s.license)
        .filter(|l| spec.selects(l) && state.migrations.holder(&l.id) != Some(id))
        .collect();
    pending.sort_by(|a, b| a.id.cmp(&b.id));
    let migrated: Vec<&str> = state
        .migrations
        .entries(id)
        .filter(|e| !e.rolled_back)
        .map(|e| e.license_id.as_str())
        .collect();
    (pending, migrated)
}

/// What a step's report says when the selection is not the dry run's.
fn selection_change(doc: &Migration, pending: &[&License], migrated: &[&str]) -> Option<String> {
    let seen = doc.dry_run.as_ref()?;
    let mut ids: Vec<&str> = pending.iter().map(|l| l.id.as_str()).collect();
    ids.extend(migrated);
    ids.sort_unstable();
    let now = mark(ids, 0);
    (now.selection_sha256 != seen.mark.selection_sha256).then(|| {
        format!(
            "the selection changed since the dry run: {} licenses then, {} now",
            seen.mark.selected, now.selected
        )
    })
}

impl WriterState {
    fn open_migration(&self, id: &str) -> Result<Migration, Refusal> {
        let doc = self.migrations.get(id).ok_or_else(|| not_found(id))?;
        if doc.status == MigrationStatus::Completed {
            let msg = format!("migration `{id}` is completed: it can no longer change");
            return Err(Refusal::new(ErrorCode::Conflict, msg));
        }
        Ok(doc.clone())
    }

    fn save_migration(
        &mut self,
        mut doc: Migration,
        audit: Audit,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Migration {
        doc.updated_at = utc_ms(now_ms);
        let record = Record::MigrationSaved {
            migration: AsJson::new(doc.clone()),
            audit: stamped(audit, now_ms),
        };
        self.migrations.apply(&record);
        batch.push(record, None);
        doc
    }

    fn push_migrated(&mut self, record: Record, batch: &mut Batch) {
        self.licenses.apply(&record);
        self.migrations.apply(&record);
        batch.push(record, None);
    }

    /// The step a chunk continues, or a new one; refused with `CONFLICT`
    /// when another open migration holds a license of the selection.
    fn step_for(
        &self,
        doc: &Migration,
        req: &ApplyChunk,
        (pending, migrated): (&[&License], &[&str]),
        now_ms: i64,
    ) -> Result<StepReport, Refusal> {
        if let Some((l, other)) = pending
            .iter()
            .find_map(|l| self.migrations.holder(&l.id).map(|m| (l, m)))
        {
            let msg = format!(
                "license `{}` is in migration `{other}`, which is not completed: complete or \
                 roll it back first",
                l.id
            );
            return Err(Refusal::new(ErrorCode::Conflict, msg));
        }
        match req.step {
            Some(n) => match doc.steps.last() {
                Some(last) if last.step == n => Ok(last.clone()),
                _ => Err(Refusal::new(
                    ErrorCode::Conflict,
                    format!("step {n} is not the migration's last step"),
                )),
            },
            None => Ok(StepReport {
                step: doc.steps.last().map_or(1, |s| s.step + 1),
                size: req.size,
                goal: req
                    .size
                    .goal(pending.len() + migrated.len(), migrated.len()),
                started_at: utc_ms(now_ms),
                updated_at: utc_ms(now_ms),
                migrated: 0,
                failed: 0,
                failures: Vec::new(),
                cursor: None,
                selection_changed: selection_change(doc, pending, migrated),
            }),
        }
    }

    fn apply_chunk(
        &mut self,
        req: ApplyChunk,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<ChunkOutcome, Refusal> {
        let mut doc = self.open_migration(&req.id)?;
        let target = self.plans.resolve(&doc.spec.target)?.clone();
        let (pending, migrated) = selection(self, &doc.id, &doc.spec);
        let mut step = self.step_for(&doc, &req, (&pending, &migrated), now_ms)?;
        let take = step
            .remaining()
            .min(req.chunk_max.clamp(1, MIGRATION_CHUNK_MAX));
        let after_cursor = |l: &&License| step.cursor.as_deref().is_none_or(|c| l.id.as_str() > c);
        let chosen: Vec<License> = pending
            .into_iter()
            .filter(after_cursor)
            .take(take)
            .cloned()
            .collect();
        let meters = &self.meters;
        let exists = |m: &str| meters.get(m).is_some();
        let mut records = Vec::with_capacity(chosen.len());
        for before in &chosen {
            match convert(&doc.spec, &target, before, &exists, now_ms) {
                Ok(after) => records.push(Record::LicenseMigrated {
                    migration: doc.id.clone(),
                    step: step.step,
                    rollback: false,
                    before: AsJson::new(before.clone()),
                    after: AsJson::new(after),
                    audit: stamped(req.audit.clone(), now_ms),
                }),
                Err(reason) => note(&mut step.failures, &mut step.failed, &before.id, reason),
            }
            step.cursor = Some(before.id.to_string());
        }
        let changed = records.len();
        for r in records {
            self.push_migrated(r, batch);
        }
        step.migrated += changed;
        step.updated_at = utc_ms(now_ms);
        // Nothing left to take: the selection ran out before the goal.
        let done = step.remaining() == 0 || chosen.len() < take || take == 0;
        if done {
            step.goal = step.migrated + step.failed;
        }
        match doc.steps.last_mut() {
            Some(last) if last.step == step.step => *last = step,
            _ => doc.steps.push(step),
        }
        doc.status = MigrationStatus::Active;
        let migration = self.save_migration(doc, req.audit, now_ms, batch);
        Ok(ChunkOutcome {
            migration,
            changed,
            done,
        })
    }

    fn rollback_chunk(
        &mut self,
        req: RollbackChunk,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<ChunkOutcome, Refusal> {
        let mut doc = self.open_migration(&req.id)?;
        let mut report = rollback_report(&doc, &req, now_ms);
        let take = req.chunk_max.clamp(1, MIGRATION_CHUNK_MAX);
        let chosen: Vec<(LicenseId, u32, License, License)> = self
            .migrations
            .entries(&doc.id)
            .filter(|e| !e.rolled_back && e.step >= report.from_step)
            .filter(|e| {
                report
                    .cursor
                    .as_deref()
                    .is_none_or(|c| e.license_id.as_str() > c)
            })
            .take(take)
            .map(|e| {
                (
                    e.license_id.clone(),
                    e.step,
                    e.before.clone(),
                    e.after.clone(),
                )
            })
            .collect();
        let mut changed = 0;
        for (id, step, original, migrated) in &chosen {
            report.cursor = Some(id.to_string());
            let current = self.licenses.get(id).map(|s| &s.license);
            if current != Some(migrated) {
                let reason = "changed since it was migrated: left as it is".to_owned();
                note(
                    &mut report.conflicts_listed,
                    &mut report.conflicts,
                    id,
                    reason,
                );
                continue;
            }
            let record = Record::LicenseMigrated {
                migration: doc.id.clone(),
                step: *step,
                rollback: true,
                before: AsJson::new(migrated.clone()),
                after: AsJson::new(original.clone()),
                audit: stamped(req.audit.clone(), now_ms),
            };
            self.push_migrated(record, batch);
            changed += 1;
        }
        report.restored += changed;
        report.updated_at = utc_ms(now_ms);
        report.done = chosen.len() < take;
        let done = report.done;
        match (req.continuing, doc.rollbacks.last_mut()) {
            (true, Some(last)) if !last.done => *last = report,
            _ => doc.rollbacks.push(report),
        }
        let migration = self.save_migration(doc, req.audit, now_ms, batch);
        Ok(ChunkOutcome {
            migration,
            changed,
            done,
        })
    }
}

/// The rollback a chunk continues, or a new one.
fn rollback_report(doc: &Migration, req: &RollbackChunk, now_ms: i64) -> RollbackReport {
    match (req.continuing, doc.rollbacks.last()) {
        (true, Some(r)) if !r.done => r.clone(),
        _ => RollbackReport {
            from_step: req.from_step.max(1),
            started_at: utc_ms(now_ms),
            updated_at: utc_ms(now_ms),
            restored: 0,
            conflicts: 0,
            conflicts_listed: Vec::new(),
            cursor: None,
            done: false,
        },
    }
}

/// Counts a failure or conflict, listing the first [`LISTED_MAX`].
fn note(listed: &mut Vec<Failure>, count: &mut usize, id: &str, reason: String) {
    *count += 1;
    if listed.len() < LISTED_MAX {
        listed.push(Failure {
            license_id: id.to_owned(),
            reason,
        });
    }
}
