//! Who makes a client-facing license call (validate; seat checkout,
//! heartbeat, release): an API key that may (see [`Validate`]), or the
//! license key itself, `Authorization: License <key>`, which an end-user
//! application already holds. A license key reaches its own license only
//! (the path may name it `me`), sends no usage and manages nothing; its
//! calls are rate-limited per license and per source address, and a
//! failed lookup costs the address too, so keys cannot be guessed at speed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::auth::request_id;
use super::{ApiError, AppState, Auth, Limited, Validate};
use crate::error_code::ErrorCode;
use crate::projection::licenses::PublishedLicense;
use crate::record::Audit;

/// The path segment that names the caller's own license.
pub const ME: &str = "me";

pub enum Caller {
    Key(Auth<Validate>),
    License {
        license: Arc<PublishedLicense>,
        /// Where the call came from, for the per-address limit.
        addr: String,
        request_id: String,
    },
}

/// The key of `Authorization: License <key>`, if the header has that form.
pub fn license_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("License ")
        .or_else(|| v.strip_prefix("license "))
        .map(str::trim)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(key) = license_key(&parts.headers) else {
            return Auth::<Validate>::from_request_parts(parts, state)
                .await
                .map(Caller::Key);
        };
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
        let addr = format!("address {addr}");
        let Some(license) = state.view.license_by_key(key) else {
            state.guards.limit(Limited::Validate, &addr, None)?;
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the license key is unknown",
            ));
        };
        Ok(Caller::License {
            license,
            addr,
            request_id: request_id(parts),
        })
    }
}

impl Caller {
    /// The license the path's `id` names, if this caller may act on it
    /// (counting a refusal of another product's license); `me` is the
    /// license of a license key.
    pub fn license(&self, state: &AppState, id: &str, call: &str) -> Option<Arc<PublishedLicense>> {
        match self {
            Caller::Key(auth) => state
                .view
                .license(id)
                .filter(|e| auth.check_owner(&e.license.product, call)),
            Caller::License { license, .. } => {
                (id == ME || id == license.license.id.as_str()).then(|| license.clone())
            }
        }
    }

    /// An admin key, which may free any seat without its lease token.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Key(auth) if auth.admin)
    }

    /// What the per-caller rate limit counts under: the API key, or the
    /// source address of a license key.
    pub fn rate_key(&self) -> &str {
        match self {
            Caller::Key(auth) => &auth.key_id,
            Caller::License { addr, .. } => addr,
        }
    }

    /// Who the log records as having acted.
    pub fn audit(&self) -> Audit {
        match self {
            Caller::Key(auth) => auth.audit(),
            Caller::License {
                license,
                request_id,
                ..
            } => Audit {
                actor: Some(format!("license:{}", license.license.id)),
                at_ms: 0,
                request_id: Some(request_id.clone()),
            },
        }
    }
}
