//! Bearer API-key authentication as an extractor: a handler that takes
//! `Auth<Admin>` cannot run without a key holding that scope. It runs before
//! the body is read, so unauthenticated callers cost no parsing.
//! `ClientCert` adds the TLS client-certificate requirement of ingest.

use std::marker::PhantomData;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::access::RequestContext;
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
/// The client-facing license calls (validate, seats): a `validate` key, an
/// `ingest` key bound to a product (what a product already holds), or an
/// admin key.
pub struct Validate;

impl RequiredScope for Ingest {
    const SCOPE: Scope = Scope::Ingest;
}
impl RequiredScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl RequiredScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}
impl RequiredScope for Validate {
    const SCOPE: Scope = Scope::Validate;
}

/// The request's id: the one the access middleware gave it (the caller's
/// valid `x-request-id`, or a new one), or a new one where that middleware
/// does not run.
pub fn request_id(parts: &Parts) -> String {
    match parts.extensions.get::<RequestContext>() {
        Some(ctx) => ctx.request_id.to_string(),
        None => super::access::new_request_id(),
    }
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
    /// The product the key is bound to: it acts on that product's licenses
    /// only. `None`: an unbound key, which acts for every product.
    pub product: Option<String>,
    /// The key has the `admin` scope.
    pub admin: bool,
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
        if let Some(ctx) = parts.extensions.get::<RequestContext>() {
            ctx.set_key_id(&key.id);
        }
        let product = state.view.product_of_key(&key.id).map(|(p, _)| p);
        let bound_ingest = product.is_some() && key.scopes.contains(&Scope::Ingest);
        if !(allows(&key.scopes, S::SCOPE) || S::SCOPE == Scope::Validate && bound_ingest) {
            let unbound = if S::SCOPE == Scope::Validate && key.scopes.contains(&Scope::Ingest) {
                " (an `ingest` key reaches license calls only when bound to a product)"
            } else {
                ""
            };
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "API key `{}` lacks the `{}` scope{unbound}",
                    key.id,
                    S::SCOPE.as_str()
                ),
            ));
        }
        let request_id = request_id(parts);
        Ok(Auth {
            key_id: key.id.to_string(),
            request_id,
            product,
            admin: key.scopes.contains(&Scope::Admin),
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
    /// May this caller act on a license of `product`? A bound key only on
    /// its own product's; other licenses answer as if they did not exist.
    pub fn may_act_on(&self, product: &str) -> bool {
        self.product.as_deref().is_none_or(|p| p == product)
    }

    /// [`Auth::may_act_on`], counting a refusal under `call` (seat,
    /// validate, usage) in `keymeter_cross_product_refusals_total`.
    pub fn check_owner(&self, product: &str, call: &str) -> bool {
        let ok = self.may_act_on(product);
        if !ok {
            crate::metrics::metrics()
                .cross_product_refusals_total
                .with_label_values(&[self.product.as_deref().unwrap_or("none"), call])
                .inc();
        }
        ok
    }

    pub fn audit(&self) -> crate::record::Audit {
        crate::record::Audit {
            actor: Some(self.key_id.clone()),
            at_ms: 0,
            request_id: Some(self.request_id.clone()),
        }
    }
}
