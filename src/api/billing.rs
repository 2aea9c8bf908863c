//! `/api/v1/billing/*`: the statement feed for billing jobs (JSON, NDJSON or
//! CSV by `Accept`), statements by id with every version, proofs, the open
//! period's running lines and a period's state. Reads need the `read` scope
//! and a key not bound to a product: statements span every product's
//! subjects. Every statement is served with a compact JWS (EdDSA, `kid` in
//! `/.well-known/jwks.json`) over its canonical bytes.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::meters::NEXT_CURSOR_HEADER;
use super::{ApiError, AppState, Auth, Read};
use crate::billing::export;
use crate::billing::statement::Statement;
use crate::error_code::ErrorCode;
use crate::query::billing::{BillingError, BillingReads, FeedFilter};

/// Most statements per feed page.
const PAGE_MAX: usize = 10_000;

impl From<BillingError> for ApiError {
    fn from(e: BillingError) -> ApiError {
        match e {
            BillingError::Coded(code, message) => ApiError::new(code, message),
            BillingError::Store(e) => ApiError::internal(e),
        }
    }
}

fn reads(auth: &Auth<Read>, state: &AppState) -> Result<BillingReads, ApiError> {
    if let Some(product) = &auth.product {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this key is bound to product `{product}`; billing statements span every \
                 product: use a key that is not bound to one"
            ),
        ));
    }
    state.view.billing().map_err(ApiError::internal)
}

/// A statement as served: the document and its signature.
pub fn signed(state: &AppState, s: &Statement) -> Value {
    json!({"statement": s, "jws": state.view.crypto().sign_jwt(&s.canonical())})
}

fn query_u32(params: &HashMap<String, String>, name: &str) -> Result<Option<u32>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("`{name}` must be a positive integer, got {v:?}"),
                )
            })
        })
        .transpose()
}

/// `GET /api/v1/billing/statements?after=&limit=&subject=&period=`.
pub async fn feed(
    auth: Auth<Read>,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(unknown) = params.keys().find(|k| {
        !["after", "limit", "subject", "period", "customer", "product"].contains(&k.as_str())
    }) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("unknown query parameter `{unknown}`"),
        ));
    }
    let limit = query_u32(&params, "limit")?.unwrap_or(1000) as usize;
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("`limit` must be 1 to {PAGE_MAX}"),
        ));
    }
    let owners = (params.contains_key("customer") || params.contains_key("product")).then(|| {
        licensed_subjects(&state, params.get("customer"), params.get("product"))
            .into_iter()
            .collect()
    });
    let filter = FeedFilter {
        subject: params.get("subject").cloned(),
        period: params.get("period").cloned(),
        subjects: owners,
    };
    let reads = reads(&auth, &state)?;
    let after = params.get("after").cloned();
    let page = tokio::task::spawn_blocking(move || reads.feed(after.as_deref(), limit, &filter))
        .await
        .map_err(ApiError::internal)??;
    let statements = page
        .statements
        .iter()
        .map(|b| serde_json::from_slice::<Statement>(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut response = if accept.contains("text/csv") {
        let mut out = String::from(export::CSV_HEADER);
        statements
            .iter()
            .for_each(|s| export::csv_rows(s, &mut out));
        ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response()
    } else if accept.contains("application/x-ndjson") {
        let mut out = Vec::new();
        for s in &statements {
            export::json_line(s, &state.view.crypto().sign_jwt(&s.canonical()), &mut out);
        }
        ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
    } else {
        let items: Vec<Value> = statements.iter().map(|s| signed(&state, s)).collect();
        Json(json!({"statements": items, "nextCursor": page.next_cursor})).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&page.next_cursor) {
        response.headers_mut().insert(NEXT_CURSOR_HEADER, v);
    }
    Ok(response)
}

/// The subjects (license ids) of the licenses of `customer` and `product`.
fn licensed_subjects(
    state: &AppState,
    customer: Option<&String>,
    product: Option<&String>,
) -> Vec<String> {
    (state.view.licenses().iter())
        .map(|p| &p.license)
        .filter(|l| customer.is_none_or(|c| l.customer == *c))
        .filter(|l| product.is_none_or(|p| l.product == *p))
        .map(|l| l.id.to_string())
        .collect()
}

/// `GET /api/v1/billing/customers/{customer}/totals?period=P`: the latest
/// statements of the customer's licenses for the period, and their lines
/// summed by meter and group.
pub async fn customer_totals(
    auth: Auth<Read>,
    State(state): State<AppState>,
    Path(customer): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let Some(period) = params.get("period") else {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "`period` is required (e.g. 2026-11)",
        ));
    };
    let subjects = licensed_subjects(&state, Some(&customer), None);
    let mut totals = json!(reads(&auth, &state)?.totals(period, &subjects)?);
    totals["customer"] = json!(customer);
    Ok(Json(totals))
}

/// `GET /api/v1/billing/statements/{id}`: every version, oldest first.
pub async fn get(
    auth: Auth<Read>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let versions = reads(&auth, &state)?.versions(&id)?;
    let items: Vec<Value> = versions.iter().map(|s| signed(&state, s)).collect();
    Ok(Json(json!({"statementId": id, "versions": items})))
}

/// `GET /api/v1/billing/statements/{id}/proof?source=&id=[&version=]`.
pub async fn proof(
    auth: Auth<Read>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (Some(source), Some(event_id)) = (params.get("source"), params.get("id")) else {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "`source` and `id` (the event's CloudEvents source and id) are required",
        ));
    };
    let reads = reads(&auth, &state)?;
    let statement = reads.version(&id, query_u32(&params, "version")?)?;
    let proof = reads.proof(&statement, source, event_id)?;
    Ok(Json(json!(proof)))
}

/// `GET /api/v1/billing/statements/{id}/consistency?from_version=[&to_version=]`.
pub async fn consistency(
    auth: Auth<Read>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let Some(from) = query_u32(&params, "from_version")? else {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "`from_version` is required",
        ));
    };
    let reads = reads(&auth, &state)?;
    let old = reads.version(&id, Some(from))?;
    let new = reads.version(&id, query_u32(&params, "to_version")?)?;
    if new.version < old.version {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "`to_version` is before `from_version`",
        ));
    }
    Ok(Json(json!(reads.consistency(&old, &new)?)))
}

/// `GET /api/v1/billing/subjects/{subject}/current`.
pub async fn current(
    auth: Auth<Read>,
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(reads(&auth, &state)?.current(&subject)?)))
}

/// `GET /api/v1/billing/periods/{period}`.
pub async fn period(
    auth: Auth<Read>,
    State(state): State<AppState>,
    Path(label): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(reads(&auth, &state)?.period(&label)?)))
}

/// Bytes per chunk of a streamed export.
const EXPORT_CHUNK_BYTES: usize = 64 * 1024;

/// `GET /api/v1/billing/periods/{period}/export?format=csv|jsonl`: every
/// statement version of the period, by subject then version, streamed. The
/// same log gives the same bytes (`keymeter billing export` writes them to
/// files with a manifest).
pub async fn export(
    auth: Auth<Read>,
    State(state): State<AppState>,
    Path(label): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let format = params
        .get("format")
        .map_or("csv", String::as_str)
        .to_owned();
    let content_type = match format.as_str() {
        "csv" => "text/csv; charset=utf-8",
        "jsonl" => "application/x-ndjson",
        other => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("`format` must be csv or jsonl, got {other:?}"),
            ))
        }
    };
    let reads = reads(&auth, &state)?;
    reads.period(&label)?; // an unknown period is refused before the body starts
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let keys = state.view.crypto_arc();
    tokio::task::spawn_blocking(move || {
        let mut chunk: Vec<u8> = match format.as_str() {
            "csv" => export::CSV_HEADER.as_bytes().to_vec(),
            _ => Vec::new(),
        };
        let result = reads.period_statements(&label, |s| {
            if format == "csv" {
                let mut rows = String::new();
                export::csv_rows(&s, &mut rows);
                chunk.extend_from_slice(rows.as_bytes());
            } else {
                export::json_line(&s, &keys.sign_jwt(&s.canonical()), &mut chunk);
            }
            if chunk.len() < EXPORT_CHUNK_BYTES {
                return true;
            }
            tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_ok()
        });
        let last = match result {
            Ok(()) => Ok(chunk),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let _ = tx.blocking_send(last);
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
