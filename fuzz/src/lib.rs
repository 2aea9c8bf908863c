//! Shared parts of the fuzz targets: the checks several targets make, the
//! structured inputs of the targets that take one, and an encoder that writes
//! such inputs as bytes for the seed corpus.

pub mod check;
pub mod input;
pub mod seed;
