//! A block of the counters tree (`src/projection/blocks.rs`): the value
//! stored under a block key, counters with prefix-compressed keys.
//!
//! Input: the value's bytes. Properties: never panics and never allocates
//! beyond what the input's length can hold; a refused block is a
//! `ProjectionError::Value` (the counters are then rebuilt from the log); a
//! read block encodes to bytes that read back to the same counters, and
//! reading its states either succeeds or names the bad one.

#![no_main]

use keymeter::projection::blocks::{decode_block, decode_block_raw, encode_block_raw};
use keymeter::projection::ProjectionError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let entries = match decode_block_raw(b"m\0", data) {
        Ok(entries) => entries,
        Err(ProjectionError::Value { .. }) => return,
        Err(e) => panic!("a bad block is a value error, not {e}"),
    };
    let again = encode_block_raw(entries.iter().map(|(k, s)| (k.as_slice(), s.as_slice())));
    assert_eq!(decode_block_raw(b"m\0", &again).unwrap(), entries);
    match decode_block(b"m\0", data) {
        Ok(states) => assert_eq!(states.len(), entries.len()),
        Err(ProjectionError::Value { .. }) => {}
        Err(e) => panic!("a bad state is a value error, not {e}"),
    }
});
