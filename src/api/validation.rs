//! License validation (a `validate` key, the `ingest` key a product
//! already holds, bound to that product, or the license key itself) and the public keys that verify its
//! tokens and license files (`/.well-known/jwks.json`, no auth). A key bound
//! to a product validates only that product's licenses: another product's
//! license key is answered as unknown.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::client::Caller;
use super::licenses::now;
use super::{ApiError, AppState, Limited};
use crate::error_code::ErrorCode;
use crate::license::decide::{rfc3339, QuotaReport};
use crate::license::Request;
use crate::metrics::metrics;
use crate::projection::licenses::PublishedLicense;
use crate::query::licenses::{Validation, FIELD_CHARS_MAX};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    /// The license key; absent when the call authenticates with it
    /// (`Authorization: License <key>`).
    key: Option<String>,
    fingerprint: Option<String>,
    #[serde(default)]
    entitlements: Vec<String>,
    meter: Option<String>,
    nonce: Option<String>,
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
    caller: Caller,
    State(state): State<AppState>,
    req: Result<Json<ValidateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = req
        .map(|Json(v)| v)
        .map_err(|e| ApiError::new(ErrorCode::InvalidValidation, e.body_text()))?;
    let key = Zeroizing::new(req.key.unwrap_or_default());
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
    let entry = match &caller {
        Caller::Key(auth) => {
            if key.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::InvalidValidation,
                    "send the license key as `key`, or authenticate with it \
                     (`Authorization: License <key>`)",
                ));
            }
            state
                .view
                .license_by_key(&key)
                .filter(|e| auth.check_owner(&e.license.product, "validate"))
        }
        // The credential is the license; a `key` in the body, if any, must
        // be the same one.
        Caller::License { license, .. } => {
            let same = |e: &PublishedLicense| e.license.id == license.license.id;
            if !key.is_empty() && !state.view.license_by_key(&key).is_some_and(|e| same(&e)) {
                return Err(ApiError::new(
                    ErrorCode::InvalidValidation,
                    "`key` differs from the license key the call authenticates with",
                ));
            }
            Some(license.clone())
        }
    };
    state.guards.limit(
        Limited::Validate,
        caller.rate_key(),
        entry.as_ref().map(|e| e.license.id.as_str()),
    )?;
    let v = state
        .view
        .validate(
            entry,
            &request,
            req.nonce.as_deref(),
            now(&state),
            state.cfg.token_ttl.as_secs() as i64,
        )
        .map_err(ApiError::internal)?;
    metrics()
        .license_validations_total
        .with_label_values(&[v.verdict.code.as_str()])
        .inc();
    Ok(render(&v))
}

/// The answer: the verdict, its token, and the license as published.
fn render(v: &Validation) -> Response {
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
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// `GET /.well-known/jwks.json`: the verdict and license-file signing keys.
pub async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.view.crypto().jwks()),
    )
        .into_response()
}
