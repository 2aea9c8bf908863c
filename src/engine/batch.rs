//! What travels down the pipeline: the records a batch of requests produced
//! (writer → syncer → projector) and the answers that wait for them. A leaf,
//! so the stages and the decisions depend on it and not on each other.

use crate::log::Seq;
use crate::projection::EventFacts;
use crate::record::Record;

/// Sends an answer once its batch is durable and applied.
pub type Answer = Box<dyn FnOnce() + Send>;

/// The records one batch of requests produced, in log order, with each
/// accepted event's parsed facts (so the projector does not parse them again).
#[derive(Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub facts: Vec<Option<EventFacts>>,
}

impl Batch {
    /// Room for `records` records, so that assembling a batch does not grow
    /// (and copy) its vectors.
    pub fn with_capacity(records: usize) -> Batch {
        Batch {
            records: Vec::with_capacity(records),
            facts: Vec::with_capacity(records),
        }
    }

    pub fn push(&mut self, record: Record, facts: Option<EventFacts>) {
        self.records.push(record);
        self.facts.push(facts);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// A batch on its way to the log and the projector, with the answers to send
/// once it is applied.
pub(crate) struct Job {
    pub first_seq: Seq,
    pub batch: Batch,
    pub answers: Vec<Answer>,
}

/// Work on its way to the log, in log order.
pub(crate) enum Pending {
    /// A prepared batch.
    Batch(Job),
    /// Sign the chain through the current head and append that checkpoint as
    /// a batch of its own, at `seq` (reserved by the writer).
    Checkpoint { seq: Seq },
}
