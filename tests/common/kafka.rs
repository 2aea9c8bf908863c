//! Producing to and reading from librdkafka's mock cluster, for the Kafka
//! tests and the Kafka bench (which includes this file).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

/// Queues `record`, polling for `backoff` while the producer's queue is
/// full, then serves delivery reports without waiting.
pub fn send_retrying<K, P>(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, K, P>,
    backoff: Duration,
) where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((_, r)) => {
                record = r;
                producer.poll(backoff);
            }
        }
    }
    producer.poll(Duration::ZERO);
}

/// A consumer given `partitions` of `topic` from their beginning, outside
/// any group rebalance and committing nothing.
pub fn reader(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}
