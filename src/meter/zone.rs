//! Query windows in a time zone (OpenMeter's `windowTimeZone`).
//!
//! Counters are stored in UTC windows of the meter's size. A query window
//! in a zone (a local day, say) is the union of the stored windows that lie
//! in it, which is exact only when no stored window straddles a local
//! window's bounds: when the zone's offset from UTC, at every stored window
//! read, is a multiple of the meter's window size. That holds for an HOUR
//! meter in any zone whose offsets are whole hours (DST included), and for
//! a MINUTE meter in every zone; it fails for a DAY or MONTH meter in any
//! zone but UTC, and for an HOUR meter in `Asia/Kolkata` (+05:30). Such a
//! query is refused ([`ZoneError`]) rather than answered approximately.

use chrono::{NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;

use super::window::WindowSize;

/// A stored window that straddles the zone's windows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "windowTimeZone {zone}: its offset from UTC ({offset_minutes} minutes at {at_ms} ms) is \
     not a whole number of the meter's {meter_window} windows, so its windows cannot be made \
     exactly from the stored ones; query in UTC, or define the meter with a finer windowSize"
)]
pub struct ZoneError {
    pub zone: String,
    pub offset_minutes: i64,
    pub at_ms: i64,
    pub meter_window: &'static str,
}

/// The zone's offset from UTC at instant `utc_ms`, in milliseconds.
fn offset_ms(tz: Tz, utc_ms: i64) -> i64 {
    let Some(t) = chrono::DateTime::from_timestamp_millis(utc_ms) else {
        return 0;
    };
    let offset = tz.offset_from_utc_datetime(&t.naive_utc());
    i64::from(offset.fix().local_minus_utc()) * 1_000
}

/// The UTC instant of local time `local_ms` (milliseconds of the local
/// clock since 1970-01-01T00:00): the earlier one when the clock passes it
/// twice, and for a time the clock skips (a DST gap), the instant the gap
/// ends.
fn utc_of_local(tz: Tz, local_ms: i64, hint_offset_ms: i64) -> i64 {
    let Some(naive) = chrono::DateTime::from_timestamp_millis(local_ms) else {
        return local_ms - hint_offset_ms;
    };
    let naive: NaiveDateTime = naive.naive_utc();
    match tz.from_local_datetime(&naive).earliest() {
        Some(t) => t.timestamp_millis(),
        // In a gap: the local time does not exist; the window starts when
        // the clock jumps, which the offset before the gap places.
        None => local_ms - hint_offset_ms,
    }
}

/// Checks that stored window `[start_ms, end)` of size `meter_window` lies
/// within one window of `tz`.
pub fn check_exact(tz: Tz, meter_window: WindowSize, start_ms: i64) -> Result<(), ZoneError> {
    let end_ms = meter_window.end_of_window(start_ms);
    for at_ms in [start_ms, end_ms - 1] {
        let offset = offset_ms(tz, at_ms);
        let fits = match meter_window {
            WindowSize::Minute => offset % 60_000 == 0,
            WindowSize::Hour => offset % 3_600_000 == 0,
            WindowSize::Day | WindowSize::Month => offset == 0,
        };
        if !fits {
            return Err(ZoneError {
                zone: tz.name().to_owned(),
                offset_minutes: offset / 60_000,
                at_ms,
                meter_window: meter_window.as_str(),
            });
        }
    }
    Ok(())
}

/// Start (UTC milliseconds) of the `window` of zone `tz` that holds `utc_ms`.
pub fn start_of(tz: Tz, window: WindowSize, utc_ms: i64) -> i64 {
    let offset = offset_ms(tz, utc_ms);
    utc_of_local(tz, window.start_of(utc_ms + offset), offset)
}

/// End (UTC milliseconds, exclusive) of the `window` of zone `tz` that
/// starts at `start_ms`.
pub fn end_of(tz: Tz, window: WindowSize, start_ms: i64) -> i64 {
    let offset = offset_ms(tz, start_ms);
    let local_end = window.end_of_window(start_ms + offset);
    // The offset may change within the window (DST): place the end by the
    // offset in force just before it.
    let before_end = offset_ms(tz, local_end - offset - 1);
    utc_of_local(tz, local_end, before_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn local_days_follow_the_zone_across_dst() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29: clocks go from 02:00 to 03:00 (a 23-hour day).
        let start = start_of(berlin, WindowSize::Day, ms("2026-03-29T12:00:00Z"));
        assert_eq!(start, ms("2026-03-28T23:00:00Z"));
        assert_eq!(
            end_of(berlin, WindowSize::Day, start),
            ms("2026-03-29T22:00:00Z")
        );
        // 2026-10-25: back from 03:00 to 02:00 (a 25-hour day).
        let start = start_of(berlin, WindowSize::Day, ms("2026-10-25T12:00:00Z"));
        assert_eq!(start, ms("2026-10-24T22:00:00Z"));
        assert_eq!(
            end_of(berlin, WindowSize::Day, start),
            ms("2026-10-25T23:00:00Z")
        );
        let month = start_of(berlin, WindowSize::Month, ms("2026-07-15T00:00:00Z"));
        assert_eq!(month, ms("2026-06-30T22:00:00Z"));
        assert_eq!(
            end_of(berlin, WindowSize::Month, month),
            ms("2026-07-31T22:00:00Z")
        );
    }

    #[test]
    fn exact_only_when_the_offset_is_whole_stored_windows() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let t = ms("2026-03-29T01:00:00Z");
        assert!(check_exact(berlin, WindowSize::Hour, t).is_ok());
        assert!(check_exact(berlin, WindowSize::Minute, t).is_ok());
        assert!(check_exact(kolkata, WindowSize::Minute, t).is_ok());
        let e = check_exact(kolkata, WindowSize::Hour, t).unwrap_err();
        assert_eq!(e.offset_minutes, 330);
        assert!(e.to_string().contains("Asia/Kolkata"), "{e}");
        assert!(check_exact(berlin, WindowSize::Day, ms("2026-03-29T00:00:00Z")).is_err());
        assert!(check_exact(Tz::UTC, WindowSize::Month, ms("2026-03-01T00:00:00Z")).is_ok());
    }
}
