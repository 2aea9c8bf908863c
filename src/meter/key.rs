//! Counter keys and their byte encoding for range scans in sled.
//!
//! Layout: `meter ‖ 0x00 ‖ subject ‖ 0x00 ‖ window_start ‖ group…` where
//! `window_start` is the `i64` as big-endian `u64` with the sign bit flipped (so
//! negative times sort first) and each group value is a big-endian `u32` prefix —
//! `0` for `None`, `len + 1` for `Some` — followed by its UTF-8 bytes.
//!
//! Byte order equals [`CounterKey`]'s `Ord`: meter, then subject (byte-wise, which the
//! 0x00 terminators preserve because neither may contain 0x00), then window start,
//! then the group values in turn, where `None` < `Some` and two `Some` values compare
//! by length first and bytes second (that is what a length prefix sorts by). Range
//! scans only rely on the (meter, subject, window) prefix.

use std::cmp::Ordering;

/// Identity of one counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub meter: String,
    pub subject: String,
    pub window_start_ms: i64,
    /// Parallel to the meter's `groupBy` keys (sorted).
    pub group: Vec<Option<String>>,
}

/// A key that cannot be encoded, or bytes that are not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{field} must not contain a 0x00 byte")]
    ContainsNul { field: &'static str },
    #[error("group value of {len} bytes is too long for a counter key")]
    GroupValueTooLong { len: usize },
    #[error("counter key bytes are truncated")]
    Truncated,
    #[error("counter key {field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
}

impl Ord for CounterKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.meter
            .as_bytes()
            .cmp(other.meter.as_bytes())
            .then_with(|| self.subject.as_bytes().cmp(other.subject.as_bytes()))
            .then_with(|| self.window_start_ms.cmp(&other.window_start_ms))
            .then_with(|| cmp_groups(&self.group, &other.group))
    }
}

impl PartialOrd for CounterKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Group order as encoded: element-wise; `None` first, then shorter, then bytes.
fn cmp_groups(a: &[Option<String>], b: &[Option<String>]) -> Ordering {
    fn element(x: &Option<String>) -> Option<(usize, &[u8])> {
        x.as_ref().map(|s| (s.len(), s.as_bytes()))
    }
    a.iter().map(element).cmp(b.iter().map(element))
}

fn check_no_nul(field: &'static str, text: &str) -> Result<(), KeyError> {
    if text.as_bytes().contains(&0) {
        return Err(KeyError::ContainsNul { field });
    }
    Ok(())
}

fn push_terminated(out: &mut Vec<u8>, field: &'static str, text: &str) {
    if let Err(e) = check_no_nul(field, text) {
        panic!("{e}");
    }
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

/// Sign-flipped big-endian: byte order equals `i64` order.
fn window_bytes(window_start_ms: i64) -> [u8; 8] {
    ((window_start_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// Appends the encoding of a key's parts to `out`; the caller guarantees
/// what [`CounterKey::try_encode`] checks (no 0x00 in meter or subject,
/// group values shorter than 4 GiB).
pub(crate) fn encode_parts<'a>(
    out: &mut Vec<u8>,
    meter: &str,
    subject: &[u8],
    window_start_ms: i64,
    group: impl Iterator<Item = Option<&'a [u8]>>,
) {
    out.extend_from_slice(meter.as_bytes());
    out.push(0);
    out.extend_from_slice(subject);
    out.push(0);
    out.extend_from_slice(&window_bytes(window_start_ms));
    for value in group {
        match value {
            None => out.extend_from_slice(&0u32.to_be_bytes()),
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as u32 + 1).to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
}

impl CounterKey {
    /// `meter ‖ 0x00`: every key of one meter starts with this.
    ///
    /// # Panics
    /// If `meter` contains 0x00 (slugs are validated, so it cannot).
    pub fn meter_prefix(meter: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(meter.len() + 1);
        push_terminated(&mut out, "meter", meter);
        out
    }

    /// `meter ‖ 0x00 ‖ subject ‖ 0x00`: every key of one meter and subject.
    ///
    /// # Panics
    /// If `meter` or `subject` contains 0x00 (the engine rejects such subjects at
    /// ingest; query code must skip them before asking for a range).
    pub fn subject_prefix(meter: &str, subject: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(meter.len() + subject.len() + 2);
        push_terminated(&mut out, "meter", meter);
        push_terminated(&mut out, "subject", subject);
        out
    }

    /// Half-open byte range `[start, end)` holding exactly the keys of `meter` and
    /// `subject` whose window starts in `[from_ms, to_ms)` (empty when `from_ms >= to_ms`).
    ///
    /// # Panics
    /// Like [`subject_prefix`](Self::subject_prefix).
    pub fn window_range_bounds(
        meter: &str,
        subject: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> (Vec<u8>, Vec<u8>) {
        let prefix = Self::subject_prefix(meter, subject);
        let mut start = prefix.clone();
        start.extend_from_slice(&window_bytes(from_ms));
        let mut end = prefix;
        end.extend_from_slice(&window_bytes(to_ms.max(from_ms)));
        (start, end)
    }

    /// The key's bytes.
    ///
    /// # Panics
    /// If `meter` or `subject` contains 0x00 or a group value is 4 GiB long: keys are
    /// built from validated slugs and subjects the engine accepted, so this is an
    /// invariant violation. Use [`try_encode`](Self::try_encode) for untrusted parts.
    pub fn encode(&self) -> Vec<u8> {
        match self.try_encode() {
            Ok(bytes) => bytes,
            Err(e) => panic!("counter key for meter {:?}: {e}", self.meter),
        }
    }

    /// The key's bytes, or why it has none.
    pub fn try_encode(&self) -> Result<Vec<u8>, KeyError> {
        check_no_nul("meter", &self.meter)?;
        check_no_nul("subject", &self.subject)?;
        let group_bytes: usize = self
            .group
            .iter()
            .map(|g| 4 + g.as_ref().map_or(0, String::len))
            .sum();
        let mut out = Vec::with_capacity(self.meter.len() + self.subject.len() + 10 + group_bytes);
        for value in self.group.iter().flatten() {
            if u32::try_from(value.len())
                .ok()
                .and_then(|l| l.checked_add(1))
                .is_none()
            {
                return Err(KeyError::GroupValueTooLong { len: value.len() });
            }
        }
        encode_parts(
            &mut out,
            &self.meter,
            self.subject.as_bytes(),
            self.window_start_ms,
            self.group.iter().map(|g| g.as_deref().map(str::as_bytes)),
        );
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<CounterKey, KeyError> {
        let (meter, rest) = split_nul(bytes)?;
        let (subject, rest) = split_nul(rest)?;
        let (window, mut rest) = split_at_checked(rest, 8)?;
        let window_start_ms =
            (u64::from_be_bytes(window.try_into().map_err(|_| KeyError::Truncated)?) ^ (1 << 63))
                as i64;
        let mut group = Vec::new();
        while !rest.is_empty() {
            let (prefix, after) = split_at_checked(rest, 4)?;
            let prefix = u32::from_be_bytes(prefix.try_into().map_err(|_| KeyError::Truncated)?);
            if prefix == 0 {
                group.push(None);
                rest = after;
                continue;
            }
            let (text, after) = split_at_checked(after, (prefix - 1) as usize)?;
            group.push(Some(utf8(text, "group value")?));
            rest = after;
        }
        Ok(CounterKey {
            meter: utf8(meter, "meter")?,
            subject: utf8(subject, "subject")?,
            window_start_ms,
            group,
        })
    }
}

fn split_nul(bytes: &[u8]) -> Result<(&[u8], &[u8]), KeyError> {
    let at = bytes
        .iter()
        .position(|b| *b == 0)
        .ok_or(KeyError::Truncated)?;
    Ok((&bytes[..at], &bytes[at + 1..]))
}

fn split_at_checked(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), KeyError> {
    bytes.split_at_checked(at).ok_or(KeyError::Truncated)
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, KeyError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| KeyError::InvalidUtf8 { field })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(meter: &str, subject: &str, window_start_ms: i64, group: &[Option<&str>]) -> CounterKey {
        CounterKey {
            meter: meter.into(),
            subject: subject.into(),
            window_start_ms,
            group: group.iter().map(|g| g.map(String::from)).collect(),
        }
    }

    #[test]
    fn none_and_empty_group_values_are_distinct() {
        let none = key("m", "s", 0, &[None]).encode();
        let empty = key("m", "s", 0, &[Some("")]).encode();
        assert_ne!(none, empty);
        assert!(none < empty);
        assert_eq!(
            CounterKey::decode(&empty).unwrap(),
            key("m", "s", 0, &[Some("")])
        );
    }

    #[test]
    fn layout_is_meter_nul_subject_nul_window_groups() {
        let bytes = key("m", "s", -1, &[Some("ab"), None]).encode();
        let mut expected = b"m\0s\0".to_vec();
        expected.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[0, 0, 0, 3, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn nul_in_meter_or_subject_is_refused() {
        assert_eq!(
            key("m\0", "s", 0, &[]).try_encode(),
            Err(KeyError::ContainsNul { field: "meter" })
        );
        assert_eq!(
            key("m", "a\0b", 0, &[]).try_encode(),
            Err(KeyError::ContainsNul { field: "subject" })
        );
        let panicked = std::panic::catch_unwind(|| CounterKey::subject_prefix("m", "a\0b"));
        assert!(panicked.is_err());
        // Group values may hold any bytes.
        let k = key("m", "s", 0, &[Some("a\0b")]);
        assert_eq!(CounterKey::decode(&k.encode()).unwrap(), k);
    }

    #[test]
    fn malformed_bytes_are_refused() {
        assert_eq!(CounterKey::decode(b"m\0s"), Err(KeyError::Truncated));
        assert_eq!(
            CounterKey::decode(b"m\0s\0\x80\0\0"),
            Err(KeyError::Truncated)
        );
        let mut bytes = key("m", "s", 0, &[Some("abc")]).encode();
        bytes.pop();
        assert_eq!(CounterKey::decode(&bytes), Err(KeyError::Truncated));
        let mut bytes = key("m", "s", 0, &[]).encode();
        bytes.extend_from_slice(&[0, 0, 0, 2, 0xc3]);
        assert_eq!(
            CounterKey::decode(&bytes),
            Err(KeyError::InvalidUtf8 {
                field: "group value"
            })
        );
    }

    #[test]
    fn window_range_holds_exactly_the_windows_in_range() {
        let (start, end) = CounterKey::window_range_bounds("m", "s", -60_000, 120_000);
        let inside = |k: &CounterKey| {
            let b = k.encode();
            start <= b && b < end
        };
        assert!(inside(&key("m", "s", -60_000, &[])));
        assert!(inside(&key("m", "s", 60_000, &[Some("zzz"), None])));
        assert!(!inside(&key("m", "s", 120_000, &[])));
        assert!(!inside(&key("m", "s", -60_001, &[Some("x")])));
        assert!(!inside(&key("m", "s2", 0, &[])));
        assert!(!inside(&key("m2", "s", 0, &[])));
        let (start, end) = CounterKey::window_range_bounds("m", "s", 5, 5);
        assert_eq!(start, end);
    }

    fn text() -> impl Strategy<Value = String> {
        // Small alphabet so shared prefixes and equal values are common.
        "[ab\u{1}é]{0,3}"
    }

    fn counter_key() -> impl Strategy<Value = CounterKey> {
        (
            text(),
            text(),
            prop_oneof![-3i64..3, any::<i64>()],
            prop::collection::vec(prop::option::of("[ab\u{0}]{0,3}"), 0..3),
        )
            .prop_map(|(meter, subject, window_start_ms, group)| CounterKey {
                meter,
                subject,
                window_start_ms,
                group,
            })
    }

    /// Two keys that often share a prefix of fields, so every field's order matters.
    fn key_pair() -> impl Strategy<Value = (CounterKey, CounterKey)> {
        (counter_key(), counter_key(), 0usize..5).prop_map(|(a, mut b, shared)| {
            if shared > 0 {
                b.meter = a.meter.clone();
            }
            if shared > 1 {
                b.subject = a.subject.clone();
            }
            if shared > 2 {
                b.window_start_ms = a.window_start_ms;
            }
            if shared > 3 && !a.group.is_empty() && !b.group.is_empty() {
                b.group[0] = a.group[0].clone();
            }
            (a, b)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encoding_round_trips(k in counter_key()) {
            prop_assert_eq!(CounterKey::decode(&k.encode()).unwrap(), k);
        }

        #[test]
        fn byte_order_equals_key_order((a, b) in key_pair()) {
            let bytes_order = a.encode().cmp(&b.encode());
            prop_assert_eq!(bytes_order, a.cmp(&b));
            // And the key order is the tuple order described in the module docs.
            let tuple = |k: &CounterKey| (
                k.meter.clone(),
                k.subject.clone(),
                k.window_start_ms,
                k.group.iter().map(|g| g.as_ref().map(|s| (s.len(), s.clone()))).collect::<Vec<_>>(),
            );
            prop_assert_eq!(bytes_order, tuple(&a).cmp(&tuple(&b)));
        }

        #[test]
        fn prefixes_prefix_their_keys(k in counter_key()) {
            let bytes = k.encode();
            prop_assert!(bytes.starts_with(&CounterKey::meter_prefix(&k.meter)));
            prop_assert!(bytes.starts_with(&CounterKey::subject_prefix(&k.meter, &k.subject)));
        }
    }
}
