//! Dead letters: rejected messages kept with their batch, and the sink that
//! produces them to the dead-letter topic before the batch's offsets move on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::{client_config, RETRY_BACKOFF};
use crate::config::KafkaConfig;
use crate::event::Rejection;
use crate::metrics::metrics;
use crate::record::OffsetDelta;
use crate::source::binding;
use crate::source::health::SourceHealth;

/// A rejected message, kept to be produced to the dead-letter topic.
pub(super) struct DeadLetter {
    pub(super) index: u32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    rejection: Rejection,
}

impl DeadLetter {
    pub(super) fn new(
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

/// The batch was abandoned while its letters were being delivered.
pub(super) struct Abandoned;

pub(super) struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    health: Arc<SourceHealth>,
}

impl DeadLetterSink {
    /// The sink of the configured dead-letter topic; `None` when none is
    /// configured.
    pub(super) fn create(
        cfg: &KafkaConfig,
        health: &Arc<SourceHealth>,
    ) -> anyhow::Result<Option<Arc<DeadLetterSink>>> {
        let Some(topic) = &cfg.dead_letter_topic else {
            return Ok(None);
        };
        let producer = client_config(cfg)
            .set("acks", "all")
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create the dead-letter producer: {e}"))?;
        Ok(Some(Arc::new(DeadLetterSink {
            producer,
            topic: topic.clone(),
            health: health.clone(),
        })))
    }

    /// Produces every letter and waits until each is acknowledged; failed
    /// ones are retried until delivered or the batch is abandoned. A retry
    /// after an ambiguous failure can deliver a letter twice.
    pub(super) async fn deliver(
        &self,
        delta: &OffsetDelta,
        letters: &[DeadLetter],
        abandon: &AtomicBool,
    ) -> Result<(), Abandoned> {
        let m = metrics();
        let mut pending: Vec<&DeadLetter> = letters.iter().collect();
        while !pending.is_empty() {
            let mut retry = Vec::new();
            let mut in_flight = Vec::new();
            for letter in pending {
                match self.producer.send_result(self.record(delta, letter)) {
                    Ok(delivery) => in_flight.push((letter, delivery)),
                    Err((e, _)) => {
                        self.note(&e);
                        retry.push(letter);
                    }
                }
            }
            for (letter, mut delivery) in in_flight {
                if !self.acknowledged(&mut delivery, abandon).await? {
                    retry.push(letter);
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

    /// The letter as a record of the dead-letter topic: its key, value and
    /// headers as consumed, plus headers saying why it was rejected and
    /// where it was read.
    fn record<'a>(
        &'a self,
        delta: &OffsetDelta,
        letter: &'a DeadLetter,
    ) -> FutureRecord<'a, [u8], [u8]> {
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
        record
    }

    /// Waits for one produced letter's acknowledgement: `Ok(true)` once it
    /// is delivered, `Ok(false)` when it has to be produced again.
    async fn acknowledged(
        &self,
        delivery: &mut DeliveryFuture,
        abandon: &AtomicBool,
    ) -> Result<bool, Abandoned> {
        loop {
            if abandon.load(Ordering::SeqCst) {
                return Err(Abandoned);
            }
            match tokio::time::timeout(Duration::from_millis(200), &mut *delivery).await {
                Err(_elapsed) => continue,
                Ok(Ok(Ok(_))) => {
                    metrics()
                        .kafka_dead_letters_total
                        .with_label_values(&["delivered"])
                        .inc();
                    return Ok(true);
                }
                Ok(Ok(Err((e, _)))) => {
                    self.note(&e);
                    return Ok(false);
                }
                Ok(Err(_canceled)) => return Ok(false),
            }
        }
    }

    fn note(&self, e: &KafkaError) {
        let message = format!("dead-letter produce to {}: {e}", self.topic);
        if let Some(suppressed) = self.health.should_log("dead-letter", &message) {
            tracing::warn!(topic = %self.topic, error = %e, suppressed, "dead-letter produce failed; retrying");
        }
        self.health.error(message);
    }
}
