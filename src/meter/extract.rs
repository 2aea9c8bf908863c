//! Pulling a meter's value and group values out of a CloudEvent's `data`.

use std::fmt::Write as _;

use serde_json::Value;

use super::amount::{Amount, AmountParseError};
use super::def::{Aggregation, CompiledMeter};
use super::path::SingularPath;
use super::unique::UniqueKey;
use crate::error_code::ErrorCode;

/// What one event contributes to a meter, before windowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub value: ObservedValue,
    /// One entry per `groupBy` key, in [`CompiledMeter::group_keys`] order;
    /// `None` when the path selects nothing or `null`.
    pub group: Vec<Option<String>>,
}

/// The measured part of an observation, shaped by the meter's aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedValue {
    /// COUNT: the event itself is the measurement.
    None,
    /// SUM, AVG, MIN, MAX, LATEST.
    Amount(Amount),
    /// UNIQUE_COUNT: [`UniqueKey::hash`] of the value's canonical text.
    Unique(u128),
}

/// Why an event's `data` could not be measured by a meter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("valueProperty {path} selects nothing in the event data")]
    ValueMissing { path: String },
    #[error("valueProperty {path} must be a number or a numeric string, found {found}")]
    NotNumeric { path: String, found: &'static str },
    #[error("valueProperty {path} is outside ±1e20")]
    ValueOutOfRange { path: String },
    #[error("valueProperty {path} must be a string, number or boolean, found {found}")]
    NotScalar { path: String, found: &'static str },
    #[error("valueProperty {path} is negative; the meter does not set allowNegative")]
    Negative { path: String },
    #[error(
        "valueProperty {path} has a non-zero digit past the 9th decimal, which is not kept; \
         the meter does not set roundValues"
    )]
    TooPrecise { path: String },
}

impl ExtractError {
    /// Stable machine-readable code for rejection reasons.
    pub fn code(&self) -> ErrorCode {
        match self {
            ExtractError::ValueMissing { .. } => ErrorCode::ValuePropertyMissing,
            ExtractError::NotNumeric { .. } => ErrorCode::ValueNotNumeric,
            ExtractError::ValueOutOfRange { .. } => ErrorCode::ValueOutOfRange,
            ExtractError::NotScalar { .. } => ErrorCode::ValueNotScalar,
            ExtractError::Negative { .. } => ErrorCode::ValueNegative,
            ExtractError::TooPrecise { .. } => ErrorCode::ValueTooPrecise,
        }
    }

    /// Whether ingest refuses the event whatever the meter's `strict` says.
    /// Only a value the meter *could* read but refuses by policy: a meter
    /// skips an event only where the fold of the logged event skips it too,
    /// and the fold counts every value it can read (rounding excess digits).
    pub fn refuses_event(&self) -> bool {
        matches!(
            self,
            ExtractError::Negative { .. } | ExtractError::TooPrecise { .. }
        )
    }
}

impl CompiledMeter {
    /// Measures one event's `data`, given as its JSON text (absent `data`
    /// behaves like an empty object). Only the nodes the meter's paths
    /// select are parsed. `key` is the data directory's: a UNIQUE_COUNT
    /// identity is only comparable with those made under the same key.
    pub fn extract(
        &self,
        data: Option<&str>,
        key: &UniqueKey,
    ) -> Result<Observation, ExtractError> {
        self.measure(data, key, false)
    }

    /// [`CompiledMeter::extract`]; with `exact`, a value with a non-zero
    /// digit past the 9th decimal is refused rather than rounded.
    fn measure(
        &self,
        data: Option<&str>,
        key: &UniqueKey,
        exact: bool,
    ) -> Result<Observation, ExtractError> {
        let value = match &self.value_path {
            None => ObservedValue::None,
            Some(path) => {
                let Some(text) = data.and_then(|data| path.select(data)) else {
                    return Err(ExtractError::ValueMissing {
                        path: path.as_str().to_owned(),
                    });
                };
                if self.aggregation() == Aggregation::UniqueCount {
                    let node = serde_json::from_str(text)
                        .map_err(|_| unparsed_value(text, path, self.aggregation()))?;
                    ObservedValue::Unique(unique_value_hash(&node, path, key)?)
                } else {
                    ObservedValue::Amount(amount_of_text(text, path, exact)?)
                }
            }
        };
        let group = self
            .group_paths
            .iter()
            .map(|path| match select(path, data)? {
                Ok(node) => group_text(&node),
                Err(text) => Some(text.to_owned()),
            })
            .collect();
        Ok(Observation { value, group })
    }

    /// [`CompiledMeter::extract`] as ingest decides it: also refuses a
    /// negative value unless the meter allows them, and a value with more
    /// decimals than an amount keeps unless the meter rounds them. Only new
    /// events are refused; an event already in the log folds as it was
    /// accepted (the fold calls `extract`), so a replay of an older log is
    /// unchanged.
    pub fn admit(&self, data: Option<&str>, key: &UniqueKey) -> Result<Observation, ExtractError> {
        let obs = self.measure(data, key, !self.def().round_values)?;
        if let ObservedValue::Amount(a) = obs.value {
            if a.0 < 0 && !self.def().allow_negative {
                let path = self.value_path.as_ref().map_or("", |p| p.as_str());
                return Err(ExtractError::Negative {
                    path: path.to_owned(),
                });
            }
        }
        Ok(obs)
    }
}

/// The node `path` selects in `data`, parsed. The text was checked as JSON,
/// nested no deeper than a parse allows, when the event was decoded; what
/// still fails to parse is a node that is or holds a number beyond f64's
/// range (`1e400`), which comes back as its text.
fn select<'d>(path: &SingularPath, data: Option<&'d str>) -> Option<Result<Value, &'d str>> {
    let node = path.select(data?)?;
    Some(serde_json::from_str(node).map_err(|_| node))
}

/// Why a selected value that does not parse cannot be measured: the number
/// itself is out of range; an array or object holding one is the wrong kind,
/// as it would be with any numbers inside.
fn unparsed_value(text: &str, path: &SingularPath, aggregation: Aggregation) -> ExtractError {
    let found = match text.as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        _ => {
            return ExtractError::ValueOutOfRange {
                path: path.as_str().to_owned(),
            }
        }
    };
    let path = path.as_str().to_owned();
    if aggregation == Aggregation::UniqueCount {
        ExtractError::NotScalar { path, found }
    } else {
        ExtractError::NotNumeric { path, found }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A selected node (JSON text) as an exact [`Amount`]. A number is read
/// from its text as written, so every digit counts (`0.1` is exactly 0.1,
/// `123456789.123456789` and `99999999999999999999` keep all their digits,
/// which an `f64` would not) and `1e400` is out of range; a string must
/// hold a decimal; anything else is the wrong kind.
fn amount_of_text(text: &str, path: &SingularPath, exact: bool) -> Result<Amount, ExtractError> {
    let text = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    let parse = match exact {
        true => Amount::parse_decimal_exact,
        false => Amount::parse_decimal,
    };
    let parsed = if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        // JSON's number grammar is a subset of the decimal grammar.
        parse(text)
    } else {
        match serde_json::from_str(text) {
            Ok(Value::String(text)) => parse(&text),
            Ok(other) => {
                return Err(ExtractError::NotNumeric {
                    path: path.as_str().to_owned(),
                    found: json_kind(&other),
                })
            }
            Err(_) => return Err(unparsed_value(text, path, Aggregation::Sum)),
        }
    };
    parsed.map_err(|e| match e {
        AmountParseError::Syntax => ExtractError::NotNumeric {
            path: path.as_str().to_owned(),
            found: "non-numeric string",
        },
        AmountParseError::OutOfRange => ExtractError::ValueOutOfRange {
            path: path.as_str().to_owned(),
        },
        AmountParseError::TooPrecise => ExtractError::TooPrecise {
            path: path.as_str().to_owned(),
        },
    })
}

/// A group value's text: strings as themselves, numbers and booleans as their JSON
/// text, arrays and objects as compact JSON; `null` is no value.
fn group_text(node: &Value) -> Option<String> {
    match node {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        other => Some(other.to_string()),
    }
}

fn unique_value_hash(
    node: &Value,
    path: &SingularPath,
    key: &UniqueKey,
) -> Result<u128, ExtractError> {
    let mut hasher = key.hasher();
    match node {
        Value::String(text) => hasher.write_bytes(text.as_bytes()),
        Value::Bool(flag) => hasher.write_bytes(if *flag { b"true" } else { b"false" }),
        Value::Number(number) => {
            // Writing into the hasher cannot fail.
            let _ = write!(hasher, "{number}");
        }
        other => {
            return Err(ExtractError::NotScalar {
                path: path.as_str().to_owned(),
                found: json_kind(other),
            })
        }
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::def::MeterDef;
    use serde_json::json;

    const KEY: UniqueKey = UniqueKey::from_bytes([42; 16]);

    fn meter(aggregation: &str, value_property: Option<&str>) -> CompiledMeter {
        let mut def = json!({
            "slug": "m",
            "eventType": "e",
            "aggregation": aggregation,
            "groupBy": {"model": "$.model", "tier": "$.tier"},
            "allowNegative": true
        });
        if let Some(path) = value_property {
            def["valueProperty"] = json!(path);
        }
        serde_json::from_value::<MeterDef>(def)
            .unwrap()
            .validate()
            .unwrap()
    }

    #[test]
    fn excess_decimals_are_refused_at_ingest_unless_the_meter_rounds_them() {
        let sum = |round: bool| -> CompiledMeter {
            serde_json::from_value::<MeterDef>(json!({"slug": "m", "eventType": "e",
                "aggregation": "SUM", "valueProperty": "$.v", "roundValues": round}))
            .unwrap()
            .validate()
            .unwrap()
        };
        let amount = |units| Ok(ObservedValue::Amount(Amount(units)));
        for (data, rounded) in [(r#"{"v": 1e-10}"#, 0), (r#"{"v": "0.0000000015"}"#, 2)] {
            let refused = sum(false).admit(Some(data), &KEY).unwrap_err();
            assert_eq!(refused.code(), ErrorCode::ValueTooPrecise, "{data}");
            assert!(
                refused.refuses_event(),
                "skipping would differ from the fold"
            );
            assert_eq!(
                sum(true).admit(Some(data), &KEY).map(|o| o.value),
                amount(rounded)
            );
            // An event already logged folds as before: rounded.
            assert_eq!(
                sum(false).extract(Some(data), &KEY).map(|o| o.value),
                amount(rounded)
            );
        }
        let exact = r#"{"v": 12345678901.423456789}"#;
        assert_eq!(
            sum(false).admit(Some(exact), &KEY).map(|o| o.value),
            amount(12_345_678_901_423_456_789)
        );
    }

    #[test]
    fn negative_values_are_refused_unless_the_meter_allows_them() {
        let strict: CompiledMeter = serde_json::from_value::<MeterDef>(json!({
            "slug": "m", "eventType": "e", "aggregation": "SUM", "valueProperty": "$.v"}))
        .unwrap()
        .validate()
        .unwrap();
        for refused in [r#"{"v": -1}"#, r#"{"v": "-0.000000001"}"#, r#"{"v": -1e9}"#] {
            // Folding an accepted event still reads it; ingest refuses it.
            assert!(strict.extract(Some(refused), &KEY).is_ok(), "{refused}");
            assert_eq!(
                strict.admit(Some(refused), &KEY).map(|o| o.value),
                Err(ExtractError::Negative { path: "$.v".into() }),
                "{refused}"
            );
        }
        for accepted in [
            r#"{"v": 0}"#,
            r#"{"v": -0}"#,
            r#"{"v": "-0.0"}"#,
            r#"{"v": 1}"#,
        ] {
            assert!(strict.admit(Some(accepted), &KEY).is_ok(), "{accepted}");
        }
        assert_eq!(
            amount_of_data(json!({"v": -2})),
            Ok(ObservedValue::Amount(Amount::from_int(-2)))
        );
    }

    fn amount_of_data(data: Value) -> Result<ObservedValue, ExtractError> {
        meter("SUM", Some("$.v"))
            .extract(Some(&data.to_string()), &KEY)
            .map(|o| o.value)
    }

    #[test]
    fn numbers_and_numeric_strings_become_exact_amounts() {
        let cases = [
            (json!({"v": 12}), Amount::from_int(12)),
            (json!({"v": -3}), Amount::from_int(-3)),
            (
                json!({"v": u64::MAX}),
                Amount(i128::from(u64::MAX) * 1_000_000_000),
            ),
            (json!({"v": 0.1}), Amount(100_000_000)),
            (json!({"v": "12.5"}), Amount(12_500_000_000)),
            (json!({"v": "1e3"}), Amount::from_int(1000)),
            (json!({"v": 2.5e-4}), Amount(250_000)),
            (
                json!({"v": 1.0e20}),
                Amount(crate::meter::amount::AMOUNT_MAGNITUDE_MAX_UNITS),
            ),
        ];
        for (data, expected) in &cases {
            assert_eq!(
                amount_of_data(data.clone()),
                Ok(ObservedValue::Amount(*expected)),
                "{data}"
            );
        }
        let parsed: Value = serde_json::from_str(r#"{"v": 1e3}"#).unwrap();
        assert_eq!(
            amount_of_data(parsed),
            Ok(ObservedValue::Amount(Amount::from_int(1000)))
        );
        let parsed: Value = serde_json::from_str(r#"{"v": 2.5E-4}"#).unwrap();
        assert_eq!(
            amount_of_data(parsed),
            Ok(ObservedValue::Amount(Amount(250_000)))
        );
    }

    #[test]
    fn numbers_are_read_from_their_text_as_written() {
        let amount = |data: &str| {
            meter("SUM", Some("$.v"))
                .extract(Some(data), &KEY)
                .map(|o| o.value)
        };
        for (data, units) in [
            // More digits than an f64 holds: 123456789.12345679 as f64.
            (r#"{"v": 123456789.123456789}"#, 123_456_789_123_456_789),
            // Beyond u64: 1e20 as f64.
            (
                r#"{"v": 99999999999999999999}"#,
                99_999_999_999_999_999_999 * 1_000_000_000,
            ),
            (
                r#"{"v": -18446744073709551616}"#,
                -18_446_744_073_709_551_616 * 1_000_000_000,
            ),
            (r#"{"v": 1.5E+1}"#, 15_000_000_000),
            (
                r#"{"v": 0.1000000000000000055511151231257827}"#,
                100_000_000,
            ),
            // The tenth decimal rounds half to even on the digits as written.
            (r#"{"v": 2.0000000025}"#, 2_000_000_002),
        ] {
            assert_eq!(
                amount(data),
                Ok(ObservedValue::Amount(Amount(units))),
                "{data}"
            );
        }
    }

    #[test]
    fn non_numeric_values_are_rejected_with_their_kind() {
        for (data, found) in [
            (json!({"v": true}), "boolean"),
            (json!({"v": null}), "null"),
            (json!({"v": {}}), "object"),
            (json!({"v": [1]}), "array"),
            (json!({"v": "12 apples"}), "non-numeric string"),
        ] {
            let err = amount_of_data(data).unwrap_err();
            assert_eq!(err.code(), "VALUE_NOT_NUMERIC");
            assert_eq!(
                err,
                ExtractError::NotNumeric {
                    path: "$.v".into(),
                    found
                }
            );
        }
        let err = amount_of_data(json!({"v": 1.5e20})).unwrap_err();
        assert_eq!(err.code(), "VALUE_OUT_OF_RANGE");
        let err = amount_of_data(json!({"v": "-1e21"})).unwrap_err();
        assert_eq!(err.code(), "VALUE_OUT_OF_RANGE");
    }

    #[test]
    fn missing_value_or_data_is_value_missing() {
        let err = amount_of_data(json!({"w": 1})).unwrap_err();
        assert_eq!(err.code(), "VALUE_PROPERTY_MISSING");
        assert!(err.to_string().contains("$.v"));
        let err = meter("SUM", Some("$.v")).extract(None, &KEY).unwrap_err();
        assert_eq!(err, ExtractError::ValueMissing { path: "$.v".into() });
    }

    #[test]
    fn numbers_beyond_f64_are_out_of_range_values_and_verbatim_groups() {
        let data = r#"{"v": 1e400, "model": -2E+999, "tier": "t"}"#;
        let err = meter("SUM", Some("$.v"))
            .extract(Some(data), &KEY)
            .unwrap_err();
        assert_eq!(err, ExtractError::ValueOutOfRange { path: "$.v".into() });
        let holding = |agg: &str, data: &str| {
            meter(agg, Some("$.v"))
                .extract(Some(data), &KEY)
                .unwrap_err()
        };
        let (path, found) = ("$.v".to_owned(), "object");
        assert_eq!(
            holding("SUM", r#"{"v": {"w": 1e400}}"#),
            ExtractError::NotNumeric { path, found }
        );
        let (path, found) = ("$.v".to_owned(), "array");
        assert_eq!(
            holding("UNIQUE_COUNT", r#"{"v": [1e400]}"#),
            ExtractError::NotScalar { path, found }
        );
        let obs = meter("COUNT", None).extract(Some(data), &KEY).unwrap();
        assert_eq!(
            obs.group,
            vec![Some("-2E+999".to_owned()), Some("t".to_owned())]
        );
    }

    #[test]
    fn count_needs_no_value_and_groups_follow_key_order() {
        let m = meter("COUNT", None);
        let obs = m
            .extract(Some(&json!({"tier": 3, "model": "gpt"}).to_string()), &KEY)
            .unwrap();
        assert_eq!(obs.value, ObservedValue::None);
        assert_eq!(
            obs.group,
            vec![Some("gpt".to_owned()), Some("3".to_owned())]
        );
        let obs = m.extract(None, &KEY).unwrap();
        assert_eq!(obs.group, vec![None, None]);
    }

    #[test]
    fn group_values_render_scalars_as_json_text_and_null_as_none() {
        let m = meter("COUNT", None);
        let group = |data: Value| m.extract(Some(&data.to_string()), &KEY).unwrap().group;
        assert_eq!(
            group(json!({"model": true, "tier": null})),
            vec![Some("true".to_owned()), None]
        );
        assert_eq!(
            group(json!({"model": 1.5, "tier": ""})),
            vec![Some("1.5".to_owned()), Some(String::new())]
        );
        assert_eq!(
            group(json!({"model": {"b": 1, "a": [2]}})),
            vec![Some(r#"{"a":[2],"b":1}"#.to_owned()), None]
        );
    }

    #[test]
    fn unique_count_hashes_canonical_text_under_the_key() {
        let m = meter("UNIQUE_COUNT", Some("$.user"));
        let hash = |data: Value| m.extract(Some(&data.to_string()), &KEY).map(|o| o.value);
        for (data, canonical) in [
            (json!({"user": "alice"}), "alice"),
            (json!({"user": 7}), "7"),
            (json!({"user": "7"}), "7"),
            (json!({"user": 0.5}), "0.5"),
            (json!({"user": 1e300}), "1e+300"),
            (json!({"user": false}), "false"),
        ] {
            assert_eq!(
                hash(data.clone()),
                Ok(ObservedValue::Unique(KEY.hash(canonical))),
                "{data}"
            );
        }
        assert_ne!(hash(json!({"user": 7})), hash(json!({"user": 7.0})));
        let other = UniqueKey::from_bytes([8; 16]);
        assert_eq!(
            m.extract(Some(r#"{"user": "alice"}"#), &other)
                .map(|o| o.value),
            Ok(ObservedValue::Unique(other.hash("alice")))
        );
        assert_ne!(other.hash("alice"), KEY.hash("alice"));
        for (data, found) in [
            (json!({"user": [1]}), "array"),
            (json!({"user": {}}), "object"),
            (json!({"user": null}), "null"),
        ] {
            let err = hash(data).unwrap_err();
            assert_eq!(err.code(), "VALUE_NOT_SCALAR");
            assert_eq!(
                err,
                ExtractError::NotScalar {
                    path: "$.user".into(),
                    found
                }
            );
        }
    }
}
