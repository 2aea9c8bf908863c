//! The projector: folds each durable batch into the projections, lets each
//! one that changed republish its readers' snapshot, and only then sends the
//! batch's answers, so a 2xx means durable *and* visible to queries. Flushes
//! the projections to sled about once a second (or when one holds too much
//! unflushed state).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::Job;
use super::protocol::StageError;
use super::{report_progress, Shared};
use crate::projection::{Applied, Projection};

/// How often the projector writes its overlay and checkpoints to sled.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct Projector {
    pub projections: Vec<Box<dyn Projection>>,
    pub shared: Arc<Shared>,
}

impl Projector {
    pub fn run(mut self, jobs: Receiver<Job>) -> Result<(), StageError> {
        let mut flushed_at = Instant::now();
        loop {
            let wait = FLUSH_INTERVAL.saturating_sub(flushed_at.elapsed());
            match jobs.recv_timeout(wait) {
                Ok(job) => self.apply(job)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if flushed_at.elapsed() >= FLUSH_INTERVAL
                || self.projections.iter().any(|p| p.wants_flush())
            {
                self.flush()?;
                flushed_at = Instant::now();
            }
        }
        self.flush()?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        for p in &mut self.projections {
            p.flush()?;
        }
        let head = self.shared.head_seq.load(Ordering::SeqCst);
        let progress: Vec<_> = self
            .projections
            .iter()
            .map(|p| (p.name(), p.flushed()))
            .collect();
        report_progress(head, &progress);
        Ok(())
    }

    fn apply(&mut self, job: Job) -> Result<(), StageError> {
        if job.batch.is_empty() {
            for answer in job.answers {
                answer();
            }
            return Ok(());
        }
        let applied: Vec<Applied<'_>> = job
            .batch
            .records
            .iter()
            .zip(&job.batch.facts)
            .enumerate()
            .map(|(i, (record, facts))| Applied {
                seq: job.first_seq + i as u64,
                record,
                facts: facts.as_ref(),
            })
            .collect();
        let last = job.first_seq + job.batch.len() as u64 - 1;
        for p in &mut self.projections {
            if p.apply(&applied)? {
                p.publish()?;
            }
        }
        self.shared.head_seq.store(last, Ordering::SeqCst);
        self.shared.applied_seq.store(last, Ordering::SeqCst);
        for answer in job.answers {
            answer();
        }
        Ok(())
    }
}
