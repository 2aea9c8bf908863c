//! Renewal: how a renewal request sets a license's new expiry.

use super::model::{License, Status, DATE_MS_MAX, DATE_MS_MIN, DURATION_S_MAX};
use super::seats::after_seconds;
use super::Refusal;
use crate::error_code::ErrorCode;

/// How a renewal sets the new expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// This expiry (`None`: perpetual).
    Until(Option<chrono::DateTime<chrono::Utc>>),
    /// The later of the current expiry and now, plus this many seconds.
    Extend(u64),
}

impl License {
    /// The expiry `renewal` sets at `now_ms`: refused for a revoked license,
    /// or when it would not be after `starts_at`.
    pub fn renewed_expiry(&self, renewal: Renewal, now_ms: i64) -> Result<Option<i64>, Refusal> {
        if self.status == Status::Revoked {
            return Err(Refusal::new(
                ErrorCode::Revoked,
                "a revoked license cannot be renewed",
            ));
        }
        let expires_at_ms = match renewal {
            Renewal::Until(t) => t.map(|t| t.timestamp_millis()),
            Renewal::Extend(s) => {
                if s > DURATION_S_MAX {
                    return Err(Refusal::new(
                        ErrorCode::InvalidLicense,
                        format!("extend must be at most {DURATION_S_MAX} s (10 years)"),
                    ));
                }
                let base = self
                    .expires_at
                    .map_or(now_ms, |e| e.timestamp_millis().max(now_ms));
                Some(after_seconds(base, s))
            }
        };
        if expires_at_ms.is_some_and(|e| !(DATE_MS_MIN..=DATE_MS_MAX).contains(&e)) {
            return Err(Refusal::new(
                ErrorCode::InvalidLicense,
                "the new expiry must be in the years 1 to 9999",
            ));
        }
        if expires_at_ms.is_some_and(|e| e <= self.starts_at.timestamp_millis()) {
            return Err(Refusal::new(
                ErrorCode::InvalidLicense,
                "the new expiry must be after starts_at",
            ));
        }
        Ok(expires_at_ms)
    }
}
