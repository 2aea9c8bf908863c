//! The Kafka source: consumes CloudEvents from topics and hands the engine
//! one partition batch at a time, together with the offset range it covers,
//! in one log write ([`EngineHandle::ingest_source`]).
//!
//! Exactly-once effect rests on the log, not on Kafka:
//! - The next offset of every partition is a record in the log, written in
//!   the same fsynced batch as the events it delivered. The engine refuses a
//!   batch that does not start where the stored position ends, so a batch can
//!   never land twice nor leave a hole.
//! - On assignment each partition starts at its stored position (or at the
//!   `auto.offset.reset` policy when the log has none). Kafka's committed
//!   offsets are written after the log batch is durable, as a hint for lag
//!   dashboards, and never read.
//! - A refused batch (`Conflict`, or the engine being at capacity) drops what
//!   is buffered for that partition, re-reads the stored position and seeks
//!   there: never forward.
//! - On revocation, batches not yet handed to the engine are abandoned and
//!   the one in the engine is awaited, so nothing of a partition lands after
//!   it was given up.
//!
//! Threads: one consumer thread polls librdkafka (rebalance callbacks run
//! there too), decodes messages and fills per-partition buffers; each
//! partition has a worker task on a small runtime that produces the batch's
//! dead letters (awaited) and then queues it in the engine, in offset order,
//! without waiting for the previous batch's answer (a second task awaits the
//! answers in order). A lag thread refreshes watermarks. Every buffer and queue
//! is bounded; when a partition's worker has `LANE_JOBS_MAX` batches and its
//! buffer reaches twice `batch_messages_max`, the consumer stops polling
//! until the engine answers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::mpsc;

use super::binding;
use super::health::SourceHealth;
use crate::config::KafkaConfig;
use crate::engine::protocol::{Ingest, Origin, SourcePositions};
use crate::engine::{EngineError, EngineHandle, IngestOutcome};
use crate::event::{Decoded, Rejection};
use crate::metrics::metrics;
use crate::record::OffsetDelta;

/// Batches per partition submitted and not yet answered; at the limit new
/// messages stay in the partition's buffer until one is answered.
const LANE_JOBS_MAX: usize = 4;
/// A buffer this many times `batch_messages_max` stops polling altogether
/// until the engine catches up. Partitions are not paused: librdkafka drops
/// a paused partition's prefetched messages and fetches them again.
const BUFFER_HARD_FACTOR: usize = 2;
/// `fetch.queue.backoff.ms` unless configured: how long librdkafka waits
/// before fetching again for a partition whose prefetch queue was full.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// Longest the consumer thread sleeps in `poll`.
const POLL_WAIT_MAX: Duration = Duration::from_millis(50);
/// How often consumer lag is refreshed from the brokers' watermarks.
const LAG_REFRESH: Duration = Duration::from_secs(5);
/// How long a watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before retrying a dead-letter produce or a refused batch.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How long a seek may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The source

/// A running Kafka consumer feeding an engine. Stop it before the engine
/// shuts down; dropping it stops it too.
pub struct KafkaSource {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaSource {
    /// Subscribes to the configured topics and starts consuming. Returns once
    /// the client is created; brokers may still be unreachable (the client
    /// keeps trying, and `/readyz` tells through `health`).
    pub fn start(
        cfg: &KafkaConfig,
        engine: EngineHandle,
        health: Arc<SourceHealth>,
    ) -> anyhow::Result<KafkaSource> {
        cfg.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keymeter-kafka-io")
            .enable_all()
            .build()?;
        let sink = match &cfg.dead_letter_topic {
            None => None,
            Some(topic) => Some(Arc::new(DeadLetterSink {
                producer: client_config(cfg)
                    .set("acks", "all")
                    .create()
                    .map_err(|e| anyhow::anyhow!("cannot create the dead-letter producer: {e}"))?,
                topic: topic.clone(),
                health: health.clone(),
            })),
        };
        let reset = match cfg.properties.get("auto.offset.reset").map(String::as_str) {
            None | Some("earliest" | "smallest" | "beginning") => Offset::Beginning,
            Some("latest" | "largest" | "end") => Offset::End,
            Some(other) => anyhow::bail!("kafka auto.offset.reset {other:?} is not supported"),
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let ctx = Ctx {
            engine,
            rt: runtime.handle().clone(),
            lanes: Mutex::new(Vec::new()),
            lane_ids: AtomicU64::new(1),
            reset,
            sink,
            done: done_tx,
            health,
        };
        let mut consumer_cfg = client_config(cfg);
        if !cfg.properties.contains_key("fetch.queue.backoff.ms") {
            // librdkafka's default (1 s) stalls a partition for a second
            // whenever its prefetch queue was full, which is the normal state
            // when the engine, not the broker, sets the pace: the queue then
            // drains long before the next fetch is sent. Measured: 130k →
            // 270k events/s (benches/kafka_ingest.rs).
            consumer_cfg.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
        }
        let consumer: BaseConsumer<Ctx> = consumer_cfg
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set_log_level(RDKafkaLogLevel::Warning)
            .create_with_context(ctx)
            .map_err(|e| anyhow::anyhow!("cannot create the Kafka consumer: {e}"))?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {topics:?}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let runner = Runner {
            consumer: Arc::new(consumer),
            done: done_rx,
            stop: stop.clone(),
            batch_messages_max: cfg.batch_messages_max,
            batch_wait: cfg.batch_wait,
            blocked: false,
        };
        tracing::info!(brokers = %cfg.brokers, topics = ?cfg.topics, group = %cfg.group, "Kafka source starting");
        let thread = std::thread::Builder::new()
            .name("keymeter-kafka".into())
            .spawn(move || {
                runner.run();
                runtime.shutdown_timeout(Duration::from_secs(5));
            })?;
        Ok(KafkaSource {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops consuming: batches already in the engine are awaited, the rest
    /// is abandoned (it is consumed again from the stored position on the
    /// next start), and the consumer leaves its group.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the Kafka consumer thread panicked");
            }
            tracing::info!("Kafka source stopped");
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Settings shared by the consumer and the dead-letter producer: brokers,
/// then every configured librdkafka property (security, timeouts, …).
fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        if k != "auto.offset.reset" {
            c.set(k, v);
        }
    }
    c
}

// ---------------------------------------------------------------------------
// Partition lanes

/// One assigned partition: its buffer, its position, and the worker that
/// hands its batches to the engine in order.
struct Lane {
    /// Distinguishes this lane from an earlier one of the same partition, so
    /// answers for abandoned work are recognised and ignored.
    id: u64,
    topic: String,
    partition: i32,
    /// Offset after the last message taken (buffered or submitted). `None`
    /// until the first message when the log has no position yet.
    next: Option<i64>,
    /// Position where the buffered (unsubmitted) messages start.
    from: i64,
    items: Vec<Decoded>,
    /// Offset of each buffered message.
    offsets: Vec<i64>,
    dead: Vec<DeadLetter>,
    opened_at: Instant,
    opened_ms: i64,
    /// Batches submitted and not answered yet.
    jobs: usize,
    /// The log holds a position for this partition. Until it does, the
    /// engine cannot refuse a batch that does not continue a refused one,
    /// so only one batch is in flight.
    positioned: bool,
    tx: mpsc::Sender<PartitionBatch>,
    abandon: Arc<AtomicBool>,
    worker: tokio::task::JoinHandle<()>,
}

/// A partition batch on its way to the engine.
struct PartitionBatch {
    lane: u64,
    items: Vec<Decoded>,
    offsets: Vec<i64>,
    dead: Vec<DeadLetter>,
    delta: OffsetDelta,
    received_ms: i64,
}

/// A worker's answer for one job.
struct BatchDone {
    lane: u64,
    delta: OffsetDelta,
    /// Indexes of the batch that were dead-lettered before the engine call.
    dead_letters: HashSet<u32>,
    result: Result<IngestOutcome, Failure>,
}

enum Failure {
    Abandoned,
    Engine(EngineError),
}

/// What the librdkafka callbacks need; owned by the consumer.
struct Ctx {
    engine: EngineHandle,
    rt: tokio::runtime::Handle,
    lanes: Mutex<Vec<Lane>>,
    lane_ids: AtomicU64,
    reset: Offset,
    sink: Option<Arc<DeadLetterSink>>,
    done: std::sync::mpsc::Sender<BatchDone>,
    health: Arc<SourceHealth>,
}

impl Ctx {
    fn lanes(&self) -> MutexGuard<'_, Vec<Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_lane(&self, topic: &str, partition: i32, next: Option<i64>) -> Lane {
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
    fn close_lanes(&self, lanes: Vec<Lane>) {
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
    /// the reset policy when the log has none.
    fn on_assign(&self, tpl: &mut TopicPartitionList) {
        let stored = match self.rt.block_on(self.engine.send(SourcePositions)) {
            Ok(p) => p,
            Err(e) => {
                // Without positions nothing may be consumed: assign no lanes,
                // so every message is ignored until the next assignment.
                tracing::error!(error = %e, "cannot read source positions; ignoring the assignment");
                return;
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
    }

    fn on_revoke(&self, tpl: Option<&TopicPartitionList>) {
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
        self.close_lanes(gone);
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {log_message}"),
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_connected(false);
        }
        tracing::warn!(error = %error, reason, "Kafka client error");
        self.health.error(format!("{error}: {reason}"));
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
                self.on_assign(tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if cooperative {
                    self.on_revoke(Some(tpl));
                    consumer.incremental_unassign(tpl)
                } else {
                    self.on_revoke(None);
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

// ---------------------------------------------------------------------------
// The consumer thread

struct Runner {
    consumer: Arc<BaseConsumer<Ctx>>,
    done: std::sync::mpsc::Receiver<BatchDone>,
    stop: Arc<AtomicBool>,
    batch_messages_max: usize,
    batch_wait: Duration,
    /// A buffer reached its hard bound: stop polling until answers arrive.
    blocked: bool,
}

impl Runner {
    fn ctx(&self) -> &Ctx {
        self.consumer.context()
    }

    fn run(mut self) {
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
                    tracing::warn!(error = %e, "Kafka consume error");
                    self.ctx().health.error(e.to_string());
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
                    .check(&event.ty, event.data())
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

/// Hands the lane's buffer to its worker, or pauses the partition when the
/// worker already has `LANE_JOBS_MAX` batches.
fn submit(lane: &mut Lane) {
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
            match consumer.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT) {
                Ok((low, high)) => {
                    health.set_connected(true);
                    let lag = high - position.unwrap_or(low);
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

// ---------------------------------------------------------------------------
// Partition workers and dead letters

/// A batch handed to the engine (or given up before), in submission order.
struct Sent {
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
async fn run_lane(
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
async fn await_answers(mut sent: mpsc::Receiver<Sent>, done: std::sync::mpsc::Sender<BatchDone>) {
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

/// A rejected message, kept to be produced to the dead-letter topic.
struct DeadLetter {
    index: u32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    rejection: Rejection,
}

impl DeadLetter {
    fn new(
        message: &BorrowedMessage<'_>,
        index: u32,
        headers: &[binding::Header<'_>],
        rejection: Rejection,
    ) -> DeadLetter {
        DeadLetter {
            index,
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
            rejection,
        }
    }
}

struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    health: Arc<SourceHealth>,
}

impl DeadLetterSink {
    /// Produces every letter and waits until each is acknowledged; failed
    /// ones are retried until delivered or the batch is abandoned. A retry
    /// after an ambiguous failure can deliver a letter twice.
    async fn deliver(
        &self,
        delta: &OffsetDelta,
        letters: &[DeadLetter],
        abandon: &AtomicBool,
    ) -> Result<(), Failure> {
        let m = metrics();
        let mut pending: Vec<&DeadLetter> = letters.iter().collect();
        while !pending.is_empty() {
            let mut retry = Vec::new();
            let mut in_flight = Vec::new();
            for letter in pending {
                let partition = delta.partition.to_string();
                let offset = letter.offset.to_string();
                let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len() + 5);
                for (key, value) in &letter.headers {
                    headers = headers.insert(Header {
                        key,
                        value: value.as_deref(),
                    });
                }
                for (key, value) in [
                    ("keymeter-reason", letter.rejection.message.as_str()),
                    ("keymeter-code", letter.rejection.code.as_str()),
                    ("keymeter-topic", delta.topic.as_str()),
                    ("keymeter-partition", partition.as_str()),
                    ("keymeter-offset", offset.as_str()),
                ] {
                    headers = headers.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    });
                }
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.topic).headers(headers);
                if let Some(key) = &letter.key {
                    record = record.key(key);
                }
                if let Some(value) = &letter.value {
                    record = record.payload(value);
                }
                match self.producer.send_result(record) {
                    Ok(delivery) => in_flight.push((letter, delivery)),
                    Err((e, _)) => {
                        self.note(&e);
                        retry.push(letter);
                    }
                }
            }
            for (letter, mut delivery) in in_flight {
                loop {
                    if abandon.load(Ordering::SeqCst) {
                        return Err(Failure::Abandoned);
                    }
                    match tokio::time::timeout(Duration::from_millis(200), &mut delivery).await {
                        Err(_elapsed) => continue,
                        Ok(Ok(Ok(_))) => {
                            m.kafka_dead_letters_total
                                .with_label_values(&["delivered"])
                                .inc();
                        }
                        Ok(Ok(Err((e, _)))) => {
                            self.note(&e);
                            retry.push(letter);
                        }
                        Ok(Err(_canceled)) => retry.push(letter),
                    }
                    break;
                }
            }
            if !retry.is_empty() {
                m.kafka_dead_letters_total
                    .with_label_values(&["retried"])
                    .inc_by(retry.len() as u64);
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            pending = retry;
        }
        Ok(())
    }

    fn note(&self, e: &KafkaError) {
        tracing::warn!(topic = %self.topic, error = %e, "dead-letter produce failed; retrying");
        self.health
            .error(format!("dead-letter produce to {}: {e}", self.topic));
    }
}
