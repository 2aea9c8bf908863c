//! Products and their signing secrets (admin). A secret is shown once, when
//! it is created; afterwards only its id and dates are listed.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Admin, ApiError, AppState, Auth};
use crate::engine::protocol::{ChangeProduct, ProductChange, SaveProduct};
use crate::error_code::ErrorCode;
use crate::event::fmt_ms;
use crate::product::{new_secret, valid_product_id, Product};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewProduct {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    require_signatures: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProductPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    require_signatures: Option<bool>,
}

pub fn product_json(p: &Product) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "requireSignatures": p.require_signatures,
        "apiKeys": p.api_keys,
        "signingSecrets": p.signing_secrets.iter().map(|s| json!({
            "id": s.id,
            "createdAt": fmt_ms(s.created_ms),
            "revokedAt": s.revoked_ms.map(fmt_ms),
        })).collect::<Vec<_>>(),
        "createdAt": fmt_ms(p.created_ms),
        "updatedAt": fmt_ms(p.updated_ms),
        "version": p.version,
    })
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidProduct, msg)
}

fn check_name(name: &Option<String>) -> Result<(), ApiError> {
    match name {
        Some(n) if n.trim().is_empty() || n.len() > 200 => {
            Err(invalid("name must be 1 to 200 characters"))
        }
        _ => Ok(()),
    }
}

pub(super) fn stored(state: &AppState, id: &str) -> Result<Product, ApiError> {
    state
        .view
        .product(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("product `{id}` does not exist"),
            )
        })
}

pub async fn list(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let products = state.view.products().map_err(ApiError::internal)?;
    Ok(Json(Value::Array(
        products.iter().map(product_json).collect(),
    )))
}

pub async fn get(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(product_json(&stored(&state, &id)?)))
}

/// Creates a product with its first signing secret.
pub async fn create(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    body: Result<Json<NewProduct>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body.map_err(|e| invalid(e.body_text()))?;
    if !valid_product_id(&new.id) {
        return Err(invalid("id must be 1 to 64 characters of [A-Za-z0-9._-]"));
    }
    check_name(&new.name)?;
    let now = state.view.now_ms();
    let (secret, plaintext) = new_secret(state.view.crypto(), now);
    let product = Product {
        id: new.id.into(),
        name: new.name,
        require_signatures: new.require_signatures,
        api_keys: Vec::new(),
        signing_secrets: vec![secret.clone()],
        created_ms: now,
        updated_ms: now,
        version: 1,
    };
    let product = state
        .engine
        .send(SaveProduct {
            product: Box::new(product),
            audit: auth.audit(),
        })
        .await?;
    let mut body = product_json(&product);
    body["signingSecret"] = json!({ "id": secret.id, "secret": plaintext.as_str() });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn change(
    state: &AppState,
    auth: &Auth<Admin>,
    id: String,
    change: ProductChange,
) -> Result<Product, ApiError> {
    let request = ChangeProduct {
        id: id.into(),
        change,
        audit: auth.audit(),
    };
    Ok(state.engine.send(request).await?)
}

pub async fn update(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ProductPatch>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(patch) = body.map_err(|e| invalid(e.body_text()))?;
    check_name(&patch.name)?;
    let edit = ProductChange::Edit {
        name: patch.name,
        require_signatures: patch.require_signatures,
    };
    Ok(Json(product_json(&change(&state, &auth, id, edit).await?)))
}

/// Adds a signing secret (rotation: the old ones stay valid until revoked).
pub async fn create_secret(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (secret, plaintext) = new_secret(state.view.crypto(), state.view.now_ms());
    let add = ProductChange::AddSecret(secret.clone());
    change(&state, &auth, id, add).await?;
    let body = json!({
        "id": secret.id,
        "secret": plaintext.as_str(),
        "createdAt": fmt_ms(secret.created_ms),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn revoke_secret(
    auth: Auth<Admin>,
    State(state): State<AppState>,
    Path((id, secret_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    change(&state, &auth, id, ProductChange::RevokeSecret { secret_id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
