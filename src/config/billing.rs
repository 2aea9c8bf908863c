//! The `[billing]` section: how usage is cut into billing periods and when
//! a period closes (see [`crate::billing`]).

use std::time::Duration;

use serde::Deserialize;

use crate::billing::{Cycle, Settings};

/// Longest `billing.grace`.
pub const GRACE_MAX: Duration = Duration::from_secs(72 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingConfig {
    /// `"month"` (calendar months) or `"day"`. Fixed by the log at the
    /// first start: a data directory keeps the cycle it started with.
    pub cycle: String,
    /// IANA time zone the periods start at midnight in.
    pub time_zone: String,
    /// How long after its end a period waits for late events before it
    /// closes (at most 72h).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How many closed periods back a late event still counts (its
    /// statement gets a new version); older ones are refused with
    /// `PERIOD_CLOSED` and quarantined.
    pub restatement_horizon: u32,
    /// How often the writer looks for periods to close and statements to
    /// restate.
    #[serde(with = "humantime_serde")]
    pub close_interval: Duration,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            cycle: "month".into(),
            time_zone: "UTC".into(),
            grace: Duration::from_secs(3600),
            restatement_horizon: 2,
            close_interval: Duration::from_secs(10),
        }
    }
}

impl BillingConfig {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let cycle = Cycle::parse(&self.cycle, &self.time_zone)
            .map_err(|e| anyhow::anyhow!("billing: {e}"))?;
        Ok(Settings {
            cycle,
            grace_ms: self.grace.as_millis() as i64,
            restatement_horizon: self.restatement_horizon,
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.settings()?;
        anyhow::ensure!(self.grace <= GRACE_MAX, "billing.grace must be at most 72h");
        anyhow::ensure!(
            Duration::from_millis(100) <= self.close_interval
                && self.close_interval <= Duration::from_secs(3600),
            "billing.close_interval must be between 100ms and 1h"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let grace = BillingConfig {
            grace: Duration::from_secs(73 * 3600),
            ..BillingConfig::default()
        };
        assert!(grace
            .validate()
            .unwrap_err()
            .to_string()
            .contains("billing.grace"));
        let tz = BillingConfig {
            time_zone: "Europe/Atlantis".into(),
            ..BillingConfig::default()
        };
        assert!(tz
            .validate()
            .unwrap_err()
            .to_string()
            .contains("Europe/Atlantis"));
        assert!(BillingConfig::default().validate().is_ok());
    }
}
