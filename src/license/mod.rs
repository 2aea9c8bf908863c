//! Licensing, the pure part: the license model and its policies, quota
//! periods, the seat state machine, the fold of license records into state,
//! and the validation decision. No I/O, no clock: "now" is a parameter, and
//! the engine (writer and projector) and the API feed records and requests in.
//!
//! - [`model`]: what a license is (`schemas/license/v1.json`), how a create
//!   or update request becomes one, and the status transitions.
//! - [`period`]: quota periods anchored to the license start.
//! - [`seats`]: seats and leases of one license, and the checkout plan.
//! - [`book`]: every license's state, folded from log records; the writer
//!   and the projector each hold one and apply the same records to it.
//! - [`plan`]: plans, named license terms kept as immutable versions.
//! - [`decide`]: the validation verdict and the claims of its signed token.

pub mod book;
pub mod decide;
#[cfg(test)]
mod extremes;
pub mod history;
pub mod migration;
pub mod migration_book;
pub mod model;
pub mod period;
pub mod plan;
pub mod renewal;
pub mod seats;
pub mod upcast;

pub use book::{LicenseBook, LicenseState};
pub use decide::{decide, Code, Request, Verdict};
pub use model::{License, Policy, Quota, SeatMode, SeatPolicy, Status, UsagePolicy};
pub use period::{current_period, Period, PeriodBounds};
pub use renewal::Renewal;
pub use seats::{Seat, SeatTable};

/// Why an admin or seat operation was refused.
pub type Refusal = crate::error_code::Coded;

/// Milliseconds since the epoch as a UTC time.
pub fn utc_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}
