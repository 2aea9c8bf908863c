//! The consumer's context: the partition lanes and what the librdkafka
//! callbacks need, run on the consumer thread. Assignment opens a lane at
//! each partition's stored position; revocation closes lanes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::mpsc;

use super::dead_letter::DeadLetterSink;
use super::lanes::{await_answers, run_lane, BatchDone, Lane};
use super::LANE_JOBS_MAX;
use crate::engine::protocol::SourcePositions;
use crate::engine::EngineHandle;
use crate::metrics::metrics;
use crate::source::health::SourceHealth;

/// What the librdkafka callbacks need; owned by the consumer.
pub(super) struct Ctx {
    pub(super) engine: EngineHandle,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) lanes: Mutex<Vec<Lane>>,
    pub(super) lane_ids: AtomicU64,
    pub(super) reset: Offset,
    pub(super) sink: Option<Arc<DeadLetterSink>>,
    pub(super) done: std::sync::mpsc::Sender<BatchDone>,
    pub(super) health: Arc<SourceHealth>,
}

impl Ctx {
    pub(super) fn lanes(&self) -> MutexGuard<'_, Vec<Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn new_lane(&self, topic: &str, partition: i32, next: Option<i64>) -> Lane {
        let id = self.lane_ids.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(LANE_JOBS_MAX);
        let abandon = Arc::new(AtomicBool::new(false));
        // The answers task ends only after the submitting task has ended and
        // every batch it queued in the engine is answered: awaiting it is
        // awaiting everything of the lane that reached the engine.
        let (sent_tx, sent_rx) = mpsc::channel(LANE_JOBS_MAX);
        self.rt.spawn(run_lane(
            rx,
            abandon.clone(),
            self.engine.clone(),
            self.sink.clone(),
            sent_tx,
        ));
        let worker = self.rt.spawn(await_answers(sent_rx, self.done.clone()));
        Lane {
            id,
            topic: topic.to_owned(),
            partition,
            next,
            from: next.unwrap_or(0),
            items: Vec::new(),
            offsets: Vec::new(),
            dead: Vec::new(),
            opened_at: Instant::now(),
            opened_ms: 0,
            jobs: 0,
            positioned: next.is_some(),
            tx,
            abandon,
            worker,
        }
    }

    /// Abandons what the lane has not handed to the engine and waits for
    /// what it has.
    pub(super) fn close_lanes(&self, lanes: Vec<Lane>) {
        let mut workers = Vec::new();
        for lane in lanes {
            lane.abandon.store(true, Ordering::SeqCst);
            drop(lane.tx);
            workers.push(lane.worker);
            metrics()
                .kafka_lag_records
                .remove_label_values(&[&lane.topic, &lane.partition.to_string()])
                .ok();
            let assigned = self.health.unassign(&lane.topic, lane.partition);
            metrics().kafka_assigned_partitions.set(assigned as i64);
        }
        for worker in workers {
            if self.rt.block_on(worker).is_err() {
                tracing::error!("a Kafka partition worker panicked");
            }
        }
    }

    /// Where each newly assigned partition starts: its stored position, or
    /// the reset policy when the log has none. Returns the stored positions
    /// of the assigned partitions.
    fn on_assign(&self, tpl: &mut TopicPartitionList) -> Vec<(String, i32, i64)> {
        let stored = match self.rt.block_on(self.engine.send(SourcePositions)) {
            Ok(p) => p,
            Err(e) => {
                // Without positions nothing may be consumed: assign no lanes,
                // so every message is ignored until the next assignment.
                tracing::error!(error = %e, "cannot read source positions; ignoring the assignment");
                return Vec::new();
            }
        };
        let mut lanes = Vec::new();
        for elem in tpl.elements() {
            let key = (elem.topic().to_owned(), elem.partition());
            let next = stored.get(&key).copied();
            lanes.push(self.new_lane(&key.0, key.1, next));
        }
        for lane in &lanes {
            let offset = lane.next.map_or(self.reset, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(&lane.topic, lane.partition, offset) {
                tracing::error!(error = %e, "cannot set the start offset");
            }
            tracing::info!(topic = %lane.topic, partition = lane.partition, start = ?offset, "partition assigned");
            let assigned = self
                .health
                .set_position(&lane.topic, lane.partition, lane.next);
            metrics().kafka_assigned_partitions.set(assigned as i64);
        }
        let replaced: Vec<Lane> = {
            let mut current = self.lanes();
            let mut replaced = Vec::new();
            for lane in lanes {
                if let Some(i) = current
                    .iter()
                    .position(|l| l.topic == lane.topic && l.partition == lane.partition)
                {
                    replaced.push(std::mem::replace(&mut current[i], lane));
                } else {
                    current.push(lane);
                }
            }
            replaced
        };
        self.close_lanes(replaced);
        tpl.elements()
            .iter()
            .filter_map(|e| {
                let key = (e.topic().to_owned(), e.partition());
                stored.get(&key).map(|next| (key.0, key.1, *next))
            })
            .collect()
    }

    /// Closes the revoked partitions' lanes; returns the positions the log
    /// holds for them once everything they handed over is answered.
    fn on_revoke(&self, tpl: Option<&TopicPartitionList>) -> Vec<(String, i32, i64)> {
        let gone: Vec<Lane> = {
            let mut lanes = self.lanes();
            let revoked = |l: &Lane| {
                tpl.is_none_or(|tpl| tpl.find_partition(&l.topic, l.partition).is_some())
            };
            let (gone, kept) = std::mem::take(&mut *lanes).into_iter().partition(revoked);
            *lanes = kept;
            gone
        };
        for lane in &gone {
            tracing::info!(topic = %lane.topic, partition = lane.partition, "partition revoked");
        }
        let revoked: Vec<(String, i32)> = gone
            .iter()
            .map(|l| (l.topic.clone(), l.partition))
            .collect();
        self.close_lanes(gone);
        if revoked.is_empty() {
            return Vec::new();
        }
        let stored = match self.rt.block_on(self.engine.send(SourcePositions)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read source positions to commit on revocation");
                return Vec::new();
            }
        };
        revoked
            .into_iter()
            .filter_map(|key| {
                let next = stored.get(&key).copied();
                next.map(|next| (key.0, key.1, next))
            })
            .collect()
    }

    /// Commits the log's positions to Kafka, so the group's committed
    /// offsets (what lag tools and any other reader of the group see) match
    /// the log across every rebalance, not only after the next batch. A
    /// hint: keymeter never reads them back.
    fn commit_positions(&self, consumer: &BaseConsumer<Self>, positions: &[(String, i32, i64)]) {
        if positions.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in positions {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit (lag hint) on rebalance failed");
        }
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let error = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => true,
            RDKafkaLogLevel::Warning => false,
            _ => {
                tracing::debug!(facility = fac, "librdkafka: {log_message}");
                return;
            }
        };
        // During an outage librdkafka repeats itself many times a second.
        let Some(suppressed) = self.health.should_log(fac, log_message) else {
            return;
        };
        if error {
            tracing::error!(facility = fac, suppressed, "librdkafka: {log_message}");
        } else {
            tracing::warn!(facility = fac, suppressed, "librdkafka: {log_message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_connected(false);
        }
        let message = format!("{error}: {reason}");
        if let Some(suppressed) = self.health.should_log("client", &message) {
            tracing::warn!(error = %error, reason, suppressed, "Kafka client error");
        }
        self.health.error(message);
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.on_assign(tpl);
                self.commit_positions(consumer, &stored);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Sent before the partitions are given up, so the next
                // owner's group offsets start where this log ends. Async:
                // a coordinator that cannot be reached must not hold the
                // rebalance up (the offsets are a hint).
                let stored = self.on_revoke(cooperative.then_some(&*tpl));
                self.commit_positions(consumer, &stored);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                self.health.error(format!("rebalance failed: {other:?}"));
                self.on_revoke(None);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot apply the partition assignment");
            self.health
                .error(format!("cannot apply the partition assignment: {e}"));
        }
    }
}
