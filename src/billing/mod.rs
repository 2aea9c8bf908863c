//! Billing: cycles, the close rule, statements and their Merkle sum trees.
//! Pure: the writer decides closes and late events with [`Closed`], the
//! billing projection builds statements with [`statement::build`], and
//! `keymeter billing verify` and the client check them offline.

pub mod closes;
pub mod cycle;
pub mod export;
pub mod merkle;
pub mod statement;

pub use closes::{Admission, Closed, PeriodState, Settings};
pub use cycle::{Cycle, CycleKind, Period};
