//! Plans (`admin` scope): `POST /api/v1/plans` saves the next version of a
//! plan; `GET /api/v1/plans` lists every version; `GET /api/v1/plans/{ref}`
//! answers one version (`pro@2`) or every version of one plan (`pro`).
//! `GET /api/v1/licenses/{id}/history` answers which terms applied when.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::licenses::refusal;
use super::{Admin, ApiError, AppState, Auth};
use crate::engine::protocol as rq;
use crate::error_code::ErrorCode;
use crate::license::history::in_force;
use crate::license::plan::{parse_ref, NewPlan, Plan};

fn plan_json(plan: &Plan) -> Value {
    let mut v = serde_json::to_value(plan).expect("plan serializes");
    v["ref"] = json!(plan.reference());
    v
}

pub async fn create(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    new: Result<Json<NewPlan>, JsonRejection>,
) -> Result<Response, ApiError> {
    let new = new
        .map(|Json(v)| v)
        .map_err(|e| ApiError::new(ErrorCode::InvalidPlan, e.body_text()))?;
    let plan = state
        .engine
        .send(rq::CreatePlan {
            plan: Box::new(new),
            audit: auth.audit(),
        })
        .await?
        .map_err(refusal)?;
    Ok((StatusCode::CREATED, Json(plan_json(&plan))).into_response())
}

pub async fn list(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let plans = state.view.plans().map_err(ApiError::internal)?;
    let items: Vec<Value> = plans.iter().map(plan_json).collect();
    Ok(Json(json!({ "items": items })))
}

pub async fn get(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, version) =
        parse_ref(&reference).map_err(|m| ApiError::new(ErrorCode::InvalidPlan, m))?;
    let versions: Vec<Plan> = state
        .view
        .plans()
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|p| p.name == name && version.is_none_or(|v| v == p.version))
        .collect();
    let not_found = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!("plan `{reference}` does not exist"),
        )
    };
    match version {
        Some(_) => versions
            .first()
            .map(|p| Json(plan_json(p)))
            .ok_or_else(not_found),
        None if versions.is_empty() => Err(not_found()),
        None => {
            let items: Vec<Value> = versions.iter().map(plan_json).collect();
            Ok(Json(json!({ "name": name, "versions": items })))
        }
    }
}

/// Which terms applied to license `id` from which log position and time.
pub async fn history(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    super::licenses::found(&state, &id)?;
    let entries = state
        .view
        .license_history(&id)
        .map_err(ApiError::internal)?;
    let items: Vec<Value> = in_force(&entries)
        .into_iter()
        .map(|(e, terms)| {
            let mut v = json!({"seq": e.seq, "at": e.at, "change": e.change, "terms": terms});
            if let Some(m) = e.migration {
                v["migration"] = json!(m);
                v["step"] = json!(e.step);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "license_id": id, "items": items })))
}
