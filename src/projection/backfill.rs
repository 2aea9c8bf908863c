//! Counting a new meter's past: when a meter is created at seq `S`, the
//! events logged before `S` must be folded into it. That read of the whole
//! log runs on a worker thread, so creating a meter over a long log does not
//! stall the projector (and with it every ingest answer).
//!
//! Correctness rests on three facts. Aggregation states merge exactly
//! (integers and fixed-point amounts), in any order, so "live events after
//! `S`, then the backfill" gives the same bytes as "backfill, then live
//! events" (what replay does). A pending backfill is marked in the counters
//! tree in the same batch as the meter's definition and unmarked in the same
//! batch as its result, so a crash in between restarts it. And a result is
//! taken only for the (meter, `S`) it was started for, so a meter deleted
//! (or deleted and created again) meanwhile drops a stale result.

use std::sync::mpsc::{self, Receiver, Sender};

use super::{EventFacts, ProjectionError};
use crate::log::{LogDir, Seq};
use crate::meter::{CompiledMeter, Fold, UniqueKey};
use crate::metrics::metrics;
use crate::record::Record;

/// A meter to count from the start of the log through `before - 1`.
pub struct Backfill {
    pub meter: CompiledMeter,
    pub before: Seq,
}

/// The fold of a job, to merge into the counters.
pub struct Counted {
    pub slug: String,
    pub before: Seq,
    pub fold: Result<Fold, ProjectionError>,
}

/// One worker thread, started at the first job, taking jobs in order.
pub struct Worker {
    log: LogDir,
    /// The counters' key: a backfill merges into the same sets.
    unique_key: UniqueKey,
    jobs: Option<Sender<Backfill>>,
    done_tx: Sender<Counted>,
    done: Receiver<Counted>,
}

impl Worker {
    pub fn new(log: &LogDir, unique_key: &UniqueKey) -> Worker {
        let (done_tx, done) = mpsc::channel();
        Worker {
            log: log.clone(),
            unique_key: unique_key.clone(),
            jobs: None,
            done_tx,
            done,
        }
    }

    pub fn start(&mut self, job: Backfill) -> Result<(), ProjectionError> {
        if self.jobs.is_none() {
            let (tx, rx) = mpsc::channel::<Backfill>();
            let (log, done) = (self.log.clone(), self.done_tx.clone());
            let key = self.unique_key.clone();
            std::thread::Builder::new()
                .name("keymeter-backfill".into())
                .spawn(move || {
                    lower_priority();
                    for job in rx {
                        let fold = fold_before(&log, &job.meter, &key, job.before);
                        let slug = job.meter.slug().to_owned();
                        let before = job.before;
                        if done.send(Counted { slug, before, fold }).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| ProjectionError::Backfill(format!("cannot start its thread: {e}")))?;
            self.jobs = Some(tx);
        }
        self.jobs
            .as_ref()
            .expect("started")
            .send(job)
            .map_err(|_| ProjectionError::Backfill("its thread stopped".into()))
    }

    /// A finished job, if any.
    pub fn try_done(&self) -> Option<Counted> {
        self.done.try_recv().ok()
    }

    /// The next finished job, waiting for it.
    pub fn wait_done(&self) -> Counted {
        self.done.recv().expect("the worker holds a sender")
    }
}

/// The count yields to the pipeline: on a busy machine it takes longer
/// rather than slowing every ingest answer (Linux: this thread's nice value).
fn lower_priority() {
    // SAFETY: setpriority with who = 0 changes only the calling thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKFILL_NICE) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "backfill runs at normal priority");
    }
}

/// The backfill thread's nice value (0 normal, 19 lowest).
const BACKFILL_NICE: libc::c_int = 10;

/// Folds every event of the meter's type logged before `before`.
fn fold_before(
    log: &LogDir,
    meter: &CompiledMeter,
    key: &UniqueKey,
    before: Seq,
) -> Result<Fold, ProjectionError> {
    let mut fold = Fold::default();
    for entry in log.read_range(1, before.saturating_sub(1))? {
        let entry = entry?;
        let record = Record::decode(&entry.payload).map_err(|source| ProjectionError::Record {
            seq: entry.seq,
            source,
        })?;
        if let Some((e, _)) = record.event() {
            let Ok(facts) = EventFacts::from_logged(&e.raw, e.time_ms) else {
                continue;
            };
            if facts.ty == meter.def().event_type {
                fold_one(meter, key, &facts, &mut fold);
            }
        }
    }
    Ok(fold)
}

/// Folds one logged event into `fold` for `meter`; an event the meter
/// cannot read is counted and skipped.
pub(super) fn fold_one(
    meter: &CompiledMeter,
    key: &UniqueKey,
    facts: &EventFacts,
    fold: &mut Fold,
) {
    match meter.extract(facts.data.as_deref(), key) {
        Ok(obs) => fold.apply(meter, &facts.subject, facts.time_ms, &obs),
        Err(e) => metrics()
            .fold_skipped_total
            .with_label_values(&[e.code()])
            .inc(),
    }
}
