//! Tumbling UTC windows over event time (milliseconds since the Unix epoch).
//!
//! Fixed windows floor with Euclidean division, so negative timestamps land in the
//! window that starts at or before them. Months use the proleptic Gregorian calendar;
//! the arithmetic is plain integer civil-date math (checked against chrono in tests) so
//! it is total over `i64` and cheap on the fold's hot path. Results that would fall
//! outside `i64` saturate.

use serde::{Deserialize, Serialize};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Window size of a meter or a query. Ordered from finest to coarsest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WindowSize {
    Minute,
    Hour,
    Day,
    Month,
}

impl WindowSize {
    pub const ALL: [WindowSize; 4] = [
        WindowSize::Minute,
        WindowSize::Hour,
        WindowSize::Day,
        WindowSize::Month,
    ];

    /// The wire name (`"MINUTE"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            WindowSize::Minute => "MINUTE",
            WindowSize::Hour => "HOUR",
            WindowSize::Day => "DAY",
            WindowSize::Month => "MONTH",
        }
    }

    /// Start of the window containing `ts_ms` (floor).
    #[inline]
    pub fn start_of(self, ts_ms: i64) -> i64 {
        match self {
            WindowSize::Minute => floor_to(ts_ms, MINUTE_MS),
            WindowSize::Hour => floor_to(ts_ms, HOUR_MS),
            WindowSize::Day => floor_to(ts_ms, DAY_MS),
            WindowSize::Month => month_start(ts_ms),
        }
    }

    /// Start of the window after the one containing `start_ms`; for an aligned
    /// `start_ms` that is the window's (exclusive) end.
    pub fn end_of_window(self, start_ms: i64) -> i64 {
        let start = self.start_of(start_ms);
        match self {
            WindowSize::Minute => start.saturating_add(MINUTE_MS),
            WindowSize::Hour => start.saturating_add(HOUR_MS),
            WindowSize::Day => start.saturating_add(DAY_MS),
            WindowSize::Month => next_month_start(start_ms),
        }
    }

    /// Whether `ts_ms` is the first instant of a window.
    pub fn is_aligned(self, ts_ms: i64) -> bool {
        self.start_of(ts_ms) == ts_ms
    }

    /// Whether windows of `self` tile windows of `other` exactly (so counters stored at
    /// `self` can be summed into `other`): true iff `self <= other`.
    pub fn can_rollup_to(self, other: WindowSize) -> bool {
        self <= other
    }
}

#[inline]
fn floor_to(ts_ms: i64, size_ms: i64) -> i64 {
    ts_ms.saturating_sub(ts_ms.rem_euclid(size_ms))
}

fn month_start(ts_ms: i64) -> i64 {
    let days = ts_ms.div_euclid(DAY_MS);
    let (year, month, _) = civil_from_days(days);
    days_from_civil(year, month, 1).saturating_mul(DAY_MS)
}

fn next_month_start(ts_ms: i64) -> i64 {
    let days = ts_ms.div_euclid(DAY_MS);
    let (year, month, _) = civil_from_days(days);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    days_from_civil(year, month, 1).saturating_mul(DAY_MS)
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31). Howard Hinnant's
/// `civil_from_days`, valid for the whole `i64 / 86_400_000` range.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01 (inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Datelike, TimeZone, Utc};
    use proptest::prelude::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn windows_floor_to_utc_boundaries() {
        let t = ms("2024-02-29T13:45:12.345Z");
        assert_eq!(WindowSize::Minute.start_of(t), ms("2024-02-29T13:45:00Z"));
        assert_eq!(WindowSize::Hour.start_of(t), ms("2024-02-29T13:00:00Z"));
        assert_eq!(WindowSize::Day.start_of(t), ms("2024-02-29T00:00:00Z"));
        assert_eq!(WindowSize::Month.start_of(t), ms("2024-02-01T00:00:00Z"));
        assert_eq!(
            WindowSize::Month.end_of_window(ms("2024-02-01T00:00:00Z")),
            ms("2024-03-01T00:00:00Z")
        );
        assert_eq!(
            WindowSize::Month.end_of_window(ms("2023-12-01T00:00:00Z")),
            ms("2024-01-01T00:00:00Z")
        );
        assert_eq!(
            WindowSize::Day.end_of_window(ms("2024-02-29T00:00:00Z")),
            ms("2024-03-01T00:00:00Z")
        );
    }

    #[test]
    fn negative_timestamps_floor_instead_of_truncating() {
        assert_eq!(WindowSize::Minute.start_of(-1), -60_000);
        assert_eq!(WindowSize::Minute.start_of(-60_000), -60_000);
        assert_eq!(WindowSize::Day.start_of(-1), -DAY_MS);
        assert_eq!(WindowSize::Month.start_of(-1), ms("1969-12-01T00:00:00Z"));
        assert!(!WindowSize::Hour.is_aligned(-1));
        assert!(WindowSize::Hour.is_aligned(-HOUR_MS));
    }

    #[test]
    fn extreme_timestamps_do_not_panic() {
        for size in WindowSize::ALL {
            for ts in [i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1, 0] {
                let start = size.start_of(ts);
                assert!(start <= ts);
                assert!(size.end_of_window(ts) >= start);
            }
        }
    }

    #[test]
    fn finer_windows_roll_up_to_coarser_ones() {
        assert!(WindowSize::Minute < WindowSize::Hour);
        assert!(WindowSize::Day < WindowSize::Month);
        assert!(WindowSize::Minute.can_rollup_to(WindowSize::Month));
        assert!(WindowSize::Day.can_rollup_to(WindowSize::Day));
        assert!(!WindowSize::Month.can_rollup_to(WindowSize::Day));
    }

    #[test]
    fn serde_uses_uppercase_names() {
        assert_eq!(
            serde_json::to_string(&WindowSize::Month).unwrap(),
            "\"MONTH\""
        );
        let parsed: WindowSize = serde_json::from_str("\"HOUR\"").unwrap();
        assert_eq!(parsed, WindowSize::Hour);
        assert!(serde_json::from_str::<WindowSize>("\"hour\"").is_err());
    }

    /// chrono covers years ±262,143; stay inside with some margin.
    const CHRONO_RANGE_MS: std::ops::Range<i64> = -8_000_000_000_000_000..8_000_000_000_000_000;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn month_start_matches_chrono(ts in CHRONO_RANGE_MS) {
            let dt = Utc.timestamp_millis_opt(ts).single().unwrap();
            let first = Utc
                .with_ymd_and_hms(dt.year(), dt.month(), 1, 0, 0, 0)
                .single()
                .unwrap()
                .timestamp_millis();
            prop_assert_eq!(WindowSize::Month.start_of(ts), first);
            let (next_year, next_month) = if dt.month() == 12 { (dt.year() + 1, 1) } else { (dt.year(), dt.month() + 1) };
            let next = Utc.with_ymd_and_hms(next_year, next_month, 1, 0, 0, 0).single().unwrap().timestamp_millis();
            prop_assert_eq!(WindowSize::Month.end_of_window(first), next);
        }

        #[test]
        fn every_window_contains_its_timestamps(ts in any::<i64>().prop_map(|t| t / 4), size_index in 0usize..4) {
            let size = WindowSize::ALL[size_index];
            let start = size.start_of(ts);
            prop_assert!(start <= ts && ts < size.end_of_window(start));
            prop_assert!(size.is_aligned(start));
            prop_assert_eq!(size.start_of(size.end_of_window(start)), size.end_of_window(start));
            // Coarser windows are unions of finer ones.
            for coarser in WindowSize::ALL.into_iter().filter(|w| size.can_rollup_to(*w)) {
                prop_assert_eq!(coarser.start_of(start), coarser.start_of(ts));
            }
        }
    }
}
