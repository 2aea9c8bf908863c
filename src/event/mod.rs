//! CloudEvents 1.0 (JSON) usage events: decoding request bodies and checking
//! each event's envelope. Pure: the caller passes "now" and the accepted
//! event-time window.
//!
//! Meter-specific checks (a numeric `valueProperty` …) need the meter registry
//! and happen in the engine, which owns it.

mod decode;
#[cfg(test)]
mod tests;

use sha2::{Digest, Sha256};

pub use decode::{decode_body, decode_event, decode_event_text, fmt_ms, parse_time_ms, BodyKind};

/// Longest accepted `id`, `source`, `type` or `subject`, in bytes.
pub const ATTRIBUTE_BYTES_MAX: usize = 1024;

/// The accepted event-time window around the receive time.
#[derive(Debug, Clone, Copy)]
pub struct TimeWindow {
    pub back_ms: i64,
    pub ahead_ms: i64,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow {
            back_ms: 35 * 24 * 3600 * 1000,
            ahead_ms: 5 * 60 * 1000,
        }
    }
}

/// A usage event that passed envelope validation.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    /// Identity for duplicate detection, from `source` and `id` (which stay
    /// in `raw`).
    pub key: DedupKey,
    pub ty: String,
    pub subject: String,
    /// Event time in ms since the epoch: `time` truncated to the millisecond,
    /// or the receive time when `time` is absent.
    pub time_ms: i64,
    /// Where `data` is in `raw`, if the event has it.
    data: Option<std::ops::Range<usize>>,
    /// The event exactly as received (one JSON object).
    pub raw: String,
}

impl UsageEvent {
    /// The event's `data` as JSON text (a part of `raw`), if it has any.
    pub fn data(&self) -> Option<&str> {
        self.data.clone().map(|span| &self.raw[span])
    }
}

/// Deepest nesting of arrays and objects accepted in `data`: what a parse of
/// the whole event into a tree allows (the event object is one level).
pub const DATA_DEPTH_MAX: usize = 126;

/// Identity of an event for duplicate detection: the first 16 bytes of
/// SHA-256(source, 0x00, id). Collisions are negligible below ~10^18 events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DedupKey(pub [u8; 16]);

impl std::hash::Hash for DedupKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes")));
    }
}

/// Hashes a [`DedupKey`] by taking its first 8 bytes: they are already
/// SHA-256 output, so running them through SipHash again buys nothing.
#[derive(Default, Clone, Copy)]
pub struct DedupKeyHasher(u64);

impl std::hash::Hasher for DedupKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a DedupKey is hashed.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type DedupKeyBuildHasher = std::hash::BuildHasherDefault<DedupKeyHasher>;

impl DedupKey {
    pub fn new(source: &str, id: &str) -> DedupKey {
        let mut h = Sha256::new();
        h.update(source.as_bytes());
        h.update([0u8]);
        h.update(id.as_bytes());
        let digest = h.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        DedupKey(key)
    }
}

/// Why an event (or a whole body) was refused.
pub type Rejection = crate::error_code::Coded;

/// One element of a decoded body: a valid event, or the reason it is not,
/// with the raw text kept for the quarantine.
#[derive(Debug)]
pub enum Decoded {
    Valid(UsageEvent),
    /// `raw` holds the input exactly as received (it need not be UTF-8, e.g.
    /// a Kafka message value), so the quarantine keeps its exact bytes.
    Invalid {
        rejection: Rejection,
        raw: Vec<u8>,
    },
}
