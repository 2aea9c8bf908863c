//! Decoding: request bodies framed by content type, each event's envelope
//! checked attribute by attribute, and event times parsed and bounded.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Decoded, DedupKey, Rejection, TimeWindow, UsageEvent, ATTRIBUTE_BYTES_MAX, DATA_DEPTH_MAX,
};
use crate::error_code::ErrorCode;

/// How the body is framed, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/cloudevents+json`: exactly one event.
    Single,
    /// `application/cloudevents-batch+json`: a JSON array of events.
    Batch,
    /// `application/json`: one event object or an array of them.
    Either,
}

impl BodyKind {
    pub fn from_content_type(content_type: &str) -> Option<BodyKind> {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/cloudevents+json" => Some(BodyKind::Single),
            "application/cloudevents-batch+json" => Some(BodyKind::Batch),
            "application/json" => Some(BodyKind::Either),
            _ => None,
        }
    }
}

/// Decodes a request body into events. A body that is not JSON at all, or is
/// framed wrongly for its content type, is refused as a whole; otherwise each
/// element is judged on its own.
pub fn decode_body(
    body: &[u8],
    kind: BodyKind,
    now_ms: i64,
    window: TimeWindow,
    batch_events_max: usize,
) -> Result<Vec<Decoded>, Rejection> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Rejection::new(ErrorCode::MalformedJson, format!("body is not UTF-8: {e}")))?;
    let first = text.trim_start().as_bytes().first().copied();
    let is_array = match (kind, first) {
        (_, None) => return Err(Rejection::new(ErrorCode::MalformedJson, "body is empty")),
        (BodyKind::Single, Some(b'[')) => {
            return Err(Rejection::new(
                ErrorCode::InvalidBody,
                "application/cloudevents+json carries one event object; send arrays as application/cloudevents-batch+json",
            ))
        }
        (BodyKind::Batch, Some(c)) if c != b'[' => {
            return Err(Rejection::new(
                ErrorCode::InvalidBody,
                "application/cloudevents-batch+json must be a JSON array of events",
            ))
        }
        (_, Some(c)) => c == b'[',
    };
    if !is_array {
        let raw: &RawValue = serde_json::from_str(text).map_err(malformed)?;
        return Ok(vec![decode_event(raw, now_ms, window)]);
    }
    let items: Vec<&RawValue> = serde_json::from_str(text).map_err(malformed)?;
    if items.len() > batch_events_max {
        return Err(Rejection::new(
            ErrorCode::BatchTooLarge,
            format!(
                "batch has {} events; the limit is {batch_events_max}",
                items.len()
            ),
        ));
    }
    if items.is_empty() {
        return Err(Rejection::new(ErrorCode::InvalidBody, "batch is empty"));
    }
    Ok(items
        .into_iter()
        .map(|raw| decode_event(raw, now_ms, window))
        .collect())
}

fn malformed(e: serde_json::Error) -> Rejection {
    Rejection::new(
        ErrorCode::MalformedJson,
        format!("body is not valid JSON: {e}"),
    )
}

/// The envelope as sent: every attribute optional so that each missing or
/// mistyped one gets its own precise rejection instead of a serde message.
/// String attributes are borrowed from the input when they have no escapes.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<Attr<'a>>,
    #[serde(borrow)]
    source: Option<Attr<'a>>,
    #[serde(borrow)]
    specversion: Option<Attr<'a>>,
    #[serde(rename = "type", borrow)]
    ty: Option<Attr<'a>>,
    #[serde(borrow)]
    subject: Option<Attr<'a>>,
    #[serde(borrow)]
    time: Option<Attr<'a>>,
    /// Kept as text: only the parts meters read are ever parsed.
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// An attribute's value: a string, or anything else (which is an error for
/// every attribute read here). JSON `null` arrives as `None` around it.
enum Attr<'a> {
    Str(std::borrow::Cow<'a, str>),
    NotString,
}

impl<'de: 'a, 'a> Deserialize<'de> for Attr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Attr<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Attr<'de>, E> {
                Ok(Attr::Str(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Attr<'de>, E> {
                Ok(Attr::Str(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Attr<'de>, E> {
                Ok(Attr::Str(std::borrow::Cow::Owned(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Attr<'de>, E> {
                Ok(Attr::NotString)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Attr<'de>, E> {
                Ok(Attr::NotString)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Attr<'de>, E> {
                Ok(Attr::NotString)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Attr<'de>, E> {
                Ok(Attr::NotString)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Attr<'de>, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Attr::NotString)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Attr<'de>, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Attr::NotString)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Decodes and checks one event given as raw JSON text.
pub fn decode_event(raw: &RawValue, now_ms: i64, window: TimeWindow) -> Decoded {
    judged(check_event(raw, now_ms, window), raw.get())
}

/// A checked event, or its rejection with the text it was judged on.
fn judged(checked: Result<UsageEvent, Rejection>, raw: &str) -> Decoded {
    match checked {
        Ok(event) => Decoded::Valid(event),
        Err(rejection) => Decoded::Invalid {
            rejection,
            raw: raw.as_bytes().to_vec(),
        },
    }
}

/// Decodes and checks one event that is a whole text (a Kafka message
/// value), surrounding JSON whitespace aside. A valid event is parsed once;
/// the error is the text's JSON syntax error, if it has one.
pub fn decode_event_text(
    text: &str,
    now_ms: i64,
    window: TimeWindow,
) -> Result<Decoded, serde_json::Error> {
    let trimmed = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    if trimmed.starts_with('{') {
        if let Ok(env) = serde_json::from_str::<Envelope>(trimmed) {
            return Ok(judged(
                check_envelope(env, trimmed, now_ms, window),
                trimmed,
            ));
        }
    }
    // Not an object, not JSON, or a malformed envelope: the slow path tells
    // which, exactly as for an element of an HTTP body.
    let raw: &RawValue = serde_json::from_str(text)?;
    Ok(decode_event(raw, now_ms, window))
}

fn check_event(raw: &RawValue, now_ms: i64, window: TimeWindow) -> Result<UsageEvent, Rejection> {
    if !raw.get().starts_with('{') {
        return Err(Rejection::new(
            ErrorCode::InvalidEvent,
            "an event must be a JSON object",
        ));
    }
    let env: Envelope = serde_json::from_str(raw.get()).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidEvent,
            format!("event is not a valid object: {e}"),
        )
    })?;
    check_envelope(env, raw.get(), now_ms, window)
}

/// Checks a parsed envelope; `raw` is its text.
fn check_envelope(
    env: Envelope<'_>,
    raw: &str,
    now_ms: i64,
    window: TimeWindow,
) -> Result<UsageEvent, Rejection> {
    let specversion = required_string(env.specversion, "specversion")?;
    if specversion != "1.0" {
        return Err(Rejection::new(
            ErrorCode::UnsupportedSpecversion,
            format!("specversion is {specversion:?}; only \"1.0\" is supported"),
        ));
    }
    let id = required_string(env.id, "id")?;
    let source = required_string(env.source, "source")?;
    let ty = required_string(env.ty, "type")?;
    let subject = required_string(env.subject, "subject")?;
    if subject.contains('\0') {
        return Err(Rejection::new(
            ErrorCode::InvalidField,
            "subject must not contain NUL characters",
        ));
    }
    let time_ms = match env.time {
        None => now_ms,
        Some(Attr::Str(s)) => parse_time_ms(&s)?,
        Some(Attr::NotString) => {
            return Err(Rejection::new(
                ErrorCode::InvalidTime,
                "time must be an RFC 3339 string",
            ))
        }
    };
    check_time_window(time_ms, now_ms, window)?;
    let data = env
        .data
        .map(|data| data_span(data.get(), raw))
        .transpose()?;
    Ok(UsageEvent {
        key: DedupKey::new(&source, &id),
        ty: ty.into_owned(),
        subject: subject.into_owned(),
        time_ms,
        data,
        raw: raw.to_owned(),
    })
}

/// Where `data` (borrowed from `raw`) lies in `raw`, once it is known to
/// nest no deeper than [`DATA_DEPTH_MAX`].
fn data_span(data: &str, raw: &str) -> Result<std::ops::Range<usize>, Rejection> {
    // Nesting N levels takes at least 2N bytes, so short data needs no scan.
    if data.len() > 2 * DATA_DEPTH_MAX && nesting_depth(data) > DATA_DEPTH_MAX {
        return Err(Rejection::new(
            ErrorCode::InvalidEvent,
            format!("data nests arrays and objects more than {DATA_DEPTH_MAX} levels deep"),
        ));
    }
    // The text was only checked as JSON syntax, which lets a `\uD800` with no
    // partner through; a tree parse refuses it, and so does the decoder.
    if data.contains('\\') && has_lone_surrogate(data) {
        return Err(Rejection::new(
            ErrorCode::InvalidEvent,
            "data has a \\u escape of a lone UTF-16 surrogate, which is not a character",
        ));
    }
    let start = (data.as_ptr() as usize)
        .checked_sub(raw.as_ptr() as usize)
        .filter(|start| start + data.len() <= raw.len())
        .expect("data is borrowed from the event text");
    Ok(start..start + data.len())
}

/// Whether JSON text (already known to be well-formed) escapes a UTF-16
/// surrogate that is not part of a high-low pair: `"\uD800"`, `"\uDC00"`,
/// `"\uD800\u0041"`.
pub(super) fn has_lone_surrogate(json: &str) -> bool {
    let bytes = json.as_bytes();
    let hex_at = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    // `\u` then 4 hex digits, at byte `at`.
    let escape_at = |at: usize| -> Option<u32> {
        (bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u'))
            .then(|| hex_at(at + 2))
            .flatten()
    };
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        // Well-formed text: an escape is `\` and one byte, or `\u` and four.
        let Some(unit) = escape_at(i) else {
            i += 2;
            continue;
        };
        match unit {
            0xD800..=0xDBFF => match escape_at(i + 6) {
                Some(0xDC00..=0xDFFF) => i += 12,
                _ => return true,
            },
            0xDC00..=0xDFFF => return true,
            _ => i += 6,
        }
    }
    false
}

/// How deeply valid JSON text nests arrays and objects.
pub(super) fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn required_string<'a>(
    value: Option<Attr<'a>>,
    field: &'static str,
) -> Result<std::borrow::Cow<'a, str>, Rejection> {
    match value {
        None => Err(Rejection::new(
            ErrorCode::MissingField,
            format!("required attribute `{field}` is missing"),
        )),
        Some(Attr::Str(s)) if s.is_empty() => Err(Rejection::new(
            ErrorCode::InvalidField,
            format!("attribute `{field}` must not be empty"),
        )),
        Some(Attr::Str(s)) if s.len() > ATTRIBUTE_BYTES_MAX => Err(Rejection::new(
            ErrorCode::InvalidField,
            format!(
                "attribute `{field}` is {} bytes; the limit is {ATTRIBUTE_BYTES_MAX}",
                s.len()
            ),
        )),
        Some(Attr::Str(s)) => Ok(s),
        Some(Attr::NotString) => Err(Rejection::new(
            ErrorCode::InvalidField,
            format!("attribute `{field}` must be a string"),
        )),
    }
}

/// Parses an RFC 3339 timestamp, truncated to the millisecond.
pub fn parse_time_ms(s: &str) -> Result<i64, Rejection> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            Rejection::new(
                ErrorCode::InvalidTime,
                format!("time {s:?} is not an RFC 3339 timestamp: {e}"),
            )
        })
}

fn check_time_window(time_ms: i64, now_ms: i64, window: TimeWindow) -> Result<(), Rejection> {
    if time_ms < now_ms.saturating_sub(window.back_ms) {
        return Err(Rejection::new(
            ErrorCode::EventTimeOutOfRange,
            format!(
                "event time {} is more than {} before the receive time {}",
                fmt_ms(time_ms),
                humantime::format_duration(std::time::Duration::from_millis(window.back_ms as u64)),
                fmt_ms(now_ms)
            ),
        ));
    }
    if time_ms > now_ms.saturating_add(window.ahead_ms) {
        return Err(Rejection::new(
            ErrorCode::EventTimeOutOfRange,
            format!(
                "event time {} is more than {} after the receive time {}",
                fmt_ms(time_ms),
                humantime::format_duration(std::time::Duration::from_millis(
                    window.ahead_ms as u64
                )),
                fmt_ms(now_ms)
            ),
        ));
    }
    Ok(())
}

/// Formats ms since the epoch as RFC 3339 UTC with millisecond precision.
pub fn fmt_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{ms}ms"),
    }
}
