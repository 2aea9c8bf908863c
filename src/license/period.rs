//! Quota periods, anchored to the license's `starts_at`.
//!
//! - `month`: period *k* starts at `starts_at + k months`, computed from the
//!   anchor each time (never chained), with the day clamped to the month's
//!   last day. A license started on Jan 31 has periods starting Jan 31,
//!   Feb 28 (Feb 29 in a leap year), Mar 31, Apr 30, …
//! - `day`: period *k* starts at `starts_at + k × 24 h` (UTC has no DST).
//! - `lifetime`: one period from `starts_at`, without end.
//!
//! Before `starts_at`, the current period is the first one.

use chrono::{DateTime, Datelike, Duration, Months, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Month,
    Day,
    Lifetime,
}

/// `[start, end)`; `end` is `None` for a lifetime quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodBounds {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

fn add_months(anchor: DateTime<Utc>, k: i64) -> DateTime<Utc> {
    u32::try_from(k)
        .ok()
        .and_then(|k| anchor.checked_add_months(Months::new(k)))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The period of `period` anchored at `anchor` that contains `now`.
pub fn current_period(period: Period, anchor: DateTime<Utc>, now: DateTime<Utc>) -> PeriodBounds {
    match period {
        Period::Lifetime => PeriodBounds {
            start: anchor,
            end: None,
        },
        Period::Day => {
            let k = if now <= anchor {
                0
            } else {
                (now - anchor).num_milliseconds() / 86_400_000
            };
            let start = anchor + Duration::days(k);
            PeriodBounds {
                start,
                end: Some(start + Duration::days(1)),
            }
        }
        Period::Month => {
            let mut k = if now <= anchor {
                0
            } else {
                (now.year() as i64 - anchor.year() as i64) * 12 + now.month0() as i64
                    - anchor.month0() as i64
            };
            // The estimate is right or one too high (day/time of month).
            if k > 0 && add_months(anchor, k) > now {
                k -= 1;
            }
            PeriodBounds {
                start: add_months(anchor, k),
                end: Some(add_months(anchor, k + 1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn month(anchor: &str, now: &str) -> (String, String) {
        let b = current_period(Period::Month, t(anchor), t(now));
        (b.start.to_rfc3339(), b.end.unwrap().to_rfc3339())
    }

    #[test]
    fn month_anchored_on_jan_31_clamps_to_february_and_returns_to_the_31st() {
        let a = "2026-01-31T10:00:00Z";
        assert_eq!(
            month(a, "2026-02-15T00:00:00Z"),
            (
                "2026-01-31T10:00:00+00:00".into(),
                "2026-02-28T10:00:00+00:00".into()
            )
        );
        // Exactly at the boundary the new period starts.
        assert_eq!(
            month(a, "2026-02-28T10:00:00Z").0,
            "2026-02-28T10:00:00+00:00"
        );
        assert_eq!(
            month(a, "2026-02-28T09:59:59Z").0,
            "2026-01-31T10:00:00+00:00"
        );
        assert_eq!(
            month(a, "2026-03-30T00:00:00Z"),
            (
                "2026-02-28T10:00:00+00:00".into(),
                "2026-03-31T10:00:00+00:00".into()
            )
        );
        assert_eq!(
            month(a, "2026-04-30T10:00:00Z").0,
            "2026-04-30T10:00:00+00:00"
        );
    }

    #[test]
    fn month_anchored_on_jan_31_in_a_leap_year_uses_feb_29() {
        let a = "2028-01-31T00:00:00Z";
        assert_eq!(
            month(a, "2028-02-29T12:00:00Z"),
            (
                "2028-02-29T00:00:00+00:00".into(),
                "2028-03-31T00:00:00+00:00".into()
            )
        );
        assert_eq!(
            month(a, "2028-02-28T23:59:59Z"),
            (
                "2028-01-31T00:00:00+00:00".into(),
                "2028-02-29T00:00:00+00:00".into()
            )
        );
    }

    #[test]
    fn leap_day_anchor_clamps_in_common_years() {
        let a = "2028-02-29T00:00:00Z";
        assert_eq!(
            month(a, "2029-02-28T00:00:00Z").0,
            "2029-02-28T00:00:00+00:00"
        );
        assert_eq!(
            month(a, "2029-03-29T00:00:00Z").0,
            "2029-03-29T00:00:00+00:00"
        );
    }

    #[test]
    fn before_the_start_the_first_period_applies() {
        let a = t("2030-05-10T00:00:00Z");
        let b = current_period(Period::Month, a, t("2026-01-01T00:00:00Z"));
        assert_eq!(b.start, a);
        let b = current_period(Period::Day, a, t("2026-01-01T00:00:00Z"));
        assert_eq!(b.start, a);
    }

    #[test]
    fn days_and_lifetime() {
        let a = t("2026-03-01T06:00:00Z");
        let b = current_period(Period::Day, a, t("2026-03-03T05:59:59Z"));
        assert_eq!(b.start, t("2026-03-02T06:00:00Z"));
        assert_eq!(b.end, Some(t("2026-03-03T06:00:00Z")));
        let b = current_period(Period::Lifetime, a, t("2036-03-03T05:59:59Z"));
        assert_eq!((b.start, b.end), (a, None));
    }

    proptest! {
        #[test]
        fn the_current_period_contains_now_and_periods_tile(
            anchor_s in 0i64..4_000_000_000,
            offset_s in 0i64..400_000_000,
            monthly in any::<bool>(),
        ) {
            let p = if monthly { Period::Month } else { Period::Day };
            let anchor = DateTime::from_timestamp(anchor_s, 0).unwrap();
            let now = anchor + Duration::seconds(offset_s);
            let b = current_period(p, anchor, now);
            let end = b.end.unwrap();
            prop_assert!(b.start <= now && now < end);
            // The next period starts where this one ends.
            prop_assert_eq!(current_period(p, anchor, end).start, end);
        }
    }
}
