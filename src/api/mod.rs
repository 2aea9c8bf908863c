//! The HTTP API: routers per resource, authentication, error mapping, and
//! request ids, metrics and access logs ([`access`]). Handlers read through [`AppState::view`] and write
//! through [`AppState::engine`].

pub mod access;
pub mod auth;
mod billing;
pub mod client;
mod error;
mod events;
mod guard;
mod keys;
mod licenses;
mod meters;
mod migrations;
mod plans;
mod products;
mod seats;
mod validation;

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

pub use self::auth::{Admin, Auth, ClientCert, Ingest, Read, Validate};
pub use self::error::ApiError;
pub use self::guard::{Guards, Limited};
use crate::config::Config;
use crate::engine::EngineHandle;
use crate::error_code::ErrorCode;
use crate::metrics::metrics;
use crate::query::View;
use crate::source::SourceHealth;

#[derive(Clone)]
pub struct AppState {
    /// Where requests that change state go.
    pub engine: EngineHandle,
    /// What handlers read.
    pub view: View,
    pub cfg: Arc<Config>,
    pub guards: Arc<Guards>,
}

impl AppState {
    /// The API over `engine`; `source` is the health of the Kafka source
    /// feeding it, when one runs (`/readyz` shows it).
    ///
    /// Panics if the signed calls' nonce journal in the data directory
    /// cannot be opened; [`AppState::open`] returns that error instead.
    pub fn new(
        engine: EngineHandle,
        cfg: Arc<Config>,
        source: Option<Arc<SourceHealth>>,
    ) -> AppState {
        AppState::open(engine, cfg, source).expect("open the signed calls' nonce journal")
    }

    /// [`AppState::new`], with the error of opening the nonce journal.
    pub fn open(
        engine: EngineHandle,
        cfg: Arc<Config>,
        source: Option<Arc<SourceHealth>>,
    ) -> anyhow::Result<AppState> {
        let view = View::new(engine.shared.clone(), source);
        let path = cfg.signature_nonces_path();
        let guards = guard::guards(&cfg, view.now_ms())
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(AppState {
            engine,
            view,
            cfg,
            guards,
        })
    }
}

/// The API router. `/metrics` is included (behind the `read` scope) unless
/// the configuration serves it on its own listener.
pub fn router(state: AppState) -> Router {
    let body_max = state.cfg.body_bytes_max;
    let mut api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/events", post(events::ingest))
        .route("/api/v1/meters", get(meters::list).post(meters::create))
        .route(
            "/api/v1/meters/{meterIdOrSlug}",
            get(meters::get).put(meters::update).delete(meters::delete),
        )
        .route(
            "/api/v1/meters/{meterIdOrSlug}/query",
            get(meters::query).post(meters::query_post),
        )
        .route(
            "/api/v1/meters/{meterIdOrSlug}/subjects",
            get(meters::subjects),
        )
        .route(
            "/api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values",
            get(meters::group_by_values),
        )
        .route("/api/v1/quarantine", get(events::quarantine))
        .route("/api/v1/api-keys", get(keys::list).post(keys::create))
        .route("/api/v1/api-keys/{id}", delete(keys::revoke))
        .route(
            "/api/v1/products",
            get(products::list).post(products::create),
        )
        .route(
            "/api/v1/products/{id}",
            get(products::get).patch(products::update),
        )
        .route(
            "/api/v1/products/{id}/signing-secrets",
            post(products::create_secret),
        )
        .route(
            "/api/v1/products/{id}/signing-secrets/{secret_id}",
            delete(products::revoke_secret),
        )
        .route("/.well-known/jwks.json", get(validation::jwks))
        .route("/api/v1/billing/statements", get(billing::feed))
        .route("/api/v1/billing/statements/{id}", get(billing::get))
        .route("/api/v1/billing/statements/{id}/proof", get(billing::proof))
        .route(
            "/api/v1/billing/statements/{id}/consistency",
            get(billing::consistency),
        )
        .route(
            "/api/v1/billing/subjects/{subject}/current",
            get(billing::current),
        )
        .route("/api/v1/billing/periods/{period}", get(billing::period))
        .route(
            "/api/v1/billing/customers/{customer}/totals",
            get(billing::customer_totals),
        )
        .route(
            "/api/v1/billing/periods/{period}/export",
            get(billing::export),
        )
        .route(
            "/api/v1/licenses",
            get(licenses::list).post(licenses::create),
        )
        .route("/api/v1/licenses/validate", post(validation::validate))
        .route(
            "/api/v1/licenses/{id}",
            get(licenses::get).patch(licenses::update),
        )
        .route("/api/v1/licenses/{id}/suspend", post(licenses::suspend))
        .route("/api/v1/licenses/{id}/reinstate", post(licenses::reinstate))
        .route("/api/v1/licenses/{id}/revoke", post(licenses::revoke))
        .route("/api/v1/licenses/{id}/renew", post(licenses::renew))
        .route("/api/v1/licenses/{id}/history", get(plans::history))
        .route("/api/v1/plans", get(plans::list).post(plans::create))
        .route("/api/v1/plans/{reference}", get(plans::get))
        .route(
            "/api/v1/migrations",
            get(migrations::list).post(migrations::create),
        )
        .route("/api/v1/migrations/{id}", get(migrations::get))
        .route(
            "/api/v1/migrations/{id}/dry-run",
            post(migrations::dry_run_report),
        )
        .route("/api/v1/migrations/{id}/apply", post(migrations::apply))
        .route(
            "/api/v1/migrations/{id}/rollback",
            post(migrations::rollback),
        )
        .route(
            "/api/v1/migrations/{id}/complete",
            post(migrations::complete),
        )
        .route(
            "/api/v1/licenses/{id}/license-file",
            post(licenses::license_file),
        )
        .route(
            "/api/v1/licenses/{id}/seats",
            get(seats::list).post(seats::checkout),
        )
        .route(
            "/api/v1/licenses/{id}/seats/{seat_id}",
            delete(seats::release),
        )
        .route(
            "/api/v1/licenses/{id}/seats/{seat_id}/heartbeat",
            post(seats::heartbeat),
        );
    if state.cfg.metrics_listen.is_none() {
        api = api.route("/metrics", get(metrics_protected));
    }
    api.fallback(not_found)
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(DefaultBodyLimit::max(body_max))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::verify_signature,
        ))
        .layer(axum::middleware::from_fn(access::observe))
        .with_state(state)
}

/// The unauthenticated metrics-only router for `metrics_listen`.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(metrics_text))
}

async fn healthz() -> &'static str {
    "ok"
}

/// `/readyz`: `{"status": "ready"}` for anyone (load balancers and probes
/// hold no key); log positions, Kafka assignments and error text only for a
/// key with the `read` scope.
async fn readyz(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let may_read = auth::bearer_token(&headers)
        .and_then(|k| state.view.api_key(k))
        .is_some_and(|k| crate::api_keys::allows(&k.scopes, crate::scope::Scope::Read));
    match state.view.readiness() {
        Some(body) if may_read => axum::Json(body).into_response(),
        Some(_) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        None => ApiError::new(
            ErrorCode::EngineFailed,
            "the engine stopped after an error; see the server log",
        )
        .into_response(),
    }
}

async fn metrics_protected(_auth: Auth<Read>) -> Response {
    metrics_text().await
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
