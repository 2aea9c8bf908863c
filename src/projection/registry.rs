//! The list of projections. Opening them, catching them up on start, the
//! projector's live fold, and `keymeter replay` all walk this one list, so a
//! new projection is one [`ProjectionSpec`] here and its own module.

use super::{
    billing, counters, docs, licenses, plans, Applied, EventFacts, OpenContext, Projection,
    ProjectionError, Store,
};
use crate::log::{self, Seq};
use crate::record::Record;

/// How to open one projection, and which sled trees hold its state.
#[derive(Clone, Copy)]
pub struct ProjectionSpec {
    pub name: &'static str,
    /// Emptied when the projection is rebuilt from the log.
    pub trees: &'static [&'static str],
    pub open: fn(&OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError>,
}

/// The projections an engine runs, in the order each batch is applied.
#[derive(Clone)]
pub struct Registry {
    specs: Vec<ProjectionSpec>,
}

impl Registry {
    /// Every projection keymeter has.
    pub fn standard() -> Registry {
        let spec = |name, trees, open| ProjectionSpec { name, trees, open };
        Registry {
            specs: vec![
                spec("counters", &["counters"], counters::open),
                spec("licenses", &["licenses"], licenses::open),
                spec("meters", &["meters"], docs::open_meters),
                spec("api_keys", &["api_keys"], docs::open_api_keys),
                spec("products", &["products"], docs::open_products),
                spec("quarantine", &["quarantine"], docs::open_quarantine),
                spec("sources", &["sources"], docs::open_sources),
                spec("billing", &["billing"], billing::open),
                spec("plans", &["plans"], plans::open_plans),
                spec("license_history", &["license_history"], plans::open_history),
                spec("migrations", &["migrations"], plans::open_migrations),
            ],
        }
    }

    /// This registry and one more projection, applied after the others.
    pub fn with(mut self, spec: ProjectionSpec) -> Registry {
        self.specs.push(spec);
        self
    }

    pub fn specs(&self) -> &[ProjectionSpec] {
        &self.specs
    }

    pub fn open(&self, ctx: &OpenContext<'_>) -> Result<Vec<Box<dyn Projection>>, ProjectionError> {
        self.specs.iter().map(|s| (s.open)(ctx)).collect()
    }

    /// Empties every projection's trees (the projections must be closed).
    pub fn clear(&self, store: &Store) -> Result<(), ProjectionError> {
        clear_trees(store, self.specs.iter().flat_map(|s| s.trees))
    }

    /// Empties the trees of the projection `name` (it must be closed).
    pub fn clear_projection(&self, store: &Store, name: &str) -> Result<(), ProjectionError> {
        clear_trees(
            store,
            self.specs
                .iter()
                .filter(|s| s.name == name)
                .flat_map(|s| s.trees),
        )
    }
}

fn clear_trees<'a>(
    store: &Store,
    trees: impl Iterator<Item = &'a &'static str>,
) -> Result<(), ProjectionError> {
    for name in trees {
        store.db.open_tree(name)?.clear()?;
    }
    store.db.flush()?;
    Ok(())
}

/// Reads the log from `from` through `to` in chunks and hands each chunk to
/// `apply`. Used for catch-up on start and by `keymeter replay`.
///
/// A second thread reads ahead: it checks the frames, decodes the records
/// and parses each event's facts (with its identity) once for every
/// projection, while this thread applies the chunk before. The two hand
/// chunks over through a queue of two, so memory stays at a few chunks.
pub fn replay_log(
    log: &log::LogDir,
    from: Seq,
    to: Seq,
    chunk_records: usize,
    mut apply: impl FnMut(&[Applied<'_>]) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    if from > to {
        return Ok(());
    }
    type Chunk = Vec<(Seq, Record, Option<EventFacts>)>;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, ProjectionError>>(2);
        // Applied chunks go back to the reader, which frees them: the
        // records' many small allocations are not the applying thread's work.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Chunk>();
        let reader = std::thread::Builder::new()
            .name("keymeter-replay-read".into())
            .spawn_scoped(scope, move || {
                let send = |chunk| {
                    done_rx.try_iter().for_each(drop);
                    tx.send(chunk).is_ok()
                };
                if let Err(e) = read_chunks(log, from, to, chunk_records, send) {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| ProjectionError::Backfill(format!("cannot start the log reader: {e}")))?;
        let mut applied = Ok(());
        for chunk in &rx {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    applied = Err(e);
                    break;
                }
            };
            let records: Vec<Applied<'_>> = chunk
                .iter()
                .map(|(seq, record, facts)| Applied {
                    seq: *seq,
                    record,
                    facts: facts.as_ref(),
                })
                .collect();
            if let Err(e) = apply(&records) {
                applied = Err(e);
                break;
            }
            drop(records);
            let _ = done_tx.send(chunk);
        }
        drop(rx); // a reader still sending stops
        reader.join().expect("the log reader does not panic");
        applied
    })
}

/// The reading half of [`replay_log`]: hands each chunk to `send` until it
/// says stop.
fn read_chunks(
    log: &log::LogDir,
    from: Seq,
    to: Seq,
    chunk_records: usize,
    mut send: impl FnMut(Result<Vec<(Seq, Record, Option<EventFacts>)>, ProjectionError>) -> bool,
) -> Result<(), ProjectionError> {
    let mut chunk = Vec::with_capacity(chunk_records);
    for entry in log.read_range(from, to)? {
        let entry = entry?;
        let record = Record::decode(&entry.payload).map_err(|source| ProjectionError::Record {
            seq: entry.seq,
            source,
        })?;
        // An event that does not parse is left to the projections, which
        // report it with its seq.
        let facts =
            (record.event()).and_then(|(e, _)| EventFacts::from_logged(&e.raw, e.time_ms).ok());
        chunk.push((entry.seq, record, facts));
        if chunk.len() >= chunk_records {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_records));
            if !send(Ok(full)) {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        send(Ok(chunk));
    }
    Ok(())
}
