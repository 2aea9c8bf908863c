//! Tests of body framing, envelope checks and event times.

use serde_json::Value;

use super::decode::nesting_depth;
use super::*;
use crate::error_code::ErrorCode;

const NOW: i64 = 1_780_000_000_000;

fn one(body: &str) -> Decoded {
    let mut v = decode_body(
        body.as_bytes(),
        BodyKind::Either,
        NOW,
        TimeWindow::default(),
        10,
    )
    .expect("body decodes");
    assert_eq!(v.len(), 1);
    v.pop().unwrap()
}

fn code(d: Decoded) -> ErrorCode {
    match d {
        Decoded::Invalid { rejection, .. } => rejection.code,
        Decoded::Valid(e) => panic!("expected a rejection, got {e:?}"),
    }
}

#[test]
fn valid_event_keeps_millisecond_time_and_raw_text() {
    let body = r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c","time":"2026-05-28T20:26:40.123456Z","data":{"n":1}}"#;
    match one(body) {
        Decoded::Valid(e) => {
            assert_eq!(e.time_ms, 1_780_000_000_123);
            assert_eq!(e.raw, body);
            assert_eq!(e.data(), Some(r#"{"n":1}"#));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_time_takes_receive_time() {
    match one(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c"}"#) {
        Decoded::Valid(e) => assert_eq!(e.time_ms, NOW),
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_envelope_defect_has_its_code() {
    let base = r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c"}"#;
    let with = |k: &str, v: Value| {
        let mut o: serde_json::Map<String, Value> = serde_json::from_str(base).unwrap();
        if v.is_null() {
            o.remove(k);
        } else {
            o.insert(k.into(), v);
        }
        serde_json::to_string(&o).unwrap()
    };
    assert_eq!(code(one(&with("id", Value::Null))), "MISSING_FIELD");
    assert_eq!(code(one(&with("subject", Value::Null))), "MISSING_FIELD");
    assert_eq!(
        code(one(&with("specversion", "0.3".into()))),
        "UNSUPPORTED_SPECVERSION"
    );
    assert_eq!(code(one(&with("id", 7.into()))), "INVALID_FIELD");
    assert_eq!(code(one(&with("time", "yesterday".into()))), "INVALID_TIME");
    assert_eq!(
        code(one(&with("time", "2020-01-01T00:00:00Z".into()))),
        "EVENT_TIME_OUT_OF_RANGE"
    );
    assert_eq!(
        code(one(&with("time", fmt_ms(NOW + 6 * 60 * 1000).into()))),
        "EVENT_TIME_OUT_OF_RANGE"
    );
    assert_eq!(code(one("[1]")), "INVALID_EVENT");
}

#[test]
fn whole_body_defects_are_refused() {
    let w = TimeWindow::default();
    let err = |b: &str, k| decode_body(b.as_bytes(), k, NOW, w, 2).unwrap_err().code;
    assert_eq!(err("{not json", BodyKind::Either), "MALFORMED_JSON");
    assert_eq!(err("", BodyKind::Either), "MALFORMED_JSON");
    assert_eq!(err("[]", BodyKind::Batch), "INVALID_BODY");
    assert_eq!(err("{}", BodyKind::Batch), "INVALID_BODY");
    assert_eq!(err("[{}]", BodyKind::Single), "INVALID_BODY");
    assert_eq!(err("[{},{},{}]", BodyKind::Batch), "BATCH_TOO_LARGE");
}

#[test]
fn escaped_attributes_decode_and_non_strings_are_refused() {
    match one(r#"{"specversion":"1.0","id":"a\"b\u00e9","source":"s\/x","type":"t","subject":"c"}"#)
    {
        Decoded::Valid(e) => {
            assert_eq!(e.key, DedupKey::new("s/x", "a\"b\u{e9}"));
        }
        other => panic!("{other:?}"),
    }
    for bad in [r#"[1,{"a":2}]"#, r#"{"x":[1]}"#, "true", "1.5", "-3"] {
        let body =
            format!(r#"{{"specversion":"1.0","id":{bad},"source":"s","type":"t","subject":"c"}}"#);
        assert_eq!(code(one(&body)), "INVALID_FIELD", "{body}");
    }
    let null_time =
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c","time":null}"#;
    assert!(matches!(one(null_time), Decoded::Valid(e) if e.time_ms == NOW));
}

#[test]
fn data_nests_as_deep_as_a_tree_parse_allows() {
    for depth in [1, 2, 60, 125, 126, 127, 128, 200] {
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(
            r#"{{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c","data":{data}}}"#
        );
        let tree_parses = serde_json::from_str::<Value>(&body).is_ok();
        match one(&body) {
            Decoded::Valid(e) => {
                assert!(tree_parses, "depth {depth} accepted");
                assert_eq!(e.data(), Some(data.as_str()));
            }
            Decoded::Invalid { rejection, .. } => {
                assert!(!tree_parses, "depth {depth} refused: {rejection}");
                assert_eq!(rejection.code, "INVALID_EVENT");
            }
        }
    }
    let strings = format!(r#"{{"a":"{}","b":["\"{{"]}}"#, "[".repeat(300));
    assert_eq!(nesting_depth(&strings), 2);
}

#[test]
fn dedup_key_separates_source_and_id() {
    assert_ne!(DedupKey::new("ab", "c"), DedupKey::new("a", "bc"));
    assert_eq!(DedupKey::new("a", "b"), DedupKey::new("a", "b"));
}

#[test]
fn data_with_a_lone_surrogate_escape_is_refused_as_a_tree_parse_refuses_it() {
    for data in [
        r#""\ud800""#,
        r#""\uDC00""#,
        r#"{"k":"a\ud800b"}"#,
        r#"["\ud800\u0041"]"#,
        r#"{"\udbff":1}"#,
        r#""\ud800\ud800""#,
        r#""\ud83d\ude00""#,
        r#""\\ud800""#,
        r#""\u00e9\n\/""#,
        r#"{"k":"\ud83d\ude00","\uD83D\uDE00":["\uffff"]}"#,
    ] {
        let body = format!(
            r#"{{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c","data":{data}}}"#
        );
        let tree_parses = serde_json::from_str::<Value>(&body).is_ok();
        match one(&body) {
            Decoded::Valid(e) => {
                assert!(tree_parses, "{data} accepted");
                assert_eq!(e.data(), Some(data));
            }
            Decoded::Invalid { rejection, .. } => {
                assert!(!tree_parses, "{data} refused: {rejection}");
                assert_eq!(rejection.code, "INVALID_EVENT");
            }
        }
    }
}
