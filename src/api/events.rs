//! `POST /api/v1/events` (OpenMeter-compatible ingest) and the quarantine.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Admin, ApiError, AppState, Auth, ClientCert, Ingest};
use crate::engine::protocol::{self as rq, Origin, RejectBody};
use crate::engine::IngestOutcome;
use crate::error_code::ErrorCode;
use crate::event::{decode_body, fmt_ms, BodyKind, Decoded, Rejection};
use crate::metrics::metrics;

pub async fn ingest(
    _client: ClientCert,
    auth: Auth<Ingest>,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::PayloadTooLarge
        } else {
            ErrorCode::InvalidBody
        };
        let limit = state.cfg.body_bytes_max;
        refused(
            code,
            format!("{}; the body limit is {limit} bytes", e.body_text()),
        )
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(kind) = BodyKind::from_content_type(content_type) else {
        return Err(refused(
            ErrorCode::UnsupportedMediaType,
            format!(
                "content type {content_type:?} is not accepted; use application/cloudevents+json, \
                 application/cloudevents-batch+json or application/json"
            ),
        ));
    };
    let now_ms = state.view.now_ms();
    let items = match decode_body(
        &body,
        kind,
        now_ms,
        state.view.event_window(),
        state.view.request_events_max(),
    ) {
        Ok(items) => items,
        Err(rejection) if rejection.code == ErrorCode::BatchTooLarge => {
            return Err(refused(rejection.code, rejection.message));
        }
        Err(rejection) => {
            let (code, message) = (rejection.code, rejection.message.clone());
            let seq = state
                .engine
                .send(RejectBody {
                    rejection,
                    raw: body.to_vec(),
                    received_ms: now_ms,
                    origin: "http",
                })
                .await?;
            let mut details = serde_json::Map::new();
            details.insert("accepted".into(), json!(0));
            details.insert("quarantineSeq".into(), json!(seq));
            return Err(ApiError::new(code, message).with_details(details));
        }
    };
    let items = refuse_foreign_subjects(&state, &auth, items);
    let single =
        items.len() == 1 && kind != BodyKind::Batch && !body.trim_ascii_start().starts_with(b"[");
    let outcome = state
        .engine
        .send(rq::Ingest {
            items,
            received_ms: now_ms,
            origin: Origin::Http {
                tenant: tenant_of(&auth),
            },
        })
        .await?;
    answer(&outcome, single)
}

/// Whom the dedup index charges for a caller's events: the product its
/// key is bound to, or the key itself when it is unbound.
fn tenant_of(auth: &Auth<Ingest>) -> std::sync::Arc<str> {
    match &auth.product {
        Some(product) => format!("product:{product}").into(),
        None => format!("key:{}", auth.key_id).into(),
    }
}

/// A key bound to a product sends usage for its own licenses, or for
/// subjects that are no license; an event whose subject is another
/// product's license is refused (and quarantined, like every refused event)
/// while the rest of the batch goes on.
fn refuse_foreign_subjects(
    state: &AppState,
    auth: &Auth<Ingest>,
    items: Vec<Decoded>,
) -> Vec<Decoded> {
    if auth.product.is_none() {
        return items;
    }
    items
        .into_iter()
        .map(|item| match item {
            Decoded::Valid(e)
                if state
                    .view
                    .license(&e.subject)
                    .is_some_and(|l| !auth.check_owner(&l.license.product, "usage")) =>
            {
                Decoded::Invalid {
                    rejection: Rejection::new(
                        ErrorCode::SubjectNotOwned,
                        format!(
                            "subject `{}` is a license of another product than this API key's",
                            e.subject
                        ),
                    ),
                    raw: e.raw.into_bytes(),
                }
            }
            other => other,
        })
        .collect()
}

/// A request refused before its events reach the engine (nothing is
/// quarantined), counted by code.
fn refused(code: ErrorCode, message: String) -> ApiError {
    metrics()
        .events_rejected_total
        .with_label_values(&[code])
        .inc();
    ApiError::new(code, message)
}

/// `204` with the counts when every event was taken; otherwise the
/// rejected events (a `single` event's own code, else `INVALID_EVENTS`).
fn answer(outcome: &IngestOutcome, single: bool) -> Result<Response, ApiError> {
    if outcome.rejected.is_empty() {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        h.insert("keymeter-accepted", HeaderValue::from(outcome.accepted));
        h.insert("keymeter-duplicates", HeaderValue::from(outcome.duplicates));
        h.insert("keymeter-seq", HeaderValue::from(outcome.last_seq));
        return Ok(response);
    }
    let rejected: Vec<Value> = outcome
        .rejected
        .iter()
        .map(|r| json!({"index": r.index, "code": r.code, "message": r.message}))
        .collect();
    let (code, message) = if single {
        let r = &outcome.rejected[0];
        (r.code, r.message.clone())
    } else {
        (
            ErrorCode::InvalidEvents,
            format!(
                "{} of {} events rejected and quarantined; {} accepted, {} duplicates; \
                 accepted events are durable, so resending the whole batch is safe",
                outcome.rejected.len(),
                outcome.rejected.len() as u32 + outcome.accepted + outcome.duplicates,
                outcome.accepted,
                outcome.duplicates
            ),
        )
    };
    let mut details = serde_json::Map::new();
    details.insert("accepted".into(), json!(outcome.accepted));
    details.insert("duplicates".into(), json!(outcome.duplicates));
    details.insert("rejected".into(), Value::Array(rejected));
    Err(ApiError::new(code, message).with_details(details))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineParams {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Rejected input, oldest first, paged by log sequence number.
pub async fn quarantine(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    params: Result<Query<QuarantineParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "limit must be between 1 and 1000",
        ));
    }
    let page = state
        .view
        .quarantine_page(p.after.unwrap_or(0), limit)
        .map_err(ApiError::internal)?;
    let next = if page.len() == limit {
        page.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    let items: Vec<Value> = page
        .into_iter()
        .map(|(seq, r)| {
            use base64::Engine as _;
            let (raw, encoding) = match std::str::from_utf8(&r.raw) {
                Ok(text) => (text.to_owned(), "utf8"),
                Err(_) => (
                    base64::engine::general_purpose::STANDARD.encode(&r.raw),
                    "base64",
                ),
            };
            json!({
                "seq": seq,
                "receivedAt": fmt_ms(r.received_ms),
                "origin": r.origin,
                "index": r.index,
                "topic": r.position.as_ref().map(|p| &p.topic),
                "partition": r.position.as_ref().map(|p| p.partition),
                "offset": r.position.as_ref().map(|p| p.offset),
                "code": r.code,
                "message": r.message,
                "raw": raw,
                "rawEncoding": encoding,
                "truncated": r.truncated,
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "nextAfter": next})))
}
