//! Partition lanes: what the consumer thread keeps of each assigned
//! partition, the batches it hands over, and the worker tasks that pass
//! them to the engine in offset order and await the answers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::dead_letter::{Abandoned, DeadLetter, DeadLetterSink};
use super::LANE_JOBS_MAX;
use crate::engine::protocol::{Ingest, Origin};
use crate::engine::{EngineError, EngineHandle, IngestOutcome};
use crate::event::Decoded;
use crate::record::OffsetDelta;

/// One assigned partition: its buffer, its position, and the worker that
/// hands its batches to the engine in order.
pub(super) struct Lane {
    /// Distinguishes this lane from an earlier one of the same partition, so
    /// answers for abandoned work are recognised and ignored.
    pub(super) id: u64,
    pub(super) topic: String,
    pub(super) partition: i32,
    /// Offset after the last message taken (buffered or submitted). `None`
    /// until the first message when the log has no position yet.
    pub(super) next: Option<i64>,
    /// Position where the buffered (unsubmitted) messages start.
    pub(super) from: i64,
    pub(super) items: Vec<Decoded>,
    /// Offset of each buffered message.
    pub(super) offsets: Vec<i64>,
    pub(super) dead: Vec<DeadLetter>,
    pub(super) opened_at: Instant,
    pub(super) opened_ms: i64,
    /// Batches submitted and not answered yet.
    pub(super) jobs: usize,
    /// The log holds a position for this partition. Until it does, the
    /// engine cannot refuse a batch that does not continue a refused one,
    /// so only one batch is in flight.
    pub(super) positioned: bool,
    pub(super) tx: mpsc::Sender<PartitionBatch>,
    pub(super) abandon: Arc<AtomicBool>,
    pub(super) worker: tokio::task::JoinHandle<()>,
}

/// A partition batch on its way to the engine.
pub(super) struct PartitionBatch {
    lane: u64,
    items: Vec<Decoded>,
    offsets: Vec<i64>,
    dead: Vec<DeadLetter>,
    delta: OffsetDelta,
    received_ms: i64,
}

/// A worker's answer for one job.
pub(super) struct BatchDone {
    pub(super) lane: u64,
    pub(super) delta: OffsetDelta,
    /// Indexes of the batch that were dead-lettered before the engine call.
    pub(super) dead_letters: HashSet<u32>,
    pub(super) result: Result<IngestOutcome, Failure>,
}

pub(super) enum Failure {
    Abandoned,
    Engine(EngineError),
}

impl From<Abandoned> for Failure {
    fn from(_: Abandoned) -> Failure {
        Failure::Abandoned
    }
}

/// Hands the lane's buffer to its worker, or pauses the partition when the
/// worker already has `LANE_JOBS_MAX` batches.
pub(super) fn submit(lane: &mut Lane) {
    if lane.items.is_empty() {
        return;
    }
    let in_flight_max = if lane.positioned { LANE_JOBS_MAX } else { 1 };
    if lane.jobs >= in_flight_max {
        // Held in the buffer; the consumer stops polling once a buffer
        // reaches its hard bound. The partition is not paused: librdkafka
        // drops a paused partition's prefetched messages and fetches them
        // again on resume.
        return;
    }
    let to = lane
        .next
        .expect("a lane with buffered messages has a position");
    // The next batch likely matches this one's size: room for that many
    // messages spares the buffer's growth and copies.
    let room = lane.items.len();
    let job = PartitionBatch {
        lane: lane.id,
        items: std::mem::replace(&mut lane.items, Vec::with_capacity(room)),
        offsets: std::mem::replace(&mut lane.offsets, Vec::with_capacity(room)),
        dead: std::mem::take(&mut lane.dead),
        delta: OffsetDelta {
            topic: lane.topic.clone(),
            partition: lane.partition,
            from: lane.from,
            to,
        },
        received_ms: lane.opened_ms,
    };
    lane.from = to;
    // The channel holds LANE_JOBS_MAX and `jobs` counts what it holds plus
    // what the worker is on, so it cannot be full; closed means the worker
    // is gone, which only a panic does.
    lane.tx
        .try_send(job)
        .unwrap_or_else(|_| panic!("the worker of {}/{} is gone", lane.topic, lane.partition));
    lane.jobs += 1;
}

/// A batch handed to the engine (or given up before), in submission order.
pub(super) struct Sent {
    lane: u64,
    delta: OffsetDelta,
    dead_letters: HashSet<u32>,
    answer: Result<Answer, Failure>,
}

type Answer = tokio::sync::oneshot::Receiver<Result<IngestOutcome, EngineError>>;

/// Hands one partition's batches to the engine, in offset order. It does not
/// wait for an answer before queueing the next batch: the engine's queue is
/// FIFO, so the batches land in order, each continuing the one before (a
/// refused batch makes every later one refused too, by the offset check).
pub(super) async fn run_lane(
    mut jobs: mpsc::Receiver<PartitionBatch>,
    abandon: Arc<AtomicBool>,
    engine: EngineHandle,
    sink: Option<Arc<DeadLetterSink>>,
    sent: mpsc::Sender<Sent>,
) {
    while let Some(job) = jobs.recv().await {
        if abandon.load(Ordering::SeqCst) {
            continue;
        }
        let lane = job.lane;
        let delta = job.delta.clone();
        let dead_letters = job.dead.iter().map(|d| d.index).collect();
        let answer = process(job, &abandon, &engine, sink.as_deref()).await;
        let sent_msg = Sent {
            lane,
            delta,
            dead_letters,
            answer,
        };
        if sent.send(sent_msg).await.is_err() {
            break;
        }
    }
}

/// Awaits the engine's answers of one partition in submission order and
/// reports them to the consumer thread.
pub(super) async fn await_answers(
    mut sent: mpsc::Receiver<Sent>,
    done: std::sync::mpsc::Sender<BatchDone>,
) {
    while let Some(s) = sent.recv().await {
        let result = match s.answer {
            Ok(answer) => answer
                .await
                .unwrap_or(Err(EngineError::Stopped))
                .map_err(Failure::Engine),
            Err(failure) => Err(failure),
        };
        let done_msg = BatchDone {
            lane: s.lane,
            delta: s.delta,
            dead_letters: s.dead_letters,
            result,
        };
        if done.send(done_msg).is_err() {
            break;
        }
    }
}

async fn process(
    job: PartitionBatch,
    abandon: &AtomicBool,
    engine: &EngineHandle,
    sink: Option<&DeadLetterSink>,
) -> Result<Answer, Failure> {
    if let Some(sink) = sink {
        // The partition must not move past a dead letter that is not
        // delivered: produce them all, then hand the offsets over.
        sink.deliver(&job.delta, &job.dead, abandon).await?;
    }
    if abandon.load(Ordering::SeqCst) {
        return Err(Failure::Abandoned);
    }
    engine
        .submit(Ingest {
            items: job.items,
            received_ms: job.received_ms,
            origin: Origin::Kafka {
                delta: job.delta,
                offsets: job.offsets,
            },
        })
        .await
        .map_err(Failure::Engine)
}
