//! How a running source stands, as `/readyz` shows it: connection state,
//! assigned partitions with their stored positions, and the last client
//! error. Whoever starts a source creates its [`SourceHealth`] and hands the
//! same `Arc` to the source, which writes it, and to the readers (the API's
//! [`crate::query::View`]), so two engines in one process never share one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{json, Value};

use super::repeats::{kind_key, Repeats, Verdict};
use crate::metrics::metrics;

/// One source's state; see the module documentation.
pub struct SourceHealth {
    connected: AtomicBool,
    inner: Mutex<Inner>,
    /// Which repeated client warnings reach the log.
    repeats: Mutex<Repeats>,
    /// The clock the repeats are timed by.
    started: Instant,
}

struct Inner {
    state: &'static str,
    /// Assigned partitions and their position stored in the log.
    positions: BTreeMap<(String, i32), Option<i64>>,
    /// When each partition last had delivered everything it held (wall
    /// clock, ms): its billing watermark.
    caught_up: BTreeMap<(String, i32), i64>,
    last_error: Option<(i64, String)>,
}

impl Default for SourceHealth {
    fn default() -> SourceHealth {
        SourceHealth::new()
    }
}

impl SourceHealth {
    /// A source that is still connecting and has no partitions.
    pub fn new() -> SourceHealth {
        SourceHealth {
            connected: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                state: "connecting",
                positions: BTreeMap::new(),
                caught_up: BTreeMap::new(),
                last_error: None,
            }),
            repeats: Mutex::new(Repeats::default()),
            started: Instant::now(),
        }
    }

    /// Whether a client warning (`source`: who reports it, `message`: its
    /// text) should be logged now: `Some(n)` with the number of the same
    /// kind suppressed since it was last logged, `None` to stay quiet. See
    /// [`super::repeats`].
    pub fn should_log(&self, source: &str, message: &str) -> Option<u64> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let mut repeats = self.repeats.lock().unwrap_or_else(|e| e.into_inner());
        match repeats.check(&kind_key(source, message), now_ms) {
            Verdict::Log { suppressed } => Some(suppressed),
            Verdict::Suppress => None,
        }
    }

    /// Logs what was suppressed during the condition that just ended and
    /// forgets it, so the next warning of any kind is logged at once.
    fn summarize_repeats(&self) {
        let left = self
            .repeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain();
        for (kind, suppressed) in left {
            tracing::warn!(kind = %kind, suppressed, "repeated Kafka warnings suppressed");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records whether the brokers answer. Called for every message: a plain
    /// load settles the usual case. A change is logged; on reconnecting, so
    /// are the warnings suppressed during the outage.
    pub fn set_connected(&self, connected: bool) {
        if self.connected.load(Ordering::Relaxed) != connected
            && self.connected.swap(connected, Ordering::SeqCst) != connected
        {
            metrics().kafka_connected.set(i64::from(connected));
            let mut s = self.lock();
            if s.state != "stopped" {
                s.state = if connected {
                    "connected"
                } else {
                    "disconnected"
                };
            }
            drop(s);
            if connected {
                tracing::info!("Kafka brokers reachable");
                self.summarize_repeats();
            } else {
                tracing::warn!("Kafka brokers unreachable");
            }
        }
    }

    /// Records a client error (the last one is shown) and counts it.
    pub fn error(&self, message: String) {
        metrics().kafka_errors_total.inc();
        self.lock().last_error = Some((chrono::Utc::now().timestamp_millis(), message));
    }

    /// The source has stopped consuming.
    pub fn stopped(&self) {
        self.lock().state = "stopped";
        metrics().kafka_connected.set(0);
    }

    /// Records an assigned partition and its stored position (`None` when
    /// the log holds none yet); returns how many partitions are assigned.
    pub fn set_position(&self, topic: &str, partition: i32, position: Option<i64>) -> usize {
        let mut s = self.lock();
        s.positions.insert((topic.to_owned(), partition), position);
        s.positions.len()
    }

    /// Forgets a partition that is no longer assigned; returns how many
    /// partitions remain.
    pub fn unassign(&self, topic: &str, partition: i32) -> usize {
        let mut s = self.lock();
        s.positions.remove(&(topic.to_owned(), partition));
        s.positions.len()
    }

    /// At `at_ms` the partition's stored position had reached its high
    /// watermark: everything produced to it before then is in the log.
    pub fn caught_up(&self, topic: &str, partition: i32, at_ms: i64) {
        let mut s = self.lock();
        let at = s
            .caught_up
            .entry((topic.to_owned(), partition))
            .or_insert(at_ms);
        *at = (*at).max(at_ms);
    }

    /// Everything produced to every assigned partition before this instant
    /// is in the log; `i64::MIN` while no partition is assigned or one has
    /// never caught up. Billing closes wait for it.
    pub fn watermark_ms(&self) -> i64 {
        let s = self.lock();
        (s.positions.keys())
            .map(|k| s.caught_up.get(k).copied().unwrap_or(i64::MIN))
            .min()
            .unwrap_or(i64::MIN)
    }

    /// The assigned partitions and their stored positions.
    pub fn positions(&self) -> Vec<((String, i32), Option<i64>)> {
        self.lock()
            .positions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The `kafka` object of `/readyz`: state (`connecting`, `connected`,
    /// `disconnected` or `stopped`), assigned partitions with their stored
    /// positions, and the last client error.
    pub fn readiness(&self) -> Value {
        let s = self.lock();
        let assigned: Vec<_> = s
            .positions
            .iter()
            .map(|((topic, partition), position)| {
                json!({"topic": topic, "partition": partition, "position": position})
            })
            .collect();
        json!({
            "state": s.state,
            "assignedPartitions": assigned,
            "lastError": s.last_error.as_ref().map(|(at_ms, message)| json!({
                "at": crate::event::fmt_ms(*at_ms),
                "message": message,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sources_keep_their_own_state() {
        let a = SourceHealth::new();
        let b = SourceHealth::new();
        assert_eq!(a.set_position("t", 0, Some(5)), 1);
        a.set_connected(true);
        a.error("boom".into());
        assert_eq!(a.readiness()["state"], "connected");
        assert_eq!(a.readiness()["assignedPartitions"][0]["position"], 5);
        assert_eq!(a.readiness()["lastError"]["message"], "boom");
        assert_eq!(b.readiness()["state"], "connecting");
        assert_eq!(b.readiness()["assignedPartitions"], json!([]));
        assert!(b.readiness()["lastError"].is_null());
        assert_eq!(a.should_log("client", "down 1"), Some(0));
        assert_eq!(a.should_log("client", "down 2"), None, "same kind");
        assert_eq!(b.should_log("client", "down 3"), Some(0), "b's own");
        assert_eq!(a.watermark_ms(), i64::MIN, "never caught up");
        a.caught_up("t", 0, 700);
        a.set_position("t", 1, None);
        assert_eq!(a.watermark_ms(), i64::MIN, "partition 1 lags");
        a.caught_up("t", 1, 900);
        a.caught_up("t", 1, 800);
        assert_eq!(a.watermark_ms(), 700);
        assert_eq!(b.watermark_ms(), i64::MIN, "nothing assigned");
        assert_eq!(a.unassign("t", 1), 1);
        assert_eq!(a.unassign("t", 0), 0);
        a.stopped();
        a.set_connected(false);
        assert_eq!(a.readiness()["state"], "stopped");
    }
}
