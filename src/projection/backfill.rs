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
//!
//! A long past is counted in parts of at most [`PART_COUNTERS`] counters,
//! each ending at a record: the counters write a part in the same batch as
//! the mark's new position (`S` and the last seq counted), so memory stays
//! bounded and a restart resumes after the last part written, never
//! counting a part twice.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use super::{EventFacts, ProjectionError};
use crate::log::{LogDir, Seq};
use crate::meter::{CompiledMeter, Fold, MeterSet, UniqueKey};
use crate::record::Record;

/// Most counters in one part of a count.
pub const PART_COUNTERS: usize = 1 << 20;

/// A meter to count from `from` through `before - 1`.
pub struct Backfill {
    pub meter: CompiledMeter,
    pub before: Seq,
    /// The first seq not counted yet (1: none is).
    pub from: Seq,
}

/// A part of a job's count, to merge into the counters.
pub struct Counted {
    pub slug: String,
    pub before: Seq,
    /// The part holds the events of the log through this seq (and after the
    /// previous part's).
    pub through: Seq,
    /// The last part: the past is counted once this one is merged.
    pub last: bool,
    pub fold: Result<Fold, ProjectionError>,
}

/// One worker thread, started at the first job, taking jobs in order.
pub struct Worker {
    log: LogDir,
    /// The counters' key: a backfill merges into the same sets.
    unique_key: UniqueKey,
    jobs: Option<Sender<Backfill>>,
    done_tx: SyncSender<Counted>,
    done: Receiver<Counted>,
}

impl Worker {
    pub fn new(log: &LogDir, unique_key: &UniqueKey) -> Worker {
        // One part waits while the next is counted: memory stays at two parts.
        let (done_tx, done) = mpsc::sync_channel(1);
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
                        let slug = job.meter.slug().to_owned();
                        let before = job.before;
                        let mut send = |through, last, fold| {
                            let slug = slug.clone();
                            done.send(Counted {
                                slug,
                                before,
                                through,
                                last,
                                fold,
                            })
                            .is_ok()
                        };
                        let counted = count_parts(&log, &job, &key, PART_COUNTERS, &mut send);
                        if let Err(e) = counted {
                            if !send(before - 1, true, Err(e)) {
                                return;
                            }
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

/// Folds every event of the job's meter's type logged from `job.from`
/// through `job.before - 1`, handing `send` a part (the seq it ends at,
/// whether it is the last, its fold) whenever the fold holds more than
/// `part_counters` counters, and at the end. Stops early when `send` says so.
pub fn count_parts(
    log: &LogDir,
    job: &Backfill,
    key: &UniqueKey,
    part_counters: usize,
    send: &mut impl FnMut(Seq, bool, Result<Fold, ProjectionError>) -> bool,
) -> Result<(), ProjectionError> {
    let (meter, last) = (&job.meter, job.before.saturating_sub(1));
    let mut fold = Fold::default();
    let mut through = job.from.saturating_sub(1);
    if job.from <= last {
        for entry in log.read_range(job.from, last)? {
            let entry = entry?;
            let record =
                Record::decode(&entry.payload).map_err(|source| ProjectionError::Record {
                    seq: entry.seq,
                    source,
                })?;
            through = entry.seq;
            if let Some((e, _)) = record.event() {
                let Ok(facts) = EventFacts::from_logged(&e.raw, e.time_ms) else {
                    continue;
                };
                if facts.ty == meter.def().event_type {
                    fold_one(meter, key, &facts, &mut fold);
                }
            }
            let full = fold.len() >= part_counters && through < last;
            if full && !send(through, false, Ok(std::mem::take(&mut fold))) {
                return Ok(());
            }
        }
    }
    send(last.max(through), true, Ok(fold));
    Ok(())
}

/// Folds one event into `fold` for every meter of its type; a meter that
/// cannot read the event skips it, counted by reason (the writer skipped it
/// the same way, see [`MeterSet::check`]; a later meter may want other fields).
pub(super) fn fold_event(meters: &MeterSet, key: &UniqueKey, facts: &EventFacts, fold: &mut Fold) {
    if let Some(readings) = &facts.observations {
        let mut n = 0;
        for (meter, reading) in meters.for_type(&facts.ty).zip(readings) {
            match reading {
                Ok(obs) => fold.apply(meter, &facts.subject, facts.time_ms, obs),
                Err(reason) => fold.skip(meter.slug(), *reason),
            }
            n += 1;
        }
        assert_eq!(
            n,
            readings.len(),
            "writer and projector disagree on the meters of {:?}",
            facts.ty
        );
        return;
    }
    for meter in meters.for_type(&facts.ty) {
        fold_one(meter, key, facts, fold);
    }
}

/// Folds one logged event into `fold` for `meter`; an event the meter
/// cannot read is skipped, counted by reason.
pub(super) fn fold_one(
    meter: &CompiledMeter,
    key: &UniqueKey,
    facts: &EventFacts,
    fold: &mut Fold,
) {
    match meter.extract(facts.data.as_deref(), key) {
        Ok(obs) => fold.apply(meter, &facts.subject, facts.time_ms, &obs),
        Err(e) => fold.skip(meter.slug(), e.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Log, LogConfig};
    use crate::meter::{AggState, MeterDef};
    use crate::record::EventRecord;

    const KEY: UniqueKey = UniqueKey::from_bytes([3; 16]);

    fn meter() -> CompiledMeter {
        let def: MeterDef = serde_json::from_value(serde_json::json!({
            "slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n"
        }))
        .unwrap();
        def.validate().unwrap()
    }

    /// A log of `n` events a minute apart over 7 subjects, every fifth of
    /// another type.
    fn log(dir: &std::path::Path, n: usize) -> LogDir {
        let (mut log, _) = Log::open(dir, LogConfig::default()).unwrap();
        for i in 0..n {
            let ty = if i % 5 == 4 { "other" } else { "call" };
            let raw = format!(
                r#"{{"id":"e{i}","source":"s","type":"{ty}","subject":"c{}","data":{{"n":{i}}}}}"#,
                i % 7
            );
            let record = Record::Event(EventRecord {
                received_ms: 0,
                time_ms: i as i64 * 60_000,
                raw,
            });
            log.append_batch(&[record.encode()]).unwrap();
        }
        LogDir::disk(dir)
    }

    fn parts(log: &LogDir, from: Seq, before: Seq, part: usize) -> Vec<(Seq, bool, Fold)> {
        let job = Backfill {
            meter: meter(),
            before,
            from,
        };
        let mut out = Vec::new();
        count_parts(log, &job, &KEY, part, &mut |through, last, fold| {
            out.push((through, last, fold.unwrap()));
            true
        })
        .unwrap();
        out
    }

    fn merged(parts: Vec<(Seq, bool, Fold)>) -> Vec<(Vec<u8>, AggState)> {
        let mut all = Fold::default();
        for (_, _, fold) in parts {
            fold.merge_into(&mut all).unwrap();
        }
        all.drain_encoded()
    }

    /// Parts end at increasing seqs, only the last says so, each but the
    /// last holds at least the part size, and together they are the count
    /// in one piece; resuming after any part gives the same count.
    #[test]
    fn a_count_in_parts_adds_up_to_the_count_in_one_and_resumes_after_any_part() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 400);
        let whole = parts(&log, 1, 401, usize::MAX);
        assert_eq!(whole.len(), 1);
        assert_eq!((whole[0].0, whole[0].1), (400, true));
        let expected = merged(whole);
        assert_eq!(expected.len(), 320, "one counter per event of the type");

        let split = parts(&log, 1, 401, 25);
        assert!(split.len() > 5, "{} parts", split.len());
        let ends: Vec<Seq> = split.iter().map(|(t, _, _)| *t).collect();
        assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
        assert_eq!(split.iter().filter(|(_, last, _)| *last).count(), 1);
        assert!(split.last().unwrap().1);
        assert!(split[..split.len() - 1]
            .iter()
            .all(|(_, _, f)| f.len() >= 25));
        let resume_at = split[2].0 + 1;
        let first_three: Vec<_> = split.into_iter().take(3).collect();
        assert_eq!(merged(first_three).len(), 75);
        let mut again = parts(&log, 1, 401, 25);
        again.truncate(3);
        again.extend(parts(&log, resume_at, 401, 25));
        assert_eq!(merged(again), expected);
    }
}
