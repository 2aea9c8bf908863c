//! The CloudEvents Kafka protocol binding: one Kafka message to one decoded
//! event. Pure: the caller passes "now" and the accepted event-time window.
//!
//! - **Structured mode**: `content-type: application/cloudevents+json`, or no
//!   `ce_*` headers at all; the value is the CloudEvent JSON.
//! - **Binary mode**: attributes in `ce_*` headers, `content-type` is the
//!   event's `datacontenttype`, the value is its `data`.
//!
//! Binary messages are rebuilt as the equivalent structured CloudEvent and
//! run through the same decoder as HTTP bodies, so validation is identical
//! and the log holds one shape of event whichever mode it arrived in.

use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error_code::ErrorCode;
use crate::event::{decode_event, decode_event_text, Decoded, Rejection, TimeWindow};

/// Attributes every event must have, in the order they are checked.
const REQUIRED: [&str; 5] = ["specversion", "id", "source", "type", "subject"];

/// One Kafka header: name and value (`None` for a null header).
pub type Header<'a> = (&'a str, Option<&'a [u8]>);

/// Decodes a message given its value and headers.
pub fn decode_message(
    value: Option<&[u8]>,
    headers: &[Header<'_>],
    now_ms: i64,
    window: TimeWindow,
) -> Decoded {
    let content_type = header_text(headers, "content-type");
    let structured = content_type.is_some_and(is_cloudevents_json)
        || !headers.iter().any(|(name, _)| is_ce_header(name));
    if structured {
        decode_structured(value.unwrap_or_default(), now_ms, window)
    } else {
        decode_binary(value, headers, content_type, now_ms, window)
    }
}

fn decode_structured(value: &[u8], now_ms: i64, window: TimeWindow) -> Decoded {
    let text = match std::str::from_utf8(value) {
        Ok(text) => text,
        Err(e) => return malformed(value, format!("message value is not UTF-8: {e}")),
    };
    if text.trim().is_empty() {
        return malformed(value, "message value is empty".into());
    }
    match decode_event_text(text, now_ms, window) {
        Ok(decoded) => decoded,
        Err(e) => malformed(value, format!("message value is not valid JSON: {e}")),
    }
}

fn decode_binary(
    value: Option<&[u8]>,
    headers: &[Header<'_>],
    content_type: Option<&str>,
    now_ms: i64,
    window: TimeWindow,
) -> Decoded {
    let mut event = Map::new();
    let mut defect: Option<Rejection> = None;
    for (name, bytes) in headers {
        let Some(attr) = ce_attribute(name) else {
            continue;
        };
        match bytes.map(std::str::from_utf8) {
            Some(Ok(text)) => {
                event.insert(attr.to_owned(), Value::String(text.to_owned()));
            }
            Some(Err(_)) => {
                defect.get_or_insert_with(|| {
                    Rejection::new(
                        ErrorCode::InvalidField,
                        format!("header `{name}` is not UTF-8"),
                    )
                });
            }
            None => {}
        }
    }
    if let Some(ct) = content_type {
        event.insert("datacontenttype".into(), Value::String(ct.to_owned()));
    }
    if let Some(data) = value.filter(|v| !v.is_empty()) {
        if content_type.is_none_or(is_json) {
            match serde_json::from_slice::<Value>(data) {
                Ok(v) => {
                    event.insert("data".into(), v);
                }
                Err(e) => {
                    defect.get_or_insert_with(|| {
                        Rejection::new(
                            ErrorCode::MalformedJson,
                            format!("binary-mode message value (data) is not valid JSON: {e}"),
                        )
                    });
                    event.insert("data_base64".into(), base64_value(data));
                }
            }
        } else {
            event.insert("data_base64".into(), base64_value(data));
        }
    }
    if defect.is_none() {
        defect = REQUIRED
            .iter()
            .find(|attr| !event.contains_key(**attr))
            .map(|attr| {
                Rejection::new(
                    ErrorCode::MissingField,
                    format!("binary-mode message has no `ce_{attr}` header"),
                )
            });
    }
    let text = Value::Object(event).to_string();
    if let Some(rejection) = defect {
        return Decoded::Invalid {
            rejection,
            raw: text.into_bytes(),
        };
    }
    match RawValue::from_string(text) {
        Ok(raw) => decode_event(&raw, now_ms, window),
        Err(e) => unreachable!("a serialized JSON object is valid JSON: {e}"),
    }
}

fn malformed(value: &[u8], message: String) -> Decoded {
    Decoded::Invalid {
        rejection: Rejection::new(ErrorCode::MalformedJson, message),
        // The quarantine and the dead-letter topic keep the exact bytes.
        raw: value.to_vec(),
    }
}

fn base64_value(data: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(data))
}

fn is_ce_header(name: &str) -> bool {
    ce_attribute(name).is_some()
}

/// `ce_id` → `id`. Header names are matched case-insensitively on the prefix.
fn ce_attribute(name: &str) -> Option<&str> {
    let prefix = name.get(..3)?;
    prefix
        .eq_ignore_ascii_case("ce_")
        .then(|| &name[3..])
        .filter(|attr| !attr.is_empty())
}

fn header_text<'a>(headers: &[Header<'a>], wanted: &str) -> Option<&'a str> {
    headers
        .iter()
        .rev()
        .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
        .and_then(|(_, v)| v.and_then(|v| std::str::from_utf8(v).ok()))
}

fn mime(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_cloudevents_json(content_type: &str) -> bool {
    mime(content_type) == "application/cloudevents+json"
}

fn is_json(content_type: &str) -> bool {
    let m = mime(content_type);
    m == "application/json" || m == "text/json" || m.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    fn decode(value: Option<&[u8]>, headers: &[Header<'_>]) -> Decoded {
        decode_message(value, headers, NOW, TimeWindow::default())
    }

    fn rejection(d: Decoded) -> (Rejection, String) {
        match d {
            Decoded::Invalid { rejection, raw } => (
                rejection,
                String::from_utf8(raw).expect("UTF-8 in these tests"),
            ),
            Decoded::Valid(e) => panic!("expected a rejection, got {e:?}"),
        }
    }

    const EVENT: &str =
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c","data":{"n":2}}"#;

    #[test]
    fn structured_mode_with_or_without_content_type() {
        for headers in [
            vec![("content-type", Some(&b"application/cloudevents+json"[..]))],
            vec![],
        ] {
            match decode(Some(EVENT.as_bytes()), &headers) {
                Decoded::Valid(e) => {
                    assert_eq!(e.key, crate::event::DedupKey::new("s", "1"));
                    assert_eq!(e.subject, "c");
                    assert_eq!(e.raw, EVENT);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// The one-pass structured decode judges every value as parsing it as
    /// one JSON value and then checking it as an event does.
    #[test]
    fn structured_mode_agrees_with_the_two_pass_decode() {
        let values = [
            format!(" \n{EVENT}\t\r "),
            EVENT.replace(r#""id":"1","#, r#""id":"1","id":"2","#),
            EVENT.replace(r#""subject":"c","#, ""),
            EVENT.replace("1.0", "0.3"),
            format!("  {} ", EVENT.replace("1.0", "0.3")),
            r#"[1,2]"#.to_owned(),
            r#""text""#.to_owned(),
            r#"{"specversion":"1.0""#.to_owned(),
            format!("{EVENT} {{}}"),
            format!("{EVENT}x"),
        ];
        for value in &values {
            let two_pass = match serde_json::from_str::<&RawValue>(value) {
                Ok(raw) => crate::event::decode_event(raw, NOW, TimeWindow::default()),
                Err(e) => malformed(
                    value.as_bytes(),
                    format!("message value is not valid JSON: {e}"),
                ),
            };
            let one_pass = decode(Some(value.as_bytes()), &[]);
            match (&one_pass, &two_pass) {
                (Decoded::Valid(a), Decoded::Valid(b)) => {
                    assert_eq!(
                        (a.key, &a.raw, a.data()),
                        (b.key, &b.raw, b.data()),
                        "{value}"
                    );
                    assert_eq!(a.raw, EVENT);
                }
                (
                    Decoded::Invalid {
                        rejection: a,
                        raw: ra,
                    },
                    Decoded::Invalid {
                        rejection: b,
                        raw: rb,
                    },
                ) => assert_eq!((a, ra), (b, rb), "{value}"),
                _ => panic!("{value}: {one_pass:?} vs {two_pass:?}"),
            }
        }
    }

    #[test]
    fn binary_mode_builds_the_same_event() {
        let headers: Vec<Header<'_>> = vec![
            ("ce_specversion", Some(b"1.0")),
            ("ce_id", Some(b"1")),
            ("ce_source", Some(b"s")),
            ("ce_type", Some(b"t")),
            ("ce_subject", Some(b"c")),
            ("ce_time", Some(b"2026-05-28T20:26:40.123Z")),
            ("content-type", Some(b"application/json")),
        ];
        match decode(Some(br#"{"n":2}"#), &headers) {
            Decoded::Valid(e) => {
                assert_eq!(e.time_ms, 1_780_000_000_123);
                assert_eq!(e.data(), Some(r#"{"n":2}"#));
                let raw: Value = serde_json::from_str(&e.raw).unwrap();
                assert_eq!(raw["datacontenttype"], "application/json");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_mode_without_ce_id_names_the_header() {
        let headers: Vec<Header<'_>> = vec![
            ("ce_specversion", Some(b"1.0")),
            ("ce_source", Some(b"s")),
            ("ce_type", Some(b"t")),
            ("ce_subject", Some(b"c")),
        ];
        let (r, raw) = rejection(decode(Some(b"{}"), &headers));
        assert_eq!(r.code, "MISSING_FIELD");
        assert!(r.message.contains("`ce_id`"), "{}", r.message);
        assert!(raw.contains("\"source\":\"s\""), "{raw}");
    }

    #[test]
    fn undecodable_values_are_malformed_json() {
        match decode(Some(b"\xff\xfe"), &[]) {
            Decoded::Invalid { rejection, raw } => {
                assert_eq!(rejection.code, "MALFORMED_JSON");
                assert_eq!(raw, b"\xff\xfe", "the exact bytes are kept");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rejection(decode(Some(b"{nope"), &[])).0.code,
            "MALFORMED_JSON"
        );
        assert_eq!(rejection(decode(None, &[])).0.code, "MALFORMED_JSON");
        let (r, raw) = rejection(decode(Some(b"{nope"), &[]));
        assert!(r.message.contains("not valid JSON"));
        assert_eq!(raw, "{nope");
        let headers: Vec<Header<'_>> =
            vec![("ce_id", Some(b"1")), ("ce_specversion", Some(b"1.0"))];
        assert_eq!(
            rejection(decode(Some(b"not json"), &headers)).0.code,
            "MALFORMED_JSON"
        );
    }

    #[test]
    fn structured_value_without_specversion_is_refused_precisely() {
        let (r, _) = rejection(decode(Some(br#"{"id":"1"}"#), &[]));
        assert_eq!(r.code, "MISSING_FIELD");
    }
}
