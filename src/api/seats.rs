//! Seats: checkout, heartbeat, release (a `validate` key, the `ingest` key
//! a product already holds, bound to that product, or the license key
//! itself; listing is `admin`).
//! A key bound to a product reaches only that product's licenses: another
//! product's license answers `404` as if it did not exist.
//!
//! A seat belongs to whoever holds its lease token: checkout answers it,
//! heartbeat and release carry it in the `Lease-Token` header, and a
//! checkout for a fingerprint that holds a seat gets that seat only with
//! it. Only its SHA-256 reaches the writer and the log.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::Caller;
use super::licenses::{body, found, refusal};
use super::{Admin, ApiError, AppState, Auth, Limited};
use crate::api_keys::{key_digest, random_secret};
use crate::engine::protocol as rq;
use crate::engine::SeatLease;
use crate::error_code::ErrorCode;
use crate::license::decide::rfc3339;
use crate::license::seats::{check_fingerprint, check_lease_token};
use crate::license::utc_ms;

/// The header that carries a seat's lease token on heartbeat and release.
pub const LEASE_TOKEN_HEADER: &str = "lease-token";

fn seat_json(license_id: &str, lease: &SeatLease) -> Value {
    json!({
        "license_id": license_id,
        "seat_id": lease.seat_id,
        "fingerprint": lease.fingerprint,
        "expires_at": lease.expires_ms.map(|ms| rfc3339(utc_ms(ms))),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    fingerprint: String,
    /// Proposed by the client so that a retried checkout (its answer lost)
    /// gets the same seat back; made by the server when absent.
    lease_token: Option<String>,
}

/// The SHA-256 of the `Lease-Token` header, if one was sent.
fn presented_token(headers: &HeaderMap) -> Option<[u8; 32]> {
    headers
        .get(LEASE_TOKEN_HEADER)
        .map(|v| key_digest(&String::from_utf8_lossy(v.as_bytes())))
}

/// The id of the license `id` names, when it exists and the caller may act
/// on it (charging the caller's and that license's rate budgets);
/// otherwise `404`, the same answer for another product's license as for
/// none at all. Only a reachable license's budget is charged, so a caller
/// cannot spend another product's (the per-caller limit applies to every
/// call).
fn reachable(
    state: &AppState,
    caller: &Caller,
    id: &str,
    kind: Option<Limited>,
) -> Result<String, ApiError> {
    let found = caller
        .license(state, id, "seat")
        .map(|e| e.license.id.to_string());
    if let Some(kind) = kind {
        state
            .guards
            .limit(kind, caller.rate_key(), found.as_deref())?;
    }
    found.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("license `{id}` does not exist"),
        )
    })
}

/// `201` with a new seat, `200` with the one this fingerprint already holds.
pub async fn checkout(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<CheckoutBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = reachable(&state, &caller, &id, Some(Limited::Checkout))?;
    let req = body(req)?;
    check_fingerprint(&req.fingerprint).map_err(|m| ApiError::new(ErrorCode::InvalidSeat, m))?;
    if let Some(token) = &req.lease_token {
        check_lease_token(token).map_err(|m| ApiError::new(ErrorCode::InvalidSeat, m))?;
    }
    let token = req.lease_token.unwrap_or_else(random_secret);
    let lease = state
        .engine
        .send(rq::CheckoutSeat {
            license_id: id.clone().into(),
            fingerprint: req.fingerprint,
            new_seat_id: format!("seat_{}", crate::api_keys::generate_id()).into(),
            token_sha256: key_digest(&token),
            audit: caller.audit(),
        })
        .await?
        .map_err(refusal)?;
    let status = if lease.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut answer = seat_json(&id, &lease);
    if lease.tokened {
        answer["lease_token"] = json!(token);
    }
    Ok((status, Json(answer)).into_response())
}

pub async fn heartbeat(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, seat_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let id = reachable(&state, &caller, &id, Some(Limited::Checkout))?;
    let lease = state
        .engine
        .send(rq::HeartbeatSeat {
            license_id: id.clone().into(),
            seat_id: seat_id.into(),
            token_sha256: presented_token(&headers),
        })
        .await?
        .map_err(refusal)?;
    Ok(Json(seat_json(&id, &lease)))
}

pub async fn release(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, seat_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = reachable(&state, &caller, &id, None)?;
    let by = match caller.is_admin() {
        true => rq::SeatReleaser::Admin,
        false => rq::SeatReleaser::Holder {
            token_sha256: presented_token(&headers),
        },
    };
    state
        .engine
        .send(rq::ReleaseSeat {
            license_id: id.into(),
            seat_id: seat_id.into(),
            by,
            audit: caller.audit(),
        })
        .await?
        .map_err(refusal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The live seats of a license.
pub async fn list(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = found(&state, &id)?;
    let now_ms = state.view.now_ms();
    let seats: Vec<Value> = entry
        .seats
        .live(now_ms)
        .map(|s| {
            json!({
                "seat_id": s.seat_id,
                "fingerprint": s.fingerprint,
                "checked_out_at": rfc3339(utc_ms(s.checked_out_ms)),
                "heartbeat_at": rfc3339(utc_ms(s.heartbeat_ms)),
                "expires_at": s.expires_ms.map(|ms| rfc3339(utc_ms(ms))),
            })
        })
        .collect();
    Ok(Json(json!({
        "license_id": id,
        "used": seats.len(),
        "max": entry.license.policy.seats.as_ref().map(|p| p.max),
        "seats": seats,
    })))
}
