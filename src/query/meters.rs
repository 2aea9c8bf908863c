//! Meter usage queries: the raw query string is parsed into a
//! [`QueryRequest`], which [`View::query`] answers from the counters (sled,
//! then the overlay on top) with [`crate::meter::query`]. Every refusal is a
//! [`QueryError`] with the code and message the API sends.
//!
//! An answer holds at most `query_rows_max` rows. Past that a query is
//! refused, or paged: `limit` rows a page at most, whole subjects in
//! subject order, and a `cursor` to resume after the last one (see `cursor.rs`).

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::json;

use super::View;
use crate::error_code::ErrorCode;
use crate::event::parse_time_ms;
use crate::log::Seq;
use crate::meter::{self, CompiledMeter, CounterKey, QueryParams, QueryRow, RowLimit, WindowSize};
use crate::projection::reads::stream_states;

/// A query refused, or one that failed reading the counters
/// ([`ErrorCode::Internal`], whose message is for the server log only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct QueryError {
    pub code: ErrorCode,
    pub message: String,
    /// When to ask again, in seconds (a meter still counting its past).
    pub retry_after_s: Option<u64>,
}

impl QueryError {
    fn new(code: ErrorCode, message: impl Into<String>) -> QueryError {
        QueryError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    fn invalid(message: impl Into<String>) -> QueryError {
        QueryError::new(ErrorCode::InvalidQuery, message)
    }

    fn internal(e: impl std::fmt::Display) -> QueryError {
        QueryError::new(ErrorCode::Internal, e.to_string())
    }

    /// Meter `slug` does not exist.
    pub fn meter_not_found(slug: &str) -> QueryError {
        QueryError::new(
            ErrorCode::MeterNotFound,
            format!("meter `{slug}` does not exist"),
        )
    }
}

impl From<meter::QueryError> for QueryError {
    fn from(e: meter::QueryError) -> QueryError {
        QueryError::new(e.code(), e.to_string())
    }
}

/// A meter query as OpenMeter names its parameters: `from`, `to`,
/// `windowSize`, `windowTimeZone` (IANA), `subject` and `groupBy`,
/// which may repeat, `filterGroupBy[key]=value`, and `clientId` (accepted
/// and not used: keymeter answers from its counters, not a query cache).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryRequest {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub window_size: Option<WindowSize>,
    pub subjects: Vec<String>,
    /// As sent: `subject` splits rows by subject, the others are the
    /// meter's `groupBy` keys.
    pub group_by: Vec<String>,
    /// keymeter's paging (OpenMeter does not page): most rows a page.
    pub limit: Option<usize>,
    /// Where a page resumes: the `nextCursor` of the page before.
    pub cursor: Option<String>,
    /// `filterGroupBy[key]=value`: only counters with these group values.
    pub filter_group_by: Vec<(String, String)>,
    /// `windowTimeZone` other than UTC.
    pub time_zone: Option<chrono_tz::Tz>,
}

/// The rows of a query, or of one page of it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryAnswer {
    pub rows: Vec<QueryRow>,
    /// The cursor of the next page, when this page ended before the last subject.
    pub next_cursor: Option<String>,
}

impl QueryRequest {
    /// Parses a URL query string (without the `?`).
    pub fn parse(raw: &str) -> Result<QueryRequest, QueryError> {
        let mut q = QueryRequest::default();
        let time = |name: &str, v: &str| {
            parse_time_ms(v).map_err(|e| QueryError::invalid(format!("{name}: {}", e.message)))
        };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            match k.as_ref() {
                "from" => q.from_ms = Some(time("from", &v)?),
                "to" => q.to_ms = Some(time("to", &v)?),
                "windowSize" => {
                    q.window_size = Some(serde_json::from_value(json!(v)).map_err(|_| {
                        QueryError::invalid(format!(
                            "windowSize {v:?} is not one of MINUTE, HOUR, DAY, MONTH"
                        ))
                    })?)
                }
                "windowTimeZone" => {
                    let tz: chrono_tz::Tz = v.parse().map_err(|_| {
                        QueryError::invalid(format!(
                            "windowTimeZone {v:?} is not an IANA time zone name (e.g. Europe/Berlin)"
                        ))
                    })?;
                    q.time_zone =
                        (tz != chrono_tz::Tz::UTC && tz != chrono_tz::Tz::Etc__UTC).then_some(tz);
                }
                "subject" => q.subjects.push(v.into_owned()),
                "limit" => {
                    q.limit = Some(v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        QueryError::invalid(format!("limit {v:?} is not a number of rows >= 1"))
                    })?)
                }
                "cursor" => q.cursor = Some(v.into_owned()),
                "groupBy" => q.group_by.push(v.into_owned()),
                "clientId" => {}
                "filterCustomerId" => {
                    return Err(QueryError::invalid(
                        "filterCustomerId: keymeter has no customers yet; filter by subject",
                    ))
                }
                other if other.starts_with("filterGroupBy[") && other.ends_with(']') => {
                    let key = &other["filterGroupBy[".len()..other.len() - 1];
                    if q.filter_group_by.iter().any(|(k, _)| k == key) {
                        return Err(QueryError::invalid(format!(
                            "filterGroupBy[{key}] is given twice; a key filters on one value"
                        )));
                    }
                    q.filter_group_by.push((key.to_owned(), v.into_owned()));
                }
                other => {
                    return Err(QueryError::invalid(format!(
                        "unknown query parameter `{other}`"
                    )))
                }
            }
        }
        Ok(q)
    }

    /// The meter's `groupBy` keys asked for (`subject` left out).
    pub fn meter_group_by(&self) -> Vec<String> {
        self.group_by
            .iter()
            .filter(|g| *g != "subject")
            .cloned()
            .collect()
    }

    /// Whether the caller asked for a page rather than the whole answer.
    pub fn paged(&self) -> bool {
        self.limit.is_some() || self.cursor.is_some()
    }

    /// The whole answer within `rows_max`, or the page asked for: `limit`
    /// rows (`rows_max` without one) after the cursor's subject.
    fn row_limit(&self, tag: &cursor::Tag, rows_max: usize) -> Result<RowLimit, QueryError> {
        if !self.paged() {
            return Ok(RowLimit::Cap(rows_max));
        }
        let rows = self.limit.unwrap_or(rows_max);
        if rows > rows_max {
            return Err(QueryError::invalid(format!(
                "limit {rows} is more than query_rows_max ({rows_max}); ask for at most {rows_max} rows a page"
            )));
        }
        let after = self
            .cursor
            .as_deref()
            .map(|c| cursor::decode(c, tag))
            .transpose()?;
        Ok(RowLimit::Page { rows, after })
    }

    fn params(&self) -> QueryParams {
        QueryParams {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            window_size: self.window_size,
            subjects: self.subjects.clone(),
            group_by: self.meter_group_by(),
            split_by_subject: !self.subjects.is_empty()
                || self.group_by.iter().any(|g| g == "subject"),
            filter_group_by: self.filter_group_by.clone(),
            time_zone: self.time_zone,
        }
    }
}

impl View {
    /// Answers `request` over meter `slug` in at most `rows_max` rows: rows
    /// sorted by window start, subject and group (within a page).
    pub fn query(
        &self,
        slug: &str,
        request: &QueryRequest,
        rows_max: usize,
    ) -> Result<QueryAnswer, QueryError> {
        let meters = self.shared.meters.load();
        let meter = queryable(&meters, &self.shared.backfills.load(), slug)?;
        let params = request.params();
        let tag = cursor::tag(slug, request);
        let limit = request.row_limit(&tag, rows_max)?;
        let after = match &limit {
            RowLimit::Page { after, .. } => after.as_ref().map(|a| a.subject.as_str()),
            RowLimit::Cap(_) => None,
        };
        let ranges = ranges(meter, &params, after);
        // States stream into the fold one at a time; a read error stops
        // the stream and is the answer.
        let mut failure = None;
        let stored = stream_states(&self.shared.store.counters, &self.shared.overlay, &ranges)
            .map_while(|item| {
                let decoded = item.map_err(QueryError::internal).and_then(|(k, state)| {
                    let key = CounterKey::decode(&k).map_err(QueryError::internal)?;
                    Ok((key, state))
                });
                decoded.map_err(|e| failure = Some(e)).ok()
            })
            .filter(|(key, _)| {
                params.from_ms.is_none_or(|f| key.window_start_ms >= f)
                    && params.to_ms.is_none_or(|t| key.window_start_ms < t)
            });
        let answer = meter::answer(meter, stored, &params, &limit);
        if let Some(e) = failure {
            return Err(e);
        }
        let answer = answer.map_err(|e| too_large(e, rows_max))?;
        Ok(QueryAnswer {
            rows: answer.rows,
            next_cursor: answer.next.map(|next| cursor::encode(&tag, &next)),
        })
    }
}

impl View {
    /// The distinct subjects with usage of meter `slug` (in `from`/`to`
    /// when `range` sets them), sorted: the query split by subject over the
    /// whole range, so within `rows_max` subjects.
    pub fn meter_subjects(
        &self,
        slug: &str,
        range: &QueryRequest,
        rows_max: usize,
    ) -> Result<Vec<String>, QueryError> {
        let request = range.only_range("subjects")?.with_group_by("subject");
        let rows = self.query(slug, &request, rows_max)?.rows;
        let mut subjects: Vec<String> = rows.into_iter().filter_map(|r| r.subject).collect();
        subjects.sort_unstable();
        subjects.dedup();
        Ok(subjects)
    }

    /// The distinct values of `groupBy` key `key` of meter `slug` with
    /// usage (in `from`/`to` when `range` sets them), sorted; events
    /// without the key have no value and are left out.
    pub fn group_by_values(
        &self,
        slug: &str,
        key: &str,
        range: &QueryRequest,
        rows_max: usize,
    ) -> Result<Vec<String>, QueryError> {
        let request = range.only_range("group-by values")?.with_group_by(key);
        let rows = self.query(slug, &request, rows_max)?.rows;
        let mut values: Vec<String> = (rows.into_iter())
            .filter_map(|mut r| r.group_by.pop().and_then(|(_, v)| v))
            .collect();
        values.sort_unstable();
        values.dedup();
        Ok(values)
    }
}

impl QueryRequest {
    /// `self` when it sets nothing but `from` and `to` (what listing
    /// subjects or values takes).
    fn only_range(&self, what: &str) -> Result<QueryRequest, QueryError> {
        let range = QueryRequest {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            ..QueryRequest::default()
        };
        match *self == range {
            true => Ok(range),
            false => Err(QueryError::invalid(format!(
                "listing {what} takes only `from` and `to`"
            ))),
        }
    }

    fn with_group_by(mut self, key: &str) -> QueryRequest {
        self.group_by.push(key.to_owned());
        self
    }
}

/// What to do about an answer over the cap, in the parameters' words.
fn too_large(e: meter::QueryError, rows_max: usize) -> QueryError {
    const NARROW: &str = "`from`/`to`, a coarser `windowSize` or fewer `groupBy` keys";
    let message = match &e {
        meter::QueryError::TooManyRows {
            max,
            split_by_subject: true,
        } => format!(
            "the answer has more than {max} rows (query_rows_max): page it with `limit` \
             (at most {max} rows a page) and the `nextCursor` each page returns as `cursor` \
             (pages split by subject), or narrow it with `subject`, {NARROW}"
        ),
        meter::QueryError::TooManyRows { max, .. } => format!(
            "the answer has more than {max} rows (query_rows_max): narrow it with {NARROW}, \
             or add `groupBy=subject` and page it by subject with `limit` and `cursor`"
        ),
        meter::QueryError::SubjectTooManyRows { subject, max } => {
            let raise = match *max < rows_max {
                true => format!("raise `limit` (up to {rows_max}) or "),
                false => String::new(),
            };
            format!(
                "subject {subject:?} alone has more than {max} rows, and a page never splits \
                 a subject: {raise}narrow the query with {NARROW}"
            )
        }
        _ => return e.into(),
    };
    QueryError::new(e.code(), message)
}

/// Meter `slug`, unless it does not exist or is still counting its past.
fn queryable<'m>(
    meters: &'m meter::MeterSet,
    backfills: &BTreeMap<String, Seq>,
    slug: &str,
) -> Result<&'m CompiledMeter, QueryError> {
    let meter = meters
        .get(slug)
        .ok_or_else(|| QueryError::meter_not_found(slug))?;
    if let Some(seq) = backfills.get(slug) {
        let message = format!(
            "meter `{slug}` is still counting the events logged before its creation (log seq {seq})"
        );
        return Err(QueryError {
            retry_after_s: Some(1),
            ..QueryError::new(ErrorCode::MeterBackfilling, message)
        });
    }
    Ok(meter)
}

/// The counter keys a query can need, in key order: per subject when the
/// caller names subjects (each once), otherwise the whole meter; bounded by
/// from/to per subject, and to the subjects after `after` when given.
fn ranges(meter: &CompiledMeter, params: &QueryParams, after: Option<&str>) -> Vec<Range<Vec<u8>>> {
    let slug = meter.slug();
    if params.subjects.is_empty() {
        let mut hi = CounterKey::meter_prefix(slug);
        // The prefix ends in the 0x00 separator; bumping it bounds the meter.
        *hi.last_mut().expect("non-empty prefix") += 1;
        let lo = match after {
            None => CounterKey::meter_prefix(slug),
            Some(after) => {
                // Past every key of `after` (its subject ends in 0x00) and
                // before any longer subject it starts (no subject holds 0x00).
                let mut lo = CounterKey::subject_prefix(slug, after);
                *lo.last_mut().expect("non-empty prefix") = 1;
                lo
            }
        };
        return vec![lo..hi];
    }
    // Sorted, so states stream in subject order; once each, so a repeated
    // `subject` is not counted twice.
    let mut subjects: Vec<&String> = params
        .subjects
        .iter()
        .filter(|s| !s.contains('\0') && after.is_none_or(|a| s.as_str() > a))
        .collect();
    subjects.sort_unstable();
    subjects.dedup();
    subjects
        .into_iter()
        .map(|subject| {
            let (lo, hi) = CounterKey::window_range_bounds(
                slug,
                subject,
                params.from_ms.unwrap_or(i64::MIN),
                params.to_ms.unwrap_or(i64::MAX),
            );
            lo..hi
        })
        .collect()
}

mod cursor;
#[cfg(test)]
mod tests;
