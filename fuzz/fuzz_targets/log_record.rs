//! Log record payloads: one version byte, then postcard.
//!
//! Properties: decoding arbitrary bytes never panics (and never allocates
//! beyond what the input can back); a record that decodes encodes back to a
//! record that decodes to the same value.

#![no_main]

use keymeter::record::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = Record::decode(data) else {
        return;
    };
    let encoded = record.encode();
    let again = Record::decode(&encoded).expect("an encoded record decodes");
    assert_eq!(again, record);
    assert_eq!(again.encode(), encoded, "encoding is deterministic");
});
