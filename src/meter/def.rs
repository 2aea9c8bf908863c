//! Meter definitions (OpenMeter's model) and their validation into a [`CompiledMeter`].

use crate::id::MeterSlug;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::path::{PathError, SingularPath};
use super::window::WindowSize;
use crate::error_code::ErrorCode;

/// How a meter aggregates the events it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Aggregation {
    Sum,
    Count,
    Avg,
    Min,
    Max,
    UniqueCount,
    Latest,
}

impl Aggregation {
    /// The wire name (`"SUM"`, `"UNIQUE_COUNT"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Sum => "SUM",
            Aggregation::Count => "COUNT",
            Aggregation::Avg => "AVG",
            Aggregation::Min => "MIN",
            Aggregation::Max => "MAX",
            Aggregation::UniqueCount => "UNIQUE_COUNT",
            Aggregation::Latest => "LATEST",
        }
    }
}

/// Most `groupBy` entries a meter may have.
pub const GROUP_BY_MAX: usize = 16;
/// Longest accepted `eventType`, in characters.
pub const EVENT_TYPE_CHARS_MAX: usize = 256;

/// A meter as configured or sent over the API (JSON in camelCase, like OpenMeter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeterDef {
    /// Stable id (a ULID) given when the meter is created; absent on meters
    /// created before meters had ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub slug: MeterSlug,
    /// A display name (OpenMeter's `name`); the slug when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free key/value labels (OpenMeter's `metadata`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub event_type: String,
    /// Events before this instant (RFC 3339) are not counted by this meter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_from: Option<String>,
    pub aggregation: Aggregation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_property: Option<String>,
    #[serde(default)]
    pub group_by: BTreeMap<String, String>,
    #[serde(default = "default_window_size")]
    pub window_size: WindowSize,
    /// Accept negative values (credits, corrections). Off by default: one
    /// event of `-1e9` would otherwise undo a license's usage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_negative: bool,
    /// Refuse at ingest an event of this meter's type that the meter cannot
    /// read (missing or non-numeric value). Off by default: such an event is
    /// accepted and skipped by this meter only (see [`super::MeterSet::check`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Round a value with a non-zero digit past the 9th decimal half to
    /// even. Off by default: ingest refuses such a value (`VALUE_TOO_PRECISE`)
    /// rather than count another number than the one sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub round_values: bool,
    /// When the meter was created and last changed (RFC 3339, UTC,
    /// milliseconds), stamped by the engine; absent on older meters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// OpenMeter fields keymeter accepts and does not keep (`annotations`,
    /// `dimensions`, `deletedAt`), so its clients' bodies are not refused.
    #[serde(default, skip_serializing, rename = "annotations")]
    pub ignored_annotations: Option<serde_json::Value>,
    #[serde(default, skip_serializing, rename = "dimensions")]
    pub ignored_dimensions: Option<serde_json::Value>,
    #[serde(default, skip_serializing, rename = "deletedAt")]
    pub ignored_deleted_at: Option<serde_json::Value>,
}

fn default_window_size() -> WindowSize {
    WindowSize::Minute
}

/// Why a meter definition was refused. Every variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    #[error("slug {slug:?} must match ^[a-z0-9][a-z0-9_-]{{0,62}}$")]
    InvalidSlug { slug: String },
    #[error("eventType must be 1 to {EVENT_TYPE_CHARS_MAX} characters, got {chars}")]
    InvalidEventType { chars: usize },
    #[error("valueProperty is required for aggregation {aggregation}")]
    ValuePropertyRequired { aggregation: &'static str },
    #[error("valueProperty must be absent for aggregation COUNT")]
    ValuePropertyNotAllowed,
    #[error("{field} {path:?} is not valid JSONPath (RFC 9535): {reason}")]
    InvalidJsonPath {
        field: String,
        path: String,
        reason: String,
    },
    #[error(
        "{field} {path:?} must be a singular JSONPath query selecting at most one value \
         (names and indexes only, e.g. $.usage.tokens or $.items[0])"
    )]
    JsonPathNotSingular { field: String, path: String },
    #[error("groupBy key {key:?} must match ^[A-Za-z_][A-Za-z0-9_]{{0,62}}$")]
    InvalidGroupByKey { key: String },
    #[error("groupBy has {count} entries, at most {GROUP_BY_MAX} are allowed")]
    TooManyGroupBy { count: usize },
    #[error("eventFrom {value:?} is not an RFC 3339 timestamp")]
    InvalidEventFrom { value: String },
}

impl MeterError {
    /// Stable machine-readable code for API responses.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidMeter
    }

    /// The definition field at fault, in wire spelling (`slug`, `groupBy.model`, …).
    pub fn field(&self) -> String {
        match self {
            MeterError::InvalidSlug { .. } => "slug".to_owned(),
            MeterError::InvalidEventType { .. } => "eventType".to_owned(),
            MeterError::ValuePropertyRequired { .. } | MeterError::ValuePropertyNotAllowed => {
                "valueProperty".to_owned()
            }
            MeterError::InvalidJsonPath { field, .. }
            | MeterError::JsonPathNotSingular { field, .. } => field.clone(),
            MeterError::InvalidGroupByKey { key } => format!("groupBy.{key}"),
            MeterError::TooManyGroupBy { .. } => "groupBy".to_owned(),
            MeterError::InvalidEventFrom { .. } => "eventFrom".to_owned(),
        }
    }
}

/// A validated meter, ready to extract and fold. Built only by [`MeterDef::validate`].
#[derive(Debug, Clone)]
pub struct CompiledMeter {
    def: MeterDef,
    pub(crate) value_path: Option<SingularPath>,
    /// In `groupBy` key order (sorted), parallel to [`CompiledMeter::group_keys`].
    pub(crate) group_paths: Vec<SingularPath>,
    group_keys: Vec<String>,
    /// `eventFrom` in milliseconds.
    event_from_ms: Option<i64>,
}

impl CompiledMeter {
    /// Whether an event at `event_time_ms` is counted (not before `eventFrom`).
    #[inline]
    pub fn counts_time(&self, event_time_ms: i64) -> bool {
        self.event_from_ms.is_none_or(|from| event_time_ms >= from)
    }

    pub fn def(&self) -> &MeterDef {
        &self.def
    }

    pub fn slug(&self) -> &str {
        &self.def.slug
    }

    pub fn event_type(&self) -> &str {
        &self.def.event_type
    }

    pub fn aggregation(&self) -> Aggregation {
        self.def.aggregation
    }

    pub fn window_size(&self) -> WindowSize {
        self.def.window_size
    }

    /// `groupBy` keys in sorted order; an observation's `group` is parallel to this.
    pub fn group_keys(&self) -> &[String] {
        &self.group_keys
    }
}

impl MeterDef {
    /// A COUNT meter with every optional field empty, for tests to fill in.
    #[cfg(test)]
    pub(crate) fn blank() -> MeterDef {
        serde_json::from_value(serde_json::json!({
            "slug": "m", "eventType": "e", "aggregation": "COUNT"
        }))
        .expect("valid meter")
    }

    /// Checks every field and compiles the JSONPaths.
    pub fn validate(&self) -> Result<CompiledMeter, MeterError> {
        if !is_slug(&self.slug) {
            return Err(MeterError::InvalidSlug {
                slug: self.slug.to_string(),
            });
        }
        let event_type_chars = self.event_type.chars().count();
        if event_type_chars == 0 || event_type_chars > EVENT_TYPE_CHARS_MAX {
            return Err(MeterError::InvalidEventType {
                chars: event_type_chars,
            });
        }
        let value_path = match (self.aggregation, &self.value_property) {
            (Aggregation::Count, None) => None,
            (Aggregation::Count, Some(_)) => return Err(MeterError::ValuePropertyNotAllowed),
            (aggregation, None) => {
                return Err(MeterError::ValuePropertyRequired {
                    aggregation: aggregation.as_str(),
                })
            }
            (_, Some(path)) => Some(compile_path("valueProperty".to_owned(), path)?),
        };
        if self.group_by.len() > GROUP_BY_MAX {
            return Err(MeterError::TooManyGroupBy {
                count: self.group_by.len(),
            });
        }
        let mut group_paths = Vec::with_capacity(self.group_by.len());
        for (key, path) in &self.group_by {
            if !is_group_key(key) {
                return Err(MeterError::InvalidGroupByKey { key: key.clone() });
            }
            group_paths.push(compile_path(format!("groupBy.{key}"), path)?);
        }
        let event_from_ms = match &self.event_from {
            None => None,
            Some(text) => Some(
                chrono::DateTime::parse_from_rfc3339(text)
                    .map_err(|_| MeterError::InvalidEventFrom {
                        value: text.clone(),
                    })?
                    .timestamp_millis(),
            ),
        };
        Ok(CompiledMeter {
            def: self.clone(),
            value_path,
            group_paths,
            group_keys: self.group_by.keys().cloned().collect(),
            event_from_ms,
        })
    }
}

fn compile_path(field: String, path: &str) -> Result<SingularPath, MeterError> {
    SingularPath::compile(path).map_err(|e| match e {
        PathError::Syntax(reason) => MeterError::InvalidJsonPath {
            field,
            path: path.to_owned(),
            reason,
        },
        PathError::NotSingular => MeterError::JsonPathNotSingular {
            field,
            path: path.to_owned(),
        },
    })
}

/// `^[a-z0-9][a-z0-9_-]{0,62}$`
fn is_slug(slug: &str) -> bool {
    let bytes = slug.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && bytes.len() <= 63
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// `^[A-Za-z_][A-Za-z0-9_]{0,62}$`
fn is_group_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
    first_ok
        && bytes.len() <= 63
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(value: serde_json::Value) -> MeterDef {
        serde_json::from_value(value).unwrap()
    }

    fn tokens_meter() -> serde_json::Value {
        json!({
            "slug": "llm_tokens",
            "eventType": "prompt",
            "aggregation": "SUM",
            "valueProperty": "$.tokens",
            "groupBy": {"model": "$.model", "region": "$['cloud region']"}
        })
    }

    fn with(mut base: serde_json::Value, field: &str, value: serde_json::Value) -> MeterDef {
        base[field] = value;
        def(base)
    }

    #[test]
    fn openmeter_style_json_validates_with_minute_default() {
        let meter = def(tokens_meter()).validate().unwrap();
        assert_eq!(meter.slug(), "llm_tokens");
        assert_eq!(meter.window_size(), WindowSize::Minute);
        assert_eq!(meter.aggregation(), Aggregation::Sum);
        assert_eq!(meter.group_keys(), ["model", "region"]);
        let round_trip: MeterDef =
            serde_json::from_str(&serde_json::to_string(meter.def()).unwrap()).unwrap();
        assert_eq!(&round_trip, meter.def());
    }

    #[test]
    fn every_aggregation_parses_from_its_wire_name() {
        for (name, aggregation) in [
            ("SUM", Aggregation::Sum),
            ("COUNT", Aggregation::Count),
            ("AVG", Aggregation::Avg),
            ("MIN", Aggregation::Min),
            ("MAX", Aggregation::Max),
            ("UNIQUE_COUNT", Aggregation::UniqueCount),
            ("LATEST", Aggregation::Latest),
        ] {
            let parsed: Aggregation = serde_json::from_value(json!(name)).unwrap();
            assert_eq!(parsed, aggregation);
            assert_eq!(aggregation.as_str(), name);
        }
    }

    #[test]
    fn bad_slugs_are_refused_naming_the_slug() {
        for slug in ["", "Tokens", "-x", "_x", "a b", &"a".repeat(64), "é"] {
            let err = with(tokens_meter(), "slug", json!(slug))
                .validate()
                .unwrap_err();
            assert_eq!(err.code(), "INVALID_METER");
            assert_eq!(err.field(), "slug", "{slug}");
        }
        assert!(with(tokens_meter(), "slug", json!("a".repeat(63)))
            .validate()
            .is_ok());
        assert!(with(tokens_meter(), "slug", json!("0_a-b"))
            .validate()
            .is_ok());
    }

    #[test]
    fn event_type_must_be_1_to_256_chars() {
        for event_type in [String::new(), "e".repeat(257)] {
            let err = with(tokens_meter(), "eventType", json!(event_type))
                .validate()
                .unwrap_err();
            assert_eq!(err.field(), "eventType");
        }
        assert!(with(tokens_meter(), "eventType", json!("é".repeat(256)))
            .validate()
            .is_ok());
    }

    #[test]
    fn value_property_is_required_except_for_count() {
        let mut base = tokens_meter();
        base.as_object_mut().unwrap().remove("valueProperty");
        let err = def(base.clone()).validate().unwrap_err();
        assert_eq!(
            err,
            MeterError::ValuePropertyRequired { aggregation: "SUM" }
        );
        assert_eq!(err.field(), "valueProperty");
        base["aggregation"] = json!("COUNT");
        assert!(def(base).validate().is_ok());
        let err = with(tokens_meter(), "aggregation", json!("COUNT"))
            .validate()
            .unwrap_err();
        assert_eq!(err, MeterError::ValuePropertyNotAllowed);
    }

    #[test]
    fn paths_must_be_valid_and_singular() {
        let err = with(tokens_meter(), "valueProperty", json!("tokens"))
            .validate()
            .unwrap_err();
        assert!(matches!(err, MeterError::InvalidJsonPath { .. }), "{err}");
        assert_eq!(err.field(), "valueProperty");
        let err = with(tokens_meter(), "valueProperty", json!("$..tokens"))
            .validate()
            .unwrap_err();
        assert!(matches!(err, MeterError::JsonPathNotSingular { .. }));
        assert!(err.to_string().contains("$..tokens"));
        let err = with(tokens_meter(), "groupBy", json!({"model": "$.models[*]"}))
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "groupBy.model");
    }

    #[test]
    fn group_by_keys_are_identifiers_and_at_most_16() {
        for key in ["1model", "mo-del", "", "mo del", &"k".repeat(64)] {
            let err = with(tokens_meter(), "groupBy", json!({ key: "$.m" }))
                .validate()
                .unwrap_err();
            assert!(
                matches!(err, MeterError::InvalidGroupByKey { .. }),
                "{key}: {err}"
            );
        }
        let many: BTreeMap<String, String> = (0..17)
            .map(|i| (format!("k{i}"), format!("$.k{i}")))
            .collect();
        let err = with(tokens_meter(), "groupBy", json!(many))
            .validate()
            .unwrap_err();
        assert_eq!(err, MeterError::TooManyGroupBy { count: 17 });
        let sixteen: BTreeMap<String, String> = (0..16)
            .map(|i| (format!("_K{i}"), format!("$.k{i}")))
            .collect();
        assert!(with(tokens_meter(), "groupBy", json!(sixteen))
            .validate()
            .is_ok());
    }
}
