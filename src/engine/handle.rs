//! The way into the engine: [`EngineHandle`] queues typed requests to the
//! writer, each with its reply, through one FIFO queue of type-erased calls.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::batch::{Answer, Batch};
use super::decide::{Request, WriterState};
use super::protocol::EngineError;
use super::Shared;
use crate::metrics::metrics;

pub type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// A request with its reply, its type erased so one queue carries them all.
pub(crate) trait Call: Send {
    fn records_max(&self) -> usize;
    /// Decides the request into `batch` and returns the answer to send once
    /// the batch is durable.
    fn run(self: Box<Self>, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Answer;
}

struct Queued<R: Request> {
    request: R,
    reply: Option<Reply<R::Output>>,
}

impl<R: Request> Call for Queued<R> {
    fn records_max(&self) -> usize {
        self.request.records_max()
    }

    fn run(self: Box<Self>, state: &mut WriterState, now_ms: i64, batch: &mut Batch) -> Answer {
        let Queued { request, reply } = *self;
        let value = request.decide(state, now_ms, batch);
        Box::new(move || {
            if let Some(reply) = reply {
                let _ = reply.send(value);
            }
        })
    }
}

/// What travels through the writer's queue.
pub(crate) enum Command {
    Call(Box<dyn Call>),
    /// Look at the clock: a checkpoint may be due (sent periodically; no
    /// records of its own).
    CheckpointTick,
}

impl Command {
    pub(crate) fn unanswered<R: Request>(request: R) -> Command {
        Command::Call(Box::new(Queued {
            request,
            reply: None,
        }))
    }

    pub(crate) fn records_max(&self) -> usize {
        match self {
            Command::Call(call) => call.records_max(),
            Command::CheckpointTick => 0,
        }
    }
}

/// A cheap, cloneable way in: requests to the writer, reads from `shared`.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub shared: Arc<Shared>,
}

impl EngineHandle {
    /// Queues `request` and waits for its answer, which comes once the
    /// records it produced are durable and applied.
    pub async fn send<R: Request>(&self, request: R) -> Result<R::Output, EngineError> {
        self.submit(request)
            .await?
            .await
            .map_err(|_| EngineError::Stopped)?
    }

    /// Queues `request` and returns once it is in the writer's queue, with
    /// the receiver of its answer. The queue is FIFO, so requests queued in
    /// order from one task are decided in that order, and several can be in
    /// flight (the Kafka source keeps a partition's batches in order so).
    pub async fn submit<R: Request>(
        &self,
        request: R,
    ) -> Result<oneshot::Receiver<Result<R::Output, EngineError>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        metrics()
            .writer_queue_depth
            .set((self.tx.max_capacity() - self.tx.capacity()) as i64);
        let command = Command::Call(Box::new(Queued {
            request,
            reply: Some(reply),
        }));
        self.tx
            .send(command)
            .await
            .map_err(|_| EngineError::Stopped)?;
        Ok(rx)
    }
}
