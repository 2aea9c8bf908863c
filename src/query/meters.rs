//! Meter usage queries: the raw query string is parsed into a
//! [`QueryRequest`], which [`View::query`] answers from the counters (sled,
//! then the overlay on top) with [`crate::meter::query`]. Every refusal is a
//! [`QueryError`] with the code and message the API sends.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::json;

use super::View;
use crate::error_code::ErrorCode;
use crate::event::parse_time_ms;
use crate::log::Seq;
use crate::meter::{self, CompiledMeter, CounterKey, QueryParams, QueryRow, WindowSize};
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
/// `windowSize`, `windowTimeZone` (UTC only), and `subject` and `groupBy`,
/// which may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryRequest {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub window_size: Option<WindowSize>,
    pub subjects: Vec<String>,
    /// As sent: `subject` splits rows by subject, the others are the
    /// meter's `groupBy` keys.
    pub group_by: Vec<String>,
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
                "windowTimeZone" if v == "UTC" || v == "Etc/UTC" => {}
                "windowTimeZone" => {
                    return Err(QueryError::invalid(
                        "windows are in UTC; windowTimeZone must be UTC",
                    ))
                }
                "subject" => q.subjects.push(v.into_owned()),
                "groupBy" => q.group_by.push(v.into_owned()),
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

    fn params(&self) -> QueryParams {
        QueryParams {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            window_size: self.window_size,
            subjects: self.subjects.clone(),
            group_by: self.meter_group_by(),
            split_by_subject: !self.subjects.is_empty()
                || self.group_by.iter().any(|g| g == "subject"),
        }
    }
}

impl View {
    /// Answers `request` over meter `slug`: rows sorted by window start,
    /// subject and group.
    pub fn query(&self, slug: &str, request: &QueryRequest) -> Result<Vec<QueryRow>, QueryError> {
        let meters = self.shared.meters.load();
        let meter = queryable(&meters, &self.shared.backfills.load(), slug)?;
        let params = request.params();
        let ranges = ranges(meter, &params);
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
        let rows = meter::query(meter, stored, &params);
        match failure {
            Some(e) => Err(e),
            None => Ok(rows?),
        }
    }
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

/// The counter keys a query can need: per subject when the caller names
/// subjects, otherwise the whole meter; bounded by from/to per subject.
fn ranges(meter: &CompiledMeter, params: &QueryParams) -> Vec<Range<Vec<u8>>> {
    let slug = meter.slug();
    if params.subjects.is_empty() {
        let lo = CounterKey::meter_prefix(slug);
        let mut hi = lo.clone();
        // The prefix ends in the 0x00 separator; bumping it bounds the meter.
        *hi.last_mut().expect("non-empty prefix") += 1;
        return vec![lo..hi];
    }
    params
        .subjects
        .iter()
        .filter(|s| !s.contains('\0'))
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

#[cfg(test)]
mod tests;
