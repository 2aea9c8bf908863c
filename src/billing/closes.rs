//! The close rule, shared by the writer (which decides closes and refuses
//! events too late to restate) and the billing projection (which closes what
//! the writer's close records say). A period is closed once a close record
//! said so: `closed_before_ms` is the start of the first period not closed,
//! and it only moves forward.

use serde::{Deserialize, Serialize};

use super::cycle::{Cycle, Period};

/// The billing settings a data directory's log fixes at its first close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub cycle: Cycle,
    /// How long after its end a period stays `closing` (late events still
    /// count in its first statement).
    pub grace_ms: i64,
    /// How many closed periods back a late event may still be counted (each
    /// giving its statement a new version); older ones are refused.
    pub restatement_horizon: u32,
}

/// What the log says is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Closed {
    /// Every period ending at or before this is closed; `None`: nothing yet.
    pub before_ms: Option<i64>,
}

/// What happens to an event dated `t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Its period is open or closing: counted in the coming statement.
    Open,
    /// Its period is closed but within the horizon: counted, and restated.
    Restate,
    /// Its period is closed and beyond the horizon.
    Refused {
        period: String,
        closed_through: String,
    },
}

/// Where a period stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodState {
    Open,
    Closing,
    Closed,
}

impl Closed {
    pub fn is_closed(&self, p: Period) -> bool {
        self.before_ms.is_some_and(|b| p.end_ms <= b)
    }

    /// The latest closed period.
    pub fn latest(&self, cycle: &Cycle) -> Option<Period> {
        self.before_ms.map(|b| cycle.prev(cycle.period_of(b)))
    }

    pub fn admits(&self, s: &Settings, t_ms: i64) -> Admission {
        let p = s.cycle.period_of(t_ms);
        let Some(latest) = self.latest(&s.cycle).filter(|_| self.is_closed(p)) else {
            return Admission::Open;
        };
        if s.cycle.distance(p, latest) < i64::from(s.restatement_horizon) {
            Admission::Restate
        } else {
            Admission::Refused {
                period: s.cycle.label(p),
                closed_through: s.cycle.label(latest),
            }
        }
    }

    /// The new `before_ms` if a close at `now_ms` with every source
    /// delivered past `watermark_ms` closes more than is closed.
    pub fn advance(&self, s: &Settings, now_ms: i64, watermark_ms: i64) -> Option<i64> {
        let bound = now_ms.saturating_sub(s.grace_ms).min(watermark_ms);
        if bound <= -super::cycle::INSTANT_MAX_MS {
            return None; // a source has delivered nothing yet
        }
        let before = s.cycle.period_of(bound).start_ms;
        (self.before_ms.is_none_or(|b| before > b)).then_some(before)
    }

    /// `p`'s state at `now_ms`.
    pub fn state(&self, p: Period, now_ms: i64) -> PeriodState {
        if self.is_closed(p) {
            PeriodState::Closed
        } else if now_ms >= p.end_ms {
            PeriodState::Closing
        } else {
            PeriodState::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn settings() -> Settings {
        Settings {
            cycle: Cycle::parse("day", "UTC").unwrap(),
            grace_ms: 3_600_000,
            restatement_horizon: 2,
        }
    }

    #[test]
    fn a_period_closes_after_its_grace_and_its_watermark() {
        let s = settings();
        let closed = Closed::default();
        let day10 = 10 * DAY;
        // Day 9 ended at day10; an hour of grace.
        assert_eq!(
            closed.advance(&s, day10 + 3_599_999, i64::MAX),
            Some(9 * DAY)
        );
        assert_eq!(closed.advance(&s, day10 + 3_600_000, i64::MAX), Some(day10));
        // A source that delivered only up to day 9's last minute holds it.
        assert_eq!(
            closed.advance(&s, day10 + 3_600_000, day10 - 60_000),
            Some(9 * DAY)
        );
        let closed = Closed {
            before_ms: Some(day10),
        };
        assert_eq!(closed.advance(&s, day10 + 7_200_000, i64::MAX), None);
        assert_eq!(
            Closed::default().advance(&s, day10, i64::MIN),
            None,
            "nothing delivered"
        );
        assert_eq!(
            closed.state(s.cycle.period_of(9 * DAY), day10),
            PeriodState::Closed
        );
        assert_eq!(
            closed.state(s.cycle.period_of(day10), day10 + 1),
            PeriodState::Open
        );
        assert_eq!(
            Closed::default().state(s.cycle.period_of(9 * DAY), day10),
            PeriodState::Closing
        );
    }

    #[test]
    fn late_events_are_restated_within_the_horizon_and_refused_beyond() {
        let s = settings();
        let closed = Closed {
            before_ms: Some(10 * DAY),
        };
        assert_eq!(closed.admits(&s, 10 * DAY), Admission::Open);
        assert_eq!(closed.admits(&s, 10 * DAY - 1), Admission::Restate);
        assert_eq!(closed.admits(&s, 8 * DAY), Admission::Restate);
        assert_eq!(
            closed.admits(&s, 8 * DAY - 1),
            Admission::Refused {
                period: "1970-01-08".into(),
                closed_through: "1970-01-10".into()
            }
        );
        assert_eq!(Closed::default().admits(&s, 0), Admission::Open);
    }
}
