//! The published JSON Schemas agree with what the server accepts: every
//! example is accepted by the decoder exactly when the schema validates it.

mod common;

use common::schema;
use keymeter::event::{decode_body, BodyKind, Decoded, TimeWindow};
use keymeter::meter::MeterDef;
use serde_json::{json, Value};

fn decoder_accepts(event: &Value) -> bool {
    // A window wide enough that only the envelope is judged.
    let window = TimeWindow {
        back_ms: i64::MAX / 4,
        ahead_ms: i64::MAX / 4,
    };
    match decode_body(event.to_string().as_bytes(), BodyKind::Single, 0, window, 1) {
        Ok(mut v) => matches!(v.pop(), Some(Decoded::Valid(_))),
        Err(_) => false,
    }
}

#[test]
fn usage_event_schema_agrees_with_the_decoder() {
    let v = schema("usage-event/v1.json");
    let base = json!({"specversion": "1.0", "id": "1", "source": "app", "type": "api_call", "subject": "cust-1"});
    let with = |k: &str, val: Value| {
        let mut e = base.clone();
        e[k] = val;
        e
    };
    let without = |k: &str| {
        let mut e = base.clone();
        e.as_object_mut().unwrap().remove(k);
        e
    };
    let accepted = [
        base.clone(),
        with("time", json!("2026-11-01T10:00:00.123Z")),
        with("time", json!("2026-11-01T10:00:00+02:00")),
        with("time", Value::Null),
        with("data", json!({"tokens": 12, "model": "x"})),
        with("data", json!(5)),
        with("myextension", json!("kept")),
    ];
    let rejected = [
        without("id"),
        without("source"),
        without("type"),
        without("subject"),
        without("specversion"),
        with("specversion", json!("0.3")),
        with("id", json!("")),
        with("id", json!(7)),
        with("subject", json!("a\u{0}b")),
        with("time", json!("yesterday")),
        with("time", json!(1700000000)),
        with("source", json!("s".repeat(1025))),
        json!([base.clone()]),
        json!("event"),
    ];
    for e in &accepted {
        assert!(v.is_valid(e), "schema rejects {e}");
        assert!(decoder_accepts(e), "decoder rejects {e}");
    }
    for e in &rejected {
        assert!(!v.is_valid(e), "schema accepts {e}");
        assert!(!decoder_accepts(e), "decoder accepts {e}");
    }
}

fn server_accepts_meter(m: &Value) -> bool {
    serde_json::from_value::<MeterDef>(m.clone())
        .map(|d| d.validate().is_ok())
        .unwrap_or(false)
}

#[test]
fn meter_schema_agrees_with_meter_validation() {
    let v = schema("meter/v1.json");
    let accepted = [
        json!({"slug": "tokens", "eventType": "api_call", "aggregation": "SUM", "valueProperty": "$.tokens"}),
        json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}),
        json!({"slug": "users-1", "eventType": "login", "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user",
               "groupBy": {"region": "$.region", "plan_tier": "$.plan.tier"}, "windowSize": "HOUR", "description": "d"}),
        json!({"slug": "lvl", "eventType": "x", "aggregation": "LATEST", "valueProperty": "$.level", "windowSize": "MONTH"}),
    ];
    let rejected = [
        json!({"slug": "Tokens", "eventType": "api_call", "aggregation": "SUM", "valueProperty": "$.tokens"}),
        json!({"slug": "t", "eventType": "api_call", "aggregation": "SUM"}),
        json!({"slug": "t", "eventType": "api_call", "aggregation": "COUNT", "valueProperty": "$.n"}),
        json!({"slug": "t", "eventType": "api_call", "aggregation": "MEDIAN", "valueProperty": "$.n"}),
        json!({"slug": "t", "eventType": "", "aggregation": "COUNT"}),
        json!({"slug": "t", "eventType": "x", "aggregation": "COUNT", "windowSize": "WEEK"}),
        json!({"slug": "t", "eventType": "x", "aggregation": "COUNT", "groupBy": {"bad key": "$.a"}}),
        json!({"slug": "t", "eventType": "x", "aggregation": "SUM", "valueProperty": "tokens"}),
        json!({"slug": "t", "eventType": "x", "aggregation": "COUNT", "colour": "red"}),
        json!({"eventType": "x", "aggregation": "COUNT"}),
    ];
    for m in &accepted {
        assert!(v.is_valid(m), "schema rejects {m}");
        assert!(server_accepts_meter(m), "server rejects {m}");
    }
    for m in &rejected {
        assert!(!v.is_valid(m), "schema accepts {m}");
        assert!(!server_accepts_meter(m), "server accepts {m}");
    }
}
