//! Licenses: admin lifecycle (`admin` scope), seats and validation (`ingest`
//! scope: the key a product already holds to send usage), offline license
//! files (`admin`) and the public keys (`/.well-known/jwks.json`, no auth).
//!
//! The license key is returned once, by create. Nothing else returns it, and
//! it is never logged: it is kept as an HMAC digest and a sealed envelope.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{Admin, ApiError, AppState, Auth, Ingest, Limited};
use crate::engine::protocol as rq;
use crate::engine::{Renewal, SeatLease};
use crate::error_code::ErrorCode;
use crate::license::decide::{quota_periods, rfc3339, Claims, QuotaReport, Verdict};
use crate::license::model::{LicenseUpdate, NewLicense, StatusAction};
use crate::license::seats::check_fingerprint;
use crate::license::{decide, utc_ms, License, Refusal, Request, Status};
use crate::metrics::metrics;
use crate::projection::licenses::PublishedLicense;
use crate::projection::usage::UsageQuery;
use crate::record::LicenseSecret;

/// Longest accepted license key, nonce or fingerprint in a validation.
const FIELD_CHARS_MAX: usize = 256;
const LIST_LIMIT_MAX: usize = 1000;

fn refusal(r: Refusal) -> ApiError {
    ApiError::new(r.code, r.message)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidLicense, message)
}

fn admin_metric<T>(op: &str, outcome: &Result<T, Refusal>) {
    let result = match outcome {
        Ok(_) => "ok",
        Err(r) => r.code.as_str(),
    };
    metrics()
        .license_admin_total
        .with_label_values(&[op, result])
        .inc();
}

fn license_json(license: &License) -> Value {
    serde_json::to_value(license).expect("license serializes")
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| invalid(e.body_text()))
}

fn now(state: &AppState) -> DateTime<Utc> {
    utc_ms(state.engine.shared.clock.now_ms())
}

fn new_license_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut id);
    format!("lic_{}", hex::encode(id))
}

/// Every quota must name a meter that exists now.
fn check_meters(state: &AppState, license: &License) -> Result<(), ApiError> {
    let meters = state.engine.shared.meters.load();
    for q in license.policy.quotas() {
        if meters.get(&q.meter).is_none() {
            return Err(invalid(format!(
                "quota names meter `{}`, which does not exist",
                q.meter
            )));
        }
    }
    Ok(())
}

pub async fn create(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    new: Result<Json<NewLicense>, JsonRejection>,
) -> Result<Response, ApiError> {
    let new = body(new)?;
    let license = License::create(new_license_id().into(), new, now(&state)).map_err(refusal)?;
    check_meters(&state, &license)?;
    let key = crate::crypto::generate_license_key();
    let crypto = &state.engine.shared.crypto;
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

fn found(state: &AppState, id: &str) -> Result<Arc<PublishedLicense>, ApiError> {
    state.engine.shared.licenses.get(id).ok_or_else(|| {
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
        .engine
        .shared
        .licenses
        .all()
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
    if let Some(policy) = &change.policy {
        let probe = License {
            policy: policy.clone(),
            ..found(&state, &id)?.license.clone()
        };
        check_meters(&state, &probe)?;
    }
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
pub async fn license_file(
    auth: Auth<Admin>,
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
    let entry = found(&state, &id)?;
    let license = &entry.license;
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
    let shared = &state.engine.shared;
    let key = shared
        .crypto
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
        &shared.crypto,
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
                kid: shared.crypto.kid().to_owned(),
            },
            audit: auth.audit(),
        })
        .await?;
    Ok(Json(file))
}

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
    state.engine.shared.licenses.get(id).map(|_| id.to_owned())
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
            new_seat_id: format!("seat_{}", crate::auth::generate_id()).into(),
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

pub async fn seats(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = found(&state, &id)?;
    let now_ms = state.engine.shared.clock.now_ms();
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    key: String,
    fingerprint: Option<String>,
    #[serde(default)]
    entitlements: Vec<String>,
    meter: Option<String>,
    nonce: Option<String>,
}

/// The decision and its signed token, answered from memory: the published
/// license snapshot and the quota usage cache. Used by the handler and the
/// benchmark.
pub struct Validation {
    pub license: Option<Arc<PublishedLicense>>,
    pub verdict: Verdict,
    pub token: String,
}

/// The published license a presented key opens, if any.
pub fn find_license(shared: &crate::engine::Shared, key: &str) -> Option<Arc<PublishedLicense>> {
    if key.len() > FIELD_CHARS_MAX {
        return None;
    }
    shared
        .licenses
        .by_key_digest(&shared.crypto.lookup_digest(key))
}

/// Validates `key` at `now` and signs the verdict.
pub fn validate_with(
    shared: &crate::engine::Shared,
    key: &str,
    request: &Request<'_>,
    nonce: Option<&str>,
    now: DateTime<Utc>,
    token_ttl_s: i64,
) -> Result<Validation, ApiError> {
    validate_found(
        shared,
        find_license(shared, key),
        request,
        nonce,
        now,
        token_ttl_s,
    )
}

/// [`validate_with`] for a license already looked up.
pub fn validate_found(
    shared: &crate::engine::Shared,
    entry: Option<Arc<PublishedLicense>>,
    request: &Request<'_>,
    nonce: Option<&str>,
    now: DateTime<Utc>,
    token_ttl_s: i64,
) -> Result<Validation, ApiError> {
    let verdict = match &entry {
        None => Verdict::not_found(),
        Some(state) => {
            let license = &state.license;
            let periods = quota_periods(license, now);
            let mut usage = Vec::with_capacity(periods.len());
            let meters = shared.meters.load();
            for (q, p) in license.policy.quotas().iter().zip(&periods) {
                let Some(meter) = meters.get(&q.meter) else {
                    usage.push(0.0);
                    continue;
                };
                // Usage is counted in the meter's windows: a window belongs to
                // the period its start falls in, with the period's bounds
                // rounded down to window boundaries, so periods tile.
                let w = meter.window_size();
                let used = shared
                    .usage
                    .usage(
                        &shared.store,
                        &shared.overlay,
                        &meters,
                        UsageQuery {
                            meter: &q.meter,
                            subject: &license.id,
                            from_ms: w.start_of(p.start.timestamp_millis()),
                            to_ms: p.end.map_or(i64::MAX, |e| w.start_of(e.timestamp_millis())),
                        },
                    )
                    .map_err(ApiError::internal)?;
                usage.push(used);
            }
            decide(license, &state.seats, request, &periods, &usage, now)
        }
    };
    let claims = Claims::new(
        entry.as_deref().map(|s| &s.license),
        &verdict,
        nonce,
        now,
        token_ttl_s,
    );
    let token = shared
        .crypto
        .sign_jwt(&serde_json::to_vec(&claims).expect("claims serialize"));
    Ok(Validation {
        license: entry,
        verdict,
        token,
    })
}

#[derive(serde::Serialize)]
struct QuotaAnswer<'a> {
    meter: &'a str,
    used: f64,
    limit: f64,
    period_start: String,
    period_end: Option<String>,
    overage: f64,
    overage_policy: crate::license::model::Overage,
    thresholds_crossed_pct: &'a [u32],
}

impl<'a> QuotaAnswer<'a> {
    fn new(q: &'a QuotaReport) -> QuotaAnswer<'a> {
        QuotaAnswer {
            meter: &q.meter,
            used: q.used,
            limit: q.limit,
            period_start: rfc3339(q.period.start),
            period_end: q.period.end.map(rfc3339),
            overage: q.overage,
            overage_policy: q.overage_policy,
            thresholds_crossed_pct: &q.thresholds_crossed_pct,
        }
    }
}

/// The validation answer, less `license` (spliced in pre-rendered).
#[derive(serde::Serialize)]
struct Answer<'a> {
    valid: bool,
    code: &'static str,
    detail: &'a str,
    seats: Option<crate::license::decide::SeatReport>,
    quota: Option<QuotaAnswer<'a>>,
    expires_at: Option<String>,
    token: &'a str,
}

pub async fn validate(
    auth: Auth<Ingest>,
    State(state): State<AppState>,
    req: Result<Json<ValidateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = req
        .map(|Json(v)| v)
        .map_err(|e| ApiError::new(ErrorCode::InvalidValidation, e.body_text()))?;
    let key = Zeroizing::new(req.key);
    for (name, v) in [
        ("fingerprint", req.fingerprint.as_deref()),
        ("nonce", req.nonce.as_deref()),
        ("meter", req.meter.as_deref()),
    ] {
        if v.is_some_and(|v| v.len() > FIELD_CHARS_MAX) {
            return Err(ApiError::new(
                ErrorCode::InvalidValidation,
                format!("{name} must be at most {FIELD_CHARS_MAX} bytes"),
            ));
        }
    }
    let request = Request {
        fingerprint: req.fingerprint.as_deref(),
        entitlements: &req.entitlements,
        meter: req.meter.as_deref(),
    };
    let shared = &state.engine.shared;
    let entry = find_license(shared, &key);
    state.guards.limit(
        Limited::Validate,
        &auth.key_id,
        entry.as_ref().map(|e| e.license.id.as_str()),
    )?;
    let v = validate_found(
        shared,
        entry,
        &request,
        req.nonce.as_deref(),
        now(&state),
        state.cfg.token_ttl.as_secs() as i64,
    )?;
    metrics()
        .license_validations_total
        .with_label_values(&[v.verdict.code.as_str()])
        .inc();
    let answer = Answer {
        valid: v.verdict.code.is_valid(),
        code: v.verdict.code.as_str(),
        detail: &v.verdict.detail,
        seats: v.verdict.seats,
        quota: v.verdict.quota.as_ref().map(QuotaAnswer::new),
        expires_at: v
            .license
            .as_ref()
            .and_then(|l| l.license.expires_at)
            .map(rfc3339),
        token: &v.token,
    };
    let license_json = v
        .license
        .as_ref()
        .map_or("null", |l| l.license_json.as_str());
    let mut out = Vec::with_capacity(1024 + license_json.len() + v.token.len());
    serde_json::to_writer(&mut out, &answer).expect("answer serializes");
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    out.extend_from_slice(b",\"license\":");
    out.extend_from_slice(license_json.as_bytes());
    out.push(b'}');
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// `GET /.well-known/jwks.json`: the verdict and license-file signing keys.
pub async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.engine.shared.crypto.jwks()),
    )
        .into_response()
}
