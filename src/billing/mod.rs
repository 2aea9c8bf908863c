//! Billing: cycles, the close rule, statements and their Merkle sum trees.
//! Pure: the writer decides closes and late events with [`Closes`], the
//! billing projection builds statements with [`statement::build`], and
//! `keymeter billing verify` and the client check them offline.

pub mod cycle;
pub mod merkle;
pub mod statement;

pub use cycle::{Cycle, CycleKind, Period};
