//! Bearer API-key authentication as an extractor: a handler that takes
//! `Auth<Admin>` cannot run without a key holding that scope. It runs before
//! the body is read, so unauthenticated callers cost no parsing.
//! `ClientCert` adds the TLS client-certificate requirement of ingest.

use std::marker::PhantomData;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::api_keys::allows;
use crate::error_code::ErrorCode;
use crate::scope::Scope;
use crate::tls::TlsPeer;

pub trait RequiredScope: Send + Sync + 'static {
    const SCOPE: Scope;
}

pub struct Ingest;
pub struct Read;
pub struct Admin;

impl RequiredScope for Ingest {
    const SCOPE: Scope = Scope::Ingest;
}
impl RequiredScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl RequiredScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// The key of `Authorization: Bearer <key>`, if the header has that form.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// The authenticated caller.
pub struct Auth<S> {
    pub key_id: String,
    pub request_id: String,
    _scope: PhantomData<S>,
}

impl<S: RequiredScope> FromRequestParts<AppState> for Auth<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer_token(&parts.headers).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "send an API key as `Authorization: Bearer <key>`",
            )
        })?;
        let key = state.view.api_key(presented).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "the API key is unknown or revoked",
            )
        })?;
        if !allows(&key.scopes, S::SCOPE) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "API key `{}` lacks the `{}` scope",
                    key.id,
                    S::SCOPE.as_str()
                ),
            ));
        }
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_owned)
            .unwrap_or_else(crate::api_keys::generate_id);
        Ok(Auth {
            key_id: key.id.to_string(),
            request_id,
            _scope: PhantomData,
        })
    }
}

/// A route that takes `ClientCert` needs a verified TLS client certificate
/// when `tls_client_ca` is configured (the handshake has already checked it
/// against that CA), in addition to the API key. Without `tls_client_ca` it
/// lets every request through.
pub struct ClientCert;

impl FromRequestParts<AppState> for ClientCert {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.cfg.tls_client_ca.is_none() {
            return Ok(ClientCert);
        }
        let verified = parts
            .extensions
            .get::<ConnectInfo<TlsPeer>>()
            .is_some_and(|ConnectInfo(peer)| peer.client_cert.is_some());
        if verified {
            Ok(ClientCert)
        } else {
            Err(ApiError::new(
                ErrorCode::ClientCertRequired,
                "this route requires a TLS client certificate issued by the server's client CA \
                 (tls_client_ca); connect with one, and send the API key as well",
            ))
        }
    }
}

impl<S> Auth<S> {
    pub fn audit(&self) -> crate::record::Audit {
        crate::record::Audit {
            actor: Some(self.key_id.clone()),
            at_ms: 0,
            request_id: Some(self.request_id.clone()),
        }
    }
}
