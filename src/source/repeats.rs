//! Which repeated warnings reach the log. While a broker is down,
//! librdkafka reports the same failure dozens of times a second; each kind
//! of warning is logged the first time, then at most once per period with
//! the number suppressed since, and the counts left are summed up when the
//! outage ends ([`Repeats::drain`]). Pure: the caller passes the time.

use std::collections::HashMap;

/// What to do with one warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it, saying how many of its kind were suppressed before it.
    Log { suppressed: u64 },
    /// Count it and stay quiet.
    Suppress,
}

/// The kinds of warning seen recently; see the module documentation.
#[derive(Debug)]
pub struct Repeats {
    period_ms: u64,
    kinds_max: usize,
    kinds: HashMap<String, Kind>,
}

#[derive(Debug, Clone, Copy)]
struct Kind {
    logged_at_ms: u64,
    suppressed: u64,
}

/// How long a kind of warning stays quiet after it was logged.
pub const REPEAT_PERIOD_MS: u64 = 30_000;
/// The most kinds remembered; a new kind beyond it replaces the one logged
/// longest ago (so memory stays bounded whatever the messages say).
pub const KINDS_MAX: usize = 64;
/// The longest kind key kept.
const KEY_CHARS_MAX: usize = 160;

impl Default for Repeats {
    fn default() -> Repeats {
        Repeats::new(REPEAT_PERIOD_MS, KINDS_MAX)
    }
}

impl Repeats {
    pub fn new(period_ms: u64, kinds_max: usize) -> Repeats {
        Repeats {
            period_ms,
            kinds_max: kinds_max.max(1),
            kinds: HashMap::new(),
        }
    }

    /// Decides about one warning of kind `key` (see [`kind_key`]) at `now_ms`.
    pub fn check(&mut self, key: &str, now_ms: u64) -> Verdict {
        if let Some(kind) = self.kinds.get_mut(key) {
            if now_ms.saturating_sub(kind.logged_at_ms) < self.period_ms {
                kind.suppressed += 1;
                return Verdict::Suppress;
            }
            let suppressed = std::mem::take(&mut kind.suppressed);
            kind.logged_at_ms = now_ms;
            return Verdict::Log { suppressed };
        }
        if self.kinds.len() >= self.kinds_max {
            let oldest = self
                .kinds
                .iter()
                .min_by_key(|(_, k)| k.logged_at_ms)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.kinds.remove(&oldest);
            }
        }
        self.kinds.insert(
            key.to_owned(),
            Kind {
                logged_at_ms: now_ms,
                suppressed: 0,
            },
        );
        Verdict::Log { suppressed: 0 }
    }

    /// Forgets every kind (the condition behind them has ended, so the next
    /// occurrence is news) and returns the warnings suppressed but not yet
    /// reported, by kind.
    pub fn drain(&mut self) -> Vec<(String, u64)> {
        let mut left: Vec<_> = self
            .kinds
            .drain()
            .filter(|(_, k)| k.suppressed > 0)
            .map(|(key, k)| (key, k.suppressed))
            .collect();
        left.sort();
        left
    }
}

/// The kind of a warning message: its text with every run of digits
/// replaced by `#` (so counters, ports, offsets and durations inside one
/// message do not make each occurrence new), cut to a bounded length.
pub fn kind_key(source: &str, message: &str) -> String {
    let mut key = String::with_capacity(source.len() + 1 + message.len().min(KEY_CHARS_MAX));
    key.push_str(source);
    key.push(':');
    let mut in_digits = false;
    for c in message.chars().take(KEY_CHARS_MAX) {
        if c.is_ascii_digit() {
            if !in_digits {
                key.push('#');
            }
            in_digits = true;
        } else {
            key.push(c);
            in_digits = false;
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_repeated_forty_times_a_second_is_logged_once_per_period() {
        let mut r = Repeats::new(30_000, 8);
        let mut logged = Vec::new();
        // 90 s of one failure every 25 ms.
        for i in 0..3_600u64 {
            let now = i * 25;
            if let Verdict::Log { suppressed } = r.check("connect refused", now) {
                logged.push((now, suppressed));
            }
        }
        assert_eq!(
            logged,
            vec![(0, 0), (30_000, 1_199), (60_000, 1_199)],
            "the first occurrence, then one summary per period"
        );
        assert_eq!(r.drain(), vec![("connect refused".to_owned(), 1_199)]);
    }

    #[test]
    fn a_new_kind_of_warning_is_logged_at_once() {
        let mut r = Repeats::new(30_000, 8);
        assert_eq!(r.check("a", 0), Verdict::Log { suppressed: 0 });
        assert_eq!(r.check("a", 10), Verdict::Suppress);
        assert_eq!(r.check("b", 20), Verdict::Log { suppressed: 0 });
        assert_eq!(r.check("b", 30), Verdict::Suppress);
    }

    #[test]
    fn after_a_drain_the_next_occurrence_is_logged_and_nothing_is_left() {
        let mut r = Repeats::new(30_000, 8);
        r.check("a", 0);
        r.check("b", 0);
        r.check("b", 1);
        assert_eq!(r.drain(), vec![("b".to_owned(), 1)], "a had nothing left");
        assert_eq!(r.drain(), vec![]);
        assert_eq!(r.check("b", 2), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_kind_logged_longest_ago() {
        let mut r = Repeats::new(30_000, 2);
        r.check("a", 0);
        r.check("b", 1);
        r.check("c", 2);
        assert_eq!(r.kinds.len(), 2);
        assert!(!r.kinds.contains_key("a"));
        assert_eq!(r.check("b", 3), Verdict::Suppress);
    }

    #[test]
    fn digits_do_not_make_a_message_a_new_kind() {
        let a = kind_key(
            "rdkafka",
            "localhost:9092/1: Connect failed (after 0ms in state CONNECT, 12 identical error(s) suppressed)",
        );
        let b = kind_key(
            "rdkafka",
            "localhost:9092/1: Connect failed (after 3ms in state CONNECT, 7 identical error(s) suppressed)",
        );
        assert_eq!(a, b);
        assert_ne!(a, kind_key("rdkafka", "localhost:9092/1: SASL failed"));
        assert_ne!(a, kind_key("client", "localhost:9092/1: Connect failed"));
        assert!(kind_key("x", &"y".repeat(10_000)).len() <= 2 + KEY_CHARS_MAX);
    }
}
