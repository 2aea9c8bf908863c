//! Shared parts of the fuzz targets: the checks several targets make, the
//! structured inputs of the targets that take one, an encoder that writes
//! such inputs as bytes for the seed corpus, and the independent models the
//! targets check keymeter against (CloudEvent decoding, log recovery).

pub mod check;
pub mod event_model;
pub mod input;
pub mod log_model;
pub mod seed;
