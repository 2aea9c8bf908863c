//! API-key management (admin). The key itself is returned once, at creation.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Admin, ApiError, AppState, Auth};
use crate::api_keys::{generate_key, key_digest};
use crate::engine::protocol::{CreateApiKey, RevokeApiKey};
use crate::error_code::ErrorCode;
use crate::event::fmt_ms;
use crate::record::ApiKeyRecord;
use crate::scope::Scope;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    scopes: Vec<String>,
    /// The product this key belongs to; its calls then follow the
    /// product's signature rule.
    #[serde(default)]
    product: Option<String>,
}

fn key_json(k: &ApiKeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "scopes": k.scopes,
        "createdAt": fmt_ms(k.created_ms),
    })
}

pub async fn list(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let keys = state.view.api_keys().map_err(ApiError::internal)?;
    let listed = keys.iter().map(|k| {
        let mut v = key_json(k);
        if let Some((product, _)) = state.view.product_of_key(&k.id) {
            v["product"] = json!(product);
        }
        v
    });
    Ok(Json(Value::Array(listed.collect())))
}

pub async fn create(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body.map_err(|e| ApiError::new(ErrorCode::InvalidApiKey, e.body_text()))?;
    if new.name.trim().is_empty() || new.name.len() > 200 {
        return Err(ApiError::new(
            ErrorCode::InvalidApiKey,
            "name must be 1 to 200 characters",
        ));
    }
    let mut scopes = Vec::new();
    for s in &new.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidApiKey,
                format!("unknown scope {s:?}; scopes are ingest, read, validate, admin"),
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidApiKey,
            "at least one scope is required",
        ));
    }
    let (id, key) = generate_key();
    let record = ApiKeyRecord {
        id: id.into(),
        name: new.name,
        scopes,
        key_sha256: key_digest(&key),
        created_ms: state.view.now_ms(),
    };
    let record = state
        .engine
        .send(CreateApiKey {
            key: record,
            product: new.product.clone().map(Into::into),
            audit: auth.audit(),
        })
        .await?;
    let mut body = key_json(&record);
    body["key"] = json!(key);
    if let Some(product) = new.product {
        body["product"] = json!(product);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn revoke(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .engine
        .send(RevokeApiKey {
            id: id.into(),
            audit: auth.audit(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
