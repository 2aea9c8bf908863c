//! The syncer: appends prepared batches to the log (one write + fdatasync
//! each) and hands them to the projector. Runs beside the writer so that the
//! next batch is prepared while this one syncs. Signs checkpoints, since it
//! holds the chain hash after every append.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use super::batch::{Batch, Job, Pending};
use super::protocol::StageError;
use crate::audit::{self, AnchorFile};
use crate::clock::Clock;
use crate::log::{Log, Seq};
use crate::metrics::metrics;
use crate::record::Record;

/// The syncer keeps its encoding buffer between batches up to this size.
const ENCODED_RETAINED_BYTES: usize = 32 << 20;

pub(crate) struct Syncer {
    pub log: Log,
    pub jobs: SyncSender<Job>,
    pub keys: Arc<crate::crypto::Keys>,
    pub clock: Arc<dyn Clock>,
    pub anchor: Option<AnchorFile>,
    /// The current batch's records, encoded back to back, and where each
    /// ends; reused from batch to batch.
    pub encoded: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Syncer {
    pub fn run(mut self, pending: Receiver<Pending>) -> Result<(), StageError> {
        while let Ok(next) = pending.recv() {
            let job = match next {
                Pending::Batch(job) => {
                    self.append(job.first_seq, &job.batch.records)?;
                    job
                }
                Pending::Checkpoint { seq } => self.checkpoint(seq)?,
            };
            self.jobs
                .send(job)
                .map_err(|_| StageError::PeerStopped("projector"))?;
        }
        Ok(())
    }

    /// Encodes the records into the syncer's own buffer (no allocation per
    /// record) and appends them as one batch starting at `first_seq`.
    fn append(&mut self, first_seq: Seq, records: &[Record]) -> Result<(), StageError> {
        if records.is_empty() {
            return Ok(());
        }
        self.encoded.clear();
        self.ends.clear();
        for record in records {
            record.encode_into(&mut self.encoded);
            self.ends.push(self.encoded.len());
        }
        let mut start = 0;
        let payloads: Vec<&[u8]> = self
            .ends
            .iter()
            .map(|&end| {
                let payload = &self.encoded[start..end];
                start = end;
                payload
            })
            .collect();
        let bytes = self.encoded.len();
        let started = Instant::now();
        let range = self
            .log
            .append_batch(&payloads)
            .inspect_err(|_| metrics().log_append_errors_total.inc())?;
        drop(payloads);
        if self.encoded.capacity() > ENCODED_RETAINED_BYTES {
            self.encoded = Vec::new();
        }
        let m = metrics();
        m.log_fsync_seconds.observe(started.elapsed().as_secs_f64());
        m.log_batches_total.inc();
        m.log_records_total.inc_by(records.len() as u64);
        m.log_bytes_total.inc_by(bytes as u64);
        m.log_batch_records.observe(records.len() as f64);
        m.log_head_seq.set(range.end as i64 - 1);
        assert_eq!(
            (range.start, range.end - range.start),
            (first_seq, records.len() as u64),
            "the log must assign the sequence numbers the writer planned"
        );
        Ok(())
    }

    /// Signs the chain through the head, appends the checkpoint at `seq`,
    /// copies it to the anchor file, and returns its job for the projector.
    fn checkpoint(&mut self, seq: Seq) -> Result<Job, StageError> {
        let covered = self.log.head_seq();
        assert_eq!(covered + 1, seq, "a checkpoint follows what it covers");
        let checkpoint = audit::sign_checkpoint(
            &self.keys,
            covered,
            self.log.head_hash(),
            self.clock.now_ms(),
        );
        let mut batch = Batch::with_capacity(1);
        batch.push(Record::Checkpoint(checkpoint.clone()), None);
        self.append(seq, &batch.records)?;
        metrics().audit_checkpoints_total.inc();
        if let Some(anchor) = &mut self.anchor {
            // The checkpoint is durable in the log; a missing anchor weakens
            // the evidence but loses nothing, so ingest goes on.
            if let Err(e) = anchor.append(&checkpoint) {
                metrics().audit_anchor_errors_total.inc();
                tracing::error!(
                    error = %e,
                    path = %anchor.path().display(),
                    seq = covered,
                    "cannot append the checkpoint to the audit anchor file"
                );
            }
        }
        tracing::debug!(seq, covered, "checkpoint appended");
        Ok(Job {
            first_seq: seq,
            batch,
            answers: Vec::new(),
        })
    }
}
