//! One error shape for every endpoint: `{"code": "...", "message": "..."}`
//! plus optional details, and the problem fields OpenMeter's clients read
//! (RFC 9457: `type`, `title`, `status`, `detail`), sent with the code's
//! HTTP status. [`json_errors`] gives the router's own refusals (405, a path
//! it cannot parse) the same shape.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
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
        let body = problem(self.code, status, &self.message, self.details);
        let mut response = (status, Json(body)).into_response();
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

/// The error body: `details`, then `code` and `message`, and the problem
/// fields (`type` is `about:blank`: the status and `code` say it all).
fn problem(
    code: ErrorCode,
    status: StatusCode,
    message: &str,
    details: Option<serde_json::Map<String, Value>>,
) -> Value {
    let mut body = details.unwrap_or_default();
    body.insert("code".into(), json!(code.as_str()));
    body.insert("message".into(), json!(message));
    body.insert("type".into(), json!("about:blank"));
    let title = status.canonical_reason().unwrap_or("Error");
    body.insert("title".into(), json!(title));
    body.insert("status".into(), json!(status.as_u16()));
    body.insert("detail".into(), json!(message));
    Value::Object(body)
}

/// Longest framework refusal text kept as an error's message.
const FRAMEWORK_MESSAGE_MAX: usize = 1024;

/// Gives an error answered by the framework rather than a handler (405 for
/// a method the route does not take, a path it cannot parse) the JSON
/// error body, keeping its status and headers (`Allow`).
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = (response.headers().get(header::CONTENT_TYPE))
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, FRAMEWORK_MESSAGE_MAX)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    };
    if message.is_empty() {
        message = match code {
            ErrorCode::MethodNotAllowed => "the route does not take this method".to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
        };
    }
    let body = serde_json::to_vec(&problem(code, status, &message, None)).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
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
