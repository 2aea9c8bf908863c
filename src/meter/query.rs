//! Answering meter queries from stored counters (pure; the engine supplies the scan).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};

use super::amount::Amount;
use super::def::CompiledMeter;
use super::key::CounterKey;
use super::state::AggState;
use super::window::WindowSize;
use super::zone;
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
    /// Only counters whose `groupBy` key has this value (OpenMeter's
    /// `filterGroupBy`); all must match.
    pub filter_group_by: Vec<(String, String)>,
    /// The zone of the query's windows (OpenMeter's `windowTimeZone`);
    /// `None` is UTC. See [`super::zone`].
    pub time_zone: Option<chrono_tz::Tz>,
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRow {
    /// Exact ([`AggState::amount`]); answers write it as decimal text.
    pub value: Amount,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub subject: Option<String>,
    /// The selected `groupBy` keys and their values, in key order. A list,
    /// not a map: a map's first node alone is half a kilobyte, which an
    /// answer of many small rows pays once per row.
    pub group_by: Vec<(String, Option<String>)>,
}

impl QueryRow {
    /// The value of group key `key`, if it is selected and has a value.
    pub fn group(&self, key: &str) -> Option<&str> {
        let (_, value) = self.group_by.iter().find(|(k, _)| k == key)?;
        value.as_deref()
    }
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
    #[error("the answer has more than {max} rows")]
    TooManyRows { max: usize, split_by_subject: bool },
    #[error("subject {subject:?} alone has more than {max} rows, more than one page holds")]
    SubjectTooManyRows { subject: String, max: usize },
    #[error(
        "pages split rows by subject: page a query that has groupBy=subject or names subjects"
    )]
    PageWithoutSubjects,
    #[error(transparent)]
    ZoneInexact(#[from] super::zone::ZoneError),
}

impl QueryError {
    pub fn code(&self) -> ErrorCode {
        match self {
            QueryError::WindowSizeTooFine { .. } => ErrorCode::InvalidWindowSize,
            QueryError::NotAligned { .. }
            | QueryError::EmptyRange { .. }
            | QueryError::PageWithoutSubjects
            | QueryError::ZoneInexact(_) => ErrorCode::InvalidQuery,
            QueryError::UnknownGroupBy { .. } => ErrorCode::InvalidGroupBy,
            QueryError::StoredStateMismatch { .. } => ErrorCode::CorruptState,
            QueryError::TooManyRows { .. } | QueryError::SubjectTooManyRows { .. } => {
                ErrorCode::QueryTooLarge
            }
        }
    }
}

/// How many rows one answer may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowLimit {
    /// The whole answer, refused with [`QueryError::TooManyRows`] as soon
    /// as it needs more rows than this.
    Cap(usize),
    /// One page of an answer split by subject: the whole subjects after
    /// `after` (from the first without it) that fit in `rows` rows
    /// together. A subject is never split across pages, so one with more
    /// rows than that is refused ([`QueryError::SubjectTooManyRows`]). The
    /// states must come in subject order, as counter keys sort.
    Page { rows: usize, after: Option<Resume> },
}

/// Where the next page starts, and what it needs from the pages before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last subject of the page before.
    pub subject: String,
    /// The earliest and latest window start the first page found over
    /// every subject: rows without a query window size span them (see
    /// [`QueryParams::span_from_data`]), on every page alike.
    pub span: Option<(i64, i64)>,
}

/// The rows of an answer, or of one page of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rows: Vec<QueryRow>,
    /// Set when a page ended before the last subject.
    pub next: Option<Resume>,
}

impl QueryParams {
    /// Whether rows span the windows found rather than the query's bounds
    /// (no query window size, and an open `from` or `to`): then the first
    /// page reads every state to find them, and hands them on.
    pub fn span_from_data(&self) -> bool {
        self.window_size.is_none() && (self.from_ms.is_none() || self.to_ms.is_none())
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
    Ok(answer(meter, stored, p, &RowLimit::Cap(usize::MAX))?.rows)
}

/// [`query`] within `limit`: the row map never holds more than one row
/// past it, whatever the number of states.
pub fn answer(
    meter: &CompiledMeter,
    stored: impl Iterator<Item = (CounterKey, AggState)>,
    p: &QueryParams,
    limit: &RowLimit,
) -> Result<Answer, QueryError> {
    validate(meter, p)?;
    if matches!(limit, RowLimit::Page { .. }) && !p.split_by_subject {
        return Err(QueryError::PageWithoutSubjects);
    }
    let selected = selected_group_indexes(meter, &p.group_by)?;
    let filter_keys: Vec<String> = p.filter_group_by.iter().map(|(k, _)| k.clone()).collect();
    selected_group_indexes(meter, &filter_keys)?; // refuses an unknown key
    let filters: Vec<(usize, &str)> = (p.filter_group_by.iter())
        .map(|(k, v)| {
            let index = meter.group_keys().iter().position(|g| g == k);
            (index.expect("checked above"), v.as_str())
        })
        .collect();
    let after = match limit {
        RowLimit::Page { after, .. } => after.as_ref(),
        RowLimit::Cap(_) => None,
    };
    // Only a first page looks past itself, for the span it hands on.
    let read_past_page = p.span_from_data() && after.is_none();
    let mut rows = Rows {
        p,
        selected: &selected,
        meter_window: meter.window_size(),
        filters,
        subjects: p.subjects.iter().map(String::as_str).collect(),
        limit,
        after: after.map(|a| a.subject.as_str()),
        map: BTreeMap::new(),
        span: after.and_then(|a| a.span),
        current: None,
        last_whole: None,
        full: false,
    };
    for (key, state) in stored {
        if key.meter != meter.slug() {
            continue;
        }
        check_stored(meter, &key, &state)?;
        rows.add(key, state)?;
        if rows.full && !read_past_page {
            break;
        }
    }
    Ok(rows.finish(meter))
}

/// The fold of an answer in progress.
struct Rows<'q> {
    p: &'q QueryParams,
    selected: &'q [usize],
    meter_window: WindowSize,
    /// (group index, value) every counter read must have.
    filters: Vec<(usize, &'q str)>,
    subjects: HashSet<&'q str>,
    limit: &'q RowLimit,
    /// A page's subjects come after this one.
    after: Option<&'q str>,
    map: BTreeMap<RowKey, AggState>,
    /// The earliest and latest included window start (on a later page, of
    /// the first page too, so that its rows span what the first page's do).
    span: Option<(i64, i64)>,
    /// Paging: the subject being read, and the one read whole before it.
    current: Option<String>,
    last_whole: Option<String>,
    /// The page holds every subject that fits: later states only widen `span`.
    full: bool,
}

impl Rows<'_> {
    fn add(&mut self, key: CounterKey, state: AggState) -> Result<(), QueryError> {
        let p = self.p;
        let in_range = p.from_ms.is_none_or(|from| key.window_start_ms >= from)
            && p.to_ms.is_none_or(|to| key.window_start_ms < to);
        if !in_range || !(self.subjects.is_empty() || self.subjects.contains(key.subject.as_str()))
        {
            return Ok(());
        }
        let filtered_out = (self.filters.iter()).any(|(i, v)| key.group[*i].as_deref() != Some(*v));
        if filtered_out {
            return Ok(());
        }
        self.span = Some(match self.span {
            None => (key.window_start_ms, key.window_start_ms),
            Some((min, max)) => (min.min(key.window_start_ms), max.max(key.window_start_ms)),
        });
        if self.full || self.before_page(&key.subject) {
            return Ok(());
        }
        if let RowLimit::Page { .. } = self.limit {
            self.enter_subject(&key.subject);
        }
        let bucket_start = match (p.window_size, p.time_zone) {
            (None, _) => 0,
            (Some(w), None) => w.start_of(key.window_start_ms),
            (Some(w), Some(tz)) => {
                zone::check_exact(tz, self.meter_window, key.window_start_ms)?;
                zone::start_of(tz, w, key.window_start_ms)
            }
        };
        let group = self
            .selected
            .iter()
            .map(|i| key.group[*i].clone())
            .collect();
        let subject = p.split_by_subject.then_some(key.subject);
        match self.map.entry((bucket_start, subject, group)) {
            Entry::Occupied(mut row) => row.get_mut().merge(&state),
            Entry::Vacant(row) => {
                row.insert(state);
                self.check_size()?;
            }
        }
        Ok(())
    }

    fn before_page(&self, subject: &str) -> bool {
        self.after.is_some_and(|after| subject <= after)
    }

    fn enter_subject(&mut self, subject: &str) {
        if self.current.as_deref() != Some(subject) {
            debug_assert!(
                self.current.as_deref() < Some(subject),
                "states of a page come in subject order"
            );
            self.last_whole = self.current.replace(subject.to_owned());
        }
    }

    /// Past the limit: refuse, or end the page before the subject being read.
    fn check_size(&mut self) -> Result<(), QueryError> {
        match *self.limit {
            RowLimit::Cap(max) if self.map.len() > max => Err(QueryError::TooManyRows {
                max,
                split_by_subject: self.p.split_by_subject,
            }),
            RowLimit::Page { rows: max, .. } if self.map.len() > max => {
                let current = self.current.take().expect("a page reads a subject");
                if self.last_whole.is_none() {
                    return Err(QueryError::SubjectTooManyRows {
                        subject: current,
                        max,
                    });
                }
                self.map
                    .retain(|(_, subject, _), _| subject.as_deref() != Some(current.as_str()));
                self.full = true;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn finish(self, meter: &CompiledMeter) -> Answer {
        let next = match self.full {
            true => self.last_whole.map(|subject| Resume {
                subject,
                span: self.span,
            }),
            false => None,
        };
        let Some((earliest, latest)) = self.span else {
            return Answer {
                rows: Vec::new(),
                next,
            };
        };
        let p = self.p;
        let whole_range = (
            p.from_ms.unwrap_or(earliest),
            p.to_ms
                .unwrap_or_else(|| meter.window_size().end_of_window(latest)),
        );
        let window_end = |w: WindowSize, start: i64| match p.time_zone {
            None => w.end_of_window(start),
            Some(tz) => zone::end_of(tz, w, start),
        };
        let group_keys: Vec<&String> = self
            .selected
            .iter()
            .map(|i| &meter.group_keys()[*i])
            .collect();
        let rows = self
            .map
            .into_iter()
            .filter_map(|((bucket_start, subject, group), state)| {
                let (window_start_ms, window_end_ms) = match p.window_size {
                    None => whole_range,
                    Some(w) => (
                        p.from_ms
                            .map_or(bucket_start, |from| bucket_start.max(from)),
                        p.to_ms.map_or(window_end(w, bucket_start), |to| {
                            window_end(w, bucket_start).min(to)
                        }),
                    ),
                };
                Some(QueryRow {
                    value: state.amount()?,
                    window_start_ms,
                    window_end_ms,
                    subject,
                    group_by: group_keys.iter().map(|k| (*k).clone()).zip(group).collect(),
                })
            })
            .collect();
        Answer { rows, next }
    }
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

#[cfg(test)]
mod tests;
