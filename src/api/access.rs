//! What every request leaves behind: its request id (the caller's
//! `x-request-id` when valid, else a new one; echoed in the response and
//! carried into the log records it causes), the request metrics, one
//! access-log line (target `keymeter::access`) and, for an administrative
//! change, one line under `keymeter::admin` naming the acting key.
//!
//! Neither line holds a header value, a body or a query string, so no key,
//! token or secret can reach the log: only the method, the route template,
//! the status, the latency, the API key's id and the request id.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::metrics;

/// The request-id header, read from the caller and set on every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest `x-request-id` accepted from a caller.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// What the access middleware learns about a request while it is handled:
/// its id, and the id of the API key that authenticated it (set by the
/// [`super::Auth`] extractor). Shared through the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: Arc<str>,
    key_id: Arc<OnceLock<String>>,
}

impl RequestContext {
    fn new(request_id: String) -> RequestContext {
        RequestContext {
            request_id: request_id.into(),
            key_id: Arc::new(OnceLock::new()),
        }
    }

    /// Records the API key that made the request (the first one set wins).
    pub fn set_key_id(&self, key_id: &str) {
        let _ = self.key_id.set(key_id.to_owned());
    }

    fn key_id(&self) -> Option<&str> {
        self.key_id.get().map(String::as_str)
    }
}

/// A caller's request id, if it is one keymeter keeps: 1 to
/// [`REQUEST_ID_BYTES_MAX`] bytes of visible ASCII (no space, no control
/// character), so it is safe in a header, a log line and a log record.
pub fn valid_request_id(value: &[u8]) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= REQUEST_ID_BYTES_MAX
        && value.iter().all(|b| (0x21..=0x7e).contains(b));
    if ok {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// A new request id: 16 random bytes as 32 hex characters.
pub fn new_request_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    hex::encode(id)
}

/// The administrative change a route makes, named for the admin log; `None`
/// for reads and for the client-facing calls (ingest, validation, seats).
pub fn admin_action(method: &Method, route: &str) -> Option<&'static str> {
    let action = match (method.as_str(), route) {
        ("POST", "/api/v1/meters") => "meter.create",
        ("PUT", "/api/v1/meters/{meterIdOrSlug}") => "meter.update",
        ("DELETE", "/api/v1/meters/{meterIdOrSlug}") => "meter.delete",
        ("POST", "/api/v1/api-keys") => "api_key.create",
        ("DELETE", "/api/v1/api-keys/{id}") => "api_key.revoke",
        ("POST", "/api/v1/products") => "product.create",
        ("PATCH", "/api/v1/products/{id}") => "product.update",
        ("POST", "/api/v1/products/{id}/signing-secrets") => "signing_secret.create",
        ("DELETE", "/api/v1/products/{id}/signing-secrets/{secret_id}") => "signing_secret.revoke",
        ("POST", "/api/v1/licenses") => "license.create",
        ("PATCH", "/api/v1/licenses/{id}") => "license.update",
        ("POST", "/api/v1/licenses/{id}/suspend") => "license.suspend",
        ("POST", "/api/v1/licenses/{id}/reinstate") => "license.reinstate",
        ("POST", "/api/v1/licenses/{id}/revoke") => "license.revoke",
        ("POST", "/api/v1/licenses/{id}/renew") => "license.renew",
        ("POST", "/api/v1/licenses/{id}/license-file") => "license.issue_file",
        _ => return None,
    };
    Some(action)
}

/// The `method` label: the standard methods by name, anything else (a client
/// may send any token as a method) as `other`, so no request can add a
/// series.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Gives the request its id, runs it, then counts it by route template
/// (never the raw path, which would make label values unbounded), method
/// (a fixed set) and status (a fixed set), and writes its access line.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let label = method_label(&method);
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| valid_request_id(v.as_bytes()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let ctx = RequestContext::new(request_id);
    req.extensions_mut().insert(ctx.clone());
    let admin_path = admin_action(&method, &route).map(|a| (a, req.uri().path().to_owned()));
    let mut response = next.run(req).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let status_label = status.to_string();
    let m = metrics();
    m.http_requests_total
        .with_label_values(&[&route, label, &status_label])
        .inc();
    m.http_request_duration_seconds
        .with_label_values(&[&route, label, &status_label])
        .observe(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let key_id = ctx.key_id().unwrap_or("-");
    tracing::info!(
        target: "keymeter::access",
        method = label,
        route = %route,
        status,
        latency_us = elapsed.as_micros() as u64,
        key_id,
        request_id = %ctx.request_id,
        "request"
    );
    if let Some((action, path)) = admin_path {
        tracing::info!(
            target: "keymeter::admin",
            action,
            path = %path,
            status,
            key_id,
            request_id = %ctx.request_id,
            "admin action"
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_only_when_short_visible_ascii() {
        assert_eq!(valid_request_id(b"req-1_A.b:c"), Some("req-1_A.b:c"));
        assert_eq!(valid_request_id(&[b'a'; 128]), Some(&*"a".repeat(128)));
        assert_eq!(valid_request_id(&[b'a'; 129]), None);
        assert_eq!(valid_request_id(b""), None);
        assert_eq!(valid_request_id(b"has space"), None);
        assert_eq!(valid_request_id(b"tab\there"), None);
        assert_eq!(valid_request_id(b"line\nbreak"), None);
        assert_eq!(valid_request_id("caf\u{e9}".as_bytes()), None);
        assert_eq!(valid_request_id(b"del\x7f"), None);
    }

    #[test]
    fn generated_request_ids_are_valid_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(valid_request_id(a.as_bytes()).is_some());
        assert_ne!(a, b);
    }

    #[test]
    fn admin_actions_are_the_changes_not_the_reads_or_client_calls() {
        let post = Method::POST;
        assert_eq!(
            admin_action(&post, "/api/v1/licenses"),
            Some("license.create")
        );
        assert_eq!(
            admin_action(&post, "/api/v1/licenses/{id}/revoke"),
            Some("license.revoke")
        );
        assert_eq!(
            admin_action(&Method::DELETE, "/api/v1/api-keys/{id}"),
            Some("api_key.revoke")
        );
        assert_eq!(admin_action(&Method::GET, "/api/v1/licenses"), None);
        assert_eq!(admin_action(&post, "/api/v1/events"), None);
        assert_eq!(admin_action(&post, "/api/v1/licenses/validate"), None);
        assert_eq!(admin_action(&post, "/api/v1/licenses/{id}/seats"), None);
    }
}
