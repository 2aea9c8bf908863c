//! The pure core of metering: meter definitions, value extraction from a CloudEvent's
//! `data`, aggregation state, windows, the fold, and query aggregation. No I/O, no
//! clock, no storage: the engine feeds events in and persists what comes out.
//!
//! # Semantics
//!
//! - **Amounts are exact.** Values are fixed point ([`Amount`] = value × 10^9 in an
//!   `i128`), read from the number's decimal text as written in the event (so JSON
//!   `0.1` is exactly 0.1, and `123456789.123456789` keeps every digit, which an `f64`
//!   would not) or from a numeric string; digits past 9 decimals round half-to-even;
//!   magnitudes above 10^20 (`1e400` included) are refused. Sums saturate at the
//!   `i128` range, which takes more than 1.7 × 10^9 maximal events to reach.
//! - **Order never matters.** Every [`AggState::merge`] is commutative and
//!   associative, so any arrival order or batching of the same events gives identical
//!   states and identical [`AggState::encode`] bytes. LATEST keeps the observation
//!   with the greatest event time and, on equal event times, **the greater value**.
//! - **UNIQUE_COUNT counts keyed 128-bit identities.** A value's identity is
//!   [`UniqueKey::hash`] (SipHash-2-4-128 under the data directory's secret key) of
//!   its canonical text: a string's content, or a number's / boolean's JSON text as
//!   serde_json renders it (`"7"` and `7` are one value; `7` and `7.0` are two).
//!   Exact unless two distinct values share an identity, which nobody without the
//!   key can arrange and which happens by chance with probability about n²/2^129
//!   for n distinct values. Objects, arrays and `null` are refused
//!   (`VALUE_NOT_SCALAR`).
//! - **Groups.** A `groupBy` path selecting a string yields that string, a number or
//!   boolean its JSON text, an object or array its compact JSON text; missing or
//!   `null` yields `None` (its own group, distinct from `""`).
//! - **Windows** are UTC tumbling windows over event time; see [`WindowSize`].
//! - **Queries** include stored windows whose start is in `[from, to)`; `from`/`to`
//!   must be aligned to the meter's window size. With a query window size, rows are
//!   that window clipped to `[from, to)`; without one, a row spans the whole range.
//!   See [`query`].

mod amount;
mod def;
mod extract;
mod fold;
pub(crate) mod key;
mod path;
mod query;
mod set;
mod state;
mod unique;
mod window;
pub mod zone;

pub use amount::{
    Amount, AmountParseError, AMOUNT_DECIMALS, AMOUNT_MAGNITUDE_MAX_UNITS, AMOUNT_SCALE,
};
pub use def::{
    Aggregation, CompiledMeter, MeterDef, MeterError, EVENT_TYPE_CHARS_MAX, GROUP_BY_MAX,
};
pub use extract::{ExtractError, Observation, ObservedValue};
pub use fold::{fold_event, Fold};
pub use key::{CounterKey, KeyError};
pub use query::{answer, query, Answer, QueryError, QueryParams, QueryRow, Resume, RowLimit};
pub use set::{MeterCheckError, MeterSet, Reading};
pub use state::{AggState, DecodeError, MergeError, STATE_ENCODING_VERSION};
pub use unique::UniqueKey;
pub use window::WindowSize;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod text_props;
