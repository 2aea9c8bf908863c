//! Meters: definition (admin), listing and usage queries (read).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{Admin, ApiError, AppState, Auth, Read};
use crate::engine::protocol::{CreateMeter, DeleteMeter, UpdateMeter};
use crate::error_code::ErrorCode;
use crate::event::fmt_ms;
use crate::meter::{Amount, MeterDef, QueryRow, WindowSize};
use crate::query::meters::{QueryAnswer, QueryError, QueryRequest};

/// How long creating a meter waits for it to count the log before answering
/// `202 Accepted` instead of `201 Created`.
const BACKFILL_WAIT: Duration = Duration::from_secs(10);

pub async fn list(_auth: Auth<Read>, State(state): State<AppState>) -> Json<Value> {
    Json(Value::Array(
        state.view.meter_defs().iter().map(meter_json).collect(),
    ))
}

pub async fn get(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let slug = state.view.meter_slug(&key);
    let def = state
        .view
        .meter(&slug)
        .ok_or_else(|| QueryError::meter_not_found(&slug))?;
    Ok(Json(meter_json(&def)))
}

pub async fn create(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    body: Result<Json<MeterDef>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut def) = body.map_err(|e| ApiError::new(ErrorCode::InvalidMeter, e.body_text()))?;
    // The id is the server's (a ULID: sortable by creation, no coordination).
    def.id = Some(ulid::Ulid::new().to_string());
    def.name.get_or_insert_with(|| def.slug.to_string());
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
    while state.view.is_backfilling(&def.slug) {
        if tokio::time::Instant::now() >= deadline {
            let mut body = meter_json(&def);
            body["backfilling"] = json!(true);
            return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((StatusCode::CREATED, Json(meter_json(&def))).into_response())
}

/// OpenMeter's meter update body: what may change without recounting.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeterUpdate {
    name: Option<String>,
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    group_by: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "annotations")]
    _annotations: Option<Value>,
}

/// `PUT /api/v1/meters/{meterIdOrSlug}`: a new name, description or
/// metadata. `groupBy` may be sent as it is; changing it is refused, since
/// the stored counters are keyed by the meter's groups.
pub async fn update(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(key): Path<String>,
    body: Result<Json<MeterUpdate>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::new(ErrorCode::InvalidMeter, e.body_text()))?;
    let slug = state.view.meter_slug(&key);
    let current = (state.view.meter(&slug)).ok_or_else(|| QueryError::meter_not_found(&slug))?;
    if body
        .group_by
        .as_ref()
        .is_some_and(|g| *g != current.group_by)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidMeter,
            "groupBy cannot change: the meter's counters are kept by its groups; \
             create a new meter with the groups wanted",
        ));
    }
    let def = state
        .engine
        .send(UpdateMeter {
            slug: current.slug,
            name: body.name,
            description: body.description,
            metadata: body.metadata,
            audit: auth.audit(),
        })
        .await?;
    Ok(Json(meter_json(&def)))
}

pub async fn delete(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let slug = state.view.meter_slug(&key);
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

/// The header that carries a page's `nextCursor` (in CSV answers too).
pub const NEXT_CURSOR_HEADER: &str = "keymeter-next-cursor";

/// Parses the query, runs it, and answers JSON, or CSV when the caller
/// accepts `text/csv`.
pub async fn query(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = QueryRequest::parse(raw.as_deref().unwrap_or(""))?;
    run_query(state, &key, request, &headers).await
}

/// `GET /api/v1/meters/{meterIdOrSlug}/subjects`: the subjects with usage,
/// as a JSON array of strings (`from`/`to` narrow it).
pub async fn subjects(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<String>>, ApiError> {
    let range = QueryRequest::parse(raw.as_deref().unwrap_or(""))?;
    let slug = state.view.meter_slug(&key);
    let (view, rows_max) = (state.view.clone(), state.cfg.query_rows_max);
    let _turn = (state.guards.whole_meter_queries.acquire().await).map_err(ApiError::internal)?;
    let subjects =
        tokio::task::spawn_blocking(move || view.meter_subjects(&slug, &range, rows_max))
            .await
            .map_err(ApiError::internal)??;
    Ok(Json(subjects))
}

/// `GET /api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values`: the
/// values of one `groupBy` key with usage (`from`/`to` narrow it).
pub async fn group_by_values(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    Path((key, group_key)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<String>>, ApiError> {
    let range = QueryRequest::parse(raw.as_deref().unwrap_or(""))?;
    let slug = state.view.meter_slug(&key);
    let (view, rows_max) = (state.view.clone(), state.cfg.query_rows_max);
    let _turn = (state.guards.whole_meter_queries.acquire().await).map_err(ApiError::internal)?;
    let values = tokio::task::spawn_blocking(move || {
        view.group_by_values(&slug, &group_key, &range, rows_max)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(values))
}

/// OpenMeter's query request body (`POST …/query`): the GET parameters as
/// JSON, `filterGroupBy` as an object.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryBody {
    client_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    window_size: Option<String>,
    window_time_zone: Option<String>,
    #[serde(default)]
    subject: Vec<String>,
    #[serde(default)]
    filter_customer_id: Vec<String>,
    #[serde(default)]
    filter_group_by: BTreeMap<String, String>,
    #[serde(default)]
    group_by: Vec<String>,
}

impl QueryBody {
    /// The same query as URL parameters, so both forms are read (and
    /// refused) by one parser.
    fn to_query_string(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let one = [
            ("clientId", &self.client_id),
            ("from", &self.from),
            ("to", &self.to),
            ("windowSize", &self.window_size),
            ("windowTimeZone", &self.window_time_zone),
        ];
        for (name, value) in one {
            if let Some(v) = value {
                q.append_pair(name, v);
            }
        }
        for v in &self.subject {
            q.append_pair("subject", v);
        }
        for v in &self.filter_customer_id {
            q.append_pair("filterCustomerId", v);
        }
        for (k, v) in &self.filter_group_by {
            q.append_pair(&format!("filterGroupBy[{k}]"), v);
        }
        for v in &self.group_by {
            q.append_pair("groupBy", v);
        }
        q.finish()
    }
}

/// `POST /api/v1/meters/{meterIdOrSlug}/query` with [`QueryBody`].
pub async fn query_post(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Json<QueryBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let request = QueryRequest::parse(&body.to_query_string())?;
    run_query(state, &key, request, &headers).await
}

async fn run_query(
    state: AppState,
    key: &str,
    request: QueryRequest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let slug = state.view.meter_slug(key);
    // A query over every subject of a meter can be large: a few at a time,
    // each off the async workers (it reads the store synchronously).
    let _turn = match request.subjects.is_empty() {
        true => Some(
            state
                .guards
                .whole_meter_queries
                .acquire()
                .await
                .map_err(ApiError::internal)?,
        ),
        false => None,
    };
    let (view, slug_, request_) = (state.view.clone(), slug.clone(), request.clone());
    let rows_max = state.cfg.query_rows_max;
    let answer = tokio::task::spawn_blocking(move || view.query(&slug_, &request_, rows_max))
        .await
        .map_err(ApiError::internal)??;
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    let mut response = match wants_csv {
        true => csv(&slug, &request.meter_group_by(), &answer.rows),
        false => answer_json(&request, &answer)?,
    };
    if let Some(cursor) = &answer.next_cursor {
        let value = HeaderValue::from_str(cursor).map_err(ApiError::internal)?;
        response.headers_mut().insert(NEXT_CURSOR_HEADER, value);
    }
    Ok(response)
}

/// The JSON answer, written straight from the rows: a tree of values, or
/// a copy of every row with its times as text, would hold the answer in
/// memory again, several times over. `nextCursor` is there when the caller
/// asked for a page (`null` on the last one), and absent otherwise, as
/// OpenMeter answers.
fn answer_json(request: &QueryRequest, answer: &QueryAnswer) -> Result<Response, ApiError> {
    // Fields in name order, as the answer was when built as a JSON map.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Body<'a> {
        #[serde(serialize_with = "rows_json")]
        data: &'a [QueryRow],
        from: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_cursor: Option<Option<&'a str>>,
        to: Option<String>,
        window_size: Option<WindowSize>,
    }
    let body = Body {
        data: &answer.rows,
        from: request.from_ms.map(fmt_ms),
        next_cursor: request.paged().then_some(answer.next_cursor.as_deref()),
        to: request.to_ms.map(fmt_ms),
        window_size: request.window_size,
    };
    let bytes = serde_json::to_vec(&body).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

fn rows_json<S: Serializer>(rows: &&[QueryRow], s: S) -> Result<S::Ok, S::Error> {
    struct Groups<'a>(&'a [(String, Option<String>)]);
    impl Serialize for Groups<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }
    struct Row<'a>(&'a QueryRow);
    impl Serialize for Row<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let r = self.0;
            let mut row = s.serialize_struct("Row", 5)?;
            row.serialize_field("groupBy", &Groups(&r.group_by))?;
            row.serialize_field("subject", &r.subject)?;
            row.serialize_field("value", &Exact(r.value))?;
            row.serialize_field("windowEnd", &fmt_ms(r.window_end_ms))?;
            row.serialize_field("windowStart", &fmt_ms(r.window_start_ms))?;
            row.end()
        }
    }
    s.collect_seq(rows.iter().map(Row))
}

/// An amount as a JSON number with every digit it has (`12345678901.423456789`),
/// written as its decimal text: an `f64` keeps about 16 significant digits.
pub(crate) struct Exact(pub Amount);

impl Serialize for Exact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = RawValue::from_string(self.0.to_string()).map_err(serde::ser::Error::custom)?;
        text.serialize(s)
    }
}

/// One CSV cell of text that callers control (subjects, group values).
/// A cell a spreadsheet would read as a formula (starting with `=`, `+`,
/// `-`, `@`, tab or carriage return) gets a leading `'`, so opening an
/// export cannot run `=HYPERLINK(…)` or worse (OWASP's CSV injection
/// advice); then the usual RFC 4180 quoting.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(slug: &str, group_by: &[String], rows: &[QueryRow]) -> Response {
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
            out.push_str(&csv_field(r.group(g).unwrap_or_default()));
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
                format!("attachment; filename=\"{slug}.csv\""),
            ),
        ],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{AggState, Amount};
    use axum::body::to_bytes;
    use proptest::prelude::*;

    /// `units` billionths as decimal text, trailing zeros trimmed; written
    /// here apart from `Amount`'s own formatting.
    fn reference_text(units: i128) -> String {
        let digits = format!("{:010}", units.unsigned_abs());
        let (int, frac) = digits.split_at(digits.len() - 9);
        let frac = frac.trim_end_matches('0');
        let sign = if units < 0 { "-" } else { "" };
        match frac.is_empty() {
            true => format!("{sign}{int}"),
            false => format!("{sign}{int}.{frac}"),
        }
    }

    async fn body_text(response: Response) -> String {
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn answers(value: Amount) -> (String, String) {
        let row = QueryRow {
            value,
            window_start_ms: 0,
            window_end_ms: 60_000,
            subject: Some("s".into()),
            group_by: Vec::new(),
        };
        let answer = QueryAnswer {
            rows: vec![row.clone()],
            next_cursor: None,
        };
        let request = QueryRequest::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let json = runtime.block_on(body_text(answer_json(&request, &answer).unwrap()));
        let csv = runtime.block_on(body_text(csv("m", &[], &[row])));
        (json, csv)
    }

    proptest! {
        /// Any sum of values with at most 9 decimals comes back digit for
        /// digit in JSON (as a JSON number) and in CSV.
        #[test]
        fn sums_are_written_digit_for_digit(
            values in prop::collection::vec((-10i128.pow(20)..10i128.pow(20), 0u32..=9), 1..20)
        ) {
            // (mantissa, decimals): mantissa × 10^-decimals as written text.
            let texts: Vec<String> = values.iter().map(|&(m, d)| {
                let digits = format!("{:0w$}", m.unsigned_abs(), w = d as usize + 1);
                let (int, frac) = digits.split_at(digits.len() - d as usize);
                let sign = if m < 0 { "-" } else { "" };
                if d == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
            }).collect();
            let mut state: Option<AggState> = None;
            let mut units: i128 = 0;
            for (text, &(m, d)) in texts.iter().zip(&values) {
                let amount = Amount::parse_decimal_exact(text).unwrap();
                let one = AggState::Sum(amount);
                match &mut state {
                    Some(s) => s.merge(&one),
                    None => state = Some(one),
                }
                units += m * 10i128.pow(9 - d);
            }
            let want = reference_text(units);
            let (json, csv) = answers(state.unwrap().amount().unwrap());
            let body: serde_json::Value = serde_json::from_str(&json).unwrap();
            prop_assert!(body["data"][0]["value"].is_number(), "{}", json);
            let raw = format!("\"value\":{want},");
            prop_assert!(json.contains(&raw), "{} not in {}", raw, json);
            let last_cell = csv.lines().nth(1).unwrap().rsplit(',').next().unwrap();
            prop_assert_eq!(last_cell, want.as_str());
        }
    }

    #[test]
    fn the_issue_example_keeps_every_digit() {
        let value = Amount::parse_decimal_exact("12345678901.423456789").unwrap();
        let (json, csv) = answers(value);
        assert!(json.contains("\"value\":12345678901.423456789,"), "{json}");
        assert!(csv.ends_with(",12345678901.423456789\n"), "{csv}");
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_as_formulas_are_neutralised() {
        assert_eq!(csv_field("customer-1"), "customer-1");
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        for (cell, want) in [
            ("+1", "'+1"),
            ("-1+2", "'-1+2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "\"'\rx\""),
            ("a=b", "a=b"),
        ] {
            assert_eq!(csv_field(cell), want, "{cell:?}");
        }
    }
}
