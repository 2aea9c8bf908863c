//! Migrations (`admin` scope): `POST /api/v1/migrations` creates one in
//! `draft`; `…/{id}/dry-run` reports every selected license before and
//! after (nothing changes but the kept mark of the selection);
//! `…/{id}/apply` runs a step (`{"percent": 10}` or `{"count": 500}`),
//! `…/{id}/rollback` restores migrated licenses (`{"from_step": 2}`),
//! `…/{id}/complete` freezes it; `GET …/{id}` shows its progress.
//!
//! A step or rollback goes to the writer a chunk at a time, so seat
//! checkouts and other writes queued meanwhile wait for one chunk, not for
//! the whole step; each chunk is one log batch.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::licenses::refusal;
use super::{Admin, ApiError, AppState, Auth};
use crate::engine::decide::{ChunkOutcome, MIGRATION_CHUNK_MAX};
use crate::engine::protocol as rq;
use crate::error_code::ErrorCode;
use crate::license::migration::{dry_run, mark, DryRunItem, MigrationSpec, StepSize};
use crate::license::migration_book::Migration;
use crate::query::View;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidMigration, message)
}

fn new_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut id);
    format!("mig_{}", hex::encode(id))
}

fn stored(state: &AppState, id: &str) -> Result<Migration, ApiError> {
    state
        .view
        .migration(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("migration `{id}` does not exist"),
            )
        })
}

/// The document with how many licenses it holds migrated and rolled back.
fn progress(view: &View, doc: &Migration) -> Result<Value, ApiError> {
    let entries = view
        .migration_entries(&doc.id)
        .map_err(ApiError::internal)?;
    let migrated = entries.iter().filter(|e| !e.rolled_back).count();
    let mut v = serde_json::to_value(doc).expect("migration serializes");
    v["progress"] = json!({
        "migrated": migrated,
        "rolled_back": entries.len() - migrated,
        "selected_at_dry_run": doc.dry_run.as_ref().map(|d| d.mark.selected),
    });
    Ok(v)
}

pub async fn create(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    spec: Result<Json<MigrationSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = spec.map_err(|e| invalid(e.body_text()))?;
    let doc = state
        .engine
        .send(rq::CreateMigration {
            id: new_id(),
            spec: Box::new(spec),
            audit: auth.audit(),
        })
        .await?
        .map_err(refusal)?;
    Ok((StatusCode::CREATED, Json(progress(&state.view, &doc)?)).into_response())
}

pub async fn list(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let docs = state.view.migrations().map_err(ApiError::internal)?;
    Ok(Json(json!({ "items": docs })))
}

pub async fn get(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let doc = stored(&state, &id)?;
    Ok(Json(progress(&state.view, &doc)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunParams {
    /// Licenses listed after this id.
    after: Option<String>,
    /// Most licenses listed (default 100, at most 10,000); the summary
    /// always covers the whole selection.
    limit: Option<usize>,
}

/// The dry run over the published licenses: those the migration selects
/// and has not migrated.
fn compute_dry_run(view: &View, doc: &Migration) -> Result<Vec<DryRunItem>, ApiError> {
    let target = view
        .plans()
        .map_err(ApiError::internal)?
        .into_iter()
        .find(|p| p.reference() == doc.spec.target)
        .ok_or_else(|| {
            let msg = format!("plan `{}` does not exist", doc.spec.target);
            ApiError::new(ErrorCode::NotFound, msg)
        })?;
    let held: std::collections::HashSet<String> = view
        .migration_entries(&doc.id)
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|e| !e.rolled_back)
        .map(|e| e.license_id.to_string())
        .collect();
    let published = view.licenses();
    let pending = published
        .iter()
        .map(|p| &p.license)
        .filter(|l| !held.contains(l.id.as_str()));
    let exists = |m: &str| view.has_meter(m);
    Ok(dry_run(&doc.spec, &target, pending, &exists, view.now_ms()))
}

pub async fn dry_run_report(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<DryRunParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        let msg = "limit must be between 1 and 10000";
        return Err(ApiError::new(ErrorCode::InvalidQuery, msg));
    }
    let doc = stored(&state, &id)?;
    let view = state.view.clone();
    let (report, doc) =
        tokio::task::spawn_blocking(move || compute_dry_run(&view, &doc).map(|r| (r, doc)))
            .await
            .map_err(ApiError::internal)??;
    let convertible = report.iter().filter(|i| i.after.is_some()).count();
    let mut ids: Vec<String> = report.iter().map(|i| i.license_id.clone()).collect();
    let held = state
        .view
        .migration_entries(&id)
        .map_err(ApiError::internal)?;
    ids.extend(
        held.iter()
            .filter(|e| !e.rolled_back)
            .map(|e| e.license_id.to_string()),
    );
    ids.sort_unstable();
    let selection = mark(ids.iter().map(String::as_str), convertible);
    let cannot: Vec<Value> = report
        .iter()
        .filter_map(|i| {
            let reason = i.reason.as_ref()?;
            Some(json!({"license_id": i.license_id, "reason": reason}))
        })
        .take(10_000)
        .collect();
    let listed: Vec<&DryRunItem> = report
        .iter()
        .filter(|i| p.after.as_deref().is_none_or(|a| i.license_id.as_str() > a))
        .take(limit)
        .collect();
    let next = (listed.len() == limit).then(|| listed.last().map(|i| i.license_id.clone()));
    let summary = json!({
        "selected": report.len(),
        "convertible": convertible,
        "cannot_convert": report.len() - convertible,
        "already_migrated": selection.selected - report.len(),
    });
    if doc.status != crate::license::migration_book::MigrationStatus::Completed {
        state
            .engine
            .send(rq::MarkDryRun {
                id: id.clone(),
                mark: selection,
                audit: auth.audit(),
            })
            .await?
            .map_err(refusal)?;
    }
    Ok(Json(json!({
        "migration": id,
        "summary": summary,
        "cannot_convert": cannot,
        "items": listed,
        "next_after": next.flatten(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    percent: Option<u32>,
    count: Option<u32>,
    /// Licenses per log batch (default and most: 10,000).
    chunk: Option<usize>,
}

pub async fn apply(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<StepBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(b) = body.map_err(|e| invalid(e.body_text()))?;
    let size = match (b.percent, b.count) {
        (Some(p), None) => StepSize::Percent(p),
        (None, Some(n)) => StepSize::Count(n),
        _ => return Err(invalid("send exactly one of percent and count")),
    };
    size.check().map_err(invalid)?;
    let chunk_max = b.chunk.unwrap_or(MIGRATION_CHUNK_MAX);
    let mut step = None;
    loop {
        let outcome: ChunkOutcome = state
            .engine
            .send(rq::ApplyChunk {
                id: id.clone(),
                size,
                step,
                chunk_max,
                audit: auth.audit(),
            })
            .await?
            .map_err(refusal)?;
        step = outcome.migration.steps.last().map(|s| s.step);
        if outcome.done {
            let report = outcome.migration.steps.last().cloned();
            let mut v = progress(&state.view, &outcome.migration)?;
            v["step"] = json!(report);
            return Ok(Json(v));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Roll back the licenses of this step and later ones (default 1: all).
    from_step: Option<u32>,
    chunk: Option<usize>,
}

pub async fn rollback(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<RollbackBody>>,
) -> Result<Json<Value>, ApiError> {
    let b = body.map(|Json(b)| b).unwrap_or(RollbackBody {
        from_step: None,
        chunk: None,
    });
    let mut continuing = false;
    loop {
        let outcome: ChunkOutcome = state
            .engine
            .send(rq::RollbackChunk {
                id: id.clone(),
                from_step: b.from_step.unwrap_or(1),
                continuing,
                chunk_max: b.chunk.unwrap_or(MIGRATION_CHUNK_MAX),
                audit: auth.audit(),
            })
            .await?
            .map_err(refusal)?;
        continuing = true;
        if outcome.done {
            let report = outcome.migration.rollbacks.last().cloned();
            let mut v = progress(&state.view, &outcome.migration)?;
            v["rollback"] = json!(report);
            return Ok(Json(v));
        }
    }
}

pub async fn complete(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let doc = state
        .engine
        .send(rq::CompleteMigration {
            id,
            audit: auth.audit(),
        })
        .await?
        .map_err(refusal)?;
    Ok(Json(progress(&state.view, &doc)?))
}
