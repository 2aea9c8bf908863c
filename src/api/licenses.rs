//! Licenses: admin lifecycle and offline license files (`admin` scope).
//! Seats are in [`super::seats`], validation and the public keys in
//! [`super::validation`].
//!
//! The license key is returned once, by create. Nothing else returns it, and
//! it is never logged: it is kept as an HMAC digest and a sealed envelope.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::client::Caller;
use super::{Admin, ApiError, AppState, Auth, Limited};
use crate::engine::protocol as rq;
use crate::engine::Renewal;
use crate::error_code::ErrorCode;
use crate::license::model::{LicenseUpdate, NewLicense, StatusAction};
use crate::license::seats::check_fingerprint;
use crate::license::{utc_ms, License, Refusal, Status};
use crate::metrics::metrics;
use crate::projection::licenses::PublishedLicense;
use crate::record::LicenseSecret;

const LIST_LIMIT_MAX: usize = 1000;

pub(super) fn refusal(r: Refusal) -> ApiError {
    ApiError::new(r.code, r.message)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidLicense, message)
}

fn admin_metric<T>(op: &str, outcome: &Result<T, Refusal>) {
    metrics()
        .license_admin_total
        .with_label_values(&[op, crate::error_code::outcome_label(outcome)])
        .inc();
}

fn license_json(license: &License) -> Value {
    serde_json::to_value(license).expect("license serializes")
}

pub(super) fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| invalid(e.body_text()))
}

pub(super) fn now(state: &AppState) -> DateTime<Utc> {
    utc_ms(state.view.now_ms())
}

fn new_license_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut id);
    format!("lic_{}", hex::encode(id))
}

pub async fn create(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    new: Result<Json<NewLicense>, JsonRejection>,
) -> Result<Response, ApiError> {
    let new = body(new)?;
    let license = License::create(new_license_id().into(), new, now(&state)).map_err(refusal)?;
    let key = crate::crypto::generate_license_key();
    let crypto = state.view.crypto();
    let secret = LicenseSecret {
        lookup: crypto.lookup_digest(&key),
        sealed_key: crypto.seal(key.as_bytes(), license.id.as_bytes()),
    };
    let outcome = state
        .engine
        .send(rq::CreateLicense {
            license: Box::new(license),
            secret,
            audit: auth.audit(),
        })
        .await?;
    admin_metric("create", &outcome);
    let license = outcome.map_err(refusal)?;
    let mut out = license_json(&license);
    out["key"] = json!(key.as_str());
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(super) fn found(state: &AppState, id: &str) -> Result<Arc<PublishedLicense>, ApiError> {
    state.view.license(id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("license `{id}` does not exist"),
        )
    })
}

pub async fn get(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(license_json(&found(&state, &id)?.license)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    product: Option<String>,
    customer: Option<String>,
    status: Option<String>,
    /// Page after this license id (ids ascend).
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("limit must be between 1 and {LIST_LIMIT_MAX}"),
        ));
    }
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidQuery,
                "status must be active, suspended or revoked",
            )
        })?),
    };
    let mut all: Vec<Arc<PublishedLicense>> = state
        .view
        .licenses()
        .into_iter()
        .filter(|s| {
            let l = &s.license;
            p.product.as_ref().is_none_or(|v| *v == l.product)
                && p.customer.as_ref().is_none_or(|v| *v == l.customer)
                && status.is_none_or(|v| v == l.status)
                && p.after.as_ref().is_none_or(|a| l.id.as_str() > a.as_str())
        })
        .collect();
    all.sort_by(|a, b| a.license.id.cmp(&b.license.id));
    let next = (all.len() > limit).then(|| all[limit - 1].license.id.clone());
    all.truncate(limit);
    let items: Vec<Value> = all.iter().map(|s| license_json(&s.license)).collect();
    Ok(Json(json!({"items": items, "next_after": next})))
}

pub async fn update(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    change: Result<Json<LicenseUpdate>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let change = body(change)?;
    let outcome = state
        .engine
        .send(rq::UpdateLicense {
            id: id.into(),
            update: Box::new(change),
            audit: auth.audit(),
        })
        .await?;
    admin_metric("update", &outcome);
    Ok(Json(license_json(&outcome.map_err(refusal)?)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    reason: Option<String>,
}

async fn change_status(
    auth: Auth<Admin>,
    state: AppState,
    id: String,
    action: StatusAction,
    reason: Option<Result<Json<Reason>, JsonRejection>>,
) -> Result<Json<Value>, ApiError> {
    let reason = match reason {
        Some(r) => body(r)?.reason,
        None => None,
    };
    if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
        return Err(invalid("reason must be at most 1000 characters"));
    }
    let outcome = state
        .engine
        .send(rq::ChangeLicenseStatus {
            id: id.into(),
            action,
            reason,
            audit: auth.audit(),
        })
        .await?;
    let op = match action {
        StatusAction::Suspend => "suspend",
        StatusAction::Reinstate => "reinstate",
        StatusAction::Revoke => "revoke",
    };
    admin_metric(op, &outcome);
    Ok(Json(license_json(&outcome.map_err(refusal)?)))
}

/// An optional JSON body: none, empty, or `{"reason": …}`.
fn optional_reason(bytes: &axum::body::Bytes) -> Option<Result<Json<Reason>, JsonRejection>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(Json::from_bytes(bytes))
}

pub async fn suspend(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    change_status(
        auth,
        state,
        id,
        StatusAction::Suspend,
        optional_reason(&bytes),
    )
    .await
}

pub async fn reinstate(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change_status(auth, state, id, StatusAction::Reinstate, None).await
}

pub async fn revoke(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    change_status(
        auth,
        state,
        id,
        StatusAction::Revoke,
        optional_reason(&bytes),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    /// New expiry (`null`: perpetual).
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<DateTime<Utc>>>,
    /// Or extend the later of the current expiry and now by this (`"365d"`).
    extend: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<DateTime<Utc>>>, D::Error> {
    Option::<DateTime<Utc>>::deserialize(d).map(Some)
}

pub async fn renew(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    renewal: Result<Json<RenewBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let r = body(renewal)?;
    let renewal = match (r.expires_at, r.extend) {
        (Some(until), None) => Renewal::Until(until),
        (None, Some(extend)) => {
            let d =
                humantime::parse_duration(&extend).map_err(|e| invalid(format!("extend: {e}")))?;
            Renewal::Extend(d.as_secs())
        }
        _ => return Err(invalid("send exactly one of expires_at and extend")),
    };
    let outcome = state
        .engine
        .send(rq::RenewLicense {
            id: id.into(),
            renewal,
            audit: auth.audit(),
        })
        .await?;
    admin_metric("renew", &outcome);
    Ok(Json(license_json(&outcome.map_err(refusal)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    fingerprint: Option<String>,
    /// e.g. `"30d"`; default `license_file_ttl`.
    ttl: Option<String>,
}

/// An offline license file: encrypted under a key derived from the license
/// key (and the fingerprint, when bound) and signed. See README.
/// `POST /api/v1/licenses/{id}/license-file`: an admin key, a key that may
/// make license calls for the license's product, or the license key itself
/// (`me`).
pub async fn license_file(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<FileBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(req)?;
    let ttl = match &req.ttl {
        None => state.cfg.license_file_ttl,
        Some(t) => humantime::parse_duration(t).map_err(|e| invalid(format!("ttl: {e}")))?,
    };
    if ttl.as_secs() < 60 || ttl > state.cfg.license_file_ttl_max {
        return Err(invalid(format!(
            "ttl must be between 1m and {}",
            humantime::format_duration(state.cfg.license_file_ttl_max)
        )));
    }
    if let Some(fp) = &req.fingerprint {
        check_fingerprint(fp).map_err(invalid)?;
    }
    let entry = caller.license(&state, &id, "license_file");
    let reached = entry.as_ref().map(|e| e.license.id.as_str());
    state
        .guards
        .limit(Limited::Validate, caller.rate_key(), reached)?;
    let entry = entry.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("license `{id}` does not exist"),
        )
    })?;
    let license = &entry.license;
    let id = license.id.as_str();
    if license.status != Status::Active {
        return Err(refusal(Refusal::new(
            if license.status == Status::Revoked {
                ErrorCode::Revoked
            } else {
                ErrorCode::Suspended
            },
            format!("license `{id}` is {}", license.status.as_str()),
        )));
    }
    let crypto = state.view.crypto();
    let key = crypto
        .unseal(&entry.secret.sealed_key, license.id.as_bytes())
        .map_err(ApiError::internal)?;
    let key = std::str::from_utf8(&key).map_err(ApiError::internal)?;
    let issued_at = now(&state).timestamp();
    let plaintext = Zeroizing::new(
        serde_json::to_vec(&json!({
            "license": license,
            "issued_at": issued_at,
            "expires_at": issued_at + ttl.as_secs() as i64,
        }))
        .expect("license file serializes"),
    );
    let file = crate::crypto::seal_license_file(
        crypto,
        &license.id,
        key,
        req.fingerprint.as_deref(),
        &plaintext,
    );
    // No file leaves without its record in the log.
    state
        .engine
        .send(rq::RecordLicenseFile {
            issue: crate::record::LicenseFileIssue {
                license_id: license.id.clone(),
                fingerprint_bound: req.fingerprint.is_some(),
                expires_at_ms: (issued_at + ttl.as_secs() as i64) * 1000,
                kid: crypto.kid().to_owned(),
            },
            audit: caller.audit(),
        })
        .await?;
    Ok(Json(file))
}
