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

mod context;
mod dead_letter;
mod lanes;
mod runner;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::Offset;

use super::health::SourceHealth;
use crate::config::KafkaConfig;
use crate::engine::EngineHandle;
use context::Ctx;
use dead_letter::DeadLetterSink;
use runner::Runner;

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
        let sink = DeadLetterSink::create(cfg, &health)?;
        let (reset, _) = reset_policy(cfg)?;
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
        let consumer = subscribe(cfg, ctx)?;
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
    for (k, v) in cfg.properties.iter() {
        if k != "auto.offset.reset" {
            c.set(k, v);
        }
    }
    c
}

/// Where a partition starts when the log holds no position for it, or when
/// its position is no longer in the topic (retention deleted it): the
/// configured `auto.offset.reset`, earliest by default. Returns the offset
/// and the value librdkafka is given.
fn reset_policy(cfg: &KafkaConfig) -> anyhow::Result<(Offset, &'static str)> {
    match cfg.properties.get("auto.offset.reset").map(String::as_str) {
        None | Some("earliest" | "smallest" | "beginning") => Ok((Offset::Beginning, "earliest")),
        Some("latest" | "largest" | "end") => Ok((Offset::End, "latest")),
        Some(other) => anyhow::bail!("kafka auto.offset.reset {other:?} is not supported"),
    }
}

/// Creates the consumer around the callbacks' context and subscribes it to
/// the configured topics. librdkafka neither commits nor stores offsets on
/// its own: positions live in the log.
fn subscribe(cfg: &KafkaConfig, ctx: Ctx) -> anyhow::Result<BaseConsumer<Ctx>> {
    let mut consumer_cfg = client_config(cfg);
    if !cfg.properties.contains_key("fetch.queue.backoff.ms") {
        // librdkafka's default (1 s) stalls a partition for a second
        // whenever its prefetch queue was full, which is the normal state
        // when the engine, not the broker, sets the pace: the queue then
        // drains long before the next fetch is sent. Measured: 130k →
        // 270k events/s (benches/kafka_ingest.rs).
        consumer_cfg.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    }
    // librdkafka applies its own policy (latest unless set) when a seek or
    // fetch lands outside the topic, which is where a stored position is
    // once retention has deleted it: without this, everything retention
    // left after the position would be skipped.
    let (_, reset) = reset_policy(cfg)?;
    let consumer: BaseConsumer<Ctx> = consumer_cfg
        .set("auto.offset.reset", reset)
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
    Ok(consumer)
}
