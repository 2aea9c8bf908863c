//! The projector: folds each durable batch into the projections, republishes
//! the readers' snapshots, and only then sends the batch's answers, so a 2xx
//! means durable *and* visible to queries. Flushes the projections to sled
//! about once a second (or when the counter overlay grows large).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::Job;
use super::protocol::StartError;
use super::{report_progress, Shared};
use crate::auth::KeyRing;
use crate::projection::licenses::Licenses;
use crate::projection::{Applied, Counters, Documents};

/// How often the projector writes its overlay and checkpoints to sled.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Flush early when this many counter states are waiting.
pub(crate) const OVERLAY_STATES_MAX: usize = 200_000;

pub(crate) struct Projector {
    pub counters: Counters,
    pub docs: Documents,
    pub licenses: Licenses,
    pub shared: Arc<Shared>,
}

impl Projector {
    pub fn run(mut self, jobs: Receiver<Job>) -> Result<(), StartError> {
        let mut flushed_at = Instant::now();
        loop {
            let wait = FLUSH_INTERVAL.saturating_sub(flushed_at.elapsed());
            match jobs.recv_timeout(wait) {
                Ok(job) => self.apply(job)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if flushed_at.elapsed() >= FLUSH_INTERVAL
                || self.counters.overlay_len() > OVERLAY_STATES_MAX
            {
                self.flush()?;
                flushed_at = Instant::now();
            }
        }
        self.flush()?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StartError> {
        {
            // Usage cache entries read sled + overlay under this lock.
            let _usage = self.shared.usage.lock();
            self.counters.flush()?;
        }
        self.docs.flush()?;
        self.licenses.flush()?;
        let head = self.shared.head_seq.load(Ordering::SeqCst);
        let mut progress = vec![
            ("counters", self.counters.flushed()),
            ("licenses", self.licenses.applied()),
        ];
        progress.extend(self.docs.applied());
        report_progress(head, &progress);
        Ok(())
    }

    fn apply(&mut self, job: Job) -> Result<(), StartError> {
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
        {
            let mut usage = self.shared.usage.lock();
            self.counters.apply(&applied)?;
            usage.observe(&applied, self.counters.meters());
        }
        let changed = self.licenses.apply(&applied)?;
        if !changed.is_empty() {
            self.shared.licenses.publish(self.licenses.book(), &changed);
        }
        let changed_docs = self.docs.apply(&applied)?;
        if changed_docs.products {
            let ring = crate::product::ProductRing::build(
                &self.shared.store.products()?,
                &self.shared.crypto,
            )
            .map_err(StartError::Other)?;
            crate::product::publish(&self.shared.products, ring);
        }
        if changed_docs.meters {
            self.shared
                .meters
                .store(Arc::new(self.counters.meters().clone()));
        }
        if changed_docs.keys {
            let keys = KeyRing::from_records(self.shared.store.api_keys()?);
            self.shared.keys.store(Arc::new(keys));
        }
        self.shared.head_seq.store(last, Ordering::SeqCst);
        self.shared.applied_seq.store(last, Ordering::SeqCst);
        for answer in job.answers {
            answer();
        }
        Ok(())
    }
}
