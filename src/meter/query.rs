//! Answering meter queries from stored counters (pure; the engine supplies the scan).

use std::collections::{BTreeMap, HashSet};

use super::def::CompiledMeter;
use super::key::CounterKey;
use super::state::AggState;
use super::window::WindowSize;
use crate::error_code::ErrorCode;

/// A meter query, OpenMeter style. Bounds are event-time milliseconds, `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Row granularity; `None` = one row over the whole range.
    pub window_size: Option<WindowSize>,
    /// Only these subjects; empty = all.
    pub subjects: Vec<String>,
    /// A subset of the meter's `groupBy` keys to keep; the others are merged away.
    pub group_by: Vec<String>,
    /// One row per subject (otherwise subjects are merged and `subject` is `None`).
    pub split_by_subject: bool,
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRow {
    pub value: f64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub subject: Option<String>,
    pub group_by: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error(
        "windowSize {requested} is finer than the meter's windowSize {meter}; \
         use {meter} or coarser"
    )]
    WindowSizeTooFine {
        requested: &'static str,
        meter: &'static str,
    },
    #[error("{field} ({ts_ms} ms) must be aligned to the meter's {window_size} windows")]
    NotAligned {
        field: &'static str,
        ts_ms: i64,
        window_size: &'static str,
    },
    #[error("from ({from_ms} ms) must be before to ({to_ms} ms)")]
    EmptyRange { from_ms: i64, to_ms: i64 },
    #[error("groupBy {key:?} is not a groupBy key of this meter (known: {known:?})")]
    UnknownGroupBy { key: String, known: Vec<String> },
    #[error("stored counter {meter}/{subject}@{window_start_ms} does not fit the meter: {reason}")]
    StoredStateMismatch {
        meter: String,
        subject: String,
        window_start_ms: i64,
        reason: String,
    },
}

impl QueryError {
    pub fn code(&self) -> ErrorCode {
        match self {
            QueryError::WindowSizeTooFine { .. } => ErrorCode::InvalidWindowSize,
            QueryError::NotAligned { .. } | QueryError::EmptyRange { .. } => {
                ErrorCode::InvalidQuery
            }
            QueryError::UnknownGroupBy { .. } => ErrorCode::InvalidGroupBy,
            QueryError::StoredStateMismatch { .. } => ErrorCode::CorruptState,
        }
    }
}

/// Row identity while aggregating: (bucket start, subject if split, selected group).
type RowKey = (i64, Option<String>, Vec<Option<String>>);

/// Aggregates `stored` counters of `meter` (at the meter's window size; counters of
/// other meters are ignored) into query rows sorted by (window start, subject, group).
///
/// A stored window is included when its start lies in `[from, to)`. With a query
/// `window_size`, each row covers one such window clipped to `[from, to)` (a row can
/// be partial when `from`/`to` are aligned to the meter's windows but not to the
/// query's). Without one, each row spans `from` (or the earliest included window) to
/// `to` (or the end of the latest included window). Only groups with data get rows.
pub fn query(
    meter: &CompiledMeter,
    stored: impl Iterator<Item = (CounterKey, AggState)>,
    p: &QueryParams,
) -> Result<Vec<QueryRow>, QueryError> {
    validate(meter, p)?;
    let selected = selected_group_indexes(meter, &p.group_by)?;
    let subjects: HashSet<&str> = p.subjects.iter().map(String::as_str).collect();
    let mut rows: BTreeMap<RowKey, AggState> = BTreeMap::new();
    let mut included_windows: Option<(i64, i64)> = None;
    for (key, state) in stored {
        if key.meter != meter.slug() {
            continue;
        }
        check_stored(meter, &key, &state)?;
        let in_range = p.from_ms.is_none_or(|from| key.window_start_ms >= from)
            && p.to_ms.is_none_or(|to| key.window_start_ms < to);
        if !in_range || !(subjects.is_empty() || subjects.contains(key.subject.as_str())) {
            continue;
        }
        included_windows = Some(match included_windows {
            None => (key.window_start_ms, key.window_start_ms),
            Some((min, max)) => (min.min(key.window_start_ms), max.max(key.window_start_ms)),
        });
        let bucket_start = p.window_size.map_or(0, |w| w.start_of(key.window_start_ms));
        let group = selected.iter().map(|i| key.group[*i].clone()).collect();
        let subject = p.split_by_subject.then_some(key.subject);
        match rows.entry((bucket_start, subject, group)) {
            std::collections::btree_map::Entry::Occupied(mut row) => row.get_mut().merge(&state),
            std::collections::btree_map::Entry::Vacant(row) => {
                row.insert(state);
            }
        }
    }
    let Some((earliest, latest)) = included_windows else {
        return Ok(Vec::new());
    };
    let whole_range = (
        p.from_ms.unwrap_or(earliest),
        p.to_ms
            .unwrap_or_else(|| meter.window_size().end_of_window(latest)),
    );
    let group_keys: Vec<&String> = selected.iter().map(|i| &meter.group_keys()[*i]).collect();
    Ok(rows
        .into_iter()
        .filter_map(|((bucket_start, subject, group), state)| {
            let (window_start_ms, window_end_ms) = match p.window_size {
                None => whole_range,
                Some(w) => (
                    p.from_ms
                        .map_or(bucket_start, |from| bucket_start.max(from)),
                    p.to_ms.map_or(w.end_of_window(bucket_start), |to| {
                        w.end_of_window(bucket_start).min(to)
                    }),
                ),
            };
            Some(QueryRow {
                value: state.value()?,
                window_start_ms,
                window_end_ms,
                subject,
                group_by: group_keys.iter().map(|k| (*k).clone()).zip(group).collect(),
            })
        })
        .collect())
}

fn validate(meter: &CompiledMeter, p: &QueryParams) -> Result<(), QueryError> {
    let meter_window = meter.window_size();
    if let Some(requested) = p.window_size {
        if !meter_window.can_rollup_to(requested) {
            return Err(QueryError::WindowSizeTooFine {
                requested: requested.as_str(),
                meter: meter_window.as_str(),
            });
        }
    }
    for (field, bound) in [("from", p.from_ms), ("to", p.to_ms)] {
        if let Some(ts_ms) = bound {
            if !meter_window.is_aligned(ts_ms) {
                return Err(QueryError::NotAligned {
                    field,
                    ts_ms,
                    window_size: meter_window.as_str(),
                });
            }
        }
    }
    if let (Some(from_ms), Some(to_ms)) = (p.from_ms, p.to_ms) {
        if from_ms >= to_ms {
            return Err(QueryError::EmptyRange { from_ms, to_ms });
        }
    }
    Ok(())
}

/// Indexes into the meter's group keys of the requested keys, in key order, deduplicated.
fn selected_group_indexes(
    meter: &CompiledMeter,
    requested: &[String],
) -> Result<Vec<usize>, QueryError> {
    let mut indexes = Vec::with_capacity(requested.len());
    for key in requested {
        let index = meter
            .group_keys()
            .iter()
            .position(|k| k == key)
            .ok_or_else(|| QueryError::UnknownGroupBy {
                key: key.clone(),
                known: meter.group_keys().to_vec(),
            })?;
        indexes.push(index);
    }
    indexes.sort_unstable();
    indexes.dedup();
    Ok(indexes)
}

fn check_stored(
    meter: &CompiledMeter,
    key: &CounterKey,
    state: &AggState,
) -> Result<(), QueryError> {
    let reason = if key.group.len() != meter.group_keys().len() {
        format!(
            "{} group values for {} groupBy keys",
            key.group.len(),
            meter.group_keys().len()
        )
    } else if state.aggregation() != meter.aggregation() {
        format!(
            "{} state for a {} meter",
            state.aggregation().as_str(),
            meter.aggregation().as_str()
        )
    } else if !meter.window_size().is_aligned(key.window_start_ms) {
        format!(
            "window start not aligned to {}",
            meter.window_size().as_str()
        )
    } else {
        return Ok(());
    };
    Err(QueryError::StoredStateMismatch {
        meter: key.meter.clone(),
        subject: key.subject.clone(),
        window_start_ms: key.window_start_ms,
        reason,
    })
}
