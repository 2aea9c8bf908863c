//! Meter extraction from untrusted `data`, checked against a reference: the
//! whole event parsed into a `serde_json` tree and the path run by
//! `serde_json_path`, the RFC 9535 implementation keymeter validates paths
//! with. keymeter never builds that tree; it walks the raw text.
//!
//! Input: a JSONPath, a newline, then the event's `data` text. The data is
//! sent as the `data` member of an otherwise valid event, decoded as over
//! HTTP, and measured by three meters using the path: SUM (value), UNIQUE_COUNT
//! (value) and COUNT (group).
//!
//! What "the same" means:
//! - Accepted or refused: keymeter accepts the event exactly when the tree
//!   parse does (escapes, lone surrogates, nesting depth), with one
//!   deliberate difference: a number beyond f64's range (`1e400`) makes the
//!   tree parse refuse the whole text, while keymeter accepts the event and a
//!   meter that reads that number refuses it as VALUE_OUT_OF_RANGE (or groups
//!   by its text). Such inputs are only checked for not panicking.
//! - Selection: the same node, or none. A repeated member name selects its
//!   last value in both.
//! - Values: keymeter reads a number from its text as written, exactly; the
//!   tree holds the nearest f64. They must agree within f64's precision plus
//!   the 10^-9 rounding of an amount; near the ±10^20 bound either verdict
//!   passes. Exponent forms (`1.5E+1`) are values like any other. A numeric
//!   string is a decimal `[+-]digits[.digits][e[+-]digits]` and is compared the
//!   same way; any other string is NOT_NUMERIC.
//! - UNIQUE_COUNT identities and group values use serde_json's rendering of
//!   the selected node, so they must be equal.

#![no_main]

use keymeter::event::{decode_body, BodyKind, Decoded, TimeWindow};
use keymeter::meter::{
    CompiledMeter, ExtractError, MeterDef, ObservedValue, UniqueKey, AMOUNT_MAGNITUDE_MAX_UNITS,
    AMOUNT_SCALE,
};
use keymeter_fuzz::check::NOW_MS;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;

/// Stands for a data directory's UNIQUE_COUNT key.
const KEY: UniqueKey = UniqueKey::from_bytes([42; 16]);

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Some((path, data)) = text.split_once('\n') else {
        return;
    };
    static METERS_VALID: std::sync::Once = std::sync::Once::new();
    METERS_VALID.call_once(|| {
        assert!(
            Meters::for_path("$.v").is_some(),
            "the meters of `$.v` are valid"
        )
    });
    let Some(meters) = Meters::for_path(path) else {
        return;
    };
    // Only data that is one JSON value by syntax: anything else would change
    // the envelope around it (`1,"id":"2"`), which is not this target's job.
    if serde_json::from_str::<&RawValue>(data).is_err() {
        return;
    }
    let body = format!(
        r#"{{"specversion":"1.0","id":"1","source":"s","type":"e","subject":"u","data":{data}}}"#
    );
    let ours = decode_body(
        body.as_bytes(),
        BodyKind::Single,
        NOW_MS,
        TimeWindow::default(),
        1,
    )
    .expect("a valid envelope decodes");
    let event = match ours.as_slice() {
        [Decoded::Valid(event)] => Some(event),
        [Decoded::Invalid { .. }] => None,
        other => panic!("one event decodes to {other:?}"),
    };
    let tree = match serde_json::from_str::<Value>(&body) {
        Ok(tree) => tree,
        Err(e) if e.to_string().starts_with("number out of range") => {
            // The documented difference: measure, which must not panic.
            if let Some(event) = event {
                meters.measure(event.data());
            }
            return;
        }
        Err(e) => {
            assert!(event.is_none(), "accepted what a tree parse refuses: {e}");
            return;
        }
    };
    let event = event.expect("refused what a tree parse accepts");
    let node = meters
        .reference
        .query(&tree["data"])
        .at_most_one()
        .expect("a singular path selects at most one node");
    let data = event.data();
    check_sum(meters.sum.extract(data, &KEY).map(|o| o.value), node, path);
    assert_eq!(
        meters.unique.extract(data, &KEY).map(|o| o.value),
        expected_unique(node, path),
        "UNIQUE_COUNT {path} of {data:?}"
    );
    let group = meters
        .count
        .extract(data, &KEY)
        .expect("COUNT measures any data");
    assert_eq!(
        group.group,
        vec![expected_group(node)],
        "group {path} of {data:?}"
    );
});

struct Meters {
    sum: CompiledMeter,
    unique: CompiledMeter,
    count: CompiledMeter,
    reference: serde_json_path::JsonPath,
}

impl Meters {
    fn for_path(path: &str) -> Option<Meters> {
        let meter = |aggregation: &str, value: Option<&str>, group: Option<&str>| {
            let def = serde_json::json!({
                "slug": "m",
                "eventType": "e",
                "aggregation": aggregation,
                "valueProperty": value,
                "groupBy": group.map_or(serde_json::json!({}), |g| serde_json::json!({"g": g})),
            });
            serde_json::from_value::<MeterDef>(def)
                .ok()?
                .validate()
                .ok()
        };
        Some(Meters {
            sum: meter("SUM", Some(path), None)?,
            unique: meter("UNIQUE_COUNT", Some(path), None)?,
            count: meter("COUNT", None, Some(path))?,
            reference: serde_json_path::JsonPath::parse(path).ok()?,
        })
    }

    fn measure(&self, data: Option<&str>) {
        let _ = self.sum.extract(data, &KEY);
        let _ = self.unique.extract(data, &KEY);
        self.count
            .extract(data, &KEY)
            .expect("COUNT measures any data");
    }
}

/// SUM's value against the reference's node.
fn check_sum(ours: Result<ObservedValue, ExtractError>, node: Option<&Value>, path: &str) {
    let path = path.to_owned();
    let reference = match node {
        None => return assert_eq!(ours, Err(ExtractError::ValueMissing { path })),
        Some(Value::Number(n)) => n.as_f64().expect("a tree number is finite"),
        Some(Value::String(s)) if is_decimal(s) => s.parse::<f64>().expect("a decimal parses"),
        Some(Value::String(_)) => {
            let found = "non-numeric string";
            return assert_eq!(ours, Err(ExtractError::NotNumeric { path, found }));
        }
        Some(other) => {
            let found = kind(other);
            return assert_eq!(ours, Err(ExtractError::NotNumeric { path, found }));
        }
    };
    let bound = (AMOUNT_MAGNITUDE_MAX_UNITS / AMOUNT_SCALE) as f64;
    let at_bound = (reference.abs() - bound).abs() <= bound * 1e-15;
    match ours {
        Err(ExtractError::ValueOutOfRange { .. }) if at_bound || reference.abs() > bound => {}
        Ok(ObservedValue::Amount(amount)) if at_bound || reference.abs() < bound => {
            let tolerance = 0.6e-9 + reference.abs() * 1e-15;
            assert!(
                (amount.to_f64() - reference).abs() <= tolerance,
                "{path}: {amount} is not {reference}"
            );
        }
        other => panic!("{path}: {other:?}, the reference reads {reference}"),
    }
}

/// UNIQUE_COUNT's identity: serde_json's rendering of a scalar.
fn expected_unique(node: Option<&Value>, path: &str) -> Result<ObservedValue, ExtractError> {
    let path = path.to_owned();
    match node {
        None => Err(ExtractError::ValueMissing { path }),
        Some(Value::String(s)) => Ok(ObservedValue::Unique(KEY.hash(s))),
        Some(scalar @ (Value::Number(_) | Value::Bool(_))) => {
            Ok(ObservedValue::Unique(KEY.hash(&scalar.to_string())))
        }
        Some(other) => Err(ExtractError::NotScalar {
            path,
            found: kind(other),
        }),
    }
}

/// A group value: a string itself, anything else its compact JSON text,
/// `null` and nothing no value.
fn expected_group(node: Option<&Value>) -> Option<String> {
    match node? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `[+-]digits[.digits][(e|E)[+-]digits]`, integer or fraction digits
/// present: the numeric strings keymeter documents.
fn is_decimal(s: &str) -> bool {
    let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], Some(&s[at + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e) == e.len()
    });
    digits(int) == int.len()
        && digits(frac) == frac.len()
        && int.len() + frac.len() > 0
        && exponent_ok
}
