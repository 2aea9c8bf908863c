//! Sources: where usage events come from besides HTTP ingest.
//!
//! [`kafka`] consumes topics and feeds the engine one partition batch at a
//! time, with the batch's offset range in the same log write;
//! [`checkpoint`] is where each partition stands (pure);
//! [`binding`] turns one Kafka message into a decoded CloudEvent (pure);
//! [`health`] is how a running source stands, for `/readyz` and metrics;
//! [`repeats`] keeps a broker outage from flooding the log (pure).

pub mod binding;
pub mod checkpoint;
pub mod health;
pub mod kafka;
pub mod repeats;

pub use health::SourceHealth;
