//! Kafka ingestion end to end: the real binary consumes from librdkafka's
//! built-in mock cluster. Expectations are computed here, independently of
//! keymeter, from what the test produced; the log is read back event by
//! event.

mod billing;
#[path = "../common/mod.rs"]
mod common;
mod ingest;
mod offsets;
mod restart;
mod status;
mod support;
