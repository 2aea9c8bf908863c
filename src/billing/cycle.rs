//! Billing cycles: calendar months or days in one time zone (UTC by
//! default). A period is `[start, end)` in epoch milliseconds; its label is
//! the local date it starts on (`2026-11` for a month, `2026-11-05` for a
//! day). Local midnight that a daylight-saving jump skips starts the period
//! at the first instant that exists.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CycleKind {
    Month,
    Day,
}

impl CycleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CycleKind::Month => "month",
            CycleKind::Day => "day",
        }
    }
}

/// Instants further from 1970 than this (about 126,000 years) are taken as
/// this: far inside what the calendar arithmetic handles.
pub const INSTANT_MAX_MS: i64 = 1 << 52;

/// One billing period, `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// How time is cut into billing periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    pub kind: CycleKind,
    pub tz: Tz,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CycleError {
    #[error("unknown time zone {0:?}: use an IANA name such as \"UTC\" or \"Europe/Paris\"")]
    TimeZone(String),
    #[error("unknown billing cycle {0:?}: \"month\" or \"day\"")]
    Kind(String),
}

impl Default for Cycle {
    fn default() -> Cycle {
        Cycle {
            kind: CycleKind::Month,
            tz: Tz::UTC,
        }
    }
}

impl Cycle {
    pub fn parse(kind: &str, tz: &str) -> Result<Cycle, CycleError> {
        let kind = match kind {
            "month" => CycleKind::Month,
            "day" => CycleKind::Day,
            other => return Err(CycleError::Kind(other.into())),
        };
        let tz = tz
            .parse::<Tz>()
            .map_err(|_| CycleError::TimeZone(tz.into()))?;
        Ok(Cycle { kind, tz })
    }

    /// The period holding the instant `t_ms` (clamped to ±[`INSTANT_MAX_MS`]).
    pub fn period_of(&self, t_ms: i64) -> Period {
        let t_ms = t_ms.clamp(-INSTANT_MAX_MS, INSTANT_MAX_MS);
        let mut probe = t_ms;
        loop {
            let local = self.local_date(probe);
            let first = match self.kind {
                CycleKind::Month => local.with_day(1).expect("day 1 exists"),
                CycleKind::Day => local,
            };
            let start_ms = self.midnight(first);
            // A period starts after `t_ms` only if a jump skipped midnight and
            // `t_ms` fell in the gap: it belongs to the previous period.
            if start_ms <= t_ms {
                return Period {
                    start_ms,
                    end_ms: self.midnight(self.next_start(first)),
                };
            }
            probe = start_ms - 1 - 3 * 3_600_000;
        }
    }

    /// The period after `p`.
    pub fn next(&self, p: Period) -> Period {
        self.period_of(p.end_ms)
    }

    /// The period before `p`.
    pub fn prev(&self, p: Period) -> Period {
        self.period_of(p.start_ms - 1)
    }

    /// Periods from `a` up to `b` (`index(b) - index(a)`).
    pub fn distance(&self, a: Period, b: Period) -> i64 {
        self.index(b.start_ms) - self.index(a.start_ms)
    }

    /// The local date a period starts on, as its label.
    pub fn label(&self, p: Period) -> String {
        let d = self.local_date(p.start_ms);
        match self.kind {
            CycleKind::Month => format!("{:04}-{:02}", d.year(), d.month()),
            CycleKind::Day => d.format("%Y-%m-%d").to_string(),
        }
    }

    /// The period a label names, if it is one of this cycle's.
    pub fn parse_label(&self, label: &str) -> Option<Period> {
        let date = match self.kind {
            CycleKind::Month => {
                let (y, m) = label.split_once('-')?;
                if y.len() != 4 || m.len() != 2 {
                    return None;
                }
                NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)?
            }
            CycleKind::Day => NaiveDate::parse_from_str(label, "%Y-%m-%d").ok()?,
        };
        let p = self.period_of(self.midnight(date));
        (self.label(p) == label).then_some(p)
    }

    fn index(&self, t_ms: i64) -> i64 {
        let d = self.local_date(t_ms);
        match self.kind {
            CycleKind::Month => i64::from(d.year()) * 12 + i64::from(d.month0()),
            CycleKind::Day => i64::from(d.num_days_from_ce()),
        }
    }

    fn local_date(&self, t_ms: i64) -> NaiveDate {
        let utc = DateTime::<Utc>::from_timestamp_millis(t_ms).unwrap_or(DateTime::<Utc>::MIN_UTC);
        utc.with_timezone(&self.tz).date_naive()
    }

    fn next_start(&self, first: NaiveDate) -> NaiveDate {
        match self.kind {
            CycleKind::Month => first
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(NaiveDate::MAX),
            CycleKind::Day => first.succ_opt().unwrap_or(NaiveDate::MAX),
        }
    }

    /// The first instant of local date `d`.
    fn midnight(&self, d: NaiveDate) -> i64 {
        let mut at = d.and_hms_opt(0, 0, 0).expect("midnight");
        // A jump skips at most a few hours; find the first local time that exists.
        for _ in 0..16 {
            if let Some(t) = self.tz.from_local_datetime(&at).earliest() {
                return t.timestamp_millis();
            }
            at += chrono::Duration::minutes(15);
        }
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
            .timestamp_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn utc_months_are_calendar_months() {
        let c = Cycle::default();
        let p = c.period_of(ms("2026-02-14T10:00:00Z"));
        assert_eq!(p.start_ms, ms("2026-02-01T00:00:00Z"));
        assert_eq!(p.end_ms, ms("2026-03-01T00:00:00Z"));
        assert_eq!(c.label(p), "2026-02");
        assert_eq!(c.parse_label("2026-02"), Some(p));
        assert_eq!(c.period_of(p.end_ms - 1), p);
        assert_eq!(c.next(p).start_ms, p.end_ms);
        assert_eq!(c.prev(c.next(p)), p);
        assert_eq!(c.distance(p, c.next(c.next(p))), 2);
        assert_eq!(c.parse_label("2026-13"), None);
        assert_eq!(c.parse_label("2026-2"), None);
    }

    #[test]
    fn months_in_a_zone_start_at_local_midnight() {
        let c = Cycle::parse("month", "Europe/Paris").unwrap();
        let p = c.period_of(ms("2026-03-31T22:30:00Z")); // April 1st, 00:30 in Paris
        assert_eq!(c.label(p), "2026-04");
        assert_eq!(p.start_ms, ms("2026-03-31T22:00:00Z"));
        assert_eq!(p.end_ms, ms("2026-04-30T22:00:00Z"));
        // March is an hour shorter: the clocks moved forward on its last Sunday.
        let march = c.prev(p);
        assert_eq!(march.start_ms, ms("2026-02-28T23:00:00Z"));
        assert_eq!(march.end_ms - march.start_ms, (31 * 24 - 1) * 3_600_000);
    }

    #[test]
    fn days_follow_daylight_saving_in_their_zone() {
        let c = Cycle::parse("day", "America/New_York").unwrap();
        let p = c.parse_label("2026-03-08").unwrap();
        assert_eq!(p.end_ms - p.start_ms, 23 * 3_600_000);
        // Santiago skips midnight when its clocks move forward.
        let s = Cycle::parse("day", "America/Santiago").unwrap();
        for t in (ms("2026-08-01T00:00:00Z")..ms("2026-10-01T00:00:00Z")).step_by(3_600_000) {
            let p = s.period_of(t);
            assert!(p.start_ms <= t && t < p.end_ms, "{t} outside {p:?}");
            assert_eq!(s.next(p).start_ms, p.end_ms);
        }
    }

    #[test]
    fn instants_at_the_ends_of_time_have_a_period() {
        for c in [
            Cycle::default(),
            Cycle::parse("day", "America/Santiago").unwrap(),
        ] {
            for t in [i64::MIN, i64::MAX, -INSTANT_MAX_MS, INSTANT_MAX_MS] {
                let p = c.period_of(t);
                assert!(p.start_ms < p.end_ms, "{t}: {p:?}");
            }
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_name() {
        assert_eq!(
            Cycle::parse("month", "Mars/Olympus"),
            Err(CycleError::TimeZone("Mars/Olympus".into()))
        );
        assert!(Cycle::parse("week", "UTC")
            .unwrap_err()
            .to_string()
            .contains("week"));
    }
}
