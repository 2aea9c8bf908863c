//! The consumer thread: polls librdkafka, fills the partition buffers,
//! hands full or aged buffers to the lanes' workers, and handles their
//! answers (position hints, rewinds after a refused batch). Also the lag
//! thread it starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::context::Ctx;
use super::dead_letter::DeadLetter;
use super::lanes::{submit, BatchDone, Failure, Lane};
use super::{
    BUFFER_HARD_FACTOR, LAG_REFRESH, POLL_WAIT_MAX, RETRY_BACKOFF, SEEK_TIMEOUT, WATERMARK_TIMEOUT,
};
use crate::engine::protocol::SourcePositions;
use crate::engine::{EngineError, IngestOutcome};
use crate::event::{Decoded, Rejection};
use crate::metrics::metrics;
use crate::record::OffsetDelta;
use crate::source::binding;

pub(super) struct Runner {
    pub(super) consumer: Arc<BaseConsumer<Ctx>>,
    pub(super) done: std::sync::mpsc::Receiver<BatchDone>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) batch_messages_max: usize,
    pub(super) batch_wait: Duration,
    /// A buffer reached its hard bound: stop polling until answers arrive.
    pub(super) blocked: bool,
}

impl Runner {
    fn ctx(&self) -> &Ctx {
        self.consumer.context()
    }

    pub(super) fn run(mut self) {
        let lag = {
            let consumer = self.consumer.clone();
            let stop = self.stop.clone();
            std::thread::Builder::new()
                .name("keymeter-kafka-lag".into())
                .spawn(move || refresh_lag(&consumer, &stop))
        };
        let mut checked_at = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if self.blocked {
                match self.done.recv_timeout(POLL_WAIT_MAX) {
                    Ok(done) => self.answered(done),
                    Err(_) => continue,
                }
                self.blocked = self.over_hard_bound();
                continue;
            }
            let consumer = self.consumer.clone();
            match consumer.poll(self.batch_wait.min(POLL_WAIT_MAX)) {
                Some(Ok(message)) => {
                    self.ctx().health.set_connected(true);
                    self.take(&message);
                }
                Some(Err(e)) => {
                    let health = &self.ctx().health;
                    let message = e.to_string();
                    if let Some(suppressed) = health.should_log("consume", &message) {
                        tracing::warn!(error = %e, suppressed, "Kafka consume error");
                    }
                    health.error(message);
                }
                None => {}
            }
            while let Ok(done) = self.done.try_recv() {
                self.answered(done);
            }
            if checked_at.elapsed() >= Duration::from_millis(1) {
                self.submit_aged();
                checked_at = Instant::now();
            }
        }
        self.finish();
        if let Ok(lag) = lag {
            let _ = lag.join();
        }
        self.ctx().health.stopped();
        // Dropping the consumer leaves the group (its revoke finds no lanes).
    }

    /// Waits for the batches already handed over, abandons the rest, and
    /// commits the final positions as a hint.
    fn finish(&mut self) {
        let lanes = std::mem::take(&mut *self.ctx().lanes());
        self.ctx().close_lanes(lanes);
        while let Ok(done) = self.done.try_recv() {
            if let Ok(outcome) = &done.result {
                count(outcome, &done);
                self.commit_hint(&done.delta);
            }
        }
    }

    fn over_hard_bound(&self) -> bool {
        let hard = self.batch_messages_max * BUFFER_HARD_FACTOR;
        self.ctx().lanes().iter().any(|l| l.items.len() >= hard)
    }

    /// Adds one message to its partition's buffer.
    fn take(&mut self, message: &BorrowedMessage<'_>) {
        let ctx = self.consumer.context();
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let mut lanes = ctx.lanes();
        let Some(lane) = lanes
            .iter_mut()
            .find(|l| l.partition == partition && l.topic == topic)
        else {
            tracing::debug!(
                topic,
                partition,
                offset,
                "message of an unassigned partition ignored"
            );
            return;
        };
        if lane.next.is_some_and(|next| offset < next) {
            // Delivered again after a seek or reassignment: already taken.
            return;
        }
        let now_ms = ctx.engine.shared.clock.now_ms();
        if lane.items.is_empty() {
            lane.from = lane.next.unwrap_or(offset);
            lane.opened_at = Instant::now();
            lane.opened_ms = now_ms;
            if offset > lane.from {
                tracing::info!(
                    topic,
                    partition,
                    from = lane.from,
                    to = offset,
                    "offsets skipped by Kafka (compaction, transaction markers or retention)"
                );
            }
        }
        let headers: Vec<binding::Header<'_>> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let decoded = binding::decode_message(
            message.payload(),
            &headers,
            now_ms,
            ctx.engine.shared.window,
        );
        let index = lane.items.len() as u32;
        if ctx.sink.is_some() {
            let rejection = match &decoded {
                Decoded::Invalid { rejection, .. } => Some(rejection.clone()),
                Decoded::Valid(event) => (ctx.engine.shared.meters.load())
                    .check(
                        &event.ty,
                        event.data(),
                        ctx.engine.shared.crypto.unique_key(),
                    )
                    .err()
                    .map(Rejection::from),
            };
            if let Some(rejection) = rejection {
                lane.dead
                    .push(DeadLetter::new(message, index, &headers, rejection));
            }
        }
        lane.items.push(decoded);
        lane.offsets.push(offset);
        lane.next = Some(offset + 1);
        if lane.items.len() >= self.batch_messages_max {
            submit(lane);
            if lane.items.len() >= self.batch_messages_max * BUFFER_HARD_FACTOR {
                if !self.blocked {
                    metrics().kafka_backpressure_waits_total.inc();
                }
                self.blocked = true;
            }
        }
    }

    fn submit_aged(&self) {
        let mut lanes = self.ctx().lanes();
        for lane in lanes.iter_mut() {
            if !lane.items.is_empty() && lane.opened_at.elapsed() >= self.batch_wait {
                submit(lane);
            }
        }
    }

    /// Handles a worker's answer.
    fn answered(&mut self, done: BatchDone) {
        let mut lanes = self.ctx().lanes();
        let Some(i) = lanes.iter().position(|l| l.id == done.lane) else {
            return; // the lane was closed; its work is someone else's now
        };
        lanes[i].jobs -= 1;
        match &done.result {
            Ok(outcome) => {
                count(outcome, &done);
                self.commit_hint(&done.delta);
                self.ctx().health.set_position(
                    &done.delta.topic,
                    done.delta.partition,
                    Some(done.delta.to),
                );
                let lane = &mut lanes[i];
                lane.positioned = true;
                if lane.items.len() >= self.batch_messages_max
                    || (!lane.items.is_empty() && lane.opened_at.elapsed() >= self.batch_wait)
                {
                    submit(lane);
                }
            }
            Err(Failure::Abandoned) => {}
            Err(Failure::Engine(EngineError::Stopped)) => {
                tracing::error!("the engine stopped; the Kafka source stops consuming");
                self.ctx()
                    .health
                    .error("the engine stopped; nothing more is consumed".into());
                self.stop.store(true, Ordering::SeqCst);
            }
            Err(Failure::Engine(e)) => {
                let conflict = matches!(e, EngineError::Conflict(_));
                let result = if conflict { "conflict" } else { "refused" };
                metrics()
                    .kafka_batches_total
                    .with_label_values(&[result])
                    .inc();
                tracing::warn!(topic = %done.delta.topic, partition = done.delta.partition, from = done.delta.from, to = done.delta.to, error = %e, "batch refused; rewinding to the stored position");
                self.ctx().health.error(format!(
                    "batch {}..{} of {}/{} refused: {e}",
                    done.delta.from, done.delta.to, done.delta.topic, done.delta.partition
                ));
                let old = lanes.swap_remove(i);
                drop(lanes);
                if !conflict {
                    std::thread::sleep(RETRY_BACKOFF);
                }
                self.rewind(old);
            }
        }
    }

    /// Replaces a lane by a fresh one at the partition's stored position.
    fn rewind(&mut self, old: Lane) {
        let ctx = self.ctx();
        let (topic, partition) = (old.topic.clone(), old.partition);
        ctx.close_lanes(vec![old]);
        let stored = match ctx.rt.block_on(ctx.engine.send(SourcePositions)) {
            Ok(p) => p.get(&(topic.clone(), partition)).copied(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read source positions; stopping");
                self.stop.store(true, Ordering::SeqCst);
                return;
            }
        };
        let lane = ctx.new_lane(&topic, partition, stored);
        let offset = stored.map_or(ctx.reset, Offset::Offset);
        if let Err(e) = self.consumer.seek(&topic, partition, offset, SEEK_TIMEOUT) {
            // Without a seek the partition cannot continue safely; leave it
            // unassigned in keymeter (its messages are ignored) and say so.
            tracing::error!(topic = %topic, partition, error = %e, "cannot seek; the partition is ignored until the next rebalance");
            ctx.health
                .error(format!("cannot seek {topic}/{partition}: {e}"));
            return;
        }
        let assigned = ctx.health.set_position(&topic, partition, stored);
        metrics().kafka_assigned_partitions.set(assigned as i64);
        ctx.lanes().push(lane);
    }

    /// Commits a durable position to Kafka. Only a hint for lag tooling:
    /// keymeter never reads it back.
    fn commit_hint(&self, delta: &OffsetDelta) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&delta.topic, delta.partition, Offset::Offset(delta.to))
            .is_ok()
        {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit (lag hint) failed");
            }
        }
    }
}

fn count(outcome: &IngestOutcome, done: &BatchDone) {
    let m = metrics();
    m.kafka_batches_total.with_label_values(&["written"]).inc();
    m.kafka_messages_total
        .with_label_values(&["accepted"])
        .inc_by(u64::from(outcome.accepted));
    m.kafka_messages_total
        .with_label_values(&["duplicate"])
        .inc_by(u64::from(outcome.duplicates));
    m.kafka_messages_total
        .with_label_values(&["rejected"])
        .inc_by(outcome.rejected.len() as u64);
    let missed: Vec<_> = outcome
        .rejected
        .iter()
        .filter(|r| !done.dead_letters.contains(&r.index))
        .collect();
    if !done.dead_letters.is_empty() || !missed.is_empty() {
        // Only checked when a dead-letter topic is configured (the set is
        // filled only then). A meter created between the pre-check and the
        // engine's check can reject a message that was not dead-lettered;
        // it is in the quarantine all the same.
        for r in &missed {
            tracing::warn!(topic = %done.delta.topic, partition = done.delta.partition, index = r.index, code = %r.code, "rejected after the dead-letter check (meters changed meanwhile); it is in the quarantine only");
        }
        m.kafka_dead_letters_total
            .with_label_values(&["late"])
            .inc_by(missed.len() as u64);
    }
}

/// Refreshes `keymeter_kafka_lag_records` from the brokers' high watermarks,
/// and the connection state with it.
fn refresh_lag(consumer: &BaseConsumer<Ctx>, stop: &AtomicBool) {
    let health = consumer.context().health.clone();
    let mut refreshed_at: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        if refreshed_at.is_some_and(|t| t.elapsed() < LAG_REFRESH) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        refreshed_at = Some(Instant::now());
        for ((topic, partition), position) in health.positions() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let asked_ms = chrono::Utc::now().timestamp_millis();
            match consumer.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT) {
                Ok((low, high)) => {
                    health.set_connected(true);
                    let lag = high - position.unwrap_or(low);
                    if lag <= 0 {
                        health.caught_up(&topic, partition, asked_ms);
                    }
                    metrics()
                        .kafka_lag_records
                        .with_label_values(&[&topic, &partition.to_string()])
                        .set(lag.max(0));
                }
                Err(e) => {
                    health.set_connected(false);
                    health.error(format!("watermarks of {topic}/{partition}: {e}"));
                    break;
                }
            }
        }
    }
}
