//! What the process is: when it started and which build it runs.

use std::time::{SystemTime, UNIX_EPOCH};

/// The git commit this binary was built from (see `build.rs`).
pub const GIT_COMMIT: &str = env!("KEYMETER_GIT_COMMIT");

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// When this process started, in seconds since the Unix epoch: from
/// `/proc` (the kernel's record, not when metrics were first touched),
/// else the time of the call.
pub fn start_time_seconds() -> f64 {
    start_time_from_proc().unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

fn start_time_from_proc() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_start_time(&stat, &boot, ticks_per_second)
}

/// Boot time (`btime` of `/proc/stat`) plus the process's `starttime`
/// (field 22 of `/proc/self/stat`, clock ticks after boot). The command
/// name (field 2) may hold spaces and parentheses: fields are counted
/// after its last `)`.
fn parse_start_time(stat: &str, boot: &str, ticks_per_second: i64) -> Option<f64> {
    if ticks_per_second <= 0 {
        return None;
    }
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 onwards: field 22 is the 20th.
    let start_ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let boot_seconds: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot_seconds as f64 + start_ticks as f64 / ticks_per_second as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_boot_time_plus_the_start_ticks_after_the_command_name() {
        let stat = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 \
                    250 12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(parse_start_time(stat, boot, 100), Some(1_700_000_002.5));
        assert_eq!(parse_start_time(stat, "cpu 1\n", 100), None);
        assert_eq!(parse_start_time("4242 (x) S 1", boot, 100), None);
    }

    #[test]
    fn this_process_started_before_now_and_after_the_year_2020() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = start_time_from_proc().expect("Linux has /proc");
        assert!(start <= now + 1.0 && start > 1_577_836_800.0, "{start}");
    }
}
