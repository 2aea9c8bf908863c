//! One error shape for every endpoint: `{"code": "...", "message": "..."}`
//! plus optional details, with the matching HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::engine::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Option<serde_json::Map<String, Value>>,
    /// Sent as `Retry-After` (seconds).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_details(mut self, details: serde_json::Map<String, Value>) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see the server log",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "CONFLICT", m),
            EngineError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", m),
            EngineError::Invalid(r) => ApiError::bad_request(r.code, r.message),
            EngineError::Overloaded(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "DEDUP_CAPACITY", m)
            }
            EngineError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ENGINE_UNAVAILABLE",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details.unwrap_or_default();
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"keymeter\""),
            );
        }
        response
    }
}
