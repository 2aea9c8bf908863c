//! Shared parts of the fuzz targets: the checks several targets make, the
//! structured inputs of the targets that take one, an encoder that writes
//! such inputs as bytes for the seed corpus, and the independent model of log
//! recovery the `log_frame` target checks the scanner against.

pub mod check;
pub mod input;
pub mod log_model;
pub mod seed;
