//! Meters: definition (admin), listing and usage queries (read).

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{Admin, ApiError, AppState, Auth, Read};
use crate::engine::protocol::{CreateMeter, DeleteMeter};
use crate::error_code::ErrorCode;
use crate::event::{fmt_ms, parse_time_ms};
use crate::meter::{self, AggState, CompiledMeter, CounterKey, MeterDef, QueryParams, WindowSize};

/// How long creating a meter waits for it to count the log before answering
/// `202 Accepted` instead of `201 Created`.
const BACKFILL_WAIT: Duration = Duration::from_secs(10);

pub async fn list(_auth: Auth<Read>, State(state): State<AppState>) -> Json<Value> {
    let meters = state.engine.shared.meters.load();
    Json(Value::Array(
        meters.iter().map(|m| meter_json(m.def())).collect(),
    ))
}

pub async fn get(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let meters = state.engine.shared.meters.load();
    let meter = meters.get(&slug).ok_or_else(|| no_meter(&slug))?;
    Ok(Json(meter_json(meter.def())))
}

pub async fn create(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    body: Result<Json<MeterDef>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(def) = body.map_err(|e| ApiError::new(ErrorCode::InvalidMeter, e.body_text()))?;
    def.validate()
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let def = state
        .engine
        .send(CreateMeter {
            def,
            audit: auth.audit(),
        })
        .await?;
    // The meter counts the events logged before it off the ingest path;
    // answer once that is done, or say it is still running.
    let deadline = tokio::time::Instant::now() + BACKFILL_WAIT;
    while state
        .engine
        .shared
        .backfills
        .load()
        .contains_key(def.slug.as_str())
    {
        if tokio::time::Instant::now() >= deadline {
            let mut body = meter_json(&def);
            body["backfilling"] = json!(true);
            return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((StatusCode::CREATED, Json(meter_json(&def))).into_response())
}

pub async fn delete(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .engine
        .send(DeleteMeter {
            slug: slug.into(),
            audit: auth.audit(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn meter_json(def: &MeterDef) -> Value {
    serde_json::to_value(def).expect("meter serializes")
}

fn no_meter(slug: &str) -> ApiError {
    ApiError::new(
        ErrorCode::MeterNotFound,
        format!("meter `{slug}` does not exist"),
    )
}

/// The query parameters as OpenMeter names them; `subject` and `groupBy` may
/// repeat.
struct RawParams {
    from: Option<(String, i64)>,
    to: Option<(String, i64)>,
    window_size: Option<WindowSize>,
    subjects: Vec<String>,
    group_by: Vec<String>,
}

fn parse_params(query: Option<&str>) -> Result<RawParams, ApiError> {
    let mut p = RawParams {
        from: None,
        to: None,
        window_size: None,
        subjects: Vec::new(),
        group_by: Vec::new(),
    };
    let time = |name: &str, v: &str| {
        parse_time_ms(v)
            .map(|ms| (v.to_owned(), ms))
            .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, format!("{name}: {}", e.message)))
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "from" => p.from = Some(time("from", &v)?),
            "to" => p.to = Some(time("to", &v)?),
            "windowSize" => {
                p.window_size = Some(serde_json::from_value(json!(v)).map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidQuery,
                        format!("windowSize {v:?} is not one of MINUTE, HOUR, DAY, MONTH"),
                    )
                })?)
            }
            "windowTimeZone" if v == "UTC" || v == "Etc/UTC" => {}
            "windowTimeZone" => {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    "windows are in UTC; windowTimeZone must be UTC",
                ))
            }
            "subject" => p.subjects.push(v.into_owned()),
            "groupBy" => p.group_by.push(v.into_owned()),
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    Ok(p)
}

pub async fn query(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = parse_params(raw.as_deref())?;
    let meters = state.engine.shared.meters.load();
    let meter = meters.get(&slug).ok_or_else(|| no_meter(&slug))?;
    if let Some(seq) = state.engine.shared.backfills.load().get(&slug) {
        let message = format!(
            "meter `{slug}` is still counting the events logged before its creation (log seq {seq})"
        );
        return Err(ApiError::new(ErrorCode::MeterBackfilling, message).with_retry_after(1));
    }
    let split_by_subject = !p.subjects.is_empty() || p.group_by.iter().any(|g| g == "subject");
    let group_by: Vec<String> = p
        .group_by
        .iter()
        .filter(|g| *g != "subject")
        .cloned()
        .collect();
    let params = QueryParams {
        from_ms: p.from.as_ref().map(|f| f.1),
        to_ms: p.to.as_ref().map(|t| t.1),
        window_size: p.window_size,
        subjects: p.subjects.clone(),
        group_by: group_by.clone(),
        split_by_subject,
    };
    let stored = read_states(&state, meter, &params)?;
    let rows = meter::query(meter, stored.into_iter(), &params)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        return Ok(csv(meter, &group_by, &rows));
    }
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "value": r.value,
                "windowStart": fmt_ms(r.window_start_ms),
                "windowEnd": fmt_ms(r.window_end_ms),
                "subject": r.subject,
                "groupBy": r.group_by,
            })
        })
        .collect();
    Ok(Json(json!({
        "from": p.from.map(|f| fmt_ms(f.1)),
        "to": p.to.map(|t| fmt_ms(t.1)),
        "windowSize": p.window_size,
        "data": data,
    }))
    .into_response())
}

/// Reads the stored windows a query can need: per subject when the caller
/// names subjects, otherwise the whole meter; bounded by from/to per subject.
fn read_states(
    state: &AppState,
    meter: &CompiledMeter,
    params: &QueryParams,
) -> Result<Vec<(CounterKey, AggState)>, ApiError> {
    let shared = &state.engine.shared;
    let slug = meter.slug();
    let ranges: Vec<std::ops::Range<Vec<u8>>> = if params.subjects.is_empty() {
        let lo = CounterKey::meter_prefix(slug);
        let mut hi = lo.clone();
        // The prefix ends in the 0x00 separator; bumping it bounds the meter.
        *hi.last_mut().expect("non-empty prefix") += 1;
        vec![lo..hi]
    } else {
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
    };
    let states =
        crate::projection::reads::read_states(&shared.store.counters, &shared.overlay, &ranges)
            .map_err(ApiError::internal)?;
    let mut out = Vec::with_capacity(states.len());
    for (k, state) in states {
        let key = CounterKey::decode(&k).map_err(ApiError::internal)?;
        if params.from_ms.is_some_and(|f| key.window_start_ms < f)
            || params.to_ms.is_some_and(|t| key.window_start_ms >= t)
        {
            continue;
        }
        out.push((key, state));
    }
    Ok(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv(meter: &CompiledMeter, group_by: &[String], rows: &[meter::QueryRow]) -> Response {
    let mut out = String::from("window_start,window_end,subject");
    for g in group_by {
        out.push(',');
        out.push_str(&csv_field(g));
    }
    out.push_str(",value\n");
    for r in rows {
        out.push_str(&fmt_ms(r.window_start_ms));
        out.push(',');
        out.push_str(&fmt_ms(r.window_end_ms));
        out.push(',');
        out.push_str(&csv_field(r.subject.as_deref().unwrap_or("")));
        for g in group_by {
            out.push(',');
            let v = r.group_by.get(g).cloned().flatten().unwrap_or_default();
            out.push_str(&csv_field(&v));
        }
        out.push(',');
        out.push_str(&r.value.to_string());
        out.push('\n');
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.csv\"", meter.slug()),
            ),
        ],
        out,
    )
        .into_response()
}
