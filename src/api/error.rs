//! One error shape for every endpoint: `{"code": "...", "message": "..."}`
//! plus optional details, sent with the code's HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::engine::EngineError;
use crate::error_code::ErrorCode;
use crate::query::meters::QueryError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<serde_json::Map<String, Value>>,
    /// Sent as `Retry-After` (seconds).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: None,
            retry_after_s: None,
        }
    }

    /// The HTTP status: always the code's.
    pub fn status(&self) -> StatusCode {
        self.code.status()
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
        ApiError::new(ErrorCode::Internal, "internal error; see the server log")
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            EngineError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            EngineError::Invalid(r) => ApiError::new(r.code, r.message),
            EngineError::Overloaded(m) => ApiError::new(ErrorCode::DedupCapacity, m),
            EngineError::Stopped => ApiError::new(ErrorCode::EngineUnavailable, e.to_string()),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        if e.code == ErrorCode::Internal {
            return ApiError::internal(e.message);
        }
        let error = ApiError::new(e.code, e.message);
        match e.retry_after_s {
            Some(s) => error.with_retry_after(s),
            None => error,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = self.details.unwrap_or_default();
        body.insert("code".into(), json!(self.code.as_str()));
        body.insert("message".into(), json!(self.message));
        let mut response = (status, Json(Value::Object(body))).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"keymeter\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::meters::QueryRequest;

    #[test]
    fn a_refused_query_keeps_its_code_message_and_retry() {
        let e = ApiError::from(QueryRequest::parse("page=1").unwrap_err());
        assert_eq!(e.code, ErrorCode::InvalidQuery);
        assert_eq!(e.message, "unknown query parameter `page`");
        assert_eq!(e.retry_after_s, None);
        let retry = QueryError {
            code: ErrorCode::MeterBackfilling,
            message: "later".into(),
            retry_after_s: Some(1),
        };
        assert_eq!(ApiError::from(retry).retry_after_s, Some(1));
    }

    #[test]
    fn a_failed_read_is_told_to_the_log_only() {
        let failed = QueryError {
            code: ErrorCode::Internal,
            message: "state store: disk on fire".into(),
            retry_after_s: None,
        };
        let e = ApiError::from(failed);
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(e.message, "internal error; see the server log");
    }
}
