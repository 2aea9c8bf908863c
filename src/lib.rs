//! keymeter: an event-sourced usage-metering and licensing engine.
//!
//! The append-only, hash-chained [`log`] is the single source of truth. The
//! [`engine`] appends to it while serving (`keys rotate` appends while the
//! server is stopped); [`projection`]s in sled are folds of it that can be
//! rebuilt at any time, and [`meter`] holds the pure fold itself. Readers
//! (the HTTP [`api`]) see the engine's published state through a
//! [`query::View`].

pub mod api;
pub mod api_keys;
pub mod audit;
pub mod backup;
pub mod billing;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod data_format;
pub mod engine;
pub mod error_code;
pub mod event;
pub mod http_serve;
pub mod id;
pub mod license;
pub mod log;
pub mod memory;
pub mod meter;
pub mod metrics;
pub mod product;
pub mod projection;
pub mod query;
pub mod record;
pub mod scope;
pub mod signing;
pub mod signing_journal;
pub mod source;
pub mod tls;

pub use error_code::ErrorCode;
