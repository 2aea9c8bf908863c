//! An independent CloudEvent decoder, written from the documented rules
//! (README's ingest section, `src/event/` and `src/source/binding.rs` module
//! docs), not from keymeter's decoder: the whole event is parsed into a plain
//! serde struct with `data` as a `serde_json::Value` tree, the way the
//! simplest correct decoder would. The `cloudevent_*` targets compare
//! keymeter's verdicts and fields with it.
//!
//! Known, documented difference: a number beyond f64's range (`1e400`) makes
//! the tree parse fail, while keymeter keeps `data` as text and accepts it
//! (a meter reading that number refuses it). The model answers `Unknown`
//! there, and the targets accept either verdict.

use keymeter::event::{
    BodyKind, Decoded, DedupKey, TimeWindow, ATTRIBUTE_BYTES_MAX, DATA_DEPTH_MAX,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The fields keymeter keeps of an accepted event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub key: DedupKey,
    pub ty: String,
    pub subject: String,
    pub time_ms: i64,
    pub data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Valid(Event),
    Invalid,
    /// The tree parse failed on a number beyond f64's range: see the module docs.
    Unknown,
}

/// The envelope: attributes as any JSON (checked below), `null` as absent;
/// unknown members are ignored, a repeated known one refused.
#[derive(Deserialize)]
struct Envelope {
    specversion: Option<Value>,
    id: Option<Value>,
    source: Option<Value>,
    #[serde(rename = "type")]
    ty: Option<Value>,
    subject: Option<Value>,
    time: Option<Value>,
    data: Option<Value>,
}

/// An HTTP body of `kind`: `Err` when refused whole, else one verdict per event.
pub fn decode_body(
    body: &[u8],
    kind: BodyKind,
    now_ms: i64,
    window: TimeWindow,
    batch_events_max: usize,
) -> Result<Vec<Verdict>, ()> {
    let text = std::str::from_utf8(body).map_err(|_| ())?;
    let is_array = text.trim_start().starts_with('[');
    match kind {
        _ if text.trim_start().is_empty() => return Err(()),
        BodyKind::Single if is_array => return Err(()),
        BodyKind::Batch if !is_array => return Err(()),
        _ => {}
    }
    if !is_array {
        let one: Box<RawValue> = serde_json::from_str(text).map_err(|_| ())?;
        return Ok(vec![decode_event(one.get(), now_ms, window)]);
    }
    let items: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(|_| ())?;
    if items.is_empty() || items.len() > batch_events_max {
        return Err(());
    }
    Ok(items
        .iter()
        .map(|item| decode_event(item.get(), now_ms, window))
        .collect())
}

/// One event given as JSON text.
pub fn decode_event(text: &str, now_ms: i64, window: TimeWindow) -> Verdict {
    if !text.trim_start().starts_with('{') {
        return Verdict::Invalid;
    }
    match serde_json::from_str::<Envelope>(text) {
        Ok(envelope) => check(envelope, now_ms, window),
        Err(e) if e.to_string().starts_with("number out of range") => Verdict::Unknown,
        Err(_) => Verdict::Invalid,
    }
}

/// A Kafka message: structured when its content type is
/// `application/cloudevents+json` or it has no `ce_` header; otherwise
/// binary, attributes from `ce_*` headers (the last of a name wins) and the
/// value as `data`, parsed as JSON unless the content type says otherwise.
pub fn decode_message(
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    now_ms: i64,
    window: TimeWindow,
) -> Verdict {
    let attribute = |name: &str| {
        let lower = name.to_ascii_lowercase();
        lower
            .strip_prefix("ce_")
            .filter(|a| !a.is_empty())
            .map(|_| name[3..].to_owned())
    };
    let content_type = headers
        .iter()
        .rev()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, v)| std::str::from_utf8((*v)?).ok());
    let mime = content_type.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let has_attributes = headers.iter().any(|(name, _)| attribute(name).is_some());
    if mime.as_deref() == Some("application/cloudevents+json") || !has_attributes {
        let Ok(text) = std::str::from_utf8(value.unwrap_or_default()) else {
            return Verdict::Invalid;
        };
        let trimmed = text.trim_matches([' ', '\t', '\n', '\r']);
        if serde_json::from_str::<Box<RawValue>>(text).is_err() {
            return Verdict::Invalid;
        }
        return decode_event(trimmed, now_ms, window);
    }
    let mut attributes = Map::new();
    for (name, bytes) in headers {
        let (Some(attr), Some(bytes)) = (attribute(name), bytes) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Verdict::Invalid;
        };
        attributes.insert(attr, Value::String(text.to_owned()));
    }
    let json = mime
        .as_deref()
        .is_none_or(|m| m == "application/json" || m == "text/json" || m.ends_with("+json"));
    // A `ce_data` header is an attribute like any other; a JSON value replaces it.
    let data = match value.filter(|v| !v.is_empty()) {
        Some(bytes) if json => match serde_json::from_slice::<Value>(bytes) {
            Ok(data) => Some(data),
            Err(_) => return Verdict::Invalid,
        },
        _ => attributes.get("data").cloned(),
    };
    let text_of = |name: &str| attributes.get(name).cloned();
    let envelope = Envelope {
        specversion: text_of("specversion"),
        id: text_of("id"),
        source: text_of("source"),
        ty: text_of("type"),
        subject: text_of("subject"),
        time: text_of("time"),
        data,
    };
    check(envelope, now_ms, window)
}

fn check(envelope: Envelope, now_ms: i64, window: TimeWindow) -> Verdict {
    match checked(envelope, now_ms, window) {
        Some(event) => Verdict::Valid(event),
        None => Verdict::Invalid,
    }
}

fn checked(envelope: Envelope, now_ms: i64, window: TimeWindow) -> Option<Event> {
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= ATTRIBUTE_BYTES_MAX => Some(s),
        _ => None,
    };
    if text(envelope.specversion)? != "1.0" {
        return None;
    }
    let id = text(envelope.id)?;
    let source = text(envelope.source)?;
    let ty = text(envelope.ty)?;
    let subject = text(envelope.subject).filter(|s| !s.contains('\0'))?;
    let time_ms = match envelope.time {
        None => now_ms,
        Some(Value::String(t)) => chrono::DateTime::parse_from_rfc3339(&t)
            .ok()?
            .timestamp_millis(),
        Some(_) => return None,
    };
    let (t, now) = (i128::from(time_ms), i128::from(now_ms));
    if t < now - i128::from(window.back_ms) || t > now + i128::from(window.ahead_ms) {
        return None;
    }
    if envelope
        .data
        .as_ref()
        .is_some_and(|d| depth(d) > DATA_DEPTH_MAX)
    {
        return None;
    }
    Some(Event {
        key: DedupKey::new(&source, &id),
        ty,
        subject,
        time_ms,
        data: envelope.data,
    })
}

/// Nesting of arrays and objects.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// keymeter's verdict on one event agrees with the model's: both accept with
/// the same fields, or both refuse (or the model cannot tell).
pub fn assert_agrees(ours: &Decoded, model: &Verdict) {
    match (ours, model) {
        (_, Verdict::Unknown) | (Decoded::Invalid { .. }, Verdict::Invalid) => {}
        (Decoded::Valid(event), Verdict::Valid(expected)) => {
            let data = event
                .data()
                .map(|d| serde_json::from_str::<Value>(d).expect("accepted data parses"));
            let got = Event {
                key: event.key,
                ty: event.ty.clone(),
                subject: event.subject.clone(),
                time_ms: event.time_ms,
                data,
            };
            assert_eq!(&got, expected, "fields differ from the model's");
        }
        (Decoded::Valid(event), Verdict::Invalid) => {
            panic!("accepted what the model refuses: {}", event.raw)
        }
        (Decoded::Invalid { rejection, raw }, Verdict::Valid(_)) => panic!(
            "refused what the model accepts ({rejection}): {}",
            String::from_utf8_lossy(raw)
        ),
    }
}
