//! License validation, answered from memory: the published license
//! snapshot and the quota usage cache, then a signed verdict.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::View;
use crate::license::decide::{quota_periods, Claims, Verdict};
use crate::license::{decide, License, PeriodBounds, Request};
use crate::projection::licenses::PublishedLicense;
use crate::projection::usage::UsageQuery;
use crate::projection::ProjectionError;

/// Longest accepted license key, nonce or fingerprint in a validation.
pub const FIELD_CHARS_MAX: usize = 256;

/// The decision and its signed token.
pub struct Validation {
    pub license: Option<Arc<PublishedLicense>>,
    pub verdict: Verdict,
    pub token: String,
}

impl View {
    /// The published license a presented key opens, if any.
    pub fn license_by_key(&self, key: &str) -> Option<Arc<PublishedLicense>> {
        if key.len() > FIELD_CHARS_MAX {
            return None;
        }
        let shared = &self.shared;
        shared
            .licenses
            .by_key_digest(&shared.crypto.lookup_digest(key))
    }

    /// Validates `key` at `now` and signs the verdict.
    pub fn validate_key(
        &self,
        key: &str,
        request: &Request<'_>,
        nonce: Option<&str>,
        now: DateTime<Utc>,
        token_ttl_s: i64,
    ) -> Result<Validation, ProjectionError> {
        let entry = self.license_by_key(key);
        self.validate(entry, request, nonce, now, token_ttl_s)
    }

    /// [`View::validate_key`] for a license already looked up (`None`: the
    /// key opens none).
    pub fn validate(
        &self,
        entry: Option<Arc<PublishedLicense>>,
        request: &Request<'_>,
        nonce: Option<&str>,
        now: DateTime<Utc>,
        token_ttl_s: i64,
    ) -> Result<Validation, ProjectionError> {
        let verdict = match &entry {
            None => Verdict::not_found(),
            Some(state) => {
                let license = &state.license;
                let periods = quota_periods(license, now);
                let usage = self.quota_usage(license, &periods)?;
                decide(license, &state.seats, request, &periods, &usage, now)
            }
        };
        let claims = Claims::new(
            entry.as_deref().map(|s| &s.license),
            &verdict,
            (nonce, request.fingerprint),
            now,
            token_ttl_s,
        );
        let token = self
            .shared
            .crypto
            .sign_jwt(&serde_json::to_vec(&claims).expect("claims serialize"));
        Ok(Validation {
            license: entry,
            verdict,
            token,
        })
    }

    /// Each quota's usage over its period (`periods` parallel to the
    /// quotas); 0 for a meter that no longer exists.
    fn quota_usage(
        &self,
        license: &License,
        periods: &[PeriodBounds],
    ) -> Result<Vec<f64>, ProjectionError> {
        let shared = &self.shared;
        let meters = shared.meters.load();
        let mut usage = Vec::with_capacity(periods.len());
        for (q, p) in license.policy.quotas().iter().zip(periods) {
            let Some(meter) = meters.get(&q.meter) else {
                usage.push(0.0);
                continue;
            };
            // Usage is counted in the meter's windows: a window belongs to
            // the period its start falls in, with the period's bounds
            // rounded down to window boundaries, so periods tile.
            let w = meter.window_size();
            let used = shared.usage.usage(
                &shared.store,
                &shared.overlay,
                &meters,
                UsageQuery {
                    meter: &q.meter,
                    subject: &license.id,
                    from_ms: w.start_of(p.start.timestamp_millis()),
                    to_ms: p.end.map_or(i64::MAX, |e| w.start_of(e.timestamp_millis())),
                },
            )?;
            usage.push(used);
        }
        Ok(usage)
    }
}
