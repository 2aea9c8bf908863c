//! Seats (`ingest` scope: the key a product already holds to send usage;
//! listing is `admin`): checkout, heartbeat, release.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::licenses::{body, found, refusal};
use super::{Admin, ApiError, AppState, Auth, Ingest, Limited};
use crate::engine::protocol as rq;
use crate::engine::SeatLease;
use crate::error_code::ErrorCode;
use crate::license::decide::rfc3339;
use crate::license::seats::check_fingerprint;
use crate::license::utc_ms;

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
}

/// The per-license limit counts only licenses that exist.
fn known_license(state: &AppState, id: &str) -> Option<String> {
    state.view.license(id).map(|_| id.to_owned())
}

/// `201` with a new seat, `200` with the one this fingerprint already holds.
pub async fn checkout(
    auth: Auth<Ingest>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<CheckoutBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let known = known_license(&state, &id);
    state
        .guards
        .limit(Limited::Checkout, &auth.key_id, known.as_deref())?;
    let req = body(req)?;
    check_fingerprint(&req.fingerprint).map_err(|m| ApiError::new(ErrorCode::InvalidSeat, m))?;
    let lease = state
        .engine
        .send(rq::CheckoutSeat {
            license_id: id.clone().into(),
            fingerprint: req.fingerprint,
            new_seat_id: format!("seat_{}", crate::api_keys::generate_id()).into(),
            audit: auth.audit(),
        })
        .await?
        .map_err(refusal)?;
    let status = if lease.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(seat_json(&id, &lease))).into_response())
}

pub async fn heartbeat(
    auth: Auth<Ingest>,
    State(state): State<AppState>,
    Path((id, seat_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let known = known_license(&state, &id);
    state
        .guards
        .limit(Limited::Checkout, &auth.key_id, known.as_deref())?;
    let lease = state
        .engine
        .send(rq::HeartbeatSeat {
            license_id: id.clone().into(),
            seat_id: seat_id.into(),
        })
        .await?
        .map_err(refusal)?;
    Ok(Json(seat_json(&id, &lease)))
}

pub async fn release(
    auth: Auth<Ingest>,
    State(state): State<AppState>,
    Path((id, seat_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .engine
        .send(rq::ReleaseSeat {
            license_id: id.into(),
            seat_id: seat_id.into(),
            audit: auth.audit(),
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
