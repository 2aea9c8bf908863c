//! Request guards that sit in front of the handlers: signed-call checking
//! (see [`crate::signing`] and docs/signing.md) and abuse limits (token
//! buckets per API key and per license, `429` with `Retry-After`).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::auth::bearer_token;
use super::{ApiError, AppState};
use crate::config::{Config, RateLimit};
use crate::error_code::ErrorCode;
use crate::metrics::metrics;
use crate::signing::{
    check_time, nonce_digest, verify_mac, NonceCache, RequestParts, SignatureError,
    SignatureHeader, SIGNATURE_HEADER,
};
use crate::signing_journal::NonceJournal;

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// One configured limit, or none.
struct Limit(Option<Keyed>);

impl Limit {
    fn new(l: RateLimit) -> Limit {
        Limit(NonZeroU32::new(l.per_second).map(|rate| {
            let burst = NonZeroU32::new(l.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        }))
    }

    /// `Err(wait)` when `key` is over its rate.
    fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn forget_idle(&self) {
        if let Some(l) = &self.0 {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// What a rate limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Validate,
    Checkout,
}

impl Limited {
    fn as_str(self) -> &'static str {
        match self {
            Limited::Validate => "validate",
            Limited::Checkout => "checkout",
        }
    }
}

pub struct Guards {
    nonces: NonceCache,
    /// The nonces of calls dated ahead of the server clock, which the
    /// start-second rule alone would not protect after a restart.
    journal: Arc<NonceJournal>,
    tolerance_s: i64,
    /// Unix seconds of this start: older signatures are refused, because
    /// only the nonces of calls dated after their arrival are kept across
    /// restarts.
    started_s: i64,
    validate_per_key: Limit,
    validate_per_license: Limit,
    checkout_per_key: Limit,
    checkout_per_license: Limit,
    checks: AtomicU64,
    /// Queries over a whole meter (no `subject`) running at once: each holds
    /// its answer in memory, so they take turns beyond this.
    pub whole_meter_queries: tokio::sync::Semaphore,
}

/// Queries over a whole meter that run at once (see [`Guards`]).
pub const WHOLE_METER_QUERIES_MAX: usize = 2;

impl Guards {
    /// The guards of a server starting at `now_s`, with the nonces that
    /// `DATA/signature-nonces` still holds.
    pub fn open(cfg: &Config, now_s: i64) -> std::io::Result<Guards> {
        let r = &cfg.rate_limits;
        let nonces = NonceCache::new(cfg.signature_nonces_max);
        let path = cfg.signature_nonces_path();
        let (journal, kept) = NonceJournal::open(&path, now_s)?;
        for (digest, forget_after_s) in kept {
            nonces.remember(digest, forget_after_s);
        }
        Ok(Guards {
            nonces,
            journal: Arc::new(journal),
            tolerance_s: cfg.signature_tolerance.as_secs() as i64,
            started_s: now_s,
            validate_per_key: Limit::new(r.validate_per_api_key),
            validate_per_license: Limit::new(r.validate_per_license),
            checkout_per_key: Limit::new(r.checkout_per_api_key),
            checkout_per_license: Limit::new(r.checkout_per_license),
            checks: AtomicU64::new(0),
            whole_meter_queries: tokio::sync::Semaphore::new(WHOLE_METER_QUERIES_MAX),
        })
    }

    /// Refuses with `429 RATE_LIMITED` and `Retry-After` when the API key or
    /// the license is over its rate for this kind of call. A license is
    /// only counted once it is known to exist, so made-up keys cannot grow
    /// the limiter's memory.
    pub fn limit(
        &self,
        kind: Limited,
        api_key_id: &str,
        license_id: Option<&str>,
    ) -> Result<(), ApiError> {
        // Idle keys are forgotten now and then; their buckets are full anyway.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 100_000 == 99_999 {
            for l in [
                &self.validate_per_key,
                &self.validate_per_license,
                &self.checkout_per_key,
                &self.checkout_per_license,
            ] {
                l.forget_idle();
            }
        }
        let (per_key, per_license) = match kind {
            Limited::Validate => (&self.validate_per_key, &self.validate_per_license),
            Limited::Checkout => (&self.checkout_per_key, &self.checkout_per_license),
        };
        let refused = |scope: &'static str, wait: Duration| {
            metrics()
                .rate_limited_total
                .with_label_values(&[kind.as_str(), scope])
                .inc();
            let retry_after_s = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many {} calls for this {}; retry after {retry_after_s} s",
                    kind.as_str(),
                    scope.replace('_', " ")
                ),
            )
            .with_retry_after(retry_after_s)
        };
        per_key
            .check(api_key_id)
            .map_err(|w| refused("api_key", w))?;
        if let Some(license) = license_id {
            per_license
                .check(license)
                .map_err(|w| refused("license", w))?;
        }
        Ok(())
    }
}

fn refuse(product: &str, err: SignatureError) -> Response {
    metrics()
        .signature_refusals_total
        .with_label_values(&[product, err.reason()])
        .inc();
    ApiError::new(err.code(), err.to_string()).into_response()
}

/// Checks `Keymeter-Signature` on every call that carries one, and requires
/// it on calls made with an API key whose product requires signatures.
/// Calls without a known API key pass through untouched: the handler's
/// authentication refuses them, and an unauthenticated caller costs no body
/// reading here.
pub async fn verify_signature(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let view = &state.view;
    let key_id = match bearer_token(req.headers()).and_then(|k| view.api_key(k)) {
        Some(key) => key.id,
        None => return next.run(req).await,
    };
    // A refused signature never reaches the handler's authentication.
    if let Some(ctx) = req.extensions().get::<super::access::RequestContext>() {
        ctx.set_key_id(&key_id);
    }
    let bound = view.product_of_key(&key_id);
    let header = match req.headers().get(SIGNATURE_HEADER) {
        None => {
            return match bound {
                Some((product, true)) => refuse(&product, SignatureError::Required),
                _ => next.run(req).await,
            };
        }
        Some(h) => h,
    };
    let bound = bound.map(|(product, _)| product);
    let label = bound.as_deref().unwrap_or("none");
    let parsed = match header
        .to_str()
        .map_err(|_| SignatureError::Malformed("not visible ASCII".into()))
        .and_then(|v| SignatureHeader::parse(v).map_err(SignatureError::from))
    {
        Ok(h) => h,
        Err(e) => return refuse(label, e),
    };
    let Some((product, secret)) = view.signing_secret(&parsed.key_id, bound.as_deref()) else {
        return refuse(label, SignatureError::UnknownKey(parsed.key_id));
    };
    let now_s = view.now_ms().div_euclid(1000);
    let guards = &state.guards;
    // Signatures dated in the start second itself are refused too: one
    // made just before the start carries the same `t`.
    let not_before = guards.started_s + 1;
    if let Err(e) = check_time(parsed.timestamp, now_s, guards.tolerance_s, not_before) {
        return refuse(&product, e);
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.cfg.body_bytes_max).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body exceeds {} bytes (or could not be read)",
                    state.cfg.body_bytes_max
                ),
            )
            .into_response()
        }
    };
    let signed = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        body: &bytes,
    };
    if let Err(e) = verify_mac(&secret, &parsed, &signed) {
        return refuse(&product, e);
    }
    // The body may have taken a while: the window is checked again against
    // the clock now, so a slow body cannot carry a call past it.
    let now_s = view.now_ms().div_euclid(1000);
    if let Err(e) = check_time(parsed.timestamp, now_s, guards.tolerance_s, not_before) {
        return refuse(&product, e);
    }
    // Only a valid signature may claim a nonce, so forged calls cannot
    // fill the nonce memory or block a real client's nonce.
    if let Err(e) = state.guards.claim_nonce(&product, &parsed, now_s).await {
        return refuse(&product, e);
    }
    metrics()
        .signed_requests_total
        .with_label_values(&[&product])
        .inc();
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

impl Guards {
    /// Claims the nonce of a verified call for its window. A call dated at
    /// or before now is refused after any later start (the start-second
    /// rule); one dated ahead is not, so its nonce is also on disk before
    /// the call takes effect.
    async fn claim_nonce(
        &self,
        product: &str,
        parsed: &SignatureHeader,
        now_s: i64,
    ) -> Result<(), SignatureError> {
        let forget_after = parsed.timestamp + self.tolerance_s;
        let digest = nonce_digest(&parsed.key_id, &parsed.nonce);
        self.nonces
            .claim_digest(product, digest, now_s, forget_after)?;
        if parsed.timestamp <= now_s {
            return Ok(());
        }
        let journal = self.journal.clone();
        let entry = (digest, forget_after);
        let stored = tokio::task::spawn_blocking(move || journal.record(entry, now_s)).await;
        stored
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|error| {
                tracing::error!(%error, "cannot store a signed call's nonce");
                SignatureError::NonceJournal
            })
    }
}

/// Builds the guards for a router.
pub fn guards(cfg: &Config, now_ms: i64) -> std::io::Result<Arc<Guards>> {
    Guards::open(cfg, now_ms.div_euclid(1000)).map(Arc::new)
}
